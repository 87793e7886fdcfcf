"""The demo job: two small data sets into stores, fit, select, label and plot them on the local cluster."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import Any, Callable

from distgmm.jobs._common import resolve_client

__all__ = ["DemoReport", "run_demo", "kmeans_samples_path", "check_demo_directory"]

logger = logging.getLogger(__name__)


@dataclass
class DemoReport:
    """What :func:`run_demo` did: its steps (one line each) and the files it wrote."""

    directory: str
    steps: list[str] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)
    fits: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return asdict(self)


def kmeans_samples_path() -> str:
    """Path of the packaged copy of ``kmeansSamples.txt`` (30 points in 2-D)."""
    return str(resources.files("distgmm") / "data" / "kmeansSamples.txt")


def _plots(model: Any, store: str, labels_name: str, stem: str, client: Any) -> dict[str, str]:
    import dask.array as da

    from distgmm.plotting import plot_clusters, plot_convergence, save_figure
    from distgmm.store import open_points

    points = open_points(store)
    labels = da.from_zarr(points.group[f"labels/{labels_name}"])
    with client.as_current():
        clusters = save_figure(plot_clusters(model, points.points, labels=labels),
                               f"{stem}.clusters.png")
        convergence = save_figure(plot_convergence(model), f"{stem}.convergence.png")
    return {f"{os.path.basename(stem)} clusters": clusters,
            f"{os.path.basename(stem)} convergence": convergence}


def check_demo_directory(directory: str | os.PathLike) -> None:
    """Refuse, before any work, a demo directory that is a file or cannot be written."""
    from distgmm._atomic import check_output_directory
    from distgmm.errors import DistgmmInputError

    directory = os.path.abspath(os.fspath(directory))
    if os.path.lexists(directory) and not os.path.isdir(directory):
        raise DistgmmInputError(f"{directory} is a file, not a directory; give the demo a "
                                "directory to write into.")
    check_output_directory(directory, what=f"demo directory {directory}")


def run_demo(directory: str | os.PathLike = "distgmm-demo", *, client: Any = None,
             on_step: Callable[[str], None] | None = None) -> DemoReport:
    """Run the demo into ``directory`` (created; earlier demo outputs there are replaced).

    1. ``blobs.zarr``: the ``seed-blobs`` preset (900 points, 2 overlapping blobs);
       ``kmeans.zarr``: the packaged ``kmeansSamples.txt``.
    2. Fit K=2 on the blobs, and a Bayesian mixture of at most 10 components (a
       Dirichlet-distribution weight prior switches off the eight the data do not need);
       choose K and the covariance type for kmeansSamples by BIC over 1..4 components and
       the four types, 2 restarts each (``select``: 16 candidates fitted in lockstep).
    3. Label both stores, write cluster, convergence and selection plots.
    """
    from distgmm.jobs._fit import fit_store
    from distgmm.jobs._label import label_store
    from distgmm.jobs._select import select_store
    from distgmm.store import generate, ingest, read_model

    t0 = time.perf_counter()
    directory = os.path.abspath(os.fspath(directory))
    check_demo_directory(directory)
    os.makedirs(directory, exist_ok=True)
    client = resolve_client(client)
    report = DemoReport(directory)

    def step(text: str) -> None:
        report.steps.append(text)
        logger.info("%s", text)
        if on_step is not None:
            on_step(text)

    def path(name: str) -> str:
        return os.path.join(directory, name)

    blobs, kmeans = path("blobs.zarr"), path("kmeans.zarr")
    generate(blobs, preset="seed-blobs", seed=0, overwrite=True, client=client)
    step(f"wrote the seed-blobs data (900 points, 2 blobs) to {blobs}")
    ingest(kmeans_samples_path(), kmeans, overwrite=True)
    step(f"ingested kmeansSamples.txt (30 points) into {kmeans}")

    fit = fit_store(blobs, path("blobs-model.npz"), n_components=2, seed=0, overwrite=True,
                    client=client)
    step(f"fitted K=2 on the blobs: {fit.n_iter} iterations, lower bound "
         f"{fit.lower_bound:.4f}, converged={fit.converged}")
    bayesian = fit_store(blobs, path("blobs-bayesian-model.npz"), n_components=10,
                         prior="dirichlet_distribution", max_iter=1000, seed=0,
                         overwrite=True, client=client)
    step(f"fitted a Bayesian mixture of at most 10 components on the blobs: "
         f"{bayesian.components_kept} kept their weight, {bayesian.n_iter} iterations")
    selected = select_store(kmeans, path("kmeans-model.npz"), components="1..4",
                            covariance_types="full,tied,diag,spherical", n_init=2, seed=0,
                            overwrite=True, client=client)
    step(f"selected K={selected.n_components} ({selected.covariance_type}) for kmeansSamples "
         "by BIC over 1..4 components and the four covariance types")
    report.fits = {"blobs": fit.to_dict(), "blobs-bayesian": bayesian.to_dict(),
                   "kmeans": selected.to_dict()}
    report.outputs.update({"blobs store": blobs, "kmeans store": kmeans,
                           "blobs model": fit.model, "blobs Bayesian model": bayesian.model,
                           "kmeans model": selected.model, "kmeans selection": selected.plot})

    for name, store, model in (("blobs", blobs, fit.model),
                               ("blobs-bayesian", blobs, bayesian.model),
                               ("kmeans", kmeans, selected.model)):
        label_name = "demo-bayesian" if name == "blobs-bayesian" else "demo"
        labelled = label_store(model, store, name=label_name, replace=True, client=client)
        step(f"labelled {labelled.n_rows} rows of {name} into labels/{label_name} "
             f"({labelled.chunks_done} chunks)")
        report.outputs.update(_plots(read_model(model).model, store, label_name, path(name),
                                     client))
    step("wrote the cluster, convergence and selection plots")
    report.seconds = time.perf_counter() - t0
    return report
