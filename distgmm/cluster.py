"""Connection to a Dask cluster: an explicit scheduler, the current client, or an embedded local cluster.

Resolution order used by every job and by the estimators (for fits that run on a cluster):

1. an explicit scheduler address (``tcp://host:8786`` or ``tls://host:8786``, with a
   :class:`distributed.security.Security` for TLS);
2. the current client (``distributed.default_client()``), if the caller created one;
3. an embedded local cluster sized to the machine (one single-threaded worker per core,
   the machine's memory split between them), created once per process, reused by later
   fits and closed at interpreter exit (:func:`local_cluster_client`). Its scheduler runs in
   this process; each worker is a new interpreter (``python -m dask spec``), so the user's
   ``__main__`` is never run again in a worker, and a worker ends when this process dies
   (:mod:`distgmm._worker_preload`).

Connecting is bounded: a scheduler that does not answer a Dask handshake, or stops
answering while a job runs, ends the job with :class:`ClusterUnavailableError` after
:func:`scheduler_timeout` seconds.

The embedded workers start with ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``
(:data:`WORKER_ENVIRONMENT`). Dask starts workers with ``MALLOC_TRIM_THRESHOLD_=65536`` so
that freed memory goes back to the system; with it, glibc maps every allocation above
128 KiB afresh and the first touch of each 4 KiB page faults, which made reading a chunk
from Zarr (three chunk-sized buffers) about twice as slow. The tunable asks for transparent
huge pages on those mappings (one fault per 2 MiB) while memory is still returned
(``bench/README.md`` has the figures). glibc before 2.35, other C libraries and kernels
with transparent huge pages off ignore it. A ``GLIBC_TUNABLES`` already in the environment
wins; workers started with ``dask worker`` get it from their environment
(``docker-compose.yml`` sets it).
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import json
import logging
import os
import sys
import threading
import time

import dask
from distributed import Client, Scheduler, SpecCluster
from distributed.deploy.subprocess import SubprocessWorker
from distributed.security import Security
from distributed.worker_memory import parse_memory_limit

from distgmm._worker_preload import PARENT_PID_ENV

__all__ = [
    "get_client", "current_client", "local_cluster_client", "make_security",
    "close_embedded_cluster", "ClusterUnavailableError", "scheduler_lost", "scheduler_timeout",
    "CONNECT_TIMEOUT", "TIMEOUT_ENV", "WORKER_ENVIRONMENT",
]

logger = logging.getLogger(__name__)

#: Default seconds a client tries to reach a scheduler, at start and again after losing it,
#: and waits for a connected scheduler to answer, before giving up (see the module
#: docstring; ``DISTGMM_SCHEDULER_TIMEOUT`` or ``--scheduler-timeout`` change it).
CONNECT_TIMEOUT = 20
TIMEOUT_ENV = "DISTGMM_SCHEDULER_TIMEOUT"

_lock = threading.Lock()

#: How long a new local cluster may take until all its workers have joined.
_WORKER_START_TIMEOUT = 120

#: Environment set in the worker processes of the embedded LocalCluster before they start
#: (see the module docstring).
WORKER_ENVIRONMENT = {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}


class ClusterUnavailableError(ConnectionError):
    """The Dask scheduler cannot be reached, or was lost while a job ran.

    The message names the address and says what to do; the CLI prints it as
    ``error: <message>`` and exits 1.
    """


def scheduler_timeout(seconds: float | None = None) -> float:
    """``seconds`` if given, else ``$DISTGMM_SCHEDULER_TIMEOUT``, else :data:`CONNECT_TIMEOUT`."""
    if seconds is None:
        value = os.environ.get(TIMEOUT_ENV)
        if not value:
            return float(CONNECT_TIMEOUT)
        try:
            seconds = float(value)
        except ValueError:
            raise ValueError(f"{TIMEOUT_ENV}={value!r} is not a number of seconds.") from None
    if not seconds > 0:
        raise ValueError(f"the scheduler timeout must be more than 0 seconds, got {seconds}.")
    return float(seconds)


#: Addresses whose scheduler stopped answering (closed by the watchdog), for the message.
_frozen: set[str] = set()


def scheduler_lost(address: str, exc: BaseException,
                   timeout: float | None = None) -> ClusterUnavailableError:
    """The error for a scheduler that went away, or stopped answering, while a job ran."""
    seconds = scheduler_timeout(timeout)
    what = (f"stopped answering the Dask scheduler at {address} (no reply for {seconds:g} s)"
            if address in _frozen else
            f"lost the Dask scheduler at {address} (no answer for {seconds:g} s; "
            f"{type(exc).__name__})")
    return ClusterUnavailableError(
        f"{what}. Work finished so far is kept: rerun the same command once "
        "a scheduler is up — a fit with --checkpoint DIR continues from its last completed "
        "iteration with --resume, a label job skips the chunks already labelled."
    )


def _check_address(scheduler: str, security: Security | None) -> str:
    """Refuse malformed addresses and protocol/TLS mismatches up front (Dask would hang or
    fail obscurely); return the address with its protocol."""
    from distributed.comm import registry

    protocol, sep, location = scheduler.partition("://")
    if not sep:
        protocol, location = "tcp", scheduler
    host, colon, port = location.rpartition(":")
    known = protocol in registry.backends
    if not known or not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(
            f"--scheduler {scheduler!r} is not a scheduler address; write tcp://HOST:PORT "
            "(or tls://HOST:PORT), e.g. tcp://127.0.0.1:8786.")
    if protocol == "tls" and security is None:
        raise ValueError(
            f"the scheduler address {scheduler} uses TLS; pass --tls-ca-file, --tls-cert and "
            "--tls-key (the cluster's CA and this client's certificate and key).")
    if protocol != "tls" and security is not None:
        raise ValueError(
            f"TLS files were given but the scheduler address {scheduler} is not tls://; "
            "write it as tls://HOST:PORT, or drop the --tls-* options for a plain tcp:// "
            "scheduler.")
    return f"{protocol}://{location}"


def _handshake(address: str, security: Security | None, timeout: float) -> None:
    """Open one connection to ``address`` and wait, at most ``timeout`` seconds in all, for
    a Dask handshake; raise ``TimeoutError`` or ``OSError`` if none comes."""
    from distributed.comm import connect

    args = security.get_connection_args("client") if security is not None else {}

    async def probe() -> None:
        comm = await asyncio.wait_for(connect(address, timeout=timeout, **args), timeout)
        await comm.close()

    # In a thread of its own: the caller may be running an event loop (a notebook).
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, probe()).result()


def _connect(scheduler: str, security: Security | None, timeout: float) -> Client:
    """A client to ``scheduler``, or a :class:`ClusterUnavailableError` that says why not."""
    try:
        _handshake(scheduler, security, timeout)
        client = Client(scheduler, security=security, set_as_default=False,
                        timeout=f"{timeout}s")
    except (asyncio.TimeoutError, TimeoutError):
        raise ClusterUnavailableError(
            f"could not connect to the Dask scheduler at {scheduler}: something accepted the "
            f"connection but sent no Dask handshake within {timeout:g} s; check that the "
            "address is a Dask scheduler's port (8786 by default, not its dashboard or "
            "another service) and that the scheduler is not stopped or overloaded."
        ) from None
    except (OSError, TimeoutError) as exc:  # CommClosedError and TLS failures are OSErrors
        detail = " ".join(str(exc).split()) or type(exc).__name__
        hint = ("check that the scheduler is running and the address is right"
                if "Timed out" in detail else
                "check the address, the protocol (tcp:// or tls://) and the TLS files: a TLS "
                "scheduler refuses clients without a certificate signed by its CA")
        raise ClusterUnavailableError(
            f"could not connect to the Dask scheduler at {scheduler}: {detail}; {hint}."
        ) from None
    _frozen.difference_update((scheduler, scheduler.partition("://")[2]))
    _Watchdog(client, scheduler, timeout).start()
    return client


class _Watchdog(threading.Thread):
    """Pings a remote scheduler; closes the client when it stops answering (module docstring)."""

    def __init__(self, client: Client, address: str, timeout: float) -> None:
        super().__init__(name=f"distgmm-watchdog-{address}", daemon=True)
        self.client, self.address, self.timeout = client, address, timeout

    def _ping(self) -> None:
        client = self.client
        call = asyncio.wait_for(client.scheduler.identity(), self.timeout)
        asyncio.run_coroutine_threadsafe(call, client.loop.asyncio_loop).result(self.timeout + 5)

    def run(self) -> None:
        interval = max(0.5, self.timeout / 4)
        while True:
            time.sleep(interval)
            status = self.client.status
            if status in ("closing", "closed"):
                return
            if status != "running":  # reconnecting: Dask's own timeout applies
                continue
            try:
                self._ping()
            except Exception:
                if self.client.status != "running":
                    continue
                logger.error("the Dask scheduler at %s did not answer for %g s: closing the "
                             "connection", self.address, self.timeout)
                _frozen.update((self.address, self.address.partition("://")[2]))
                try:
                    self.client.close(timeout=5)
                except Exception:  # closing a connection to a frozen peer may time out
                    pass
                return


_embedded: dict[str, object] = {}
_remote: dict[str, Client] = {}


def make_security(
    tls_ca_file: str | None = None, tls_cert: str | None = None, tls_key: str | None = None
) -> Security | None:
    """Build a Dask ``Security`` from PEM files, or ``None`` when no file is given.

    All three files are required together: a CA to verify the peer, and this client's
    certificate and key to be verified by it.
    """
    given = [f for f in (tls_ca_file, tls_cert, tls_key) if f]
    if not given:
        return None
    if len(given) != 3:
        raise ValueError(
            "TLS needs all of --tls-ca-file, --tls-cert and --tls-key; "
            f"got {len(given)} of 3. Pass the missing files or none of them."
        )
    for path in (tls_ca_file, tls_cert, tls_key):
        if not os.path.isfile(path):
            raise ValueError(f"TLS file {path!r} does not exist; check the path.")
    return Security(
        tls_ca_file=tls_ca_file,
        tls_client_cert=tls_cert,
        tls_client_key=tls_key,
        require_encryption=True,
    )


class _WorkerProcess(SubprocessWorker):
    """A Dask worker (a ``Nanny`` and its worker process) started as a new interpreter.

    ``python -m dask spec ...``, as ``dask worker`` runs: the user's ``__main__`` is never
    imported again, unlike multiprocessing's spawn, which re-runs a plain script in every
    worker. The process gets this process's Dask configuration, :data:`WORKER_ENVIRONMENT`
    (unless the environment already sets those variables) and the pid to outlive no
    longer than (see :mod:`distgmm._worker_preload`).
    """

    async def _start(self) -> None:
        spec = {"cls": self.worker_class, "opts": self.worker_kwargs}
        # Dask's default log level for its own loggers is INFO, which would print every
        # worker's start and stop on the user's terminal; keep them at WARNING then.
        level = dask.config.get("logging.distributed", "warning")
        config = dask.config.merge(dask.config.global_config, {"logging": {
            "distributed": "warning" if level == "info" else level}})
        environ = {**WORKER_ENVIRONMENT, **os.environ,
                   "DASK_INTERNAL_INHERIT_CONFIG": dask.config.serialize(config),
                   PARENT_PID_ENV: str(os.getpid())}
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "dask", "spec", self.scheduler, "--spec", json.dumps(spec),
            stdin=asyncio.subprocess.DEVNULL, env=environ)


def local_cluster_client(
    n_workers: int | None = None,
    threads_per_worker: int = 1,
    memory_limit: str | int | None = None,
) -> Client:
    """Start a new local cluster and return a client connected to it.

    The scheduler runs in this process (on the client's event loop); each worker is a
    ``Nanny`` in a process of its own, started as a new interpreter (:class:`_WorkerProcess`),
    so a plain script without an ``if __name__ == "__main__":`` guard works. Workers end
    with this process, also when it is killed. Defaults: one worker per core, one thread
    each (so BLAS stays single-threaded per worker and workers x threads = cores), the
    machine's memory split evenly. The dashboard listens on 127.0.0.1 only.
    """
    n_workers = n_workers or os.cpu_count() or 1
    if n_workers < 1 or threads_per_worker < 1:
        raise ValueError(
            f"workers and threads per worker must be at least 1, got {n_workers} and "
            f"{threads_per_worker}."
        )
    limit = parse_memory_limit("auto" if memory_limit is None else memory_limit, 1,
                               total_cores=n_workers, logger=logger)
    worker = {"cls": _WorkerProcess, "options": {
        "worker_class": "distributed.Nanny",
        "worker_kwargs": {"host": "127.0.0.1", "nthreads": threads_per_worker,
                          "memory_limit": limit, "dashboard": False,
                          "silence_logs": logging.WARNING,
                          "preload_nanny": ["distgmm._worker_preload"]}}}
    scheduler = {"cls": Scheduler, "options": {
        "host": "127.0.0.1", "port": 0, "dashboard": True,
        "dashboard_address": "127.0.0.1:0"}}
    cluster = SpecCluster(workers={i: worker for i in range(n_workers)}, scheduler=scheduler,
                          worker=worker, name="distgmm-local", silence_logs=logging.WARNING)
    client = Client(cluster, set_as_default=False)
    try:
        client.wait_for_workers(n_workers, timeout=_WORKER_START_TIMEOUT)
    except BaseException:
        client.close()
        cluster.close()
        raise
    logger.info("started local cluster %s, dashboard %s", cluster.scheduler_address,
                client.dashboard_link)
    return client


def _close_embedded() -> None:
    client = _embedded.pop("client", None)
    if client is not None:
        cluster = client.cluster
        client.close()
        if cluster is not None:
            cluster.close()
    for remote in list(_remote.values()):
        remote.close()
    _remote.clear()


def close_embedded_cluster() -> None:
    """Close the embedded LocalCluster (and cached remote clients) if any were started."""
    with _lock:
        _close_embedded()


def _close_at_exit() -> None:
    # SpecCluster.close restores the log level it found (Dask's default: INFO) before its
    # comms have finished closing, so the scheduler in this process would print a worker's
    # closed connection, with a traceback, as the user's script ends. Nothing a user can
    # act on happens during this close; keep Dask's loggers at WARNING for it.
    logging.getLogger("distributed").setLevel(logging.WARNING)
    close_embedded_cluster()


atexit.register(_close_at_exit)


def current_client() -> Client | None:
    """The user's current (default) ``distributed`` client, or None if there is none."""
    from distributed import default_client

    try:
        return default_client()
    except ValueError:
        return None


def get_client(scheduler: str | None = None, security: Security | None = None,
               timeout: float | None = None) -> Client:
    """Return the client a job should use (see the module docstring for the order).

    Parameters
    ----------
    scheduler : str, optional
        Address of a running scheduler. Clients to explicit addresses are cached per address.
    security : distributed.security.Security, optional
        TLS settings for ``tls://`` addresses (required for them, refused for others).
    timeout : float, optional
        Seconds the scheduler may take to answer (see the module docstring); default
        :func:`scheduler_timeout`.

    Raises
    ------
    ValueError
        A malformed address, a ``tls://`` address without ``security``, or ``security``
        with another protocol.
    ClusterUnavailableError
        The scheduler did not answer within the timeout or refused us.
    """
    with _lock:
        if scheduler:
            client = _remote.get(scheduler)
            if client is None or client.status not in ("running", "connecting"):
                seconds = scheduler_timeout(timeout)
                address = _check_address(scheduler, security)
                client = _connect(address, security, seconds)
                _remote[scheduler] = client
            return client
        client = current_client()
        if client is not None:
            return client
        client = _embedded.get("client")
        if client is None or client.status not in ("running", "connecting"):
            client = local_cluster_client()
            _embedded["client"] = client
        return client
