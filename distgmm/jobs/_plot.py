"""The plot job: draw a model over a point store's points (scatter or chunked density) into a PNG."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from distgmm.errors import DistgmmInputError
from distgmm.jobs._common import resolve_client
from distgmm.store import label_names, open_points, read_model

__all__ = ["PlotReport", "plot_store", "parse_features"]

PROJECTIONS = ("auto", "pca", "features", "pairs")


@dataclass(frozen=True)
class PlotReport:
    """What :func:`plot_store` did."""

    out: str
    model: str
    store: str
    n_rows: int
    labels: str | None
    projection: str
    density: bool
    width: int
    height: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return asdict(self)


def parse_features(spec: str | None, n_features: int) -> list[int] | None:
    """``"0,3"`` -> ``[0, 3]``, checked against the store's feature count."""
    if spec is None:
        return None
    try:
        features = [int(p) for p in spec.split(",") if p.strip() != ""]
    except ValueError:
        raise DistgmmInputError(f"--features {spec!r} is not a list of column indices; write "
                                "e.g. 0,3.") from None
    if len(features) < 2 or len(set(features)) != len(features):
        raise DistgmmInputError(f"--features {spec!r} needs at least two distinct columns.")
    bad = [f for f in features if not 0 <= f < n_features]
    if bad:
        raise DistgmmInputError(f"--features {spec!r}: column {bad[0]} is out of range for a "
                                f"store with {n_features} features (0..{n_features - 1}).")
    return features


def plot_store(
    model_path: str,
    store: str,
    out: str,
    *,
    labels: str | None = None,
    features: str | None = None,
    projection: str = "auto",
    density: str = "auto",
    width: int = 1000,
    height: int = 800,
    client: Any = None,
    storage_options: dict[str, Any] | None = None,
) -> PlotReport:
    """Draw ``model`` over the points of ``store`` and write a PNG to ``out``.

    Parameters
    ----------
    model_path, store, out : str
    labels : str, optional
        Use the stored ``labels/<labels>`` instead of predicting labels on the fly.
    features : str, optional
        Column indices to show, e.g. ``"0,3"`` (two: that plane; more: a pair grid).
    projection : {"auto", "pca", "features", "pairs"}
    density : {"auto", "on", "off"}
        ``auto`` draws a chunked 2-D histogram per label when there are more points than
        markers can show (computed on Dask, never collecting the points).
    width, height : int
        Image size in pixels.
    """
    import dask.array as da

    from distgmm.plotting import plot_clusters

    t0 = time.perf_counter()
    if projection not in PROJECTIONS:
        raise DistgmmInputError(f"--projection {projection!r} is not one of "
                                f"{', '.join(PROJECTIONS)}.")
    if density not in ("auto", "on", "off"):
        raise DistgmmInputError(f"--density {density!r} is not one of auto, on, off.")
    if width < 100 or height < 100:
        raise DistgmmInputError(f"--width/--height must be at least 100 pixels, got "
                                f"{width}x{height}.")
    from distgmm.jobs._common import check_figure_destination, save_figure_at

    check_figure_destination(out, "--out", storage_options)
    loaded = read_model(model_path, storage_options)
    points = open_points(store, storage_options)
    if loaded.model.n_features_in_ != points.n_features:
        raise DistgmmInputError(
            f"model {model_path} has {loaded.model.n_features_in_} features but store {store} "
            f"has {points.n_features}; plot a model fitted on this kind of data.")
    columns = parse_features(features, points.n_features)
    label_array = None
    if labels is not None:
        if points.group is None or labels not in label_names(points.group):
            raise DistgmmInputError(f"store {store} has no labels/{labels}; run distgmm label "
                                    "first or omit --labels.")
        label_array = da.from_zarr(points.group[f"labels/{labels}"]).rechunk(
            (points.points.chunks[0],))[: points.n_rows]
    dpi = 100
    max_markers = 20_000
    density_flag = {"auto": points.n_rows > max_markers, "on": True, "off": False}[density]
    with resolve_client(client).as_current():
        fig = plot_clusters(loaded.model, points.points, labels=label_array, features=columns,
                            projection=projection, density=density_flag,
                            max_markers=max_markers,
                            feature_names=points.columns or None,
                            figsize=(width / dpi, height / dpi), dpi=dpi)
        path = save_figure_at(fig, out, storage_options, size=(width, height))
    return PlotReport(out=path, model=model_path, store=store, n_rows=points.n_rows,
                      labels=labels, projection=projection, density=density_flag,
                      width=width, height=height, seconds=time.perf_counter() - t0)
