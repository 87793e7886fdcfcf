"""Per-block kernels for scores (per-point log-likelihoods): labels and scores in one sweep, and the score sketch's buckets.

Nothing here imports Dask. The compiled kernels reuse the building blocks of
:mod:`distgmm._fused` (the expanded log-densities, the vectorised exponential); each has a
NumPy reference that runs when ``DISTGMM_KERNEL=numpy`` and that the tests compare with.

Labels and scores
    Labels alone need only the ``argmax`` of the weighted log-densities; a score is their
    log-sum-exp, which needs K exponentials per row. :func:`labels_and_scores` computes both
    from the same float64 log-densities in one sweep over cache-sized blocks, so asking for
    scores adds at most the exponentials and one logarithm per row, not a second E-step.
    A row whose runner-up component is more than ``39 + log(K - 1)`` nats below its best
    one skips them: the other ``K - 1`` terms of its sum add less than ``2**-56`` to the best
    one's ``1``, so the sum rounds to exactly 1 and the score is the best log-density, the
    same bits as the full sum. On well-separated data that is almost every row (and the
    scores then cost little more than the labels); rows between components pay the
    exponentials. For diag and spherical models,
    labels alone use a float32 GEMM; scores need float64 values, so with scores their labels
    come from the float64 GEMM, which gives the same labels.

Score buckets (the sketch, :class:`distgmm._scores.ScoreSketch`)
    A score ``s`` is bucketed by its distance below the model's upper bound ``U``
    (``t = U - s >= 0``; no score exceeds ``U``, see :func:`distgmm._scores.score_upper_bound`),
    on a log scale read straight from the bits of the float64 ``t``: its exponent and the
    top :data:`SKETCH_BITS` bits of its mantissa. Bucket edges are ``2**e * (1 + j / 128)``,
    exactly representable, so which side of an edge a value lies on is exact, and every
    bucket spans at most ``2**-7`` (0.78%) of its lower edge. Distances below
    :data:`T_MIN` share the first bucket and those from :data:`T_MAX` up the last.
"""

from __future__ import annotations

import numpy as np

import math

from ._fused import (
    HAVE_NUMBA,
    _block_buffers,
    _exp_or_zero,
    _expanded_block_log_prob,
    _expanded_setup,
    _fused_log_prob,
    _jit_ordered,
    _prepare,
    use_fused,
)
from ._kernels import log_responsibilities

__all__ = ["SKETCH_BITS", "T_MIN", "T_MAX", "N_BUCKETS", "labels_and_scores",
           "score_buckets", "score_moments", "stored_scores", "bucket_lower_edges"]

#: Mantissa bits per octave of the sketch's buckets: 128 buckets per doubling of ``t``.
SKETCH_BITS = 7
#: Distances ``t = U - s`` (nats) below this share the first bucket, those from
#: :data:`T_MAX` up the last: the sketch never needs more than :data:`N_BUCKETS` counts.
T_MIN = 2.0 ** -16
T_MAX = 2.0 ** 40
_SHIFT = 52 - SKETCH_BITS
_LOW = int(np.array(T_MIN).view(np.int64)) >> _SHIFT
_HIGH = int(np.array(T_MAX).view(np.int64)) >> _SHIFT
N_BUCKETS = _HIGH - _LOW + 1


def bucket_lower_edges(first: int, n: int) -> np.ndarray:
    """Lower edges (in ``t``) of buckets ``first .. first + n - 1``; the first bucket's is 0."""
    index = np.arange(first, first + n, dtype=np.int64)
    edges = ((index + _LOW) << _SHIFT).view(np.float64)
    return np.where(index == 0, 0.0, edges)


# ------------------------------------------------------------------ labels and scores
@_jit_ordered
def _log_sum_exp_columns(lpt, top, m, tot, scores, start):
    """``scores[start + i] = log sum_k exp(lpt[k, i])`` for the first ``m`` columns of
    ``lpt`` (K, block rows), given their maxima ``top``; ``tot`` is scratch. Its own
    function, as the E-step's :func:`distgmm._fused._responsibilities_columns`: written
    inline in the labels loop, the same sum of exponentials ran at half the speed."""
    K = lpt.shape[0]
    for i in range(m):
        tot[i] = 0.0
    for k in range(K):
        for i in range(m):
            tot[i] += _exp_or_zero(lpt[k, i] - top[i])
    for i in range(m):
        scores[start + i] = top[i] + math.log(tot[i])


@_jit_ordered
def _log_sum_exp_rows(lpt, top, rows, n_rows, tot, scores, start):
    """:func:`_log_sum_exp_columns` for the columns ``rows[:n_rows]`` only (gathered: about
    four times the cost per row of the contiguous loop, which vectorises)."""
    K = lpt.shape[0]
    for j in range(n_rows):
        tot[j] = 0.0
    for k in range(K):
        for j in range(n_rows):
            i = rows[j]
            tot[j] += _exp_or_zero(lpt[k, i] - top[i])
    for j in range(n_rows):
        i = rows[j]
        scores[start + i] = top[i] + math.log(tot[j])


@_jit_ordered
def _labels_scores_expanded(X, shift, Gt, log_const, cross_terms, exact, mc, fac, block_rows,
                            cut, labels, scores):
    """Labels (``argmax_k``, into ``labels``) and scores (``logsumexp_k``, into ``scores``)
    of the weighted log-densities of every row of ``X``, block by block: the labels kernel's
    ``argmax``, whose maxima then shift the log-sum-exp of the rows whose runner-up is
    within ``cut`` (< 0) of the maximum; the others' score is the maximum (module
    docstring)."""
    n, D = X.shape
    K, F = Gt.shape
    zt_full, lpt_full, zt_tail, lpt_tail, scratch = _block_buffers(n, F, K, block_rows)
    top = np.empty(block_rows)
    second = np.empty(block_rows)
    tot = np.empty(block_rows)
    best = np.empty(block_rows, dtype=np.int64)
    rows = np.empty(block_rows, dtype=np.int64)
    for start in range(0, n, block_rows):
        m = min(block_rows, n - start)
        zt = zt_full if m == block_rows else zt_tail
        lpt = lpt_full if m == block_rows else lpt_tail
        _expanded_block_log_prob(X, start, shift, Gt, log_const, cross_terms, exact, mc, fac, zt,
                                 lpt, scratch)
        for i in range(m):
            top[i] = lpt[0, i]
            second[i] = -np.inf
            best[i] = 0
        for k in range(1, K):
            for i in range(m):
                v = lpt[k, i]
                t = top[i]
                best[i] = k if v > t else best[i]
                low = v if v < t else t
                second[i] = low if low > second[i] else second[i]
                top[i] = v if v > t else t
        n_rows = 0
        for i in range(m):  # the rows that need the sum, collected without a branch
            labels[start + i] = best[i]
            scores[start + i] = top[i]
            rows[n_rows] = i
            n_rows += 1 if second[i] - top[i] >= cut else 0
        if n_rows * 4 > m:
            _log_sum_exp_columns(lpt, top, m, tot, scores, start)
        elif n_rows > 0:
            _log_sum_exp_rows(lpt, top, rows, n_rows, tot, scores, start)


def _runner_up_cut(n_components: int) -> float:
    """How far (nats, < 0) below a row's best log-density its runner-up must lie for the
    row's score to be the best one exactly: the ``K - 1`` other terms then add less than
    ``2**-56`` to a sum of 1 (the margin covers the exponential's 1-ulp error)."""
    return math.log(2.0 ** -56 / max(n_components - 1, 1))


def labels_and_scores(X: np.ndarray, weights: np.ndarray, means: np.ndarray,
                      prec_chol: np.ndarray, covariance_type: str, score_shift: float = 0.0
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Labels (int32, ``argmax_k``) and scores (float64, ``log sum_k w_k N(x | k)`` plus
    ``score_shift``) of the rows of ``X`` (n, D), from the same float64 log-densities.

    ``score_shift`` is added to every weighted log-density (it changes no label): a
    Bayesian mixture's E-step parameters leave out a constant of scikit-learn's
    ``score_samples`` (:class:`distgmm._bayesian.VariationalEStep`).
    """
    if not use_fused():
        log_norm, log_resp = log_responsibilities(X, weights, means, prec_chol, covariance_type)
        return log_resp.argmax(axis=1).astype(np.int32), log_norm + score_shift
    setup = _expanded_setup(weights, means, prec_chol, covariance_type)
    if setup is not None:
        labels, scores = np.empty(X.shape[0], dtype=np.int32), np.empty(X.shape[0])
        setup = setup._replace(log_const=setup.log_const + score_shift)
        _labels_scores_expanded(np.ascontiguousarray(X), *setup, _runner_up_cut(len(weights)),
                                labels, scores)
        return labels, scores
    # diag/spherical with few components and features: the loop kernel's (n, K) values
    xt, _, prec, mc, log_const = _prepare(X, weights, means, prec_chol, covariance_type)
    weighted = _fused_log_prob(xt, prec, mc, log_const + score_shift)
    top = weighted.max(axis=1)
    scores = top + np.log(np.exp(weighted - top[:, None]).sum(axis=1))
    return weighted.argmax(axis=1).astype(np.int32), scores


# ------------------------------------------------------------------ the sketch's buckets
@_jit_ordered
def _score_buckets(scores, w, upper, low, high, shift_bits):
    n = scores.shape[0]
    t = np.empty(n)
    for i in range(n):
        t[i] = upper - scores[i]
    bits = t.view(np.int64)
    lo, hi = high, low
    for i in range(n):
        b = bits[i] >> shift_bits
        b = low if b < low else (high if b > high else b)
        bits[i] = b
        lo = b if b < lo else lo
        hi = b if b > hi else hi
    if n == 0:
        return 0, np.zeros(0)
    counts = np.zeros(hi - lo + 1)
    unit = w.shape[0] == 0
    for i in range(n):
        counts[bits[i] - lo] += 1.0 if unit else w[i]
    return lo - low, counts


def score_buckets(scores: np.ndarray, weights: np.ndarray | None, upper: float
                  ) -> tuple[int, np.ndarray]:
    """Bucket weights of ``scores`` (n,) below ``upper`` (module docstring).

    Returns
    -------
    first : int
        Index of the first bucket with a count (0 for no scores).
    counts : ndarray of shape (B,), float64
        Weights (counts for ``weights=None``) of buckets ``first .. first + B - 1``, from
        the first to the last non-empty one.
    """
    scores = np.ascontiguousarray(scores, dtype=np.float64)
    if HAVE_NUMBA and use_fused():
        w = np.empty(0) if weights is None else np.ascontiguousarray(weights, dtype=np.float64)
        first, counts = _score_buckets(scores, w, float(upper), _LOW, _HIGH, _SHIFT)
        return int(first), counts
    if scores.shape[0] == 0:
        return 0, np.zeros(0)
    with np.errstate(invalid="ignore"):
        bits = (float(upper) - scores).view(np.int64) >> _SHIFT
    index = np.clip(bits, _LOW, _HIGH) - _LOW
    first = int(index.min())
    counts = np.bincount(index - first, weights=weights).astype(np.float64)
    return first, counts


@_jit_ordered
def _score_moments(scores, w):
    """Two sweeps (weight and weighted sum; centered sum of squares), each in four
    interleaved partial sums (rows ``i % 4``) added in a fixed order: one chain of dependent
    additions ran at a quarter of the speed. ``w`` empty means unit weights."""
    n = scores.shape[0]
    unit = w.shape[0] == 0
    body = n - n % 4
    t0 = t1 = t2 = t3 = 0.0
    a0 = a1 = a2 = a3 = 0.0
    if unit:
        for i in range(0, body, 4):
            a0 += scores[i]
            a1 += scores[i + 1]
            a2 += scores[i + 2]
            a3 += scores[i + 3]
        for i in range(body, n):
            a0 += scores[i]
        total = float(n)
    else:
        for i in range(0, body, 4):
            t0 += w[i]
            t1 += w[i + 1]
            t2 += w[i + 2]
            t3 += w[i + 3]
            a0 += w[i] * scores[i]
            a1 += w[i + 1] * scores[i + 1]
            a2 += w[i + 2] * scores[i + 2]
            a3 += w[i + 3] * scores[i + 3]
        for i in range(body, n):
            t0 += w[i]
            a0 += w[i] * scores[i]
        total = (t0 + t1) + (t2 + t3)
    if not total > 0.0:
        return total, 0.0, 0.0
    mean = ((a0 + a1) + (a2 + a3)) / total
    a0 = a1 = a2 = a3 = 0.0
    for i in range(0, body, 4):
        d0 = scores[i] - mean
        d1 = scores[i + 1] - mean
        d2 = scores[i + 2] - mean
        d3 = scores[i + 3] - mean
        a0 += (1.0 if unit else w[i]) * d0 * d0
        a1 += (1.0 if unit else w[i + 1]) * d1 * d1
        a2 += (1.0 if unit else w[i + 2]) * d2 * d2
        a3 += (1.0 if unit else w[i + 3]) * d3 * d3
    for i in range(body, n):
        d0 = scores[i] - mean
        a0 += (1.0 if unit else w[i]) * d0 * d0
    return total, mean, (a0 + a1) + (a2 + a3)


def score_moments(scores: np.ndarray, weights: np.ndarray | None = None
                  ) -> tuple[float, float, float]:
    """``(sum of weights, weighted mean, centered weighted sum of squares)`` of ``scores``
    (two sweeps, float64; zeros for no weight)."""
    scores = np.ascontiguousarray(scores, dtype=np.float64)
    if HAVE_NUMBA and use_fused():
        w = np.empty(0) if weights is None else np.ascontiguousarray(weights, dtype=np.float64)
        total, mean, m2 = _score_moments(scores, w)
        return float(total), float(mean), float(m2)
    w = np.ones_like(scores) if weights is None else np.asarray(weights, dtype=np.float64)
    total = float(w.sum())
    if not total > 0:
        return total, 0.0, 0.0
    mean = float(w @ scores) / total
    return total, mean, float(w @ (scores - mean) ** 2)


@_jit_ordered
def _store_scores(scores, threshold, stored, flags):
    """float32 scores, flags and their count in one sweep; then the scores' moments."""
    n = scores.shape[0]
    outliers = 0
    for i in range(n):
        s = np.float32(scores[i])
        stored[i] = s
        flag = s < threshold
        flags[i] = flag
        outliers += 1 if flag else 0
    _, mean, m2 = _score_moments(scores, np.empty(0))
    return mean, m2, outliers


def stored_scores(scores: np.ndarray, threshold: float
                  ) -> tuple[np.ndarray, np.ndarray, float, float, int]:
    """What the label job stores of a chunk's float64 ``scores`` (n,), in two sweeps.

    Returns
    -------
    stored : ndarray of shape (n,), float32
    flags : ndarray of shape (n,), bool
        ``stored < threshold``: the flags agree with the stored scores exactly.
    mean, m2 : float
        Mean and centered sum of squares of the float64 scores (:func:`score_moments`).
    outliers : int
        ``flags.sum()``.
    """
    scores = np.ascontiguousarray(scores, dtype=np.float64)
    if HAVE_NUMBA and use_fused():
        stored = np.empty(scores.shape[0], dtype=np.float32)
        flags = np.empty(scores.shape[0], dtype=np.bool_)
        mean, m2, outliers = _store_scores(scores, np.float32(threshold), stored, flags)
        return stored, flags, float(mean), float(m2), int(outliers)
    stored = scores.astype(np.float32)
    flags = stored < np.float32(threshold)
    _, mean, m2 = score_moments(scores)
    return stored, flags, mean, m2, int(np.count_nonzero(flags))
