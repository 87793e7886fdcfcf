"""Model files: round trip, stable fingerprint, and refusal of corrupt, tampered or inconsistent files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.mixture import GaussianMixture as SkGaussianMixture

import distgmm
from distgmm._serialize import CorruptFileError, load_arrays, save_arrays
from distgmm.errors import DistgmmInputError
from distgmm.store import read_model
from distgmm.store._model import MODEL_FORMAT_VERSION

RNG = np.random.default_rng(0)
X = np.vstack([RNG.normal(0, 1, (200, 3)), RNG.normal(5, 1.5, (200, 3))])


def fitted(covariance_type: str = "full") -> distgmm.GaussianMixture:
    """A distgmm estimator carrying scikit-learn's fitted parameters (no cluster needed)."""
    ref = SkGaussianMixture(2, covariance_type=covariance_type, random_state=0).fit(X)
    model = distgmm.GaussianMixture(2, covariance_type=covariance_type, random_state=0)
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_", "precisions_",
                 "converged_", "n_iter_", "lower_bound_", "n_features_in_"):
        setattr(model, name, getattr(ref, name))
    model.lower_bounds_ = [float(ref.lower_bound_)]
    model.lower_bounds_per_init_ = [[float(ref.lower_bound_)]]
    return model, ref


@pytest.mark.parametrize("covariance_type", ["full", "tied", "diag", "spherical"])
def test_round_trip_predicts_like_the_original(tmp_path, covariance_type):
    model, ref = fitted(covariance_type)
    path = tmp_path / "m.npz"
    digest = distgmm.save_model(model, path, provenance={"store": "x.zarr"})
    loaded = read_model(path)
    assert loaded.fingerprint == digest and loaded.provenance == {"store": "x.zarr"}
    again = distgmm.load_model(path)
    assert again.covariance_type == covariance_type and again.n_components == 2
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_", "precisions_"):
        np.testing.assert_array_equal(getattr(again, name), getattr(model, name))
    np.testing.assert_array_equal(again.predict(X), ref.predict(X))
    np.testing.assert_allclose(again.predict_proba(X), ref.predict_proba(X), atol=1e-12)
    assert again.converged_ == ref.converged_ and again.lower_bound_ == ref.lower_bound_


def test_fingerprint_depends_on_content_only(tmp_path):
    model, _ = fitted()
    a = distgmm.save_model(model, tmp_path / "a.npz")
    b = distgmm.save_model(model, tmp_path / "b.npz")
    assert a == b  # no time stamps or paths inside: the same model, the same fingerprint
    model.means_ = model.means_ + 1e-9
    assert distgmm.save_model(model, tmp_path / "c.npz") != a


def _rewrite(path, edit_arrays=None, edit_meta=None):
    """Re-save a model file with edited content and a *valid* checksum."""
    arrays, meta, _ = load_arrays(path)
    if edit_arrays:
        edit_arrays(arrays)
    if edit_meta:
        edit_meta(meta)
    save_arrays(path, arrays, meta)


@pytest.mark.parametrize("edit_arrays, edit_meta, expected", [
    (None, lambda m: m.update(kind="distgmm-checkpoint"), "is not a distgmm model file"),
    (None, lambda m: m.update(format_version=MODEL_FORMAT_VERSION + 1), "upgrade distgmm"),
    (None, lambda m: m.update(scoring={"sketch": {}}), "invalid scoring block"),
    (None, lambda m: m.update(covariance_type="banana"), "covariance type 'banana'"),
    (None, lambda m: m.update(n_features=4), "expected (2, 4) float64"),
    (None, lambda m: m.pop("fit"), "metadata keys missing ['fit']"),
    (lambda a: a.update(means=a["means"][:, :2]), None, "has means of shape (2, 2)"),
    (lambda a: a.update(extra=np.zeros(2)), None, "holds arrays"),
    (lambda a: a.update(weights=np.array([0.7, 0.7])), None, "not a distribution"),
    (lambda a: a["covariances"].__setitem__((0, 0, 0), 99.0), None, "do not match"),
    (lambda a: a["means"].__setitem__((0, 0), np.nan), None, "non-finite"),
])
def test_inconsistent_files_are_refused(tmp_path, edit_arrays, edit_meta, expected):
    model, _ = fitted()
    path = tmp_path / "m.npz"
    distgmm.save_model(model, path)
    _rewrite(path, edit_arrays, edit_meta)
    with pytest.raises(DistgmmInputError) as info:
        distgmm.load_model(path)
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_tampered_truncated_and_foreign_files_are_refused(tmp_path):
    model, _ = fitted()
    path = tmp_path / "m.npz"
    distgmm.save_model(model, path)
    raw = path.read_bytes()
    # Edit a stored mean and write a well-formed .npz, keeping the old checksum.
    with np.load(path, allow_pickle=False) as npz:
        content = {name: npz[name] for name in npz.files}
    content["means"] = content["means"] + 0.5
    with open(path, "wb") as f:
        np.savez(f, **content)
    with pytest.raises(CorruptFileError, match="failed its checksum"):
        distgmm.load_model(path)
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CorruptFileError, match="truncated"):
        distgmm.load_model(path)
    np.save(tmp_path / "plain.npy", np.zeros(3))
    (tmp_path / "plain.npz").write_bytes((tmp_path / "plain.npy").read_bytes())
    with pytest.raises(CorruptFileError):
        distgmm.load_model(tmp_path / "plain.npz")
    with pytest.raises(DistgmmInputError, match="does not exist"):
        distgmm.load_model(tmp_path / "nothing.npz")


def test_file_is_plain_npz_without_pickle(tmp_path):
    model, _ = fitted()
    path = tmp_path / "m.npz"
    distgmm.save_model(model, path, provenance={"note": "ok"})
    with np.load(path, allow_pickle=False) as npz:
        assert sorted(npz.files) == ["__meta__", "__sha256__", "covariances", "means",
                                     "precisions_cholesky", "weights"]
        meta = json.loads(npz["__meta__"].tobytes())
    assert meta["kind"] == "distgmm-model" and meta["format_version"] == MODEL_FORMAT_VERSION
    assert meta["estimator"]["random_state"] == 0 and meta["provenance"] == {"note": "ok"}


def test_training_scores_round_trip_and_older_files_have_none(tmp_path):
    model = distgmm.GaussianMixture(2, random_state=0).fit(X)
    profile = model.training_scores_
    path = tmp_path / "m.npz"
    distgmm.save_model(model, path)
    again = distgmm.load_model(path).training_scores_
    assert again.to_dict() == profile.to_dict()
    np.testing.assert_array_equal(again.sketch.counts, profile.sketch.counts)
    # a version 2 file (written before scoring blocks existed) reads with none
    _rewrite(path, edit_meta=lambda m: (m.pop("scoring"), m.update(format_version=2)))
    assert distgmm.load_model(path).training_scores_ is None
    # ... and a version 2 file with a scoring block is refused (the key is version 3's)
    distgmm.save_model(model, path)
    _rewrite(path, edit_meta=lambda m: m.update(format_version=2))
    with pytest.raises(DistgmmInputError, match="unexpected \\['scoring'\\]"):
        distgmm.load_model(path)
