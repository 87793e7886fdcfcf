"""``BayesianGaussianMixture``: scikit-learn's variational mixture over distgmm's engine.

Variational inference with a Dirichlet-process (stick-breaking) or Dirichlet-distribution
prior on the weights switches off the components the data do not need, in one fit instead
of a sweep over K. The maths is :mod:`distgmm._bayesian`: its E-step is a Gaussian
mixture's E-step with modified constants, so one pass per iteration computes it with the
same kernels and statistics, in this process or on a cluster, with the same bits on any
number of workers.

A fit makes one pass more than a Gaussian mixture's: before initialisation, the data's
weighted mean and covariance, from which scikit-learn's default priors come (in the same
sweep as the validation of the data). Where a fit runs and how ``random_state`` draws are
as for :class:`~distgmm.GaussianMixture` (:mod:`distgmm._base`).
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any

import numpy as np
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from ._base import _BaseMixture, _random_state, sklearn_resp_statistics, \
    sklearn_responsibilities
from ._bayesian import (
    WEIGHT_CONCENTRATION_PRIOR_TYPES,
    BayesianPriors,
    VariationalParams,
    resolve_priors,
    variational_estep,
    variational_m_step,
)
from ._statistics import DataMoments, MixtureParams, chunk_moments, merge_data_moments
from .engine import EMConfig

__all__ = ["BayesianGaussianMixture", "kept_components"]

#: A component keeps non-negligible weight above this posterior mean weight (what
#: :func:`kept_components` counts and the CLI reports).
KEPT_WEIGHT = 1e-2


def _moments_task(block, weights, index, diagonal: bool) -> DataMoments:
    return chunk_moments(block, weights, diagonal)


def kept_components(weights: np.ndarray, threshold: float = KEPT_WEIGHT) -> int:
    """How many components kept a posterior mean weight above ``threshold``."""
    return int((np.asarray(weights) > threshold).sum())


class BayesianGaussianMixture(_BaseMixture):
    """Variational Bayesian Gaussian mixture, in this process or on Dask; a drop-in for
    ``sklearn.mixture.BayesianGaussianMixture``.

    Parameters have scikit-learn's names, defaults and meanings; ``scheduler`` and
    ``persist`` are distgmm's own (see :class:`distgmm.GaussianMixture`). ``n_components``
    is an upper bound: the prior switches off the components the data do not need.

    Parameters
    ----------
    n_components : int, default=1
    covariance_type : {'full', 'tied', 'diag', 'spherical'}, default='full'
    tol : float, default=1e-3
        Convergence threshold on the change of the variational lower bound (a total over
        the data, as in scikit-learn).
    reg_covar : float, default=1e-6
    max_iter : int, default=100
    n_init : int, default=1
    init_params : {'kmeans', 'k-means||', 'k-means++', 'random', 'random_from_data'}
    weight_concentration_prior_type : {'dirichlet_process', 'dirichlet_distribution'}
    weight_concentration_prior : float, optional
        Default ``1 / n_components``.
    mean_precision_prior : float, optional
        Default 1.
    mean_prior : array-like of shape (n_features,), optional
        Default the data mean.
    degrees_of_freedom_prior : float, optional
        Default ``n_features``.
    covariance_prior : float or array-like, optional
        Default the data covariance (its diagonal for diag, their mean for spherical).
    random_state, warm_start, verbose, verbose_interval, scheduler, persist
        As :class:`distgmm.GaussianMixture`.

    Attributes
    ----------
    weights_, means_, covariances_, precisions_, precisions_cholesky_
    weight_concentration_ : ndarray of shape (K,), or a pair of them (Dirichlet process)
    weight_concentration_prior_, mean_precision_prior_, mean_prior_,
    degrees_of_freedom_prior_, covariance_prior_
        The priors used, defaults filled in.
    mean_precision_ : ndarray of shape (K,)
    degrees_of_freedom_ : ndarray of shape (K,), or a float for tied
    converged_, n_iter_, lower_bound_, lower_bounds_, lower_bounds_per_init_
    training_scores_
        As :class:`distgmm.GaussianMixture`'s, of this mixture's ``score_samples``.
    n_features_in_, feature_names_in_
    """

    _parameter_constraints: dict = {
        **_BaseMixture._parameter_constraints,
        "weight_concentration_prior_type": [StrOptions(set(WEIGHT_CONCENTRATION_PRIOR_TYPES))],
        "weight_concentration_prior": [None, Interval(numbers.Real, 0.0, None, closed="neither")],
        "mean_precision_prior": [None, Interval(numbers.Real, 0.0, None, closed="neither")],
        "mean_prior": [None, "array-like"],
        "degrees_of_freedom_prior": [None, Interval(numbers.Real, 0.0, None, closed="neither")],
        "covariance_prior": [None, "array-like",
                             Interval(numbers.Real, 0.0, None, closed="neither")],
    }

    def __init__(
        self,
        n_components: int = 1,
        *,
        covariance_type: str = "full",
        tol: float = 1e-3,
        reg_covar: float = 1e-6,
        max_iter: int = 100,
        n_init: int = 1,
        init_params: str = "kmeans",
        weight_concentration_prior_type: str = "dirichlet_process",
        weight_concentration_prior=None,
        mean_precision_prior=None,
        mean_prior=None,
        degrees_of_freedom_prior=None,
        covariance_prior=None,
        random_state=None,
        warm_start: bool = False,
        verbose: int = 0,
        verbose_interval: int = 10,
        scheduler: str | None = None,
        persist: str | bool = "auto",
    ):
        super().__init__(n_components, covariance_type, tol, reg_covar, max_iter, n_init,
                         init_params, random_state, warm_start, verbose, verbose_interval,
                         scheduler, persist)
        self.weight_concentration_prior_type = weight_concentration_prior_type
        self.weight_concentration_prior = weight_concentration_prior
        self.mean_precision_prior = mean_precision_prior
        self.mean_prior = mean_prior
        self.degrees_of_freedom_prior = degrees_of_freedom_prior
        self.covariance_prior = covariance_prior

    # ------------------------------------------------------------------ settings
    def _config(self, n_features: int) -> EMConfig:
        if not np.isfinite(self.tol) or not np.isfinite(self.reg_covar):
            raise ValueError(f"tol and reg_covar must be finite; got tol={self.tol!r}, "
                             f"reg_covar={self.reg_covar!r}.")
        return EMConfig(self.n_components, self.covariance_type, float(self.tol),
                        float(self.reg_covar), int(self.max_iter), int(self.n_init),
                        self.init_params)

    def _priors(self, moments: DataMoments) -> BayesianPriors:
        """The priors from the data's moments (scikit-learn's ``_check_parameters``), also
        set as the fitted ``*_prior_`` attributes."""
        priors = resolve_priors(
            self.n_components, self.covariance_type, moments,
            weight_concentration_prior_type=self.weight_concentration_prior_type,
            weight_concentration_prior=self.weight_concentration_prior,
            mean_precision_prior=self.mean_precision_prior, mean_prior=self.mean_prior,
            degrees_of_freedom_prior=self.degrees_of_freedom_prior,
            covariance_prior=self.covariance_prior)
        self.weight_concentration_prior_ = priors.weight_concentration_prior
        self.mean_precision_prior_ = priors.mean_precision_prior
        self.mean_prior_ = priors.mean_prior
        self.degrees_of_freedom_prior_ = priors.degrees_of_freedom_prior
        self.covariance_prior_ = priors.covariance_prior
        return priors

    def _completed(self, cfg: EMConfig, data) -> EMConfig:
        """The settings with the priors: one pass for the data's moments first."""
        diagonal = self.covariance_type in ("diag", "spherical")
        moments = data.map_reduce(_moments_task, diagonal, merge=merge_data_moments)
        return dataclasses.replace(cfg, priors=self._priors(moments))

    # ------------------------------------------------------------------ parameters
    def _state_from_resp(self, X, resp, sample_weight, cfg: EMConfig) -> VariationalParams:
        """scikit-learn's ``_initialize``: the variational M-step on the statistics of the
        initial responsibilities."""
        total = sklearn_resp_statistics(X, resp, sample_weight, cfg.covariance_type)
        return variational_m_step(total, cfg.priors, cfg.reg_covar)

    def _set_state(self, state: VariationalParams, dtype) -> None:
        for name, value in state.sklearn_attributes().items():
            if isinstance(value, tuple):
                value = tuple(np.asarray(v).astype(dtype, copy=False) for v in value)
            elif isinstance(value, np.ndarray):
                value = value.astype(dtype, copy=False)
            setattr(self, name, value)

    def _state(self) -> VariationalParams:
        check_is_fitted(self, "precisions_cholesky_")
        return VariationalParams.of_model(self)

    def _e_step_params(self) -> tuple[MixtureParams, float]:
        e_step = variational_estep(self._state())
        return e_step.params, e_step.log_weight_shift

    # ------------------------------------------------------------------ scikit-learn's private steps
    def _check_parameters(self, X) -> None:
        """scikit-learn's private ``_check_parameters``: the priors from ``X`` (in memory)."""
        self._validate_params()
        X = np.asarray(X)
        diagonal = self.covariance_type in ("diag", "spherical")
        self._priors(chunk_moments(X, None, diagonal))

    def _initialize_parameters(self, X, random_state: Any) -> None:
        """scikit-learn's private ``_initialize_parameters``: one start drawn from
        ``random_state`` as scikit-learn draws it (after :meth:`_check_parameters`)."""
        X = np.asarray(X)
        priors = BayesianPriors(self.weight_concentration_prior_type,
                                self.weight_concentration_prior_, self.mean_precision_prior_,
                                self.mean_prior_, self.degrees_of_freedom_prior_,
                                self.covariance_prior_, self.covariance_type)
        cfg = dataclasses.replace(self._config(X.shape[1]), priors=priors)
        resp = sklearn_responsibilities(X, None, self.n_components, self.init_params,
                                        _random_state(random_state))
        self._set_state(self._state_from_resp(X, resp, None, cfg), X.dtype)
