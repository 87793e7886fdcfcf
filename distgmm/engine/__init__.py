"""The engine: passes over row chunks (in this process or on Dask), initialisation, the EM loop.

| module | holds |
| --- | --- |
| :mod:`~distgmm.engine.passes` | the one map-reduce over row chunks, and its runners |
| :mod:`~distgmm.engine.placement` | where a fit's data lives: this process, scattered, persisted or streamed |
| :mod:`~distgmm.engine.init` | starting parameters from passes over the data, and the random streams |
| :mod:`~distgmm.engine.em` | the EM loop: runs in lockstep, one pass per iteration |
| :mod:`~distgmm.engine.progress` | progress events, one per pass, for whoever shows progress |
| :mod:`~distgmm.engine.checkpoint` | the fit's checkpoint file |

Per-block arithmetic lives in the kernels (:mod:`distgmm._kernels`, :mod:`distgmm._fused`)
and the statistics (:mod:`distgmm._statistics`); nothing here does more than orchestrate it.
"""

from distgmm.engine.checkpoint import FileCheckpoint
from distgmm.engine.em import EMConfig, EMResult, IterationInfo, fit_em, fit_many, score_many
from distgmm.engine.init import INIT_METHODS, override, seed_sequence
from distgmm.engine.passes import ClusterPoints, LocalPoints, Points
from distgmm.engine.progress import PHASES, PassInfo
from distgmm.engine.placement import cluster_points, local_points, numpy_chunk_rows, scattered

__all__ = [
    "INIT_METHODS",
    "ClusterPoints",
    "EMConfig",
    "EMResult",
    "FileCheckpoint",
    "IterationInfo",
    "LocalPoints",
    "PHASES",
    "PassInfo",
    "Points",
    "cluster_points",
    "fit_em",
    "fit_many",
    "local_points",
    "numpy_chunk_rows",
    "override",
    "scattered",
    "score_many",
    "seed_sequence",
]
