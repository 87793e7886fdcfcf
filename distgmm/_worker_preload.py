"""Nanny preload of the embedded cluster's workers: a worker ends with the process that started it.

The embedded local cluster (:func:`distgmm.cluster.local_cluster_client`) starts every
worker as a new interpreter. If the process that started it dies without closing the
cluster (``kill -9``, an out-of-memory kill), nobody would stop those workers; this
preload makes each one check once a second that its parent is still the process named in
:data:`PARENT_PID_ENV` and, when it is not, send itself ``SIGTERM``, on which ``dask spec``
closes the nanny and its worker.
"""

from __future__ import annotations

import os
import signal
import threading
import time

__all__ = ["PARENT_PID_ENV", "dask_setup"]

#: Environment variable holding the pid of the process that started the worker.
PARENT_PID_ENV = "DISTGMM_PARENT_PID"
_POLL_SECONDS = 1.0


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(_POLL_SECONDS)
    os.kill(os.getpid(), signal.SIGTERM)


def dask_setup(nanny) -> None:
    """Called by Dask when the nanny starts: watch the parent from a daemon thread."""
    parent = os.environ.get(PARENT_PID_ENV)
    if parent:
        threading.Thread(target=_watch, args=(int(parent),), daemon=True,
                         name="distgmm-parent-watch").start()
