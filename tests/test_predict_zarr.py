"""Tests for distgmm.predict_to_zarr: labels of data on the cluster written to Zarr by the workers."""

from __future__ import annotations

import os

import dask.array as da
import numpy as np
import pytest
import zarr
from distributed import get_task_stream, wait

import distgmm
from distgmm.errors import DistgmmInputError


def _data(n=600, seed=0):
    rng = np.random.default_rng(seed)
    centers = np.array([[0.0, 0.0, 0.0], [6.0, 6.0, 0.0], [0.0, 7.0, 5.0]])
    return centers[rng.integers(0, 3, n)] + rng.normal(size=(n, 3))


@pytest.fixture(scope="module")
def fitted(client):
    X = _data()
    return X, distgmm.GaussianMixture(3, covariance_type="full", random_state=0).fit(X)


def _persisted(client, X, rows):
    dX = client.persist(da.from_array(X, chunks=(rows, X.shape[1])))
    wait(dX)
    return dX


def _listing(directory) -> list[str]:
    return sorted(os.listdir(directory))


@pytest.mark.parametrize("rows", [70, 8])  # 9 chunks (the last shorter), 75 chunks
def test_persisted_points_are_labelled_in_place_with_predict_labels(tmp_path, client, fitted,
                                                                      rows):
    """Labels equal predict's; the output has X's row chunks; no tasks run (in place)."""
    X, gm = fitted
    dX = _persisted(client, X, rows)
    with get_task_stream(client) as stream:
        out = distgmm.predict_to_zarr(gm, dX, str(tmp_path / "labels.zarr"), client=client)
    assert not [t for t in stream.data if "write_chunk" in str(t["key"])]
    assert out.dtype == np.int32 and out.shape == (600,) and out.chunks == (rows,)
    np.testing.assert_array_equal(out[:], gm.predict(X))
    assert _listing(tmp_path) == ["labels.zarr"], "no temporary left beside the output"


def test_streamed_and_numpy_points_give_the_same_labels(tmp_path, client, fitted):
    X, gm = fitted
    streamed = da.from_array(X, chunks=(128, 3))  # not persisted: one task per chunk
    a = distgmm.predict_to_zarr(gm, streamed, str(tmp_path / "a.zarr"), client=client)
    b = distgmm.predict_to_zarr(gm, X, str(tmp_path / "b.zarr"), client=client)
    np.testing.assert_array_equal(a[:], gm.predict(X))
    np.testing.assert_array_equal(b[:], gm.predict(X))


def test_scikit_learn_model_and_overwrite(tmp_path, client, fitted):
    from sklearn.mixture import GaussianMixture

    X, _ = fitted
    sk = GaussianMixture(3, random_state=0).fit(X)
    url = str(tmp_path / "labels.zarr")
    distgmm.predict_to_zarr(sk, X[:100], url, client=client)
    out = distgmm.predict_to_zarr(sk, X, url, overwrite=True, client=client)
    assert out.shape == (600,)
    np.testing.assert_array_equal(out[:], sk.predict(X))
    assert _listing(tmp_path) == ["labels.zarr"]


def test_existing_destination_is_refused_and_kept(tmp_path, client, fitted):
    X, gm = fitted
    url = str(tmp_path / "labels.zarr")
    first = distgmm.predict_to_zarr(gm, X[:50], url, client=client)[:]
    with pytest.raises(DistgmmInputError, match="already exists; pass overwrite=True"):
        distgmm.predict_to_zarr(gm, X, url, client=client)
    np.testing.assert_array_equal(zarr.open_array(url, mode="r")[:], first)
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(DistgmmInputError, match="is not a Zarr array; refusing to touch it"):
        distgmm.predict_to_zarr(gm, X, str(other), overwrite=True, client=client)
    assert (other / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("case, message", [
    ("features", "X has 2 features but the model was fitted on 3"),
    ("irregular", r"irregular row chunks .*rechunk it first, e.g. X.rechunk\(\{0: 100\}\)"),
    ("unfitted", "GaussianMixture is not fitted; call fit first"),
    ("one-d", "Expected 2D array, got 1D array"),
])
def test_bad_input_is_a_clear_error_and_writes_nothing(tmp_path, client, fitted, case, message):
    X, gm = fitted
    model, points = gm, X
    if case == "features":
        points = X[:, :2]
    elif case == "irregular":
        points = da.concatenate([da.from_array(X[:100], chunks=100),
                                 da.from_array(X[100:130], chunks=30),
                                 da.from_array(X[130:], chunks=100)])
    elif case == "unfitted":
        model = distgmm.GaussianMixture(3)
    elif case == "one-d":
        points = X[:, 0]
    with pytest.raises(DistgmmInputError, match=message):
        distgmm.predict_to_zarr(model, points, str(tmp_path / "labels.zarr"), client=client)
    assert _listing(tmp_path) == []


def _fail_on_third(block, block_info=None):
    if block_info[0]["chunk-location"][0] == 2:
        raise RuntimeError("disk went away")
    return block


def test_a_chunk_that_fails_leaves_no_output(tmp_path, client, fitted):
    """An error while the workers write removes everything written so far."""
    X, gm = fitted
    failing = da.from_array(X, chunks=(100, 3)).map_blocks(_fail_on_third, dtype=X.dtype)
    with pytest.raises(RuntimeError, match="disk went away"):
        distgmm.predict_to_zarr(gm, failing, str(tmp_path / "labels.zarr"), client=client)
    assert _listing(tmp_path) == []
