"""One labeller: each row chunk's labels (and probabilities, scores, outlier flags) written to Zarr by the worker that holds or reads it.

Behind both the label job (:mod:`distgmm.jobs._label`: a store's own rows into
``labels/<name>``, with a record for scheduled runs) and :func:`predict_to_zarr` (points
on the cluster into a new array). A pass of the engine's :meth:`Points.map_chunks` runs
:func:`_write_chunk` on every chunk asked for: in place on the workers for persisted
points, one task per chunk otherwise; only row counts (and, with scores, the chunk's
:class:`~distgmm._scores.ScoreMoments`) come back. The arrays' chunks are the points' row
chunks, so no two workers write the same Zarr chunk.

With scores, labels, probabilities and scores come from one E-step per block
(:func:`distgmm._scores.score_block`). Scores are stored as float32; a point is an outlier
when its *stored* score is below the threshold, so the flags are exactly
``scores < threshold`` for anyone who reads both back.

:func:`predict_to_zarr` decisions:

* Output: a Zarr v3 array of shape (N,), int32, fill value -1, whose chunks are the row
  chunks of ``X``; ``X`` must therefore have regular row chunks (all equal, the last one no
  larger); anything else is refused with the ``rechunk`` that fixes it. NumPy input is
  scattered first, as a fit on a cluster does.
* Nothing partial is left behind: a local array is written under a hidden sibling name and
  renamed into place when every chunk is written; a remote one is removed if writing fails.
  An existing destination is refused unless ``overwrite=True``, and only a Zarr array is
  ever replaced (never a directory of something else).
"""

from __future__ import annotations

import functools
import json
import uuid
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import zarr

from distgmm._base import as_points
from distgmm._score_kernels import stored_scores
from distgmm._scores import ScoreMoments, score_block
from distgmm._statistics import MixtureParams, label_block
from distgmm.engine import ClusterPoints, Points, numpy_chunk_rows, scattered
from distgmm.errors import DistgmmInputError
from distgmm.store import StoreLocation, create_label_array, write_rows
from distgmm.store._integrity import check_finite_rows
from distgmm.store._location import building

__all__ = ["LabelTarget", "write_labels", "predict_to_zarr", "model_parameters",
           "model_score_shift"]


@dataclass(frozen=True)
class LabelTarget:
    """Where the labeller writes, in the store at ``location``.

    Attributes
    ----------
    location : StoreLocation
    labels : str
        Path of the (N,) int32 labels array in the store ("" for a store that is the array).
    proba : str, optional
        Path of the (N, K) float32 probabilities array, when they are written.
    refuse_nonfinite : bool
        Refuse a chunk holding NaN/inf rows, naming it (the label job: ingest never writes
        such rows, so they are damage; a NaN row would otherwise get label 0).
    scores, outliers : str, optional
        Paths of the (N,) float32 scores and (N,) bool outlier flags, when they are written
        (both or neither).
    threshold : float
        Scores below it are outliers.
    score_shift : float
        Added to the scores the model's E-step parameters give (:func:`model_score_shift`).
    """

    location: StoreLocation
    labels: str
    proba: str | None = None
    refuse_nonfinite: bool = False
    scores: str | None = None
    outliers: str | None = None
    threshold: float = float("nan")
    score_shift: float = 0.0


@functools.lru_cache(maxsize=8)
def _array(location: StoreLocation, path: str, token: str) -> zarr.Array:
    """An output array, opened once per worker and run (``token``) instead of per chunk
    (about 1 ms each)."""
    return zarr.open_array(location.zarr_store(read_only=False), path=path or None, mode="r+")


def _write_chunk(block, weights, index, params: MixtureParams, target: LabelTarget,
                 starts: np.ndarray, token: str) -> tuple[int, ScoreMoments | None]:
    """Chunk function: label chunk ``index`` and write its rows; returns the row count and,
    with scores, the chunk's score moments and outlier count."""
    X = np.asarray(block)
    start = int(starts[index])
    if target.refuse_nonfinite:
        check_finite_rows(X, target.location.url, "points", start,
                          int(starts[1] if len(starts) > 1 else X.shape[0]))
    stop = start + X.shape[0]
    moments = None
    writes = []
    if target.scores is None:
        labels, probs = label_block(params, X, target.proba is not None)
    else:
        labels, probs, scores = score_block(params, X, target.score_shift,
                                            target.proba is not None)
        stored, flags, mean, m2, outliers = stored_scores(scores, target.threshold)
        moments = ScoreMoments(float(len(scores)), mean, m2, float(outliers))
        writes += [(target.scores, stored), (target.outliers, flags)]
    if target.proba is not None:
        writes.append((target.proba, probs))
    writes.append((target.labels, labels))
    write_rows([(_array(target.location, path, token), values) for path, values in writes],
               start, stop)
    return X.shape[0], moments


def write_labels(points: Points, params: MixtureParams, target: LabelTarget, *,
                 chunks: list[int] | None = None,
                 on_chunk: Callable[[int, int, ScoreMoments | None], None] | None = None
                 ) -> int:
    """Write the labels of ``chunks`` (default all) of ``points`` to ``target``.

    Parameters
    ----------
    points : Points
        The rows, chunked like the target arrays.
    params : MixtureParams
        The model (its E-step parameters).
    target : LabelTarget
    chunks : list of int, optional
    on_chunk : callable, optional
        ``on_chunk(index, rows, moments)`` as each chunk is written (in any order);
        ``moments`` is the chunk's :class:`~distgmm._scores.ScoreMoments` when the target
        has scores, else None.

    Returns
    -------
    int
        Rows written.
    """
    starts = np.cumsum((0,) + tuple(points.row_chunks))[:-1]
    on_value = None if on_chunk is None else (lambda i, value: on_chunk(i, *value))
    written = points.map_chunks(_write_chunk, params, target, starts, uuid.uuid4().hex,
                                chunks=chunks, on_value=on_value)
    return int(sum(rows for rows, _ in written))


def model_parameters(model: Any) -> MixtureParams:
    """The E-step parameters of a fitted mixture (distgmm's or scikit-learn's Gaussian
    mixture, or distgmm's Bayesian one), refusing an unfitted model."""
    if not hasattr(model, "precisions_cholesky_"):
        raise DistgmmInputError(
            f"{type(model).__name__} is not fitted; call fit first or load a model file "
            "with distgmm.load_model.")
    if hasattr(model, "_e_step_params"):
        return model._e_step_params()[0]
    return MixtureParams.of_model(model)


def model_score_shift(model: Any) -> float:
    """What to add to scores under :func:`model_parameters` for the model's
    ``score_samples``: 0 for a Gaussian mixture, a constant for a Bayesian one."""
    if hasattr(model, "_e_step_params"):
        return float(model._e_step_params()[1])
    return 0.0


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
    model : GaussianMixture or BayesianGaussianMixture
        A fitted distgmm mixture or scikit-learn ``GaussianMixture``.
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
        destination (see the module docstring).
    """
    from distgmm.cluster import get_client

    params = model_parameters(model)
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
        create_label_array(target, n_rows, chunk_rows)
        if n_rows:
            written = write_labels(ClusterPoints(X, None, client), params,
                                   LabelTarget(target, ""))
            if written != n_rows:  # pragma: no cover - a broken invariant, not bad input
                raise RuntimeError(f"wrote {written} labels for {n_rows} rows")
    return zarr.open_array(location.zarr_store(read_only=True), mode="r")
