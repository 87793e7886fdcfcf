"""Where a fit's data lives: in this process, or on a cluster (scattered, persisted or streamed).

:func:`local_points` keeps in-memory arrays where they are; :func:`cluster_points` puts
data on a cluster: NumPy arrays are scattered to the workers in row chunks whose size
depends only on the array's shape (:func:`numpy_chunk_rows`, so a fit's bits do not depend
on the cluster), and dask arrays are persisted in worker memory when they fit (as Spark
caches an RDD) or streamed from storage otherwise.
"""

from __future__ import annotations

import math
from typing import Any

import dask.array as da
import numpy as np
from distributed import wait

from distgmm._layout import default_chunk_rows
from distgmm.engine.passes import ClusterPoints, LocalPoints

__all__ = ["local_points", "cluster_points", "scattered", "numpy_chunk_rows"]

#: In-memory arrays are cut into at least 16 chunks (parallelism) of at least this many
#: rows (per-chunk overhead): a fit's chunking, and so its bits, depend on the shape only.
MIN_CHUNK_ROWS = 4096


def numpy_chunk_rows(n_rows: int, n_features: int) -> int:
    """Rows per chunk of an in-memory array: a function of its shape only (a store's chunk
    size as float64, but at least 16 chunks of :data:`MIN_CHUNK_ROWS` rows)."""
    by_bytes = default_chunk_rows(n_features, np.float64)
    return int(max(1, min(by_bytes, max(MIN_CHUNK_ROWS, math.ceil(n_rows / 16)))))


def local_points(X: np.ndarray, sample_weight: np.ndarray | None) -> LocalPoints:
    """In-memory points for passes in this process, in :func:`numpy_chunk_rows` chunks."""
    return LocalPoints(X, sample_weight, numpy_chunk_rows(*X.shape))


def scattered(client, parts: list[np.ndarray], beside: da.Array | None = None) -> da.Array:
    """``parts`` sent to the workers as the row chunks of a persisted dask array.

    Persisted under keys of its own (the chunks stay where they were scattered, and the
    scattered futures are let go), so passes read the chunks in place on the workers.
    With ``beside`` (a persisted array of as many row chunks), part ``i`` goes to a worker
    holding chunk ``i`` of ``beside``: weights next to their points, so that the passes
    can read both in place.
    """
    if beside is None:
        futures = client.scatter(parts, hash=False)
    else:
        who_has = client.who_has(beside)
        keys = [k[0] if isinstance(k, list) else k for k in beside.__dask_keys__()]
        futures = [None] * len(parts)
        by_worker: dict[str, list[int]] = {}
        for i, key in enumerate(keys):
            by_worker.setdefault(min(who_has[key]), []).append(i)
        for worker, chunks in by_worker.items():
            sent = client.scatter([parts[i] for i in chunks], workers=[worker], hash=False)
            for i, future in zip(chunks, sent):
                futures[i] = future
    array = client.persist(da.concatenate([
        da.from_delayed(f, shape=p.shape, dtype=p.dtype) for f, p in zip(futures, parts)]))
    with client.as_current():  # ``wait`` uses the current client; there may be no default
        wait(array)
    return array


def _should_persist(X: da.Array, client, persist: str | bool) -> bool:
    """``persist`` as given, or for ``'auto'``: at most a quarter of the workers' memory."""
    if persist in (True, False):
        return persist
    workers = client.scheduler_info()["workers"].values()
    limit = sum(w.get("memory_limit") or 0 for w in workers)
    return limit > 0 and X.nbytes <= limit / 4


def cluster_points(X: np.ndarray | da.Array, sample_weight: Any, client,
                   persist: str | bool = "auto") -> ClusterPoints:
    """Points on the cluster of ``client``, with weights chunked like their rows.

    Parameters
    ----------
    X : ndarray or dask array of shape (N, D), validated
    sample_weight : ndarray or dask array of shape (N,), or None
    client : distributed.Client
    persist : {'auto', True, False}
        For dask input: keep it in worker memory for the fit (see :func:`_should_persist`).
    """
    keepalive = []
    in_memory = isinstance(X, np.ndarray)
    if in_memory:
        rows = numpy_chunk_rows(*X.shape)
        X = scattered(client, [np.ascontiguousarray(X[s:s + rows])
                               for s in range(0, X.shape[0], rows)])
        keepalive.append(X)
    elif _should_persist(X, client, persist):
        X = client.persist(X)
        keepalive.append(X)
    weights = None
    if sample_weight is not None:
        if isinstance(sample_weight, da.Array):
            weights = sample_weight.astype(np.float64).rechunk((X.chunks[0],))
        else:
            weights = np.asarray(sample_weight, dtype=np.float64)
            offsets = np.cumsum((0,) + X.chunks[0][:-1])
            weights = scattered(client, [weights[a:a + c] for a, c in zip(offsets, X.chunks[0])],
                                beside=X if in_memory else None)
            keepalive.append(weights)
    points = ClusterPoints(X, weights, client)
    points.keepalive = keepalive
    return points
