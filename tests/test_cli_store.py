"""CLI tests for generate/ingest/info, run as real subprocesses (``python -m distgmm.cli``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from cluster_helpers import KMEANS_SAMPLES, cli_env, kill_when_paused
from distgmm.store import open_points

KMEANS = KMEANS_SAMPLES
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "distgmm.cli", *args], capture_output=True,
                          text=True, env=cli_env(**env), timeout=120)


def test_ingest_then_info_json(tmp_path, scheduler_address):
    url = str(tmp_path / "k.zarr")
    done = run("ingest", KMEANS, url, "--chunk-rows", "8", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["n_rows"] == 30 and report["format"] == "text"
    done = run("info", url, "--json", "--scheduler", scheduler_address)
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)  # stdout is exactly one JSON object
    ref = np.loadtxt(KMEANS)
    assert (info["n_rows"], info["n_features"], info["n_chunks"]) == (30, 2, 4)
    np.testing.assert_allclose([f["mean"] for f in info["features"]], ref.mean(axis=0))
    assert "Dask dashboard: http" in done.stderr
    done = run("info", url, "--scheduler", scheduler_address)
    assert done.returncode == 0, done.stderr
    assert "zstd(level=3)" in done.stdout and "x1" in done.stdout and "30" in done.stdout


def test_generate_preset_json(tmp_path, scheduler_address):
    url = str(tmp_path / "b.zarr")
    done = run("generate", url, "--preset", "seed-blobs", "--seed", "4", "--json",
               "--scheduler", scheduler_address)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["n_rows"] == 900
    store = open_points(url)
    assert store.n_rows == 900 and (store.truth.compute()[300:] == 1).all()


def test_generate_with_own_local_cluster(tmp_path):
    url = str(tmp_path / "g.zarr")
    done = run("generate", url, "--points", "5000", "--features", "3", "--components", "2",
               "--seed", "1", "--chunk-rows", "1000", "--workers", "1", "--json")
    assert done.returncode == 0, done.stderr
    assert open_points(url).n_rows == 5000


@pytest.mark.parametrize("content, expected", [
    ("1 2\n3 x\n", "line 2, column 2 (x1): 'x' is not a number"),
    ("1 2\nnan 4\n", "value nan is not finite"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, content, expected):
    (tmp_path / "bad.txt").write_text(content)
    done = run("ingest", str(tmp_path / "bad.txt"), str(tmp_path / "out.zarr"))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0]
    assert "bad.txt" in lines[0]
    assert sorted(os.listdir(tmp_path)) == ["bad.txt"]


def test_destination_and_append_checks(tmp_path):
    url = str(tmp_path / "k.zarr")
    assert run("ingest", KMEANS, url).returncode == 0
    done = run("ingest", KMEANS, url)
    assert done.returncode == 2 and "--overwrite" in done.stderr
    np.save(tmp_path / "three.npy", np.zeros((4, 3)))
    done = run("ingest", str(tmp_path / "three.npy"), url, "--append")
    assert done.returncode == 2 and "3 columns but" in done.stderr
    done = run("ingest", KMEANS, url, "--append", "--dtype", "float32")
    assert done.returncode == 2 and "dtype mismatch" in done.stderr
    (tmp_path / "n.txt").write_text("1 2\nnan 4\n")
    done = run("ingest", str(tmp_path / "n.txt"), url, "--append", "--drop-nonfinite")
    assert done.returncode == 0 and "dropped 1 rows" in done.stderr
    assert open_points(url).n_rows == 31
    done = run("info", str(tmp_path / "nothing.zarr"), "--no-stats")
    assert done.returncode == 2 and "not a point store" in done.stderr


def _kill_when_paused(args: list[str], pause_after: int) -> None:
    """Run the CLI with the pause hook and SIGKILL it while it sleeps after ``pause_after`` chunks."""
    kill_when_paused(args, {"DISTGMM_TEST_PAUSE_AFTER_CHUNKS": str(pause_after)},
                     "DISTGMM_TEST_PAUSE_AFTER_CHUNKS: paused")


# 45 rows into a 30-row store with 8-row chunks: the append writes chunk 3 (the old partial
# chunk, rewritten with its 6 old rows), then chunks 4..9. Pausing after 1 chunk kills it
# right after the partial-chunk rewrite; after 7, when every chunk is written but the new
# shape is not yet committed. (Ragged rows, empty files etc. are covered in test_store.py.)
@pytest.mark.parametrize("pause_after", [1, 7])
def test_kill_9_during_append_leaves_old_store(tmp_path, pause_after):
    url = str(tmp_path / "k.zarr")
    assert run("ingest", KMEANS, url, "--chunk-rows", "8").returncode == 0
    new_rows = np.random.default_rng(0).normal(size=(45, 2))
    np.save(tmp_path / "new.npy", new_rows)
    _kill_when_paused(["ingest", str(tmp_path / "new.npy"), url, "--append"], pause_after)
    ref = np.loadtxt(KMEANS)
    store = open_points(url)
    assert store.n_rows == 30
    np.testing.assert_array_equal(store.points.compute(), ref)
    # and the store is still appendable, with the right values afterwards
    done = run("ingest", str(tmp_path / "new.npy"), url, "--append")
    assert done.returncode == 0, done.stderr
    np.testing.assert_array_equal(open_points(url).points.compute(), np.vstack([ref, new_rows]))


def test_kill_9_during_new_ingest_leaves_no_store(tmp_path):
    url = str(tmp_path / "k.zarr")
    _kill_when_paused(["ingest", KMEANS, url, "--chunk-rows", "8"], 2)
    assert not os.path.exists(url)
    done = run("info", url, "--no-stats")
    assert done.returncode == 2


def test_kill_9_during_generate_leaves_debris_that_the_next_run_removes(tmp_path,
                                                                       scheduler_address):
    url = str(tmp_path / "g.zarr")
    args = ["generate", url, "--points", "5000", "--features", "2", "--components", "2",
            "--seed", "1", "--chunk-rows", "1000", "--scheduler", scheduler_address]
    _kill_when_paused(args, 2)
    left = sorted(os.listdir(tmp_path))
    assert any(".g.zarr.distgmm-tmp-" in n for n in left), left  # the killed build
    assert not os.path.exists(url)
    done = run(*args, "--json")
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(tmp_path)) == ["g.zarr"]  # build directory and lock file gone
    assert open_points(url).n_rows == 5000


def test_append_to_a_missing_store_creates_nothing(tmp_path):
    url = str(tmp_path / "none.zarr")
    done = run("ingest", KMEANS, url, "--append")
    assert done.returncode == 2 and "is not a point store" in done.stderr
    assert os.listdir(tmp_path) == []
    assert run("ingest", KMEANS, url).returncode == 0  # nothing blocks a later ingest
    assert open_points(url).n_rows == 30
