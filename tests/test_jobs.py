"""Jobs layer: label kernels and incremental label runs, fit guards, alignment, ranges, job files, select."""

from __future__ import annotations

import os

import numpy as np
import pytest
from sklearn.mixture import GaussianMixture as SkGaussianMixture

import distgmm
from distgmm.errors import DistgmmInputError
from distgmm.jobs import (
    alignment_permutation, checkpoint_path, fit_store, label_block, label_store, load_job,
    parse_components, permute_components, run_job, select_store,
)
from distgmm.jobs._labeller import model_parameters as model_params
from distgmm.store import append, generate, label_state, open_points

RNG = np.random.default_rng(1)
X = np.vstack([RNG.normal(0, 1, (300, 2)), RNG.normal(6, 1.5, (300, 2)),
               RNG.normal((0, 8), 0.7, (300, 2))])


def as_distgmm(ref: SkGaussianMixture) -> distgmm.GaussianMixture:
    model = distgmm.GaussianMixture(ref.n_components, covariance_type=ref.covariance_type)
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_", "precisions_",
                 "converged_", "n_iter_", "lower_bound_", "n_features_in_"):
        setattr(model, name, getattr(ref, name))
    model.lower_bounds_, model.lower_bounds_per_init_ = [ref.lower_bound_], [[ref.lower_bound_]]
    return model


@pytest.mark.parametrize("covariance_type", ["full", "tied", "diag", "spherical"])
def test_label_block_matches_scikit_learn(covariance_type):
    ref = SkGaussianMixture(3, covariance_type=covariance_type, random_state=0).fit(X)
    params = model_params(as_distgmm(ref))
    labels, none = label_block(params, X.astype(np.float32))
    assert none is None and labels.dtype == np.int32
    np.testing.assert_array_equal(labels, ref.predict(X.astype(np.float32)))
    labels, proba = label_block(params, X, proba=True)
    np.testing.assert_array_equal(labels, ref.predict(X))
    assert proba.dtype == np.float32
    np.testing.assert_allclose(proba, ref.predict_proba(X), atol=1e-6)


@pytest.fixture
def small_store(tmp_path, client):
    url = str(tmp_path / "s.zarr")
    generate(url, n_points=2500, n_features=2, n_components=3, seed=3, chunk_rows=300,
             client=client)
    return url


@pytest.fixture
def model_file(tmp_path, small_store, client):
    path = str(tmp_path / "m.npz")
    fit_store(small_store, path, n_components=3, seed=0, client=client)
    return path


def test_label_store_is_incremental(tmp_path, small_store, model_file, client):
    first = label_store(model_file, small_store, client=client)
    assert (first.name, first.chunks_done, first.chunks_skipped, first.rows_labeled) == \
        ("m", 9, 0, 2500)
    again = label_store(model_file, small_store, client=client)
    assert (again.chunks_done, again.chunks_skipped, again.rows_labeled) == (0, 9, 0)
    # 2500 rows = 8 full chunks + 100 rows; 450 new rows grow chunk 8 and add chunk 9.
    np.save(tmp_path / "new.npy", RNG.normal(size=(450, 2)).astype(np.float32))
    append(str(tmp_path / "new.npy"), small_store)
    after = label_store(model_file, small_store, client=client)
    assert (after.chunks_done, after.chunks_skipped, after.rows_labeled) == (2, 8, 550)
    store = open_points(small_store)
    labels = store.group["labels/m"][:]
    expected = distgmm.load_model(model_file).predict(store.points.compute())
    np.testing.assert_array_equal(labels, expected)
    assert label_state(small_store, "m").complete


def test_label_store_replace_and_proba(small_store, model_file, tmp_path, client):
    label_store(model_file, small_store, name="x", client=client)
    other = str(tmp_path / "other.npz")
    fit_store(small_store, other, n_components=2, seed=0, client=client)
    with pytest.raises(DistgmmInputError, match="another model.*--replace"):
        label_store(other, small_store, name="x", client=client)
    done = label_store(other, small_store, name="x", replace=True, proba=True, client=client)
    assert done.replaced and done.chunks_done == 9
    store = open_points(small_store)
    model = distgmm.load_model(other)
    np.testing.assert_allclose(store.group["proba/x"][:],
                               model.predict_proba(store.points.compute()), atol=1e-6)
    # Probabilities asked for on a set labelled without them: everything is redone.
    label_store(model_file, small_store, name="y", client=client)
    redo = label_store(model_file, small_store, name="y", proba=True, client=client)
    assert redo.chunks_done == 9 and redo.proba
    # ... and a set that has them keeps them on later runs.
    assert label_store(model_file, small_store, name="y", client=client).proba


def test_label_store_refuses_feature_mismatch(tmp_path, model_file, client):
    url = str(tmp_path / "three.zarr")
    generate(url, n_points=100, n_features=3, n_components=2, seed=1, client=client)
    with pytest.raises(DistgmmInputError, match="fitted on 2 features but store .* has 3"):
        label_store(model_file, url, client=client)


def test_fit_store_guards(tmp_path, small_store, model_file, client):
    with pytest.raises(DistgmmInputError, match="already exists; pass --overwrite"):
        fit_store(small_store, model_file, n_components=3, client=client)
    with pytest.raises(DistgmmInputError, match="--resume needs --checkpoint"):
        fit_store(small_store, str(tmp_path / "n.npz"), n_components=3, resume=True,
                  client=client)
    ckpt = checkpoint_path(tmp_path / "ck", tmp_path / "n.npz")
    assert ckpt == str(tmp_path / "ck" / "n.ckpt.npz")
    os.makedirs(tmp_path / "ck")
    open(ckpt, "wb").close()
    with pytest.raises(DistgmmInputError, match="pass --resume"):
        fit_store(small_store, str(tmp_path / "n.npz"), n_components=3,
                  checkpoint_dir=str(tmp_path / "ck"), client=client)
    with pytest.raises(DistgmmInputError, match="no 'weights' array"):
        fit_store(small_store, str(tmp_path / "n.npz"), n_components=3, weights=True,
                  client=client)


def test_fit_store_with_checkpoint_matches_plain_fit(tmp_path, small_store, model_file, client):
    report = fit_store(small_store, str(tmp_path / "m2.npz"), n_components=3, seed=0,
                       checkpoint_dir=str(tmp_path / "ck"), resume=True, client=client)
    assert report.fingerprint == distgmm.store.read_model(model_file).fingerprint
    assert not os.path.exists(report.checkpoint)  # removed once the model is written


def test_alignment_recovers_a_permutation():
    ref = as_distgmm(SkGaussianMixture(3, random_state=0).fit(X))
    shuffled = as_distgmm(SkGaussianMixture(3, random_state=0).fit(X))
    permute_components(shuffled, [2, 0, 1])
    perm = alignment_permutation(shuffled, ref)
    permute_components(shuffled, perm)
    np.testing.assert_array_equal(shuffled.means_, ref.means_)
    np.testing.assert_array_equal(shuffled.predict(X), ref.predict(X))
    # More components than the reference: matched ones keep their ids, the rest follow.
    four = as_distgmm(SkGaussianMixture(4, random_state=0).fit(X))
    perm = alignment_permutation(four, ref)
    assert sorted(perm) == [0, 1, 2, 3]
    for p in range(3):
        assert np.linalg.norm(four.means_[perm[p]] - ref.means_[p]) < \
            np.linalg.norm(four.means_[perm[p]] - ref.means_[(p + 1) % 3])


@pytest.mark.parametrize("spec, expected", [
    ("1..4", [1, 2, 3, 4]), ("3", [3]), ("2,4,8", [2, 4, 8]), ("1..2,5", [1, 2, 5]),
    (3, [3]), ([4, 2], [2, 4]),
])
def test_parse_components(spec, expected):
    assert parse_components(spec) == expected


@pytest.mark.parametrize("spec", ["5..2", "0..3", "a..b", "", "1-4", [1, "x"], "1..100000"])
def test_parse_components_rejects(spec):
    with pytest.raises(DistgmmInputError, match="--components"):
        parse_components(spec)


def write_job(tmp_path, text: str) -> str:
    path = tmp_path / "job.toml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("text, expected", [
    ("[[step]]\nrun = 'fit'\nstore = 'a'\nmodel = 'b'\ncomponents = 2\ncomponets = 3\n",
     "step 1 (fit): unknown key 'componets'; allowed: align_to, bayesian, checkpoint, components"),
    ("[[step]]\nrun = 'shell'\n", "step 1: unknown step 'shell' (key 'run'); allowed: generate"),
    ("[[step]]\nrun = 'label'\nmodel = 'm'\n", "missing required key(s) store"),
    ("[[step]]\nrun = 'fit'\nstore = 'a'\nmodel = 'b'\ncomponents = 'two'\n",
     "key 'components': Input should be a valid integer, got string 'two'"),
    ("[[step]]\nrun = 'label'\nmodel = '${nope}'\nstore = 's'\n", "undefined variable ${nope}"),
    ("[jobs]\nx = 1\n", "unknown top-level key 'jobs'; allowed: job, vars, step"),
    ("[job]\nname = 'x'\n[[step]]\nrun = 'label'\n", "unknown key 'name' in [job]"),
    ("[vars]\n", "no steps"),
    ("[[step]\nrun = 'fit'\n", "is not valid TOML"),
])
def test_load_job_rejects(tmp_path, text, expected):
    with pytest.raises(DistgmmInputError) as info:
        load_job(write_job(tmp_path, text))
    assert expected in str(info.value)


def test_load_job_variables_and_paths(tmp_path):
    path = write_job(tmp_path, """
[vars]
work = "out"
k = "2"
[[step]]
run = "fit"
store = "${work}/p.zarr"
model = "s3://bucket/${work}.npz"
components = "${k}"
""")
    with pytest.raises(DistgmmInputError, match=r"key 'model': s3://bucket/out\.npz is "
                                                r"outside the job's directory"):
        load_job(path, environ={})  # a URL the operator did not name
    job = load_job(path, environ={}, allow_outside=True)
    options = job.steps[0].options
    assert options == {"store": str(tmp_path / "out" / "p.zarr"),
                       "model": "s3://bucket/out.npz", "components": 2}
    job = load_job(path, {"k": "5"}, environ={"DISTGMM_VAR_work": "/abs", "DISTGMM_VAR_k": "3"},
                   allow_outside=True)
    assert job.steps[0].options["store"] == "/abs/p.zarr"
    assert job.steps[0].options["components"] == 5  # --set beats the environment
    with pytest.raises(DistgmmInputError, match="declares no variable 'kk'"):
        load_job(path, {"kk": "5"})


def test_run_job_and_select(tmp_path, client):
    np.savetxt(tmp_path / "data.txt", X)
    path = write_job(tmp_path, """
[[step]]
run = "ingest"
source = "data.txt"
store = "p.zarr"
[[step]]
run = "select"
store = "p.zarr"
model = "best.npz"
components = "2..4"
covariance_type = "full,diag"
seed = 0
[[step]]
run = "label"
model = "best.npz"
store = "p.zarr"
""")
    report = run_job(load_job(path), client=client)
    kinds = [step.kind for step, _ in report.results]
    assert kinds == ["ingest", "select", "label"]
    selected = report.results[1][1]
    assert len(selected.records) == 6
    best = min(selected.records, key=lambda r: r["bic"])
    assert selected.n_components == 3
    assert (best["n_components"], best["covariance_type"]) == (3, selected.covariance_type)
    assert os.path.exists(tmp_path / "best.selection.png")
    assert report.results[2][1].chunks_done == 1
    assert report.to_dict()["steps"][2]["run"] == "label"


def test_select_store_rejects_more_components_than_rows(tmp_path, client):
    np.savetxt(tmp_path / "tiny.txt", X[:3])
    distgmm.store.ingest(str(tmp_path / "tiny.txt"), str(tmp_path / "t.zarr"))
    with pytest.raises(DistgmmInputError, match="only 3 rows"):
        select_store(str(tmp_path / "t.zarr"), str(tmp_path / "m.npz"), components="4..5",
                     client=client)


def test_bayesian_models_align_only_under_a_dirichlet_distribution_prior():
    """Renumbering a Bayesian mixture permutes its posterior too (the same model, new ids);
    under a Dirichlet-process prior the order is part of the model, so it is refused."""
    from sklearn.datasets import load_iris

    from distgmm import BayesianGaussianMixture
    from distgmm.errors import DistgmmInputError
    from distgmm.jobs import permute_components

    X = load_iris().data
    model = BayesianGaussianMixture(4, weight_concentration_prior_type="dirichlet_distribution",
                                    random_state=0).fit(X)
    before, scores = model.predict(X), model.score_samples(X)
    perm = np.array([2, 0, 3, 1])
    permute_components(model, perm)
    np.testing.assert_array_equal(perm[model.predict(X)], before)
    np.testing.assert_allclose(model.score_samples(X), scores, rtol=1e-12)
    process = BayesianGaussianMixture(4, random_state=0).fit(X)
    with pytest.raises(DistgmmInputError, match="Dirichlet-process prior"):
        permute_components(process, perm)


def test_step_models_have_the_options_of_their_commands():
    """The job schema and the command line cannot drift apart: every step kind takes exactly
    its command's options (``storage_option`` as ``storage_options``), less the options of
    the run itself (cluster, output, lock wait), plus the keys only a job has (a label
    step's ``stop_unless_drift``: end the job there when there is no drift)."""
    import typer.main

    from distgmm.cli import app
    from distgmm.jobs._spec import STEP_MODELS

    per_run = {"scheduler", "workers", "threads_per_worker", "memory_limit", "tls_ca_file",
               "tls_cert", "tls_key", "scheduler_timeout", "verbose", "quiet", "json",
               "lock_wait"}
    job_only = {"label": {"stop_unless_drift"}}
    commands = typer.main.get_command(app).commands
    for kind, model in STEP_MODELS.items():
        options = {"storage_options" if p.name == "storage_option" else p.name
                   for p in commands[kind].params} - per_run
        assert options | job_only.get(kind, set()) == set(model.model_fields) - {"run"}, kind
