"""What a picture of the data needs, from passes over its chunks: principal axes, sampled rows, per-label 2-D histograms, score sketches.

Plotting (:mod:`distgmm.plotting`) only draws; the reductions it draws from run here, as
passes of the engine (:class:`~distgmm.engine.passes.Points`): on the current cluster for
dask input, in this process for in-memory input. Only small results (D x D moments, at
most a marker sample of rows, histograms) reach the caller, so memory does not grow with
the number of points.

Labels given by the caller (a store's ``labels/<name>``) travel as one more column of the
points (int32 values are exact in float64), so a chunk's rows and its labels stay together
whichever runner reads them.
"""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np

from distgmm._kernels import BLOCK_ROWS, plane_histograms
from distgmm._scores import ScoreMoments, ScoreSketch, chunk_score_sketch
from distgmm._statistics import DataMoments, chunk_moments, merge_data_moments
from distgmm.engine.passes import Points, merge_values
from distgmm.engine.placement import cluster_points, local_points

__all__ = ["view_points", "principal_axes", "sampled_rows", "label_histograms",
           "score_sketches"]

def view_points(points: Any, labels: Any = None) -> Points:
    """The points (D columns, then the labels as one more column when given) as
    :class:`Points`: on the current cluster for dask input, in this process otherwise."""
    if isinstance(points, da.Array):
        if points.numblocks[1] > 1:
            points = points.rechunk({1: -1})
        if labels is not None:
            labels = labels if isinstance(labels, da.Array) else da.from_array(np.asarray(labels))
            labels = labels.rechunk((points.chunks[0],)).astype(np.float64)[:, None]
            points = da.concatenate([points.astype(np.float64), labels],
                                    axis=1).rechunk({1: -1})
        from distgmm.cluster import get_client

        return cluster_points(points, None, get_client(), persist=False)
    array = np.asarray(points, dtype=np.float64)
    if labels is not None:
        array = np.column_stack([array, np.asarray(labels, dtype=np.float64)])
    return local_points(array, None)


def _moments_task(block, weights, index, n_features: int) -> DataMoments:
    return chunk_moments(block[:, :n_features], None)


def principal_axes(data: Points, n_features: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Principal axes of the first ``n_features`` columns, from one pass.

    Each chunk contributes its count, mean and centered scatter, merged with the pairwise
    correction (no raw sums of squares); the D x D eigendecomposition runs here.

    Returns
    -------
    mean : ndarray of shape (D,)
    components : ndarray of shape (D, D)
        Unit principal directions as columns, by decreasing variance; each is signed so
        that its largest-magnitude coordinate is positive.
    explained_variance_ratio : ndarray of shape (D,)
    """
    moments = data.map_reduce(_moments_task, n_features, merge=merge_data_moments)
    n = moments.weight_sum
    if n < 2:
        raise ValueError(f"PCA needs at least 2 points; got {int(n)}")
    values, vectors = np.linalg.eigh(moments.scatter / (n - 1))
    order = np.argsort(values)[::-1]
    values, vectors = np.clip(values[order], 0.0, None), vectors[:, order]
    signs = np.sign(vectors[np.argmax(np.abs(vectors), axis=0), np.arange(vectors.shape[1])])
    vectors = vectors * np.where(signs == 0, 1.0, signs)
    ratio = values / values.sum() if values.sum() > 0 else np.zeros_like(values)
    return moments.mean, vectors, ratio


def sampled_rows(n_rows: int, size: int, seed: int) -> np.ndarray | None:
    """Sorted row indices of a deterministic sample, or ``None`` to take every row."""
    if n_rows <= size:
        return None
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_rows, size=size, replace=False))


def _histogram_task(block, weights, index, model, n_features: int, labelled: bool,
                    planes: dict) -> tuple[np.ndarray, np.ndarray]:
    """Per-label histograms of one chunk, :data:`BLOCK_ROWS` rows at a time; the labels are
    the chunk's last column, or ``model.predict`` of each slice."""
    n_components = int(model.n_components)
    total = None
    for start in range(0, block.shape[0], BLOCK_ROWS):
        rows = np.asarray(block[start:start + BLOCK_ROWS], dtype=np.float64)
        X = rows[:, :n_features]
        labels = rows[:, n_features] if labelled else model.predict(X)
        part = plane_histograms(X, labels, n_components, **planes)
        total = part if total is None else _add_histograms([total, part])
    if total is None:
        bins = planes["bins"]
        return (np.zeros((len(planes["directions"]), n_components, bins, bins), np.int64),
                np.zeros(n_components, np.int64))
    return total


def _add_histograms(parts: list[tuple]) -> tuple[np.ndarray, np.ndarray]:
    counts, totals = parts[0]
    for c, t in parts[1:]:
        counts, totals = counts + c, totals + t
    return counts, totals


def label_histograms(data: Points, model: Any, n_features: int, labelled: bool, *,
                     directions: np.ndarray, offsets: np.ndarray, lows: np.ndarray,
                     widths: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-label 2-D histograms of every plane, from one pass.

    Parameters
    ----------
    data : Points
        From :func:`view_points`: D feature columns, then the labels if ``labelled``.
    model : fitted mixture
        Predicts the labels chunk by chunk when ``labelled`` is false; gives K.
    n_features : int
    labelled : bool
    directions, offsets, lows, widths, bins
        As :func:`distgmm._kernels.plane_histograms`.

    Returns
    -------
    counts : ndarray of shape (P, K, bins, bins)
    label_totals : ndarray of shape (K,)
    """
    planes = {"directions": directions, "offsets": offsets, "lows": lows, "widths": widths,
              "bins": bins}
    return data.map_reduce(_histogram_task, model, n_features, labelled, planes,
                           merge=_add_histograms)


def _sketch_task(block, weights, index, upper: float) -> ScoreSketch:
    """The sketch of one chunk of stored scores (one column); unscored rows (NaN) are left
    out."""
    scores = np.asarray(block[:, 0], dtype=np.float64)
    return chunk_score_sketch(scores[np.isfinite(scores)], None, upper)


def _merge_sketches(parts: list[ScoreSketch]) -> ScoreSketch:
    total = parts[0]
    for part in parts[1:]:
        total = total.combine(part)
    return total


def score_sketches(data: Points, groups: list[list[int]], upper: float) -> list[ScoreSketch]:
    """The sketch of the stored scores of each group of chunks, from one pass over the
    chunks of all groups.

    Parameters
    ----------
    data : Points
        From :func:`view_points` of a ``scores/<name>`` array as one column.
    groups : list of list of int
        Chunk indices of each group (e.g. the chunks a label run scored); groups are
        disjoint.
    upper : float
        The model's score bound (:func:`distgmm._scores.score_upper_bound`).

    Returns
    -------
    list of ScoreSketch
        One per group, merged in chunk order.
    """
    chunks = sorted({i for group in groups for i in group})
    values = dict(zip(chunks, data.map_chunks(_sketch_task, upper, chunks=chunks)))
    return [merge_values([values[i] for i in sorted(group)], _merge_sketches) if group
            else ScoreSketch(upper, ScoreMoments(0.0, 0.0, 0.0), 0, np.zeros(0))
            for group in groups]
