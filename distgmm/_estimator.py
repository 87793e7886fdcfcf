"""``GaussianMixture``: scikit-learn's estimator contract over the distributed EM engine.

Inputs may be NumPy arrays (or anything ``numpy.asarray`` accepts), dask arrays chunked by
rows, Zarr arrays, or the path/URL of a distgmm point store (its ``points`` array is used).
NumPy inputs are scattered to the cluster once per fit, in row chunks whose size depends
only on the array's shape (so results do not depend on the cluster size); dask and Zarr
inputs are streamed chunk by chunk and never collected on the client.

Prediction methods return NumPy for NumPy input (computed in this process, block by block)
and lazy dask arrays with the input's row chunks for dask, Zarr and store inputs.

``verbose`` messages go through :mod:`logging` (logger ``distgmm``) at INFO level; when that
logger has no handler and ``verbose > 0``, a stderr handler is attached so the messages show,
as scikit-learn's do.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
import sys
import warnings
from typing import Any, Callable

import dask.array as da
import numpy as np
from distributed import wait
from sklearn.base import BaseEstimator, DensityMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.validation import check_is_fitted

from ._engine import (
    INIT_METHODS,
    ChunkedPoints,
    EMConfig,
    FileCheckpoint,
    IterationInfo,
    fit_em,
    fit_many,
    score_many,
)
from ._kernels import COVARIANCE_TYPES, precisions_from_cholesky
from ._statistics import MixtureParams
from .cluster import get_client

__all__ = ["GaussianMixture", "as_points", "fit_candidates"]

logger = logging.getLogger("distgmm")

_TARGET_CHUNK_BYTES = 16 * 2**20
_MIN_CHUNK_ROWS = 4096
_LOCAL_BLOCK_ROWS = 65536


def _chunk_rows_for(n_rows: int, n_features: int) -> int:
    """Row chunk size for NumPy input: a function of the shape only (never of the cluster)."""
    by_bytes = max(1, _TARGET_CHUNK_BYTES // (8 * max(n_features, 1)))
    return int(max(1, min(by_bytes, max(_MIN_CHUNK_ROWS, math.ceil(n_rows / 16)))))


def _open_store_points(path: str) -> da.Array:
    import zarr

    try:
        node = zarr.open(path, mode="r")
    except Exception as exc:  # zarr raises several types for a missing or bad path
        raise ValueError(
            f"cannot open {path!r} as a Zarr point store ({exc.__class__.__name__}: {exc}); "
            "create one with `distgmm ingest` or `distgmm generate`."
        ) from None
    if isinstance(node, zarr.Group):
        if "points" not in node:
            raise ValueError(f"{path!r} is a Zarr group without a 'points' array; it is not a "
                             "distgmm point store.")
        node = node["points"]
    return da.from_zarr(node)


def as_points(X: Any, *, name: str = "X") -> tuple[da.Array | np.ndarray, bool]:
    """Validate ``X`` at the boundary and return ``(array, is_lazy)``.

    NumPy-like input comes back as a float ``ndarray``; dask, Zarr and store-path input as a
    2-D float dask array chunked along rows only.
    """
    if isinstance(X, (str, os.PathLike)):
        X = _open_store_points(os.fspath(X))
    else:
        try:
            import zarr

            if isinstance(X, zarr.Array):
                X = da.from_zarr(X)
        except ImportError:  # pragma: no cover - zarr is a dependency
            pass
    lazy = isinstance(X, da.Array)
    if not lazy:
        X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(
            f"{name} must be 2-D (n_samples, n_features), got {X.ndim}-D with shape "
            f"{tuple(X.shape)}; use X.reshape(-1, 1) for a single feature."
        )
    dtype = X.dtype
    if dtype.kind in "iub":
        X = X.astype(np.float64)
    elif dtype.kind != "f":
        raise ValueError(
            f"{name} has dtype {dtype}, which is not numeric; convert it to float32 or float64."
        )
    if X.shape[0] == 0:
        raise ValueError(f"{name} has 0 rows (shape {tuple(X.shape)}); pass at least one point.")
    if X.shape[1] == 0:
        raise ValueError(f"{name} has 0 features (shape {tuple(X.shape)}); pass at least one.")
    if lazy and len(X.chunks[1]) > 1:
        raise ValueError(
            f"{name} is chunked along the feature axis (column chunks {X.chunks[1]}); chunk it "
            "by rows only, e.g. X.rechunk({1: -1})."
        )
    return X, lazy


def _check_int(name, value, low):
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}.")


def _check_float(name, value, low):
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not value >= low \
            or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number >= {low}, got {value!r}.")


def _scattered(client, parts: list[np.ndarray]) -> da.Array:
    """``parts`` sent to the workers as the row chunks of a persisted dask array.

    Persisted under keys of its own (the chunks stay where they were scattered, and the
    scattered futures are let go), so passes read the chunks in place on the workers.
    """
    futures = client.scatter(parts, hash=False)
    array = client.persist(da.concatenate([
        da.from_delayed(f, shape=p.shape, dtype=p.dtype) for f, p in zip(futures, parts)]))
    wait(array)
    return array


class GaussianMixture(DensityMixin, BaseEstimator):
    """Gaussian mixture fitted by distributed EM; a drop-in for ``sklearn.mixture.GaussianMixture``.

    Parameters have scikit-learn's names, defaults and meanings.

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
        See :mod:`distgmm._engine` for what each does on distributed data.
    weights_init, means_init, precisions_init : array-like, optional
    random_state : int, RandomState, Generator or None
    warm_start : bool, default=False
    verbose : int, default=0
    verbose_interval : int, default=10
    scheduler : str, optional
        Address of a Dask scheduler to fit on. Default: the current ``distributed`` client
        if there is one, else an embedded LocalCluster sized to the machine.
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
    n_features_in_ : int
    """

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
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weights_init = weights_init
        self.means_init = means_init
        self.precisions_init = precisions_init
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.verbose_interval = verbose_interval
        self.scheduler = scheduler
        self.persist = persist

    # ------------------------------------------------------------------ validation
    def _config(self, n_features: int) -> EMConfig:
        _check_int("n_components", self.n_components, 1)
        if self.covariance_type not in COVARIANCE_TYPES:
            raise ValueError(f"covariance_type must be one of {', '.join(COVARIANCE_TYPES)}; "
                             f"got {self.covariance_type!r}.")
        _check_float("tol", self.tol, 0.0)
        _check_float("reg_covar", self.reg_covar, 0.0)
        _check_int("max_iter", self.max_iter, 0)
        _check_int("n_init", self.n_init, 1)
        _check_int("verbose", self.verbose, 0)
        _check_int("verbose_interval", self.verbose_interval, 1)
        if self.init_params not in INIT_METHODS:
            raise ValueError(f"init_params must be one of {', '.join(INIT_METHODS)}; got "
                             f"{self.init_params!r}.")
        if self.persist not in ("auto", True, False):
            raise ValueError(f"persist must be 'auto', True or False; got {self.persist!r}.")
        if self.scheduler is not None and not isinstance(self.scheduler, str):
            raise ValueError(f"scheduler must be an address string such as "
                             f"'tcp://host:8786' or None; got {type(self.scheduler).__name__}.")
        rs = self.random_state
        if not (rs is None or isinstance(rs, (np.random.RandomState, np.random.Generator))
                or (isinstance(rs, numbers.Integral) and not isinstance(rs, bool) and rs >= 0)):
            raise ValueError("random_state must be None, a non-negative int, a RandomState or a "
                             f"Generator; got {rs!r}.")
        K, cov = self.n_components, self.covariance_type
        weights = means = precisions = None
        if self.weights_init is not None:
            weights = np.asarray(self.weights_init, dtype=np.float64)
            if weights.shape != (K,):
                raise ValueError(f"weights_init must have shape ({K},), got {weights.shape}.")
            if (weights < 0).any() or (weights > 1).any() or not np.all(np.isfinite(weights)):
                raise ValueError("weights_init must be in [0, 1]; got min "
                                 f"{weights.min():.6g}, max {weights.max():.6g}.")
            if not np.allclose(weights.sum(), 1.0, rtol=0, atol=1e-6):
                raise ValueError(f"weights_init must sum to 1, got {weights.sum():.9g}; "
                                 "normalise it.")
        if self.means_init is not None:
            means = np.asarray(self.means_init, dtype=np.float64)
            if means.shape != (K, n_features):
                raise ValueError(f"means_init must have shape ({K}, {n_features}), got "
                                 f"{means.shape}.")
            if not np.all(np.isfinite(means)):
                raise ValueError("means_init contains NaN or infinite values.")
        if self.precisions_init is not None:
            precisions = np.asarray(self.precisions_init, dtype=np.float64)
            shape = {"full": (K, n_features, n_features), "tied": (n_features, n_features),
                     "diag": (K, n_features), "spherical": (K,)}[cov]
            if precisions.shape != shape:
                raise ValueError(f"precisions_init for covariance_type={cov!r} must have shape "
                                 f"{shape}, got {precisions.shape}.")
            mats = {"full": lambda: precisions, "tied": lambda: precisions[None]}.get(cov)
            if mats is not None:
                for k, m in enumerate(mats()):
                    if not np.allclose(m, m.T) or np.linalg.eigvalsh(m).min() <= 0:
                        raise ValueError(f"precisions_init[{k}] is not symmetric positive "
                                         "definite; pass valid precision matrices.")
            elif (precisions <= 0).any():
                raise ValueError(f"{cov} precisions_init must be positive.")
        return EMConfig(K, cov, float(self.tol), float(self.reg_covar), int(self.max_iter),
                        int(self.n_init), self.init_params, weights, means, precisions)

    def _client(self):
        return get_client(self.scheduler)

    def _chunked(self, X, sample_weight, client) -> ChunkedPoints:
        X, lazy = as_points(X)
        n_rows, n_features = X.shape
        keepalive = []  # persisted data must outlive the fit, or workers drop it
        if not lazy:
            rows = _chunk_rows_for(n_rows, n_features)
            starts = range(0, n_rows, rows)
            X = _scattered(client, [np.ascontiguousarray(X[s:s + rows]) for s in starts])
            keepalive.append(X)
        elif self._should_persist(X, client):
            X = client.persist(X)
            keepalive.append(X)
        weights = None
        if sample_weight is not None:
            w_lazy = isinstance(sample_weight, da.Array)
            weights = sample_weight if w_lazy else np.asarray(sample_weight)
            if weights.ndim != 1 or weights.shape[0] != n_rows:
                raise ValueError(f"sample_weight must have shape ({n_rows},) to match X, got "
                                 f"{tuple(weights.shape)}.")
            if weights.dtype.kind not in "iubf":
                raise ValueError(f"sample_weight has dtype {weights.dtype}, which is not "
                                 "numeric; pass numbers.")
            weights = weights.astype(np.float64)
            if w_lazy:
                weights = weights.rechunk((X.chunks[0],))
            else:
                offsets = np.cumsum((0,) + X.chunks[0][:-1])
                weights = _scattered(client, [weights[a:a + c] for a, c in
                                              zip(offsets, X.chunks[0])])
                keepalive.append(weights)
        data = ChunkedPoints(X, weights, client)
        data.keepalive = keepalive
        return data

    def _should_persist(self, X: da.Array, client) -> bool:
        if self.persist in (True, False):
            return self.persist
        workers = client.scheduler_info()["workers"].values()
        limit = sum(w.get("memory_limit") or 0 for w in workers)
        return limit > 0 and X.nbytes <= limit / 4

    # ------------------------------------------------------------------ fitting
    def fit(
        self,
        X,
        y=None,
        sample_weight=None,
        *,
        on_iteration: Callable[[IterationInfo], None] | None = None,
        checkpoint: str | os.PathLike | None = None,
    ) -> "GaussianMixture":
        """Estimate the parameters with distributed EM.

        Parameters
        ----------
        X : array-like (n_samples, n_features), dask array, Zarr array, or store path
        y : ignored
        sample_weight : array-like or dask array of shape (n_samples,), optional
            Non-negative per-point weights; integer weights fit like repeated rows.
        on_iteration : callable, optional
            Called with a :class:`distgmm._engine.IterationInfo` after every iteration.
        checkpoint : path, optional
            Checkpoint file written atomically after every iteration. If it exists and
            belongs to the same fit (same data, options and seed), the fit resumes from it.

        Returns
        -------
        self
        """
        self._fit(X, sample_weight, on_iteration, checkpoint)
        return self

    def _fit(self, X, sample_weight, on_iteration, checkpoint):
        X_checked, _ = as_points(X)
        n_rows, n_features = X_checked.shape
        cfg = self._config(n_features)
        if n_rows < max(2, cfg.n_components):
            raise ValueError(
                f"Expected n_samples >= n_components (and at least 2), got n_components = "
                f"{cfg.n_components}, n_samples = {n_rows}; use fewer components or more data."
            )
        warm = None
        if self.warm_start and hasattr(self, "converged_"):
            if self.n_features_in_ != n_features:
                raise ValueError(f"warm_start: X has {n_features} features but the model was "
                                 f"fitted with {self.n_features_in_}.")
            warm = (self._params(), self.lower_bound_)
        if self.verbose and not logger.handlers:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(message)s"))
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)
        client = self._client()
        data = self._chunked(X_checked, sample_weight, client)

        def report(info: IterationInfo):
            if self.verbose and (info.iteration % self.verbose_interval == 0 or info.converged):
                logger.info("init %d iteration %d: lower bound %.6f, change %.3g, %.3fs",
                            info.restart, info.iteration, info.lower_bound, info.change,
                            info.seconds)
            if on_iteration is not None:
                on_iteration(info)

        result = fit_em(
            data, cfg, self.random_state, warm_start=warm, on_iteration=report,
            checkpoint=None if checkpoint is None else FileCheckpoint(checkpoint),
        )
        self._set_result(result)
        if not self.converged_ and self.max_iter > 0:
            warnings.warn(
                "Best performing initialization did not converge. Try different init "
                "parameters, or increase max_iter, tol, or check for degenerate data.",
                ConvergenceWarning,
            )
        return self

    def _set_result(self, result) -> None:
        p = result.params
        self.weights_ = p.weights
        self.means_ = p.means
        self.covariances_ = p.covariances
        self.precisions_cholesky_ = p.precisions_cholesky
        self.precisions_ = precisions_from_cholesky(p.precisions_cholesky, p.covariance_type)
        self.converged_ = result.converged
        self.n_iter_ = result.n_iter
        self.lower_bound_ = result.lower_bound
        self.lower_bounds_ = list(result.lower_bounds)
        self.lower_bounds_per_init_ = [list(h) for h in result.histories]
        self.n_features_in_ = p.n_features
        self.fit_seconds_ = result.seconds

    def _params(self) -> MixtureParams:
        check_is_fitted(self, "precisions_cholesky_")
        return MixtureParams.of_model(self)

    def fit_predict(self, X, y=None, sample_weight=None):
        """Fit, then return the label of every point; equals ``fit(X).predict(X)``."""
        return self.fit(X, sample_weight=sample_weight).predict(X)

    # ------------------------------------------------------------------ prediction
    def _blockwise(self, X, fn: Callable[[MixtureParams, np.ndarray], np.ndarray], *,
                   columns: int | None, dtype):
        params = self._params()
        X, lazy = as_points(X)
        if X.shape[1] != params.n_features:
            raise ValueError(f"X has {X.shape[1]} features, but the model was fitted with "
                             f"{params.n_features}.")
        if lazy:
            if columns is None:
                return X.map_blocks(_apply_block, fn, params, drop_axis=1, dtype=dtype,
                                    meta=np.empty((0,), dtype))
            return X.map_blocks(_apply_block, fn, params, chunks=(X.chunks[0], (columns,)),
                                dtype=dtype, meta=np.empty((0, 0), dtype))
        parts = [fn(params, X[s:s + _LOCAL_BLOCK_ROWS])
                 for s in range(0, X.shape[0], _LOCAL_BLOCK_ROWS)]
        return np.concatenate(parts)

    def score_samples(self, X):
        """Log-likelihood of each point, shape (n_samples,)."""
        return self._blockwise(X, _score_samples, columns=None, dtype=np.float64)

    def predict(self, X):
        """Most likely component of each point, shape (n_samples,)."""
        return self._blockwise(X, _predict, columns=None, dtype=np.int64)

    def predict_proba(self, X):
        """Posterior probability of each component for each point, shape (n_samples, K)."""
        return self._blockwise(X, _predict_proba, columns=self.means_.shape[0]
                               if hasattr(self, "means_") else None, dtype=np.float64)

    def score(self, X, y=None) -> float:
        """Mean per-point log-likelihood of ``X``."""
        s = self.score_samples(X)
        if isinstance(s, da.Array):
            return float(self._client().compute(s.mean()).result())
        return float(s.mean())

    def _n_parameters(self) -> int:
        K, D = self.means_.shape
        cov = {"full": K * D * (D + 1) / 2, "diag": K * D, "tied": D * (D + 1) / 2,
               "spherical": K}[self.covariance_type]
        return int(cov + K * D + K - 1)

    def bic(self, X) -> float:
        """Bayesian information criterion on ``X`` (lower is better)."""
        n = as_points(X)[0].shape[0]
        return -2 * self.score(X) * n + self._n_parameters() * math.log(n)

    def aic(self, X) -> float:
        """Akaike information criterion on ``X`` (lower is better)."""
        n = as_points(X)[0].shape[0]
        return -2 * self.score(X) * n + 2 * self._n_parameters()

    def sample(self, n_samples: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``n_samples`` points and their components (scikit-learn's algorithm)."""
        check_is_fitted(self, "means_")
        _check_int("n_samples", n_samples, 1)
        rng = self.random_state
        if not isinstance(rng, np.random.RandomState):
            rng = np.random.RandomState(rng if isinstance(rng, (int, np.integer)) else None)
        counts = rng.multinomial(n_samples, self.weights_)
        K, D = self.means_.shape
        if self.covariance_type == "full":
            X = np.vstack([rng.multivariate_normal(m, c, int(n))
                           for m, c, n in zip(self.means_, self.covariances_, counts)])
        elif self.covariance_type == "tied":
            X = np.vstack([rng.multivariate_normal(m, self.covariances_, int(n))
                           for m, n in zip(self.means_, counts)])
        else:
            cov = self.covariances_ if self.covariance_type == "diag" else \
                self.covariances_[:, None] * np.ones(D)
            X = np.vstack([m + rng.standard_normal(size=(n, D)) * np.sqrt(c)
                           for m, c, n in zip(self.means_, cov, counts)])
        y = np.concatenate([np.full(n, k, dtype=int) for k, n in enumerate(counts)])
        return X, y


def _apply_block(block, fn, params):
    return fn(params, block)


def _score_samples(params: MixtureParams, X: np.ndarray) -> np.ndarray:
    return params.log_responsibilities(X)[0]


def _predict(params: MixtureParams, X: np.ndarray) -> np.ndarray:
    return params.labels(X)


def _predict_proba(params: MixtureParams, X: np.ndarray) -> np.ndarray:
    return np.exp(params.log_responsibilities(X)[1])


def fit_candidates(
    models: list[GaussianMixture],
    X,
    sample_weight=None,
    *,
    on_iteration: Callable[[IterationInfo], None] | None = None,
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
    X_checked, _ = as_points(X)
    n_rows, n_features = X_checked.shape
    configs = [m._config(n_features) for m in models]
    too_many = [c.n_components for c in configs if c.n_components > n_rows]
    if too_many:
        raise ValueError(f"Expected n_samples >= n_components, got n_components = "
                         f"{max(too_many)}, n_samples = {n_rows}; use fewer components.")
    data = first._chunked(X_checked, sample_weight, first._client())
    results = fit_many(data, configs, first.random_state, on_iteration=on_iteration,
                       errors="record")
    fitted = [i for i, r in enumerate(results) if r.params is not None]
    scores = score_many(data, [results[i].params for i in fitted]) if fitted else []
    out: list[tuple[float, float] | str] = [r.error for r in results]
    n = data.summary.weight_sum  # the number of points, or the total weight
    for i, score in zip(fitted, scores):
        models[i]._set_result(results[i])
        p = models[i]._n_parameters()
        out[i] = (-2 * score * n + p * math.log(n), -2 * score * n + 2 * p)
    return out
