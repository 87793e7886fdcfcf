"""Data in and out: foreign Zarr and xarray input, ingest sources (CSV, Parquet datasets, Zarr,
npy; local and on S3), key columns, dropped rows, model files and exports on S3."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import zarr

import distgmm
from distgmm.errors import DistgmmInputError
from distgmm.jobs import fit_store, label_store
from distgmm.jobs._export import export_labels
from distgmm.store import ingest, open_points, read_model, save_model, store_info

RNG = np.random.default_rng(7)
X = np.vstack([RNG.normal(0, 1, (400, 3)), RNG.normal(6, 1, (400, 3))])


# --- foreign Zarr ------------------------------------------------------------------------

@pytest.mark.parametrize("zarr_format", [2, 3])
def test_foreign_array_chunked_along_both_axes_reads_as_row_bands(tmp_path, zarr_format):
    url = str(tmp_path / "a.zarr")
    array = zarr.create_array(url, shape=X.shape, chunks=(70, 2), dtype="f4",
                              zarr_format=zarr_format)
    array[:] = X
    points = open_points(url)
    assert points.foreign == f"Zarr v{zarr_format} array" and points.group is None
    assert points.points.numblocks[1] == 1
    assert all(c % 70 == 0 for c in points.points.chunks[0][:-1])
    np.testing.assert_array_equal(points.points.compute(), X.astype("f4"))


def test_dask_to_zarr_integer_array_is_read_as_float64(tmp_path):
    import dask.array as da

    url = str(tmp_path / "ints.zarr")
    da.from_array(np.arange(40).reshape(20, 2), chunks=(7, 1)).to_zarr(url)
    points = open_points(url)
    assert points.dtype == np.float64
    np.testing.assert_array_equal(points.points.compute(), np.arange(40.).reshape(20, 2))


def test_xarray_dataset_variable_by_path_or_name_and_its_coordinate_names(tmp_path):
    import xarray as xr

    url = str(tmp_path / "ds.zarr")
    xr.Dataset({"X": (("sample", "band"), X), "y": (("sample",), np.arange(len(X)))},
               coords={"band": ["red", "green", "blue"]}).to_zarr(url)
    with pytest.raises(DistgmmInputError, match=r"Zarr group \(e\.g\. an xarray Dataset\).*"
                       r"X \(800, 3\) float64.*ds\.zarr/X or --variable X"):
        open_points(url)
    for points in (open_points(f"{url}/X"), open_points(url, variable="X")):
        assert points.columns == ["red", "green", "blue"]
        assert "xarray variable (sample/band)" in points.foreign
        np.testing.assert_array_equal(points.points.compute(), X)
    with pytest.raises(DistgmmInputError, match="1-D Zarr array.*needs a 2-D"):
        open_points(url, variable="y")


def test_foreign_array_fits_and_refuses_labels_with_the_fix(tmp_path, client):
    url = str(tmp_path / "a.zarr")
    zarr.create_array(url, shape=X.shape, chunks=(100, 3), dtype="f8")[:] = X
    report = fit_store(url, str(tmp_path / "m.npz"), n_components=2, seed=0, client=client)
    assert report.n_rows == len(X) and report.converged
    with pytest.raises(DistgmmInputError, match="never writes into them.*`distgmm ingest "
                       r".*a.zarr points.zarr`\), then label that store"):
        label_store(str(tmp_path / "m.npz"), url, name="x", client=client)
    info = store_info(url, stats=False)
    assert info["foreign"] == "Zarr v3 array" and info["labels"] == [] and info["n_rows"] == 800


# --- ingest sources ----------------------------------------------------------------------

def test_csv_written_by_pandas_with_missing_values_keeps_ids_and_records_dropped_rows(tmp_path):
    frame = pd.DataFrame({"key": [f"r{i}" for i in range(len(X))], "a": X[:, 0],
                          "b": X[:, 1], "c": X[:, 2]})
    frame.loc[[3, 500], "b"] = np.nan
    frame.to_csv(tmp_path / "p.csv", index=False)
    with pytest.raises(DistgmmInputError, match=r"p\.csv, row 4 \(line 5\), column 3 \(b\): "
                       r"empty \(a missing value\).*--drop-nonfinite"):
        ingest(str(tmp_path / "p.csv"), str(tmp_path / "bad.zarr"), id_column="key")
    assert not os.path.exists(tmp_path / "bad.zarr")
    report = ingest(str(tmp_path / "p.csv"), str(tmp_path / "s.zarr"), id_column="key",
                    drop_nonfinite=True, chunk_rows=256)
    assert (report.rows_dropped, report.dropped_rows, report.n_rows) == (2, [0, 2], 798)
    points = open_points(str(tmp_path / "s.zarr"))
    keep = np.setdiff1d(np.arange(len(X)), [3, 500])
    np.testing.assert_array_equal(points.points.compute(), X[keep])
    assert points.ids.compute().tolist() == [f"r{i}" for i in keep]
    assert points.columns == ["a", "b", "c"]
    assert points.group["dropped_rows"][:].tolist() == [3, 500]
    entry = points.group["points"].attrs["row_log"][-1]
    assert entry["dropped_rows"] == [0, 2] and entry["id_column"] == "key"


def test_parquet_dataset_with_hive_partitions_in_file_order_and_integer_ids(tmp_path):
    frame = pd.DataFrame({"id": np.arange(len(X)), "x": X[:, 0], "y": X[:, 1], "z": X[:, 2],
                          "day": np.repeat(["2024-01-01", "2024-01-02"], len(X) // 2)})
    frame.to_parquet(tmp_path / "ds", partition_cols=["day"])
    report = ingest(str(tmp_path / "ds"), str(tmp_path / "s.zarr"), id_column="id")
    points = open_points(str(tmp_path / "s.zarr"))
    assert report.format == "parquet" and points.columns == ["x", "y", "z"]
    assert points.ids.dtype == np.int64
    np.testing.assert_array_equal(points.ids.compute(), np.arange(len(X)))
    np.testing.assert_array_equal(points.points.compute(), X)


def test_zarr_and_npy_sources_and_appends_that_need_the_same_key(tmp_path):
    zarr.create_array(str(tmp_path / "src.zarr"), shape=X.shape, chunks=(50, 1),
                      dtype="f8")[:] = X
    ingest(str(tmp_path / "src.zarr"), str(tmp_path / "s.zarr"))
    np.save(tmp_path / "more.npy", X[:10])
    ingest(str(tmp_path / "more.npy"), str(tmp_path / "s.zarr"), append=True)
    np.testing.assert_array_equal(open_points(str(tmp_path / "s.zarr")).points.compute(),
                                  np.vstack([X, X[:10]]))
    pd.DataFrame({"k": [1, 2], "a": [0.0, 1.0], "b": [1.0, 2.0], "c": [2.0, 3.0]}).to_csv(
        tmp_path / "keyed.csv", index=False)
    with pytest.raises(DistgmmInputError, match="keeps no key column: drop --id-column"):
        ingest(str(tmp_path / "keyed.csv"), str(tmp_path / "s.zarr"), append=True,
               id_column="k")
    with pytest.raises(DistgmmInputError, match="--id-column applies to CSV and Parquet"):
        ingest(str(tmp_path / "more.npy"), str(tmp_path / "t.zarr"), id_column="k")


def test_sources_and_stores_on_s3(tmp_path, s3_options, client):
    import s3fs

    fs = s3fs.S3FileSystem(**s3_options)
    frame = pd.DataFrame({"a": X[:, 0], "b": X[:, 1], "c": X[:, 2]})
    with fs.open("distgmm-test/io/p.csv", "w") as handle:
        frame.to_csv(handle, index=False)
    frame.to_parquet("s3://distgmm-test/io/p.parquet", storage_options=s3_options)
    np.save(tmp_path / "x.npy", X)
    fs.put(str(tmp_path / "x.npy"), "distgmm-test/io/x.npy")
    for name in ("p.csv", "p.parquet", "x.npy"):
        ingest(f"s3://distgmm-test/io/{name}", str(tmp_path / f"{name}.zarr"),
               source_options=s3_options)
        np.testing.assert_allclose(open_points(str(tmp_path / f"{name}.zarr")).points.compute(),
                                   X, rtol=1e-15)
    # a remote source into a remote store, then a fit whose model and checkpoint go to S3
    store = "s3://distgmm-test/io/s.zarr"
    ingest("s3://distgmm-test/io/p.parquet", store, storage_options=s3_options)
    report = fit_store(store, "s3://distgmm-test/io/models/m.npz", n_components=2, seed=0,
                       checkpoint_dir="s3://distgmm-test/io/ckpt", client=client,
                       storage_options=s3_options)
    assert fs.isfile("distgmm-test/io/models/m.npz") and not fs.exists("distgmm-test/io/ckpt/m.ckpt.npz")
    assert read_model("s3://distgmm-test/io/models/m.npz", s3_options).fingerprint == \
        report.fingerprint
    assert not os.path.exists("s3:")  # never a local directory named after the URL


def test_model_urls_are_never_local_paths(tmp_path, s3_options):
    model = distgmm.GaussianMixture(2, random_state=0).fit(X)
    with pytest.raises(DistgmmInputError, match="Protocol not known: nosuch"):
        save_model(model, "nosuch://bucket/m.npz")
    with pytest.raises(DistgmmInputError, match="does not exist; check the path"):
        read_model("s3://distgmm-test/missing.npz", s3_options)
    from distgmm.store._model import check_model_destination

    with pytest.raises(DistgmmInputError, match="no-such-bucket does not exist; create the "
                       "bucket"):
        check_model_destination("s3://no-such-bucket/m.npz", overwrite=False,
                                storage_options=s3_options)


# --- export ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def labelled(tmp_path_factory, client):
    """A store of 800 rows in 4 chunks with string ids, labelled with probabilities."""
    directory = tmp_path_factory.mktemp("labelled")
    pd.DataFrame({"key": [f"k{i}" for i in range(len(X))], "a": X[:, 0], "b": X[:, 1],
                  "c": X[:, 2]}).to_csv(directory / "p.csv", index=False)
    store = str(directory / "s.zarr")
    ingest(str(directory / "p.csv"), store, id_column="key", chunk_rows=200)
    fit_store(store, str(directory / "m.npz"), n_components=2, seed=0, client=client)
    label_store(str(directory / "m.npz"), store, name="run", proba=True, client=client)
    return store, str(directory / "m.npz")


def test_export_parquet_dataset_read_by_pandas_duckdb_and_pyarrow(tmp_path, labelled, client):
    import duckdb
    import pyarrow.dataset as ds

    store, model = labelled
    out = str(tmp_path / "labels.parquet")
    report = export_labels(store, out, name="run", proba=True, client=client)
    assert (report.layout, report.n_files, report.key, report.n_rows) == ("dataset", 4, "id", 800)
    assert sorted(os.listdir(out)) == ["_SUCCESS"] + [f"part-{i:05d}.parquet" for i in range(4)]
    expected = distgmm.load_model(model).predict_proba(X)
    frame = pd.read_parquet(out)
    assert frame.columns.tolist() == ["id", "label", "proba_0", "proba_1"]
    assert frame["id"].tolist() == [f"k{i}" for i in range(len(X))]
    np.testing.assert_array_equal(frame["label"], expected.argmax(axis=1))
    np.testing.assert_allclose(frame[["proba_0", "proba_1"]], expected, atol=1e-6)
    rows = duckdb.sql(f"select count(*), sum(label) from read_parquet('{out}/*.parquet')")
    assert rows.fetchall()[0] == (800, int(frame["label"].sum()))
    assert ds.dataset(out, format="parquet").to_table().num_rows == 800


def test_export_csv_and_its_destination_rules(tmp_path, labelled, client):
    import duckdb

    store, _ = labelled
    out = str(tmp_path / "labels.csv")
    export_labels(store, out, name="run", client=client)
    frame = pd.concat(pd.read_csv(os.path.join(out, n)) for n in sorted(os.listdir(out))
                      if n.endswith(".csv"))
    assert frame.columns.tolist() == ["id", "label"] and len(frame) == 800
    assert duckdb.sql(f"select count(*) from read_csv('{out}/*.csv')").fetchall()[0] == (800,)
    with pytest.raises(DistgmmInputError, match="already exists; pass --overwrite"):
        export_labels(store, out, name="run", client=client)
    export_labels(store, out, name="run", overwrite=True, client=client)
    (tmp_path / "notes.csv").write_text("my notes\n")
    with pytest.raises(DistgmmInputError, match="not an earlier csv export; refusing"):
        export_labels(store, str(tmp_path / "notes.csv"), name="run", overwrite=True,
                      client=client)
    with pytest.raises(DistgmmInputError, match="has no labels/nope"):
        export_labels(store, str(tmp_path / "x.csv"), name="nope", client=client)
    with pytest.raises(DistgmmInputError, match="cannot tell the format"):
        export_labels(store, str(tmp_path / "x.txt"), name="run", client=client)


def test_export_refuses_labels_that_do_not_cover_appended_rows(tmp_path, client):
    np.save(tmp_path / "x.npy", X)
    store = str(tmp_path / "s.zarr")
    ingest(str(tmp_path / "x.npy"), store, chunk_rows=800)
    fit_store(store, str(tmp_path / "m.npz"), n_components=2, seed=0, client=client)
    label_store(str(tmp_path / "m.npz"), store, name="a", client=client)
    out = str(tmp_path / "one.parquet")
    report = export_labels(store, out, name="a", client=client)
    assert report.layout == "file" and os.path.isfile(out) and report.key == "row"
    assert pd.read_parquet(out)["row"].tolist() == list(range(800))
    ingest(str(tmp_path / "x.npy"), store, append=True)
    with pytest.raises(DistgmmInputError, match=r"cover 1 of 2 row chunks.*distgmm label"):
        export_labels(store, str(tmp_path / "two.parquet"), name="a", client=client)
    label_store(str(tmp_path / "m.npz"), store, name="a", client=client)
    with pytest.raises(DistgmmInputError, match="has no proba/a"):
        export_labels(store, str(tmp_path / "two.parquet"), name="a", proba=True,
                      client=client)
    assert not os.path.exists(tmp_path / "two.parquet")


def test_export_to_s3(labelled, s3_options, client):
    import s3fs

    store, _ = labelled
    out = "s3://distgmm-test/exports/labels.parquet"
    export_labels(store, out, name="run", proba=True, client=client, storage_options=s3_options)
    fs = s3fs.S3FileSystem(**s3_options)
    assert fs.isfile("distgmm-test/exports/labels.parquet/_SUCCESS")
    assert len(pd.read_parquet(out, storage_options=s3_options)) == 800
