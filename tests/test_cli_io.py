"""CLI tests for data in and out, as real subprocesses: export, foreign Zarr, S3 model files,
the JSON shape, usage errors, help texts, --version, quiet output and job files' schema."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from cluster_helpers import cli_env

RNG = np.random.default_rng(3)
X = np.vstack([RNG.normal(0, 1, (300, 2)), RNG.normal(6, 1, (300, 2))])
COMMANDS = ("generate", "ingest", "info", "fit", "label", "export", "select", "predict", "plot",
            "run", "demo")


def run(*args: str, cwd: str | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "distgmm.cli", *args], capture_output=True,
                          text=True, env=cli_env(), timeout=timeout, cwd=cwd)


def run_json(*args: str, cwd: str | None = None) -> dict:
    done = run(*args, "--json", cwd=cwd)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)  # exactly one object
    assert result["command"] == args[0] and result["ok"] is True
    assert result["seconds"] > 0
    return result


def s3_args(options: dict) -> list[str]:
    return ["--storage-option", f"key={options['key']}",
            "--storage-option", f"secret={options['secret']}",
            "--storage-option",
            f"client_kwargs.endpoint_url={options['client_kwargs']['endpoint_url']}"]


@pytest.fixture(scope="module")
def keyed(tmp_path_factory, scheduler_address):
    """A store ingested from a pandas CSV with keys and one empty cell, fitted and labelled."""
    directory = tmp_path_factory.mktemp("keyed")
    frame = pd.DataFrame({"key": [f"p{i}" for i in range(len(X))], "x": X[:, 0], "y": X[:, 1]})
    frame.loc[7, "y"] = np.nan
    frame.to_csv(directory / "points.csv", index=False)
    store, model = str(directory / "s.zarr"), str(directory / "m.npz")
    ingest = run_json("ingest", str(directory / "points.csv"), store, "--id-column", "key",
                      "--drop-nonfinite", "--chunk-rows", "200")
    assert ingest["rows_dropped"] == 1 and "dashboard" not in ingest  # no cluster used
    run_json("fit", store, "-k", "2", "-o", model, "--seed", "0", "--scheduler",
             scheduler_address)
    label = run_json("label", model, store, "--name", "run", "--proba", "--scheduler",
                     scheduler_address)
    assert label["rows_written"] == len(X) - 1 and label["dashboard"].startswith("http")
    return directory, store, model


def test_export_with_ids_and_probabilities_as_parquet_and_csv(keyed, scheduler_address):
    directory, store, model = keyed
    out = str(directory / "labels.parquet")
    result = run_json("export", store, out, "--name", "run", "--proba", "--scheduler",
                      scheduler_address)
    assert (result["layout"], result["n_files"], result["rows_written"]) == ("dataset", 3, 599)
    frame = pd.read_parquet(out)
    assert frame["id"].tolist() == [f"p{i}" for i in range(len(X)) if i != 7]
    assert frame.columns.tolist() == ["id", "label", "proba_0", "proba_1"]
    done = run("export", store, str(directory / "labels.csv"), "--name", "run", "--scheduler",
               scheduler_address)
    assert done.returncode == 0, done.stderr
    assert "exported labels/run of" in done.stdout and "3 part files, 599 rows keyed by id" in \
        done.stdout
    again = run("export", store, out, "--name", "run", "--scheduler", scheduler_address)
    assert again.returncode == 2 and again.stderr.strip() == \
        f"error: {out} already exists; pass --overwrite to replace it, or choose another path."


def test_predict_out_csv_has_a_header_and_ids(keyed):
    directory, _, model = keyed
    pd.DataFrame({"key": ["a", "b"], "x": [0.0, 6.0], "y": [0.0, 6.0]}).to_csv(
        directory / "new.csv", index=False)
    out = str(directory / "pred.csv")
    done = run("predict", model, str(directory / "new.csv"), "--id-column", "key", "--proba",
               "--out", out)
    assert done.returncode == 0, done.stderr
    frame = pd.read_csv(out)
    assert frame.columns.tolist() == ["id", "label", "proba_0", "proba_1"]
    assert frame["id"].tolist() == ["a", "b"] and frame["label"].nunique() == 2


def test_foreign_zarr_and_xarray_variables_on_the_command_line(tmp_path, scheduler_address):
    import xarray as xr

    url = str(tmp_path / "ds.zarr")
    xr.Dataset({"X": (("sample", "feature"), X)}).to_zarr(url, zarr_format=2)
    done = run("fit", url, "-k", "2", "-o", str(tmp_path / "m.npz"))
    assert done.returncode == 2 and "--variable X" in done.stderr
    fit = run_json("fit", url, "--variable", "X", "-k", "2", "-o", str(tmp_path / "m.npz"),
                   "--seed", "0", "--scheduler", scheduler_address)
    assert fit["n_rows"] == len(X)
    info = run_json("info", f"{url}/X", "--no-stats")
    assert info["foreign"].startswith("xarray variable") and info["codec"] == ["blosc"]
    label = run("label", str(tmp_path / "m.npz"), f"{url}/X", "--name", "a")
    assert label.returncode == 2
    assert "cannot label it. Copy its rows into a point store first (`distgmm ingest" in \
        label.stderr


def test_model_files_on_s3_and_quiet_means_quiet(tmp_path, s3_options, scheduler_address):
    np.save(tmp_path / "x.npy", X)
    store = "s3://distgmm-test/cli/points.zarr"
    done = run("ingest", str(tmp_path / "x.npy"), store, *s3_args(s3_options), "-q",
               cwd=str(tmp_path))
    assert done.returncode == 0 and done.stderr == "", done.stderr
    model = "s3://distgmm-test/cli/models/m.npz"
    done = run("fit", store, "-k", "2", "-o", model, "--seed", "0", *s3_args(s3_options),
               "--scheduler", scheduler_address, "-q", cwd=str(tmp_path))
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert not os.path.exists(tmp_path / "s3:")  # written to S3, not a local directory
    import s3fs

    assert s3fs.S3FileSystem(**s3_options).isfile("distgmm-test/cli/models/m.npz")
    label = run_json("label", model, store, "--name", "a", *s3_args(s3_options),
                     "--scheduler", scheduler_address)
    assert label["rows_written"] == len(X)
    again = run("fit", store, "-k", "2", "-o", model, *s3_args(s3_options), cwd=str(tmp_path))
    assert again.returncode == 2 and "already exists; pass --overwrite" in again.stderr
    bad = run("fit", store, "-k", "2", "-o", "nosuch://b/m.npz", *s3_args(s3_options))
    assert bad.returncode == 2 and "Protocol not known: nosuch" in bad.stderr


def test_one_json_shape_and_an_error_object_on_failure(tmp_path):
    np.save(tmp_path / "x.npy", X)
    ingest = run_json("ingest", str(tmp_path / "x.npy"), str(tmp_path / "s.zarr"))
    info = run_json("info", str(tmp_path / "s.zarr"), "--no-stats")
    assert ingest["n_rows"] == info["n_rows"] == len(X)
    done = run("fit", str(tmp_path / "missing.zarr"), "-k", "2", "-o", str(tmp_path / "m.npz"),
               "--json")
    assert done.returncode == 2
    failure = json.loads(done.stdout)
    assert failure["command"] == "fit" and failure["ok"] is False
    assert failure["error"]["type"] == "input" and failure["error"]["exit_code"] == 2
    assert f"error: {failure['error']['message']}" == done.stderr.strip().splitlines()[-1]


def test_usage_errors_are_one_line_with_exit_2_and_version():
    done = run("fit", "store.zarr")
    assert done.returncode == 2
    assert done.stderr.strip() == ("error: Missing option '--components' / '-k'. (see "
                                   "`distgmm fit --help`)")
    done = run("label", "--bogus", "--json")
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert json.loads(done.stdout)["error"]["type"] == "usage"
    done = run("--version")
    from distgmm import __version__

    assert done.returncode == 0 and done.stdout == f"distgmm {__version__}\n"
    done = run()
    assert done.returncode == 0 and "Commands:" in done.stdout and "export" in done.stdout


def test_help_texts_keep_their_brackets_and_read_plainly():
    for name in COMMANDS:
        done = run(name, "--help")
        assert done.returncode == 0, done.stderr
        for bad in ("<bool>", "<int>", "<float>", "|||", " .\n", "Rows ."):
            assert bad not in done.stdout, (name, bad)
    assert "Override a [vars] entry" in run("run", "--help").stdout
    assert "Rows [default: 10000000]." in run("generate", "--help").stdout
    assert "{kmeans,k-means||,k-means++,random,random_from_data}" in run("fit", "--help").stdout


def test_lines_are_not_wrapped_off_a_terminal(tmp_path):
    deep = tmp_path / ("a-rather-long-directory-name-" * 3)
    deep.mkdir()
    np.save(deep / "x.npy", X)
    done = run("ingest", str(deep / "x.npy"), str(deep / "s.zarr"))
    assert done.returncode == 0 and len(done.stdout.splitlines()) == 1
    assert len(done.stdout) > 200


def test_job_schema_and_a_job_with_export_predict_and_plot_steps(tmp_path, scheduler_address):
    schema = json.loads(run("run", "--schema").stdout)
    kinds = {d["properties"]["run"]["const"] for d in schema["$defs"].values()
             if "run" in d.get("properties", {})}
    assert kinds == {"generate", "ingest", "fit", "label", "select", "predict", "plot", "export"}
    np.save(tmp_path / "x.npy", X)
    (tmp_path / "job.toml").write_text("""
[vars]
k = "2"
[[step]]
run = "ingest"
source = "x.npy"
store = "s.zarr"
[[step]]
run = "fit"
store = "s.zarr"
model = "m.npz"
components = "${k}"
seed = 0
[[step]]
run = "label"
model = "m.npz"
store = "s.zarr"
name = "a"
[[step]]
run = "export"
store = "s.zarr"
out = "labels.parquet"
name = "a"
overwrite = true
[[step]]
run = "predict"
model = "m.npz"
file = "x.npy"
out = "pred.csv"
[[step]]
run = "plot"
model = "m.npz"
store = "s.zarr"
out = "plot.png"
""")
    result = run_json("run", str(tmp_path / "job.toml"), "--scheduler", scheduler_address)
    assert [s["run"] for s in result["steps"]] == ["ingest", "fit", "label", "export",
                                                   "predict", "plot"]
    assert len(pd.read_parquet(tmp_path / "labels.parquet")) == len(X)
    assert pd.read_csv(tmp_path / "pred.csv").columns.tolist() == ["row", "label"]
    (tmp_path / "bad.toml").write_text('[[step]]\nrun = "export"\nstore = "s.zarr"\n'
                                       'out = "o.csv"\nname = "a"\nformat = "xlsx"\n')
    done = run("run", str(tmp_path / "bad.toml"))
    assert done.returncode == 2 and "key 'format': Input should be 'parquet' or 'csv'" in \
        done.stderr
