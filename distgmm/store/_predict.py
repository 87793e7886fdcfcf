"""Labels of points already on the cluster, written to a Zarr array by the workers that hold them.

:func:`predict_to_zarr` stores ``model.predict(X)`` at a Zarr URL without the labels
travelling through the client: the worker that holds (or reads) a row chunk of ``X``
computes its labels and writes them to the matching region of the output array. It is the
in-memory counterpart of the label job (:mod:`distgmm.jobs._label`), which reads its rows
from a point store and keeps a per-chunk record for scheduled runs; use this one after a
fit on data persisted on the cluster (``X.persist()``), where reading the store again would
cost more than labelling.

Decisions:

* Output: a Zarr v3 array of shape (N,), int32, fill value -1, whose chunks are the row
  chunks of ``X``, so no two workers write the same Zarr chunk. ``X`` must therefore have
  regular row chunks (all equal, the last one no larger); anything else is refused with
  the ``rechunk`` that fixes it.
* Persisted ``X`` is labelled in place: one ``Client.run`` in which each worker labels the
  chunks it holds (as the EM passes do, see :class:`distgmm.engine.ClusterPoints`; only
  row counts come back); otherwise one task per chunk. NumPy input is scattered first, as
  :meth:`GaussianMixture.fit` does.
* Nothing partial is left behind: a local array is written under a hidden sibling name and
  renamed into place when every chunk is written; a remote one is removed if writing fails.
  An existing destination is refused unless ``overwrite=True``, and only a Zarr array is
  ever replaced (never a directory of something else).
"""

from __future__ import annotations

import functools
import json
import uuid
from typing import Any

import numpy as np
import zarr

from distgmm._estimator import as_points
from distgmm.engine import ClusterPoints, numpy_chunk_rows, scattered
from distgmm._statistics import MixtureParams
from distgmm.cluster import get_client
from distgmm.errors import DistgmmInputError
from distgmm.store._location import StoreLocation, building
from distgmm.store._points import _label_compressors

__all__ = ["predict_to_zarr"]


def _params_of(model: Any) -> MixtureParams:
    """The parameters of a fitted GaussianMixture (distgmm's or scikit-learn's)."""
    if not hasattr(model, "precisions_cholesky_"):
        raise DistgmmInputError(
            f"{type(model).__name__} is not fitted; call fit first or load a model file "
            "with distgmm.load_model.")
    return MixtureParams.of_model(model)


@functools.lru_cache(maxsize=2)
def _output(location: StoreLocation, token: str) -> zarr.Array:
    """The output array, opened once per worker and call (``token``) instead of per chunk
    (about 1 ms each)."""
    return zarr.open_array(location.zarr_store(read_only=False), mode="r+")


def _write_chunk(block, weights, index, location: StoreLocation, token: str,
                 params: MixtureParams, chunk_rows: int) -> int:
    """Chunk function of the pass: label chunk ``index`` and write its region."""
    labels = params.labels(np.asarray(block)).astype(np.int32)
    start = index * chunk_rows
    _output(location, token)[start:start + labels.shape[0]] = labels
    return labels.shape[0]


def _total(parts: list[int]) -> int:
    return sum(parts)


def _regular_chunk_rows(row_chunks: tuple[int, ...]) -> int:
    first = row_chunks[0]
    if any(c != first for c in row_chunks[:-1]) or row_chunks[-1] > first:
        raise DistgmmInputError(
            f"X has irregular row chunks ({', '.join(map(str, row_chunks[:4]))}"
            f"{', ...' if len(row_chunks) > 4 else ''}), which would make two workers write "
            f"the same Zarr chunk; rechunk it first, e.g. X.rechunk({{0: {first}}}).")
    return first


def _is_zarr_array(location: StoreLocation) -> bool:
    fs, path = location.filesystem()
    try:
        with fs.open(f"{path.rstrip('/')}/zarr.json", "rb") as handle:
            return json.load(handle).get("node_type") == "array"
    except (OSError, ValueError):
        return False


def _check_destination(location: StoreLocation, overwrite: bool) -> None:
    if not location.exists():
        return
    if not _is_zarr_array(location):
        raise DistgmmInputError(
            f"destination {location} exists and is not a Zarr array; refusing to touch it. "
            "Choose another path or remove it yourself.")
    if not overwrite:
        raise DistgmmInputError(
            f"destination {location} already exists; pass overwrite=True to replace it, or "
            "choose another path.")


def predict_to_zarr(model: Any, X: Any, url: str, *, overwrite: bool = False, client: Any = None,
                    storage_options: dict[str, Any] | None = None) -> zarr.Array:
    """Write ``model.predict(X)`` to a new Zarr array at ``url``, chunk by chunk on the workers.

    Parameters
    ----------
    model : GaussianMixture
        A fitted distgmm or scikit-learn ``GaussianMixture``.
    X : dask array, Zarr array or array-like of shape (N, D)
        The points; a persisted dask array is labelled where its chunks are.
    url : str
        Destination path or fsspec URL, reachable by the workers.
    overwrite : bool
        Replace an existing Zarr array at ``url``.
    client : distributed.Client, optional
        Default: as :func:`distgmm.cluster.get_client`.
    storage_options : dict, optional
        fsspec options for a remote destination.

    Returns
    -------
    zarr.Array
        The labels (N,) int32, opened read-only.

    Raises
    ------
    DistgmmInputError
        Unfitted model, feature count mismatch, irregular row chunks, or an existing
        destination (see the module rules).
    """
    params = _params_of(model)
    try:
        X, lazy = as_points(X)
    except ValueError as exc:
        raise DistgmmInputError(str(exc)) from None
    n_rows, n_features = X.shape
    if n_features != params.n_features:
        raise DistgmmInputError(
            f"X has {n_features} features but the model was fitted on {params.n_features}; "
            "label with a model fitted on data like X.")
    location = StoreLocation(url, storage_options)
    _check_destination(location, overwrite)
    client = client or get_client()
    if not lazy:
        rows = numpy_chunk_rows(n_rows, n_features)
        X = scattered(client, [np.ascontiguousarray(X[s:s + rows])
                               for s in range(0, n_rows, rows)])
    chunk_rows = _regular_chunk_rows(X.chunks[0]) if n_rows else 1
    with building(location) as target:
        zarr.create_array(target.zarr_store(read_only=False), shape=(n_rows,),
                          chunks=(chunk_rows,), dtype="int32", fill_value=-1,
                          compressors=_label_compressors(), dimension_names=("row",))
        if n_rows:
            written = ClusterPoints(X, None, client).map_reduce(
                _write_chunk, target, uuid.uuid4().hex, params, chunk_rows, merge=_total)
            if written != n_rows:  # pragma: no cover - a broken invariant, not bad input
                raise RuntimeError(f"wrote {written} labels for {n_rows} rows")
    return zarr.open_array(location.zarr_store(read_only=True), mode="r")
