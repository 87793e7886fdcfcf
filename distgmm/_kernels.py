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

import numpy as np
from scipy.special import logsumexp

__all__ = [
    "COVARIANCE_TYPES",
    "CollapsedComponentError",
    "precision_cholesky",
    "precision_cholesky_from_precisions",
    "covariances_from_precision_cholesky",
    "precisions_from_cholesky",
    "log_det_cholesky",
    "log_gaussian_prob",
    "log_responsibilities",
    "normalize_log_prob",
    "nearest_center",
]

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")

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
    if covariance_type == "full":
        n_components, n_features, _ = covariances.shape
        out = np.empty_like(covariances, dtype=np.float64)
        eye = np.eye(n_features)
        for k in range(n_components):
            try:
                chol = np.linalg.cholesky(covariances[k])
            except np.linalg.LinAlgError:
                raise _singular_error(k, covariance_type) from None
            out[k] = _solve_lower(chol, eye).T
        return out
    if covariance_type == "tied":
        try:
            chol = np.linalg.cholesky(covariances)
        except np.linalg.LinAlgError:
            raise _singular_error(None, covariance_type) from None
        return _solve_lower(chol, np.eye(covariances.shape[0])).T
    bad = np.flatnonzero(np.reshape(covariances <= 0.0, (covariances.shape[0], -1)).any(axis=1))
    if bad.size:
        raise _singular_error(int(bad[0]), covariance_type)
    return 1.0 / np.sqrt(covariances)


def _solve_lower(lower: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    from scipy.linalg import solve_triangular

    return solve_triangular(lower, rhs, lower=True)


def _flip(a: np.ndarray) -> np.ndarray:
    return a[::-1, ::-1]


def precision_cholesky_from_precisions(precisions: np.ndarray, covariance_type: str) -> np.ndarray:
    """Upper-triangular factors ``U`` with ``U U^T = precision`` (scikit-learn's convention).

    Parameters
    ----------
    precisions : ndarray
        ``(K, D, D)`` full, ``(D, D)`` tied, ``(K, D)`` diag, ``(K,)`` spherical.
    covariance_type : str
    """
    if covariance_type == "full":
        return np.stack([_flip(np.linalg.cholesky(_flip(p))) for p in precisions])
    if covariance_type == "tied":
        return _flip(np.linalg.cholesky(_flip(precisions)))
    return np.sqrt(precisions)


def precisions_from_cholesky(prec_chol: np.ndarray, covariance_type: str) -> np.ndarray:
    """Precision matrices (or vectors) from their Cholesky factors."""
    if covariance_type == "full":
        return np.matmul(prec_chol, np.swapaxes(prec_chol, 1, 2))
    if covariance_type == "tied":
        return prec_chol @ prec_chol.T
    return prec_chol**2


def covariances_from_precision_cholesky(prec_chol: np.ndarray, covariance_type: str) -> np.ndarray:
    """Covariances from precision Cholesky factors (inverse of :func:`precision_cholesky`)."""
    if covariance_type == "full":
        inv = np.linalg.inv(prec_chol)
        return np.matmul(np.swapaxes(inv, 1, 2), inv)
    if covariance_type == "tied":
        inv = np.linalg.inv(prec_chol)
        return inv.T @ inv
    return 1.0 / prec_chol**2


def log_det_cholesky(prec_chol: np.ndarray, covariance_type: str, n_features: int) -> np.ndarray:
    """Log-determinant of each precision Cholesky factor (half the log-det of the precision).

    Returns
    -------
    ndarray of shape (K,) or a scalar for ``tied``.
    """
    if covariance_type == "full":
        return np.log(np.diagonal(prec_chol, axis1=1, axis2=2)).sum(axis=1)
    if covariance_type == "tied":
        return np.log(np.diag(prec_chol)).sum()
    if covariance_type == "diag":
        return np.log(prec_chol).sum(axis=1)
    return n_features * np.log(prec_chol)


def log_gaussian_prob(
    X: np.ndarray,
    means: np.ndarray,
    prec_chol: np.ndarray,
    covariance_type: str,
) -> np.ndarray:
    """Log-density of every point under every component, ``log N(x_i | mu_k, Sigma_k)``.

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
    n_components, n_features = means.shape
    shift = means.mean(axis=0)
    Xc = np.asarray(X, dtype=np.float64) - shift
    mc = means - shift
    log_det = log_det_cholesky(prec_chol, covariance_type, n_features)
    maha = np.empty((Xc.shape[0], n_components))
    if covariance_type in ("full", "tied"):
        for k in range(n_components):
            u = prec_chol[k] if covariance_type == "full" else prec_chol
            y = Xc @ u
            y -= mc[k] @ u
            maha[:, k] = np.einsum("ij,ij->i", y, y)
    elif covariance_type == "diag":
        prec = prec_chol**2
        maha[:] = (mc**2 * prec).sum(axis=1)
        maha -= 2.0 * (Xc @ (mc * prec).T)
        maha += (Xc**2) @ prec.T
        np.maximum(maha, 0.0, out=maha)
    else:
        prec = prec_chol**2
        maha[:] = (mc**2).sum(axis=1) * prec
        maha -= 2.0 * (Xc @ mc.T) * prec
        maha += np.outer(np.einsum("ij,ij->i", Xc, Xc), prec)
        np.maximum(maha, 0.0, out=maha)
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
