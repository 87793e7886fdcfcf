"""Scores (per-point log-likelihoods) as mergeable values: the fit's training figures, outlier thresholds and drift.

A point's *score* is its log-likelihood under the model, scikit-learn's ``score_samples``
(for a Bayesian mixture, its ``score_samples`` too: the log-sum-exp of the variational
E-step's weighted log-densities).

Values (each merged exactly, in the passes' fixed tree):

:class:`ScoreMoments`
    Weight, mean and centered sum of squares of scores (merged with the same pairwise
    correction as every other moment, :func:`~distgmm._statistics.merged_moments`), and
    the weight of those below an outlier threshold. The label job records one per labelled
    chunk in the store's label state.
:class:`ScoreSketch`
    Those moments and a histogram of the scores on a log scale of their distance below the
    model's upper bound (:mod:`distgmm._score_kernels`). Every EM pass computes one per
    run from the scores its E-step computes anyway, so the last pass of a fit leaves the
    training points' sketch with no extra read of the data.

The threshold of an outlier quantile ``q`` (:meth:`ScoreSketch.quantile`) is a bucket edge:
the largest score ``tau`` such that at least ``q`` of the training weight lies below it.
With ``s_q`` the exact ``q``-quantile and ``U`` the upper bound,
``0 <= tau - s_q < 2**-7 (U - s_q)`` (0.78% of the distance below the bound: about 0.1 nats
for the 0.001-quantile of 8-dimensional data), and the training share below ``tau``
(:attr:`ScoreProfile.outlier_share`, at least ``q`` and at most one bucket's share more) is
exact, so drift compares a batch's outlier rate with the rate the training data really had.

:class:`ScoreProfile` is a model's training figures: the last pass's sketch, how much its
mean still moved in that pass (``settling``), and the outlier threshold.
:meth:`ScoreProfile.drift` judges a batch against it (:class:`ScoreDrift`):

* **mean score**: ``z = (m - m0) / se`` with ``se**2 = v0 / n + v0 / n0 + settling**2``
  (``m0``, ``v0``, ``n0`` the training mean, variance and weight; ``m``, ``n`` the batch's).
  Two-sided: scores that rise (data contracting) are drift as much as scores that fall.
  ``settling`` accounts for the saved model being one M-step past the pass the figures come
  from; it is below ``tol`` for a converged fit.
* **outlier rate**: the batch's outlier count ``x`` against a binomial with the training
  share ``p0``: its exact upper-tail (mid-p) probability ``P(X > x) + P(X = x) / 2``,
  expressed as the normal quantile ``z`` with the same tail (so small batches with a
  handful of expected outliers are judged right). One-sided: fewer outliers than expected
  is no sign of staleness.
* **drift** when ``|z_mean| >= threshold`` or ``z_outliers >= threshold``
  (:data:`DEFAULT_DRIFT_THRESHOLD`: 4, a false alarm about once in 10,000 batches of
  independent points from the training distribution).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ._kernels import log_det_cholesky
from ._score_kernels import bucket_lower_edges, labels_and_scores, score_buckets, score_moments
from ._statistics import BLOCK_ROWS, MixtureParams, SufficientStatistics, chunk_statistics, \
    merged_moments

__all__ = ["DEFAULT_OUTLIER_QUANTILE", "DEFAULT_DRIFT_THRESHOLD", "ScoreMoments", "ScoreSketch",
           "ScoreProfile", "ScoreDrift", "chunk_score_sketch", "scored_statistics",
           "score_block", "score_upper_bound", "merge_scores"]

#: Outlier quantile of the training scores a fit records a threshold for by default.
DEFAULT_OUTLIER_QUANTILE = 1e-3
#: Drift is reported when a batch's mean-score or outlier-rate statistic reaches this many
#: standard errors (see the module docstring).
DEFAULT_DRIFT_THRESHOLD = 4.0


def _merge_moments(a_weight, a_mean, a_m2, b_weight, b_mean, b_m2) -> tuple[float, float, float]:
    n, mean, m2 = merged_moments(a_weight, np.array([a_mean]), np.array([a_m2]),
                                 b_weight, np.array([b_mean]), np.array([b_m2]))
    return float(n), float(mean[0]), float(m2[0])


@dataclass(frozen=True)
class ScoreMoments:
    """Weight, mean and centered sum of squares of scores, and the weight below a threshold.

    Attributes
    ----------
    weight : float
        Sum of the points' weights (their count for unweighted points).
    mean : float
        Weighted mean score.
    m2 : float
        ``sum_i w_i (s_i - mean)**2``.
    outliers : float
        Weight of the scores below the outlier threshold.
    """

    weight: float
    mean: float
    m2: float
    outliers: float = 0.0

    @property
    def variance(self) -> float:
        return self.m2 / self.weight if self.weight > 0 else math.nan

    def combine(self, other: "ScoreMoments") -> "ScoreMoments":
        """Both parts' moments, merged exactly."""
        weight, mean, m2 = _merge_moments(self.weight, self.mean, self.m2,
                                          other.weight, other.mean, other.m2)
        return ScoreMoments(weight, mean, m2, self.outliers + other.outliers)

    @classmethod
    def merged(cls, parts: list["ScoreMoments"]) -> "ScoreMoments":
        """Parts merged left to right (an empty list gives zero weight)."""
        total = cls(0.0, 0.0, 0.0)
        for part in parts:
            total = total.combine(part)
        return total

    def to_list(self) -> list[float]:
        """``[weight, mean, m2, outliers]``: how the label state stores one chunk's."""
        return [self.weight, self.mean, self.m2, self.outliers]

    @classmethod
    def from_list(cls, values: list[float]) -> "ScoreMoments":
        return cls(*(float(v) for v in values))


@dataclass(frozen=True)
class ScoreSketch:
    """Scores summarised: their moments and a histogram of their distance below ``upper``.

    Attributes
    ----------
    upper : float
        The model's upper bound on scores (:func:`score_upper_bound`); bucket ``j`` holds
        the scores ``s`` with ``upper - s`` in ``[edge_j, edge_{j+1})``
        (:func:`distgmm._score_kernels.bucket_lower_edges`).
    moments : ScoreMoments
        Weight, mean and centered sum of squares (``outliers`` unused).
    first : int
        Index of the first bucket in ``counts``.
    counts : ndarray of shape (B,), float64
        Weights of buckets ``first .. first + B - 1``.
    """

    upper: float
    moments: ScoreMoments
    first: int
    counts: np.ndarray = field(repr=False)

    @property
    def weight(self) -> float:
        return self.moments.weight

    @property
    def mean(self) -> float:
        return self.moments.mean

    @property
    def variance(self) -> float:
        return self.moments.variance

    def combine(self, other: "ScoreSketch") -> "ScoreSketch":
        """Both parts merged exactly (same ``upper``: sketches of one model's scores)."""
        if not len(other.counts):
            return replace(self, moments=self.moments.combine(other.moments))
        if not len(self.counts):
            return replace(other, moments=self.moments.combine(other.moments))
        first = min(self.first, other.first)
        stop = max(self.first + len(self.counts), other.first + len(other.counts))
        counts = np.zeros(stop - first)
        counts[self.first - first:self.first - first + len(self.counts)] += self.counts
        counts[other.first - first:other.first - first + len(other.counts)] += other.counts
        return ScoreSketch(self.upper, self.moments.combine(other.moments), first, counts)

    def shifted(self, shift: float) -> "ScoreSketch":
        """The sketch of every score plus ``shift`` (the buckets, distances below the
        bound, are unchanged)."""
        if shift == 0.0:
            return self
        m = self.moments
        return ScoreSketch(self.upper + shift, ScoreMoments(m.weight, m.mean + shift, m.m2),
                           self.first, self.counts)

    def histogram(self) -> tuple[np.ndarray, np.ndarray]:
        """``(edges, weights)``: the non-empty range of buckets as score intervals, in
        increasing score; ``edges`` (B + 1,), ``weights`` (B,)."""
        edges = bucket_lower_edges(self.first, len(self.counts) + 1)
        return self.upper - edges[::-1], self.counts[::-1].copy()

    def binned(self, edges: np.ndarray) -> np.ndarray:
        """Weights of the sketched scores in the intervals of increasing score ``edges``
        (B + 1,), each bucket counted in the interval that holds its middle; scores
        outside the edges are left out. For drawing: shape (B,)."""
        bucket_edges, weights = self.histogram()
        if not len(weights):
            return np.zeros(len(edges) - 1)
        middles = 0.5 * (bucket_edges[:-1] + bucket_edges[1:])
        index = np.searchsorted(edges, middles, side="right") - 1
        inside = (index >= 0) & (index < len(edges) - 1)
        return np.bincount(index[inside], weights=weights[inside], minlength=len(edges) - 1)

    def quantile(self, q: float) -> tuple[float, float]:
        """The outlier threshold of quantile ``q`` and the exact share of weight below it
        (see the module docstring for the bound).

        Returns
        -------
        threshold : float
            Scores below it are outliers.
        share : float
            Weight share of the sketched scores below it (``>= q``).
        """
        total = float(self.counts.sum())
        if not total > 0:
            raise ValueError("no scores to take a quantile of")
        tail = np.cumsum(self.counts[::-1])[::-1]  # weight with t >= edge of each bucket
        j = int(np.flatnonzero(tail >= q * total)[-1])
        edge = float(bucket_lower_edges(self.first + j, 1)[0])
        return self.upper - edge, float(tail[j]) / total

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (exact: floats round-trip through JSON)."""
        return {"upper": self.upper, "moments": self.moments.to_list()[:3],
                "first": self.first, "counts": [float(c) for c in self.counts]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ScoreSketch":
        weight, mean, m2 = (float(v) for v in d["moments"])
        return cls(float(d["upper"]), ScoreMoments(weight, mean, m2), int(d["first"]),
                   np.asarray(d["counts"], dtype=np.float64))


def score_upper_bound(params: MixtureParams) -> float:
    """``log sum_k w_k N(m_k | k)``: no point scores higher, since every component's
    density peaks at its mean. Scores are bucketed by their distance below it.

    ``log N(m_k | k) = log det(L_k) - D/2 log(2 pi)`` with ``L_k`` the precision Cholesky
    factor, from its diagonal (no E-step: this runs once per EM iteration)."""
    log_peaks = log_det_cholesky(params.precisions_cholesky, params.covariance_type,
                                 params.n_features) - 0.5 * params.n_features * np.log(2 * np.pi)
    return float(np.logaddexp.reduce(np.log(params.weights) + log_peaks))


def chunk_score_sketch(scores: np.ndarray, weights: np.ndarray | None,
                       upper: float) -> ScoreSketch:
    """The sketch of a block's ``scores`` (n,) with optional per-point ``weights``."""
    weight, mean, m2 = score_moments(scores, weights)
    first, counts = score_buckets(scores, weights, upper)
    return ScoreSketch(upper, ScoreMoments(weight, mean, m2), first, counts)


def scored_statistics(X: np.ndarray, sample_weight: np.ndarray | None, params: MixtureParams,
                      upper: float) -> tuple[SufficientStatistics, ScoreSketch]:
    """A block's EM statistics and the sketch of its scores, from one E-step."""
    scores = np.empty(X.shape[0])
    stats = chunk_statistics(X, sample_weight, params, scores)
    return stats, chunk_score_sketch(scores, sample_weight, upper)


def merge_scores(parts: list[tuple[SufficientStatistics, ScoreSketch]]
                 ) -> tuple[SufficientStatistics, ScoreSketch]:
    """Pairs of statistics and sketches merged left to right (chunk order)."""
    stats, sketch = parts[0]
    for more_stats, more_sketch in parts[1:]:
        stats, sketch = stats.combine(more_stats), sketch.combine(more_sketch)
    return stats, sketch


def score_block(params: MixtureParams, X: np.ndarray, score_shift: float = 0.0,
                proba: bool = False) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Labels (int32), optionally probabilities (float32), and scores (float64) of a block
    ``X`` (n, D), from one E-step; ``score_shift`` as in
    :func:`distgmm._score_kernels.labels_and_scores`."""
    if not proba:
        labels, scores = labels_and_scores(X, params.weights, params.means,
                                           params.precisions_cholesky, params.covariance_type,
                                           score_shift)
        return labels, None, scores
    n = X.shape[0]
    labels = np.empty(n, dtype=np.int32)
    probs = np.empty((n, params.n_components), dtype=np.float32)
    scores = np.empty(n)
    for start in range(0, n, BLOCK_ROWS):
        log_norm, log_resp = params.log_responsibilities(X[start:start + BLOCK_ROWS])
        stop = start + log_resp.shape[0]
        labels[start:stop] = log_resp.argmax(axis=1)
        probs[start:stop] = np.exp(log_resp)
        scores[start:stop] = log_norm + score_shift
    return labels, probs, scores


@dataclass(frozen=True)
class ScoreDrift:
    """A batch's scores judged against a model's training figures (module docstring).

    Attributes
    ----------
    rows : float
        Weight (rows) of the batch.
    mean, training_mean, mean_change : float
        The batch's mean score, the training one, and the difference (nats per point).
    mean_se : float
        The standard error of ``mean_change`` (module docstring).
    mean_z : float
        ``mean_change`` in standard errors.
    outlier_rate, expected_outlier_rate : float
        The batch's outlier share, and the training share below the same threshold.
    outlier_z : float
        The outlier count's upper-tail probability as a normal quantile.
    threshold : float
        The ``|z|`` at which drift is reported.
    drift : bool
    """

    rows: float
    mean: float
    training_mean: float
    mean_change: float
    mean_se: float
    mean_z: float
    outlier_rate: float
    expected_outlier_rate: float
    outlier_z: float
    threshold: float
    drift: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (a non-finite number, which only a training set of equal
        scores can give, as None)."""
        return {key: None if isinstance(value, float) and not math.isfinite(value) else value
                for key, value in self.__dict__.items()}


def _outlier_z(outliers: float, rows: float, share: float) -> float:
    """The normal quantile with the upper-tail probability of ``outliers`` for
    ``X ~ Binomial(rows, share)``: the mid-p value ``P(X > x) + P(X = x) / 2`` (finite for
    every count, and calibrated for the few outliers small batches expect), in logs so that
    counts whose tail underflows keep a finite z."""
    from scipy.special import ndtri_exp
    from scipy.stats import binom

    n, x = int(round(rows)), int(round(outliers))
    log_point = float(binom.logpmf(x, n, share))
    log_above = float(binom.logsf(x, n, share))
    if log_above == -math.inf and x < n:
        # Beyond the mean the terms fall at least geometrically, by r = P(x+1) / P(x):
        # P(X > x) ~ P(X = x) r / (1 - r).
        r = (n - x) * share / ((x + 1) * (1 - share))
        log_above = log_point + math.log(r / (1 - r)) if 0 < r < 1 else -math.inf
    log_upper = float(np.logaddexp(log_above, log_point + math.log(0.5)))
    if log_upper < math.log(0.5):
        return -float(ndtri_exp(log_upper))
    # Fewer outliers than expected: from the lower tail, which keeps its digits.
    log_below = float(binom.logcdf(x - 1, n, share)) if x > 0 else -math.inf
    return float(ndtri_exp(np.logaddexp(log_below, log_point + math.log(0.5))))


@dataclass(frozen=True)
class ScoreProfile:
    """A model's training figures: what outliers and drift are judged against.

    Attributes
    ----------
    sketch : ScoreSketch
        The training points' scores in the fit's last pass (under the parameters of its
        last E-step).
    settling : float
        How much the mean training score changed in that pass (0 when unknown: a fit of
        one pass).
    outlier_quantile : float
    outlier_threshold : float
        Scores below it are outliers (:meth:`ScoreSketch.quantile`).
    outlier_share : float
        The training share below the threshold (exact; ``>= outlier_quantile``).
    """

    sketch: ScoreSketch
    settling: float
    outlier_quantile: float
    outlier_threshold: float
    outlier_share: float

    @classmethod
    def of(cls, sketch: ScoreSketch, settling: float = 0.0,
           outlier_quantile: float = DEFAULT_OUTLIER_QUANTILE) -> "ScoreProfile":
        threshold, share = sketch.quantile(outlier_quantile)
        settling = float(settling) if math.isfinite(settling) else 0.0
        return cls(sketch, settling, float(outlier_quantile), threshold, share)

    def with_outlier_quantile(self, q: float) -> "ScoreProfile":
        """The same figures with the threshold of quantile ``q``."""
        return ScoreProfile.of(self.sketch, self.settling, q)

    @property
    def mean(self) -> float:
        return self.sketch.mean

    @property
    def variance(self) -> float:
        return self.sketch.variance

    def drift(self, batch: ScoreMoments, threshold: float = DEFAULT_DRIFT_THRESHOLD
              ) -> ScoreDrift:
        """Judge ``batch`` (its ``outliers`` counted below :attr:`outlier_threshold`)."""
        n, n0, v0 = batch.weight, self.sketch.weight, self.variance
        change = batch.mean - self.mean
        se = math.sqrt(v0 / n + v0 / n0 + self.settling ** 2) if n > 0 else math.inf
        if se > 0:
            mean_z = change / se
        else:
            mean_z = 0.0 if change == 0 else math.copysign(math.inf, change)
        rate = batch.outliers / n if n > 0 else math.nan
        outlier_z = _outlier_z(batch.outliers, n, self.outlier_share) if n > 0 else math.nan
        drift = abs(mean_z) >= threshold or outlier_z >= threshold
        return ScoreDrift(rows=n, mean=batch.mean, training_mean=self.mean, mean_change=change,
                          mean_se=se, mean_z=mean_z, outlier_rate=rate,
                          expected_outlier_rate=self.outlier_share, outlier_z=outlier_z,
                          threshold=float(threshold), drift=bool(drift))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (the model file's ``scoring`` block)."""
        return {"sketch": self.sketch.to_dict(), "settling": self.settling,
                "outlier_quantile": self.outlier_quantile,
                "outlier_threshold": self.outlier_threshold,
                "outlier_share": self.outlier_share}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ScoreProfile":
        return cls(ScoreSketch.from_dict(d["sketch"]), float(d["settling"]),
                   float(d["outlier_quantile"]), float(d["outlier_threshold"]),
                   float(d["outlier_share"]))
