"""CLI tests for fit/label/select/predict and bad input, as real subprocesses on the session cluster
(job files, the demo and drift: ``test_cli_run.py``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import distgmm
from cluster_helpers import (
    KMEANS_SAMPLES, cli_env, copy_store, kill_when_paused, one_error_line, run, run_json,
)
from distgmm.store import append, generate, label_state, open_points

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JOBS = os.path.join(REPO, "jobs")
KMEANS_TXT = KMEANS_SAMPLES


def test_fit_label_incremental(tmp_path, blobs, scheduler_address):
    store = copy_store(blobs, tmp_path / "s.zarr")
    model = str(tmp_path / "m.npz")
    done = run("fit", store, "--components", "3", "--model", model, "--seed", "0",
               "--scheduler", scheduler_address)
    assert done.returncode == 0, done.stderr
    assert "Dask dashboard: http" in done.stderr and "iteration    1  lower bound" in done.stderr
    assert "converged" in done.stdout and "lower bound" in done.stdout  # the summary table
    fp = distgmm.store.read_model(model).fingerprint

    first = run_json("label", model, store, "--scheduler", scheduler_address)
    assert (first["name"], first["chunks_done"], first["chunks_skipped"]) == ("m", 10, 0)
    assert first["fingerprint"] == fp and first["rows_labeled"] == 3000
    again = run_json("label", model, store, "--scheduler", scheduler_address)
    assert (again["chunks_done"], again["chunks_skipped"], again["rows_labeled"]) == (0, 10, 0)
    assert label_state(store, "m").model_fingerprint == fp

    np.save(tmp_path / "new.npy", np.random.default_rng(0).normal(size=(650, 2)).astype("f4"))
    append(str(tmp_path / "new.npy"), store)  # 3650 rows: chunks 10, 11 and 12 are new
    after = run_json("label", model, store, "--scheduler", scheduler_address)
    assert (after["chunks_done"], after["chunks_skipped"], after["rows_labeled"]) == (3, 10, 650)
    done = run("label", model, store, "--scheduler", scheduler_address)
    assert "labelled 0 chunks (0 rows), skipped 13" in done.stdout

    points = open_points(store)
    expected = distgmm.load_model(model).predict(points.points.compute())
    np.testing.assert_array_equal(points.group["labels/m"][:], expected)

    other = str(tmp_path / "other.npz")  # another model under the same name
    run_json("fit", store, "-k", "2", "--model", other, "--seed", "0", "--max-iter", "5",
             "--scheduler", scheduler_address)
    done = run("label", other, store, "--name", "m", "--scheduler", scheduler_address)
    assert "written by another model" in one_error_line(done) and "--replace" in done.stderr
    replaced = run_json("label", other, store, "--name", "m", "--replace",
                        "--scheduler", scheduler_address)
    assert replaced["replaced"] and replaced["chunks_done"] == 13


def test_fit_json_and_weights(tmp_path, scheduler_address):
    np.savetxt(tmp_path / "w.csv", np.column_stack([np.r_[np.zeros(20), np.ones(20) * 5],
                                                    np.r_[np.ones(20), np.arange(20)]]),
               delimiter=",", header="x,y", comments="")
    store = str(tmp_path / "w.zarr")
    assert run("ingest", str(tmp_path / "w.csv"), store).returncode == 0
    result = run_json("fit", store, "-k", "2", "--model", str(tmp_path / "m.npz"),
                      "--covariance-type", "diag", "--n-init", "2", "--init", "random_from_data",
                      "--seed", "1", "--scheduler", scheduler_address)
    for key in ("n_iter", "converged", "lower_bound", "fit_seconds", "seconds", "model",
                "fingerprint", "dashboard"):
        assert key in result
    assert result["covariance_type"] == "diag" and result["n_init"] == 2
    done = run("fit", store, "-k", "2", "--model", str(tmp_path / "x.npz"), "--weights",
               "--scheduler", scheduler_address)
    assert "no 'weights' array" in one_error_line(done)


def test_kill_during_fit_then_resume_gives_the_same_model(tmp_path, blobs, scheduler_address):
    common = ["-k", "3", "--seed", "5", "--tol", "0", "--max-iter", "8", "--n-init", "2",
              "--scheduler", scheduler_address]
    plain = run_json("fit", blobs, "--model", str(tmp_path / "plain.npz"), *common)
    model, ckpt_dir = str(tmp_path / "resumed.npz"), str(tmp_path / "ck")
    args = ["fit", blobs, "--model", model, "--checkpoint", ckpt_dir, *common]
    # Killed in the second restart, after 11 iterations in all (8 + 3).
    kill_when_paused(args, {"DISTGMM_TEST_PAUSE_AFTER_ITERATIONS": "11"},
                      "DISTGMM_TEST_PAUSE_AFTER_ITERATIONS: paused")
    assert not os.path.exists(model)
    assert os.listdir(ckpt_dir) == ["resumed.ckpt.npz"]
    assert "pass --resume" in one_error_line(run(*args))
    resumed = run_json(*args, "--resume")
    assert resumed["resumed"] and not os.listdir(ckpt_dir)
    assert resumed["fingerprint"] == plain["fingerprint"]  # same bytes as uninterrupted
    assert (resumed["n_iter"], resumed["lower_bound"]) == (plain["n_iter"], plain["lower_bound"])


def test_kill_during_label_then_rerun_gives_identical_labels(tmp_path, blobs, blobs_model,
                                                             scheduler_address):
    store = copy_store(blobs, tmp_path / "s.zarr")
    whole = run_json("label", blobs_model, store, "--name", "whole", "--proba",
                     "--scheduler", scheduler_address)
    assert whole["chunks_done"] == 10
    args = ["label", blobs_model, store, "--name", "cut", "--proba",
            "--scheduler", scheduler_address]
    kill_when_paused(args, {"DISTGMM_TEST_PAUSE_AFTER_LABEL_CHUNKS": "3"},
                      "DISTGMM_TEST_PAUSE_AFTER_LABEL_CHUNKS: paused")
    before = label_state(store, "cut")
    assert 3 <= len(before.chunks_done) < 10
    rerun = run_json(*args)
    assert rerun["chunks_skipped"] == len(before.chunks_done)
    assert rerun["chunks_done"] == 10 - len(before.chunks_done)
    group = open_points(store).group
    np.testing.assert_array_equal(group["labels/cut"][:], group["labels/whole"][:])
    np.testing.assert_array_equal(group["proba/cut"][:], group["proba/whole"][:])
    assert label_state(store, "cut").complete


def test_align_to_keeps_label_ids_across_seeds(tmp_path, client, scheduler_address):
    store = str(tmp_path / "a.zarr")
    generate(store, n_points=2000, n_features=2, n_components=4, seed=2, chunk_rows=500,
             client=client)
    old, new, aligned = (str(tmp_path / f"{n}.npz") for n in ("old", "new", "aligned"))
    common = ["-k", "4", "--scheduler", scheduler_address]
    run_json("fit", store, "--model", old, "--seed", "1", *common)
    run_json("fit", store, "--model", new, "--seed", "3", *common)
    result = run_json("fit", store, "--model", aligned, "--seed", "3", "--align-to", old,
                      *common)
    assert sorted(result["permutation"]) == [0, 1, 2, 3] and result["aligned_to"] == old
    points = open_points(store).points.compute()
    labels = {p: distgmm.load_model(p).predict(points) for p in (old, new, aligned)}
    assert (labels[new] != labels[old]).mean() > 0.2  # another seed numbers them differently
    assert (labels[aligned] == labels[old]).mean() > 0.99
    assert distgmm.store.read_model(aligned).provenance["aligned_to"] == \
        distgmm.store.read_model(old).fingerprint


def test_select_table_and_plot(tmp_path, blobs, scheduler_address):
    model = str(tmp_path / "best.npz")
    done = run("select", blobs, "--components", "2..4", "--covariance-type", "full,spherical",
               "--model", model, "--seed", "0", "--scheduler", scheduler_address)
    assert done.returncode == 0, done.stderr
    assert "BIC" in done.stdout and "AIC" in done.stdout and "<- chosen" in done.stdout
    assert "K=4   spherical BIC" in done.stderr  # one progress line per candidate
    assert os.path.exists(tmp_path / "best.selection.png")
    chosen = distgmm.store.read_model(model)
    assert chosen.model.n_components == 3
    candidates = chosen.provenance["candidates"]
    assert len(candidates) == 6
    assert min(candidates, key=lambda r: r["bic"])["n_components"] == 3


def test_predict_file(tmp_path, blobs, blobs_model):
    points = open_points(blobs).points[:50].compute()
    np.savetxt(tmp_path / "few.txt", points)
    np.save(tmp_path / "few.npy", points)
    model = distgmm.load_model(blobs_model)
    done = run("predict", blobs_model, str(tmp_path / "few.txt"))
    assert done.returncode == 0, done.stderr
    np.testing.assert_array_equal(np.array(done.stdout.split(), dtype=int), model.predict(points))
    result = run_json("predict", blobs_model, str(tmp_path / "few.npy"), "--proba",
                      "--out", str(tmp_path / "p.npy"))
    assert result["n_rows"] == 50 and result["out"] == str(tmp_path / "p.npy")
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), model.predict_proba(points),
                               atol=1e-6)
    both = run("predict", blobs_model, str(tmp_path / "few.txt"), "--proba")
    rows = np.loadtxt(both.stdout.splitlines())
    np.testing.assert_array_equal(rows[:, 0].astype(int), model.predict(points))
    np.testing.assert_allclose(rows[:, 1:], model.predict_proba(points), atol=1e-5)


@pytest.fixture
def bad_inputs(tmp_path, blobs_model, client):
    three = str(tmp_path / "three.zarr")
    generate(three, n_points=100, n_features=3, n_components=2, seed=1, client=client)
    truncated = tmp_path / "truncated.npz"
    raw = open(blobs_model, "rb").read()
    truncated.write_bytes(raw[: len(raw) // 2])
    tampered = tmp_path / "tampered.npz"
    with np.load(blobs_model, allow_pickle=False) as npz:
        content = {name: npz[name] for name in npz.files}
    content["weights"] = content["weights"][::-1].copy()
    with open(tampered, "wb") as f:
        np.savez(f, **content)
    (tmp_path / "malformed.toml").write_text("[[step]\nrun = 'fit'\n")
    (tmp_path / "unknown.toml").write_text(
        "[[step]]\nrun = 'label'\nmodel = 'm.npz'\nstore = 's.zarr'\nprobability = true\n")
    (tmp_path / "gate.toml").write_text(
        "[[step]]\nrun = 'label'\nmodel = 'm.npz'\nstore = 's.zarr'\nfail_on_drift = true\n")
    unscored = distgmm.load_model(blobs_model)
    unscored.training_scores_ = None  # as written before training scores were recorded
    distgmm.save_model(unscored, tmp_path / "unscored.npz")
    np.savetxt(tmp_path / "three.txt", np.zeros((4, 3)))
    np.savetxt(tmp_path / "few.txt", np.zeros((4, 2)))
    (tmp_path / "nan.txt").write_text("1 2\nnan 4\n")
    (tmp_path / "huge.txt").write_text("1 2\n1e300 4\n")
    (tmp_path / "notes.txt").write_text("my notes\n")
    (tmp_path / "three.txt.npy").write_text("not numpy\n")
    np.savez(tmp_path / "notmodel.npz", a=np.zeros(3))
    import zarr

    zarr.create_array(str(tmp_path / "plain.zarr"), shape=(10, 2), dtype="float64")
    return tmp_path, three


@pytest.mark.parametrize("args, expected", [
    (["fit", "{tmp}/missing.zarr", "-k", "2", "--model", "{tmp}/m.npz"], "is not a point store"),
    (["label", "{model}", "{tmp}/missing.zarr"], "is not a point store"),
    (["select", "{store}", "--components", "5..2", "--model", "{tmp}/m.npz"],
     "range 5..2 is reversed"),
    (["select", "{store}", "--components", "many", "--model", "{tmp}/m.npz"],
     "is not a component range"),
    (["label", "{model}", "{three}"], "fitted on 2 features but store"),
    (["label", "{tmp}/truncated.npz", "{store}"], "not a readable distgmm file"),
    (["label", "{tmp}/tampered.npz", "{store}"], "failed its checksum"),
    (["label", "{tmp}/nothing.npz", "{store}"], "does not exist"),
    (["predict", "{model}", "{tmp}/three.txt"], "has 3 columns but model"),
    (["fit", "{store}", "-k", "0", "--model", "{tmp}/m.npz"],
     "'n_components' parameter of GaussianMixture must be an int in the range [1, inf)"),
    (["run", "{tmp}/malformed.toml"], "is not valid TOML"),
    (["run", "{tmp}/unknown.toml"], "unknown key 'probability'; allowed: drift_threshold, "
     "fail_on_drift, model, name, proba, replace, scores, stop_unless_drift, storage_options, store"),
    (["run", "{tmp}/gate.toml"], "judge scores; add scores = true"),
    (["label", "{model}", "{store}", "--drift-threshold", "0"],
     "--drift-threshold must be a positive number of standard errors"),
    (["label", "{model}", "{store}", "--fail-on-drift"], "--fail-on-drift judges scores"),
    (["label", "{tmp}/unscored.npz", "{store}", "--scores"], "has no training scores"),
    (["fit", "{store}", "-k", "2", "--model", "{tmp}/m.npz", "--outlier-quantile", "1"],
     "--outlier-quantile must be a fraction of the training points between 0 and 1"),
    (["select", "{store}", "--model", "{tmp}/m.npz", "--outlier-quantile", "0"],
     "--outlier-quantile must be a fraction"),
    (["run", "{tmp}/unknown.toml", "--set", "x=1"], "declares no variable 'x'"),
    # 0 is refused, never taken for the default; absurd sizes before anything is allocated
    (["generate", "{tmp}/g.zarr", "--points", "0"], "--points must be at least 1, got 0"),
    (["generate", "{tmp}/g.zarr", "--features", "0"], "--features must be at least 1, got 0"),
    (["generate", "{tmp}/g.zarr", "--components", "0"], "--components must be at least 1"),
    (["generate", "{tmp}/g.zarr", "--components", "100000000"], "at most 1,000"),
    (["generate", "{tmp}/g.zarr", "--features", "100000"], "covariances alone would take"),
    (["generate", "{tmp}/g.zarr", "--points", "100000000000000"], "GiB free where"),
    # outputs that cannot be written are refused before the work, not after it
    (["generate", "{tmp}/three.txt/g.zarr"], "which is a file, not a directory"),
    (["ingest", "{tmp}/three.txt", "{tmp}/three.txt/s.zarr"], "which is a file, not a directory"),
    (["fit", "{store}", "-k", "2", "--model", "{tmp}"], "is a directory; give a file path"),
    (["fit", "{store}", "-k", "2", "--model", "{tmp}/three.txt/m.npz"], "which is a file"),
    (["fit", "{store}", "-k", "2", "--model", "/proc/m.npz"], "cannot be written"),
    (["fit", "{store}", "-k", "2", "--model", "{tmp}/three.txt", "--overwrite"],
     "is not a npz file; refusing to replace it"),
    (["fit", "{store}", "-k", "2", "--model", "{tmp}/notmodel.npz", "--overwrite"],
     "is not a distgmm model file; refusing to replace it"),
    (["fit", "{store}", "-k", "2", "--model", "{tmp}/m.npz", "--checkpoint", "{tmp}/three.txt"],
     "is a file, not a directory"),
    (["select", "{store}", "--model", "{tmp}/three.txt", "--overwrite"], "refusing to replace"),
    (["plot", "{model}", "{store}", "--out", "{tmp}/three.txt"], "is not a png file"),
    (["plot", "{model}", "{store}", "--out", "{tmp}"], "is a directory"),
    (["predict", "{model}", "{tmp}/few.txt", "--out", "{tmp}/notes.txt"],
     "is not a prediction written by `distgmm predict`"),
    (["predict", "{model}", "{tmp}/few.txt", "--out", "{tmp}/three.txt/p.npy"], "is a file"),
    (["predict", "{model}", "{tmp}/few.txt", "--out", "{tmp}/three.txt.npy"], "not a npy file"),
    (["demo", "{tmp}/three.txt"], "is a file, not a directory"),
    # advice names only options the command has
    (["predict", "{model}", "{tmp}/nan.txt"], "value nan is not finite; clean the data first"),
    (["ingest", "{tmp}/huge.txt", "{tmp}/h.zarr"], "value 1e+300 is too large in magnitude"),
    (["label", "{model}", "{tmp}/plain.zarr"], "is a Zarr v3 array, not a distgmm point store; "
     "distgmm reads such arrays but never writes into them, so it cannot label it"),
    (["ingest", "{tmp}/three.txt", "{tmp}/plain.zarr", "--append"], "is a plain Zarr array"),
])
def test_bad_arguments_exit_2_with_one_line(bad_inputs, blobs, blobs_model, scheduler_address,
                                             args, expected):
    tmp, three = bad_inputs
    args = [a.format(tmp=tmp, model=blobs_model, store=blobs, three=three) for a in args]
    cluster = [] if args[0] in ("predict", "ingest") else ["--scheduler", scheduler_address]
    before = sorted(os.listdir(tmp))
    line = one_error_line(run(*args, *cluster))
    assert expected in line, line
    assert sorted(os.listdir(tmp)) == before  # nothing left behind
    assert "unexpected" not in line


def test_damaged_store_is_exit_2_naming_the_chunk_and_leaves_nothing(tmp_path, blobs,
                                                                     blobs_model,
                                                                     scheduler_address):
    import zarr

    store = copy_store(blobs, tmp_path / "s.zarr")
    os.remove(os.path.join(store, "points", "c", "3", "0"))
    cluster = ["--scheduler", scheduler_address]
    for args in (["fit", store, "-k", "3", "--model", str(tmp_path / "m.npz")],
                 ["label", blobs_model, store, "--name", "d"]):
        line = one_error_line(run(*args, *cluster))
        assert "chunk 3 of 'points' (rows 900-1,199) is missing" in line, line
    assert not os.path.exists(tmp_path / "m.npz")
    labels = zarr.open_group(store, mode="r")["labels/d"]  # chunks done before are kept
    assert 3 not in labels.attrs["distgmm_labels"]["chunks_done"]
    # a label run that fails before recording any chunk leaves nothing in the store
    shutil.rmtree(os.path.join(store, "labels"))
    shutil.rmtree(os.path.join(store, "points", "c"))
    line = one_error_line(run("label", blobs_model, store, "--name", "d", *cluster))
    assert "is missing" in line
    assert list(zarr.open_group(store, mode="r").group_keys()) == []

    store = copy_store(blobs, tmp_path / "t.zarr")
    path = os.path.join(store, "points", "c", "5", "0")
    raw = bytearray(open(path, "rb").read())
    raw[40] ^= 0xFF
    open(path, "wb").write(bytes(raw))
    line = one_error_line(run("label", blobs_model, store, "--name", "d", *cluster))
    assert "chunk 5 of 'points' (rows 1,500-1,799) fails its checksum" in line, line


def test_nan_rows_in_a_store_are_refused_by_the_label_job(tmp_path, blobs, blobs_model,
                                                         scheduler_address):
    import zarr

    store = copy_store(blobs, tmp_path / "s.zarr")
    zarr.open_array(store, path="points", mode="r+")[1000:1003] = np.nan
    line = one_error_line(run("label", blobs_model, store, "--name", "nan",
                              "--scheduler", scheduler_address))
    assert "chunk 3 of 'points' holds 3 rows with NaN or infinite values (first: row 1,000)" \
        in line, line
    state_names = list(zarr.open_group(store, mode="r").group_keys())
    if state_names:  # chunks finished before the failure stay recorded (they are right)
        labels = zarr.open_group(store, mode="r")["labels/nan"]
        assert 3 not in labels.attrs["distgmm_labels"]["chunks_done"]


def test_relative_paths_are_resolved_by_the_client_not_the_workers(tmp_path, blobs,
                                                                   blobs_model,
                                                                   scheduler_address):
    """The workers run in another directory: a relative store path must reach them
    absolute (it used to name <worker cwd>/s.zarr)."""
    copy_store(blobs, tmp_path / "s.zarr")
    shutil.copy(blobs_model, tmp_path / "m.npz")
    assert os.getcwd() != str(tmp_path)  # the session cluster's workers run in our cwd
    done = subprocess.run([sys.executable, "-m", "distgmm.cli", "label", "m.npz", "s.zarr",
                           "--name", "rel", "--json", "--scheduler", scheduler_address],
                          capture_output=True, text=True, env=cli_env(), cwd=tmp_path, timeout=180)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["chunks_done"] == 10
    store = open_points(str(tmp_path / "s.zarr"))
    np.testing.assert_array_equal(store.group["labels/rel"][:],
                                  distgmm.load_model(blobs_model).predict(
                                      store.points.compute()))
