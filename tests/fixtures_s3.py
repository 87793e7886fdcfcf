"""An S3-compatible object store for tests: a moto server on loopback, one per test module.

Import the fixture into a test module with ``from fixtures_s3 import s3_options  # noqa``.
"""

from __future__ import annotations

import socket

import pytest


@pytest.fixture(scope="module")
def s3_options():
    """fsspec ``storage_options`` for a fresh moto S3 server holding the bucket ``distgmm-test``."""
    pytest.importorskip("s3fs")
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
