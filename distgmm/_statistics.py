"""Mergeable sufficient statistics of a Gaussian mixture and the M-step that turns them into parameters.

A :class:`SufficientStatistics` is computed for every chunk by :func:`chunk_statistics`
(one pass: E-step, log-likelihood and statistics together) and the values are merged with
:meth:`SufficientStatistics.combine` in a fixed tree order. Second moments are kept
*centered* on each chunk's own per-component weighted means and merged with the pairwise
correction of Chan, Golub and LeVeque::

    n = n_a + n_b,   delta = m_b - m_a
    m = m_a + delta * n_b / n
    S = S_a + S_b + (n_a n_b / n) delta delta^T

so data far from the origin, or stored as float32, keeps float64 accuracy. All accumulation
is in float64 whatever the stored dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ._fused import fused_labels, fused_log_prob, fused_row_moments, fused_statistics, use_fused
from ._kernels import (
    BLOCK_ROWS,
    covariances_from_precision_cholesky,
    log_gaussian_prob,
    log_responsibilities,
    nearest_center,
    normalize_log_prob,
    precision_cholesky,
    precisions_from_cholesky,
)

__all__ = [
    "BLOCK_ROWS",
    "DataMoments",
    "chunk_moments",
    "merge_data_moments",
    "label_block",
    "merged_moments",
    "MixtureParams",
    "SufficientStatistics",
    "DataSummary",
    "chunk_statistics",
    "chunk_statistics_reference",
    "chunk_statistics_from_resp",
    "chunk_summary",
    "merge_statistics",
    "hard_assignment_statistics",
    "labelled_statistics",
    "m_step",
]




class ComponentArrays:
    """What a mixture's parameters (means and precision Cholesky factors per component)
    say about its shape; shared by the Gaussian and the variational parameters."""

    means: np.ndarray
    precisions_cholesky: np.ndarray
    covariance_type: str

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    @property
    def n_features(self) -> int:
        return self.means.shape[1]

    @property
    def precisions(self) -> np.ndarray:
        """The precisions (inverse covariances), from their Cholesky factors."""
        return precisions_from_cholesky(self.precisions_cholesky, self.covariance_type)


@dataclass(frozen=True)
class MixtureParams(ComponentArrays):
    """Parameters of a Gaussian mixture.

    Attributes
    ----------
    weights : ndarray of shape (K,)
    means : ndarray of shape (K, D)
    covariances : ndarray
        Shape depends on ``covariance_type`` (see :mod:`distgmm._kernels`).
    precisions_cholesky : ndarray
        Same shape as ``covariances``.
    covariance_type : str
    """

    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray
    precisions_cholesky: np.ndarray
    covariance_type: str

    @classmethod
    def of_model(cls, model: Any) -> "MixtureParams":
        """The parameters of a fitted ``GaussianMixture`` (distgmm's or scikit-learn's: the
        fitted attributes ``weights_``, ``means_``, ``covariances_``,
        ``precisions_cholesky_`` and ``covariance_type``)."""
        return cls(np.asarray(model.weights_), np.asarray(model.means_),
                   np.asarray(model.covariances_), np.asarray(model.precisions_cholesky_),
                   model.covariance_type)

    @classmethod
    def from_covariances(cls, weights, means, covariances, covariance_type) -> "MixtureParams":
        covariances = np.asarray(covariances, dtype=np.float64)
        return cls(
            np.asarray(weights, dtype=np.float64),
            np.asarray(means, dtype=np.float64),
            covariances,
            precision_cholesky(covariances, covariance_type),
            covariance_type,
        )

    @classmethod
    def from_precision_cholesky(cls, weights, means, prec_chol, covariance_type) -> "MixtureParams":
        prec_chol = np.asarray(prec_chol, dtype=np.float64)
        return cls(
            np.asarray(weights, dtype=np.float64),
            np.asarray(means, dtype=np.float64),
            covariances_from_precision_cholesky(prec_chol, covariance_type),
            prec_chol,
            covariance_type,
        )

    def log_responsibilities(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(log p(x_i), log p(k | x_i))`` for a block ``X`` of shape (n, D)."""
        if use_fused():
            return normalize_log_prob(self.weighted_log_prob(X))
        return log_responsibilities(
            X, self.weights, self.means, self.precisions_cholesky, self.covariance_type
        )

    def labels(self, X: np.ndarray) -> np.ndarray:
        """Most likely component of each row of ``X``, shape (n,), as int64.

        The NumPy path works on blocks of ``BLOCK_ROWS`` rows, so the (rows, K)
        scores stay small; the compiled one works in cache-sized blocks of its own.
        """
        if use_fused():
            return fused_labels(X, self.weights, self.means, self.precisions_cholesky,
                                self.covariance_type)
        return np.concatenate([
            self.weighted_log_prob(X[s:s + BLOCK_ROWS]).argmax(axis=1)
            for s in range(0, X.shape[0], BLOCK_ROWS)] or [np.empty(0, np.int64)])

    def weighted_log_prob(self, X: np.ndarray) -> np.ndarray:
        """``log w_k + log N(x_i | k)`` for a block ``X``, shape (n, K)."""
        if use_fused():
            return fused_log_prob(X, self.weights, self.means, self.precisions_cholesky,
                                  self.covariance_type)
        with np.errstate(divide="ignore"):
            return log_gaussian_prob(X, self.means, self.precisions_cholesky,
                                     self.covariance_type) + np.log(self.weights)


def merged_moments(n_a, mean_a, scatter_a, n_b, mean_b, scatter_b) -> tuple:
    """Weights, means and centered scatters of two parts, merged exactly (Chan, Golub and
    LeVeque): ``n = n_a + n_b``, ``mean = mean_a + delta n_b / n`` and
    ``scatter = scatter_a + scatter_b + (n_a n_b / n) delta delta^T`` with
    ``delta = mean_b - mean_a``. Parts of zero weight contribute nothing.

    Parameters
    ----------
    n_a, n_b : ndarray of shape (...) or float
        Total weights, per group (a component) or one for all.
    mean_a, mean_b : ndarray of shape (..., D)
    scatter_a, scatter_b : ndarray of shape (..., D, D), or its diagonal (..., D)

    Returns
    -------
    n, mean, scatter : the merged values, shaped as the inputs.
    """
    n_a, n_b = np.asarray(n_a, dtype=np.float64), np.asarray(n_b, dtype=np.float64)
    n = n_a + n_b
    with np.errstate(invalid="ignore", divide="ignore"):
        frac_b = np.where(n > 0, n_b / n, 0.0)
        cross = np.where(n > 0, n_a * n_b / n, 0.0)
    delta = mean_b - mean_a
    mean = mean_a + delta * frac_b[..., None]
    if np.ndim(scatter_a) == np.ndim(mean_a) + 1:
        correction = cross[..., None, None] * (delta[..., :, None] * delta[..., None, :])
    else:
        correction = cross[..., None] * delta**2
    return n, mean, scatter_a + scatter_b + correction


def label_block(params: MixtureParams, X: np.ndarray, proba: bool = False
                ) -> tuple[np.ndarray, np.ndarray | None]:
    """Labels (int32) and optionally probabilities (float32) of a block ``X`` of shape (n, D).

    Labels alone skip the normalisation (``argmax`` of the weighted log-densities is the
    ``argmax`` of the responsibilities: :meth:`MixtureParams.labels`); probabilities are
    computed :data:`BLOCK_ROWS` rows at a time.
    """
    if not proba:
        return params.labels(X).astype(np.int32), None
    n = X.shape[0]
    labels = np.empty(n, dtype=np.int32)
    probs = np.empty((n, params.n_components), dtype=np.float32)
    for start in range(0, n, BLOCK_ROWS):
        log_resp = params.log_responsibilities(X[start:start + BLOCK_ROWS])[1]
        labels[start:start + log_resp.shape[0]] = log_resp.argmax(axis=1)
        probs[start:start + log_resp.shape[0]] = np.exp(log_resp)
    return labels, probs


@dataclass(frozen=True)
class SufficientStatistics:
    """Per-component weighted counts, means and centered scatter, plus the log-likelihood.

    Attributes
    ----------
    resp_sum : ndarray of shape (K,)
        ``sum_i w_i r_ik``.
    means : ndarray of shape (K, D)
        ``sum_i w_i r_ik x_i / resp_sum_k`` (zero where ``resp_sum_k == 0``).
    scatter : ndarray
        ``sum_i w_i r_ik (x_i - m_k)(x_i - m_k)^T`` as (K, D, D) for full and tied, or its
        diagonal (K, D) for diag and spherical.
    log_likelihood : float
        ``sum_i w_i log p(x_i)``.
    weight_sum : float
        ``sum_i w_i``.
    n_points : int
    """

    resp_sum: np.ndarray
    means: np.ndarray
    scatter: np.ndarray
    log_likelihood: float
    weight_sum: float
    n_points: int

    def combine(self, other: "SufficientStatistics") -> "SufficientStatistics":
        """Merge two statistics exactly (pairwise update of means and centered scatter)."""
        n, means, scatter = merged_moments(self.resp_sum, self.means, self.scatter,
                                           other.resp_sum, other.means, other.scatter)
        return SufficientStatistics(
            resp_sum=n,
            means=means,
            scatter=scatter,
            log_likelihood=self.log_likelihood + other.log_likelihood,
            weight_sum=self.weight_sum + other.weight_sum,
            n_points=self.n_points + other.n_points,
        )

    def scaled_to(self, weight_sum: float, n_points: int) -> "SufficientStatistics":
        """These statistics of a sample, standing for the data it was drawn from: counts,
        scatter and log-likelihood multiplied by ``weight_sum / self.weight_sum`` (means
        unchanged), so that an M-step weighing them against priors sees the data's size."""
        factor = weight_sum / self.weight_sum
        return SufficientStatistics(self.resp_sum * factor, self.means, self.scatter * factor,
                                    self.log_likelihood * factor, weight_sum, n_points)


def merge_statistics(parts: list[SufficientStatistics]) -> SufficientStatistics:
    """Merge statistics left to right, in the order given (chunk-index order)."""
    total = parts[0]
    for part in parts[1:]:
        total = total.combine(part)
    return total


def _scatter_matrices(X: np.ndarray, wr: np.ndarray, means: np.ndarray) -> np.ndarray:
    """``sum_i wr_ik (x_i - m_k)(x_i - m_k)^T`` per component, shape (K, D, D)."""
    out = np.empty((means.shape[0], X.shape[1], X.shape[1]))
    for k in range(means.shape[0]):
        diff = X - means[k]
        out[k] = (diff * wr[:, k:k + 1]).T @ diff
    return out


def _scatter_diagonals(X: np.ndarray, wr: np.ndarray, means: np.ndarray) -> np.ndarray:
    """The diagonals of :func:`_scatter_matrices`, shape (K, D)."""
    out = np.empty_like(means)
    for k in range(means.shape[0]):
        diff = X - means[k]
        out[k] = wr[:, k] @ (diff * diff)
    return out


#: Scatter kept per covariance type: full matrices for full and tied, diagonals otherwise.
_SCATTER = {"full": _scatter_matrices, "tied": _scatter_matrices,
            "diag": _scatter_diagonals, "spherical": _scatter_diagonals}


def chunk_statistics_from_resp(
    X: np.ndarray,
    resp: np.ndarray,
    sample_weight: np.ndarray | None,
    covariance_type: str,
    log_likelihood: float = 0.0,
) -> SufficientStatistics:
    """Sufficient statistics of a block given its responsibilities.

    Parameters
    ----------
    X : ndarray of shape (n, D)
    resp : ndarray of shape (n, K)
        Responsibilities (rows sum to one), or hard one-hot assignments.
    sample_weight : ndarray of shape (n,) or None
    covariance_type : str
    log_likelihood : float
        ``sum_i w_i log p(x_i)`` if known.
    """
    X = np.asarray(X, dtype=np.float64)
    wr = resp if sample_weight is None else resp * sample_weight[:, None]
    resp_sum = wr.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(resp_sum[:, None] > 0, (wr.T @ X) / resp_sum[:, None], 0.0)
    scatter = _SCATTER[covariance_type](X, wr, means)
    weight_sum = float(X.shape[0] if sample_weight is None else sample_weight.sum())
    return SufficientStatistics(resp_sum, means, scatter, float(log_likelihood), weight_sum,
                                X.shape[0])


def chunk_statistics(
    X: np.ndarray, sample_weight: np.ndarray | None, params: MixtureParams,
    scores: np.ndarray | None = None,
) -> SufficientStatistics:
    """One EM pass over a block: E-step, log-likelihood and sufficient statistics together.

    Uses the compiled fused kernel (:mod:`distgmm._fused`) when available, else
    :func:`chunk_statistics_reference`; the two agree to rounding.

    Parameters
    ----------
    X : ndarray of shape (n, D)
    sample_weight : ndarray of shape (n,) or None
    params : MixtureParams
    scores : ndarray of shape (n,), float64, optional
        Receives each row's ``log p(x_i)``, which the E-step computes anyway (the fit's
        score sketch, :mod:`distgmm._scores`).
    """
    if not use_fused():
        return chunk_statistics_reference(X, sample_weight, params, scores)
    resp_sum, means, scatter, ll = fused_statistics(
        X, sample_weight, params.weights, params.means, params.precisions_cholesky,
        params.covariance_type, scores)
    weight_sum = float(X.shape[0] if sample_weight is None else np.sum(sample_weight))
    return SufficientStatistics(resp_sum, means, scatter, ll, weight_sum, X.shape[0])


def chunk_statistics_reference(
    X: np.ndarray, sample_weight: np.ndarray | None, params: MixtureParams,
    scores: np.ndarray | None = None,
) -> SufficientStatistics:
    """NumPy reference of :func:`chunk_statistics` (E-step then statistics from responsibilities)."""
    log_prob_norm, log_resp = params.log_responsibilities(X)
    if scores is not None:
        scores[:] = log_prob_norm
    if sample_weight is None:
        ll = float(log_prob_norm.sum())
    else:
        ll = float(sample_weight @ log_prob_norm)
    return chunk_statistics_from_resp(X, np.exp(log_resp), sample_weight,
                                      params.covariance_type, ll)


def labelled_statistics(
    X: np.ndarray, labels: np.ndarray, sample_weight: np.ndarray | None, n_components: int,
    covariance_type: str,
) -> SufficientStatistics:
    """Statistics of a block with every row wholly in the component ``labels`` names (hard
    assignments): :func:`chunk_statistics_from_resp` of one-hot responsibilities, without
    the (n, K) array and with each row's moments taken once (not once per component).

    Parameters
    ----------
    X : ndarray of shape (n, D)
    labels : ndarray of shape (n,), int, in [0, n_components)
    sample_weight : ndarray of shape (n,) or None
    n_components : int
    covariance_type : str
    """
    X = np.asarray(X, dtype=np.float64)
    w = np.ones(X.shape[0]) if sample_weight is None else \
        np.asarray(sample_weight, dtype=np.float64)
    K, D = n_components, X.shape[1]
    resp_sum = np.bincount(labels, weights=w, minlength=K).astype(np.float64)
    means = np.zeros((K, D))
    scatter = np.zeros((K, D, D)) if covariance_type in ("full", "tied") else np.zeros((K, D))
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(K + 1))
    for k in range(K):
        rows = order[bounds[k]:bounds[k + 1]]
        if not resp_sum[k] > 0:
            continue
        wk = w[rows]
        means[k] = wk @ X[rows] / resp_sum[k]
        diff = X[rows] - means[k]
        scatter[k] = (diff * wk[:, None]).T @ diff if scatter.ndim == 3 else wk @ (diff * diff)
    weight_sum = float(X.shape[0] if sample_weight is None else w.sum())
    return SufficientStatistics(resp_sum, means, scatter, 0.0, weight_sum, X.shape[0])


def hard_assignment_statistics(
    X: np.ndarray, sample_weight: np.ndarray | None, centers: np.ndarray, covariance_type: str
) -> SufficientStatistics:
    """Statistics of a block with every point assigned wholly to its nearest center."""
    labels, _ = nearest_center(X, centers)
    return labelled_statistics(X, labels, sample_weight, centers.shape[0], covariance_type)


@dataclass(frozen=True)
class DataSummary:
    """What validation needs to know about the data, gathered during the first pass.

    Attributes
    ----------
    n_rows, n_nonfinite_rows : int
    n_negative_weights, n_nonfinite_weights : int
    weight_sum : float
    mean : ndarray of shape (D,)
        Weight-free per-feature mean of the finite rows.
    m2 : ndarray of shape (D,)
        Centered sum of squares per feature of the finite rows.
    n_finite : int
    """

    n_rows: int
    n_nonfinite_rows: int
    n_negative_weights: int
    n_nonfinite_weights: int
    weight_sum: float
    mean: np.ndarray
    m2: np.ndarray
    n_finite: int

    def combine(self, other: "DataSummary") -> "DataSummary":
        n, mean, m2 = merged_moments(self.n_finite, self.mean, self.m2,
                                     other.n_finite, other.mean, other.m2)
        return DataSummary(
            self.n_rows + other.n_rows,
            self.n_nonfinite_rows + other.n_nonfinite_rows,
            self.n_negative_weights + other.n_negative_weights,
            self.n_nonfinite_weights + other.n_nonfinite_weights,
            self.weight_sum + other.weight_sum,
            mean,
            m2,
            self.n_finite + other.n_finite,
        )

    @property
    def variance(self) -> np.ndarray:
        return self.m2 / max(self.n_finite, 1)


def chunk_summary(X: np.ndarray, sample_weight: np.ndarray | None) -> DataSummary:
    """Validation summary of one block: non-finite rows, bad weights, per-feature moments."""
    if use_fused() and X.dtype in (np.float32, np.float64):
        n_finite, mean, m2 = fused_row_moments(X)
    else:
        X = np.asarray(X, dtype=np.float64)
        finite = np.isfinite(X).all(axis=1)
        good = X[finite] if not finite.all() else X
        n_finite = good.shape[0]
        mean = good.mean(axis=0) if n_finite else np.zeros(X.shape[1])
        m2 = ((good - mean) ** 2).sum(axis=0) if n_finite else np.zeros(X.shape[1])
    if sample_weight is None:
        neg = bad_w = 0
        wsum = float(X.shape[0])
    else:
        w = np.asarray(sample_weight, dtype=np.float64)
        w_finite = np.isfinite(w)
        bad_w = int((~w_finite).sum())
        neg = int((w[w_finite] < 0).sum())
        wsum = float(w[w_finite].sum())
    return DataSummary(X.shape[0], X.shape[0] - int(n_finite), neg, bad_w, wsum, mean, m2,
                       int(n_finite))


def _covariances_full(scatter: np.ndarray, nk: np.ndarray, reg_covar: float) -> np.ndarray:
    covariances = scatter / nk[:, None, None]
    d = np.arange(scatter.shape[1])
    covariances[:, d, d] += reg_covar
    return covariances


def _covariance_tied(scatter: np.ndarray, nk: np.ndarray, reg_covar: float) -> np.ndarray:
    covariance = scatter.sum(axis=0) / nk.sum()
    d = np.arange(scatter.shape[1])
    covariance[d, d] += reg_covar
    return covariance


#: The M-step's covariances from the merged scatter, per covariance type (scikit-learn's
#: ``_estimate_gaussian_covariances_*``, on centered scatter).
_COVARIANCES = {
    "full": _covariances_full,
    "tied": _covariance_tied,
    "diag": lambda scatter, nk, reg: scatter / nk[:, None] + reg,
    "spherical": lambda scatter, nk, reg: (scatter / nk[:, None] + reg).mean(axis=1),
}


@dataclass(frozen=True)
class DataMoments:
    """Weighted mean and centered scatter of the data: what the default priors need.

    A mergeable value, computed per chunk by :func:`chunk_moments` and merged with
    :meth:`combine` (:func:`merged_moments`) or :func:`merge_data_moments` over a pass's
    chunks: the default priors of a variational mixture, and the principal axes of a plot.

    Attributes
    ----------
    weight_sum : float
        ``W = sum_i w_i`` (the number of rows when unweighted).
    mean : ndarray of shape (D,)
        ``sum_i w_i x_i / W``.
    scatter : ndarray of shape (D, D), or (D,) for its diagonal alone
        ``sum_i w_i (x_i - mean)(x_i - mean)^T``. The diagonal suffices for the diag and
        spherical covariance types.
    """

    weight_sum: float
    mean: np.ndarray
    scatter: np.ndarray

    def combine(self, other: "DataMoments") -> "DataMoments":
        """Moments of the union of both row sets, exactly (pairwise update)."""
        total, mean, scatter = merged_moments(self.weight_sum, self.mean, self.scatter,
                                              other.weight_sum, other.mean, other.scatter)
        return DataMoments(float(total), mean, scatter)

    @property
    def covariance(self) -> np.ndarray:
        """``scatter / (W - 1)``: ``np.cov``'s (ddof=1) over rows repeated ``w_i`` times, shape
        of ``scatter``."""
        return self.scatter / (self.weight_sum - 1.0)


def chunk_moments(
    X: np.ndarray, sample_weight: np.ndarray | None, diagonal: bool = False
) -> DataMoments:
    """:class:`DataMoments` of one block, accumulated in float64.

    Parameters
    ----------
    X : ndarray of shape (n, D)
    sample_weight : ndarray of shape (n,) or None
    diagonal : bool
        Keep only the scatter's diagonal (enough for diag and spherical priors; saves the
        ``n D^2`` product).
    """
    X = np.asarray(X, dtype=np.float64)
    w = np.ones(X.shape[0]) if sample_weight is None else \
        np.asarray(sample_weight, dtype=np.float64)
    weight_sum = float(w.sum())
    n_features = X.shape[1]
    if weight_sum == 0:
        shape = (n_features,) if diagonal else (n_features, n_features)
        return DataMoments(0.0, np.zeros(n_features), np.zeros(shape))
    mean = (w @ X) / weight_sum
    diff = X - mean
    scatter = w @ (diff * diff) if diagonal else (diff * w[:, None]).T @ diff
    return DataMoments(weight_sum, mean, scatter)


def merge_data_moments(parts: list[DataMoments]) -> DataMoments:
    """Merge moments left to right, in the order given (chunk-index order)."""
    total = parts[0]
    for part in parts[1:]:
        total = total.combine(part)
    return total


def m_step(
    total: SufficientStatistics, reg_covar: float, covariance_type: str
) -> MixtureParams:
    """New parameters from the merged statistics (scikit-learn's M-step).

    As scikit-learn does, every component's weight is ``n_k + 10 eps``: a component that
    received no points keeps a weight of about 1e-16 and the covariance ``reg_covar``, and
    the fit goes on; only a covariance that is singular (``reg_covar=0``, or points that
    are all equal) is an error.

    Raises
    ------
    CollapsedComponentError
        If a component's covariance is singular.
    """
    nk = total.resp_sum + 10 * np.finfo(np.float64).eps
    covariances = _COVARIANCES[covariance_type](total.scatter, nk, reg_covar)
    weights = nk / nk.sum()
    return MixtureParams.from_covariances(weights, total.means.copy(), covariances,
                                          covariance_type)

