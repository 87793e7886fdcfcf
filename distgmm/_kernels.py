"""NumPy kernels for Gaussian mixtures: precision Cholesky factors, log-densities, responsibilities.

Everything here works on one in-memory block of points and the (small) model parameters.
Nothing here imports Dask: the engine maps these functions over chunks.

Conventions follow scikit-learn's ``sklearn.mixture``: parameters are kept as *precision*
Cholesky factors (``precisions_cholesky``), whose shape depends on the covariance type::

    full       (K, D, D)   upper-triangular U_k with U_k U_k^T = Sigma_k^{-1}
    tied       (D, D)      one factor shared by all components
    diag       (K, D)      1 / sqrt(sigma_kd^2)
    spherical  (K,)        1 / sqrt(sigma_k^2)

Log-densities are computed on points shifted by a reference point (the mean of the component
means) so that data far from the origin does not lose digits to cancellation in the expanded
quadratic forms used for the diagonal and spherical types.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy.special import logsumexp

__all__ = [
    "BLOCK_ROWS",
    "COVARIANCE_TYPES",
    "CollapsedComponentError",
    "precision_cholesky",
    "precision_cholesky_from_precisions",
    "covariances_from_precision_cholesky",
    "full_covariances",
    "precisions_from_cholesky",
    "log_det_cholesky",
    "log_gaussian_prob",
    "log_responsibilities",
    "normalize_log_prob",
    "nearest_center",
    "d2_scores",
    "draw_by_score",
    "center_weights",
    "lloyd_statistics",
    "weighted_kmeans_plusplus",
    "sample_rows",
    "distinct_rows",
    "thread_pools",
    "plane_histograms",
]

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")

#: Rows evaluated at a time where a per-row (rows, K) array is made (predictions, labels
#: with probabilities, the NumPy label path, plot reductions), so that its temporaries stay
#: a few MB whatever the chunk size.
BLOCK_ROWS = 65536

_LOG_2PI = np.log(2.0 * np.pi)


class CollapsedComponentError(ValueError):
    """A mixture component has no weight or a singular covariance.

    Attributes
    ----------
    component : int or None
        Index of the offending component (``None`` for the shared tied covariance).
    """

    def __init__(self, message: str, component: int | None):
        super().__init__(message)
        self.component = component


#: scikit-learn's words for a singular covariance, kept verbatim so that code matching
#: scikit-learn's message matches ours; the component and an example value follow.
SINGULAR_MESSAGE = (
    "Fitting the mixture model failed because some components have ill-defined empirical "
    "covariance (for instance caused by singleton or collapsed samples). Try to decrease the "
    "number of components, increase reg_covar, or scale the input data."
)


def _singular_error(component: int | None, covariance_type: str) -> CollapsedComponentError:
    what = "the tied covariance" if component is None else f"component {component}"
    return CollapsedComponentError(
        f"{SINGULAR_MESSAGE} Here {what} has a singular {covariance_type} covariance "
        "(collapsed onto too few distinct points); reg_covar=1e-4, for example, may do.",
        component,
    )


def _precision_cholesky_full(covariances: np.ndarray) -> np.ndarray:
    n_components, n_features, _ = covariances.shape
    out = np.empty_like(covariances, dtype=np.float64)
    eye = np.eye(n_features)
    for k in range(n_components):
        try:
            chol = np.linalg.cholesky(covariances[k])
        except np.linalg.LinAlgError:
            raise _singular_error(k, "full") from None
        out[k] = _solve_lower(chol, eye).T
    return out


def _precision_cholesky_tied(covariance: np.ndarray) -> np.ndarray:
    try:
        chol = np.linalg.cholesky(covariance)
    except np.linalg.LinAlgError:
        raise _singular_error(None, "tied") from None
    return _solve_lower(chol, np.eye(covariance.shape[0])).T


def _precision_cholesky_vector(covariances: np.ndarray, covariance_type: str) -> np.ndarray:
    bad = np.flatnonzero(np.reshape(covariances <= 0.0, (covariances.shape[0], -1)).any(axis=1))
    if bad.size:
        raise _singular_error(int(bad[0]), covariance_type)
    return 1.0 / np.sqrt(covariances)


_PRECISION_CHOLESKY = {
    "full": _precision_cholesky_full,
    "tied": _precision_cholesky_tied,
    "diag": lambda c: _precision_cholesky_vector(c, "diag"),
    "spherical": lambda c: _precision_cholesky_vector(c, "spherical"),
}


def precision_cholesky(covariances: np.ndarray, covariance_type: str) -> np.ndarray:
    """Cholesky factors of the precisions from covariances.

    Parameters
    ----------
    covariances : ndarray
        ``(K, D, D)`` full, ``(D, D)`` tied, ``(K, D)`` diag, ``(K,)`` spherical.
    covariance_type : str

    Returns
    -------
    ndarray
        Precision Cholesky factors, same shape as ``covariances``.

    Raises
    ------
    CollapsedComponentError
        Naming the first component whose covariance is not positive definite.
    """
    return _PRECISION_CHOLESKY[covariance_type](covariances)


def _solve_lower(lower: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    from scipy.linalg import solve_triangular

    return solve_triangular(lower, rhs, lower=True)


def _flip(a: np.ndarray) -> np.ndarray:
    return a[::-1, ::-1]


def _upper_factor(precision: np.ndarray) -> np.ndarray:
    """Upper-triangular ``U`` with ``U U^T = precision``."""
    return _flip(np.linalg.cholesky(_flip(precision)))


_FROM_PRECISIONS = {
    "full": lambda p: np.stack([_upper_factor(m) for m in p]),
    "tied": _upper_factor,
    "diag": np.sqrt,
    "spherical": np.sqrt,
}


def precision_cholesky_from_precisions(precisions: np.ndarray, covariance_type: str) -> np.ndarray:
    """Upper-triangular factors ``U`` with ``U U^T = precision`` (scikit-learn's convention).

    Parameters
    ----------
    precisions : ndarray
        ``(K, D, D)`` full, ``(D, D)`` tied, ``(K, D)`` diag, ``(K,)`` spherical.
    covariance_type : str
    """
    return _FROM_PRECISIONS[covariance_type](precisions)


def _inverse_gram(prec_chol: np.ndarray) -> np.ndarray:
    """``(U U^T)^-1 = U^-T U^-1`` for one or a stack of factors ``U``."""
    inv = np.linalg.inv(prec_chol)
    return np.matmul(np.swapaxes(inv, -1, -2), inv)


_PRECISIONS = {
    "full": lambda u: np.matmul(u, np.swapaxes(u, 1, 2)),
    "tied": lambda u: u @ u.T,
    "diag": np.square,
    "spherical": np.square,
}
_COVARIANCES = {
    "full": _inverse_gram,
    "tied": _inverse_gram,
    "diag": lambda u: 1.0 / u**2,
    "spherical": lambda u: 1.0 / u**2,
}


def precisions_from_cholesky(prec_chol: np.ndarray, covariance_type: str) -> np.ndarray:
    """Precision matrices (or vectors) from their Cholesky factors."""
    return _PRECISIONS[covariance_type](prec_chol)


def covariances_from_precision_cholesky(prec_chol: np.ndarray, covariance_type: str) -> np.ndarray:
    """Covariances from precision Cholesky factors (inverse of :func:`precision_cholesky`)."""
    return _COVARIANCES[covariance_type](prec_chol)


_FULL_COVARIANCES = {
    "full": lambda c, k, d: np.asarray(c, dtype=np.float64),
    "tied": lambda c, k, d: np.repeat(np.asarray(c, dtype=np.float64)[None], k, axis=0),
    "diag": lambda c, k, d: np.asarray(c, dtype=np.float64)[:, :, None] * np.eye(d),
    "spherical": lambda c, k, d: np.asarray(c, dtype=np.float64)[:, None, None] * np.eye(d),
}


def full_covariances(covariances: np.ndarray, covariance_type: str, n_components: int,
                     n_features: int) -> np.ndarray:
    """Every component's covariance as a (D, D) matrix: shape (K, D, D), float64."""
    return _FULL_COVARIANCES[covariance_type](covariances, n_components, n_features)


_LOG_DET = {
    "full": lambda u, d: np.log(np.diagonal(u, axis1=1, axis2=2)).sum(axis=1),
    "tied": lambda u, d: np.log(np.diag(u)).sum(),
    "diag": lambda u, d: np.log(u).sum(axis=1),
    "spherical": lambda u, d: d * np.log(u),
}


def log_det_cholesky(prec_chol: np.ndarray, covariance_type: str, n_features: int) -> np.ndarray:
    """Log-determinant of each precision Cholesky factor (half the log-det of the precision).

    Returns
    -------
    ndarray of shape (K,) or a scalar for ``tied``.
    """
    return _LOG_DET[covariance_type](prec_chol, n_features)


def _mahalanobis_factored(Xc, mc, factors) -> np.ndarray:
    """Squared Mahalanobis distances through each component's factor (full and tied)."""
    out = np.empty((Xc.shape[0], mc.shape[0]))
    for k in range(mc.shape[0]):
        y = Xc @ factors[k]
        y -= mc[k] @ factors[k]
        out[:, k] = np.einsum("ij,ij->i", y, y)
    return out


def _mahalanobis_diag(Xc, mc, prec_chol) -> np.ndarray:
    prec = prec_chol**2
    out = (mc**2 * prec).sum(axis=1) - 2.0 * (Xc @ (mc * prec).T) + (Xc**2) @ prec.T
    return np.maximum(out, 0.0)


def _mahalanobis_spherical(Xc, mc, prec_chol) -> np.ndarray:
    prec = prec_chol**2
    out = ((mc**2).sum(axis=1) * prec - 2.0 * (Xc @ mc.T) * prec
           + np.outer(np.einsum("ij,ij->i", Xc, Xc), prec))
    return np.maximum(out, 0.0)


_MAHALANOBIS = {
    "full": _mahalanobis_factored,
    "tied": lambda Xc, mc, u: _mahalanobis_factored(Xc, mc, [u] * mc.shape[0]),
    "diag": _mahalanobis_diag,
    "spherical": _mahalanobis_spherical,
}


def log_gaussian_prob(
    X: np.ndarray,
    means: np.ndarray,
    prec_chol: np.ndarray,
    covariance_type: str,
) -> np.ndarray:
    """Log-density of every point under every component, ``log N(x_i | mu_k, Sigma_k)``.

    Computed on points shifted by the mean of the component means, so that the expanded
    quadratic forms of the diag and spherical types lose no digits far from the origin.

    Parameters
    ----------
    X : ndarray of shape (n, D)
    means : ndarray of shape (K, D)
    prec_chol : ndarray
        Precision Cholesky factors (see module docstring for shapes).
    covariance_type : str

    Returns
    -------
    ndarray of shape (n, K), float64
    """
    n_features = means.shape[1]
    shift = means.mean(axis=0)
    Xc = np.asarray(X, dtype=np.float64) - shift
    maha = _MAHALANOBIS[covariance_type](Xc, means - shift, prec_chol)
    log_det = log_det_cholesky(prec_chol, covariance_type, n_features)
    return -0.5 * (n_features * _LOG_2PI + maha) + log_det


def log_responsibilities(
    X: np.ndarray,
    weights: np.ndarray,
    means: np.ndarray,
    prec_chol: np.ndarray,
    covariance_type: str,
) -> tuple[np.ndarray, np.ndarray]:
    """E-step for one block: per-point log-likelihood and log-responsibilities.

    Parameters
    ----------
    X : ndarray of shape (n, D)
    weights : ndarray of shape (K,)
    means : ndarray of shape (K, D)
    prec_chol : ndarray
    covariance_type : str

    Returns
    -------
    log_prob_norm : ndarray of shape (n,)
        ``log p(x_i)`` under the mixture.
    log_resp : ndarray of shape (n, K)
        ``log p(k | x_i)``.
    """
    weighted = log_gaussian_prob(X, means, prec_chol, covariance_type)
    with np.errstate(divide="ignore"):
        weighted += np.log(weights)
    return normalize_log_prob(weighted)


def normalize_log_prob(weighted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split weighted log-probabilities (n, K) into ``log p(x_i)`` (n,) and ``log p(k | x_i)``."""
    log_prob_norm = logsumexp(weighted, axis=1)
    with np.errstate(invalid="ignore"):
        log_resp = weighted - log_prob_norm[:, None]
    return log_prob_norm, log_resp


def nearest_center(X: np.ndarray, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of and squared distance to the nearest center for every point.

    Parameters
    ----------
    X : ndarray of shape (n, D)
    centers : ndarray of shape (C, D)

    Returns
    -------
    labels : ndarray of shape (n,), int64
    sq_dist : ndarray of shape (n,), float64
    """
    shift = centers.mean(axis=0)
    Xc = np.asarray(X, dtype=np.float64) - shift
    cc = centers - shift
    d2 = (cc**2).sum(axis=1) - 2.0 * (Xc @ cc.T)
    d2 += np.einsum("ij,ij->i", Xc, Xc)[:, None]
    labels = np.argmin(d2, axis=1)
    sq = np.maximum(d2[np.arange(d2.shape[0]), labels], 0.0)
    return labels, sq


# ---------------------------------------------------------------------------- k-means blocks
def _too_few_distinct(n_found: int, n_components: int) -> ValueError:
    return ValueError(
        f"the data has only {n_found} distinct points with positive weight, fewer than "
        f"n_components={n_components}; decrease n_components."
    )


def d2_scores(X: np.ndarray, weights: np.ndarray | None,
              centers: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """k-means++ sampling scores of a block: ``w_i`` times the squared distance to the
    nearest center (``w_i`` alone before the first center).

    Returns
    -------
    X : ndarray of shape (n, D), float64
    scores : ndarray of shape (n,), non-negative

    Raises
    ------
    ValueError
        If a squared distance overflows float64 (values beyond about 1e154), which would
        otherwise look like a score of zero.
    """
    X = np.asarray(X, dtype=np.float64)
    score = np.ones(X.shape[0]) if centers is None else nearest_center(X, centers)[1]
    if weights is not None:
        score = score * weights
    if not np.all(np.isfinite(score)):
        raise ValueError(
            "squared distances between points overflow float64 (the data holds values beyond "
            "about 1e154); scale the input data, e.g. divide each feature by its standard "
            "deviation.")
    return X, score


def draw_by_score(X: np.ndarray, score: np.ndarray, u: float) -> np.ndarray | None:
    """The row at quantile ``u`` in [0, 1) of the cumulative scores (a draw proportional to
    the scores), or None when every score is zero."""
    total = float(score.sum())
    if total <= 0:
        return None
    i = int(np.searchsorted(np.cumsum(score), u * total, side="right"))
    return X[min(i, X.shape[0] - 1)].copy()


def center_weights(X: np.ndarray, weights: np.ndarray | None, centers: np.ndarray) -> np.ndarray:
    """Total point weight nearest to each center, shape (C,)."""
    labels, _ = nearest_center(X, centers)
    w = None if weights is None else np.asarray(weights, dtype=np.float64)
    return np.bincount(labels, weights=w, minlength=centers.shape[0]).astype(np.float64)


def lloyd_statistics(X: np.ndarray, weights: np.ndarray | None,
                     centers: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """One Lloyd step's statistics of a block: per-center weight (C,), weighted sum of the
    offsets from the center (C, D), and the weighted inertia."""
    X = np.asarray(X, dtype=np.float64)
    labels, d2 = nearest_center(X, centers)
    w = np.ones(X.shape[0]) if weights is None else np.asarray(weights, dtype=np.float64)
    onehot = np.zeros((X.shape[0], centers.shape[0]))
    onehot[np.arange(X.shape[0]), labels] = w
    offsets = onehot.T @ X - onehot.sum(axis=0)[:, None] * centers
    return onehot.sum(axis=0), offsets, float(w @ d2)


def weighted_kmeans_plusplus(points: np.ndarray, weights: np.ndarray, n_components: int,
                             rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding of a small weighted point set (k-means|| candidates), shape (K, D)."""
    first = rng.choice(len(points), p=weights / weights.sum())
    centers = [points[first]]
    d2 = ((points - centers[0]) ** 2).sum(axis=1)
    for _ in range(1, n_components):
        score = d2 * weights
        if not score.sum() > 0:
            raise _too_few_distinct(len(centers), n_components)
        i = rng.choice(len(points), p=score / score.sum())
        centers.append(points[i])
        d2 = np.minimum(d2, ((points - points[i]) ** 2).sum(axis=1))
    return np.array(centers)


def sample_rows(X: np.ndarray, weights: np.ndarray | None, fraction: float,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    """A uniform sample of a block's rows: each row kept with probability ``fraction``.

    The number kept is drawn first (binomial), then which rows (without replacement), so
    the cost is that of the rows kept, not of the block.

    Returns
    -------
    rows : ndarray of shape (m, D), float64, in the block's order
    weights : ndarray of shape (m,) or None
    """
    n = X.shape[0]
    rows = np.sort(rng.choice(n, size=int(rng.binomial(n, fraction)), replace=False))
    return (np.asarray(X[rows], dtype=np.float64),
            None if weights is None else np.asarray(weights[rows], dtype=np.float64))


def distinct_rows(X: np.ndarray, weights: np.ndarray | None) -> int:
    """Number of distinct rows of ``X`` with positive weight."""
    if weights is not None:
        X = X[weights > 0]
    return int(np.unique(X, axis=0).shape[0]) if X.shape[0] else 0


@functools.cache
def thread_pools():
    """This process's BLAS and OpenMP thread pools (a ``threadpoolctl.ThreadpoolController``),
    found once: ``threadpool_limits`` looks for them again on every call, reading the
    process's memory map (1.5-8 ms, 3 ms of every fit on a cluster). Found after
    scikit-learn's compiled modules are loaded, so that its OpenMP runtime is among them."""
    import sklearn.cluster  # noqa: F401 - loads the OpenMP runtime KMeans uses
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


# ---------------------------------------------------------------------------- plot histograms
def plane_histograms(X: np.ndarray, labels: np.ndarray, n_components: int,
                     directions: np.ndarray, offsets: np.ndarray, lows: np.ndarray,
                     widths: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-label 2-D histograms of a block of points in several planes.

    Parameters
    ----------
    X : ndarray of shape (n, D), float64
    labels : ndarray of shape (n,), int
        Points with a label outside ``[0, K)`` are not counted.
    n_components : int
        K.
    directions : ndarray of shape (P, D, 2)
    offsets, lows, widths : ndarray of shape (P, 2)
        Plane coordinates are ``X @ directions[p] - offsets[p]``; bin ``i`` of axis ``a``
        covers ``[lows[p, a] + i * widths[p, a], lows[p, a] + (i + 1) * widths[p, a])``.
    bins : int

    Returns
    -------
    counts : ndarray of shape (P, K, bins, bins), int64
        Points outside a plane's extent are not counted.
    label_totals : ndarray of shape (K,), int64
        Points per label, inside the extents or not.
    """
    n_planes = len(directions)
    counts = np.zeros((n_planes, n_components * bins * bins), dtype=np.int64)
    labels = np.asarray(labels).astype(np.intp, copy=False)
    known = (labels >= 0) & (labels < n_components)
    totals = np.bincount(labels[known], minlength=n_components).astype(np.int64)
    for p in range(n_planes):
        # einsum without optimize stays out of BLAS: no nested thread pools in a task.
        coords = np.einsum("nd,dk->nk", X, directions[p]) - (offsets[p] + lows[p])
        index = np.floor(coords / widths[p], out=coords)
        inside = known & np.all((index >= 0) & (index < bins), axis=1)
        cell = index[inside].astype(np.intp)
        flat = (labels[inside] * bins + cell[:, 0]) * bins + cell[:, 1]
        counts[p] += np.bincount(flat, minlength=n_components * bins * bins)
    return counts.reshape(n_planes, n_components, bins, bins), totals
