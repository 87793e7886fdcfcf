"""CLI tests for job files (``run``), the demo, Bayesian fits and drift, as real subprocesses
on the session cluster."""

from __future__ import annotations

import glob
import json
import os
import shutil

import numpy as np
import pytest

import distgmm
from cluster_helpers import (
    KMEANS_SAMPLES, copy_store, kill_when_paused, one_error_line, run, run_json,
)
from distgmm.store import append, label_state, open_points

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JOBS = os.path.join(REPO, "jobs")
KMEANS_TXT = KMEANS_SAMPLES


def test_every_example_job_runs(tmp_path, scheduler_address):
    order = ["quickstart.toml", "nightly-label.toml", "refit-aligned.toml", "blobs.toml",
             "nightly-label.toml"]
    drift_example = "nightly-drift.toml"  # run by test_the_drift_example_refits_only_on_drift
    assert sorted(set(order) | {drift_example}) == sorted(
        os.path.basename(p) for p in glob.glob(os.path.join(JOBS, "*.toml")))
    batch = tmp_path / "batch.txt"  # the last night's new rows: another batch of 30
    np.savetxt(batch, np.loadtxt(os.path.join(JOBS, "data", "kmeansSamples.txt")) + 1.0)
    sets = [[]] * 4 + [["--set", f"batch={batch}"]]
    results = [run_json("run", os.path.join(JOBS, name), "--set", f"work={tmp_path}", *extra,
                        "--scheduler", scheduler_address) for name, extra in zip(order, sets)]
    steps = {name: [s["run"] for s in r["steps"]] for name, r in zip(order, results)}
    assert steps["quickstart.toml"] == ["ingest", "select", "label"]
    assert steps["blobs.toml"] == ["generate", "fit", "label"]
    nightly = results[-1]["steps"]
    assert nightly[0]["n_rows"] == 90 and nightly[1]["chunks_done"] == 1  # 3rd batch of 30
    # the same night run again: its batch is in the store already, nothing is appended twice
    again = run_json("run", os.path.join(JOBS, "nightly-label.toml"), "--set",
                     f"work={tmp_path}", "--set", f"batch={batch}",
                     "--scheduler", scheduler_address)["steps"]
    assert again[0]["skipped"] and "are in" in again[0]["reason"]
    assert again[1]["chunks_done"] == 0 and open_points(str(tmp_path / "points.zarr")).n_rows == 90
    assert results[2]["steps"][0]["aligned_to"] == os.path.join(str(tmp_path), "model.npz")
    assert open_points(str(tmp_path / "blobs.zarr")).group["proba/blobs"].shape == (900, 2)
    assert os.path.exists(tmp_path / "model.selection.png")


def test_the_drift_example_refits_only_on_drift(tmp_path, scheduler_address):
    def job(name: str, *extra: str) -> list[dict]:
        return run_json("run", os.path.join(JOBS, name), "--set", f"work={tmp_path}", *extra,
                        "--scheduler", scheduler_address)["steps"]

    job("quickstart.toml")
    calm = job("nightly-drift.toml")  # the shipped batch: more of the same
    assert calm[0]["n_rows"] == 60 and calm[1]["scores"] and not calm[1]["drift"]["drift"]
    assert [s.get("skipped", False) for s in calm] == [False, False, True, True]
    assert "step 2 (label) reported no drift" in calm[2]["reason"]
    fingerprint = calm[1]["fingerprint"]
    drifted = tmp_path / "drifted.txt"  # the same batch moved by 8 along x: the model is stale
    np.savetxt(drifted, np.loadtxt(os.path.join(JOBS, "data", "new-batch.txt")) + [8.0, 0.0])
    stale = job("nightly-drift.toml", "--set", f"batch={drifted}")
    assert stale[1]["drift"]["drift"] and stale[1]["fingerprint"] == fingerprint
    assert stale[2]["aligned_to"] == str(tmp_path / "model.npz")
    assert stale[2]["fingerprint"] != fingerprint
    assert stale[3]["replaced"] and stale[3]["fingerprint"] == stale[2]["fingerprint"]
    assert not stale[3]["drift"]["drift"]
    # the same night again: nothing appended twice, the refit model's report stands
    again = job("nightly-drift.toml", "--set", f"batch={drifted}")
    assert again[0]["skipped"] and again[1]["chunks_done"] == 0
    assert [s.get("skipped", False) for s in again] == [True, False, True, True]
    group = open_points(str(tmp_path / "points.zarr")).group
    assert group["scores/current"].shape == group["outliers/current"].shape == (90,)


def test_demo(tmp_path, scheduler_address):
    result = run_json("demo", str(tmp_path / "demo"), "--scheduler", scheduler_address)
    outputs = result["outputs"]
    for key in ("blobs model", "kmeans model", "kmeans selection", "blobs clusters",
                "blobs convergence", "kmeans clusters", "kmeans convergence"):
        assert os.path.getsize(outputs[key]) > 0, key
    assert result["fits"]["blobs"]["n_components"] == 2
    assert result["fits"]["blobs-bayesian"]["components_kept"] == 2  # of at most 10
    assert os.path.getsize(outputs["blobs-bayesian clusters"]) > 0
    assert 1 <= result["fits"]["kmeans"]["n_components"] <= 6
    assert len(label_state(outputs["blobs store"], "demo").chunks_done) == 1


def _job(path, steps: str) -> str:
    path.write_text('[vars]\nwork = "out"\n\n' + steps)
    return str(path)


def test_job_paths_stay_in_the_job_directory_unless_allowed(tmp_path, scheduler_address):
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    np.savetxt(jobs / "k.txt", np.loadtxt(KMEANS_TXT))
    cases = [
        ('[[step]]\nrun = "ingest"\nsource = "k.txt"\nstore = "../../x.zarr"\n', "x.zarr"),
        ('[[step]]\nrun = "ingest"\nsource = "/etc/hostname"\nstore = "s.zarr"\n',
         "/etc/hostname"),
        ('[[step]]\nrun = "ingest"\nsource = "k.txt"\nstore = "${work}/../../../y.zarr"\n',
         "y.zarr"),
        ('[[step]]\nrun = "fit"\nstore = "s.zarr"\ncomponents = 2\noverwrite = true\n'
         f'model = "{outside}/victim.npz"\n', "victim.npz"),
        ('[[step]]\nrun = "ingest"\nsource = "k.txt"\nstore = "~/z.zarr"\n', "z.zarr"),
        ('[[step]]\nrun = "ingest"\nsource = "k.txt"\nstore = "s3://bucket/z.zarr"\n',
         "s3://bucket/z.zarr"),
    ]
    hostname = open("/etc/hostname").read().split()[0] if os.path.exists("/etc/hostname") else ""
    for steps, named in cases:
        job = _job(jobs / "j.toml", steps)
        line = one_error_line(run("run", job, "--scheduler", scheduler_address))
        assert "is outside the job's directory" in line and named in line, line
        assert not hostname or hostname not in line.replace("/etc/hostname", "")
    assert sorted(os.listdir(tmp_path)) == ["jobs", "outside"]
    assert sorted(os.listdir(jobs)) == ["j.toml", "k.txt"]

    # the operator can name other places on the command line, or allow everything
    job = _job(jobs / "j.toml", '[[step]]\nrun = "ingest"\nsource = "k.txt"\n'
                                'store = "${work}/s.zarr"\n')
    assert run_json("run", job, "--set", f"work={outside}")["steps"][0]["n_rows"] == 30
    job = _job(jobs / "j.toml", '[[step]]\nrun = "ingest"\nsource = "k.txt"\n'
                                'store = "../outside/t.zarr"\n')
    assert "outside the job's directory" in one_error_line(run("run", job))
    assert run_json("run", job, "--allow-outside")["steps"][0]["n_rows"] == 30


def test_a_failed_job_is_rerunnable_and_skips_what_is_done(tmp_path, scheduler_address):
    steps = (
        '[[step]]\nrun = "generate"\nstore = "${work}/g.zarr"\npoints = 600\nfeatures = 2\n'
        'components = 2\nseed = 1\nchunk_rows = 200\n\n'
        '[[step]]\nrun = "ingest"\nsource = "k.txt"\nstore = "${work}/k.zarr"\n\n'
        '[[step]]\nrun = "ingest"\nsource = "k2.txt"\nstore = "${work}/k.zarr"\nappend = true\n\n'
        '[[step]]\nrun = "fit"\nstore = "${work}/g.zarr"\nmodel = "${work}/m.npz"\n'
        'components = 2\nseed = 0\n\n'
        '[[step]]\nrun = "label"\nstore = "${work}/g.zarr"\nmodel = "${work}/m.npz"\n\n'
        '[[step]]\nrun = "label"\nstore = "${work}/g.zarr"\nmodel = "${work}/later.npz"\n')
    np.savetxt(tmp_path / "k.txt", np.loadtxt(KMEANS_TXT))
    np.savetxt(tmp_path / "k2.txt", np.loadtxt(KMEANS_TXT) * 2)
    job = _job(tmp_path / "job.toml", steps)
    cluster = ["--scheduler", scheduler_address]
    line = one_error_line(run("run", job, *cluster))  # step 6: no such model yet
    assert "later.npz does not exist" in line
    shutil.copy(tmp_path / "out" / "m.npz", tmp_path / "out" / "later.npz")
    report = run_json("run", job, *cluster)["steps"]
    assert [bool(s.get("skipped")) for s in report] == [True, True, True, True, False, False]
    assert "generated with these settings" in report[0]["reason"]
    assert "ingested from this file" in report[1]["reason"]
    assert "are in" in report[2]["reason"] and "rows 30-59" in report[2]["reason"]
    assert "with these settings" in report[3]["reason"]
    assert report[4]["chunks_done"] == 0 and report[4]["chunks_skipped"] == 3
    assert open_points(str(tmp_path / "out" / "k.zarr")).n_rows == 60
    # a step whose existing output does not match is still an error
    (tmp_path / "job.toml").write_text(
        open(job).read().replace("points = 600", "points = 700"))
    assert "already exists" in one_error_line(run("run", job, *cluster))


def test_bayesian_fit_label_and_job(tmp_path, blobs, scheduler_address):
    """fit --bayesian: K is an upper bound and the summary says how many components kept
    their weight; the model file is a Bayesian mixture that label and predict use; a job
    file's fit step takes the same settings, and --prior needs --bayesian."""
    from distgmm import BayesianGaussianMixture, load_model

    model = str(tmp_path / "bgm.npz")
    result = run_json("fit", blobs, "-k", "8", "--bayesian", "--prior",
                      "dirichlet_distribution", "--max-iter", "500", "--seed", "0",
                      "--model", model, "--scheduler", scheduler_address)
    assert result["prior"] == "dirichlet_distribution" and result["n_components"] == 8
    loaded = load_model(model)
    assert isinstance(loaded, BayesianGaussianMixture)
    assert result["components_kept"] == int((loaded.weights_ > 0.01).sum()) < 8
    labelled = run_json("label", model, blobs, "--name", "bgm", "--scheduler",
                        scheduler_address)
    stored = open_points(blobs).group["labels/bgm"][:]
    np.testing.assert_array_equal(stored, loaded.predict(open_points(blobs).points.compute()))
    assert labelled["rows_labeled"] == len(stored)
    line = one_error_line(run("fit", blobs, "-k", "3", "--prior", "dirichlet_process",
                              "--model", str(tmp_path / "x.npz")))
    assert "--prior and --weight-concentration apply to a Bayesian mixture" in line
    assert not os.path.exists(tmp_path / "x.npz")
    job = tmp_path / "bayes.toml"
    job.write_text(f'[[step]]\nrun = "fit"\nstore = "{blobs}"\nmodel = "{tmp_path}/j.npz"\n'
                   'components = 6\nbayesian = true\nprior = "dirichlet_distribution"\n'
                   'max_iter = 300\nseed = 1\n')
    run_json("run", str(job), "--allow-outside", "--scheduler", scheduler_address)
    assert isinstance(load_model(tmp_path / "j.npz"), BayesianGaussianMixture)


def test_label_scores_report_drift_and_fail_on_drift(tmp_path, blobs, blobs_model,
                                                     scheduler_address):
    store = copy_store(blobs, tmp_path / "s.zarr")
    first = run_json("label", blobs_model, store, "--scores", "--scheduler", scheduler_address)
    profile = distgmm.load_model(blobs_model).training_scores_
    assert first["scores"] and first["outlier_threshold"] == profile.outlier_threshold
    assert first["outlier_quantile"] == 0.001
    drift = first["drift"]
    assert drift["this_run"] and drift["chunks"] == 10 and drift["rows"] == 3000
    assert not drift["drift"] and drift["threshold"] == 4.0
    group = open_points(store).group
    assert group["scores/m"].shape == group["outliers/m"].shape == (3000,)

    model = distgmm.load_model(blobs_model)
    rows, _ = model.sample(600)
    np.save(tmp_path / "calm.npy", rows.astype(np.float32))
    append(str(tmp_path / "calm.npy"), store)
    calm = run("label", blobs_model, store, "--fail-on-drift", "--scores",
               "--scheduler", scheduler_address)
    assert calm.returncode == 0, calm.stderr
    assert "labels/m, scores/m and outliers/m in" in calm.stdout
    assert "drift of 2 chunks (600 rows) labelled by this run" in calm.stdout
    assert "mean log-likelihood" in calm.stdout and "no drift" in calm.stdout

    np.save(tmp_path / "moved.npy", (rows + 4.0).astype(np.float32))  # every blob moved
    append(str(tmp_path / "moved.npy"), store)
    moved = run("label", blobs_model, store, "--fail-on-drift", "--scores", "--json",
                "--scheduler", scheduler_address)
    assert moved.returncode == 3, moved.stderr  # labelled, recorded, and drift reported
    result = json.loads(moved.stdout)
    assert result["chunks_done"] == 2 and result["drift"]["drift"]
    assert result["drift"]["mean_z"] < -4 and result["drift"]["outlier_z"] > 4
    assert label_state(store, "m").complete
    # the verdict stands for a rerun that labels nothing: exit 3 again, said to be earlier
    again = run("label", blobs_model, store, "--fail-on-drift", "--scores",
                "--scheduler", scheduler_address)
    assert again.returncode == 3 and "DRIFT" in again.stdout
    assert "reported by an earlier run at" in again.stdout
    # without --fail-on-drift, drift is reported and the exit code is 0
    assert run("label", blobs_model, store, "--scheduler", scheduler_address).returncode == 0


def test_kill_during_label_with_scores_leaves_the_state_consistent(tmp_path, blobs,
                                                                   blobs_model,
                                                                   scheduler_address):
    store = copy_store(blobs, tmp_path / "s.zarr")
    whole = run_json("label", blobs_model, store, "--name", "whole", "--scores",
                     "--scheduler", scheduler_address)
    args = ["label", blobs_model, store, "--name", "cut", "--scores",
            "--scheduler", scheduler_address]
    kill_when_paused(args, {"DISTGMM_TEST_PAUSE_AFTER_LABEL_CHUNKS": "3"},
                      "DISTGMM_TEST_PAUSE_AFTER_LABEL_CHUNKS: paused")
    killed = label_state(store, "cut")
    done = killed.chunks_done
    assert 3 <= len(done) < 10
    # every recorded chunk has its figures, none without; nothing was reported yet
    assert sorted(killed.chunk_scores) == done and killed.unreported == done
    assert killed.report is None
    reference = label_state(store, "whole").chunk_scores
    assert all(killed.chunk_scores[i][:4] == reference[i][:4] for i in done)
    rerun = run_json(*args)
    assert rerun["chunks_done"] == 10 - len(done)
    # the rerun reports on the killed run's chunks too: all ten, as the uninterrupted run
    assert rerun["drift"]["chunks"] == 10 and rerun["drift"]["this_run"]
    for key in ("rows", "mean", "mean_z", "outlier_rate", "outlier_z", "drift"):
        assert rerun["drift"][key] == pytest.approx(whole["drift"][key], rel=1e-12), key
    group = open_points(store).group
    for kind in ("labels", "scores", "outliers"):
        np.testing.assert_array_equal(group[f"{kind}/cut"][:], group[f"{kind}/whole"][:])
    after = label_state(store, "cut")
    assert after.complete and not after.unreported and sorted(after.chunk_scores) == \
        list(range(10))
