"""The EM loop: restarts and model-selection candidates in lockstep, one pass per iteration.

Every pass evaluates all runs still iterating on each chunk while it is in memory: the
E-step, the log-likelihood and the sufficient statistics of every run come from one sweep
(:func:`_scored_statistics_of`), merged in the passes' fixed tree. Each run's M-step and
convergence test then run here, on K x D x D numbers, so this process's memory does not
grow with the number of points. ``n_init`` restarts, or the candidates of a model
selection, read the data once per iteration instead of once per model, and each run's
numbers are exactly those of fitting it alone.

A run is scikit-learn's ``BaseMixture.fit_predict`` loop: E-step and statistics, M-step,
lower bound, converged when it changes by less than ``tol``; the best restart is kept by
scikit-learn's rule. What differs between the two mixtures is in their steps
(:class:`GaussianSteps`, :class:`VariationalSteps`): the parameters the E-step kernel
takes, the M-step, and the lower bound (a Gaussian mixture's is the mean log-likelihood
under the E-step's parameters; a variational one's is scikit-learn's variational bound,
a total over the data).

Every pass also sketches each run's scores (per-point log-likelihoods, which the E-step
computes anyway: :func:`distgmm._scores.scored_statistics`), merged in the same tree. A
run keeps the sketch of its last pass and how much the mean score moved in it; the best
run's become :attr:`EMResult.scores`, the training figures a model file records for
outlier thresholds and drift (:mod:`distgmm._scores`), with no extra read of the data.

Progress: ``on_iteration`` hears of each run's iterations (lower bounds), ``on_pass`` of
every pass over the data as it ends, initialisation passes included
(:mod:`distgmm.engine.progress`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from distgmm._bayesian import (
    BayesianPriors,
    VariationalParams,
    lower_bound,
    variational_estep,
    variational_m_step,
)
from distgmm._fused import fit_kernels
from distgmm._kernels import CollapsedComponentError, thread_pools
from distgmm._scores import ScoreProfile, ScoreSketch, merge_scores, score_upper_bound, \
    scored_statistics
from distgmm._statistics import (
    MixtureParams,
    SufficientStatistics,
    chunk_statistics,
    m_step,
    merge_statistics,
)
from distgmm.engine.checkpoint import FileCheckpoint
from distgmm.engine.init import initial_statistics, override, seed_sequence
from distgmm.engine.passes import Points
from distgmm.engine.progress import OnPass, reported

__all__ = ["EMConfig", "EMResult", "GaussianSteps", "IterationInfo", "VariationalSteps",
           "fit_em", "fit_many", "score_many"]

logger = logging.getLogger(__name__)


def single_threaded_blas(fn: Callable) -> Callable:
    """Run ``fn`` with one BLAS thread in this process.

    This process does K x D x D arithmetic between passes (M-steps, seeding), and an idle
    OpenBLAS pool spins for a while after each call, taking CPU from the workers on the
    same machine; fits in this process run one BLAS thread per chunk thread anyway.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with thread_pools().limit(limits=1, user_api="blas"):
            return fn(*args, **kwargs)

    return wrapper


@dataclass(frozen=True)
class EMConfig:
    """Validated settings of one fit (see :class:`distgmm.GaussianMixture` for meanings)."""

    n_components: int
    covariance_type: str = "full"
    tol: float = 1e-3
    reg_covar: float = 1e-6
    max_iter: int = 100
    n_init: int = 1
    init_params: str = "kmeans"
    weights_init: np.ndarray | None = None
    means_init: np.ndarray | None = None
    precisions_init: np.ndarray | None = None
    #: The priors of a variational (Bayesian) mixture; None for a Gaussian mixture.
    priors: BayesianPriors | None = None

    @property
    def steps(self) -> "GaussianSteps | VariationalSteps":
        """The steps of this kind of mixture."""
        return GaussianSteps if self.priors is None else VariationalSteps

    def fingerprint(self, data: Points, entropy) -> str:
        """Digest identifying a fit: config, data shape and chunking, seed."""
        h = hashlib.sha256()
        plain = {k: getattr(self, k) for k in ("n_components", "covariance_type", "tol",
                                               "reg_covar", "max_iter", "n_init", "init_params")}
        plain.update(shape=[data.n_rows, data.n_features], chunks=list(data.row_chunks),
                     entropy=str(entropy), weighted=data.weighted)
        h.update(json.dumps(plain, sort_keys=True).encode())
        for a in (self.weights_init, self.means_init, self.precisions_init):
            h.update(b"-" if a is None else np.ascontiguousarray(a, dtype=np.float64).tobytes())
        if self.priors is not None:
            for name, value in sorted(vars(self.priors).items()):
                h.update(name.encode() + np.asarray(value).tobytes() if not isinstance(value, str)
                         else f"{name}={value}".encode())
        return h.hexdigest()


class GaussianSteps:
    """The steps of scikit-learn's ``GaussianMixture``: the E-step takes the parameters as
    they are, the M-step is :func:`~distgmm._statistics.m_step`, and the lower bound is the
    mean (weighted) log-likelihood under the parameters the E-step used."""

    FIELDS = ("weights", "means", "covariances", "precisions_cholesky")

    @staticmethod
    def e_step(state: MixtureParams) -> tuple[MixtureParams, Any]:
        return state, None

    @staticmethod
    def m_step(total: SufficientStatistics, cfg: EMConfig) -> MixtureParams:
        return m_step(total, cfg.reg_covar, cfg.covariance_type)

    @staticmethod
    def lower_bound(total: SufficientStatistics, e_step: Any, state: MixtureParams) -> float:
        return total.log_likelihood / total.weight_sum

    @staticmethod
    def score_shift(e_step: Any) -> float:
        """What to add to a score under the E-step's parameters: nothing."""
        return 0.0

    @classmethod
    def start(cls, total: SufficientStatistics | None, cfg: EMConfig) -> MixtureParams:
        """The starting parameters from initial statistics, then the user's initial arrays
        (``total`` is not needed, and may be None, when all three are given)."""
        if total is None:
            return override(None, cfg)
        return override(cls.m_step(total, cfg), cfg)

    @classmethod
    def to_arrays(cls, state: MixtureParams) -> dict[str, np.ndarray]:
        return {name: getattr(state, name) for name in cls.FIELDS}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], cfg: EMConfig) -> MixtureParams:
        return MixtureParams(*(arrays[name] for name in cls.FIELDS), cfg.covariance_type)


class VariationalSteps:
    """The steps of scikit-learn's ``BayesianGaussianMixture`` (:mod:`distgmm._bayesian`):
    the E-step takes the Gaussian-mixture parameters equivalent to the posterior, the
    M-step is the variational one, and the lower bound is the variational bound."""

    FIELDS = ("mean_precision", "means", "degrees_of_freedom", "covariances",
              "precisions_cholesky")

    @staticmethod
    def e_step(state: VariationalParams):
        e_step = variational_estep(state)
        return e_step.params, e_step

    @staticmethod
    def m_step(total: SufficientStatistics, cfg: EMConfig) -> VariationalParams:
        return variational_m_step(total, cfg.priors, cfg.reg_covar)

    @staticmethod
    def lower_bound(total: SufficientStatistics, e_step, state: VariationalParams) -> float:
        return lower_bound(total, e_step, state)

    @staticmethod
    def score_shift(e_step) -> float:
        """What to add to a score under the E-step's parameters: the constant they leave
        out of scikit-learn's ``score_samples``."""
        return e_step.log_weight_shift

    @classmethod
    def start(cls, total: SufficientStatistics, cfg: EMConfig) -> VariationalParams:
        return cls.m_step(total, cfg)

    @classmethod
    def to_arrays(cls, state: VariationalParams) -> dict[str, np.ndarray]:
        arrays = {name: np.asarray(getattr(state, name)) for name in cls.FIELDS}
        concentration = state.weight_concentration
        if isinstance(concentration, tuple):  # a Dirichlet process: (a_k, b_k)
            arrays["weight_concentration_a"], arrays["weight_concentration_b"] = concentration
        else:
            arrays["weight_concentration"] = concentration
        return arrays

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], cfg: EMConfig) -> VariationalParams:
        concentration = (arrays["weight_concentration"] if "weight_concentration" in arrays
                         else (arrays["weight_concentration_a"],
                               arrays["weight_concentration_b"]))
        dof = arrays["degrees_of_freedom"]
        return VariationalParams(concentration, arrays["mean_precision"], arrays["means"],
                                 float(dof) if dof.ndim == 0 else dof, arrays["covariances"],
                                 arrays["precisions_cholesky"], cfg.covariance_type,
                                 cfg.priors.weight_concentration_prior_type)


def _fingerprint(configs: list[EMConfig], data: Points, entropy) -> str:
    h = hashlib.sha256()
    for cfg in configs:
        h.update(cfg.fingerprint(data, entropy).encode())
    return h.hexdigest()


@dataclass(frozen=True)
class IterationInfo:
    """Progress of one EM iteration of one run, passed to ``on_iteration`` callbacks.

    ``config`` indexes the configurations given to :func:`fit_many` (always 0 for
    :func:`fit_em`); ``restart`` is the restart within that configuration. ``seconds`` is
    the wall time of the pass, shared by all runs evaluated in it.
    """

    restart: int
    iteration: int
    lower_bound: float
    change: float
    seconds: float
    converged: bool
    config: int = 0


@dataclass
class EMResult:
    """Outcome of one configuration: the best restart's parameters and every restart's history.

    ``params`` is None and ``error`` says why when every restart failed (only with
    ``errors="record"``).
    """

    params: MixtureParams | VariationalParams | None
    converged: bool
    n_iter: int
    lower_bound: float
    lower_bounds: list[float]
    histories: list[list[float]] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None
    #: The best run's training scores in its last pass (None if it made no pass).
    scores: ScoreProfile | None = None


@dataclass
class _Run:
    """One restart of one configuration, advanced in lockstep with the others."""

    config: int
    restart: int
    params: MixtureParams | VariationalParams | None = None
    iteration: int = 0
    lower_bound: float = -math.inf
    lower_bounds: list[float] = field(default_factory=list)
    converged: bool = False
    done: bool = False
    error: str | None = None
    #: The sketch of the scores in this run's last pass, and how much their mean moved.
    scores: ScoreSketch | None = None
    settling: float = math.nan

    def advance(self, params, lower_bound: float, cfg: EMConfig, seconds: float,
                scores: ScoreSketch | None = None) -> IterationInfo:
        """Take the M-step's ``params``, the E-step's ``lower_bound`` and its scores' sketch;
        test convergence."""
        if scores is not None:
            self.settling = (abs(scores.mean - self.scores.mean) if self.scores is not None
                             else math.nan)
            self.scores = scores
        change = lower_bound - self.lower_bound
        self.iteration += 1
        self.params, self.lower_bound = params, lower_bound
        self.lower_bounds.append(lower_bound)
        self.converged = abs(change) < cfg.tol
        self.done = self.converged or self.iteration >= cfg.max_iter
        return IterationInfo(self.restart, self.iteration, lower_bound, change, seconds,
                             self.converged, self.config)

    def fail(self, exc: CollapsedComponentError, errors: str) -> None:
        """Raise ``exc`` (``errors="raise"``), or end this run with its message."""
        if errors == "raise":
            raise exc
        self.error, self.done = str(exc), True
        logger.warning("config %d restart %d failed: %s", self.config, self.restart, exc)

    def meta(self) -> dict:
        return {"config": self.config, "restart": self.restart, "iteration": self.iteration,
                "lower_bound": None if self.lower_bound == -math.inf else self.lower_bound,
                "lower_bounds": self.lower_bounds, "converged": self.converged,
                "done": self.done, "error": self.error,
                "has_params": self.params is not None,
                "scores": None if self.scores is None else self.scores.to_dict(),
                "settling": None if math.isnan(self.settling) else self.settling}

    @classmethod
    def from_meta(cls, meta: dict, params) -> "_Run":
        lb = meta["lower_bound"]
        scores, settling = meta.get("scores"), meta.get("settling")
        return cls(meta["config"], meta["restart"], params, meta["iteration"],
                   -math.inf if lb is None else lb, meta["lower_bounds"], meta["converged"],
                   meta["done"], meta["error"],
                   None if scores is None else ScoreSketch.from_dict(scores),
                   math.nan if settling is None else settling)


def _statistics_of(block, weights, index, params_list):
    """The chunk's E-step and statistics under each model: one sweep for all runs."""
    return [chunk_statistics(block, weights, p) for p in params_list]


def _merge_lists(parts: list[list]) -> list:
    return [merge_statistics([part[j] for part in parts]) for j in range(len(parts[0]))]


def _scored_statistics_of(block, weights, index, params_list, uppers):
    """:func:`_statistics_of` with each model's sketch of the chunk's scores, from the same
    E-steps (``uppers``: each model's score bound, :func:`score_upper_bound`)."""
    return [scored_statistics(block, weights, p, u) for p, u in zip(params_list, uppers)]


def _merge_scored_lists(parts: list[list]) -> list:
    return [merge_scores([part[j] for part in parts]) for j in range(len(parts[0]))]


def _em_step(data: Points, configs: list[EMConfig], runs: list[_Run],
             errors: str, on_pass: OnPass | None = None) -> list[IterationInfo]:
    """One iteration of every run in ``runs``: one pass for all their E-steps and
    statistics, then each run's M-step and lower bound."""
    started = time.perf_counter()
    e_steps = [configs[run.config].steps.e_step(run.params) for run in runs]
    with reported(on_pass, "em", max(run.iteration for run in runs) + 1,
                  total=max(configs[run.config].max_iter for run in runs)):
        totals = data.map_reduce(_scored_statistics_of, [params for params, _ in e_steps],
                                 [score_upper_bound(params) for params, _ in e_steps],
                                 merge=_merge_scored_lists)
    seconds = time.perf_counter() - started
    infos = []
    for run, (_, e_step), (total, sketch) in zip(runs, e_steps, totals):
        cfg = configs[run.config]
        try:
            params = cfg.steps.m_step(total, cfg)
        except CollapsedComponentError as exc:
            run.fail(exc, errors)
            continue
        bound = cfg.steps.lower_bound(total, e_step, params)
        scores = sketch.shifted(cfg.steps.score_shift(e_step))
        infos.append(run.advance(params, bound, cfg, seconds, scores))
    return infos


def _save(checkpoint: FileCheckpoint | None, configs: list[EMConfig], runs: list[_Run],
          fingerprint: str, entropy) -> None:
    if checkpoint is None:
        return
    arrays = {f"run{j}_{name}": value for j, run in enumerate(runs) if run.params is not None
              for name, value in configs[run.config].steps.to_arrays(run.params).items()}
    checkpoint.save(arrays, {"runs": [run.meta() for run in runs]}, fingerprint, entropy)


def _resumed(checkpoint: FileCheckpoint, configs: list[EMConfig], data: Points
             ) -> tuple[list[_Run], np.random.SeedSequence] | None:
    """The runs and seed saved in ``checkpoint`` for this fit, or None if there are none."""
    loaded = checkpoint.load(lambda e: _fingerprint(configs, data, e))
    if loaded is None:
        return None
    arrays, meta, entropy = loaded
    runs = []
    for j, m in enumerate(meta["runs"]):
        params = None
        if m["has_params"]:
            cfg = configs[m["config"]]
            prefix = f"run{j}_"
            params = cfg.steps.from_arrays({k[len(prefix):]: v for k, v in arrays.items()
                                            if k.startswith(prefix)}, cfg)
        runs.append(_Run.from_meta(m, params))
    logger.info("resuming from %s", checkpoint.path)
    return runs, np.random.SeedSequence(entropy)


def _best(runs: list[_Run], seconds: float) -> EMResult:
    """The configuration's result: scikit-learn's choice among its restarts (a later one
    replaces the best if its lower bound is higher, or if the best one's is still -inf)."""
    histories = [list(run.lower_bounds) for run in runs]
    good = [run for run in runs if run.error is None]
    if not good:
        return EMResult(None, False, 0, -math.inf, [], histories, seconds, runs[0].error)
    best = good[0]
    for run in good[1:]:
        if run.lower_bound > best.lower_bound or best.lower_bound == -math.inf:
            best = run
    scores = None if best.scores is None else ScoreProfile.of(best.scores, best.settling)
    return EMResult(best.params, best.converged, best.iteration, best.lower_bound,
                    list(best.lower_bounds), histories, seconds, scores=scores)


def _drawn_start(data: Points, cfg: EMConfig, root: np.random.SeedSequence, run: _Run,
                 on_pass: OnPass | None, samples: dict):
    """A run's start from the engine's initialisation (:mod:`distgmm.engine.init`); no
    pass when a Gaussian mixture's three initial arrays are all given."""
    given = (cfg.weights_init, cfg.means_init, cfg.precisions_init)
    if cfg.priors is None and all(a is not None for a in given):
        return GaussianSteps.start(None, cfg)
    return cfg.steps.start(initial_statistics(data, cfg, root, run.restart, on_pass=on_pass,
                                              config=run.config, samples=samples), cfg)


@single_threaded_blas
def fit_many(
    data: Points,
    configs: list[EMConfig],
    random_state: Any = None,
    *,
    warm_start: tuple[MixtureParams, float] | None = None,
    on_iteration: Callable[[IterationInfo], None] | None = None,
    checkpoint: FileCheckpoint | None = None,
    errors: str = "raise",
    initial_params: Callable[[int, int], Any] | None = None,
    on_pass: OnPass | None = None,
) -> list[EMResult]:
    """Fit several configurations and all their restarts in lockstep, one pass per iteration.

    Parameters
    ----------
    data : Points
    configs : list of EMConfig
    random_state : None, int, RandomState, Generator or SeedSequence
        Restart ``r`` of every configuration uses the random streams of spawn key ``(r, ...)``.
    warm_start : (parameters, float), optional
        Single configuration only: one run started from these parameters (MixtureParams,
        or VariationalParams for a variational mixture) and lower bound.
    on_iteration : callable, optional
        Called with an :class:`IterationInfo` per run after every pass.
    checkpoint : FileCheckpoint, optional
        Save the state after initialisation and every pass; if the file exists and belongs
        to the same fit, continue from it.
    errors : {"raise", "record"}
        What a collapsing run does: raise at once, or end that run and record the message
        (a configuration whose runs all failed gets ``params=None`` and ``error``).
    initial_params : callable, optional
        ``initial_params(config_index, restart)`` gives a run's starting parameters,
        called for the runs in order (configuration, then restart). Default: the
        initialisation ``config.init_params`` names, from random streams derived from
        ``random_state``, the restart and the chunk index (:mod:`distgmm.engine.init`).
    on_pass : callable, optional
        Called with a :class:`~distgmm.engine.progress.PassInfo` after every pass over the
        data, initialisation passes included (see :mod:`distgmm.engine.progress`).

    Returns
    -------
    list of EMResult
        One per configuration: its best restart (see :func:`_best`).
    """
    started = time.perf_counter()
    if warm_start is not None and len(configs) != 1:
        raise ValueError("warm_start takes exactly one configuration.")
    root = seed_sequence(random_state)
    resumed = None if checkpoint is None else _resumed(checkpoint, configs, data)
    if resumed is not None:
        runs, root = resumed
    else:
        n_runs = [1 if warm_start is not None else cfg.n_init for cfg in configs]
        runs = [_Run(c, r) for c, n in enumerate(n_runs) for r in range(n)]
    save = functools.partial(_save, checkpoint, configs, runs,
                             _fingerprint(configs, data, root.entropy), root.entropy)

    drawn = warm_start is None and initial_params is None
    data.prepare_kernels(fit_kernels(data.dtype.name, [
        (cfg.covariance_type, cfg.n_components, data.n_features) for cfg in configs],
        sample_kmeans=drawn and any(cfg.init_params == "kmeans" for cfg in configs)))
    samples: dict = {}  # kmeans samples, shared by the configurations of a restart
    for run in runs:  # initialise the runs a checkpoint did not hold
        if run.done or run.params is not None:
            continue
        cfg = configs[run.config]
        try:
            if warm_start is not None:
                run.params, run.lower_bound = warm_start
            elif initial_params is not None:
                run.params = initial_params(run.config, run.restart)
            else:
                run.params = _drawn_start(data, cfg, root, run, on_pass, samples)
        except CollapsedComponentError as exc:
            run.fail(exc, errors)
            continue
        run.done = cfg.max_iter == 0
        save()
    if all(run.done for run in runs):
        data.ensure_summary()  # validation happens even when no pass is needed

    while active := [run for run in runs if not run.done]:
        infos = _em_step(data, configs, active, errors, on_pass)
        save()
        for info in infos if on_iteration is not None else ():
            on_iteration(info)

    seconds = time.perf_counter() - started
    return [_best([run for run in runs if run.config == c], seconds)
            for c in range(len(configs))]


@single_threaded_blas
def score_many(data: Points, params_list: list[MixtureParams]) -> list[float]:
    """Mean (weighted) log-likelihood of the data under each model, in one pass."""
    totals = data.map_reduce(_statistics_of, list(params_list), merge=_merge_lists)
    return [t.log_likelihood / t.weight_sum for t in totals]


def fit_em(
    data: Points,
    cfg: EMConfig,
    random_state: Any = None,
    *,
    warm_start: tuple[MixtureParams, float] | None = None,
    on_iteration: Callable[[IterationInfo], None] | None = None,
    checkpoint: FileCheckpoint | None = None,
    initial_params: Callable[[int, int], MixtureParams] | None = None,
    on_pass: OnPass | None = None,
) -> EMResult:
    """Fit one configuration (its ``n_init`` restarts in lockstep); see :func:`fit_many`."""
    return fit_many(data, [cfg], random_state, warm_start=warm_start,
                    on_iteration=on_iteration, checkpoint=checkpoint,
                    initial_params=initial_params, on_pass=on_pass)[0]
