"""Tests of distgmm.plotting: figures rendered to PNG from real fits, geometry, memory budget."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
from PIL import Image
from sklearn.mixture import GaussianMixture

from cluster_helpers import cli_env
from distgmm.engine import views
from distgmm.plotting import (
    PALETTE,
    ellipse_geometry,
    plot_clusters,
    plot_convergence,
    plot_selection,
    save_figure,
)

REPO = Path(__file__).resolve().parents[1]
KMEANS_SAMPLES = Path(__file__).resolve().parent.parent / "distgmm" / "data" / "kmeansSamples.txt"
COVARIANCE_TYPES = ["full", "tied", "diag", "spherical"]


# ------------------------------------------------------------------------------- fixtures

def two_blobs(seed: int = 0) -> np.ndarray:
    """The project's origin data: 300 points around (0, 0), std 1.2; 600 around (3, 3), std 1.8."""
    rng = np.random.default_rng(seed)
    return np.vstack([rng.normal(0.0, 1.2, (300, 2)), rng.normal(3.0, 1.8, (600, 2))])


@pytest.fixture(scope="module")
def blobs() -> np.ndarray:
    return two_blobs()


@pytest.fixture(scope="module")
def blobs_model(blobs) -> GaussianMixture:
    return GaussianMixture(2, random_state=0).fit(blobs)


@pytest.fixture(scope="module")
def anisotropic() -> np.ndarray:
    """Three elongated, tilted 2-D clusters: every covariance type fits them differently."""
    rng = np.random.default_rng(1)
    parts = []
    for centre, scale, angle in [((0, 0), (3.0, 0.5), 0.5), ((8, 2), (1.0, 2.0), -0.3),
                                 ((3, 7), (2.0, 0.7), 1.2)]:
        c, s = math.cos(angle), math.sin(angle)
        rotation = np.array([[c, -s], [s, c]])
        parts.append(rng.normal(size=(400, 2)) * scale @ rotation.T + centre)
    return np.vstack(parts)


@pytest.fixture(scope="module")
def four_features() -> np.ndarray:
    rng = np.random.default_rng(2)
    centres = np.array([[0, 0, 0, 0], [5, 0, 2, 0], [0, 6, 0, 3]], dtype=float)
    mixing = np.array([[1.0, 0.3, 0.0, 0.2], [0.0, 1.0, 0.4, 0.0], [0.0, 0.0, 1.0, 0.5],
                       [0.0, 0.0, 0.0, 0.7]])
    return np.vstack([rng.normal(size=(300, 4)) @ mixing + c for c in centres])


def full_covariances_from_precision(model: GaussianMixture) -> np.ndarray:
    """Reference (K, D, D) covariances from ``precisions_cholesky_``, not ``covariances_``."""
    k, d = model.means_.shape
    chol = np.asarray(model.precisions_cholesky_)
    if model.covariance_type == "full":
        precisions = chol @ np.transpose(chol, (0, 2, 1))
    elif model.covariance_type == "tied":
        precisions = np.repeat((chol @ chol.T)[None], k, axis=0)
    elif model.covariance_type == "diag":
        precisions = np.stack([np.diag(c ** 2) for c in chol])
    else:
        precisions = np.stack([np.eye(d) * c ** 2 for c in chol])
    return np.linalg.inv(precisions)


def ellipse_covariance(patch, n_sigma: float) -> np.ndarray:
    """The 2x2 covariance whose n_sigma contour is the drawn ellipse."""
    a, b = patch.width / (2 * n_sigma), patch.height / (2 * n_sigma)
    t = math.radians(patch.angle)
    rotation = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    return rotation @ np.diag([a * a, b * b]) @ rotation.T


def ellipses(fig, n_sigma: int = 1) -> dict[int, object]:
    found = {}
    for ax in fig.axes:
        for patch in ax.patches:
            gid = patch.get_gid() or ""
            if gid.startswith("ellipse-") and gid.endswith(f"-{n_sigma}"):
                found[int(gid.split("-")[1])] = patch
    return found


def check_png(path: Path, size: tuple[int, int], n_components: int = 0) -> np.ndarray:
    """Assert a valid PNG of ``size`` pixels with real content; return its RGB pixels."""
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == size
        image.verify()
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB")).astype(int)
    non_white = np.any(pixels < 245, axis=-1).mean()
    assert non_white > 0.02, f"only {non_white:.1%} of the image is not background"
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20
    for k in range(n_components):  # every component's colour is really drawn
        target = np.array([int(PALETTE[k][i:i + 2], 16) for i in (1, 3, 5)])
        close = np.all(np.abs(pixels - target) <= 12, axis=-1).sum()
        assert close >= 20, f"component {k} colour {PALETTE[k]} appears in {close} pixels"
    return pixels


# ------------------------------------------------------------------------------- geometry

def test_module_import_does_not_import_pyplot():
    code = ("import sys, distgmm.plotting; "
            "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'")
    subprocess.run([sys.executable, "-c", code], check=True, env=cli_env(), cwd=REPO)


def test_ellipse_geometry_of_known_covariance():
    angle = math.radians(30.0)
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    cov = rotation @ np.diag([9.0, 1.0]) @ rotation.T
    for n_sigma in (1, 2, 3):
        width, height, degrees = ellipse_geometry(cov, n_sigma)
        assert width == pytest.approx(6.0 * n_sigma)
        assert height == pytest.approx(2.0 * n_sigma)
        assert degrees % 180 == pytest.approx(30.0)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_drawn_ellipses_are_the_model_covariances(anisotropic, covariance_type, tmp_path):
    model = GaussianMixture(3, covariance_type=covariance_type, random_state=0).fit(anisotropic)
    fig = plot_clusters(model, da.from_array(anisotropic, chunks=(250, 2)), figsize=(6, 5))
    expected = full_covariances_from_precision(model)
    for n_sigma in (1, 2, 3):
        drawn = ellipses(fig, n_sigma)
        assert sorted(drawn) == [0, 1, 2]
        for k, patch in drawn.items():
            np.testing.assert_allclose(patch.center, model.means_[k], rtol=1e-10)
            np.testing.assert_allclose(ellipse_covariance(patch, n_sigma), expected[k],
                                       rtol=1e-5, atol=1e-8)
    save_figure(fig, tmp_path / "clusters.png")
    check_png(tmp_path / "clusters.png", (600, 500), n_components=3)


def numpy_pca(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    values, vectors = np.linalg.eigh(np.cov(x, rowvar=False))
    vectors = vectors[:, ::-1]
    signs = np.sign(vectors[np.argmax(np.abs(vectors), axis=0), np.arange(vectors.shape[1])])
    return x.mean(axis=0), vectors * signs


@pytest.mark.parametrize("chunks", [37, 300, 900, None])
def test_pca_axes_match_numpy_whatever_the_chunking(client, four_features, chunks):
    shifted = four_features + 1e6  # far from the origin: only centered moments stay exact
    data = views.view_points(shifted if chunks is None  # in this process, or on the cluster
                             else da.from_array(shifted, chunks=(chunks, 4)))
    mean, components, ratio = views.principal_axes(data, 4)
    ref_mean, ref_components = numpy_pca(shifted)
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-12)
    np.testing.assert_allclose(components, ref_components, atol=1e-8)
    values = np.linalg.eigvalsh(np.cov(shifted, rowvar=False))[::-1]
    np.testing.assert_allclose(ratio, values / values.sum(), rtol=1e-8)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_pca_projection_draws_projected_covariances(four_features, covariance_type, tmp_path):
    model = GaussianMixture(3, covariance_type=covariance_type, random_state=0).fit(four_features)
    fig = plot_clusters(model, da.from_array(four_features, chunks=(200, 4)), figsize=(7, 5))
    mean, components = numpy_pca(four_features)
    w = components[:, :2]
    covariances = full_covariances_from_precision(model)
    for k, patch in ellipses(fig).items():
        np.testing.assert_allclose(patch.center, (model.means_[k] - mean) @ w, atol=1e-8)
        np.testing.assert_allclose(ellipse_covariance(patch, 1), w.T @ covariances[k] @ w,
                                   rtol=1e-5, atol=1e-8)
    assert "PC1" in fig.axes[0].get_xlabel() and "PC2" in fig.axes[0].get_ylabel()
    save_figure(fig, tmp_path / "pca.png", dpi=80)
    check_png(tmp_path / "pca.png", (560, 400), n_components=3)


def test_feature_pair_draws_the_pair_block_of_each_covariance(four_features, tmp_path):
    model = GaussianMixture(3, covariance_type="diag", random_state=0).fit(four_features)
    names = ["alpha", "beta", "gamma", "delta"]
    fig = plot_clusters(model, four_features, features=(0, 3), feature_names=names)
    assert fig.axes[0].get_xlabel() == "alpha" and fig.axes[0].get_ylabel() == "delta"
    for k, patch in ellipses(fig).items():
        np.testing.assert_allclose(patch.center, model.means_[k, [0, 3]])
        np.testing.assert_allclose(ellipse_covariance(patch, 1),
                                   np.diag(model.covariances_[k, [0, 3]]), rtol=1e-6, atol=1e-10)
    save_figure(fig, tmp_path / "pair.png", size=(900, 600))
    check_png(tmp_path / "pair.png", (900, 600), n_components=3)


@pytest.mark.parametrize("density", [False, True])
def test_pair_grid(four_features, density, tmp_path):
    model = GaussianMixture(3, covariance_type="tied", random_state=0).fit(four_features)
    fig = plot_clusters(model, da.from_array(four_features, chunks=(250, 4)), projection="pairs",
                        features=[0, 1, 3], density=density, figsize=(7, 7))
    panels = [ax for ax in fig.axes if ax.axison]
    assert len(panels) == 6  # three diagonal marginals, three lower-triangle planes
    one_sigma = [p for ax in fig.axes for p in ax.patches
                 if (p.get_gid() or "").startswith("ellipse-") and p.get_gid().endswith("-1")]
    assert len(one_sigma) == 3 * 3  # every component in each of the three planes
    save_figure(fig, tmp_path / "grid.png")
    check_png(tmp_path / "grid.png", (700, 700), n_components=3)


# ------------------------------------------------------------------------------- 2-D figures

def test_blobs_boundary_is_the_p_half_contour(blobs, blobs_model, tmp_path):
    fig = plot_clusters(blobs_model, da.from_array(blobs, chunks=(128, 2)), figsize=(8, 6))
    ax = fig.axes[0]
    contours = [c for c in ax.collections if hasattr(c, "allsegs")]
    assert len(contours) == 1
    vertices = np.vstack([seg for level in contours[0].allsegs for seg in level])
    assert len(vertices) > 20
    proba = blobs_model.predict_proba(vertices)
    np.testing.assert_allclose(proba[:, 0], 0.5, atol=0.02)
    save_figure(fig, tmp_path / "blobs.png")
    check_png(tmp_path / "blobs.png", (800, 600), n_components=2)


def test_three_component_boundary_lies_where_top_two_are_equal(anisotropic, tmp_path):
    model = GaussianMixture(3, random_state=0).fit(anisotropic)
    fig = plot_clusters(model, anisotropic, boundary=True)
    segments = [seg for c in fig.axes[0].collections if hasattr(c, "allsegs")
                for level in c.allsegs for seg in level]
    top = np.sort(model.predict_proba(np.vstack(segments)), axis=1)
    np.testing.assert_allclose(top[:, -1] - top[:, -2], 0.0, atol=0.03)


def test_kmeans_samples_coloured_by_label(tmp_path):
    points = np.loadtxt(KMEANS_SAMPLES)
    assert points.shape == (30, 2)
    model = GaussianMixture(3, random_state=0).fit(points)
    fig = plot_clusters(model, points, figsize=(6, 4.5), dpi=120)
    ax = fig.axes[0]
    shown = {int(c.get_gid().split("-")[1]): len(c.get_offsets())
             for c in ax.collections if (c.get_gid() or "").startswith("points-")}
    assert shown == dict(enumerate(np.bincount(model.predict(points), minlength=3)))
    save_figure(fig, tmp_path / "kmeans.png")
    check_png(tmp_path / "kmeans.png", (720, 540), n_components=3)


def test_marker_sample_is_deterministic_and_bounded(blobs, blobs_model):
    points = da.from_array(blobs, chunks=(100, 2))

    def drawn(fig):
        return np.vstack([c.get_offsets() for c in fig.axes[0].collections
                          if (c.get_gid() or "").startswith("points-")])

    first = drawn(plot_clusters(blobs_model, points, density=False, max_markers=250))
    second = drawn(plot_clusters(blobs_model, points, density=False, max_markers=250))
    assert len(first) == 250
    np.testing.assert_array_equal(np.sort(first, axis=0), np.sort(second, axis=0))


def test_given_labels_are_used(blobs, blobs_model):
    labels = da.zeros(len(blobs), dtype=np.int32, chunks=300)
    fig = plot_clusters(blobs_model, da.from_array(blobs, chunks=(200, 2)), labels=labels,
                        density=True)
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert f"n = {len(blobs):,}" in legend[0] and "n = 0" in legend[1]


@pytest.mark.parametrize("given_labels", [True, False])
def test_density_histograms_match_numpy(client, anisotropic, given_labels):
    model = GaussianMixture(3, random_state=0).fit(anisotropic)
    labels = (np.random.default_rng(3).integers(0, 3, len(anisotropic)) if given_labels
              else model.predict(anisotropic))
    plane = dict(directions=np.eye(2)[None], offsets=np.zeros((1, 2)),
                 lows=np.array([[-4.0, -3.0]]), widths=np.array([[14 / 32, 12 / 32]]), bins=32)
    edges_x, edges_y = np.linspace(-4, 10, 33), np.linspace(-3, 9, 33)
    for chunks in (97, 1200, None):
        points = anisotropic if chunks is None else da.from_array(anisotropic,
                                                                   chunks=(chunks, 2))
        lazy = None if not given_labels else (
            labels if chunks is None else da.from_array(labels, chunks=chunks))
        counts, totals = views.label_histograms(views.view_points(points, lazy), model, 2,
                                                given_labels, **plane)
        for k in range(3):
            ref, _, _ = np.histogram2d(*anisotropic[labels == k].T, bins=[edges_x, edges_y])
            np.testing.assert_array_equal(counts[0, k], ref)
        np.testing.assert_array_equal(totals, np.bincount(labels, minlength=3))


def test_density_on_cluster_workers(client, blobs_model, tmp_path):
    """Labels predicted and histograms summed on the session cluster's worker processes."""
    rng = da.random.default_rng(7)
    n = 400_000
    chunks = 50_000
    second = rng.random((n, 1), chunks=(chunks, 1)) < 2 / 3
    points = rng.standard_normal((n, 2), chunks=(chunks, 2)) * (1.2 + 0.6 * second) + 3 * second
    fig = plot_clusters(blobs_model, points, figsize=(8, 6))
    ax = fig.axes[0]
    assert [im.get_gid() for im in ax.images] == ["density"]
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    counted = sum(int(t.split("n = ")[1].replace(",", "")) for t in legend[:2])
    assert counted == n
    save_figure(fig, tmp_path / "density.png")
    check_png(tmp_path / "density.png", (800, 600), n_components=2)


def test_invalid_requests_say_what_to_do(four_features, blobs, blobs_model):
    model = GaussianMixture(2, random_state=0).fit(four_features)
    with pytest.raises(ValueError, match="only defined"):
        plot_clusters(model, four_features, boundary=True)
    with pytest.raises(ValueError, match=r"features must be distinct indices in \[0, 4\)"):
        plot_clusters(model, four_features, features=(0, 4))
    with pytest.raises(ValueError, match="one entry per point"):
        plot_clusters(blobs_model, blobs, labels=np.zeros(5, dtype=int))
    with pytest.raises(ValueError, match="fitted on 4"):
        plot_clusters(model, blobs)


# ------------------------------------------------------------------------------- histories

def test_convergence_one_line_per_restart_best_marked(four_features, tmp_path):
    fits = [GaussianMixture(3, init_params="random", random_state=seed, tol=1e-5,
                            max_iter=300).fit(four_features) for seed in range(4)]
    histories = [f.lower_bounds_ for f in fits]
    fig = plot_convergence(histories, tol=1e-5)
    bound_ax = fig.axes[0]
    assert len(bound_ax.lines) == 4
    for line, history in zip(bound_ax.lines, histories, strict=True):
        np.testing.assert_allclose(line.get_ydata(), history)
    best = int(np.argmax([h[-1] for h in histories]))
    star = next(c for c in bound_ax.collections if c.get_gid() == "best")
    np.testing.assert_allclose(star.get_offsets()[0], [len(histories[best]), histories[best][-1]])
    save_figure(fig, tmp_path / "convergence.png", size=(1000, 450))
    check_png(tmp_path / "convergence.png", (1000, 450))


def test_convergence_accepts_a_fitted_model(blobs_model, tmp_path):
    fig = plot_convergence(blobs_model)
    assert len(fig.axes[0].lines) == 1
    assert any(line.get_label() == f"tol = {blobs_model.tol:g}" for line in fig.axes[1].lines)
    save_figure(fig, tmp_path / "one.png")
    check_png(tmp_path / "one.png", (900, 400))


def test_selection_lines_per_type_and_chosen_marked(blobs, tmp_path):
    table = []
    for covariance_type in COVARIANCE_TYPES:
        for k in range(1, 5):
            fit = GaussianMixture(k, covariance_type=covariance_type, random_state=0).fit(blobs)
            table.append({"n_components": k, "covariance_type": covariance_type,
                          "bic": fit.bic(blobs), "aic": fit.aic(blobs)})
    fig = plot_selection(table)
    bic_ax, aic_ax = fig.axes
    assert [line.get_label() for line in bic_ax.lines] == COVARIANCE_TYPES
    best = min(table, key=lambda r: r["bic"])
    marks = [c for c in bic_ax.collections if c.get_gid() == "chosen"]
    np.testing.assert_allclose(marks[0].get_offsets()[0], [best["n_components"], best["bic"]])
    aic_mark = next(c for c in aic_ax.collections if c.get_gid() == "chosen")
    np.testing.assert_allclose(aic_mark.get_offsets()[0], [best["n_components"], best["aic"]])
    save_figure(fig, tmp_path / "selection.png")
    check_png(tmp_path / "selection.png", (1080, 400))

    fig = plot_selection(table, chosen=(3, "spherical"), criteria=["bic"])
    mark = next(c for c in fig.axes[0].collections if c.get_gid() == "chosen")
    assert mark.get_offsets()[0][0] == 3
    with pytest.raises(ValueError, match="missing"):
        plot_selection([{"n_components": 1, "bic": 1.0}])


# ------------------------------------------------------------------------------- saving

def test_save_figure_is_atomic(blobs_model, tmp_path):
    target = tmp_path / "figure.png"
    fig = plot_convergence([[1.0, 2.0, 2.5]])
    save_figure(fig, target)
    before = target.read_bytes()

    def broken(handle, **kwargs):
        handle.write(b"\x89PNG partial")
        raise RuntimeError("renderer failed")

    fig.savefig = broken
    with pytest.raises(RuntimeError, match="renderer failed"):
        save_figure(fig, target)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figure.png"]


# ------------------------------------------------------------------------------- memory budget

BUDGET_MB = 150
BIG_ROWS = 20_000_000
BIG_CHUNK = 500_000

MEASURE = textwrap.dedent("""
    import json, resource, sys, time
    import dask, dask.array as da, numpy as np
    from sklearn.mixture import GaussianMixture
    from distgmm.plotting import plot_clusters, save_figure

    def vm_kib(field):
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])

    store, out = sys.argv[1], sys.argv[2]
    rng = np.random.default_rng(0)
    small = np.vstack([rng.normal(0, 1.2, (300, 2)), rng.normal(3, 1.8, (600, 2))])
    model = GaussianMixture(2, random_state=0).fit(small)
    points = da.from_zarr(store)
    # One chunk at a time: the measurement is of the density algorithm (chunked histograms,
    # merged as they complete), not of how far a scheduler reads ahead under load.
    with dask.config.set(scheduler="synchronous"):
        # Warm up the same per-chunk code path on a small array (several chunks), so imports
        # and caches are in the baseline.
        save_figure(plot_clusters(model, da.from_array(small, chunks=(50, 2)), density=True),
                    out)
        # Reset the high-water mark (Linux: clear_refs 5), so start-up transients that
        # happened before the big plot do not count; peak - base is then what it added.
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        base = vm_kib("VmRSS")
        start = time.perf_counter()
        save_figure(plot_clusters(model, points, density=True), out)
        seconds = time.perf_counter() - start
        peak = vm_kib("VmHWM")
    print(json.dumps({"seconds": seconds, "base_mb": base / 1024, "peak_mb": peak / 1024}))
""")


def write_big_store(path: Path) -> None:
    """A Zarr array of two blobs, 20 million x 2 float64 (320 MB), written chunk by chunk."""
    import zarr

    array = zarr.create_array(store=str(path), shape=(BIG_ROWS, 2), chunks=(BIG_CHUNK, 2),
                              dtype="float64", compressors=None)
    for start in range(0, BIG_ROWS, BIG_CHUNK):
        rng = np.random.default_rng(start)
        second = rng.random((BIG_CHUNK, 1)) < 2 / 3
        array[start:start + BIG_CHUNK] = (rng.standard_normal((BIG_CHUNK, 2))
                                          * np.where(second, 1.8, 1.2) + 3.0 * second)


def test_density_memory_stays_within_budget_on_a_large_store(tmp_path):
    store = tmp_path / "points.zarr"
    write_big_store(store)
    data_mb = BIG_ROWS * 2 * 8 / 2**20
    assert data_mb > 2 * BUDGET_MB
    env = {**cli_env(), "MPLBACKEND": "Agg",
           # as on Dask workers: one BLAS thread per task thread, so BLAS thread pools and
           # their buffers do not multiply inside the measurement
           "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", MEASURE, str(store), str(tmp_path / "big.png")],
                            check=True, capture_output=True, text=True, env=env, cwd=REPO)
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    growth = measured["peak_mb"] - measured["base_mb"]
    print(f"density of {BIG_ROWS:,} points ({data_mb:.0f} MB): {measured['seconds']:.1f} s, "
          f"peak RSS growth {growth:.0f} MB ({measured})")
    assert growth < BUDGET_MB, measured
    check_png(tmp_path / "big.png", (800, 550), n_components=2)
