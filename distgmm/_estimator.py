"""``GaussianMixture``: scikit-learn's estimator contract over distgmm's engine.

Where a fit runs, how inputs are validated and what ``random_state`` draws are the same for
both mixtures and are described in :mod:`distgmm._base`. This module holds what is the
Gaussian mixture's own: its initial arrays (``weights_init``, ``means_init``,
``precisions_init``), its fitted parameters, BIC and AIC, and the lockstep fitting of many
candidates (:func:`fit_candidates`, what ``distgmm select`` runs).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable

import numpy as np
from sklearn.utils.validation import check_is_fitted

from ._base import CLIENT_MIN_BYTES, _BaseMixture, _initialisation, _n_rows, as_points, \
    sklearn_resp_statistics
from ._kernels import precisions_from_cholesky
from ._statistics import MixtureParams, m_step
from .engine import EMConfig, IterationInfo, PassInfo, fit_many, override, score_many

__all__ = ["GaussianMixture", "as_points", "fit_candidates", "CLIENT_MIN_BYTES"]

logger = logging.getLogger("distgmm")


def _check_shape(value: np.ndarray, shape: tuple, name: str, fix: str) -> None:
    if value.shape != shape:
        raise ValueError(f"The parameter '{name}' should have the shape of {shape}, but got "
                         f"{value.shape}; {fix}.")


def _as_init_array(value: Any, name: str) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype.kind not in "iuf" or not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must hold finite numbers; got dtype {array.dtype}"
                         f"{'' if array.dtype.kind not in 'iuf' else ' with NaN or inf'}.")
    return array.astype(np.float64)


def _check_precisions_init(precisions: np.ndarray, covariance_type: str) -> None:
    if covariance_type in ("diag", "spherical"):
        if (precisions <= 0).any():
            raise ValueError(f"'{covariance_type} precision' should be positive; every entry of "
                             "precisions_init must be > 0.")
        return
    matrices = precisions if covariance_type == "full" else precisions[None]
    for k, m in enumerate(matrices):
        if not np.allclose(m, m.T) or np.linalg.eigvalsh(m).min() <= 0:
            where = f"precisions_init[{k}]" if covariance_type == "full" else "precisions_init"
            raise ValueError(f"'{covariance_type} precision' should be symmetric, "
                             f"positive-definite; {where} is not: pass inverse covariances.")


class GaussianMixture(_BaseMixture):
    """Gaussian mixture fitted by EM, in this process or on Dask; a drop-in for
    ``sklearn.mixture.GaussianMixture``.

    Parameters have scikit-learn's names, defaults and meanings; ``scheduler`` and
    ``persist`` are distgmm's own. Where the fit runs and how ``random_state`` is used
    depend on the input (see the module docstring).

    Parameters
    ----------
    n_components : int, default=1
    covariance_type : {'full', 'tied', 'diag', 'spherical'}, default='full'
    tol : float, default=1e-3
        Convergence threshold on the change of the mean per-point log-likelihood.
    reg_covar : float, default=1e-6
        Added to the diagonal of every covariance.
    max_iter : int, default=100
    n_init : int, default=1
        Restarts; the one with the best lower bound is kept.
    init_params : {'kmeans', 'k-means||', 'k-means++', 'random', 'random_from_data'}
        See :mod:`distgmm.engine.init` for what each does on a cluster.
    weights_init, means_init, precisions_init : array-like, optional
    random_state : int, RandomState, Generator or None
    warm_start : bool, default=False
    verbose : int, default=0
    verbose_interval : int, default=10
    scheduler : str, optional
        Address of a Dask scheduler to fit on (always, whatever the input). Default:
        in-memory input in this process (or, above 256 MiB, on the current ``distributed``
        client if the user made one); dask, Zarr and store input on the current client if
        there is one, else on an embedded local cluster sized to the machine.
    persist : {'auto', True, False}, default='auto'
        Keep dask/Zarr input in worker memory for the duration of the fit (as Spark caches
        an RDD), so the many passes of initialisation and EM do not re-read and decompress
        the store. ``'auto'`` persists when the data takes at most a quarter of the
        cluster's total worker memory limit, and streams from storage otherwise.

    Attributes
    ----------
    weights_, means_, covariances_, precisions_, precisions_cholesky_
    converged_ : bool
    n_iter_ : int
    lower_bound_ : float
    lower_bounds_ : list of float
        Lower bound of every iteration of the best restart.
    lower_bounds_per_init_ : list of list of float
        The same for every restart.
    training_scores_ : distgmm._scores.ScoreProfile or None
        The training points' scores (``score_samples``) in the fit's last pass, summarised:
        weight, mean, variance, a log-scale histogram, and the 0.001-quantile outlier
        threshold; what model files record for outlier flags and drift. None when the fit
        made no pass (``max_iter=0``).
    n_features_in_ : int
    feature_names_in_ : ndarray of str
        Only when fitted on a DataFrame whose column names are all strings.
    """

    _parameter_constraints: dict = {
        **_BaseMixture._parameter_constraints,
        "weights_init": ["array-like", None],
        "means_init": ["array-like", None],
        "precisions_init": ["array-like", None],
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
        weights_init=None,
        means_init=None,
        precisions_init=None,
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
        self.weights_init = weights_init
        self.means_init = means_init
        self.precisions_init = precisions_init

    # ------------------------------------------------------------------ validation
    def _config(self, n_features: int) -> EMConfig:
        """The fit's settings, with the initial arrays checked against ``n_features``.

        Messages start with scikit-learn's words for the same fault, then say what to do.
        """
        self._validate_params()
        if not math.isfinite(self.tol) or not math.isfinite(self.reg_covar):
            raise ValueError(f"tol and reg_covar must be finite; got tol={self.tol!r}, "
                             f"reg_covar={self.reg_covar!r}.")
        K, cov = self.n_components, self.covariance_type
        weights = means = precisions = None
        if self.weights_init is not None:
            # scikit-learn's tolerance on the sum: float32 weights sum to 1 within 1e-6
            atol = 1e-6 if np.asarray(self.weights_init).dtype == np.float32 else 1e-8
            weights = _as_init_array(self.weights_init, "weights_init")
            _check_shape(weights, (K,), "weights", f"pass one weight per component ({K})")
            if (weights < 0).any() or (weights > 1).any():
                raise ValueError(
                    "The parameter 'weights' should be in the range [0, 1], but got min value "
                    f"{weights.min():.5f}, max value {weights.max():.5f}; pass proportions.")
            if not np.allclose(abs(1.0 - weights.sum()), 0.0, atol=atol):
                raise ValueError(
                    "The parameter 'weights' should be normalized, but got sum(weights) = "
                    f"{weights.sum():.5f}; divide weights_init by its sum.")
        if self.means_init is not None:
            means = _as_init_array(self.means_init, "means_init")
            _check_shape(means, (K, n_features), "means",
                         f"pass one row of {n_features} features per component")
        if self.precisions_init is not None:
            precisions = _as_init_array(self.precisions_init, "precisions_init")
            shape = {"full": (K, n_features, n_features), "tied": (n_features, n_features),
                     "diag": (K, n_features), "spherical": (K,)}[cov]
            _check_shape(precisions, shape, f"{cov} precision",
                         f"covariance_type={cov!r} takes precisions of shape {shape}")
            _check_precisions_init(precisions, cov)
        return EMConfig(K, cov, float(self.tol), float(self.reg_covar), int(self.max_iter),
                        int(self.n_init), self.init_params, weights, means, precisions)

    def _set_state(self, p: MixtureParams, dtype) -> None:
        self._set_parameters(tuple(a.astype(dtype, copy=False) for a in (
            p.weights, p.means, p.covariances, p.precisions_cholesky)))
        empty = np.flatnonzero(p.weights < 1e-12)
        if empty.size:
            logger.warning("components %s received no points (weight %.3g); the data may have "
                           "fewer clusters than n_components=%d", empty.tolist(),
                           p.weights[empty[0]], p.n_components)

    def _state(self) -> MixtureParams:
        return self._params()

    def _e_step_params(self) -> tuple[MixtureParams, float]:
        return self._params(), 0.0

    def _skips_resp(self, cfg: EMConfig) -> bool:
        return all(a is not None for a in (cfg.weights_init, cfg.means_init,
                                           cfg.precisions_init))

    def _state_from_resp(self, X, resp, sample_weight, cfg: EMConfig) -> MixtureParams:
        return _params_from_resp(X, resp, sample_weight, cfg)

    def _get_parameters(self) -> tuple:
        """``(weights_, means_, covariances_, precisions_cholesky_)``, as scikit-learn's."""
        return self.weights_, self.means_, self.covariances_, self.precisions_cholesky_

    def _set_parameters(self, params: tuple) -> None:
        """Set ``(weights_, means_, covariances_, precisions_cholesky_)`` and the
        ``precisions_`` they imply, as scikit-learn's private method of that name does."""
        self.weights_, self.means_, self.covariances_, self.precisions_cholesky_ = params
        self.precisions_ = precisions_from_cholesky(
            np.asarray(self.precisions_cholesky_, dtype=np.float64), self.covariance_type
        ).astype(np.asarray(self.precisions_cholesky_).dtype, copy=False)

    def _params(self) -> MixtureParams:
        check_is_fitted(self, "precisions_cholesky_")
        return MixtureParams.of_model(self)

    def _initialize(self, X, resp) -> None:
        """Set the parameters from responsibilities ``resp`` of shape (n_samples, K), as
        scikit-learn's private ``GaussianMixture._initialize`` does (one restart's start;
        ``weights_init``, ``means_init`` and ``precisions_init`` override, unchecked)."""
        X = np.asarray(X)
        resp = np.asarray(resp, dtype=np.float64)
        given = [None if v is None else np.asarray(v, dtype=np.float64)
                 for v in (self.weights_init, self.means_init, self.precisions_init)]
        cfg = EMConfig(resp.shape[1], self.covariance_type, reg_covar=float(self.reg_covar),
                       weights_init=given[0], means_init=given[1], precisions_init=given[2])
        params = _params_from_resp(X, resp, None, cfg)
        self._set_parameters(tuple(a.astype(X.dtype, copy=False) for a in (
            params.weights, params.means, params.covariances, params.precisions_cholesky)))

    def _n_parameters(self) -> int:
        K, D = self.means_.shape
        cov = {"full": K * D * (D + 1) / 2, "diag": K * D, "tied": D * (D + 1) / 2,
               "spherical": K}[self.covariance_type]
        return int(cov + K * D + K - 1)

    def bic(self, X) -> float:
        """Bayesian information criterion on ``X`` (lower is better)."""
        n = _n_rows(X)
        return -2 * self.score(X) * n + self._n_parameters() * math.log(n)

    def aic(self, X) -> float:
        """Akaike information criterion on ``X`` (lower is better)."""
        return -2 * self.score(X) * _n_rows(X) + 2 * self._n_parameters()

def _params_from_resp(X: np.ndarray, resp: np.ndarray, sample_weight: np.ndarray | None,
                      cfg: EMConfig) -> MixtureParams:
    """Initial parameters from responsibilities, as scikit-learn's ``_initialize``: the
    M-step's means and covariances (:func:`~distgmm._base.sklearn_resp_statistics`),
    weights ``n_k / n`` (so they sum to one only up to the ``10 eps`` per component
    scikit-learn adds), then the user's initial arrays."""
    total = sklearn_resp_statistics(X, resp, sample_weight, cfg.covariance_type)
    params = m_step(total, cfg.reg_covar, cfg.covariance_type)
    weights = (total.resp_sum + 10 * np.finfo(np.float64).eps) / total.weight_sum
    return override(MixtureParams(weights, params.means, params.covariances,
                                  params.precisions_cholesky, cfg.covariance_type), cfg)


def fit_candidates(
    models: list[GaussianMixture],
    X,
    sample_weight=None,
    *,
    on_iteration: Callable[[IterationInfo], None] | None = None,
    on_pass: Callable[[PassInfo], None] | None = None,
) -> list[tuple[float, float] | str]:
    """Fit several unfitted estimators on the same data in lockstep and score them.

    Every pass over the data evaluates all candidates (and all their restarts) still
    iterating, so a model selection over 12 candidates reads the data once per iteration
    instead of 12 times; one more pass gives every fitted model's BIC and AIC. Each fitted
    model is exactly what ``model.fit(X)`` would give.

    Parameters
    ----------
    models : list of GaussianMixture
        Candidates; they must share ``random_state`` and ``scheduler``. Fitted in place.
    X, sample_weight
        As for :meth:`GaussianMixture.fit`.
    on_iteration : callable, optional
        Receives every run's :class:`IterationInfo`; ``info.config`` indexes ``models``.
    on_pass : callable, optional
        Receives a :class:`distgmm.engine.PassInfo` after every pass over the data
        (initialisation passes included; the scoring pass is not reported).

    Returns
    -------
    list
        Per model, ``(bic, aic)``; or the error message for a candidate whose every restart
        collapsed (that model stays unfitted).
    """
    if not models:
        raise ValueError("fit_candidates needs at least one model.")
    first = models[0]
    for m in models[1:]:
        if m.random_state != first.random_state or m.scheduler != first.scheduler:
            raise ValueError("fit_candidates: all models must share random_state and scheduler.")
    X_checked, sample_weight, in_memory = first._validated(X, sample_weight)
    for m in models[1:]:
        m._validated(X_checked, None)
    n_rows, n_features = X_checked.shape
    configs = [m._config(n_features) for m in models]
    too_many = [c.n_components for c in configs if c.n_components > n_rows]
    if too_many:
        raise ValueError(f"Expected n_samples >= n_components, got n_components = "
                         f"{max(too_many)}, n_samples = {n_rows}; use fewer components.")
    data = first._placed(X_checked, sample_weight, in_memory)
    seed, initial_params = _initialisation(data, models, configs, False)
    results = fit_many(data, configs, seed, on_iteration=on_iteration, errors="record",
                       initial_params=initial_params, on_pass=on_pass)
    fitted = [i for i, r in enumerate(results) if r.params is not None]
    scores = score_many(data, [results[i].params for i in fitted]) if fitted else []
    out: list[tuple[float, float] | str] = [r.error for r in results]
    n = data.summary.weight_sum  # the number of points, or the total weight
    for i, score in zip(fitted, scores):
        models[i]._set_result(results[i], X_checked.dtype if in_memory else np.float64)
        p = models[i]._n_parameters()
        out[i] = (-2 * score * n + p * math.log(n), -2 * score * n + 2 * p)
    return out
