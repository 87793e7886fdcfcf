"""Options and helpers shared by every distgmm command: cluster, output, logging, errors.

One JSON shape for every command (``--json``): a single object on stdout whose common keys
are ``command`` (its name), ``ok`` (true), ``seconds`` (the command's wall time) and, when
the command used a Dask cluster, ``dashboard``; the command's own keys follow. On failure,
with ``--json``, stdout gets ``{"command", "ok": false, "seconds", "error": {"type",
"message", "exit_code"}}`` (``type``: ``input`` for bad input, exit 2; ``usage`` for a bad
command line, exit 2; ``run`` for a run that cannot go ahead now, e.g. a busy store, exit 1;
``cluster`` for an unreachable or lost scheduler, exit 1; ``interrupted``, exit 130;
``unexpected``, exit 1), and stderr the same ``error: ...`` line as without ``--json``.

Output for people: rich tables and lines on stdout, status on stderr; when stdout or stderr
is not a terminal (cron logs, pipes) lines are never wrapped (rich would wrap at 80
columns), so a log line stays one line. ``-q`` leaves only errors on stderr, including
none of the "Unclosed client session" noise aiohttp (under s3fs) prints at exit.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import Annotated, Any, Union, get_args, get_origin

import typer

try:  # Typer 0.20 and later vendor click (``typer._click``) and raise its exceptions
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover - older Typer
    from click import exceptions as click_errors
from rich.console import Console

from distgmm.errors import DistgmmInputError, DistgmmRunError

__all__ = [
    "Scheduler", "Workers", "ThreadsPerWorker", "MemoryLimit", "TlsCaFile", "TlsCert", "TlsKey",
    "Verbose", "Quiet", "Json", "StorageOption", "DType", "LockWait", "SchedulerTimeout",
    "Variable", "ClusterOptions", "Output", "command", "dask_client", "handle_errors",
    "storage_options", "points_url", "error_object", "EXIT_BAD_INPUT", "EXIT_FAILURE", "EXIT_DRIFT",
]

EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2
#: ``label --fail-on-drift`` (and ``run`` with a label step's ``fail_on_drift``): the work
#: is done and recorded, and the newly labelled rows drifted from the model's training
#: scores; a scheduler can alert or refit on this code.
EXIT_DRIFT = 3

_CLUSTER = "Cluster"
_OUTPUT = "Output"

Scheduler = Annotated[str | None, typer.Option(
    "--scheduler", envvar="DISTGMM_SCHEDULER", metavar="ADDRESS", rich_help_panel=_CLUSTER,
    help="Dask scheduler to use (tcp://host:8786 or tls://...); default: a local cluster.")]
Workers = Annotated[int | None, typer.Option(
    "--workers", min=1, rich_help_panel=_CLUSTER,
    help="Local cluster: worker processes (default: one per core).")]
ThreadsPerWorker = Annotated[int, typer.Option(
    "--threads-per-worker", min=1, rich_help_panel=_CLUSTER,
    help="Local cluster: threads per worker.")]
MemoryLimit = Annotated[str | None, typer.Option(
    "--memory-limit", rich_help_panel=_CLUSTER,
    help="Local cluster: memory per worker (e.g. 4GiB; default: machine memory split evenly).")]
TlsCaFile = Annotated[str | None, typer.Option(
    "--tls-ca-file", envvar="DISTGMM_TLS_CA_FILE", rich_help_panel=_CLUSTER, help="TLS: CA certificate (PEM) of the cluster.")]
TlsCert = Annotated[str | None, typer.Option(
    "--tls-cert", envvar="DISTGMM_TLS_CERT", rich_help_panel=_CLUSTER, help="TLS: this client's certificate (PEM).")]
TlsKey = Annotated[str | None, typer.Option(
    "--tls-key", envvar="DISTGMM_TLS_KEY", rich_help_panel=_CLUSTER, help="TLS: this client's private key (PEM).")]
Verbose = Annotated[int, typer.Option(
    "-v", "--verbose", count=True, rich_help_panel=_OUTPUT,
    help="More log output (-v info, -vv debug); tracebacks on unexpected errors.")]
Quiet = Annotated[bool, typer.Option(
    "-q", "--quiet", rich_help_panel=_OUTPUT, help="Only errors on stderr.")]
Json = Annotated[bool, typer.Option(
    "--json", rich_help_panel=_OUTPUT, help="Print one JSON object on stdout instead of tables.")]
LockWait = Annotated[float | None, typer.Option(
    "--lock-wait", envvar="DISTGMM_LOCK_WAIT", metavar="SECONDS",
    help="How long to wait while another run writes the same store or label set, then fail "
         "(exit 1) [default: 60].")]
SchedulerTimeout = Annotated[float | None, typer.Option(
    "--scheduler-timeout", envvar="DISTGMM_SCHEDULER_TIMEOUT", metavar="SECONDS",
    rich_help_panel=_CLUSTER,
    help="Fail (exit 1) when the scheduler cannot be reached, or stops answering, for this "
         "long [default: 20].")]
StorageOption = Annotated[list[str] | None, typer.Option(
    "--storage-option", metavar="KEY=VALUE",
    help="fsspec option for every URL the command reads or writes (stores, sources, model "
         "files), repeatable (e.g. key=..., secret=..., client_kwargs.endpoint_url=http://...).")]
Variable = Annotated[str | None, typer.Option(
    "--variable", metavar="NAME",
    help="The array to read inside a Zarr group that is not a point store (e.g. an xarray "
         "Dataset's variable); the same as STORE/NAME.")]


class DType(str, Enum):
    """Stored point dtypes."""

    float32 = "float32"
    float64 = "float64"


def storage_options(pairs: list[str] | None) -> dict[str, Any] | None:
    """Turn ``KEY=VALUE`` strings into an fsspec ``storage_options`` dict (``None`` if empty)."""
    if not pairs:
        return None
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise DistgmmInputError(f"--storage-option {pair!r} is not KEY=VALUE; write e.g. anon=true.")
        lowered = value.lower()
        # A dotted key sets a nested option: client_kwargs.endpoint_url=... (s3fs).
        *parents, last = key.split(".")
        where = options
        for part in parents:
            where = where.setdefault(part, {})
            if not isinstance(where, dict):
                raise DistgmmInputError(f"--storage-option {pair!r}: {part} is set twice, as a "
                                        "value and as a table.")
        where[last] = {"true": True, "false": False}.get(lowered, value)
    return options


def points_url(store: str, variable: str | None) -> str:
    """The points to read: ``store``, or the array ``variable`` inside it (``--variable``)."""
    if not variable:
        return store
    from distgmm.store import StoreLocation

    return StoreLocation(store).child(variable).url


def _console(stderr: bool) -> Console:
    """A rich console that wraps lines only on a terminal: elsewhere (a log file, a pipe)
    every line is written whole and tables take the width they need."""
    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty():
        return Console(stderr=stderr)
    return Console(stderr=stderr, width=100_000, soft_wrap=True, no_color=True,
                   highlight=False)


class _AiohttpNoise(logging.Filter):
    """Drops aiohttp's "Unclosed client session/connector" reports, which s3fs's cached
    sessions cause at interpreter exit: noise, not a problem of the command."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not message.startswith(("Unclosed client session", "Unclosed connector"))


@dataclass
class Output:
    """Where a command writes: JSON or rich tables on stdout, messages and logs on stderr.

    ``command`` (the command's name), ``started`` and ``dashboard`` (set by
    :func:`dask_client`) go into every JSON object (see the module docstring).
    """

    verbose: int = 0
    quiet: bool = False
    json: bool = False
    command: str = ""
    started: float = field(default_factory=time.perf_counter)
    dashboard: str | None = None

    def __post_init__(self) -> None:
        self.out = _console(stderr=False)
        self.err = _console(stderr=True)
        level = logging.ERROR if self.quiet else (
            logging.WARNING, logging.INFO, logging.DEBUG)[min(self.verbose, 2)]
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        if self.verbose < 2:
            handler.addFilter(_AiohttpNoise())
        root = logging.getLogger()
        root.handlers[:] = [handler]
        root.setLevel(level)
        self.tame_dask_loggers()

    def tame_dask_loggers(self) -> None:
        """Dask's own chatter (ports, shutdown) only at -vv; call again after importing distributed.

        Importing ``distributed`` configures its loggers from the Dask config, so commands
        that start a cluster call this again once it is imported.
        """
        for noisy in ("distributed", "tornado", "asyncio"):
            logger = logging.getLogger(noisy)
            logger.setLevel(logging.DEBUG if self.verbose >= 2 else logging.ERROR)
            if self.verbose < 2:
                logger.handlers[:] = []
                logger.propagate = True

    def message(self, text: str) -> None:
        """A status line on stderr (suppressed by --quiet)."""
        if not self.quiet:
            self.err.print(text, highlight=False)

    def emit_json(self, obj: dict[str, Any]) -> None:
        """Print the command's JSON object on stdout: the common keys (module docstring),
        then ``obj``'s."""
        common = {"command": self.command, "ok": True,
                  "seconds": time.perf_counter() - self.started}
        if self.dashboard:
            common["dashboard"] = self.dashboard
        payload = {**common, **{k: v for k, v in obj.items() if k not in common}}
        sys.stdout.write(json.dumps(payload, default=str) + "\n")
        sys.stdout.flush()

    def emit_error(self, kind: str, message: str, exit_code: int) -> None:
        """With ``--json``, the error object on stdout (module docstring)."""
        if self.json:
            sys.stdout.write(json.dumps(error_object(self.command, kind, message, exit_code,
                                                     time.perf_counter() - self.started)) + "\n")
            sys.stdout.flush()


@dataclass
class ClusterOptions:
    """The cluster options of a command, turned into a client by :func:`dask_client`."""

    scheduler: str | None = None
    workers: int | None = None
    threads_per_worker: int = 1
    memory_limit: str | None = None
    tls_ca_file: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    scheduler_timeout: float | None = None


#: The cluster options every computing command takes, in :class:`ClusterOptions`'s order.
_CLUSTER_OPTIONS = (("scheduler", Scheduler, None), ("workers", Workers, None),
                    ("threads_per_worker", ThreadsPerWorker, 1),
                    ("memory_limit", MemoryLimit, None), ("tls_ca_file", TlsCaFile, None),
                    ("tls_cert", TlsCert, None), ("tls_key", TlsKey, None),
                    ("scheduler_timeout", SchedulerTimeout, None))
#: The output options every command takes.
_OUTPUT_OPTIONS = (("verbose", Verbose, 0), ("quiet", Quiet, False), ("json", Json, False))


def error_object(command: str, kind: str, message: str, exit_code: int,
                 seconds: float | None = None) -> dict[str, Any]:
    """The JSON object of a failed command (see the module docstring)."""
    return {"command": command, "ok": False, "seconds": seconds,
            "error": {"type": kind, "message": message, "exit_code": exit_code}}


def _metavar(base: Any, info: Any, name: str) -> str | None:
    """The metavar of a parameter without one: what a person reads in ``--help`` (Typer
    would show ``<int>``, ``<bool>`` or ``<a|b>``, and ``k-means|||k-means++`` for choices
    holding ``|``)."""
    if get_origin(base) in (Union, getattr(__import__("types"), "UnionType", Union)):
        base = next(a for a in get_args(base) if a is not type(None))
    if get_origin(base) is list:
        base = get_args(base)[0]
    if base is bool:
        return None
    if isinstance(info, typer.models.ArgumentInfo):
        return name.upper()
    if isinstance(base, type) and issubclass(base, Enum):
        return "{" + ",".join(str(m.value) for m in base) + "}"
    return {int: "N", float: "X"}.get(base, "TEXT")


def _readable(annotation: Any, name: str) -> Any:
    """``annotation`` with a metavar (:func:`_metavar`) in its Typer parameter info."""
    if get_origin(annotation) is not Annotated:
        return annotation
    base, *extras = get_args(annotation)
    changed = []
    for extra in extras:
        if isinstance(extra, (typer.models.OptionInfo, typer.models.ArgumentInfo)) and \
                extra.metavar is None and _metavar(base, extra, name) is not None:
            extra = copy.copy(extra)
            extra.metavar = _metavar(base, extra, name)
        changed.append(extra)
    return Annotated.__class_getitem__((base, *changed))


def command(*, cluster: bool = False) -> Callable[[Callable], Callable]:
    """Give a command the shared options, written once here instead of in every command.

    The decorated function takes ``output: Output`` (from ``-v``, ``-q``, ``--json``) and,
    with ``cluster=True``, ``cluster: ClusterOptions`` (from ``--scheduler``, ``--workers``,
    ...); the command line gets those options after the function's own. Typer reads the
    command's parameters from its signature, which is rewritten accordingly (with readable
    metavars, :func:`_metavar`).
    """
    shared = (_CLUSTER_OPTIONS if cluster else ()) + _OUTPUT_OPTIONS

    def decorate(fn: Callable) -> Callable:
        signature = inspect.signature(fn, eval_str=True)
        own = [p.replace(annotation=_readable(p.annotation, p.name))
               for p in signature.parameters.values() if p.name not in ("output", "cluster")]
        added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                   annotation=_readable(annotation, name))
                 for name, annotation, default in shared]
        name = fn.__name__.rstrip("_")

        def wrapper(**kwargs: Any) -> Any:
            extra = {"output": Output(*(kwargs.pop(name) for name, _, _ in _OUTPUT_OPTIONS),
                                      command=name)}
            if cluster:
                extra["cluster"] = ClusterOptions(*(kwargs.pop(name)
                                                    for name, _, _ in _CLUSTER_OPTIONS))
            return fn(**kwargs, **extra)

        parameters = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + added
        wrapper.__signature__ = signature.replace(parameters=parameters)
        wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
        for attribute in ("__name__", "__qualname__", "__doc__", "__module__"):
            setattr(wrapper, attribute, getattr(fn, attribute))
        return wrapper

    return decorate


@contextlib.contextmanager
def dask_client(options: ClusterOptions, output: Output) -> Iterator[Any]:
    """Connect to ``--scheduler`` or start a local cluster; print the dashboard; close what we made.

    A client to an explicit scheduler is closed on exit but the cluster is left running;
    a local cluster started here is closed with its client.
    """
    import dask

    from distgmm.cluster import get_client, local_cluster_client, make_security, scheduler_timeout

    output.tame_dask_loggers()
    if output.verbose < 2:  # worker processes of a local cluster inherit this config
        dask.config.set({"logging.distributed": "error"})
    timeout = scheduler_timeout(options.scheduler_timeout)
    if options.scheduler:
        security = make_security(options.tls_ca_file, options.tls_cert, options.tls_key)
        client = get_client(options.scheduler, security, timeout)
        cluster = None
    else:
        if any((options.tls_ca_file, options.tls_cert, options.tls_key)):
            raise DistgmmInputError("--tls-* options need --scheduler; a local cluster does not use TLS.")
        client = local_cluster_client(options.workers, options.threads_per_worker,
                                      options.memory_limit)
        cluster = client.cluster
    output.dashboard = client.dashboard_link
    output.message(f"Dask dashboard: {client.dashboard_link}")
    try:
        yield client
    except Exception as exc:
        # A job fails in many ways when its scheduler dies (cancelled futures, closed comms,
        # timeouts); the client's status tells that this was the cause, not the job.
        if options.scheduler and client.status != "running":
            from distgmm.cluster import scheduler_lost

            raise scheduler_lost(options.scheduler, exc, timeout) from exc
        raise
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _is_cluster_unavailable(exc: BaseException) -> bool:
    """Is ``exc`` distgmm's own "scheduler unreachable or lost" error (a clear message, no bug)?"""
    cluster = sys.modules.get("distgmm.cluster")  # not imported: the error cannot be ours
    return cluster is not None and isinstance(exc, cluster.ClusterUnavailableError)


@contextlib.contextmanager
def handle_errors(output: Output) -> Iterator[None]:
    """Turn exceptions into ``error: <message>`` on stderr and an exit code.

    Exit codes: 0 success; 3 (:data:`EXIT_DRIFT`) is set by ``label --fail-on-drift`` and
    ``run`` themselves, after their output, when drift was reported. Bad input
    (``ValueError``, including :class:`DistgmmInputError`) exits 2; an unreachable
    or lost scheduler (:class:`distgmm.cluster.ClusterUnavailableError`) and a run that
    cannot go ahead now (:class:`DistgmmRunError`, e.g. a store busy for longer than
    ``--lock-wait``) exit 1 with their message; anything unexpected exits 1 (with the
    traceback at ``-v``).
    """
    def fail(kind: str, message: str, code: int) -> typer.Exit:
        sys.stderr.write(f"error: {message}\n")
        output.emit_error(kind, message, code)
        return typer.Exit(code)

    try:
        yield
    except (typer.Exit, typer.Abort, click_errors.ClickException):
        raise
    except ValueError as exc:
        raise fail("input", " ".join(str(exc).split()), EXIT_BAD_INPUT) from None
    except KeyboardInterrupt:
        raise fail("interrupted", "interrupted", 130) from None
    except BrokenPipeError:
        # stdout closed early (`distgmm predict ... | head`): stop quietly, as a killed-by-
        # SIGPIPE Unix tool does (128 + 13), and keep Python from complaining at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise typer.Exit(141) from None
    except Exception as exc:  # the CLI boundary: report anything, exit non-zero
        if isinstance(exc, DistgmmRunError) or _is_cluster_unavailable(exc):
            if output.verbose:
                traceback.print_exc()
            raise fail("run" if isinstance(exc, DistgmmRunError) else "cluster", str(exc),
                       EXIT_FAILURE) from None
        if output.verbose:
            traceback.print_exc()
        raise fail("unexpected", f"unexpected {type(exc).__name__}: "
                   f"{' '.join(str(exc).split())} (run with -v for the traceback)",
                   EXIT_FAILURE) from None
