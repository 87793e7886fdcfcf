"""CLI tests for ``distgmm plot`` and ``distgmm fit --plot`` (real subprocesses, real PNGs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from cluster_helpers import cli_env
from distgmm.store import generate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args: str, scheduler: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "distgmm.cli", *args, "--scheduler", scheduler],
                          capture_output=True, text=True, env=cli_env(), timeout=180)


def png_pixels(path: str) -> np.ndarray:
    from matplotlib.image import imread

    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    return imread(path)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, client, scheduler_address):
    """A 4-feature, 3-component store and a model fitted with --plot."""
    root = tmp_path_factory.mktemp("plot")
    store = str(root / "p.zarr")
    generate(store, n_points=30_000, n_features=4, n_components=3, seed=4, chunk_rows=10_000,
             client=client)
    model = str(root / "m.npz")
    done = run("fit", store, "-k", "3", "--model", model, "--seed", "0", "--n-init", "2",
               "--plot", "--json", scheduler=scheduler_address)
    assert done.returncode == 0, done.stderr
    return store, model, json.loads(done.stdout)


def test_fit_plot_writes_convergence_curve(fitted):
    _, model, result = fitted
    assert result["plot"] == model[:-4] + ".convergence.png"
    pixels = png_pixels(result["plot"])
    assert pixels.shape[:2] == (400, 900)  # the figure's 9 x 4 inches at 100 dpi
    assert (pixels[..., :3] < 0.9).any(axis=2).mean() > 0.02


@pytest.mark.parametrize("extra,kind", [([], "density"), (["--density", "off",
                                                            "--features", "0,3"], "markers")])
def test_plot_writes_png_of_requested_size(fitted, tmp_path, scheduler_address, extra, kind):
    store, model, _ = fitted
    out = str(tmp_path / "clusters.png")
    done = run("plot", model, store, "--out", out, "--width", "640", "--height", "480",
               "--json", *extra, scheduler=scheduler_address)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["density"] is (kind == "density") and report["n_rows"] == 30_000
    pixels = png_pixels(out)
    assert pixels.shape[:2] == (480, 640)
    colors = {tuple(c) for c in (pixels[..., :3] * 255).astype(int).reshape(-1, 3)}
    assert len(colors) > 20, "more than background and axes"


@pytest.mark.parametrize("args,message", [
    (["--features", "0,9"], "column 9 is out of range for a store with 4 features"),
    (["--labels", "nope"], "has no labels/nope"),
    (["--projection", "spiral"], "--projection 'spiral' is not one of"),
    (["--scores", "nope"], "has no labels/nope"),
    (["--scores", "plain"], "labels/plain in"),  # labelled without scores
])
def test_plot_bad_arguments(fitted, tmp_path, scheduler_address, args, message):
    store, model, _ = fitted
    if "plain" in args:
        assert run("label", model, store, "--name", "plain",
                   scheduler=scheduler_address).returncode == 0
    out = tmp_path / "never.png"
    done = run("plot", model, store, "--out", str(out), *args, scheduler=scheduler_address)
    assert done.returncode == 2
    assert message in done.stderr and done.stderr.count("error:") == 1
    assert not out.exists() and not list(tmp_path.iterdir())


def test_plot_refuses_model_of_other_feature_count(fitted, tmp_path, client,
                                                   scheduler_address):
    _, model, _ = fitted
    other = str(tmp_path / "two.zarr")
    generate(other, n_points=500, n_features=2, n_components=2, seed=1, client=client)
    done = run("plot", model, other, "--out", str(tmp_path / "x.png"),
               scheduler=scheduler_address)
    assert done.returncode == 2 and "has 4 features but store" in done.stderr
    assert not (tmp_path / "x.png").exists()


def test_plot_scores_draws_histograms_and_drift_history(fitted, tmp_path, client,
                                                        scheduler_address):
    import shutil

    from distgmm.store import append, load_model

    store, model, _ = fitted
    copy = str(tmp_path / "p.zarr")
    shutil.copytree(store, copy)
    assert run("label", model, copy, "--name", "n", "--scores",
               scheduler=scheduler_address).returncode == 0
    rows, _ = load_model(model).sample(5000)
    np.save(tmp_path / "wide.npy", (rows * 1.5).astype(np.float32))  # drifted
    append(str(tmp_path / "wide.npy"), copy)
    assert run("label", model, copy, "--name", "n", scheduler=scheduler_address).returncode == 0
    out = str(tmp_path / "scores.png")
    done = run("plot", model, copy, "--out", out, "--scores", "n", "--json",
               scheduler=scheduler_address)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["scores"] == "n"
    pixels = png_pixels(out)
    assert pixels.shape[:2] == (800, 1000)
    vermilion = np.all(np.abs(pixels[..., :3] - np.array([0xD5, 0x5E, 0x00]) / 255) < 0.02,
                       axis=2)
    assert vermilion.sum() > 50  # the drifted batch's marks and the threshold line
