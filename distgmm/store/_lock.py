"""Writer locks of point stores: one writer at a time per store's rows and per label set.

Every command that writes to a store holds a lock while it writes (readers take none: an
append never changes a committed row, so a fit or a label job sees a consistent snapshot).

Scopes (several processes can hold different scopes of one store at once):

* ``rows``: the store's rows and the store as a whole. Held by ``ingest`` (new store or
  ``--overwrite``), ``ingest --append`` and ``generate`` for their whole run: two appends
  both write the chunks past the committed rows, so they cannot overlap.
* ``labels.<name>``: the label set ``labels/<name>`` (and ``proba/<name>``), held by a
  label run for its whole run. Label runs of other names, appends and fits go on beside it
  (the label-state rules keep an append's grown partial chunk pending).
* ``replace``: taken, after ``rows``, by a command that replaces an existing store
  (``--overwrite``), which then also takes every ``labels.*`` lock in use. A label run
  checks, after taking its own lock, that no ``replace`` is held (and backs off if one
  is): one of the two always sees the other, so a store is never swapped out under a
  label run.

Lock objects live beside the store, not in it (they must exist before the store does, and
survive an ``--overwrite`` that swaps the store's directory): ``.<store
name>.distgmm-lock-<scope>`` in the store's parent directory or prefix. They hold JSON
naming the owner (host, pid, operation, start time), which the error for a busy store
quotes. Waiting is bounded (``wait`` seconds, ``--lock-wait``, ``DISTGMM_LOCK_WAIT``;
default :data:`DEFAULT_WAIT`); then the command fails with exit 1 and names the holder.

How a lock is held, and what happens when its holder is killed:

* **Local file systems**: ``flock`` on the lock file. The kernel releases it when the
  holding process ends in any way (``kill -9`` included), so a killed writer never blocks
  the next one; the file it leaves behind is reused, and removed by the next holder on a
  clean release. (On NFSv4 the server does the same once the dead client's lease lapses.)
  A file system without ``flock`` support is an error that says so.
* **S3** (``s3://``): a lease object created with a conditional PUT (``If-None-Match: *``:
  exactly one creator succeeds). The holder rewrites it every ``lease / 4`` seconds (a
  heartbeat, conditional on its own ETag). A lock is stale, and is taken over by a
  conditional PUT on the stale object's ETag (so two processes cannot both break it), when
  its heartbeat is older than its lease (:data:`DEFAULT_LEASE` s, ``DISTGMM_LOCK_LEASE``;
  clocks must agree to well within that, as NTP keeps them), or at once when its holder ran
  on this host and that process is gone. A holder whose lock was taken over (it stalled for
  longer than its lease) finds out at its next heartbeat or commit and fails before
  committing anything.
* Other fsspec file systems: created with ``pipe_file(mode="create")`` where the file system
  supports it; taking over a stale lock there is not atomic (delete, then create).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

from distgmm._atomic import check_output_directory
from distgmm.errors import DistgmmInputError, DistgmmRunError
from distgmm.store._location import StoreLocation, _make_parents, _remove_empty, remove_debris

__all__ = ["StoreBusyError", "StoreLock", "store_lock", "rows_lock", "labels_lock", "replace_lock",
           "lock_wait", "DEFAULT_WAIT", "DEFAULT_LEASE", "WAIT_ENV", "LEASE_ENV"]

logger = logging.getLogger(__name__)

#: Seconds a writer waits for a busy store before failing (``--lock-wait``).
DEFAULT_WAIT = 60.0
#: Seconds after its last heartbeat that an S3 lease lock counts as abandoned.
DEFAULT_LEASE = 60.0
WAIT_ENV = "DISTGMM_LOCK_WAIT"
LEASE_ENV = "DISTGMM_LOCK_LEASE"
_MARK = ".distgmm-lock-"
_POLL = 0.2


class StoreBusyError(DistgmmRunError):
    """Another process holds the lock a writer needs, for longer than the writer may wait.

    The message names the store, the scope, the holder (host, pid, operation, since when)
    and what to do; the CLI prints it as ``error: <message>`` and exits 1.
    """


def _env_seconds(name: str, default: float) -> float:
    value = os.environ.get(name)
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        raise DistgmmInputError(f"{name}={value!r} is not a number of seconds.") from None
    if not seconds >= 0:
        raise DistgmmInputError(f"{name}={value!r} must be 0 or more seconds.")
    return seconds


def lock_wait(wait: float | None) -> float:
    """``wait`` if given, else ``$DISTGMM_LOCK_WAIT``, else :data:`DEFAULT_WAIT` (checked >= 0)."""
    if wait is None:
        return _env_seconds(WAIT_ENV, DEFAULT_WAIT)
    if not wait >= 0:
        raise DistgmmInputError(f"--lock-wait must be 0 or more seconds, got {wait}.")
    return float(wait)


def lock_url(location: StoreLocation, scope: str) -> str:
    """Path (local) or URL (remote) of the lock object of ``scope`` for ``location``."""
    if location.is_local:
        parent, name = os.path.split(location.path)
    else:
        url = location.url.rstrip("/")
        if "/" not in url.partition("://")[2]:
            raise DistgmmInputError(
                f"{location}: a store must have a name inside its bucket (e.g. "
                "s3://bucket/points.zarr), so that its locks can sit beside it.")
        parent, _, name = url.rpartition("/")
    return f"{parent}/.{name}{_MARK}{scope}"


def _process_start(pid: int) -> float | None:
    try:
        import psutil

        return psutil.Process(pid).create_time()
    except Exception:  # gone, or no permission: the caller treats None as "not this one"
        return None


def _owner(operation: str, scope: str) -> dict[str, Any]:
    now = time.time()
    return {"token": secrets.token_hex(8), "host": socket.gethostname(), "pid": os.getpid(),
            "pid_start": _process_start(os.getpid()), "operation": operation, "scope": scope,
            "acquired": now, "heartbeat": now, "beat": 0}


def _describe(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "another process (its lock file names no owner yet)"
    since = holder.get("acquired")
    age = f", for {time.time() - since:.0f} s" if isinstance(since, (int, float)) else ""
    return (f"`{holder.get('operation', '?')}` (pid {holder.get('pid', '?')} on "
            f"{holder.get('host', '?')}{age})")


def _busy(location: StoreLocation, scope: str, holder: dict | None, waited: float) -> StoreBusyError:
    what = "its rows" if scope in ("rows", "replace") else f"labels/{scope.split('.', 1)[1]}"
    return StoreBusyError(
        f"{location} is busy: {what} are being written by {_describe(holder)}; waited "
        f"{waited:.0f} s. Run again once it has finished, or wait longer with --lock-wait "
        f"SECONDS ({WAIT_ENV}). A lock whose holder was killed is released by itself (see "
        "'Concurrent runs' in the README).")


def _holder_is_dead(holder: dict[str, Any]) -> bool:
    """The holder ran on this host and that process is gone (or the pid was reused)."""
    if holder.get("host") != socket.gethostname():
        return False
    pid = holder.get("pid")
    if not isinstance(pid, int):
        return False
    start = _process_start(pid)
    if start is None:
        return True
    recorded = holder.get("pid_start")
    return isinstance(recorded, (int, float)) and abs(start - recorded) > 1.0


class _LocalLock:
    """``flock`` on a lock file; the kernel releases it when the holder dies."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd: int | None = None

    def try_acquire(self, owner: dict[str, Any]) -> bool:
        import fcntl

        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except FileNotFoundError:
                raise DistgmmInputError(f"cannot lock {self.path}: its directory does not exist.") from None
            except PermissionError:
                raise DistgmmInputError(
                    f"cannot create the lock file {self.path}: permission denied; the "
                    "directory holding the store must be writable.") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    raise DistgmmInputError(
                        f"the file system of {self.path} does not support file locks (flock), "
                        "which distgmm needs to keep concurrent writers apart; put the store "
                        "on a file system that does (local disk, NFSv4, Lustre mounted with "
                        "-o flock) or on S3.") from None
                raise
            # The previous holder may have removed the file between our open and our lock:
            # then we hold a lock on a file nobody else will see; start again.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            data = json.dumps(owner).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
            self.fd = fd
            return True

    def holder(self) -> dict[str, Any] | None:
        try:
            with open(self.path, "rb") as f:
                return json.loads(f.read() or b"null")
        except (OSError, ValueError):
            return None

    def is_held(self) -> bool:
        import fcntl

        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def heartbeat(self) -> bool:
        return True

    def release(self) -> None:
        import fcntl

        if self.fd is None:
            return
        # Unlink while holding the lock; a process waiting on the old file notices that the
        # path no longer names it (see try_acquire) and starts again.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None


class _RemoteLock:
    """A lease object created conditionally, kept alive by heartbeats (S3 and other fsspec)."""

    def __init__(self, location: StoreLocation, url: str, lease: float) -> None:
        from fsspec.core import url_to_fs

        self.fs, self.path = url_to_fs(url, **(location.storage_options or {}))
        self.url = url
        self.lease = lease
        self.s3 = type(self.fs).__name__ == "S3FileSystem"
        self.etag: str | None = None
        self.owner: dict[str, Any] | None = None

    def _read(self) -> tuple[dict[str, Any] | None, str | None]:
        if self.s3:
            from fsspec.asyn import sync

            bucket, key, _ = self.fs.split_path(self.path)
            try:
                out = sync(self.fs.loop, self.fs._call_s3, "get_object", Bucket=bucket, Key=key)
                body = sync(self.fs.loop, out["Body"].read)
            except FileNotFoundError:
                return None, None
            etag = out.get("ETag")
        else:
            try:
                body = self.fs.cat_file(self.path)
            except FileNotFoundError:
                return None, None
            etag = None
        try:
            return json.loads(body), etag
        except ValueError:
            return {}, etag

    def _put(self, owner: dict[str, Any], *, create: bool = False, if_match: str | None = None) -> str | None:
        data = json.dumps(owner).encode()
        if self.s3:
            kwargs: dict[str, Any] = {"IfNoneMatch": "*"} if create else {}
            if if_match is not None:
                kwargs["IfMatch"] = if_match
            out = self.fs.pipe_file(self.path, data, **kwargs)
            return out.get("ETag") if isinstance(out, dict) else None
        if create:
            self.fs.pipe_file(self.path, data, mode="create")
        else:
            self.fs.pipe_file(self.path, data)
        return None

    def try_acquire(self, owner: dict[str, Any]) -> bool:
        owner = {**owner, "lease": self.lease}
        try:
            self.etag = self._put(owner, create=True)
        except FileExistsError:
            holder, etag = self._read()
            if holder is None:
                return False  # released meanwhile: the caller tries again at once
            if not self._stale(holder):
                return False
            logger.warning("breaking the stale lock %s of %s", self.url, _describe(holder))
            try:
                if self.s3:
                    self.etag = self._put(owner, if_match=etag)
                else:
                    self.fs.rm_file(self.path)
                    self.etag = self._put(owner, create=True)
            except (OSError, FileExistsError):
                return False  # someone else broke or renewed it first
        self.owner = owner
        return True

    def _stale(self, holder: dict[str, Any]) -> bool:
        if _holder_is_dead(holder):
            return True
        beat, lease = holder.get("heartbeat"), holder.get("lease", DEFAULT_LEASE)
        if not isinstance(beat, (int, float)) or not isinstance(lease, (int, float)):
            return False
        return time.time() - beat > lease

    def holder(self) -> dict[str, Any] | None:
        return self._read()[0]

    def is_held(self) -> bool:
        holder, _ = self._read()
        return holder is not None and not self._stale(holder)

    def heartbeat(self) -> bool:
        """Renew the lease; False if the lock is no longer ours."""
        if self.owner is None:
            return False
        owner = {**self.owner, "heartbeat": time.time(), "beat": self.owner["beat"] + 1}
        try:
            if self.s3:
                self.etag = self._put(owner, if_match=self.etag)
            else:
                holder, _ = self._read()
                if not holder or holder.get("token") != owner["token"]:
                    return False
                self._put(owner)
        except (OSError, FileNotFoundError):
            return False
        self.owner = owner
        return True

    def release(self) -> None:
        if self.owner is None:
            return
        try:
            if self.s3:
                from fsspec.asyn import sync

                bucket, key, _ = self.fs.split_path(self.path)
                sync(self.fs.loop, self.fs._call_s3, "delete_object", Bucket=bucket, Key=key,
                     IfMatch=self.etag)
            else:
                holder, _ = self._read()
                if holder and holder.get("token") == self.owner["token"]:
                    self.fs.rm_file(self.path)
        except (OSError, FileNotFoundError):
            logger.warning("lock %s was no longer ours at release", self.url)
        self.owner = None


class StoreLock:
    """One held lock (see the module docstring); use :func:`store_lock` to take one."""

    def __init__(self, location: StoreLocation, scope: str, operation: str,
                 lease: float | None = None) -> None:
        self.location = location
        self.scope = scope
        self.operation = operation
        self.url = lock_url(location, scope)
        lease = _env_seconds(LEASE_ENV, DEFAULT_LEASE) if lease is None else lease
        self._impl = (_LocalLock(self.url) if location.is_local
                      else _RemoteLock(location, self.url, lease))
        self._lost = False
        self._stop = threading.Event()
        self._beater: threading.Thread | None = None

    def acquire(self, wait: float) -> "StoreLock":
        """Take the lock, waiting up to ``wait`` seconds; :class:`StoreBusyError` if not."""
        start = time.monotonic()
        while not self._impl.try_acquire(_owner(self.operation, self.scope)):
            waited = time.monotonic() - start
            if waited >= wait:
                raise _busy(self.location, self.scope, self._impl.holder(), waited)
            time.sleep(min(_POLL, max(0.0, wait - waited)))
        if isinstance(self._impl, _RemoteLock):
            self._beater = threading.Thread(target=self._beat, name=f"distgmm-lock-{self.scope}",
                                            daemon=True)
            self._beater.start()
        logger.debug("locked %s (%s)", self.url, self.operation)
        return self

    def _beat(self) -> None:
        interval = max(0.05, self._impl.lease / 4)
        while not self._stop.wait(interval):
            if not self._impl.heartbeat():
                self._lost = True
                logger.error("lost the lock %s: it was taken over after its lease expired",
                             self.url)
                return

    def ensure_held(self) -> None:
        """Raise before a commit if the lock was taken over (an S3 lease that lapsed)."""
        if self._lost:
            raise StoreBusyError(
                f"{self.location}: this run lost its lock ({self.scope}) to another writer "
                "after stalling for longer than the lease; nothing more was committed. Run "
                "it again.")

    def release(self) -> None:
        """Release the lock (idempotent)."""
        self._stop.set()
        if self._beater is not None:
            self._beater.join()
            self._beater = None
        self._impl.release()


@contextlib.contextmanager
def store_lock(location: StoreLocation, scope: str, operation: str,
               wait: float | None = None) -> Iterator[StoreLock]:
    """Hold the ``scope`` lock of ``location`` for the ``with`` block (see the module rules)."""
    lock = StoreLock(location, scope, operation).acquire(lock_wait(wait))
    try:
        yield lock
    finally:
        lock.release()


@contextlib.contextmanager
def rows_lock(location: StoreLocation, operation: str, wait: float | None = None
              ) -> Iterator[StoreLock]:
    """Hold the ``rows`` lock of a store being created, replaced or appended to.

    A local store's parent directories are created first (the lock file sits there) and
    removed again if the write fails and they are empty. Under the lock, whatever a killed
    writer of this store left (hidden build directories, an incomplete remote store) is
    removed first: every writer holds this lock, so nobody is using it.
    """
    created = []
    if location.is_local:
        check_output_directory(os.path.dirname(location.path), what=f"store {location}")
        created = _make_parents(os.path.dirname(location.path))
    try:
        with store_lock(location, "rows", operation, wait) as lock:
            remove_debris(location)
            yield lock
    except BaseException:
        _remove_empty(created)
        raise


def _label_lock_names(location: StoreLocation) -> list[str]:
    """Label sets whose lock object exists (held, or left by a killed run)."""
    prefix = lock_url(location, "labels.")
    parent, _, stem = prefix.rpartition("/")
    if location.is_local:
        try:
            names = os.listdir(parent)
        except FileNotFoundError:
            return []
    else:
        from fsspec.core import url_to_fs

        fs, path = url_to_fs(parent, **(location.storage_options or {}))
        fs.invalidate_cache(path)
        try:
            names = [p.rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)]
        except FileNotFoundError:
            return []
    return sorted(n[len(stem):] for n in names if n.startswith(stem))


@contextlib.contextmanager
def replace_lock(location: StoreLocation, operation: str, wait: float | None = None
                 ) -> Iterator[None]:
    """While holding ``rows``: hold ``replace`` and every label-set lock, so that no label
    run writes into a store that is about to be swapped out."""
    seconds = lock_wait(wait)
    deadline = time.monotonic() + seconds
    with contextlib.ExitStack() as stack:
        stack.enter_context(store_lock(location, "replace", operation, seconds))
        for name in _label_lock_names(location):
            left = max(0.0, deadline - time.monotonic())
            stack.enter_context(store_lock(location, f"labels.{name}", operation, left))
        yield


@contextlib.contextmanager
def labels_lock(location: StoreLocation, name: str, operation: str,
                wait: float | None = None) -> Iterator[StoreLock]:
    """Hold the lock of ``labels/<name>``, never while the store is being replaced."""
    seconds = lock_wait(wait)
    start = time.monotonic()
    replace = StoreLock(location, "replace", operation)
    while True:
        left = max(0.0, seconds - (time.monotonic() - start))
        lock = StoreLock(location, f"labels.{name}", operation).acquire(left)
        if not replace._impl.is_held():
            break
        lock.release()
        waited = time.monotonic() - start
        if waited >= seconds:
            raise _busy(location, "replace", replace._impl.holder(), waited)
        time.sleep(_POLL)
    try:
        yield lock
    finally:
        lock.release()
