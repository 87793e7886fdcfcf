"""Shared fixtures: one real LocalCluster of worker processes for the whole session.

Only tests that ask for ``client`` get a default ``distributed.Client``; fits of small
in-memory data run in the test process and need none. ``test_entry_points.py`` and
``test_sklearn_suite.py`` run user code and scikit-learn's tests in fresh interpreters,
where no client exists unless the code makes one.
"""

from __future__ import annotations

import os
import socket

import pytest
from distributed import Client, LocalCluster

# Matplotlib must never try to open a window in tests.
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def cluster():
    """A LocalCluster with two single-threaded worker processes, shared by the session.

    Tests that pass its address as ``scheduler=`` leave distgmm's cached client to it;
    that client is closed before the cluster, so it does not try to reconnect at exit.
    """
    from distgmm.cluster import close_embedded_cluster

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
        memory_limit="2GiB",
    ) as cluster:
        yield cluster
        close_embedded_cluster()


@pytest.fixture(scope="session")
def client(cluster):
    """A client to the session cluster, installed as the default client.

    distgmm picks up the current client, so library calls in tests run on the cluster's
    worker processes.
    """
    with Client(cluster) as client:
        yield client


@pytest.fixture(scope="session")
def scheduler_address(cluster):
    """Address of the session cluster, for CLI subprocesses (``--scheduler``)."""
    return cluster.scheduler_address


@pytest.fixture(scope="module")
def s3_options():
    """fsspec ``storage_options`` for a fresh moto S3 server on loopback holding the bucket
    ``distgmm-test``, one per test module."""
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    options = {"key": "testing", "secret": "testing",
               "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}"}}
    import s3fs

    fs = s3fs.S3FileSystem(**options)
    if not fs.exists("distgmm-test"):  # moto's state is per process, shared by its servers
        fs.mkdir("distgmm-test")
    yield options
    server.stop()


@pytest.fixture(scope="module")
def blobs(tmp_path_factory, client):
    """For the CLI tests: a 3-component store of 3000 rows in 10 chunks (300 rows each),
    reused read-only."""
    from distgmm.store import generate

    url = str(tmp_path_factory.mktemp("blobs") / "b.zarr")
    generate(url, n_points=3000, n_features=2, n_components=3, seed=11, chunk_rows=300,
             client=client)
    return url


@pytest.fixture(scope="module")
def blobs_model(tmp_path_factory, blobs, scheduler_address):
    """A model of ``blobs`` fitted by the CLI (K=3, seed 0)."""
    from cluster_helpers import run_json

    path = str(tmp_path_factory.mktemp("model") / "m.npz")
    result = run_json("fit", blobs, "-k", "3", "--model", path, "--seed", "0",
                      "--scheduler", scheduler_address)
    assert result["model"] == path
    return path
