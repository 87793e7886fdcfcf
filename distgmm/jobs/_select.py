"""The select job: fit every candidate (K, covariance type), tabulate BIC/AIC, keep the best model."""

from __future__ import annotations

import logging
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from sklearn.exceptions import ConvergenceWarning

from distgmm._scores import DEFAULT_OUTLIER_QUANTILE
from distgmm.errors import DistgmmInputError
from distgmm.jobs._common import parse_components, parse_covariance_types, resolve_client
from distgmm.jobs._fit import check_outlier_quantile, with_outlier_quantile
from distgmm.store import open_points, save_model

__all__ = ["SelectReport", "select_store", "selection_plot_path", "check_select_outputs",
           "CRITERIA"]

logger = logging.getLogger(__name__)

CRITERIA = ("bic", "aic")


@dataclass(frozen=True)
class SelectReport:
    """What :func:`select_store` did (JSON-ready through :meth:`to_dict`).

    ``records`` has one dict per candidate: ``n_components``, ``covariance_type``, ``bic``,
    ``aic`` (``None`` if the fit failed), ``n_iter``, ``converged``, ``lower_bound``,
    ``seconds`` (wall time of the joint fit: all candidates share every pass over the
    data) and ``error`` (the reason a fit failed, else ``None``).
    """

    store: str
    model: str
    fingerprint: str
    criterion: str
    n_components: int
    covariance_type: str
    n_iter: int
    converged: bool
    lower_bound: float
    plot: str | None
    seconds: float
    records: list[dict[str, Any]] = field(default_factory=list)
    lower_bounds: list[float] = field(default_factory=list)
    #: The chosen model's outlier quantile and threshold (see :func:`fit_store`).
    outlier_quantile: float | None = None
    outlier_threshold: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return asdict(self)


def selection_plot_path(model_path: str) -> str:
    """``<model without extension>.selection.png``, next to the model file."""
    return os.path.splitext(os.fspath(model_path))[0] + ".selection.png"


def check_select_outputs(model_path: str | os.PathLike, *, overwrite: bool = False,
                         plot: bool = True,
                         storage_options: dict[str, Any] | None = None) -> None:
    """Refuse, before any work, outputs the selection could not write at its end (local
    paths or URLs)."""
    from distgmm.jobs._common import check_figure_destination
    from distgmm.store._model import check_model_destination

    check_model_destination(model_path, overwrite=overwrite, storage_options=storage_options)
    if plot:
        check_figure_destination(selection_plot_path(os.fspath(model_path)), "selection plot",
                                 storage_options)


def select_store(
    store: str,
    model_path: str | os.PathLike,
    *,
    components: str | int | list[int] = "1..12",
    covariance_types: str | list[str] = "full",
    criterion: str = "bic",
    tol: float = 1e-3,
    max_iter: int = 100,
    n_init: int = 1,
    init_params: str = "kmeans",
    reg_covar: float = 1e-6,
    seed: int | None = None,
    overwrite: bool = False,
    plot: bool = True,
    client: Any = None,
    storage_options: dict[str, Any] | None = None,
    on_candidate: Callable[[dict[str, Any]], None] | None = None,
    outlier_quantile: float = DEFAULT_OUTLIER_QUANTILE,
    on_pass: Callable | None = None,
) -> SelectReport:
    """Fit each candidate on the store, pick the lowest ``criterion``, write it and the curve.

    Parameters
    ----------
    store : str
    model_path : path
        Where the chosen model is written (refused if it exists unless ``overwrite``); the
        selection curve goes to :func:`selection_plot_path` when ``plot``.
    components : str, int or list of int
        Candidate K values: ``"1..12"``, ``"2,4,8"``, ``3`` or a list.
    covariance_types : str or list of str
        ``"full,diag"`` or a list.
    criterion : {"bic", "aic"}
    tol, max_iter, n_init, init_params, reg_covar, seed
        Passed to every candidate fit (same seed for each).
    on_candidate : callable, optional
        Called with each candidate's record as soon as it is fitted.
    outlier_quantile : float
        As for :func:`~distgmm.jobs.fit_store`, for the chosen model.
    on_pass : callable, optional
        Called with a :class:`distgmm.engine.PassInfo` after every pass of the candidates' fit.

    Returns
    -------
    SelectReport
    """
    t0 = time.perf_counter()
    model_path = os.fspath(model_path)
    ks = parse_components(components)
    kinds = parse_covariance_types(covariance_types)
    outlier_quantile = check_outlier_quantile(outlier_quantile)
    if criterion not in CRITERIA:
        raise DistgmmInputError(f"--criterion {criterion!r} is not one of {', '.join(CRITERIA)}.")
    check_select_outputs(model_path, overwrite=overwrite, plot=plot,
                         storage_options=storage_options)
    points = open_points(store, storage_options)
    if ks[0] > points.n_rows:
        raise DistgmmInputError(f"--components {components!r}: the store {store} has only "
                                f"{points.n_rows} rows; choose fewer components.")
    client = resolve_client(client)
    from distgmm._estimator import GaussianMixture, fit_candidates

    candidates = [(kind, k) for kind in kinds for k in ks]
    fittable = [(kind, k) for kind, k in candidates if k <= points.n_rows]
    models = [GaussianMixture(k, covariance_type=kind, tol=tol, reg_covar=reg_covar,
                              max_iter=max_iter, n_init=n_init, init_params=init_params,
                              random_state=seed) for kind, k in fittable]
    start = time.perf_counter()
    with client.as_current(), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        outcomes = fit_candidates(models, points.points, on_pass=on_pass)
    seconds = time.perf_counter() - start
    by_candidate = {c: (m, o) for c, m, o in zip(fittable, models, outcomes)}
    records: list[dict[str, Any]] = []
    best: tuple[float, Any] | None = None
    for kind, k in candidates:
        record: dict[str, Any] = {"n_components": k, "covariance_type": kind, "bic": None,
                                  "aic": None, "n_iter": None, "converged": None,
                                  "lower_bound": None, "seconds": seconds, "error": None}
        if (kind, k) not in by_candidate:
            record["error"] = f"more components than the {points.n_rows} rows"
        else:
            model, outcome = by_candidate[(kind, k)]
            if isinstance(outcome, str):
                record["error"] = outcome
                logger.warning("K=%d %s failed: %s", k, kind, outcome)
            else:
                record.update(bic=outcome[0], aic=outcome[1], n_iter=int(model.n_iter_),
                              converged=bool(model.converged_),
                              lower_bound=float(model.lower_bound_))
                if not model.converged_:
                    logger.warning("K=%d %s did not converge in %d iterations", k, kind,
                                   max_iter)
                value = record[criterion]
                if math.isfinite(value) and (best is None or value < best[0]):
                    best = (value, model)
        records.append(record)
        if on_candidate is not None:
            on_candidate(record)
    if best is None:
        raise DistgmmInputError(
            f"no candidate could be fitted on {store} ({records[-1]['error']}); try fewer "
            "components or a larger --reg-covar.")
    model = best[1]
    quantile, threshold = with_outlier_quantile(model, outlier_quantile)
    provenance = {"store": store, "n_rows": points.n_rows, "seed": seed,
                  "selected_by": criterion,
                  "candidates": [{k: r[k] for k in ("n_components", "covariance_type", "bic",
                                                    "aic")} for r in records]}
    fingerprint = save_model(model, model_path, provenance=provenance,
                             storage_options=storage_options)
    plot_path = None
    if plot:
        from distgmm.jobs._common import save_figure_at
        from distgmm.plotting import plot_selection

        curve = [{k: r[k] for k in ("n_components", "covariance_type", "bic", "aic")}
                 for r in records]
        fig = plot_selection(curve, chosen=(model.n_components, model.covariance_type))
        plot_path = save_figure_at(fig, selection_plot_path(model_path), storage_options)
    return SelectReport(
        store=store, model=model_path, fingerprint=fingerprint, criterion=criterion,
        n_components=int(model.n_components), covariance_type=model.covariance_type,
        n_iter=int(model.n_iter_), converged=bool(model.converged_),
        lower_bound=float(model.lower_bound_), plot=plot_path,
        seconds=time.perf_counter() - t0, records=records,
        lower_bounds=[float(v) for v in model.lower_bounds_], outlier_quantile=quantile,
        outlier_threshold=threshold)
