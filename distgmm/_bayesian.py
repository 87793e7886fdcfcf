"""Variational Gaussian mixture maths (scikit-learn's BayesianGaussianMixture) on chunk statistics.

scikit-learn's variational E-step is a Gaussian-mixture E-step with modified per-component
constants. Its weighted log-probability of point ``x`` under component ``k`` is::

    E[log pi_k] + log N(x | m_k, Lambda_k) + c_k,
    c_k = -D/2 log nu_k + 1/2 (D log 2 + sum_{i<D} digamma((nu_k - i) / 2) - D / beta_k)

with ``Lambda_k = nu_k W_k`` the mean of the Wishart posterior (scikit-learn's
``precisions_cholesky_`` factors it), ``beta_k`` the mean precision and ``E[log pi_k]`` the
expected log weight (stick-breaking digamma sums for a Dirichlet process, a digamma
difference for a Dirichlet distribution). So a :class:`~distgmm._statistics.MixtureParams`
whose weights are ``exp(E[log pi_k] + c_k)`` (divided by the largest, so that they do
not underflow; not summing to one: the kernels only add ``log w_k`` and normalise per row)
and whose means and precision factors are the variational ones makes
:func:`~distgmm._statistics.chunk_statistics` compute scikit-learn's responsibilities and
the statistics of one iteration, in one pass (:func:`variational_estep`).

One iteration, as scikit-learn's ``fit`` runs it::

    estep = variational_estep(state)                       # from the current parameters
    total = merge_statistics([chunk_statistics(X_c, w_c, estep.params) for each chunk])
    new_state = variational_m_step(total, priors, reg_covar)
    bound = lower_bound(total, estep, new_state)           # E-step of the old, terms of the new
    converged = lower_bound_converged(previous_bound, bound, tol)

The start is the same M-step on the statistics of initial responsibilities
(:func:`~distgmm._statistics.chunk_statistics_from_resp` or
:func:`~distgmm._statistics.hard_assignment_statistics`).

The lower bound's only data term is ``sum_i sum_k r_ik log r_ik``, computed here from the
statistics instead of the per-row responsibilities (:func:`responsibility_entropy`).

Per-point weights ``w_i`` mean repeated rows: a point of integer weight ``w`` counts as
``w`` copies of it, in the statistics (already weighted), in the data moments that give
the default priors (:class:`~distgmm._statistics.DataMoments`) and in the lower bound's data term.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import betaln, digamma, gammaln

from ._kernels import log_det_cholesky, precision_cholesky
from ._statistics import ComponentArrays, DataMoments, MixtureParams, SufficientStatistics

__all__ = [
    "WEIGHT_CONCENTRATION_PRIOR_TYPES",
    "BayesianPriors",
    "resolve_priors",
    "VariationalParams",
    "VariationalEStep",
    "variational_m_step",
    "expected_log_weights",
    "variational_estep",
    "responsibility_entropy",
    "lower_bound",
    "lower_bound_converged",
    "posterior_mean_weights",
]

WEIGHT_CONCENTRATION_PRIOR_TYPES = ("dirichlet_process", "dirichlet_distribution")

#: scikit-learn adds ten float64 epsilons to every component's responsibility sum, so that
#: a component that received no points keeps a tiny positive count and the divisions by
#: ``n_k`` in the M-step stay finite. Kept to give scikit-learn's numbers for such components.
_COUNT_FLOOR = 10 * np.finfo(np.float64).eps

_LOG_2 = math.log(2.0)
_LOG_2PI = math.log(2.0 * math.pi)


# --------------------------------------------------------------------------- data moments


# --------------------------------------------------------------------------------- priors


@dataclass(frozen=True)
class BayesianPriors:
    """The priors of a variational Gaussian mixture, defaults filled in (scikit-learn's
    ``*_prior_`` fitted attributes).

    Attributes
    ----------
    weight_concentration_prior_type : str
        ``"dirichlet_process"`` (stick-breaking) or ``"dirichlet_distribution"``.
    weight_concentration_prior : float
    mean_precision_prior : float
    mean_prior : ndarray of shape (D,)
    degrees_of_freedom_prior : float
    covariance_prior : ndarray or float
        ``(D, D)`` for full and tied, ``(D,)`` for diag, a float for spherical.
    covariance_type : str
    """

    weight_concentration_prior_type: str
    weight_concentration_prior: float
    mean_precision_prior: float
    mean_prior: np.ndarray
    degrees_of_freedom_prior: float
    covariance_prior: np.ndarray | float
    covariance_type: str

    @property
    def n_features(self) -> int:
        return self.mean_prior.shape[0]


def _check_shape(value: np.ndarray, shape: tuple, name: str) -> None:
    """scikit-learn's ``_check_shape``, with its message."""
    if value.shape != shape:
        raise ValueError(f"The parameter '{name}' should have the shape of {shape}, "
                         f"but got {value.shape}")


def _default_matrix_prior(moments: DataMoments) -> np.ndarray:
    """``np.atleast_2d(np.cov(X.T))``: the data covariance, ddof=1."""
    if moments.scatter.ndim != 2:
        raise ValueError("The full and tied covariance priors need the data's full scatter "
                         "matrix; compute the moments with diagonal=False.")
    return np.atleast_2d(moments.covariance)


def _default_diag_prior(moments: DataMoments) -> np.ndarray:
    """``np.var(X, axis=0, ddof=1)``."""
    scatter = moments.scatter
    return (np.diagonal(scatter) if scatter.ndim == 2 else scatter) / (moments.weight_sum - 1.0)


def _default_spherical_prior(moments: DataMoments) -> float:
    """``np.var(X, axis=0, ddof=1).mean()``."""
    return float(_default_diag_prior(moments).mean())


_DEFAULT_COVARIANCE_PRIORS = {
    "full": _default_matrix_prior,
    "tied": _default_matrix_prior,
    "diag": _default_diag_prior,
    "spherical": _default_spherical_prior,
}


def _checked_matrix_prior(value: Any, covariance_type: str, n_features: int) -> np.ndarray:
    """scikit-learn's check of a full or tied ``covariance_prior``: shape, symmetric,
    positive definite (with its messages, which call it a precision)."""
    value = np.asarray(value, dtype=np.float64)
    _check_shape(value, (n_features, n_features), f"{covariance_type} covariance_prior")
    if not (np.all(np.isclose(value, value.T)) and np.all(np.linalg.eigvalsh(value) > 0.0)):
        raise ValueError(f"'{covariance_type} precision' should be symmetric, positive-definite")
    return value


def _checked_diag_prior(value: Any, covariance_type: str, n_features: int) -> np.ndarray:
    value = np.asarray(value, dtype=np.float64)
    _check_shape(value, (n_features,), f"{covariance_type} covariance_prior")
    if np.any(value <= 0.0):
        raise ValueError(f"'{covariance_type} precision' should be positive")
    return value


def _checked_spherical_prior(value: Any, covariance_type: str, n_features: int) -> float:
    return float(value)


_CHECKED_COVARIANCE_PRIORS = {
    "full": _checked_matrix_prior,
    "tied": _checked_matrix_prior,
    "diag": _checked_diag_prior,
    "spherical": _checked_spherical_prior,
}


def resolve_priors(
    n_components: int,
    covariance_type: str,
    moments: DataMoments,
    *,
    weight_concentration_prior_type: str = "dirichlet_process",
    weight_concentration_prior: float | None = None,
    mean_precision_prior: float | None = None,
    mean_prior: Any = None,
    degrees_of_freedom_prior: float | None = None,
    covariance_prior: Any = None,
) -> BayesianPriors:
    """The priors with scikit-learn's data-dependent defaults filled in.

    What scikit-learn's ``_check_parameters`` (``_check_weights_parameters``,
    ``_check_means_parameters``, ``_check_precision_parameters``,
    ``_checkcovariance_prior_parameter``) does, from the data's moments instead of the
    data. ``None`` means the default:

    ============================ ====================================================
    weight_concentration_prior   ``1 / n_components``
    mean_precision_prior         ``1``
    mean_prior                   the data mean, ``X.mean(axis=0)``
    degrees_of_freedom_prior     ``D`` (a given value must exceed ``D - 1``)
    covariance_prior             full, tied: ``np.atleast_2d(np.cov(X.T))``;
                                 diag: ``np.var(X, axis=0, ddof=1)``;
                                 spherical: the mean of that (all with ddof=1)
    ============================ ====================================================

    So the engine's first pass must give the weighted mean (D,), the weighted centered
    scatter (D, D) (its diagonal (D,) for diag and spherical) and the weight sum ``W``
    (the covariance is the scatter over ``W - 1``): :func:`~distgmm._statistics.chunk_moments` merged over the
    chunks. With sample weights these are the moments of the rows repeated ``w_i`` times.

    The range checks of scikit-learn's ``_parameter_constraints`` (positive
    concentration, mean precision, degrees of freedom and spherical covariance prior; a
    known prior type) belong to the estimator and are not repeated here.

    Parameters
    ----------
    n_components : int
    covariance_type : str
    moments : DataMoments
        The data's; ``moments.weight_sum`` must exceed 1 when a covariance prior is defaulted.
    weight_concentration_prior_type, weight_concentration_prior, mean_precision_prior,
    mean_prior, degrees_of_freedom_prior, covariance_prior
        As scikit-learn's ``BayesianGaussianMixture`` parameters.

    Raises
    ------
    ValueError
        With scikit-learn's message, for a ``degrees_of_freedom_prior`` not above ``D - 1``,
        a ``mean_prior`` or ``covariance_prior`` of the wrong shape, or a covariance prior
        that is not symmetric positive definite (positive, for diag).
    """
    n_features = moments.mean.shape[0]
    if degrees_of_freedom_prior is None:
        degrees_of_freedom_prior = n_features
    elif not degrees_of_freedom_prior > n_features - 1.0:
        raise ValueError(
            "The parameter 'degrees_of_freedom_prior' should be greater than "
            f"{n_features - 1}, but got {degrees_of_freedom_prior:.3f}.")
    if mean_prior is None:
        mean_prior = moments.mean.copy()
    else:
        mean_prior = np.asarray(mean_prior, dtype=np.float64)
        _check_shape(mean_prior, (n_features,), "means")
    if covariance_prior is None:
        if not moments.weight_sum > 1:
            raise ValueError("The default covariance prior is the data covariance (ddof=1), "
                             f"which needs a total sample weight above 1; got "
                             f"{moments.weight_sum}. Pass covariance_prior, or more data.")
        covariance_prior = _DEFAULT_COVARIANCE_PRIORS[covariance_type](moments)
    else:
        covariance_prior = _CHECKED_COVARIANCE_PRIORS[covariance_type](
            covariance_prior, covariance_type, n_features)
    return BayesianPriors(
        weight_concentration_prior_type=weight_concentration_prior_type,
        weight_concentration_prior=float(1.0 / n_components if weight_concentration_prior is None
                                         else weight_concentration_prior),
        mean_precision_prior=float(1.0 if mean_precision_prior is None else mean_precision_prior),
        mean_prior=mean_prior,
        degrees_of_freedom_prior=float(degrees_of_freedom_prior),
        covariance_prior=covariance_prior,
        covariance_type=covariance_type,
    )


# ------------------------------------------------------------------ variational parameters


@dataclass(frozen=True)
class VariationalParams(ComponentArrays):
    """The variational posterior of a Bayesian Gaussian mixture (scikit-learn's fitted
    ``BayesianGaussianMixture`` attributes, without the trailing underscores).

    Attributes
    ----------
    weight_concentration : ndarray of shape (K,), or a pair of them
        Dirichlet distribution: its concentration ``alpha_k``. Dirichlet process: the two
        parameters ``(a_k, b_k)`` of each stick's Beta distribution.
    mean_precision : ndarray of shape (K,)
        ``beta_k``.
    means : ndarray of shape (K, D)
        ``m_k``.
    degrees_of_freedom : ndarray of shape (K,), or a float for tied
        ``nu_k``.
    covariances : ndarray
        ``(nu_k W_k)^-1``: ``(K, D, D)`` full, ``(D, D)`` tied, ``(K, D)`` diag, ``(K,)``
        spherical.
    precisions_cholesky : ndarray
        Cholesky factors of ``nu_k W_k``, the mean precision; shape of ``covariances``.
    covariance_type : str
    weight_concentration_prior_type : str
    """

    weight_concentration: np.ndarray | tuple[np.ndarray, np.ndarray]
    mean_precision: np.ndarray
    means: np.ndarray
    degrees_of_freedom: np.ndarray | float
    covariances: np.ndarray
    precisions_cholesky: np.ndarray
    covariance_type: str
    weight_concentration_prior_type: str

    @property
    def weights(self) -> np.ndarray:
        """:func:`posterior_mean_weights` (scikit-learn's ``weights_``), shape (K,)."""
        return posterior_mean_weights(self)

    def sklearn_attributes(self) -> dict[str, Any]:
        """scikit-learn's fitted attribute names and their values, for an estimator."""
        return {
            "weight_concentration_": self.weight_concentration,
            "mean_precision_": self.mean_precision,
            "means_": self.means,
            "degrees_of_freedom_": self.degrees_of_freedom,
            "covariances_": self.covariances,
            "precisions_cholesky_": self.precisions_cholesky,
            "precisions_": self.precisions,
            "weights_": self.weights,
        }

    @classmethod
    def of_model(cls, model: Any) -> "VariationalParams":
        """The variational parameters of a fitted ``BayesianGaussianMixture`` (distgmm's or
        scikit-learn's: the fitted attributes above, ``covariance_type`` and
        ``weight_concentration_prior_type``)."""
        concentration = model.weight_concentration_
        if isinstance(concentration, tuple):
            concentration = tuple(np.asarray(c, dtype=np.float64) for c in concentration)
        else:
            concentration = np.asarray(concentration, dtype=np.float64)
        dof = model.degrees_of_freedom_
        return cls(
            concentration,
            np.asarray(model.mean_precision_, dtype=np.float64),
            np.asarray(model.means_, dtype=np.float64),
            float(dof) if np.ndim(dof) == 0 else np.asarray(dof, dtype=np.float64),
            np.asarray(model.covariances_, dtype=np.float64),
            np.asarray(model.precisions_cholesky_, dtype=np.float64),
            model.covariance_type,
            model.weight_concentration_prior_type,
        )


# ------------------------------------------------------------------------------- M-step
#
# scikit-learn's _estimate_gaussian_parameters gives (nk, xk, sk) from the responsibilities;
# here they come from the merged statistics: nk = n_k + 10 eps, xk = n_k xbar_k / nk (its
# ``resp.T @ X / nk``), and sk the scatter over nk plus reg_covar, from the *centered*
# scatter. scikit-learn's tied and diag formulas subtract uncentered moments
# (``X^T X - sum nk xk xk^T``); the centered form is the same quantity without that
# cancellation (they differ by 10 eps |xbar_k|^2 terms, below the cancellation error).


def _scatter_over_counts_full(scatter, counts, reg_covar):
    sk = scatter / counts[:, None, None]
    diagonal = np.arange(sk.shape[1])
    sk[:, diagonal, diagonal] += reg_covar
    return sk


def _scatter_over_counts_tied(scatter, counts, reg_covar):
    sk = scatter.sum(axis=0) / counts.sum()
    diagonal = np.arange(sk.shape[0])
    sk[diagonal, diagonal] += reg_covar
    return sk


def _scatter_over_counts_diag(scatter, counts, reg_covar):
    return scatter / counts[:, None] + reg_covar


def _scatter_over_counts_spherical(scatter, counts, reg_covar):
    return _scatter_over_counts_diag(scatter, counts, reg_covar).mean(axis=1)


#: scikit-learn's ``sk`` per covariance type, from the centered scatter (the kernels'
#: (K, D, D) for full and tied, (K, D) diagonals for diag and spherical).
_SCATTER_OVER_COUNTS = {
    "full": _scatter_over_counts_full,
    "tied": _scatter_over_counts_tied,
    "diag": _scatter_over_counts_diag,
    "spherical": _scatter_over_counts_spherical,
}


def _stick_breaking_concentration(counts, prior):
    """Beta parameters of each stick: ``(1 + n_k, prior + sum_{j > k} n_j)``."""
    tail_sums = np.hstack((np.cumsum(counts[::-1])[-2::-1], 0))
    return (1.0 + counts, prior + tail_sums)


def _dirichlet_concentration(counts, prior):
    return prior + counts


_WEIGHT_CONCENTRATIONS = {
    "dirichlet_process": _stick_breaking_concentration,
    "dirichlet_distribution": _dirichlet_concentration,
}


# Each _wishart_* returns (degrees_of_freedom, covariances), scikit-learn's
# _estimate_wishart_*: covariances are the Wishart scale's inverse over nu, so that their
# inverse is the posterior mean precision.

def _wishart_full(counts, xk, sk, mean_precision, priors):
    diff = xk - priors.mean_prior
    dof = priors.degrees_of_freedom_prior + counts
    shrink = counts * priors.mean_precision_prior / mean_precision
    covariances = (priors.covariance_prior + counts[:, None, None] * sk
                   + shrink[:, None, None] * (diff[:, :, None] * diff[:, None, :]))
    return dof, covariances / dof[:, None, None]


def _wishart_tied(counts, xk, sk, mean_precision, priors):
    n_components = counts.shape[0]
    diff = xk - priors.mean_prior
    dof = priors.degrees_of_freedom_prior + counts.sum() / n_components
    covariance = (priors.covariance_prior + sk * counts.sum() / n_components
                  + priors.mean_precision_prior / n_components
                  * np.dot((counts / mean_precision) * diff.T, diff))
    return float(dof), covariance / dof


def _wishart_diag(counts, xk, sk, mean_precision, priors):
    diff = xk - priors.mean_prior
    dof = priors.degrees_of_freedom_prior + counts
    covariances = priors.covariance_prior + counts[:, None] * (
        sk + (priors.mean_precision_prior / mean_precision)[:, None] * np.square(diff))
    return dof, covariances / dof[:, None]


def _wishart_spherical(counts, xk, sk, mean_precision, priors):
    diff = xk - priors.mean_prior
    dof = priors.degrees_of_freedom_prior + counts
    covariances = priors.covariance_prior + counts * (
        sk + priors.mean_precision_prior / mean_precision * np.mean(np.square(diff), axis=1))
    return dof, covariances / dof


_WISHART = {
    "full": _wishart_full,
    "tied": _wishart_tied,
    "diag": _wishart_diag,
    "spherical": _wishart_spherical,
}


def variational_m_step(
    total: SufficientStatistics, priors: BayesianPriors, reg_covar: float
) -> VariationalParams:
    """The variational posterior from merged statistics (scikit-learn's ``_m_step``, also
    its ``_initialize`` when the statistics come from initial responsibilities).

    ``_estimate_weights``, ``_estimate_means`` and ``_estimate_precisions`` (with
    ``_estimate_wishart_full/tied/diag/spherical``), from the counts ``n_k + 10 eps``, the
    responsibility-weighted means and the centered scatter.

    Parameters
    ----------
    total : SufficientStatistics
        Merged over all chunks, from :func:`variational_estep`'s parameters (or from
        initial responsibilities); its scatter shaped for ``priors.covariance_type``.
    priors : BayesianPriors
    reg_covar : float
        Added to the diagonal of each component's scatter over its count, as scikit-learn.

    Returns
    -------
    VariationalParams

    Raises
    ------
    CollapsedComponentError
        If a posterior covariance is not positive definite (only possible with a
        covariance prior that is itself nearly singular).
    """
    covariance_type = priors.covariance_type
    counts = total.resp_sum + _COUNT_FLOOR
    xk = total.means * (total.resp_sum / counts)[:, None]
    sk = _SCATTER_OVER_COUNTS[covariance_type](total.scatter, counts, reg_covar)
    mean_precision = priors.mean_precision_prior + counts
    means = (priors.mean_precision_prior * priors.mean_prior
             + counts[:, None] * xk) / mean_precision[:, None]
    dof, covariances = _WISHART[covariance_type](counts, xk, sk, mean_precision, priors)
    return VariationalParams(
        weight_concentration=_WEIGHT_CONCENTRATIONS[priors.weight_concentration_prior_type](
            counts, priors.weight_concentration_prior),
        mean_precision=mean_precision,
        means=means,
        degrees_of_freedom=dof,
        covariances=covariances,
        precisions_cholesky=precision_cholesky(covariances, covariance_type),
        covariance_type=covariance_type,
        weight_concentration_prior_type=priors.weight_concentration_prior_type,
    )


# ------------------------------------------------------------------------------- E-step


def _stick_breaking_log_weights(concentration):
    a, b = concentration
    digamma_sum = digamma(a + b)
    log_remaining = np.cumsum(digamma(b) - digamma_sum)[:-1]
    return digamma(a) - digamma_sum + np.hstack((0, log_remaining))


def _dirichlet_log_weights(concentration):
    return digamma(concentration) - digamma(np.sum(concentration))


_EXPECTED_LOG_WEIGHTS = {
    "dirichlet_process": _stick_breaking_log_weights,
    "dirichlet_distribution": _dirichlet_log_weights,
}


def expected_log_weights(state: VariationalParams) -> np.ndarray:
    """``E[log pi_k]`` under the posterior (scikit-learn's ``_estimate_log_weights``), (K,)."""
    return _EXPECTED_LOG_WEIGHTS[state.weight_concentration_prior_type](
        state.weight_concentration)


def _expected_log_det_offsets(state: VariationalParams) -> np.ndarray:
    """``c_k``, what the variational E-step adds to ``log N(x | m_k, nu_k W_k)``, (K,).

    ``-D/2 log nu_k + 1/2 (D log 2 + sum_{i<D} digamma((nu_k - i)/2) - D / beta_k)``: the
    expected log-determinant of the precision less that of its mean, and the mean's
    uncertainty (scikit-learn's ``_estimate_log_prob`` less the Gaussian).
    """
    n_features = state.n_features
    dof = np.asarray(state.degrees_of_freedom, dtype=np.float64)
    log_lambda = n_features * _LOG_2 + digamma(
        0.5 * (dof[..., None] - np.arange(n_features))).sum(axis=-1)
    return (-0.5 * n_features * np.log(dof)
            + 0.5 * (log_lambda - n_features / state.mean_precision))


@dataclass(frozen=True)
class VariationalEStep:
    """The E-step of a variational mixture as a plain Gaussian mixture's.

    Attributes
    ----------
    params : MixtureParams
        The variational means and mean-precision factors with weights
        ``exp(E[log pi_k] + c_k - log_weight_shift)``: give these to
        :func:`~distgmm._statistics.chunk_statistics` (or :meth:`MixtureParams.labels`,
        :meth:`MixtureParams.log_responsibilities`) to get scikit-learn's responsibilities,
        labels and statistics.
    log_weights : ndarray of shape (K,)
        ``E[log pi_k] + c_k - log_weight_shift``, whose largest is 0 (``log`` of
        ``params.weights``, without its underflow).
    log_weight_shift : float
        ``max_k (E[log pi_k] + c_k)``, taken out so that the weights neither underflow nor
        all vanish (``c_k`` is about ``-D/2`` when ``nu_k`` is near ``D``). Add it to a
        point's ``log p(x)`` computed with ``params`` for scikit-learn's ``score_samples``;
        a statistics total's ``log_likelihood + weight_sum * log_weight_shift`` is
        scikit-learn's ``sum_i w_i log p(x_i)``.
    """

    params: MixtureParams
    log_weights: np.ndarray
    log_weight_shift: float


def variational_estep(state: VariationalParams) -> VariationalEStep:
    """The Gaussian-mixture parameters whose E-step is the variational one of ``state``.

    ``log w_k + log N(x | m_k, U_k U_k^T)`` with these parameters equals scikit-learn's
    ``_estimate_weighted_log_prob`` less ``log_weight_shift``, for every point; so the
    responsibilities, and the statistics from them, are scikit-learn's.
    """
    log_weights = expected_log_weights(state) + _expected_log_det_offsets(state)
    shift = float(np.max(log_weights))
    log_weights = log_weights - shift
    params = MixtureParams(np.exp(log_weights), state.means, state.covariances,
                           state.precisions_cholesky, state.covariance_type)
    return VariationalEStep(params, log_weights, shift)


# --------------------------------------------------------------------------- lower bound
#
# sum_i w_i sum_k r_ik log r_ik without the responsibilities. With
# log p_ik = log w_k + log N(x_i | m_k, P_k) (the E-step's parameters) and
# log p_i = logsumexp_k log p_ik, r_ik = p_ik / p_i and sum_k r_ik = 1, so
#
#   sum_i w_i sum_k r_ik log r_ik = sum_k sum_i w_i r_ik log p_ik - sum_i w_i log p_i.
#
# The second sum is the statistics' log_likelihood. In the first, with
# n_k = sum_i w_i r_ik, xbar_k the weighted mean and S_k the centered scatter,
#
#   sum_i w_i r_ik log p_ik = n_k (log w_k + log|U_k| - D/2 log 2 pi)
#                             - 1/2 sum_i w_i r_ik (x_i - m_k)^T P_k (x_i - m_k)
#   sum_i w_i r_ik (x_i - m_k)^T P_k (x_i - m_k) = tr(P_k S_k) + n_k |U_k^T (xbar_k - m_k)|^2
#
# (the cross term vanishes about xbar_k). A common shift of every log w_k shifts both sums
# by (sum_k n_k) shift = W shift, so the E-step's shifted weights give the same value.


def _quadratic_full(total, means, prec_chol):
    precisions = np.matmul(prec_chol, np.swapaxes(prec_chol, 1, 2))
    projected = np.einsum("ka,kab->kb", total.means - means, prec_chol)
    return (np.einsum("kab,kab->k", total.scatter, precisions)
            + total.resp_sum * np.einsum("kb,kb->k", projected, projected))


def _quadratic_tied(total, means, prec_chol):
    projected = (total.means - means) @ prec_chol
    return (np.einsum("kab,ab->k", total.scatter, prec_chol @ prec_chol.T)
            + total.resp_sum * np.einsum("kb,kb->k", projected, projected))


def _quadratic_diag(total, means, prec_chol):
    deviation = total.scatter + total.resp_sum[:, None] * np.square(total.means - means)
    return np.einsum("kd,kd->k", deviation, prec_chol**2)


def _quadratic_spherical(total, means, prec_chol):
    deviation = total.scatter + total.resp_sum[:, None] * np.square(total.means - means)
    return deviation.sum(axis=1) * prec_chol**2


#: ``sum_i w_i r_ik (x_i - m_k)^T P_k (x_i - m_k)`` per component, (K,), from the statistics.
_RESPONSIBILITY_QUADRATIC_FORMS = {
    "full": _quadratic_full,
    "tied": _quadratic_tied,
    "diag": _quadratic_diag,
    "spherical": _quadratic_spherical,
}


def responsibility_entropy(total: SufficientStatistics, estep: VariationalEStep) -> float:
    """``-sum_i w_i sum_k r_ik log r_ik`` from the statistics alone (no per-row data).

    Parameters
    ----------
    total : SufficientStatistics
        Merged over all chunks, computed with ``estep.params``.
    estep : VariationalEStep

    Returns
    -------
    float
        The responsibilities' entropy, the only data term of the lower bound.
    """
    params = estep.params
    n_features = params.n_features
    quadratic = _RESPONSIBILITY_QUADRATIC_FORMS[params.covariance_type](
        total, params.means, params.precisions_cholesky)
    log_norm = estep.log_weights + (
        log_det_cholesky(params.precisions_cholesky, params.covariance_type, n_features)
        - 0.5 * n_features * _LOG_2PI)
    # a component with no responsibility adds nothing, whatever its (maybe -inf) log weight
    per_component = np.where(total.resp_sum > 0, total.resp_sum * log_norm - 0.5 * quadratic,
                             0.0)
    return float(total.log_likelihood - per_component.sum())


def _log_wishart_norm(dof, log_det_precisions_chol, n_features):
    """scikit-learn's ``_log_wishart_norm`` (without its ``log pi`` term), per component."""
    dof = np.asarray(dof, dtype=np.float64)
    return -(dof * log_det_precisions_chol + dof * n_features * 0.5 * _LOG_2
             + gammaln(0.5 * (dof[..., None] - np.arange(n_features))).sum(axis=-1))


def _stick_breaking_log_norm(concentration):
    return -np.sum(betaln(concentration[0], concentration[1]))


def _dirichlet_log_norm(concentration):
    return gammaln(np.sum(concentration)) - np.sum(gammaln(concentration))


_LOG_WEIGHT_NORMS = {
    "dirichlet_process": _stick_breaking_log_norm,
    "dirichlet_distribution": _dirichlet_log_norm,
}


def lower_bound(
    total: SufficientStatistics, estep: VariationalEStep, state: VariationalParams
) -> float:
    """The variational lower bound scikit-learn's ``fit`` records after an iteration.

    scikit-learn's ``_compute_lower_bound(log_resp, log_prob_norm)``, called after the
    M-step: the responsibilities' entropy (from the E-step, ``total`` and ``estep``) and
    the normalisers of the *new* posterior ``state`` (the one :func:`variational_m_step`
    made from ``total``). As scikit-learn's, constant terms are left out, and it is the
    total over the data, not a mean per point.

    Parameters
    ----------
    total : SufficientStatistics
        Merged over all chunks, computed with ``estep.params``.
    estep : VariationalEStep
        The E-step the statistics came from.
    state : VariationalParams
        The posterior after the M-step on ``total``.

    Returns
    -------
    float
    """
    n_features = state.n_features
    log_det_precisions_chol = (
        log_det_cholesky(state.precisions_cholesky, state.covariance_type, n_features)
        - 0.5 * n_features * np.log(state.degrees_of_freedom))
    log_wishart = _log_wishart_norm(state.degrees_of_freedom, log_det_precisions_chol,
                                    n_features)
    # tied: one Wishart, counted once per component as scikit-learn does
    log_wishart_total = (state.n_components * float(log_wishart) if np.ndim(log_wishart) == 0
                         else float(np.sum(log_wishart)))
    log_norm_weight = _LOG_WEIGHT_NORMS[state.weight_concentration_prior_type](
        state.weight_concentration)
    return float(responsibility_entropy(total, estep) - log_wishart_total - log_norm_weight
                 - 0.5 * n_features * np.sum(np.log(state.mean_precision)))


def lower_bound_converged(previous: float, current: float, tol: float) -> bool:
    """scikit-learn's convergence rule: the lower bound changed by less than ``tol``.

    For the variational mixture the bound is a total over the data, so ``tol`` applies to
    the total (a Gaussian mixture's is a mean per point). ``previous`` is ``-inf`` before
    the first iteration, which never converges.
    """
    return abs(current - previous) < tol


# ------------------------------------------------------------------------ posterior weights


def _stick_breaking_mean_weights(concentration):
    a, b = concentration
    total = a + b
    remaining = np.hstack((1, np.cumprod((b / total)[:-1])))
    weights = a / total * remaining
    return weights / np.sum(weights)


def _dirichlet_mean_weights(concentration):
    return concentration / np.sum(concentration)


_MEAN_WEIGHTS = {
    "dirichlet_process": _stick_breaking_mean_weights,
    "dirichlet_distribution": _dirichlet_mean_weights,
}


def posterior_mean_weights(state: VariationalParams) -> np.ndarray:
    """Each component's posterior mean weight, summing to one (scikit-learn's ``weights_``).

    A component the data did not use keeps a weight of the order of ``1 / W`` or less
    (``W`` the data's total weight; its prior concentration, or the 1 of its stick,
    over the rest), so ``(posterior_mean_weights(state) > threshold).sum()`` counts the
    components the data kept.

    Returns
    -------
    ndarray of shape (K,)
    """
    return _MEAN_WEIGHTS[state.weight_concentration_prior_type](state.weight_concentration)
