"""The plot job: draw a model over a point store's points (scatter or chunked density), or a label set's scores and drift history, into a PNG."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from distgmm.errors import DistgmmInputError
from distgmm.jobs._common import resolve_client
from distgmm.store import label_names, label_state, open_points, read_model

__all__ = ["PlotReport", "plot_store", "parse_features"]

#: Batches drawn as histograms of their own (the latest); earlier ones are drawn as one.
_HISTOGRAM_BATCHES = 5
#: Histogram bins, over the scores between the 0.001 and 0.9999 quantiles of every batch.
_SCORE_BINS = 120

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
    scores: str | None = None

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
    scores: str | None = None,
    drift_threshold: float | None = None,
) -> PlotReport:
    """Draw ``model`` over the points of ``store`` and write a PNG to ``out``; or, with
    ``scores``, that label set's score histograms and drift history.

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
    scores : str, optional
        A label set written with scores: draw the training scores (from the model file)
        against the scores of each label run's chunks (one pass over ``scores/<name>``),
        and each run's mean score and outlier rate over time, instead of the points.
    drift_threshold : float, optional
        With ``scores``: the standard errors at which drift is reported (default 4).
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
    if scores is not None:
        with resolve_client(client).as_current():
            fig = _scores_figure(loaded, points, scores, drift_threshold,
                                 figsize=(width / 100, height / 100))
            path = save_figure_at(fig, out, storage_options, size=(width, height))
        return PlotReport(out=path, model=model_path, store=store, n_rows=points.n_rows,
                          labels=None, projection=projection, density=False, width=width,
                          height=height, seconds=time.perf_counter() - t0, scores=scores)
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


def _scores_figure(loaded: Any, points: Any, name: str, drift_threshold: float | None,
                   figsize: tuple[float, float]) -> Any:
    """The figure of :func:`plot_store` with ``scores``: each label run's chunks (grouped by
    when they were labelled) sketched in one pass, judged against the training scores."""
    import dask.array as da

    from distgmm._scores import DEFAULT_DRIFT_THRESHOLD, ScoreMoments
    from distgmm.engine import views
    from distgmm.jobs._label import check_drift_threshold, check_scoring_model
    from distgmm.plotting import plot_scores

    threshold = check_drift_threshold(DEFAULT_DRIFT_THRESHOLD if drift_threshold is None
                                      else drift_threshold)
    if name not in label_names(points.group):
        raise DistgmmInputError(f"store {points.location} has no labels/{name}; run distgmm "
                                f"label --scores --name {name} first.")
    state = label_state(points.group, name)
    if not state.scores or not state.chunk_scores:
        raise DistgmmInputError(f"labels/{name} in {points.location} has no scores; label it "
                                "with distgmm label --scores first.")
    if state.model_fingerprint != loaded.fingerprint:
        raise DistgmmInputError(
            f"labels/{name} were written by another model (fingerprint "
            f"{state.model_fingerprint[:12]}, {loaded.path} has {loaded.fingerprint[:12]}); "
            "plot them with the model that labelled them.")
    profile = check_scoring_model(loaded)
    runs: dict[float, list[int]] = {}
    for chunk, values in sorted(state.chunk_scores.items()):
        runs.setdefault(float(values[4]), []).append(chunk)
    times = sorted(runs)
    array = da.from_zarr(points.group[f"scores/{name}"]).rechunk(
        (points.points.chunks[0],))[: points.n_rows, None]
    sketches = views.score_sketches(views.view_points(array), [runs[t] for t in times],
                                    profile.sketch.upper)
    shown = [(t, s) for t, s in zip(times, sketches)][-_HISTOGRAM_BATCHES:]
    earlier = sketches[:-_HISTOGRAM_BATCHES]
    groups = []
    if earlier:
        merged = earlier[0]
        for sketch in earlier[1:]:
            merged = merged.combine(sketch)
        groups.append((f"{len(earlier)} earlier batches", merged))
    groups += [(f"{_when(t)} ({s.weight:,.0f} rows)", s) for t, s in shown]
    every = [profile.sketch] + [s for _, s in groups if s.weight > 0]
    low = min(s.quantile(1e-3)[0] for s in every)
    high = max(s.quantile(1 - 1e-4)[0] for s in every)
    edges = np.linspace(low, high, _SCORE_BINS + 1)
    width = edges[1] - edges[0]

    def density(sketch):
        return sketch.binned(edges) / (sketch.weight * width) if sketch.weight > 0 else \
            np.zeros(_SCORE_BINS)

    history = []
    for t in times:
        batch = ScoreMoments.merged([ScoreMoments.from_list(state.chunk_scores[i][:4])
                                     for i in runs[t]])
        history.append({**profile.drift(batch, threshold).to_dict(), "at": _when(t, True)})
    return plot_scores(edges, density(profile.sketch),
                       [(label, density(s)) for label, s in groups],
                       outlier_threshold=profile.outlier_threshold, history=history,
                       drift_threshold=threshold, figsize=figsize,
                       title=f"labels/{name}: scores under {loaded.path} and drift")


def _when(unix_seconds: float, as_datetime: bool = False) -> Any:
    from datetime import datetime, timezone

    at = datetime.fromtimestamp(unix_seconds, timezone.utc)
    return at if as_datetime else at.strftime("%Y-%m-%d %H:%M:%S")
