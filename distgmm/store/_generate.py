"""Synthetic Gaussian-mixture point stores, written chunk by chunk in parallel on Dask."""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import zarr

from distgmm._progress import CHUNK_WRITTEN, report
from distgmm.errors import DistgmmInputError
from distgmm.store._integrity import writable_rows
from distgmm.store._location import StoreLocation, building_store, check_store_destination
from distgmm.store._lock import replace_lock, rows_lock
from distgmm.store._points import (
    check_dtype,
    create_layout,
    default_chunk_rows,
    mark_complete,
    now_iso,
)

__all__ = ["PRESETS", "GenerateReport", "generate", "mixture_parameters", "check_generate",
           "MAX_COMPONENTS", "MAX_FEATURES"]

logger = logging.getLogger(__name__)

#: Named data sets: fixed parameters and exact per-component counts, rows in component order.
PRESETS: dict[str, dict[str, Any]] = {
    # Two overlapping blobs: 300 points around (0, 0) with std 1.2, 600 around (3, 3), std 1.8.
    "seed-blobs": {
        "counts": [300, 600],
        "means": [[0.0, 0.0], [3.0, 3.0]],
        "covariances": [(1.2**2 * np.eye(2)).tolist(), (1.8**2 * np.eye(2)).tolist()],
    },
}


#: Largest mixture ``generate`` draws: as many components as ``select`` accepts, and features
#: such that the true covariances (K x D x D float64, drawn in this process) stay under 1 GiB.
MAX_COMPONENTS = 1000
MAX_FEATURES = 4096
_MAX_COVARIANCE_BYTES = 2**30


def check_generate(store: str, *, n_points: int, n_features: int, n_components: int,
                   dtype: str = "float32", chunk_rows: int | None = None,
                   preset: str | None = None, overwrite: bool = False,
                   storage_options: dict[str, Any] | None = None) -> None:
    """Refuse, before any work, what :func:`generate` cannot do: sizes below 1 or absurdly
    large, a mixture whose parameters would not fit in memory, a local destination that
    cannot be written, an existing one without ``overwrite``, or more rows than the
    destination's file system has room for (uncompressed Gaussian noise barely compresses).
    """
    stored = check_dtype(dtype)
    if preset is not None:
        if preset not in PRESETS:
            raise DistgmmInputError(f"unknown preset {preset!r}; choose one of "
                                    f"{', '.join(PRESETS)}.")
        n_points = sum(PRESETS[preset]["counts"])
        n_components, n_features = np.asarray(PRESETS[preset]["means"]).shape
    for label, value in (("points", n_points), ("features", n_features),
                         ("components", n_components)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise DistgmmInputError(f"--{label} must be at least 1, got {value}.")
    if n_components > MAX_COMPONENTS:
        raise DistgmmInputError(f"--components {n_components:,} is more than distgmm fits "
                                f"(at most {MAX_COMPONENTS:,}); choose fewer components.")
    if n_features > MAX_FEATURES or n_components * n_features**2 * 8 > _MAX_COVARIANCE_BYTES:
        raise DistgmmInputError(
            f"--features {n_features:,} with --components {n_components:,}: the mixture's "
            f"covariances alone would take {n_components * n_features**2 * 8 / 2**30:,.1f} "
            f"GiB (at most {MAX_FEATURES:,} features, and components x features^2 x 8 bytes "
            "under 1 GiB); choose fewer features or components.")
    if chunk_rows is not None and chunk_rows < 1:
        raise DistgmmInputError(f"--chunk-rows must be at least 1, got {chunk_rows}.")
    location = StoreLocation(store, storage_options)
    check_store_destination(location, overwrite)
    if location.is_local:
        needed = n_points * n_features * stored.itemsize + n_points * 4
        probe = os.path.dirname(location.path)
        while not os.path.exists(probe):
            probe = os.path.dirname(probe)
        free = shutil.disk_usage(probe).free
        if needed > free:
            raise DistgmmInputError(
                f"--points {n_points:,} x {n_features} {stored.name} is about "
                f"{needed / 2**30:,.1f} GiB, more than the {free / 2**30:,.1f} GiB free where "
                f"{store} would go; generate fewer points or choose another location.")


@dataclass(frozen=True)
class GenerateReport:
    """What :func:`generate` wrote (JSON-ready through :meth:`to_dict`)."""

    store: str
    n_rows: int
    n_features: int
    n_components: int
    dtype: str
    chunk_rows: int
    n_chunks: int
    seed: int
    preset: str | None
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (adds ``rows_per_second``)."""
        return {**asdict(self), "rows_per_second": self.n_rows / self.seconds if self.seconds else None}


def mixture_parameters(seed: int, n_components: int, n_features: int) -> dict[str, np.ndarray]:
    """Random, reasonably separated mixture parameters drawn from ``SeedSequence(seed)``'s stream 0.

    Returns
    -------
    dict
        ``weights`` (K,), ``means`` (K, D) and ``covariances`` (K, D, D).
    """
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    weights = rng.dirichlet(np.full(n_components, 5.0))
    means = rng.uniform(-10.0, 10.0, size=(n_components, n_features))
    factors = rng.normal(size=(n_components, n_features, n_features))
    covariances = factors @ factors.transpose(0, 2, 1) / n_features + 0.1 * np.eye(n_features)
    return {"weights": weights, "means": means, "covariances": covariances}


def _generate_chunk(index: int, *, location: StoreLocation, n_rows: int, chunk_rows: int,
                    seed: int, weights: np.ndarray, means: np.ndarray, cholesky: np.ndarray,
                    counts: list[int] | None) -> int:
    """Draw and write chunk ``index``; its stream is ``SeedSequence(seed, spawn_key=(1, index))``."""
    start = index * chunk_rows
    stop = min(start + chunk_rows, n_rows)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1, index)))
    if counts is None:
        truth = rng.choice(len(weights), size=stop - start, p=weights)
    else:
        truth = np.searchsorted(np.cumsum(counts), np.arange(start, stop), side="right")
    noise = rng.standard_normal((stop - start, means.shape[1]))
    points = np.empty_like(noise)
    for k in range(len(weights)):
        mask = truth == k
        points[mask] = means[k] + noise[mask] @ cholesky[k].T
    group = zarr.open_group(location.zarr_store(read_only=False), mode="r+")
    writable_rows(group["points"])[start:stop] = points.astype(group["points"].dtype)
    writable_rows(group["truth"])[start:stop] = truth.astype(np.int32)
    return stop - start


def _gather_counting(client, futures) -> int:
    """Rows written by the chunk tasks, counted as they finish (each reported as a progress
    event); the first failure cancels the rest."""
    from distributed import as_completed

    written = 0
    try:
        for done, future in enumerate(as_completed(futures, loop=client.loop), start=1):
            written += future.result()
            report(CHUNK_WRITTEN, done)
    finally:
        client.cancel([f for f in futures if not f.done()])
    return written


def generate(store: str, *, n_points: int = 10_000_000, n_features: int = 8,
             n_components: int = 8, seed: int | None = None, dtype: str = "float32",
             chunk_rows: int | None = None, preset: str | None = None, overwrite: bool = False,
             storage_options: dict[str, Any] | None = None, client=None,
             lock_wait: float | None = None) -> GenerateReport:
    """Write a synthetic Gaussian-mixture point store, one Dask task per chunk.

    Each chunk's random stream comes from ``SeedSequence(seed, spawn_key=(1, chunk_index))``
    (parameters from ``spawn_key=(0,)``), so the data depend on the seed and chunking only,
    never on the number of workers or the task order. True labels go to ``truth``; the true
    parameters to the group attribute ``distgmm.generated``.

    Parameters
    ----------
    store : str
        Destination path or fsspec URL (must be reachable by the workers).
    n_points, n_features, n_components : int
        Size of the data set (ignored fields are refused when ``preset`` fixes them).
    seed : int, optional
        Random seed; drawn from the OS and recorded in the attributes when omitted.
    dtype : {"float32", "float64"}
        Stored dtype.
    chunk_rows : int, optional
        Rows per chunk; default about 16 MiB of points per chunk (at most ``n_points``).
    preset : {"seed-blobs"}, optional
        A named data set from :data:`PRESETS`.
    overwrite : bool
        Replace an existing point store.
    storage_options : dict, optional
        fsspec options for a remote ``store``.
    client : distributed.Client, optional
        Default: :func:`distgmm.cluster.get_client`.
    lock_wait : float, optional
        Seconds to wait while another process writes this store; default
        ``$DISTGMM_LOCK_WAIT`` or 60 (see :mod:`distgmm.store._lock`).

    Returns
    -------
    GenerateReport
    """
    from distgmm.cluster import get_client

    t0 = time.perf_counter()
    check_generate(store, n_points=n_points, n_features=n_features, n_components=n_components,
                   dtype=dtype, chunk_rows=chunk_rows, preset=preset, overwrite=overwrite,
                   storage_options=storage_options)
    stored = check_dtype(dtype)
    if seed is None:
        seed = int(np.random.SeedSequence().entropy % 2**63)
    counts = None
    if preset is not None:
        spec = PRESETS[preset]
        counts = list(spec["counts"])
        means = np.asarray(spec["means"], dtype=float)
        covariances = np.asarray(spec["covariances"], dtype=float)
        n_points, (n_components, n_features) = sum(counts), means.shape
        weights = np.asarray(counts, dtype=float) / sum(counts)
    else:
        params = mixture_parameters(seed, n_components, n_features)
        weights, means, covariances = params["weights"], params["means"], params["covariances"]
    if chunk_rows is None:
        chunk_rows = min(default_chunk_rows(n_features, stored), n_points)
    n_chunks = math.ceil(n_points / chunk_rows)
    generated = {"seed": seed, "preset": preset, "weights": weights.tolist(),
                 "means": means.tolist(), "covariances": covariances.tolist()}
    location = StoreLocation(store, storage_options)
    client = client or get_client()
    with rows_lock(location, "generate", lock_wait) as lock, building_store(
            location, overwrite=overwrite,
            guard=lambda: replace_lock(location, "generate --overwrite", lock_wait)) as tmp:
        group = create_layout(
            tmp, n_rows=n_points, n_features=n_features, dtype=stored, chunk_rows=chunk_rows,
            columns=None, with_truth=True,
            provenance={"op": "generate", "seed": seed, "preset": preset, "time": now_iso()},
            extra_attrs={"generated": generated})
        futures = client.map(
            _generate_chunk, range(n_chunks), location=tmp, n_rows=n_points,
            chunk_rows=chunk_rows, seed=seed, weights=weights, means=means,
            cholesky=np.linalg.cholesky(covariances), counts=counts, pure=False)
        written = _gather_counting(client, futures)
        assert written == n_points
        lock.ensure_held()
        mark_complete(group)
    seconds = time.perf_counter() - t0
    logger.info("generated %d x %d rows into %s in %.1f s", n_points, n_features, store, seconds)
    return GenerateReport(store=store, n_rows=n_points, n_features=n_features,
                          n_components=n_components, dtype=stored.name, chunk_rows=chunk_rows,
                          n_chunks=n_chunks, seed=seed, preset=preset, seconds=seconds)
