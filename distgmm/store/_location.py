"""Where a point store lives (local path or fsspec URL) and how a new one is committed atomically."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import zarr
from zarr.storage import FsspecStore, LocalStore

from distgmm.errors import DistgmmInputError

__all__ = ["StoreLocation", "building", "building_store"]

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

    @property
    def is_local(self) -> bool:
        """Whether the store is a directory on the local file system."""
        return _is_local(self.url)

    @property
    def path(self) -> str:
        """The local directory (only for local stores)."""
        url = self.url.removeprefix("file://")
        return os.path.abspath(os.path.expanduser(url))

    def zarr_store(self, read_only: bool = True) -> zarr.abc.store.Store:
        """Open the underlying Zarr store object."""
        if self.is_local:
            return LocalStore(self.path, read_only=read_only)
        return FsspecStore.from_url(self.url, storage_options=self.storage_options or {},
                                    read_only=read_only)

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
def building_store(location: StoreLocation, overwrite: bool = False) -> Iterator[StoreLocation]:
    """Yield a location to build a new store in, and make it visible at ``location`` on success.

    Local stores are built in a hidden sibling directory and renamed into place (an existing
    store replaced by ``overwrite`` is swapped atomically with ``renameat2`` where Linux
    supports it). Remote stores (object stores have no rename) are built in place; their group
    attribute ``distgmm.complete`` stays false until the last write, and :func:`open_points`
    refuses incomplete stores. On error, whatever was built is removed.
    """
    check_destination(location, overwrite)
    with building(location) as target:
        yield target


@contextlib.contextmanager
def building(location: StoreLocation) -> Iterator[StoreLocation]:
    """Yield where to build what goes at ``location``; on success it replaces whatever is
    there, as :func:`building_store` describes; on error nothing is left. No checks: the
    caller decides what may be replaced."""
    if not location.is_local:
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
    os.makedirs(parent or ".", exist_ok=True)
    tmp = StoreLocation(os.path.join(parent, f".{name}{_TMP_MARK}{uuid.uuid4().hex[:12]}"))
    try:
        yield tmp
        if os.path.lexists(target):
            if not _exchange(tmp.path, target):
                old = os.path.join(parent, f".{name}{_OLD_MARK}{uuid.uuid4().hex[:12]}")
                os.rename(target, old)
                os.rename(tmp.path, target)
                tmp = StoreLocation(old)
            # After the exchange ``tmp`` holds the previous store, which is deleted below.
            shutil.rmtree(tmp.path, ignore_errors=True)
        else:
            os.rename(tmp.path, target)
        logger.info("committed store %s", target)
    except BaseException:
        shutil.rmtree(tmp.path, ignore_errors=True)
        raise
