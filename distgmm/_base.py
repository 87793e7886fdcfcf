"""What both mixture estimators share: input at the boundary, where a fit runs, the EM call,
prediction and sampling (scikit-learn's ``BaseMixture``, over distgmm's engine).

Inputs may be NumPy arrays (or anything scikit-learn accepts: lists, DataFrames), dask
arrays chunked by rows, Zarr arrays, or the path/URL of a distgmm point store (its
``points`` array is used).

Where a fit runs, decided in :meth:`_BaseMixture._placed` (the README says the same):

* **In this process**, with no cluster: in-memory input when no ``scheduler`` is given,
  unless the user has made a default ``distributed.Client`` and the array is larger than
  :data:`CLIENT_MIN_BYTES`. The same kernels and merge tree run over the same row chunks
  as on a cluster, on a pool of threads. Measured (``bench/bench_small.py``), this is
  faster than a local cluster already running at every size tried (3.9x at 0.6 MiB,
  1.4x at 244 MiB on 2 cores), needs no copy of the data, and starts nothing.
  Validation, messages, fitted-attribute dtypes and the initialisation are
  scikit-learn's: ``random_state`` draws ``kmeans``, ``k-means++``, ``random`` and
  ``random_from_data`` exactly as scikit-learn does, so the fit is scikit-learn's fit to
  rounding.
* **On a cluster** (the given ``scheduler``, else the current client, else an embedded
  local cluster): dask, Zarr and store input, in-memory input with a ``scheduler``, and
  in-memory input above :data:`CLIENT_MIN_BYTES` when a default client exists (a user
  who made a client to a cluster of many machines wants large arrays fitted there).
  NumPy input is scattered once per fit in row chunks whose size depends only on the
  array's shape; dask and Zarr input stream chunk by chunk and are never collected on
  the client. Initialisation draws from random streams derived from ``random_state``,
  the restart and each chunk's index (see :mod:`distgmm.engine.init`), so a seed gives
  the same fit on any number of workers, but not scikit-learn's draws.

Fitted attributes have the dtype of in-memory input (float32 stays float32, as in
scikit-learn); fits of dask, Zarr and store input keep float64 attributes, the precision
their float64 accumulation gives. Prediction methods return NumPy for in-memory input
(computed in this process) and lazy dask arrays with the input's row chunks otherwise.

``verbose`` messages go through :mod:`logging` (logger ``distgmm``) at INFO level; when that
logger has no handler and ``verbose > 0``, a stderr handler is attached so the messages show,
as scikit-learn's do.
"""

from __future__ import annotations

import functools
import logging
import numbers
import os
import sys
import warnings
from typing import Any, Callable

import dask.array as da
import numpy as np
from sklearn.base import BaseEstimator, DensityMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data

from .cluster import current_client, get_client
from .engine import (
    INIT_METHODS,
    ClusterPoints,
    EMConfig,
    FileCheckpoint,
    IterationInfo,
    PassInfo,
    LocalPoints,
    cluster_points,
    fit_em,
    local_points,
)
from ._kernels import COVARIANCE_TYPES
from ._statistics import BLOCK_ROWS, MixtureParams, SufficientStatistics, \
    chunk_statistics_from_resp

__all__ = ["as_points", "CLIENT_MIN_BYTES"]

logger = logging.getLogger("distgmm")

#: In-memory input larger than this goes to the user's default client, when there is one
#: (see the module docstring); smaller input, or any without a client, fits in this process.
CLIENT_MIN_BYTES = 256 * 2**20
#: What to do, added to scikit-learn's validation messages that do not say it.
_VALIDATION_HINTS = (
    ("infinity", "Drop or clip the rows holding infinite values before fitting."),
    ("Complex data", "Pass real numbers (for example the real and imaginary parts as "
                     "separate columns)."),
    ("could not convert", "Pass numbers: convert or drop the non-numeric columns."),
    ("features, but", "Pass data with the columns the model was fitted on."),
    ("while a minimum of", "Pass at least that many rows (samples) and columns (features)."),
)
#: Initialisations drawn as scikit-learn draws them on the in-process path.
_SKLEARN_INITS = ("kmeans", "k-means++", "random", "random_from_data")


# ---------------------------------------------------------------------------- input
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
    2-D float dask array chunked along rows only. Messages use scikit-learn's words
    (``check_array``'s) for the faults both detect.
    """
    if isinstance(X, (str, os.PathLike)):
        X = _open_store_points(os.fspath(X))
    elif _is_zarr_array(X):
        X = da.from_zarr(X)
    lazy = isinstance(X, da.Array)
    if not lazy:
        X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(
            f"Expected 2D array, got {X.ndim}D array instead ({name} has shape "
            f"{tuple(X.shape)}). Reshape your data either using {name}.reshape(-1, 1) if your "
            f"data has a single feature or {name}.reshape(1, -1) if it contains a single "
            "sample."
        )
    dtype = X.dtype
    if dtype.kind == "c":
        raise ValueError(f"Complex data not supported: {name} has dtype {dtype}; pass real "
                         "numbers (e.g. the real part, or real and imaginary parts as columns).")
    if dtype.kind in "iub" or (dtype.kind == "f" and dtype.itemsize < 4):
        X = X.astype(np.float64)
    elif dtype.kind != "f":
        raise ValueError(
            f"{name} has dtype {dtype}, which is not numeric; convert it to float32 or float64."
        )
    if X.shape[0] == 0:
        raise ValueError(f"Found array with 0 sample(s) (shape={tuple(X.shape)}) while a "
                         f"minimum of 1 is required; {name} needs at least one point.")
    if X.shape[1] == 0:
        raise ValueError(f"Found array with 0 feature(s) (shape={tuple(X.shape)}) while a "
                         f"minimum of 1 is required; {name} needs at least one feature.")
    if lazy and len(X.chunks[1]) > 1:
        raise ValueError(
            f"{name} is chunked along the feature axis (column chunks {X.chunks[1]}); chunk it "
            "by rows only, e.g. X.rechunk({1: -1})."
        )
    return X, lazy


def _is_zarr_array(X: Any) -> bool:
    zarr = sys.modules.get("zarr")  # not imported: X cannot be a Zarr array
    return zarr is not None and isinstance(X, zarr.Array)


def _is_out_of_core(X: Any) -> bool:
    """Whether ``X`` is data fitted on a cluster whatever its size: a dask array, a Zarr
    array or the path of a store."""
    return isinstance(X, (str, os.PathLike, da.Array)) or _is_zarr_array(X)


def _lazy_sample_weight(sample_weight: Any, n_rows: int) -> Any:
    """Shape and dtype checks of the weights of out-of-core input (their values are
    checked in the first pass over the data)."""
    weights = sample_weight if isinstance(sample_weight, da.Array) else np.asarray(sample_weight)
    if weights.ndim != 1 or weights.shape[0] != n_rows:
        raise ValueError(f"sample_weight must have shape ({n_rows},) to match X, got "
                         f"{tuple(weights.shape)}.")
    if weights.dtype.kind not in "iubf":
        raise ValueError(f"sample_weight has dtype {weights.dtype}, which is not numeric; "
                         "pass numbers.")
    return weights


def _n_rows(X: Any) -> int:
    return as_points(X)[0].shape[0] if _is_out_of_core(X) else len(X)


def _random_state(random_state: Any) -> np.random.RandomState:
    """scikit-learn's ``check_random_state``; a ``Generator`` seeds a new ``RandomState``."""
    if isinstance(random_state, np.random.Generator):
        return np.random.RandomState(random_state.integers(2**32))
    return check_random_state(random_state)


# ---------------------------------------------------------------------------- scikit-learn's starts
def sklearn_responsibilities(X: np.ndarray, sample_weight: np.ndarray | None,
                             n_components: int, init_params: str,
                             random_state: np.random.RandomState) -> np.ndarray:
    """One restart's initial responsibilities (n, K), drawn exactly as scikit-learn's
    ``BaseMixture._initialize_parameters`` draws them from ``random_state``."""
    from sklearn.cluster import KMeans, kmeans_plusplus

    n = X.shape[0]
    resp = np.zeros((n, n_components))
    if init_params == "kmeans":
        labels = KMeans(n_clusters=n_components, n_init=1, random_state=random_state).fit(
            X, sample_weight=sample_weight).labels_
        resp[np.arange(n), labels] = 1
    elif init_params == "random":
        resp = np.asarray(random_state.uniform(size=(n, n_components)), dtype=X.dtype)
        resp /= resp.sum(axis=1)[:, np.newaxis]
    elif init_params == "random_from_data":
        indices = random_state.choice(n, size=n_components, replace=False)
        resp[indices, np.arange(n_components)] = 1
    else:  # k-means++
        _, indices = kmeans_plusplus(X, n_components, random_state=random_state,
                                     sample_weight=sample_weight)
        resp[indices, np.arange(n_components)] = 1
    return resp


def sklearn_resp_statistics(X: np.ndarray, resp: np.ndarray, sample_weight: np.ndarray | None,
                            covariance_type: str) -> SufficientStatistics:
    """The statistics scikit-learn's M-step takes from initial responsibilities.

    scikit-learn's tied covariance is ``(X^T X - sum_k n_k m_k m_k^T) / sum_k n_k``, the
    pooled scatter only when every row's responsibilities sum to one. They do not for the
    point initialisations (``k-means++``, ``random_from_data``: one row per component),
    where the other rows' raw second moments stay in. For the tied type that term is added
    to component 0's scatter (the tied M-step only uses their sum), so that the same seed
    gives scikit-learn's start; the other types are unaffected.
    """
    total = chunk_statistics_from_resp(X, resp, sample_weight, covariance_type)
    leftover = 1.0 - resp.sum(axis=1)
    if sample_weight is not None:
        leftover = leftover * sample_weight
    if covariance_type == "tied" and np.any(leftover != 0):
        X64 = np.asarray(X, dtype=np.float64)
        total.scatter[0] += (X64 * leftover[:, None]).T @ X64
    return total


def _initialisation(data, models: list["_BaseMixture"], configs: list[EMConfig],
                    warm: bool) -> tuple[Any, Callable[[int, int], Any] | None]:
    """``(seed, initial_params)`` for :func:`fit_many`: on the in-process path, the
    scikit-learn initialisations draw as scikit-learn does (each model from its own
    ``check_random_state(random_state)``, its restarts in order); elsewhere the engine's
    chunk-derived streams from ``random_state``."""
    seed = models[0].random_state
    if not isinstance(data, LocalPoints) or warm or \
            any(cfg.init_params not in _SKLEARN_INITS for cfg in configs):
        return seed, None
    states = [_random_state(m.random_state) for m in models]
    # The fit's fingerprint (checkpoints) must not draw from a RandomState the user passed.
    seed = seed if isinstance(seed, numbers.Integral) else None
    return seed, functools.partial(_sklearn_start, data, models, configs, states)


def _sklearn_start(data: LocalPoints, models, configs, states, config: int, restart: int):
    """One restart's starting point drawn exactly as scikit-learn draws it: the restarts of
    a configuration share its ``RandomState`` and call this in order, as scikit-learn's
    loop does."""
    cfg, model = configs[config], models[config]
    if model._skips_resp(cfg):
        return cfg.steps.start(None, cfg)
    resp = sklearn_responsibilities(data.points, data.sample_weight, cfg.n_components,
                                    cfg.init_params, states[config])
    return model._state_from_resp(data.points, resp, data.sample_weight, cfg)


# ---------------------------------------------------------------------------- prediction
def _apply_block(block, fn, params, shift):
    """``fn`` on one chunk of out-of-core input, refusing non-finite rows (as scikit-learn
    refuses them in memory) instead of labelling them 0."""
    finite = np.isfinite(block).all(axis=1)
    if not finite.all():
        raise ValueError(f"Input X contains NaN or infinity in {int((~finite).sum())} rows of "
                         f"a chunk of {block.shape[0]}; drop or impute them before predicting.")
    return fn(params, block, shift)


def _score_samples(params: MixtureParams, X: np.ndarray, shift: float) -> np.ndarray:
    return params.log_responsibilities(X)[0] + shift


def _predict(params: MixtureParams, X: np.ndarray, shift: float) -> np.ndarray:
    return params.labels(X)


def _predict_proba(params: MixtureParams, X: np.ndarray, shift: float) -> np.ndarray:
    return np.exp(params.log_responsibilities(X)[1])


class _BaseMixture(DensityMixin, BaseEstimator):
    """The estimator machinery both mixtures share (see the module docstring).

    Subclasses say what their fit needs: :meth:`_config` (checked settings),
    :meth:`_completed` (settings that need the data, from passes over it), how a start
    comes from responsibilities (:meth:`_state_from_resp`), how the fitted parameters are
    set and read back (:meth:`_set_state`, :meth:`_state`), and the parameters prediction
    runs with (:meth:`_e_step_params`).
    """

    _parameter_constraints: dict = {
        "n_components": [Interval(numbers.Integral, 1, None, closed="left")],
        "covariance_type": [StrOptions(set(COVARIANCE_TYPES))],
        "tol": [Interval(numbers.Real, 0.0, None, closed="left")],
        "reg_covar": [Interval(numbers.Real, 0.0, None, closed="left")],
        "max_iter": [Interval(numbers.Integral, 0, None, closed="left")],
        "n_init": [Interval(numbers.Integral, 1, None, closed="left")],
        "init_params": [StrOptions(set(INIT_METHODS))],
        "random_state": ["random_state", np.random.Generator],
        "warm_start": ["boolean"],
        "verbose": ["verbose"],
        "verbose_interval": [Interval(numbers.Integral, 1, None, closed="left")],
        "scheduler": [str, None],
        "persist": [StrOptions({"auto"}), "boolean"],
    }

    def __init__(self, n_components, covariance_type, tol, reg_covar, max_iter, n_init,
                 init_params, random_state, warm_start, verbose, verbose_interval, scheduler,
                 persist):
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.verbose_interval = verbose_interval
        self.scheduler = scheduler
        self.persist = persist

    # ------------------------------------------------------------------ subclass hooks
    def _config(self, n_features: int) -> EMConfig:  # pragma: no cover - abstract
        raise NotImplementedError

    def _completed(self, cfg: EMConfig, data) -> EMConfig:
        """The settings that need the data (priors from its moments); none by default."""
        return cfg

    def _skips_resp(self, cfg: EMConfig) -> bool:
        """Whether a start needs no responsibilities (every initial array given)."""
        return False

    def _state_from_resp(self, X, resp, sample_weight, cfg: EMConfig):  # pragma: no cover
        raise NotImplementedError

    def _set_state(self, state, dtype) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _state(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def _e_step_params(self) -> tuple[MixtureParams, float]:  # pragma: no cover - abstract
        raise NotImplementedError

    # ------------------------------------------------------------------ validation
    def _client(self):
        return get_client(self.scheduler)

    def _validate_in_memory(self, X, *, reset: bool) -> np.ndarray:
        """scikit-learn's validation of in-memory input (``validate_data``): its exception
        types and messages (followed by what to do, where scikit-learn's does not say), its
        conversions (lists, DataFrames, object arrays of numbers, float16 to float64),
        ``n_features_in_`` and ``feature_names_in_``."""
        try:
            return validate_data(self, X, reset=reset, dtype=[np.float64, np.float32],
                                 ensure_min_samples=2 if reset else 1)
        except (ValueError, TypeError) as exc:
            hint = next((h for pattern, h in _VALIDATION_HINTS if pattern in str(exc)), None)
            if hint is None:
                raise
            raise type(exc)(f"{exc} {hint}") from None

    def _validated(self, X, sample_weight) -> tuple[Any, Any, bool]:
        """``(X, sample_weight, in_memory)`` checked at the boundary; sets
        ``n_features_in_`` (and ``feature_names_in_`` for DataFrames)."""
        if not _is_out_of_core(X):
            X = self._validate_in_memory(X, reset=True)
            if sample_weight is not None and not isinstance(sample_weight, da.Array):
                try:
                    sample_weight = _check_sample_weight(sample_weight, X, dtype=np.float64,
                                                         ensure_non_negative=True)
                except ValueError as exc:
                    raise type(exc)(f"{exc} Pass one finite, non-negative weight per row of "
                                    "X.") from None
            return X, sample_weight, True
        X, _ = as_points(X)
        if sample_weight is not None:
            sample_weight = _lazy_sample_weight(sample_weight, X.shape[0])
        self.n_features_in_ = X.shape[1]
        if hasattr(self, "feature_names_in_"):
            del self.feature_names_in_
        return X, sample_weight, False

    def _placed(self, X, sample_weight, in_memory: bool) -> LocalPoints | ClusterPoints:
        """Where the passes run (see the module docstring): this process for in-memory
        input with no ``scheduler`` (unless large with a default client), else a cluster."""
        if in_memory and self.scheduler is None and not (
                X.nbytes > CLIENT_MIN_BYTES and current_client() is not None):
            if isinstance(sample_weight, da.Array):
                sample_weight = np.asarray(sample_weight.compute(), dtype=np.float64)
            return local_points(X, sample_weight)
        return cluster_points(X, sample_weight, self._client(), self.persist)

    # ------------------------------------------------------------------ fitting
    def fit(
        self,
        X,
        y=None,
        sample_weight=None,
        *,
        on_iteration: Callable[[IterationInfo], None] | None = None,
        checkpoint: str | os.PathLike | FileCheckpoint | None = None,
        on_pass: Callable[[PassInfo], None] | None = None,
    ):
        """Estimate the parameters with EM.

        Parameters
        ----------
        X : array-like (n_samples, n_features), dask array, Zarr array, or store path
        y : ignored
        sample_weight : array-like or dask array of shape (n_samples,), optional
            Non-negative per-point weights; integer weights fit like repeated rows.
        on_iteration : callable, optional
            Called with a :class:`distgmm.engine.IterationInfo` after every iteration.
        checkpoint : path, URL or distgmm.engine.FileCheckpoint, optional
            Checkpoint file written atomically after every iteration (a URL such as
            ``s3://...`` too; a ``FileCheckpoint`` carries fsspec options). If it exists and
            belongs to the same fit (same data, options and seed), the fit resumes from it.
        on_pass : callable, optional
            Called with a :class:`distgmm.engine.PassInfo` after every pass over the data,
            initialisation passes included (for progress bars, :mod:`distgmm.engine.progress`).

        Returns
        -------
        self
        """
        self._fit(X, sample_weight, on_iteration, checkpoint, on_pass)
        return self

    def fit_predict(self, X, y=None, sample_weight=None):
        """Fit, then return the label of every point; equals ``fit(X).predict(X)``."""
        return self.fit(X, sample_weight=sample_weight).predict(X)

    def _fit(self, X, sample_weight, on_iteration, checkpoint, on_pass=None):
        self._validate_params()
        X, sample_weight, in_memory = self._validated(X, sample_weight)
        n_rows, n_features = X.shape
        if n_rows < self.n_components or n_rows < 2:
            raise ValueError(
                f"Expected n_samples >= n_components but got n_components = "
                f"{self.n_components}, n_samples = {n_rows}; use fewer components or more data."
            )
        cfg = self._config(n_features)
        warm = None
        if self.warm_start and hasattr(self, "converged_"):
            if self.means_.shape[1] != n_features:
                raise ValueError(f"warm_start: X has {n_features} features but the model was "
                                 f"fitted with {self.means_.shape[1]}.")
            warm = (self._state(), self.lower_bound_)
        if self.verbose and not logger.handlers:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(message)s"))
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)
        data = self._placed(X, sample_weight, in_memory)
        cfg = self._completed(cfg, data)
        seed, initial_params = _initialisation(data, [self], [cfg], warm is not None)

        def report(info: IterationInfo):
            if self.verbose and (info.iteration % self.verbose_interval == 0 or info.converged):
                logger.info("init %d iteration %d: lower bound %.6f, change %.3g, %.3fs",
                            info.restart, info.iteration, info.lower_bound, info.change,
                            info.seconds)
            if on_iteration is not None:
                on_iteration(info)

        result = fit_em(
            data, cfg, seed, warm_start=warm, on_iteration=report,
            checkpoint=checkpoint if checkpoint is None or isinstance(checkpoint, FileCheckpoint)
            else FileCheckpoint(checkpoint),
            initial_params=initial_params, on_pass=on_pass,
        )
        self._set_result(result, X.dtype if in_memory else np.float64)
        if not self.converged_ and self.max_iter > 0:
            warnings.warn(
                "Best performing initialization did not converge. Try different init "
                "parameters, or increase max_iter, tol, or check for degenerate data.",
                ConvergenceWarning,
            )
        return self

    def _set_result(self, result, dtype=np.float64) -> None:
        self._set_state(result.params, dtype)
        self.converged_ = result.converged
        self.n_iter_ = result.n_iter
        self.lower_bound_ = result.lower_bound
        self.lower_bounds_ = list(result.lower_bounds)
        self.lower_bounds_per_init_ = [list(h) for h in result.histories]
        self.n_features_in_ = result.params.n_features
        self.fit_seconds_ = result.seconds
        self.training_scores_ = result.scores

    # ------------------------------------------------------------------ prediction
    def _blockwise(self, X, fn: Callable, *, columns: int | None, dtype):
        """``fn(params, block, shift)`` over ``X``: NumPy blocks here for in-memory input
        (output in the input's float dtype for floats), lazily per chunk for out-of-core
        input."""
        check_is_fitted(self, "precisions_cholesky_")
        params, shift = self._e_step_params()
        if not _is_out_of_core(X):
            X = self._validate_in_memory(X, reset=False)
            parts = [fn(params, X[s:s + BLOCK_ROWS], shift)
                     for s in range(0, X.shape[0], BLOCK_ROWS)]
            out = np.concatenate(parts)
            return out.astype(X.dtype, copy=False) if out.dtype.kind == "f" else out
        X, _ = as_points(X)
        if X.shape[1] != params.n_features:
            raise ValueError(f"X has {X.shape[1]} features, but {type(self).__name__} is "
                             f"expecting {params.n_features} features as input. Pass data "
                             "with the columns the model was fitted on.")
        if columns is None:
            return X.map_blocks(_apply_block, fn, params, shift, drop_axis=1, dtype=dtype,
                                meta=np.empty((0,), dtype))
        return X.map_blocks(_apply_block, fn, params, shift, chunks=(X.chunks[0], (columns,)),
                            dtype=dtype, meta=np.empty((0, 0), dtype))

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

    def sample(self, n_samples: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``n_samples`` points and their components (scikit-learn's algorithm and
        random draws: the same ``random_state`` gives scikit-learn's sample)."""
        check_is_fitted(self, "means_")
        if not isinstance(n_samples, numbers.Integral) or n_samples < 1:
            raise ValueError(f"Invalid value for 'n_samples': {n_samples!r}. The sampling "
                             "requires at least one sample; pass n_samples >= 1.")
        rng = _random_state(self.random_state)
        counts = rng.multinomial(n_samples, self.weights_)
        D = self.means_.shape[1]
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
        y = np.concatenate([np.full(n, k, dtype=np.int64) for k, n in enumerate(counts)])
        return X.astype(np.float64, copy=False), y
