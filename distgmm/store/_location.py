"""Where a point store lives (local path or fsspec URL) and how a new one is committed atomically."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from typing import ContextManager
from dataclasses import dataclass, field
from typing import Any

import zarr
from zarr.storage import FsspecStore, LocalStore

from distgmm._atomic import check_output_directory
from distgmm.errors import DistgmmInputError

__all__ = ["StoreLocation", "building", "building_store", "remove_debris",
           "check_store_destination"]

logger = logging.getLogger(__name__)

_TMP_MARK = ".distgmm-tmp-"
_OLD_MARK = ".distgmm-old-"


def _is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


@dataclass(frozen=True)
class StoreLocation:
    """A store URL plus fsspec options; picklable, so Dask tasks can reopen the store.

    Parameters
    ----------
    url : str
        A local path (``data/points.zarr`` or ``file://...``) or any URL fsspec understands
        (``s3://bucket/points.zarr``).
    storage_options : dict, optional
        Passed to fsspec for remote URLs (credentials, ``endpoint_url``...).
    """

    url: str
    storage_options: dict[str, Any] | None = field(default=None, hash=False, compare=False)
    #: The absolute local path, fixed where the location is made (the client), so that a
    #: worker with another working directory opens the same store.
    resolved: str = field(init=False, repr=False, compare=False, default="")

    def __post_init__(self) -> None:
        if _is_local(self.url):
            path = os.path.abspath(os.path.expanduser(self.url.removeprefix("file://")))
            object.__setattr__(self, "resolved", path)

    @property
    def is_local(self) -> bool:
        """Whether the store is a directory on the local file system."""
        return _is_local(self.url)

    @property
    def path(self) -> str:
        """The absolute local directory (only for local stores)."""
        return self.resolved

    def child(self, name: str) -> "StoreLocation":
        """The location of ``name`` inside this one (an array in a group), same options."""
        name = name.strip("/")
        if not name or ".." in name.split("/"):
            raise DistgmmInputError(f"--variable {name!r} is not a path inside {self}; give "
                                    "the array's name, e.g. --variable X.")
        return StoreLocation(f"{self.url.rstrip('/')}/{name}", self.storage_options)

    def zarr_store(self, read_only: bool = True) -> zarr.abc.store.Store:
        """Open the underlying Zarr store object.

        Read-only stores are wrapped in :class:`~distgmm.store._integrity.CheckedStore`, so
        a missing chunk of a row array is an error rather than fill values; writers get the
        plain store (they may read chunks that are not written yet).
        """
        from distgmm.store._integrity import CheckedStore

        if self.is_local:
            store = LocalStore(self.path, read_only=read_only)
        else:
            store = FsspecStore.from_url(self.url, storage_options=self.storage_options or {},
                                         read_only=read_only)
        return CheckedStore(store, self.url) if read_only else store

    def filesystem(self):
        """Return ``(fsspec filesystem, path)`` for this location."""
        from fsspec.core import url_to_fs

        if self.is_local:
            return url_to_fs(self.path)
        return url_to_fs(self.url, **(self.storage_options or {}))

    def exists(self) -> bool:
        """Whether anything (a store or not) exists at the location."""
        if self.is_local:
            return os.path.lexists(self.path)
        fs, path = self.filesystem()
        return bool(fs.exists(path) and (fs.isfile(path) or fs.ls(path, detail=False)))

    def is_point_store(self) -> bool:
        """Whether the location holds a distgmm point store (complete or not)."""
        try:
            group = zarr.open_group(self.zarr_store(read_only=True), mode="r")
        except (FileNotFoundError, zarr.errors.GroupNotFoundError, ValueError, TypeError):
            return False
        return isinstance(group.attrs.get("distgmm"), dict)

    def is_complete_point_store(self) -> bool:
        """Whether the location holds a distgmm point store whose writer finished."""
        try:
            group = zarr.open_group(self.zarr_store(read_only=True), mode="r")
        except (FileNotFoundError, zarr.errors.GroupNotFoundError, ValueError, TypeError):
            return False
        meta = group.attrs.get("distgmm")
        return isinstance(meta, dict) and bool(meta.get("complete"))

    def remove(self) -> None:
        """Delete the location recursively (used for temporaries and ``overwrite``)."""
        if self.is_local:
            if os.path.isdir(self.path) and not os.path.islink(self.path):
                shutil.rmtree(self.path)
            elif os.path.lexists(self.path):
                os.unlink(self.path)
            return
        fs, path = self.filesystem()
        if fs.exists(path):
            fs.rm(path, recursive=True)

    def __str__(self) -> str:
        return self.url


def _exchange(a: str, b: str) -> bool:
    """Atomically swap two paths with Linux ``renameat2(RENAME_EXCHANGE)``; False if unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return rc == 0


def check_store_destination(location: StoreLocation, overwrite: bool) -> None:
    """Refuse, before any work, a new store's destination: a local one that cannot be
    written (under a file, no permission), or one that exists (see :func:`check_destination`)."""
    if location.is_local:
        check_output_directory(os.path.dirname(location.path), what=f"store {location}")
        if os.path.lexists(location.path) and not os.path.isdir(location.path):
            raise DistgmmInputError(
                f"destination {location} exists and is a file, not a point store; refusing "
                "to touch it. Choose another path or remove it yourself.")
    check_destination(location, overwrite)


def check_destination(location: StoreLocation, overwrite: bool) -> None:
    """Refuse an existing destination unless ``overwrite`` and it is a point store.

    Raises
    ------
    DistgmmInputError
        If the destination exists and ``overwrite`` is false, or it exists and is not a
        distgmm point store (never deleted, whatever ``overwrite`` says).
    """
    if not location.exists():
        return
    if location.is_point_store() and not location.is_complete_point_store():
        return  # left by a killed writer, or being written: decided under the store's lock
    if not location.is_point_store():
        raise DistgmmInputError(
            f"destination {location} exists and is not a distgmm point store; "
            "refusing to touch it. Choose another path or remove it yourself."
        )
    if not overwrite:
        raise DistgmmInputError(
            f"destination {location} already exists; pass --overwrite (overwrite=True) to "
            "replace it, or --append to add rows to it."
        )


@contextlib.contextmanager
def building_store(location: StoreLocation, overwrite: bool = False,
                   guard: Callable[[], ContextManager] | None = None) -> Iterator[StoreLocation]:
    """Yield a location to build a new store in, and make it visible at ``location`` on success.

    Local stores are built in a hidden sibling directory and renamed into place (an existing
    store replaced by ``overwrite`` is swapped atomically with ``renameat2`` where Linux
    supports it). Remote stores (object stores have no rename) are built in place; their group
    attribute ``distgmm.complete`` stays false until the last write, and :func:`open_points`
    refuses incomplete stores. On error, whatever was built is removed. ``guard``, when the
    destination exists, is held while it is replaced (see :func:`building`).
    """
    check_destination(location, overwrite)
    replacing = guard if guard is not None and location.exists() else None
    with building(location, replacing) as target:
        yield target


@contextlib.contextmanager
def building(location: StoreLocation, guard: Callable[[], ContextManager] | None = None
             ) -> Iterator[StoreLocation]:
    """Yield where to build what goes at ``location``; on success it replaces whatever is
    there, as :func:`building_store` describes; on error nothing is left. No checks: the
    caller decides what may be replaced. ``guard()`` is a context manager held while what
    is there is replaced: around the rename for a local store, for the whole build for a
    remote one (which is deleted first, then written in place)."""
    guard = guard or contextlib.nullcontext
    if not location.is_local:
        with guard():
            if location.exists():
                location.remove()
            try:
                yield location
            except BaseException:
                with contextlib.suppress(Exception):
                    location.remove()
                raise
        return

    target = location.path
    parent, name = os.path.split(target)
    created = _make_parents(parent)
    tmp = StoreLocation(os.path.join(parent, f".{name}{_TMP_MARK}{uuid.uuid4().hex[:12]}"))
    try:
        yield tmp
        if os.path.lexists(target):
            with guard():
                swapped = _exchange(tmp.path, target)
                if not swapped:
                    old = os.path.join(parent, f".{name}{_OLD_MARK}{uuid.uuid4().hex[:12]}")
                    os.rename(target, old)
                    os.rename(tmp.path, target)
            if not swapped:
                tmp = StoreLocation(old)
            # After the exchange ``tmp`` holds what was there before, deleted below.
            _remove_path(tmp.path)
        else:
            os.rename(tmp.path, target)
        logger.info("committed store %s", target)
    except BaseException:
        _remove_path(tmp.path)
        _remove_empty(created)
        raise


def _remove_path(path: str) -> None:
    """Delete a directory tree or a file (what :func:`building` built or replaced)."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _make_parents(directory: str) -> list[str]:
    """``os.makedirs(directory)``; return the directories it created, deepest first."""
    created = []
    probe = os.path.abspath(directory or ".")
    while not os.path.exists(probe):
        created.append(probe)
        probe = os.path.dirname(probe)
    os.makedirs(directory or ".", exist_ok=True)
    return created


def _remove_empty(directories: list[str]) -> None:
    """Remove directories a failed write created, deepest first, while they are empty."""
    for directory in directories:
        try:
            os.rmdir(directory)
        except OSError:
            return


def remove_debris(location: StoreLocation) -> list[str]:
    """Remove what killed writers of ``location`` left: hidden build directories beside a
    local store, or an incomplete store at a remote URL. Call it only while holding the
    store's ``rows`` lock (every builder of this location holds it while it builds, so
    whatever is found then belongs to a dead process). Returns what was removed."""
    removed: list[str] = []
    if location.is_local:
        parent, name = os.path.split(location.path)
        try:
            entries = os.listdir(parent or ".")
        except FileNotFoundError:
            return removed
        for entry in entries:
            if entry.startswith((f".{name}{_TMP_MARK}", f".{name}{_OLD_MARK}")):
                shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)
                removed.append(os.path.join(parent, entry))
    elif location.is_point_store() and not location.is_complete_point_store():
        location.remove()
        removed.append(location.url)
    for path in removed:
        logger.warning("removed %s, left by an interrupted write", path)
    return removed
