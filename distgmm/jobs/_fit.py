"""The fit job: fit a mixture on a point store, checkpointing every iteration, and write the model file.

Checkpoints: with ``checkpoint_dir``, the engine writes ``<dir>/<model-name>.ckpt.npz``
atomically after every completed iteration. An existing checkpoint is only used with
``resume=True`` (without it the fit refuses to start, so an old run is never clobbered or
silently continued); ``resume=True`` with no checkpoint yet starts from scratch, so a
scheduled job can always pass it. A resumed fit ends with exactly the model file an
uninterrupted fit writes (same bytes, same fingerprint). The checkpoint is deleted once the
model file is written.

Training scores: the model file records the training points' scores in the fit's last pass
(:mod:`distgmm._scores`) and the outlier threshold of ``outlier_quantile`` among them, which
label jobs with scores flag outliers and judge drift against.

The model file, the checkpoint directory and the convergence plot may be fsspec URLs
(``s3://bucket/models/m.npz``), written with the store's ``storage_options``.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from sklearn.exceptions import ConvergenceWarning

from distgmm import _progress
from distgmm._bayesian_estimator import kept_components
from distgmm._scores import DEFAULT_OUTLIER_QUANTILE
from distgmm.errors import DistgmmInputError
from distgmm.jobs._align import alignment_permutation, permute_components
from distgmm._atomic import file_exists, is_url, remove_file
from distgmm.engine import FileCheckpoint
from distgmm.jobs._common import resolve_client, save_figure_at
from distgmm.store import open_points, read_model, save_model

__all__ = ["FitReport", "fit_store", "checkpoint_path", "convergence_plot_path", "fit_points",
           "check_fit_outputs", "check_outlier_quantile", "with_outlier_quantile"]

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class FitReport:
    """What :func:`fit_store` did (JSON-ready through :meth:`to_dict`)."""

    model: str
    store: str
    fingerprint: str
    n_rows: int
    n_features: int
    n_components: int
    covariance_type: str
    n_iter: int
    converged: bool
    lower_bound: float
    n_init: int
    seed: int | None
    weighted: bool
    checkpoint: str | None
    resumed: bool
    aligned_to: str | None
    permutation: list[int] | None
    fit_seconds: float
    seconds: float
    lower_bounds: list[float] = field(default_factory=list)
    plot: str | None = None
    #: A Bayesian mixture: its weight prior, and how many components kept non-negligible
    #: weight (``n_components`` is then an upper bound).
    prior: str | None = None
    components_kept: int | None = None
    #: The outlier quantile of the training scores and its threshold (scores below it are
    #: outliers); None when the fit made no pass.
    outlier_quantile: float | None = None
    outlier_threshold: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return asdict(self)


def check_outlier_quantile(q: float) -> float:
    """Refuse an outlier quantile outside (0, 1)."""
    if not (isinstance(q, (int, float)) and not isinstance(q, bool) and 0 < q < 1):
        raise DistgmmInputError(f"--outlier-quantile must be a fraction of the training points "
                                f"between 0 and 1 (e.g. {DEFAULT_OUTLIER_QUANTILE:g}), got "
                                f"{q!r}.")
    return float(q)


def with_outlier_quantile(model: Any, q: float) -> tuple[float | None, float | None]:
    """Set the fitted ``model``'s outlier threshold to the ``q``-quantile of its training
    scores; return ``(q, threshold)`` (``(None, None)`` when the fit made no pass)."""
    if getattr(model, "training_scores_", None) is None:
        return None, None
    model.training_scores_ = model.training_scores_.with_outlier_quantile(q)
    return q, model.training_scores_.outlier_threshold


def convergence_plot_path(model_path: str | os.PathLike) -> str:
    """``<model path without extension>.convergence.png``."""
    return f"{os.path.splitext(os.fspath(model_path))[0]}.convergence.png"


def checkpoint_path(checkpoint_dir: str | os.PathLike, model_path: str | os.PathLike) -> str:
    """``<checkpoint_dir>/<model file name without extension>.ckpt.npz``."""
    stem = os.path.splitext(os.path.basename(os.fspath(model_path)))[0]
    return os.path.join(os.fspath(checkpoint_dir), f"{stem}.ckpt.npz")


def check_fit_outputs(model_path: str | os.PathLike, *, overwrite: bool = False,
                      checkpoint_dir: str | os.PathLike | None = None,
                      plot: bool = False,
                      storage_options: dict[str, Any] | None = None) -> None:
    """Refuse, before any work, outputs a fit could not write at its end: the model file
    (see :func:`~distgmm.store.check_model_destination`), the checkpoint directory and the
    convergence plot."""
    from distgmm._atomic import check_output_directory, check_output_url, is_url
    from distgmm.jobs._common import check_figure_destination
    from distgmm.store._model import check_model_destination

    check_model_destination(model_path, overwrite=overwrite, storage_options=storage_options)
    if checkpoint_dir is not None and is_url(checkpoint_dir):
        check_output_url(checkpoint_path(checkpoint_dir, model_path), what="--checkpoint",
                         storage_options=storage_options)
    elif checkpoint_dir is not None:
        directory = os.fspath(checkpoint_dir)
        if os.path.lexists(directory) and not os.path.isdir(directory):
            raise DistgmmInputError(f"--checkpoint {directory} is a file, not a directory; "
                                    "give a directory.")
        check_output_directory(directory, what=f"--checkpoint {directory}")
    if plot:
        check_figure_destination(convergence_plot_path(model_path), "convergence plot",
                                 storage_options)


def fit_points(points: Any, *, n_components: int, covariance_type: str = "full",
               tol: float = 1e-3, max_iter: int = 100, n_init: int = 1,
               init_params: str = "kmeans", reg_covar: float = 1e-6, seed: int | None = None,
               sample_weight: Any = None, checkpoint: str | None = None, client: Any = None,
               on_iteration: Callable | None = None, prior: str | None = None,
               weight_concentration: float | None = None,
               on_pass: Callable | None = None) -> Any:
    """Fit a ``GaussianMixture`` on the current cluster (a ``BayesianGaussianMixture`` with
    the weight ``prior`` when given); convergence warnings go to the log."""
    common = dict(covariance_type=covariance_type, tol=tol, reg_covar=reg_covar,
                  max_iter=max_iter, n_init=n_init, init_params=init_params, random_state=seed)
    if prior is None:
        from distgmm._estimator import GaussianMixture

        model = GaussianMixture(n_components, **common)
    else:
        from distgmm._bayesian_estimator import BayesianGaussianMixture

        model = BayesianGaussianMixture(n_components, weight_concentration_prior_type=prior,
                                        weight_concentration_prior=weight_concentration,
                                        **common)
    iterations = 0

    def report(info):
        nonlocal iterations
        iterations += 1
        if on_iteration is not None:
            on_iteration(info)
        _progress.report(_progress.ITERATION, iterations)

    with resolve_client(client).as_current(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(points, sample_weight=sample_weight, on_iteration=report,
                  checkpoint=checkpoint, on_pass=on_pass)
    for w in caught:
        if issubclass(w.category, ConvergenceWarning):
            logger.warning("%s (K=%d, %s)", w.message, n_components, covariance_type)
    return model


def fit_store(
    store: str,
    model_path: str | os.PathLike,
    *,
    n_components: int,
    covariance_type: str = "full",
    tol: float = 1e-3,
    max_iter: int = 100,
    n_init: int = 1,
    init_params: str = "kmeans",
    reg_covar: float = 1e-6,
    seed: int | None = None,
    weights: bool = False,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    align_to: str | os.PathLike | None = None,
    overwrite: bool = False,
    client: Any = None,
    storage_options: dict[str, Any] | None = None,
    on_iteration: Callable | None = None,
    plot: bool = False,
    prior: str | None = None,
    weight_concentration: float | None = None,
    outlier_quantile: float = DEFAULT_OUTLIER_QUANTILE,
    on_pass: Callable | None = None,
) -> FitReport:
    """Fit a Gaussian mixture (or a Bayesian one) to a point store and write the model file.

    Parameters
    ----------
    store : str
        Point store path or URL.
    model_path : path
        Model file to write (``.npz``); refused if it exists unless ``overwrite``.
    n_components, covariance_type, tol, max_iter, n_init, init_params, reg_covar
        As for :class:`distgmm.GaussianMixture`.
    seed : int, optional
        ``random_state``.
    weights : bool
        Use the store's ``weights`` array as ``sample_weight``.
    checkpoint_dir : path, optional
        Directory for the per-iteration checkpoint (see the module docstring).
    resume : bool
        Continue from the checkpoint if there is one.
    align_to : path, optional
        Reference model file: renumber the new components to match its ids.
    overwrite : bool
        Replace an existing model file.
    client : distributed.Client, optional
    storage_options : dict, optional
    on_iteration : callable, optional
        Called with every :class:`distgmm.engine.IterationInfo`.
    on_pass : callable, optional
        Called with a :class:`distgmm.engine.PassInfo` after every pass over the data.
    plot : bool
        Also write the convergence curve (one line per restart) to
        :func:`convergence_plot_path`.
    prior : {"dirichlet_process", "dirichlet_distribution"}, optional
        Fit a :class:`distgmm.BayesianGaussianMixture` with this weight prior;
        ``n_components`` is then an upper bound.
    weight_concentration : float, optional
        Its ``weight_concentration_prior`` (default ``1 / n_components``).
    outlier_quantile : float
        Fraction of the training points whose scores the recorded outlier threshold lies
        below (see the module docstring).

    Returns
    -------
    FitReport
    """
    t0 = time.perf_counter()
    model_path = os.fspath(model_path)
    outlier_quantile = check_outlier_quantile(outlier_quantile)
    check_fit_outputs(model_path, overwrite=overwrite, checkpoint_dir=checkpoint_dir, plot=plot,
                      storage_options=storage_options)
    if resume and checkpoint_dir is None:
        raise DistgmmInputError("--resume needs --checkpoint DIR (where the checkpoint is).")
    points = open_points(store, storage_options)
    reference = None
    if align_to is not None:
        reference = read_model(align_to, storage_options)
        if reference.model.n_features_in_ != points.n_features:
            raise DistgmmInputError(
                f"--align-to model {reference.path} has {reference.model.n_features_in_} "
                f"features but store {store} has {points.n_features}; align to a model "
                "fitted on this kind of data.")
    sample_weight = None
    if weights:
        if points.weights is None:
            raise DistgmmInputError(f"store {store} has no 'weights' array; drop --weights or "
                                    "ingest a store with weights.")
        sample_weight = points.weights
    checkpoint = None
    resumed = False
    if checkpoint_dir is not None:
        checkpoint = FileCheckpoint(checkpoint_path(checkpoint_dir, model_path), storage_options)
        if file_exists(checkpoint.path, storage_options):
            if not resume:
                raise DistgmmInputError(
                    f"checkpoint {checkpoint.path} exists from an earlier run; pass --resume "
                    "to continue it, or delete it to start over.")
            resumed = True
            logger.info("resuming from checkpoint %s", checkpoint.path)
        elif resume:
            logger.info("no checkpoint at %s yet: starting from scratch", checkpoint.path)
        if not is_url(checkpoint_dir):
            os.makedirs(os.fspath(checkpoint_dir), exist_ok=True)
    model = fit_points(points.points, n_components=n_components,
                       covariance_type=covariance_type, tol=tol, max_iter=max_iter,
                       n_init=n_init, init_params=init_params, reg_covar=reg_covar, seed=seed,
                       sample_weight=sample_weight, checkpoint=checkpoint, client=client,
                       on_iteration=on_iteration, prior=prior,
                       weight_concentration=weight_concentration, on_pass=on_pass)
    permutation = None
    if reference is not None:
        permutation = [int(p) for p in alignment_permutation(model, reference.model)]
        permute_components(model, permutation)
    quantile, threshold = with_outlier_quantile(model, outlier_quantile)
    provenance = {"store": store, "n_rows": points.n_rows, "weighted": weights, "seed": seed,
                  "aligned_to": reference.fingerprint if reference else None,
                  "permutation": permutation}
    fingerprint = save_model(model, model_path, provenance=provenance,
                             storage_options=storage_options)
    if checkpoint is not None:
        remove_file(checkpoint.path, storage_options)
    plot_path = None
    if plot:
        from distgmm.plotting import plot_convergence

        plot_path = save_figure_at(plot_convergence(model), convergence_plot_path(model_path),
                                   storage_options)
    return FitReport(
        model=model_path, store=store, fingerprint=fingerprint, n_rows=points.n_rows,
        n_features=points.n_features, n_components=n_components,
        covariance_type=covariance_type, n_iter=int(model.n_iter_),
        converged=bool(model.converged_), lower_bound=float(model.lower_bound_), n_init=n_init,
        seed=seed, weighted=weights, checkpoint=checkpoint and checkpoint.path, resumed=resumed,
        aligned_to=reference.path if reference else None, permutation=permutation,
        fit_seconds=float(getattr(model, "fit_seconds_", 0.0)), seconds=time.perf_counter() - t0,
        lower_bounds=[float(v) for v in model.lower_bounds_], plot=plot_path, prior=prior,
        components_kept=None if prior is None else kept_components(model.weights_),
        outlier_quantile=quantile, outlier_threshold=threshold)
