"""Scheduled labeling with scores: stored scores and outlier flags, per-chunk figures in the label state, and drift of new batches, on real stores and the session cluster."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

import distgmm
from distgmm.errors import DistgmmInputError
from distgmm.jobs import fit_store, label_store, load_job, run_job
from distgmm.store import append, ingest, label_state, open_points, read_model, save_model

#: The mixture every batch is drawn from (4 features): three components, one correlated.
MEANS = np.array([[0.0, 0.0, 0.0, 0.0], [6.0, 0.0, 0.0, 0.0], [0.0, 6.0, 0.0, 0.0]])
_A = np.array([[1.0, 0.0, 0.0, 0.0], [0.6, 0.8, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0],
               [0.0, 0.3, 0.0, 0.9]])
FACTORS = np.stack([_A, 0.8 * np.eye(4), 1.3 * np.eye(4)])  # x = mean + z @ factor
WEIGHTS = np.array([0.5, 0.3, 0.2])
TRAINING_ROWS, CHUNK_ROWS, BATCH_ROWS = 20_000, 1_000, 2_000


def sample(n: int, seed: int, *, means=MEANS, scale: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    k = rng.choice(len(WEIGHTS), size=n, p=WEIGHTS)
    z = rng.standard_normal((n, 4))
    x = means[k] + scale * np.einsum("nd,nde->ne", z, FACTORS[k])
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, client):
    """A store of training rows, a model fitted on it, and the set labelled with scores."""
    root = tmp_path_factory.mktemp("drift")
    np.save(root / "train.npy", sample(TRAINING_ROWS, 0))
    store = str(root / "points.zarr")
    ingest(str(root / "train.npy"), store, chunk_rows=CHUNK_ROWS)
    model = str(root / "model.npz")
    fit_store(store, model, n_components=3, seed=0, tol=1e-6, client=client)
    first = label_store(model, store, name="nightly", scores=True, client=client)
    assert first.chunks_done == TRAINING_ROWS // CHUNK_ROWS and not first.drift_detected
    return store, model


@pytest.fixture
def monitored(tmp_path, trained):
    store, model = trained
    copy = str(tmp_path / "points.zarr")
    shutil.copytree(store, copy)
    return copy, model


def add_batch(tmp_path, store: str, rows: np.ndarray, name: str) -> None:
    np.save(tmp_path / f"{name}.npy", rows)
    append(str(tmp_path / f"{name}.npy"), store)


def test_stored_scores_and_flags_are_the_models(monitored):
    store, model_path = monitored
    loaded = read_model(model_path)
    model, profile = loaded.model, loaded.model.training_scores_
    group = open_points(store).group
    X = group["points"][:].astype(np.float64)
    scores, flags = group["scores/nightly"][:], group["outliers/nightly"][:]
    assert scores.dtype == np.float32 and flags.dtype == bool
    np.testing.assert_allclose(scores, model.score_samples(X), rtol=2e-7, atol=1e-6)
    np.testing.assert_array_equal(flags, scores < profile.outlier_threshold)  # exactly
    np.testing.assert_array_equal(group["labels/nightly"][:], model.predict(X))
    # the training rows are the model's own: the threshold flags its share of them
    assert flags.mean() == pytest.approx(profile.outlier_share, abs=3e-4)
    state = label_state(store, "nightly")
    assert sorted(state.chunk_scores) == state.chunks_done and not state.unreported
    for chunk, (rows, mean, m2, outliers, _) in state.chunk_scores.items():
        part = scores[chunk * CHUNK_ROWS:(chunk + 1) * CHUNK_ROWS].astype(np.float64)
        assert rows == len(part) and outliers == flags[chunk * CHUNK_ROWS:][:len(part)].sum()
        assert mean == pytest.approx(part.mean(), abs=1e-5)
        assert m2 == pytest.approx(((part - part.mean()) ** 2).sum(), rel=1e-4)


def test_a_stream_of_batches_from_the_same_mixture_reports_no_drift(tmp_path, monitored,
                                                                    client):
    store, model = monitored
    for night in range(8):
        add_batch(tmp_path, store, sample(BATCH_ROWS, 100 + night), f"night{night}")
        report = label_store(model, store, name="nightly", client=client)
        assert report.scores and report.chunks_done == BATCH_ROWS // CHUNK_ROWS
        drift = report.drift
        assert drift["this_run"] and drift["rows"] == BATCH_ROWS and drift["chunks"] == 2
        assert not report.drift_detected, drift
        assert abs(drift["mean_z"]) < 3 and drift["outlier_z"] < 3, drift
    # a rerun that labels nothing repeats the last report instead of forgetting it
    again = label_store(model, store, name="nightly", client=client)
    assert again.chunks_done == 0 and not again.drift["this_run"]
    assert again.drift["mean"] == drift["mean"]


SHIFTED = MEANS + np.array([[0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 0, 0]])
NEW_COMPONENT = "new component"


@pytest.mark.parametrize("change, expected", [
    ({"means": SHIFTED}, {"mean_z": "low"}),                 # one component moved 2.5 sd
    (NEW_COMPONENT, {"mean_z": "low", "outlier_z": "high"}),  # 20% from an unseen blob
    ({"scale": 1.5}, {"mean_z": "low", "outlier_z": "high"}),  # every component wider
    ({"scale": 0.6}, {"mean_z": "high"}),                     # ... or narrower: scores rise
], ids=["shifted-component", "new-component", "wider", "narrower"])
def test_changed_batches_are_flagged(tmp_path, monitored, client, change, expected):
    store, model = monitored
    add_batch(tmp_path, store, sample(BATCH_ROWS, 200), "calm")
    calm = label_store(model, store, name="nightly", client=client)
    assert not calm.drift_detected, calm.drift
    if change == NEW_COMPONENT:
        rows = sample(BATCH_ROWS, 201)
        rows[:BATCH_ROWS // 5] = np.random.default_rng(5).normal(
            (-5, -5, 4, 0), 0.7, (BATCH_ROWS // 5, 4))
    else:
        rows = sample(BATCH_ROWS, 201, **change)
    add_batch(tmp_path, store, rows, "changed")
    report = label_store(model, store, name="nightly", client=client)
    drift = report.drift
    assert report.drift_detected and drift["this_run"] and drift["rows"] == BATCH_ROWS, drift
    for key, side in expected.items():
        assert (drift[key] <= -4) if side == "low" else (drift[key] >= 4), (key, drift)
    # the next calm batch is judged on its own
    add_batch(tmp_path, store, sample(BATCH_ROWS, 202), "calm-again")
    assert not label_store(model, store, name="nightly", client=client).drift_detected


def test_a_higher_threshold_reports_less(tmp_path, monitored, client):
    store, model = monitored
    add_batch(tmp_path, store, sample(BATCH_ROWS, 300, means=SHIFTED), "shifted")
    report = label_store(model, store, name="nightly", client=client)
    z = abs(report.drift["mean_z"])
    rerun = label_store(model, store, name="nightly", drift_threshold=z + 1, client=client)
    assert report.drift_detected and not rerun.drift_detected
    assert rerun.drift["threshold"] == z + 1 and rerun.drift["mean_z"] == report.drift["mean_z"]
    with pytest.raises(DistgmmInputError, match="--drift-threshold must be a positive"):
        label_store(model, store, name="nightly", drift_threshold=0, client=client)


def test_scores_are_part_of_the_label_set(tmp_path, trained, client):
    store, model = trained
    copy = str(tmp_path / "p.zarr")
    shutil.copytree(store, copy)
    label_store(model, copy, name="plain", client=client)
    redo = label_store(model, copy, name="plain", scores=True, client=client)
    assert redo.chunks_done == TRAINING_ROWS // CHUNK_ROWS and redo.scores  # relabelled
    assert label_store(model, copy, name="plain", client=client).scores  # ... and kept
    # another model without scores replaces the set: its scores are stale and go
    other = str(tmp_path / "other.npz")
    fit_store(copy, other, n_components=2, seed=0, client=client)
    replaced = label_store(other, copy, name="plain", replace=True, client=client)
    assert not replaced.scores and replaced.drift is None
    group = open_points(copy).group
    assert "scores/plain" not in group and "outliers/plain" not in group
    assert not label_state(copy, "plain").chunk_scores


def test_a_model_without_training_scores_is_refused(tmp_path, trained, client):
    store, model = trained
    old = distgmm.load_model(model)
    old.training_scores_ = None  # as a model file written before scores were recorded
    path = str(tmp_path / "old.npz")
    save_model(old, path)
    with pytest.raises(DistgmmInputError, match="has no training scores .* refit it"):
        label_store(path, store, name="old", scores=True, client=client)
    assert "labels/old" not in open_points(store).group


def test_bayesian_model_scores_are_its_score_samples(tmp_path, monitored, client):
    store, _ = monitored
    model = str(tmp_path / "bayes.npz")
    fit_store(store, model, n_components=6, prior="dirichlet_distribution", seed=0,
              max_iter=300, client=client)
    fitted = read_model(model).model
    report = label_store(model, store, name="bayes", scores=True, client=client)
    assert report.scores and not report.drift_detected, report.drift
    group = open_points(store).group
    X = group["points"][:].astype(np.float64)
    np.testing.assert_allclose(group["scores/bayes"][:], fitted.score_samples(X), rtol=2e-7,
                               atol=1e-6)
    np.testing.assert_array_equal(group["outliers/bayes"][:], group["scores/bayes"][:]
                                  < fitted.training_scores_.outlier_threshold)
    add_batch(tmp_path, store, sample(BATCH_ROWS, 400, scale=1.5), "wide")
    assert label_store(model, store, name="bayes", client=client).drift_detected


def test_outlier_quantile_of_the_fit(tmp_path, trained, client):
    store, _ = trained
    path = str(tmp_path / "q.npz")
    report = fit_store(store, path, n_components=3, seed=0, outlier_quantile=0.05,
                       client=client)
    profile = read_model(path).model.training_scores_
    assert report.outlier_quantile == profile.outlier_quantile == 0.05
    assert report.outlier_threshold == profile.outlier_threshold
    assert 0.05 <= profile.outlier_share < 0.052  # at most one bucket more
    for bad in (0, 1, 1.5, -0.1):
        with pytest.raises(DistgmmInputError, match="--outlier-quantile must be a fraction"):
            fit_store(store, str(tmp_path / "bad.npz"), n_components=3, outlier_quantile=bad,
                      client=client)


def _job(tmp_path, body: str) -> str:
    path = tmp_path / "job.toml"
    path.write_text(body)
    return str(path)


def test_job_refits_only_when_drift_is_reported(tmp_path, monitored, client):
    store, model = monitored
    current = str(tmp_path / "current.npz")
    shutil.copy(model, current)
    job = _job(tmp_path, f"""
[vars]
batch = "calm.npy"

[[step]]
run = "ingest"
source = "${{batch}}"
store = "{store}"
append = true

[[step]]
run = "label"
model = "{current}"
store = "{store}"
name = "nightly-job"
scores = true
replace = true
stop_unless_drift = true

[[step]]
run = "fit"
store = "{store}"
model = "{current}"
components = 3
seed = 1
align_to = "{current}"
overwrite = true

[[step]]
run = "label"
model = "{current}"
store = "{store}"
name = "nightly-job"
scores = true
replace = true
""")
    np.save(tmp_path / "calm.npy", sample(BATCH_ROWS, 500))
    np.save(tmp_path / "moved.npy", sample(BATCH_ROWS, 501, means=SHIFTED))
    # the first run labels everything (no drift: mostly training rows) and stops there
    calm = run_job(load_job(job, allow_outside=True), client=client)
    kinds = [(s.kind, r.to_dict().get("skipped", False)) for s, r in calm.results]
    assert kinds == [("ingest", False), ("label", False), ("fit", True), ("label", True)]
    assert "reported no drift" in calm.results[2][1].reason
    fingerprint = read_model(current).fingerprint
    moved = run_job(load_job(job, {"batch": str(tmp_path / "moved.npy")},
                             allow_outside=True), client=client)
    label, refit, relabel = (r for _, r in moved.results[1:])
    assert label.drift_detected and refit.aligned_to == current
    assert read_model(current).fingerprint != fingerprint == label.fingerprint
    assert relabel.replaced and relabel.chunks_done == label_state(store, "nightly-job").n_chunks
    assert not relabel.drift_detected  # the refit model fits every row, the new batch too


def test_job_fail_on_drift_ends_the_job(tmp_path, monitored, client):
    store, model = monitored
    np.save(tmp_path / "moved.npy", sample(BATCH_ROWS, 600, scale=1.5))
    job = _job(tmp_path, f"""
[[step]]
run = "ingest"
source = "moved.npy"
store = "{store}"
append = true

[[step]]
run = "label"
model = "{model}"
store = "{store}"
name = "nightly"
fail_on_drift = true
scores = true

[[step]]
run = "label"
model = "{model}"
store = "{store}"
name = "never"
""")
    report = run_job(load_job(job, allow_outside=True), client=client)
    assert report.failed_on_drift and len(report.results) == 2
    assert report.to_dict()["failed_on_drift"]
    bad = _job(tmp_path, f"""
[[step]]
run = "label"
model = "{model}"
store = "{store}"
stop_unless_drift = true
""")
    with pytest.raises(DistgmmInputError, match="judge scores; add scores = true"):
        load_job(bad, allow_outside=True)
