"""distgmm: Gaussian mixture models fitted by EM on chunked Zarr point stores, on Dask.

The package namespace is loaded lazily so that the command line starts quickly.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["BayesianGaussianMixture", "GaussianMixture", "CollapsedComponentError",
           "load_model", "predict_to_zarr", "save_model"]
__version__ = "0.1.0"

_LAZY = {
    "BayesianGaussianMixture": "distgmm._bayesian_estimator",
    "GaussianMixture": "distgmm._estimator",
    "CollapsedComponentError": "distgmm._kernels",
    "load_model": "distgmm.store._model",
    "predict_to_zarr": "distgmm.jobs._labeller",
    "save_model": "distgmm.store._model",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'distgmm' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(__all__ + ["__version__"])
