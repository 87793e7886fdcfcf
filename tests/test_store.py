"""Tests for distgmm.store: round trips, append, generate, info, label state, bad input, S3."""

from __future__ import annotations

import os

import numpy as np
import pytest
import zarr
from distributed import Client, LocalCluster

from cluster_helpers import KMEANS_SAMPLES
from distgmm.errors import DistgmmInputError
from distgmm.store import StoreIntegrityError
from distgmm.store import (
    append,
    generate,
    ingest,
    label_state,
    open_points,
    prepare_labels,
    record_chunks_done,
    store_info,
)

KMEANS = KMEANS_SAMPLES


def _leftovers(directory) -> list[str]:
    """Anything a failed write left in ``directory`` (stores or hidden temporaries)."""
    return sorted(n for n in os.listdir(directory) if n.endswith(".zarr") or "distgmm-tmp" in n)


# --- round trips -------------------------------------------------------------------------

def test_text_round_trip_is_exact(tmp_path):
    report = ingest(KMEANS, str(tmp_path / "k.zarr"), chunk_rows=7)
    store = open_points(str(tmp_path / "k.zarr"))
    expected = np.loadtxt(KMEANS)
    assert report.n_rows == 30 and store.n_rows == 30 and store.n_features == 2
    assert store.chunk_rows == 7 and store.points.chunks[0] == (7, 7, 7, 7, 2)
    assert store.dtype == np.float64
    np.testing.assert_array_equal(store.points.compute(), expected)
    assert store.weights is None and store.truth is None


def test_text_comments_and_blank_lines_like_loadtxt(tmp_path):
    src = tmp_path / "c.txt"
    src.write_text("# header comment\n1 2\n\n3 4  # trailing\n   \n5 6\n")
    ingest(str(src), str(tmp_path / "c.zarr"))
    np.testing.assert_array_equal(open_points(str(tmp_path / "c.zarr")).points.compute(),
                                  np.loadtxt(str(src)))


@pytest.mark.parametrize("columns, header_line, expected_cols", [
    (None, "a,b,c", [0, 1, 2]),
    ("c,a", "a,b,c", [2, 0]),
    ("2,0", None, [2, 0]),
    (None, None, [0, 1, 2]),
])
def test_csv_round_trip_with_and_without_header(tmp_path, columns, header_line, expected_cols):
    rng = np.random.default_rng(0)
    data = rng.normal(size=(50, 3))
    lines = ([header_line] if header_line else []) + [",".join(repr(float(v)) for v in row) for row in data]
    src = tmp_path / "d.csv"
    src.write_text("\n".join(lines) + "\n")
    ingest(str(src), str(tmp_path / "d.zarr"), columns=columns, chunk_rows=16)
    store = open_points(str(tmp_path / "d.zarr"))
    np.testing.assert_array_equal(store.points.compute(), data[:, expected_cols])
    if header_line:
        assert store.columns == [["a", "b", "c"][i] for i in expected_cols]


def test_csv_skips_unselected_text_column(tmp_path):
    src = tmp_path / "mixed.csv"
    src.write_text("name,x,y\nfoo,1.5,2\nbar,3,4.25\n")
    ingest(str(src), str(tmp_path / "m.zarr"), columns="x,y")
    np.testing.assert_array_equal(open_points(str(tmp_path / "m.zarr")).points.compute(),
                                  [[1.5, 2.0], [3.0, 4.25]])


def test_npy_round_trip_keeps_float32(tmp_path):
    data = np.random.default_rng(1).normal(size=(1000, 4)).astype(np.float32)
    np.save(tmp_path / "p.npy", data)
    report = ingest(str(tmp_path / "p.npy"), str(tmp_path / "p.zarr"), chunk_rows=300,
                    columns=[3, 1])
    store = open_points(str(tmp_path / "p.zarr"))
    assert store.dtype == np.float32 and report.dtype == "float32"
    np.testing.assert_array_equal(store.points.compute(), data[:, [3, 1]])


def test_parquet_round_trip_by_column_name(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rng = np.random.default_rng(2)
    table = pa.table({"id": np.arange(500), "u": rng.normal(size=500), "v": rng.normal(size=500),
                      "tag": ["t"] * 500})
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=120)
    ingest(str(tmp_path / "t.parquet"), str(tmp_path / "t.zarr"), columns="v,u", chunk_rows=64)
    store = open_points(str(tmp_path / "t.zarr"))
    np.testing.assert_array_equal(store.points.compute(),
                                  np.column_stack([table["v"].to_numpy(), table["u"].to_numpy()]))
    assert store.columns == ["v", "u"]


# --- append ------------------------------------------------------------------------------

def test_append_rewrites_partial_chunk_and_keeps_old_rows(tmp_path):
    url = str(tmp_path / "a.zarr")
    ingest(KMEANS, url, chunk_rows=7)  # 30 rows: the last chunk holds 2 of 7
    report = append(KMEANS, url)
    expected = np.loadtxt(KMEANS)
    store = open_points(url)
    assert (report.rows_before, report.rows_written, report.n_rows) == (30, 30, 60)
    np.testing.assert_array_equal(store.points.compute(), np.vstack([expected, expected]))
    log = store.group["points"].attrs["row_log"]
    assert [(e["op"], e["rows_before"], e["rows_after"]) for e in log] == [
        ("ingest", 0, 30), ("append", 30, 60)]


def test_append_extends_truth_with_unknown_label(tmp_path, client):
    url = str(tmp_path / "g.zarr")
    generate(url, n_points=100, n_features=2, n_components=2, seed=3, chunk_rows=32,
             dtype="float64")
    before = open_points(url)
    old_truth = before.truth.compute()
    np.save(tmp_path / "more.npy", np.ones((10, 2)))
    append(str(tmp_path / "more.npy"), url)
    after = open_points(url)
    truth = after.truth.compute()
    np.testing.assert_array_equal(truth[:100], old_truth)
    assert (truth[100:] == -1).all() and after.n_rows == 110


def test_append_refuses_wrong_columns_and_dtype(tmp_path):
    url = str(tmp_path / "s.zarr")
    np.save(tmp_path / "f32.npy", np.zeros((5, 2), np.float32))
    ingest(str(tmp_path / "f32.npy"), url)
    np.save(tmp_path / "three.npy", np.zeros((5, 3), np.float32))
    with pytest.raises(DistgmmInputError, match="3 columns but .* has 2 features.*--columns"):
        append(str(tmp_path / "three.npy"), url)
    np.save(tmp_path / "f64.npy", np.zeros((5, 2), np.float64))
    with pytest.raises(DistgmmInputError, match="dtype mismatch.*float64.*float32.*--dtype float32"):
        append(str(tmp_path / "f64.npy"), url)
    with pytest.raises(DistgmmInputError, match="dtype mismatch"):
        append(KMEANS, url, dtype="float64")
    assert open_points(url).n_rows == 5
    append(str(tmp_path / "f64.npy"), url, dtype="float32")  # explicit conversion is allowed
    assert open_points(url).n_rows == 10


# --- bad input ---------------------------------------------------------------------------

BAD_TEXT = [
    ("1 2\n3 x\n", r"bad\.txt, line 2, column 2 \(x1\): 'x' is not a number"),
    ("1 2\n3 4 5\n", r"bad\.txt, line 2: 3 columns where earlier rows have 2 \(ragged"),
    ("# only a comment\n\n", r"bad\.txt: the file has no data rows"),
    ("1 2\nnan 4\n", r"bad\.txt, line 2, column 1 \(x0\): value nan is not finite.*--drop-nonfinite"),
    ("1 2\n3 inf\n", r"line 2, column 2 \(x1\): value inf is not finite"),
]


@pytest.mark.parametrize("text, message", BAD_TEXT)
def test_bad_text_is_located_and_leaves_nothing(tmp_path, text, message):
    (tmp_path / "bad.txt").write_text(text)
    with pytest.raises(DistgmmInputError, match=message) as info:
        ingest(str(tmp_path / "bad.txt"), str(tmp_path / "out.zarr"))
    assert "\n" not in str(info.value)
    assert _leftovers(tmp_path) == []


def test_bad_cell_far_into_file_is_located(tmp_path):
    lines = ["1,2"] * 70000 + ["3,oops"]
    (tmp_path / "long.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DistgmmInputError, match=r"long\.csv, line 70001, column 2 .*'oops'"):
        ingest(str(tmp_path / "long.csv"), str(tmp_path / "out.zarr"), chunk_rows=1000)
    assert _leftovers(tmp_path) == []


def test_empty_file(tmp_path):
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(DistgmmInputError, match=r"e\.csv: the file is empty"):
        ingest(str(tmp_path / "e.csv"), str(tmp_path / "out.zarr"))


def test_drop_nonfinite_counts_rows(tmp_path):
    (tmp_path / "n.txt").write_text("1 2\nnan 4\n5 inf\n7 8\n")
    report = ingest(str(tmp_path / "n.txt"), str(tmp_path / "n.zarr"), drop_nonfinite=True)
    assert report.rows_dropped == 2 and report.n_rows == 2
    np.testing.assert_array_equal(open_points(str(tmp_path / "n.zarr")).points.compute(),
                                  [[1, 2], [7, 8]])


def test_npy_nonfinite_located_by_row(tmp_path):
    data = np.zeros((10, 2))
    data[7, 1] = np.nan
    np.save(tmp_path / "n.npy", data)
    with pytest.raises(DistgmmInputError, match=r"n\.npy, row 7, column 1: value nan"):
        ingest(str(tmp_path / "n.npy"), str(tmp_path / "n.zarr"))


def test_destination_exists_refused_unless_overwrite(tmp_path):
    url = str(tmp_path / "k.zarr")
    ingest(KMEANS, url)
    np.save(tmp_path / "one.npy", np.ones((3, 2)))
    with pytest.raises(DistgmmInputError, match="already exists; pass --overwrite"):
        ingest(str(tmp_path / "one.npy"), url)
    assert open_points(url).n_rows == 30
    ingest(str(tmp_path / "one.npy"), url, overwrite=True)
    assert open_points(url).n_rows == 3
    assert sorted(os.listdir(tmp_path)) == ["k.zarr", "one.npy"]


def test_never_overwrites_what_is_not_a_point_store(tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("keep me")
    zarr.create_group(str(tmp_path / "other.zarr"))
    for target in (precious, tmp_path / "other.zarr"):
        with pytest.raises(DistgmmInputError, match="not a distgmm point store; refusing"):
            ingest(KMEANS, str(target), overwrite=True)
    assert (precious / "thesis.tex").read_text() == "keep me"


def test_open_refuses_non_store(tmp_path):
    with pytest.raises(DistgmmInputError, match="not a point store"):
        open_points(str(tmp_path / "missing.zarr"))


# --- generate ----------------------------------------------------------------------------

def test_generate_reproducible_and_independent_of_workers(tmp_path, client):
    kwargs = dict(n_points=2000, n_features=3, n_components=4, seed=11, chunk_rows=300)
    generate(str(tmp_path / "a.zarr"), client=client, **kwargs)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address=":0") as one, Client(one, set_as_default=False) as c1:
        generate(str(tmp_path / "b.zarr"), client=c1, **kwargs)
    a, b = open_points(str(tmp_path / "a.zarr")), open_points(str(tmp_path / "b.zarr"))
    np.testing.assert_array_equal(a.points.compute(), b.points.compute())
    np.testing.assert_array_equal(a.truth.compute(), b.truth.compute())
    generate(str(tmp_path / "c.zarr"), client=client, **{**kwargs, "seed": 12})
    assert not np.array_equal(a.points.compute(), open_points(str(tmp_path / "c.zarr")).points.compute())
    gen = a.attrs["generated"]
    assert gen["seed"] == 11 and np.asarray(gen["covariances"]).shape == (4, 3, 3)
    # the sample agrees with the recorded parameters
    x, z = a.points.compute().astype(float), a.truth.compute()
    big = int(np.argmax(np.bincount(z)))
    np.testing.assert_allclose(x[z == big].mean(axis=0), gen["means"][big], atol=0.5)


def test_generate_seed_blobs_preset(tmp_path, client):
    generate(str(tmp_path / "b.zarr"), preset="seed-blobs", seed=0, chunk_rows=128)
    store = open_points(str(tmp_path / "b.zarr"))
    x, z = store.points.compute().astype(float), store.truth.compute()
    assert store.n_rows == 900 and store.n_features == 2
    assert (z[:300] == 0).all() and (z[300:] == 1).all()
    np.testing.assert_allclose(x[:300].mean(axis=0), [0, 0], atol=0.25)
    np.testing.assert_allclose(x[300:].mean(axis=0), [3, 3], atol=0.25)
    np.testing.assert_allclose(x[:300].std(axis=0), [1.2, 1.2], rtol=0.15)
    np.testing.assert_allclose(x[300:].std(axis=0), [1.8, 1.8], rtol=0.15)


# --- info and label state ----------------------------------------------------------------

def test_store_info_matches_numpy(tmp_path, client):
    url = str(tmp_path / "k.zarr")
    ingest(KMEANS, url, chunk_rows=8)
    info = store_info(url)
    ref = np.loadtxt(KMEANS)
    assert (info["n_rows"], info["n_features"], info["n_chunks"], info["chunk_rows"]) == (30, 2, 4, 8)
    assert info["codec"] == ["zstd(level=3)"] and info["bytes_on_disk"] > 0
    np.testing.assert_allclose([f["min"] for f in info["features"]], ref.min(axis=0))
    np.testing.assert_allclose([f["max"] for f in info["features"]], ref.max(axis=0))
    np.testing.assert_allclose([f["mean"] for f in info["features"]], ref.mean(axis=0))


def test_label_state_tracks_chunks_and_appends(tmp_path):
    url = str(tmp_path / "k.zarr")
    ingest(KMEANS, url, chunk_rows=8)  # 4 chunks, the last one partial (6 rows)
    state = prepare_labels(url, "m", "fp-1", n_components=3)
    assert state.chunks_pending == [0, 1, 2, 3] and not state.complete
    record_chunks_done(url, "m", [0, 1, 2, 3])
    assert label_state(url, "m").complete
    append(KMEANS, url)  # 60 rows: chunk 3 grows, chunks 4..7 are new
    state = label_state(url, "m")
    assert state.chunks_done == [0, 1, 2] and state.chunks_pending == [3, 4, 5, 6, 7]
    state = prepare_labels(url, "m", "fp-1")
    assert state.chunks_done == [0, 1, 2]
    assert open_points(url).group["labels/m"].shape == (60,)
    assert prepare_labels(url, "m", "fp-2").chunks_done == []  # another model starts over
    info = store_info(url, stats=False)
    assert info["labels"][0]["model_fingerprint"] == "fp-2"


# --- S3-compatible object store (moto server on loopback) --------------------------------

def test_store_on_s3_round_trip_append_and_info(tmp_path, s3_options, client):
    url = "s3://distgmm-test/k.zarr"
    ingest(KMEANS, url, chunk_rows=7, storage_options=s3_options)
    append(KMEANS, url, storage_options=s3_options)
    store = open_points(url, storage_options=s3_options)
    ref = np.loadtxt(KMEANS)
    np.testing.assert_array_equal(store.points.compute(), np.vstack([ref, ref]))
    with pytest.raises(DistgmmInputError, match="already exists"):
        ingest(KMEANS, url, storage_options=s3_options)
    info = store_info(url, storage_options=s3_options, client=client)
    assert info["n_rows"] == 60 and info["bytes_on_disk"] > 0
    np.testing.assert_allclose([f["mean"] for f in info["features"]], ref.mean(axis=0))


def test_incomplete_s3_store_is_refused_and_bad_input_leaves_nothing(tmp_path, s3_options):
    (tmp_path / "bad.txt").write_text("1 2\n3 x\n")
    url = "s3://distgmm-test/bad.zarr"
    with pytest.raises(DistgmmInputError, match="line 2, column 2"):
        ingest(str(tmp_path / "bad.txt"), url, storage_options=s3_options)
    import s3fs

    assert not s3fs.S3FileSystem(**s3_options).exists("distgmm-test/bad.zarr/zarr.json")


# --- integrity: checksums, missing chunks, older stores -----------------------------------

def _chunk_file(url: str, array: str, index: int) -> str:
    return os.path.join(url, array, "c", str(index), *(["0"] if array == "points" else []))


def test_deleted_chunk_is_an_error_naming_it(tmp_path, client):
    url = str(tmp_path / "k.zarr")
    ingest(KMEANS, url, chunk_rows=8)
    os.remove(_chunk_file(url, "points", 1))
    with pytest.raises(StoreIntegrityError,
                       match=r"chunk 1 of 'points' \(rows 8-15\) is missing .*points/c/1/0.*"
                             r"write it again from its source"):
        open_points(url).points.compute()


def test_flipped_byte_fails_the_checksum_naming_the_chunk(tmp_path, client):
    url = str(tmp_path / "k.zarr")
    ingest(KMEANS, url, chunk_rows=8)
    path = _chunk_file(url, "points", 2)
    raw = bytearray(open(path, "rb").read())
    raw[len(raw) // 2] ^= 0x01
    open(path, "wb").write(bytes(raw))
    with pytest.raises(StoreIntegrityError,
                       match=r"chunk 2 of 'points' \(rows 16-23\) fails its checksum"):
        open_points(url).points.compute()
    # the other chunks still read
    np.testing.assert_array_equal(open_points(url).points[:16].compute(),
                                  np.loadtxt(KMEANS)[:16])


def test_chunks_equal_to_the_fill_value_are_stored_not_taken_for_missing(tmp_path, client):
    url = str(tmp_path / "z.zarr")
    np.save(tmp_path / "z.npy", np.zeros((20, 2)))  # every chunk equals the fill value 0
    ingest(str(tmp_path / "z.npy"), url, chunk_rows=8)
    append(str(tmp_path / "z.npy"), url)
    generate(str(tmp_path / "g.zarr"), n_points=50, n_features=2, n_components=1, seed=0,
             chunk_rows=16, client=client)
    append(str(tmp_path / "z.npy"), str(tmp_path / "g.zarr"), dtype="float32")  # truth -1
    assert open_points(url).points.compute().sum() == 0
    assert (open_points(str(tmp_path / "g.zarr")).truth.compute()[50:] == -1).all()


def test_schema_1_store_without_checksums_still_opens_and_appends(tmp_path, client):
    from zarr.codecs import ZstdCodec

    url = str(tmp_path / "old.zarr")
    data = np.loadtxt(KMEANS)
    group = zarr.create_group(url, attributes={"distgmm": {
        "schema_version": 1, "kind": "points", "complete": True, "columns": ["x0", "x1"],
        "provenance": {"op": "ingest"}}})
    points = group.create_array("points", shape=data.shape, chunks=(8, 2), dtype="float64",
                                compressors=[ZstdCodec(level=3)], fill_value=0.0,
                                attributes={"row_log": []})
    points[:] = data
    append(KMEANS, url)
    store = open_points(url)
    np.testing.assert_array_equal(store.points.compute(), np.vstack([data, data]))
    info = store_info(url, stats=False)
    assert info["schema_version"] == 1 and info["checksums"] is False
    assert info["codec"] == ["zstd(level=3)"]
