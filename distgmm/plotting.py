"""Matplotlib figures of fitted mixtures, their points, fit histories, model selection and score drift.

Drawing only: the reductions of the points a figure needs (principal axes, a marker
sample, per-label histograms, score sketches) come from the engine's passes
(:mod:`distgmm.engine.views`), on a cluster for dask input and in this process for
in-memory input.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

from distgmm._atomic import atomic_write
from distgmm._kernels import COVARIANCE_TYPES, full_covariances
from distgmm.engine import views

if TYPE_CHECKING:  # matplotlib is imported lazily, inside the functions that draw.
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "PALETTE",
    "GaussianMixtureLike",
    "component_covariances",
    "ellipse_geometry",
    "plot_clusters",
    "plot_convergence",
    "plot_selection",
    "plot_scores",
    "save_figure",
]

logger = logging.getLogger(__name__)

#: Colour-blind-safe qualitative palette: Okabe & Ito (black, kept for marks, and yellow,
#: too pale on white, moved last), then Paul Tol's "muted" scheme for many components.
PALETTE: tuple[str, ...] = (
    "#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442",
    "#332288", "#DDCC77", "#117733", "#88CCEE", "#882255", "#44AA99", "#999933", "#AA4499",
)

#: Fixed colour per covariance type in selection plots.
_COVARIANCE_TYPE_COLORS = {"full": "#0072B2", "tied": "#E69F00", "diag": "#009E73",
                           "spherical": "#CC79A7"}

_SIGMAS = (1, 2, 3)
_SIGMA_STYLES = {1: ("-", 1.8), 2: ("--", 1.3), 3: (":", 1.1)}


class GaussianMixtureLike(Protocol):
    """The scikit-learn fitted-mixture contract the plots rely on.

    Both :class:`sklearn.mixture.GaussianMixture` and :class:`distgmm.GaussianMixture` fit it.
    ``predict`` and ``predict_proba`` are only called on NumPy arrays.
    """

    n_components: int
    covariance_type: str
    weights_: np.ndarray
    means_: np.ndarray
    covariances_: np.ndarray

    def predict(self, X: np.ndarray) -> np.ndarray: ...  # noqa: D102

    def predict_proba(self, X: np.ndarray) -> np.ndarray: ...  # noqa: D102


# --------------------------------------------------------------------------------------------
# Geometry: covariances, projections, ellipses
# --------------------------------------------------------------------------------------------

def component_covariances(model: GaussianMixtureLike) -> np.ndarray:
    """Every component's full covariance matrix, whatever the model's covariance type.

    Parameters
    ----------
    model : GaussianMixtureLike
        A fitted mixture with ``covariance_type`` in ``{"full", "tied", "diag", "spherical"}``
        and ``covariances_`` of shape ``(K, D, D)``, ``(D, D)``, ``(K, D)`` or ``(K,)``.

    Returns
    -------
    numpy.ndarray of shape (K, D, D)
    """
    kind = model.covariance_type
    n_components, n_features = np.shape(model.means_)
    if kind not in COVARIANCE_TYPES:
        raise ValueError(
            f"covariance_type must be one of 'full', 'tied', 'diag', 'spherical'; got {kind!r}"
        )
    return full_covariances(model.covariances_, kind, n_components, n_features)


def ellipse_geometry(cov: np.ndarray, n_sigma: float = 1.0) -> tuple[float, float, float]:
    """Width, height and angle of the ``n_sigma`` contour of a 2-D Gaussian.

    Parameters
    ----------
    cov : numpy.ndarray of shape (2, 2)
        Symmetric positive semi-definite covariance of the plane.
    n_sigma : float
        Mahalanobis radius of the contour.

    Returns
    -------
    width, height : float
        Full lengths of the major and minor axes, ``2 * n_sigma * sqrt(eigenvalue)``.
    angle : float
        Counter-clockwise angle of the major axis from the x axis, in degrees.
    """
    values, vectors = np.linalg.eigh(np.asarray(cov, dtype=np.float64))
    values = np.clip(values, 0.0, None)
    major = vectors[:, 1]
    angle = math.degrees(math.atan2(major[1], major[0]))
    return 2 * n_sigma * math.sqrt(values[1]), 2 * n_sigma * math.sqrt(values[0]), angle


@dataclass(frozen=True)
class _Axis:
    """A 1-D linear view of the points: ``x @ direction - offset``."""

    direction: np.ndarray  # (D,)
    offset: float
    label: str


# --------------------------------------------------------------------------------------------
# Drawing helpers
# --------------------------------------------------------------------------------------------

def _color(k: int) -> str:
    return PALETTE[k % len(PALETTE)]


def _darker(color: str, amount: float = 0.35) -> tuple[float, float, float]:
    """The colour mixed with black, so lines stand out over points of the same hue."""
    from matplotlib.colors import to_rgb

    return tuple((1.0 - amount) * c for c in to_rgb(color))


def _project_cov(cov: np.ndarray, a: _Axis, b: _Axis) -> np.ndarray:
    w = np.stack([a.direction, b.direction], axis=1)
    return w.T @ cov @ w


def _axis_extent(axis: _Axis, means: np.ndarray, covs: np.ndarray, n_sigma: float,
                 values: np.ndarray | None) -> tuple[float, float]:
    """Range covering every component's mean +- n_sigma and the shown values, padded 4%."""
    centre = means @ axis.direction - axis.offset
    spread = n_sigma * np.sqrt(np.einsum("i,kij,j->k", axis.direction, covs, axis.direction))
    low, high = float(np.min(centre - spread)), float(np.max(centre + spread))
    if values is not None and values.size:
        low, high = min(low, float(values.min())), max(high, float(values.max()))
    if not high > low:
        low, high = low - 0.5, high + 0.5
    pad = 0.04 * (high - low)
    return low - pad, high + pad


def _draw_ellipses(ax: Axes, means2: np.ndarray, covs2: np.ndarray) -> None:
    from matplotlib.patches import Ellipse

    for k, (mean, cov) in enumerate(zip(means2, covs2, strict=True)):
        edge = _darker(_color(k))
        for n_sigma in _SIGMAS:
            width, height, angle = ellipse_geometry(cov, n_sigma)
            style, linewidth = _SIGMA_STYLES[n_sigma]
            ax.add_patch(Ellipse(
                tuple(mean), width, height, angle=angle, fill=False, edgecolor=edge,
                linestyle=style, linewidth=linewidth, zorder=4, gid=f"ellipse-{k}-{n_sigma}",
            ))
            # A white halo under each line keeps it readable over dense colour.
            ax.add_patch(Ellipse(
                tuple(mean), width, height, angle=angle, fill=False, edgecolor="white",
                linewidth=linewidth + 1.2, alpha=0.6, zorder=3,
            ))
    ax.scatter(means2[:, 0], means2[:, 1], marker="X", s=110,
               c=[_color(k) for k in range(len(means2))], edgecolors="black", linewidths=1.2,
               zorder=6, gid="means")


def _draw_density(ax: Axes, counts: np.ndarray, extent: tuple[float, float, float, float]) -> None:
    """One RGBA image: hue mixes label colours by share, opacity follows log total count."""
    from matplotlib.colors import to_rgb

    colors = np.array([to_rgb(_color(k)) for k in range(counts.shape[0])])  # (K, 3)
    total = counts.sum(axis=0).astype(np.float64)  # (bx, by)
    share = counts / np.maximum(total, 1.0)
    rgb = np.einsum("kij,kc->jic", share, colors)  # rows = y bins for imshow
    alpha = np.log1p(total) / max(np.log1p(total.max()), 1e-12)
    alpha = np.where(total > 0, 0.15 + 0.85 * alpha, 0.0).T
    ax.imshow(np.dstack([rgb, alpha]), origin="lower", extent=extent, aspect="auto",
              interpolation="nearest", zorder=1, gid="density")


def _draw_boundary(ax: Axes, model: GaussianMixtureLike, a: _Axis, b: _Axis,
                   extent: tuple[float, float, float, float], resolution: int = 300) -> None:
    """Contour where the two most probable components are equally likely (2-D data only)."""
    u = np.linspace(extent[0], extent[1], resolution)
    v = np.linspace(extent[2], extent[3], resolution)
    uu, vv = np.meshgrid(u, v)
    plane = np.column_stack([uu.ravel(), vv.ravel()]) + np.array([a.offset, b.offset])
    w = np.stack([a.direction, b.direction], axis=1)  # (2, 2): plane = x @ w - offset
    grid = np.linalg.solve(w.T, plane.T).T
    proba = model.predict_proba(grid)
    proba = np.asarray(proba.compute() if hasattr(proba, "compute") else proba)
    proba = proba.reshape(resolution, resolution, -1)
    if proba.shape[-1] < 2:
        return
    # Each pair's boundary is drawn once, where the pair holds the two highest probabilities.
    top2 = np.sort(np.argsort(proba, axis=-1)[..., -2:], axis=-1)
    for k in range(proba.shape[-1]):
        for other in range(k + 1, proba.shape[-1]):
            pair = (top2[..., 0] == k) & (top2[..., 1] == other)
            margin = np.where(pair, proba[..., k] - proba[..., other], np.nan)
            if np.nanmin(margin, initial=np.inf) < 0 < np.nanmax(margin, initial=-np.inf):
                ax.contour(uu, vv, margin, levels=[0.0], colors="black", linewidths=1.4,
                           linestyles="--", zorder=5)


def _legend_handles(model: GaussianMixtureLike, counts: np.ndarray | None, boundary: bool) -> list:
    from matplotlib.lines import Line2D

    handles = []
    for k, weight in enumerate(np.asarray(model.weights_)):
        text = f"component {k}: w = {weight:.2f}"
        if counts is not None:
            text += f", n = {int(counts[k]):,}"
        handles.append(Line2D([], [], marker="X", linestyle="none", markersize=9,
                              markerfacecolor=_color(k), markeredgecolor="black", label=text))
    for n_sigma in _SIGMAS:
        style, linewidth = _SIGMA_STYLES[n_sigma]
        handles.append(Line2D([], [], color="0.3", linestyle=style, linewidth=linewidth,
                              label=f"{n_sigma}\u03c3 ellipse"))
    if boundary:
        text = ("boundary (p = 0.5)" if len(handles) == 2 + len(_SIGMAS)
                else "boundary (top two p equal)")
        handles.append(Line2D([], [], color="black", linestyle="--", linewidth=1.4, label=text))
    return handles


# --------------------------------------------------------------------------------------------
# Public figures
# --------------------------------------------------------------------------------------------

Projection = Literal["auto", "pca", "features", "pairs"]


def plot_clusters(
    model: GaussianMixtureLike,
    points: Any,
    *,
    labels: Any = None,
    features: Sequence[int] | None = None,
    projection: Projection = "auto",
    density: bool | Literal["auto"] = "auto",
    max_markers: int = 20_000,
    bins: int | None = None,
    boundary: bool | Literal["auto"] = "auto",
    feature_names: Sequence[str] | None = None,
    extent: tuple[float, float, float, float] | None = None,
    random_state: int = 0,
    title: str | None = None,
    figsize: tuple[float, float] | None = None,
    dpi: float = 100,
    ax: Axes | None = None,
) -> Figure:
    """Points coloured by label, component means, and 1, 2 and 3 sigma covariance ellipses.

    Every pass over the points runs on Dask, chunk by chunk: the PCA moments, the
    deterministic marker sample and the per-label 2-D histograms of the density rendering.
    Only small results (``D x D`` moments, at most ``max_markers`` rows, histograms) reach
    the client, so the memory used does not grow with the number of points.

    Parameters
    ----------
    model : GaussianMixtureLike
        A fitted mixture (scikit-learn or distgmm) with ``D`` features.
    points : dask.array.Array or array-like of shape (N, D)
        Points, chunked along rows. ``D >= 2``.
    labels : dask.array.Array or array-like of shape (N,), optional
        Component of each point. By default ``model.predict`` is applied chunk by chunk
        (for markers, only on the sampled rows).
    features : sequence of int, optional
        Two feature indices to plot against each other, or several for a pair grid.
    projection : {"auto", "pca", "features", "pairs"}
        ``"features"`` shows ``features`` (default ``(0, 1)``); ``"pca"`` the first two
        principal components; ``"pairs"`` a grid of every pair of ``features`` (default all,
        at most 8). ``"auto"`` is ``"features"`` for two features or a given pair, ``"pairs"``
        when more than two ``features`` are given, otherwise ``"pca"``.
    density : bool or "auto"
        Draw per-label 2-D histograms instead of markers. ``"auto"``: when ``N > max_markers``.
    max_markers : int
        Largest number of markers; larger point sets are sampled without replacement with
        ``random_state`` (the same rows every time).
    bins : int, optional
        Histogram bins per axis for the density rendering (default 256, 96 in a pair grid).
    boundary : bool or "auto"
        Draw the contour where the two most probable components are equally likely (p = 0.5
        for two components). Only defined when the plane is the whole space (``D == 2``);
        ``"auto"`` draws it then.
    feature_names : sequence of str of length D, optional
        Axis labels; default ``x0, x1, ...``.
    extent : (xmin, xmax, ymin, ymax), optional
        Plot limits of a single panel. By default every component's mean +- 4 sigma in the
        plane, widened to the shown markers.
    random_state : int
        Seed of the marker sample.
    title : str, optional
        Figure title; a summary of the model and the data by default.
    figsize : (float, float), optional
        Figure size in inches (default 7 x 5.5, or 2.6 inches per feature for a pair grid).
    dpi : float
        Figure resolution.
    ax : matplotlib.axes.Axes, optional
        Draw a single panel into this axes instead of a new figure.

    Returns
    -------
    matplotlib.figure.Figure
    """
    shape = np.shape(points)
    if len(shape) != 2 or shape[1] < 2:
        raise ValueError(
            f"points must be a 2-D array of shape (N, D) with D >= 2; got shape {shape}"
        )
    n_points, n_features = shape
    if math.isnan(n_points):
        raise ValueError("points has unknown chunk sizes; call points.compute_chunk_sizes() first")
    if labels is not None and np.shape(labels) != (n_points,):
        raise ValueError(
            f"labels must have one entry per point, shape ({n_points},); "
            f"got shape {np.shape(labels)}"
        )
    means = np.asarray(model.means_, dtype=np.float64)
    if means.shape[1] != n_features:
        raise ValueError(
            f"points have {n_features} features but the model was fitted on {means.shape[1]}"
        )
    names = list(feature_names) if feature_names is not None else [
        f"x{i}" for i in range(n_features)]
    if len(names) != n_features:
        raise ValueError(f"feature_names must name all {n_features} features; got {len(names)}")
    covs = component_covariances(model)
    n_components = means.shape[0]
    data = views.view_points(points, labels)

    axes_1d, projection_text = _choose_axes(data, n_features, features, projection, names)
    pair_grid = len(axes_1d) > 2 or projection == "pairs"
    if pair_grid and ax is not None:
        raise ValueError("a pair grid needs its own figure; pass ax=None or choose two features")
    if pair_grid and extent is not None:
        raise ValueError("extent applies to a single panel; it cannot be used with a pair grid")
    if boundary == "auto":
        boundary = n_features == 2 and not pair_grid
    elif boundary and (n_features != 2 or pair_grid):
        raise ValueError(
            "the p = 0.5 boundary is only defined in a plane that is the whole space "
            f"(D == 2); the data has D = {n_features}. Pass boundary=False or 'auto'"
        )
    use_density = n_points > max_markers if density == "auto" else bool(density)
    if bins is None:
        bins = 96 if pair_grid else 256

    # The data, reduced by the engine to what is drawn: a sample or histograms.
    shown: np.ndarray | None = None
    shown_labels: np.ndarray | None = None
    label_totals: np.ndarray | None = None
    if not use_density:
        rows = views.sampled_rows(n_points, max_markers, random_state)
        taken = data.take_rows(np.arange(n_points) if rows is None else rows)
        shown = taken[:, :n_features]
        shown_labels = (taken[:, n_features] if labels is not None
                        else np.asarray(model.predict(shown)))
        shown_labels = np.asarray(shown_labels).astype(np.intp)
        label_totals = np.bincount(shown_labels[(shown_labels >= 0)
                                                & (shown_labels < n_components)],
                                   minlength=n_components)
        if rows is not None:
            logger.info("drawing a deterministic sample of %d of %d points", len(rows), n_points)

    coords = [None if shown is None else shown @ a.direction - a.offset for a in axes_1d]
    limits = [_axis_extent(a, means, covs, 4.0, c) for a, c in zip(axes_1d, coords, strict=True)]
    if extent is not None:
        limits = [(float(extent[0]), float(extent[1])), (float(extent[2]), float(extent[3]))]
    if pair_grid:
        pairs = [(i, j) for i in range(len(axes_1d)) for j in range(i)]  # y = i, x = j
    else:
        pairs = [(1, 0)]
    planes = [(axes_1d[j], axes_1d[i]) for i, j in pairs]
    plane_extents = [(*limits[j], *limits[i]) for i, j in pairs]
    counts = None
    if use_density:
        counts, label_totals = views.label_histograms(
            data, model, n_features, labels is not None,
            directions=np.stack([np.stack([a.direction, b.direction], axis=1)
                                 for a, b in planes]),
            offsets=np.array([[a.offset, b.offset] for a, b in planes]),
            lows=np.array([[e[0], e[2]] for e in plane_extents]),
            widths=np.array([[(e[1] - e[0]) / bins, (e[3] - e[2]) / bins]
                             for e in plane_extents]),
            bins=bins)
        logger.info("density of %d points in %d plane(s), %d bins per axis",
                    n_points, len(planes), bins)

    from matplotlib.figure import Figure

    if ax is not None:
        fig = ax.figure
    else:
        if figsize is None:
            figsize = (2.4 * len(axes_1d), 2.4 * len(axes_1d)) if pair_grid else (8.0, 5.5)
        fig = Figure(figsize=figsize, dpi=dpi, layout="constrained")

    def draw_plane(target: Axes, p: int) -> None:
        a, b = planes[p]
        plane_extent = plane_extents[p]
        if counts is not None:
            _draw_density(target, counts[p], plane_extent)
        else:
            _draw_markers(target, coords[pairs[p][1]], coords[pairs[p][0]], shown_labels,
                          n_components)
        means2 = np.column_stack([means @ a.direction - a.offset, means @ b.direction - b.offset])
        covs2 = np.stack([_project_cov(c, a, b) for c in covs])
        _draw_ellipses(target, means2, covs2)
        if boundary:
            _draw_boundary(target, model, a, b, plane_extent)
        target.set_xlim(plane_extent[0], plane_extent[1])
        target.set_ylim(plane_extent[2], plane_extent[3])

    kind = "density" if use_density else ("markers, sampled" if n_points > max_markers
                                          else "markers")
    summary = title if title is not None else (
        f"{n_components}-component mixture ({model.covariance_type} covariance), "
        f"{n_points:,} points ({kind})\n{projection_text}"
    )
    handles = _legend_handles(model, label_totals, bool(boundary))
    if not pair_grid:
        target = ax if ax is not None else fig.add_subplot()
        draw_plane(target, 0)
        target.set_xlabel(planes[0][0].label)
        target.set_ylabel(planes[0][1].label)
        target.set_title(summary, fontsize="medium")
        target.grid(True, color="0.9", linewidth=0.6, zorder=0)
        target.set_axisbelow(True)
        if ax is not None:
            target.legend(handles=handles, fontsize="small", framealpha=0.9)
        else:
            fig.legend(handles=handles, loc="outside right upper", fontsize="small",
                       frameon=False)
        return fig

    n_axes = len(axes_1d)
    grid = fig.subplots(n_axes, n_axes, squeeze=False, sharex="col")
    for i in range(n_axes):
        for j in range(n_axes):
            target = grid[i, j]
            if j > i:
                target.set_axis_off()
                continue
            if i == j:
                _draw_marginal(target, i, axes_1d, pairs, counts, coords, shown_labels, model,
                               means, covs, limits[i], bins)
            else:
                draw_plane(target, pairs.index((i, j)))
            if i == n_axes - 1:
                target.set_xlabel(axes_1d[j].label)
            else:
                target.tick_params(labelbottom=False)
            if j == 0 and i > 0:
                target.set_ylabel(axes_1d[i].label)
            elif j > 0:
                target.tick_params(labelleft=False)
    fig.suptitle(summary, fontsize="medium")
    # The empty upper triangle holds the legend.
    fig.legend(handles=handles, loc="upper right", bbox_to_anchor=(0.98, 0.9),
               fontsize="small", frameon=False)
    return fig


def _choose_axes(data: views.Points, n_features: int, features: Sequence[int] | None,
                 projection: str, names: list[str]) -> tuple[list[_Axis], str]:
    """The 1-D views to show and a sentence saying what they are."""
    if projection not in ("auto", "pca", "features", "pairs"):
        raise ValueError(
            f"projection must be 'auto', 'pca', 'features' or 'pairs'; got {projection!r}")
    if features is not None:
        features = [int(f) for f in features]
        bad = [f for f in features if not 0 <= f < n_features]
        if bad or len(set(features)) != len(features):
            raise ValueError(
                f"features must be distinct indices in [0, {n_features}); got {features}")
    if projection == "auto":
        if features is not None:
            projection = "features" if len(features) == 2 else "pairs"
        else:
            projection = "features" if n_features == 2 else "pca"
    if projection == "pca":
        if features is not None:
            raise ValueError("features cannot be combined with projection='pca'")
        mean, components, ratio = views.principal_axes(data, n_features)
        axes = [_Axis(components[:, i], float(mean @ components[:, i]),
                      f"PC{i + 1} ({100 * ratio[i]:.1f}% of variance)") for i in range(2)]
        return axes, f"first two principal components of {n_features} features " \
                     f"({100 * ratio[:2].sum():.1f}% of variance)"
    eye = np.eye(n_features)
    if projection == "features":
        features = features if features is not None else [0, 1]
        if len(features) != 2:
            raise ValueError(f"projection='features' needs exactly two features; got {features}")
        return [_Axis(eye[f], 0.0, names[f]) for f in features], \
            f"features {names[features[0]]} and {names[features[1]]}"
    features = features if features is not None else list(range(n_features))
    if not 2 <= len(features) <= 8:
        raise ValueError(
            f"a pair grid shows 2 to 8 features; got {len(features)}. Choose some with features=")
    return [_Axis(eye[f], 0.0, names[f]) for f in features], \
        "pairs of " + ", ".join(names[f] for f in features)


def _draw_markers(ax: Axes, x: np.ndarray, y: np.ndarray, labels: np.ndarray,
                  n_components: int) -> None:
    n = len(x)
    size = float(np.clip(36.0 * math.sqrt(300.0 / max(n, 1)), 2.0, 40.0))
    alpha = float(np.clip(0.9 * math.sqrt(2000.0 / max(n, 1)), 0.25, 0.9))
    for k in range(n_components):
        mine = labels == k
        if mine.any():
            ax.scatter(x[mine], y[mine], s=size, color=_color(k), alpha=alpha,
                       edgecolors="none", zorder=2, rasterized=n > 5000, gid=f"points-{k}")
    other = (labels < 0) | (labels >= n_components)
    if other.any():
        ax.scatter(x[other], y[other], s=size, color="0.6", alpha=alpha, edgecolors="none",
                   zorder=2, label="unlabelled")


def _draw_marginal(ax: Axes, i: int, axes_1d: list[_Axis], pairs: list[tuple[int, int]],
                   counts: np.ndarray | None, coords: list, labels: np.ndarray | None,
                   model: GaussianMixtureLike, means: np.ndarray, covs: np.ndarray,
                   limits: tuple[float, float], bins: int) -> None:
    """Per-label histogram of one axis with each component's weighted marginal density."""
    edges = np.linspace(limits[0], limits[1], bins + 1)
    if counts is not None:  # marginal of a plane that has axis i on x or y
        p, on_x = next((p, pair[1] == i) for p, pair in enumerate(pairs) if i in pair)
        hist = counts[p].sum(axis=2 if on_x else 1)  # (K, bins)
    else:
        hist = np.stack([np.histogram(coords[i][labels == k], bins=edges)[0]
                         for k in range(means.shape[0])])
    width = edges[1] - edges[0]
    total = max(hist.sum(), 1)
    grid = np.linspace(limits[0], limits[1], 400)
    axis = axes_1d[i]
    for k in range(means.shape[0]):
        ax.stairs(hist[k] / (total * width), edges, color=_color(k), fill=True, alpha=0.35)
        mu = means[k] @ axis.direction - axis.offset
        var = axis.direction @ covs[k] @ axis.direction
        pdf = np.exp(-0.5 * (grid - mu) ** 2 / var) / math.sqrt(2 * math.pi * var)
        ax.plot(grid, model.weights_[k] * pdf, color=_color(k), linewidth=1.5)
    ax.set_xlim(*limits)
    ax.set_yticks([])


def _histories(result: Any) -> tuple[list[np.ndarray], float | None]:
    tol = getattr(result, "tol", None)
    if getattr(result, "lower_bounds_per_init_", None):
        result = result.lower_bounds_per_init_
    elif hasattr(result, "lower_bounds_"):
        result = result.lower_bounds_
    values = list(result)
    if values and np.ndim(values[0]) == 0:
        values = [values]
    histories = [np.asarray(h, dtype=np.float64) for h in values]
    if not histories or any(h.ndim != 1 or h.size == 0 for h in histories):
        raise ValueError(
            "histories must be one non-empty sequence of lower bounds per restart, "
            "a single sequence, or a fitted model with lower_bounds_")
    return histories, tol


def plot_convergence(
    histories: Any,
    *,
    tol: float | None = None,
    best: int | None = None,
    title: str | None = None,
    figsize: tuple[float, float] = (9.0, 4.0),
    dpi: float = 100,
) -> Figure:
    """Lower bound per EM iteration, one line per restart, and its change per iteration.

    Parameters
    ----------
    histories : sequence of sequences of float, sequence of float, or fitted model
        ``histories[r][t]``: mean per-point lower bound of restart ``r`` after iteration
        ``t``. A single sequence is one restart; a model contributes every restart
        (``lower_bounds_per_init_``) or, failing that, ``lower_bounds_``.
    tol : float, optional
        Convergence threshold drawn on the change panel; a model's ``tol`` by default.
    best : int, optional
        Restart to highlight; by default the one with the highest final lower bound.
    title : str, optional
    figsize : (float, float)
        Figure size in inches.
    dpi : float

    Returns
    -------
    matplotlib.figure.Figure
        Two panels: the lower bound, and ``|change|`` on a log scale (decreases, which EM
        never makes beyond rounding, are marked in red).
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    runs, model_tol = _histories(histories)
    tol = model_tol if tol is None else tol
    if best is None:
        best = int(np.argmax([h[-1] for h in runs]))
    elif not 0 <= best < len(runs):
        raise ValueError(f"best must index one of the {len(runs)} restarts; got {best}")

    fig = Figure(figsize=figsize, dpi=dpi, layout="constrained")
    bound_ax, change_ax = fig.subplots(1, 2)
    for r, run in enumerate(runs):
        steps = np.arange(1, run.size + 1)
        is_best = r == best
        color = _color(r)
        label = f"restart {r}: {run[-1]:.4f} ({run.size} it.)" + (" \u2605 best" if is_best else "")
        bound_ax.plot(steps, run, color=color, linewidth=2.4 if is_best else 1.2,
                      alpha=1.0 if is_best else 0.75, marker="o" if run.size <= 30 else None,
                      markersize=3, label=label, zorder=3 if is_best else 2)
        if is_best:
            bound_ax.scatter([steps[-1]], [run[-1]], marker="*", s=220, color=color,
                             edgecolors="black", zorder=5, gid="best")
        if run.size > 1:
            change = np.diff(run)
            magnitude = np.abs(change)
            positive = magnitude > 0
            change_ax.plot(steps[1:][positive], magnitude[positive], color=color,
                           linewidth=2.4 if is_best else 1.2, alpha=1.0 if is_best else 0.75)
            drops = change < -1e-12 * np.maximum(np.abs(run[1:]), 1.0)
            if drops.any():
                change_ax.scatter(steps[1:][drops], magnitude[drops], color="#D55E00",
                                  marker="v", zorder=5, label="decrease")
    if tol is not None:
        change_ax.axhline(tol, color="black", linestyle="--", linewidth=1.0,
                          label=f"tol = {tol:g}")
    bound_ax.set_xlabel("iteration")
    bound_ax.set_ylabel("lower bound (mean log-likelihood per point)")
    bound_ax.set_title("Lower bound", fontsize="medium")
    change_ax.set_xlabel("iteration")
    change_ax.set_ylabel("|change of lower bound|")
    change_ax.set_title("Change per iteration", fontsize="medium")
    if change_ax.lines or change_ax.collections:
        change_ax.set_yscale("log")
    for axis in (bound_ax, change_ax):
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(True, color="0.9", linewidth=0.6)
    bound_ax.legend(fontsize="small")
    if change_ax.get_legend_handles_labels()[0]:
        change_ax.legend(fontsize="small")
    fig.suptitle(title if title is not None else
                 f"EM convergence, {len(runs)} restart{'s' if len(runs) != 1 else ''}")
    return fig


def _selection_records(table: Any) -> list[dict[str, Any]]:
    if hasattr(table, "to_dict"):  # a pandas DataFrame
        table = table.to_dict("records")
    records = [dict(row) for row in table]
    required = {"n_components", "covariance_type", "bic", "aic"}
    for row in records:
        missing = required - row.keys()
        if missing:
            raise ValueError(
                f"each selection record needs keys {sorted(required)}; "
                f"missing {sorted(missing)} in {row}")
    if not records:
        raise ValueError("the selection table is empty")
    return records


def _chosen_key(chosen: Any, records: list[dict[str, Any]]) -> tuple[int, str]:
    if chosen is None:
        finite = [r for r in records if r["bic"] is not None and np.isfinite(r["bic"])]
        row = min(finite, key=lambda r: r["bic"])
        return int(row["n_components"]), str(row["covariance_type"])
    if isinstance(chosen, Mapping):
        return int(chosen["n_components"]), str(chosen["covariance_type"])
    if hasattr(chosen, "n_components") and hasattr(chosen, "covariance_type"):
        return int(chosen.n_components), str(chosen.covariance_type)
    n_components, covariance_type = chosen
    return int(n_components), str(covariance_type)


def plot_selection(
    table: Iterable[Mapping[str, Any]],
    *,
    chosen: Any = None,
    criteria: Sequence[str] = ("bic", "aic"),
    title: str | None = None,
    figsize: tuple[float, float] | None = None,
    dpi: float = 100,
) -> Figure:
    """Information criteria against the number of components, a line per covariance type.

    Parameters
    ----------
    table : iterable of mappings (or a pandas DataFrame)
        Records ``{"n_components": int, "covariance_type": str, "bic": float, "aic": float}``,
        one per fitted candidate. ``None`` or NaN criteria (failed fits) leave a gap.
    chosen : (n_components, covariance_type), mapping, fitted model, optional
        The selected model, marked on every panel; lowest BIC by default.
    criteria : sequence of {"bic", "aic"}
        One panel per criterion.
    title : str, optional
    figsize : (float, float), optional
        Default 4.6 inches wide per panel by 4 high.
    dpi : float

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    records = _selection_records(table)
    chosen_n, chosen_type = _chosen_key(chosen, records)
    types = list(dict.fromkeys(str(r["covariance_type"]) for r in records))
    if figsize is None:
        figsize = (4.6 * len(criteria) + 1.6, 4.0)
    fig = Figure(figsize=figsize, dpi=dpi, layout="constrained")
    panels = fig.subplots(1, len(criteria), squeeze=False)[0]
    for panel, criterion in zip(panels, criteria, strict=True):
        for t, covariance_type in enumerate(types):
            rows = sorted((r for r in records if str(r["covariance_type"]) == covariance_type),
                          key=lambda r: r["n_components"])
            x = np.array([r["n_components"] for r in rows], dtype=np.float64)
            y = np.array([np.nan if r[criterion] is None else r[criterion] for r in rows],
                         dtype=np.float64)
            panel.plot(x, y, marker="o", markersize=4, linewidth=1.6,
                       color=_COVARIANCE_TYPE_COLORS.get(covariance_type, _color(t + 4)),
                       label=covariance_type)
        values = [(r[criterion], r) for r in records
                  if r[criterion] is not None and np.isfinite(r[criterion])]
        lowest = min(values, key=lambda v: v[0])[1] if values else None
        if lowest is not None:
            panel.scatter([lowest["n_components"]], [lowest[criterion]], marker="v", s=70,
                          color="black", zorder=5)
        picked = [r for r in records if int(r["n_components"]) == chosen_n
                  and str(r["covariance_type"]) == chosen_type]
        if picked and picked[0][criterion] is not None:
            panel.scatter([chosen_n], [picked[0][criterion]], s=260, facecolors="none",
                          edgecolors="#D55E00", linewidths=2.4, zorder=6, gid="chosen")
        panel.set_xlabel("number of components")
        panel.set_ylabel(f"{criterion.upper()} (lower is better)")
        panel.set_title(criterion.upper(), fontsize="medium")
        panel.xaxis.set_major_locator(MaxNLocator(integer=True))
        panel.grid(True, color="0.9", linewidth=0.6)
    handles = [Line2D([], [], color=_COVARIANCE_TYPE_COLORS.get(c, _color(t + 4)), marker="o",
                      markersize=4, label=c) for t, c in enumerate(types)]
    handles += [
        Line2D([], [], marker="o", linestyle="none", markersize=13, markerfacecolor="none",
               markeredgecolor="#D55E00", markeredgewidth=2.2,
               label=f"chosen: {chosen_n} \u00d7 {chosen_type}"),
        Line2D([], [], marker="v", linestyle="none", color="black", label="lowest in panel"),
    ]
    fig.legend(handles=handles, loc="outside right upper", fontsize="small", frameon=False,
               title="covariance type", title_fontsize="small")
    fig.suptitle(title if title is not None else "Model selection")
    return fig


def plot_scores(
    edges: np.ndarray,
    training: np.ndarray,
    batches: Sequence[tuple[str, np.ndarray]],
    *,
    outlier_threshold: float,
    history: Sequence[Mapping[str, Any]],
    drift_threshold: float,
    title: str | None = None,
    figsize: tuple[float, float] = (10.0, 8.0),
    dpi: float = 100,
) -> Figure:
    """Score histograms (training against new batches) and the drift history of a label set.

    Parameters
    ----------
    edges : ndarray of shape (B + 1,)
        Increasing score (log-likelihood) bin edges shared by the histograms.
    training : ndarray of shape (B,)
        Density of the training scores in each bin.
    batches : sequence of (label, ndarray of shape (B,))
        Density of each batch's scores, oldest first.
    outlier_threshold : float
        Scores below it are outliers (a vertical line).
    history : sequence of mappings
        One per batch, oldest first: ``at`` (datetime), ``mean``, ``training_mean``,
        ``mean_se``, ``outlier_rate``, ``expected_outlier_rate`` and ``drift`` (bool), as
        :class:`distgmm._scores.ScoreDrift` gives them.
    drift_threshold : float
        Standard errors at which drift is reported: each batch's mean is drawn with a bar
        of that many standard errors, which misses the training mean when it drifted.
    title : str, optional
    figsize : (float, float)
    dpi : float

    Returns
    -------
    matplotlib.figure.Figure
        The histograms on top; the mean score and the outlier rate of each batch over
        time below (drifted batches in red).
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi, layout="constrained")
    grid = fig.add_gridspec(2, 2, height_ratios=(1.25, 1.0))
    hist_ax = fig.add_subplot(grid[0, :])
    mean_ax, rate_ax = fig.add_subplot(grid[1, 0]), fig.add_subplot(grid[1, 1])
    hist_ax.stairs(training, edges, fill=True, color="0.82", label="training", zorder=1)
    hist_ax.stairs(training, edges, color="0.45", linewidth=1.0, zorder=2)
    for b, (label, density) in enumerate(batches):
        newest = b == len(batches) - 1
        hist_ax.stairs(density, edges, color=_color(b + 1), linewidth=2.2 if newest else 1.2,
                       alpha=1.0 if newest else 0.7, label=label, zorder=3)
    hist_ax.axvline(outlier_threshold, color="#D55E00", linestyle="--", linewidth=1.2,
                    label=f"outlier threshold {outlier_threshold:.2f}")
    hist_ax.set_xlabel("score (log-likelihood per point)")
    hist_ax.set_ylabel("density")
    hist_ax.set_title("Scores: training against the labelled batches", fontsize="medium")
    hist_ax.legend(fontsize="small", ncols=2 if len(batches) > 4 else 1)

    drift_color, calm_color = "#D55E00", "#0072B2"
    when = [h["at"] for h in history]
    colors = [drift_color if h["drift"] else calm_color for h in history]
    if history:
        mean_ax.axhline(history[0]["training_mean"], color="0.3", linewidth=1.0,
                        label="training mean")
        rate_ax.axhline(history[0]["expected_outlier_rate"] * 100, color="0.3",
                        linewidth=1.0, label="training rate")
    for h, at, color in zip(history, when, colors):
        mean_ax.errorbar([at], [h["mean"]], yerr=[drift_threshold * h["mean_se"]], fmt="o",
                         color=color, capsize=3, markersize=5)
        rate_ax.plot([at], [h["outlier_rate"] * 100], "o", color=color, markersize=5)
    mean_ax.set_ylabel("mean score")
    mean_ax.set_title(f"Mean score per batch (bars: \u00b1{drift_threshold:g} standard errors)",
                      fontsize="medium")
    rate_ax.set_ylabel("outliers (%)")
    rate_ax.set_title("Outlier rate per batch", fontsize="medium")
    for axis in (mean_ax, rate_ax):
        axis.set_xlabel("labelled at")
        axis.grid(True, color="0.9", linewidth=0.6)
        axis.tick_params(axis="x", labelrotation=30, labelsize="small")
        if history:
            axis.legend(fontsize="small")
    fig.suptitle(title if title is not None else "Scores and drift")
    return fig


def save_figure(
    fig: Figure,
    path: str | os.PathLike[str],
    *,
    dpi: float | None = None,
    size: tuple[int, int] | None = None,
) -> str:
    """Write a figure atomically: to a temporary file beside ``path``, then ``os.replace``.

    An error while rendering leaves no partial file and any previous ``path`` untouched.

    Parameters
    ----------
    fig : matplotlib.figure.Figure
    path : path-like
        Destination; its suffix (``.png``, ``.svg``, ``.pdf``, ...) selects the format.
    dpi : float, optional
        Resolution; the figure's own by default.
    size : (int, int), optional
        Image size in pixels (width, height) for raster formats; the figure is resized to
        ``size / dpi`` inches.

    Returns
    -------
    str
        The written path.
    """
    path = os.fspath(path)
    fmt = os.path.splitext(path)[1].lstrip(".").lower() or "png"
    dpi = float(fig.get_dpi() if dpi is None else dpi)
    if size is not None:
        fig.set_size_inches(size[0] / dpi, size[1] / dpi)
    with atomic_write(path) as handle:
        fig.savefig(handle, format=fmt, dpi=dpi)
    logger.info("wrote %s", path)
    return path
