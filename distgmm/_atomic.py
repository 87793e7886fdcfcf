"""Atomic file writes: write a temporary file next to the target, fsync, rename over it."""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from collections.abc import Iterator
from typing import IO

__all__ = ["atomic_write", "check_output_file", "check_output_directory", "is_url", "local_path",
           "url_filesystem", "write_file", "read_file", "file_exists", "remove_file"]


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success it replaces ``path`` atomically.

    A reader (or a crash at any moment) sees the old file or the complete new one, never a
    torn one; on error the temporary file is removed and ``path`` is untouched. Permissions
    follow the umask, as for a plain ``open``.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    temporary = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(descriptor, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


#: First bytes of the files distgmm writes, by kind (an existing file of another kind is
#: never replaced).
_MAGIC = {"png": b"\x89PNG\r\n\x1a\n", "npy": b"\x93NUMPY", "npz": b"PK\x03\x04"}


def check_output_file(path: str | os.PathLike, *, what: str, kind: str | None = None,
                      replace: bool = True) -> None:
    """Refuse, before any work, an output file that cannot be written or must not be replaced.

    Checks that ``path`` is not a directory, that its nearest existing ancestor is a
    writable directory (not a file), and, when it exists, that ``replace`` allows replacing
    it and that it is a file of ``kind`` (``"png"``, ``"npy"``, ``"npz"``: judged by its
    first bytes), so that no command overwrites a file of another kind.

    Raises
    ------
    distgmm.errors.DistgmmInputError
        Naming the path, the problem and the fix.
    """
    from distgmm.errors import DistgmmInputError

    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(path):
        raise DistgmmInputError(f"{what} {path} is a directory; give a file path.")
    check_output_directory(os.path.dirname(path), what=f"{what} {path}")
    if not os.path.lexists(path):
        return
    if not replace:
        return
    if kind is not None:
        with open(path, "rb") as handle:
            head = handle.read(len(_MAGIC[kind]))
        if head != _MAGIC[kind]:
            raise DistgmmInputError(
                f"{what} {path} exists and is not a {kind} file; refusing to replace it. "
                "Choose another path or remove it yourself.")
    try:
        open(path, "ab").close()  # writes nothing; fails where writing would
    except OSError as exc:
        raise DistgmmInputError(f"{what} {path} exists and cannot be written "
                                f"({exc.strerror}); check its permissions or choose another "
                                "path.") from None


def check_output_directory(directory: str | os.PathLike, *, what: str) -> None:
    """Refuse a directory to write into (existing or to be created) that cannot be: one of
    its ancestors is a file, or the nearest existing one is not writable."""
    from distgmm.errors import DistgmmInputError

    probe = os.path.abspath(os.fspath(directory) or ".")
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        if os.path.lexists(probe):  # a dangling symbolic link
            raise DistgmmInputError(f"{what}: {probe} is a broken symbolic link; fix or "
                                    "remove it.")
        probe = parent
    if not os.path.isdir(probe):
        raise DistgmmInputError(f"{what} is under {probe}, which is a file, not a directory; "
                                "choose a path in a directory.")
    # Try it: permission bits do not tell root, read-only mounts or pseudo-file systems.
    try:
        descriptor, name = tempfile.mkstemp(prefix=".distgmm-probe-", dir=probe)
    except OSError as exc:
        raise DistgmmInputError(f"{what} cannot be written: cannot create files in {probe} "
                                f"({exc.strerror}); choose a writable location.") from None
    os.close(descriptor)
    os.unlink(name)


# ---------------------------------------------------------------------------- files at URLs
def is_url(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a URL for fsspec (``s3://...``, ``gcs://...``, ``memory://...``)
    rather than a local path; ``file://`` URLs count as local."""
    text = os.fspath(path)
    return "://" in text and not text.startswith("file://")


def local_path(path: str | os.PathLike) -> str:
    """A local path, without a ``file://`` prefix."""
    return os.fspath(path).removeprefix("file://")


def url_filesystem(url: str, storage_options: dict | None = None):
    """``(fsspec filesystem, path)`` of a URL; an unknown protocol or a missing fsspec
    implementation is a :class:`~distgmm.errors.DistgmmInputError` naming the fix."""
    from fsspec.core import url_to_fs

    from distgmm.errors import DistgmmInputError

    try:
        return url_to_fs(url, **(storage_options or {}))
    except (ValueError, ImportError) as exc:
        raise DistgmmInputError(
            f"cannot open {url}: {' '.join(str(exc).split())}; use a local path or a URL "
            "fsspec supports (for s3://, install s3fs: `pip install distgmm[s3]`).") from None


def write_file(path: str | os.PathLike, data: bytes, storage_options: dict | None = None) -> None:
    """Write ``data`` to a local path atomically (:func:`atomic_write`) or to a URL in one
    ``pipe_file`` (one PUT on object stores, which is atomic: readers see the old object or
    the new one)."""
    if is_url(path):
        fs, target = url_filesystem(os.fspath(path), storage_options)
        fs.pipe_file(target, data)
        return
    with atomic_write(local_path(path)) as handle:
        handle.write(data)


def read_file(path: str | os.PathLike, storage_options: dict | None = None) -> bytes:
    """The bytes of a local file or of the object at a URL (FileNotFoundError if none)."""
    if is_url(path):
        fs, target = url_filesystem(os.fspath(path), storage_options)
        return fs.cat_file(target)
    with open(local_path(path), "rb") as handle:
        return handle.read()


def file_exists(path: str | os.PathLike, storage_options: dict | None = None) -> bool:
    """Whether a file (or object) exists at a local path or URL."""
    if is_url(path):
        fs, target = url_filesystem(os.fspath(path), storage_options)
        return bool(fs.isfile(target))
    return os.path.isfile(local_path(path))


def remove_file(path: str | os.PathLike, storage_options: dict | None = None) -> None:
    """Delete a local file or an object, if it exists."""
    if is_url(path):
        fs, target = url_filesystem(os.fspath(path), storage_options)
        if fs.exists(target):
            fs.rm_file(target)
        return
    with contextlib.suppress(FileNotFoundError):
        os.unlink(local_path(path))


def check_output_url(url: str, *, what: str, storage_options: dict | None = None) -> bool:
    """Refuse, before any work, an output URL that cannot be written: an unknown protocol,
    a store that cannot be reached, a bucket (the URL's first part) that does not exist, or
    a directory there. Returns whether a file exists at the URL."""
    from distgmm.errors import DistgmmInputError

    fs, target = url_filesystem(url, storage_options)
    try:
        if fs.isdir(target):
            raise DistgmmInputError(f"{what} {url} is a directory; give a file URL.")
        root = target.split("/", 1)[0]
        if "/" in target and not fs.exists(root):
            raise DistgmmInputError(f"{what} {url}: {root} does not exist; create the bucket "
                                    "first or check the URL.")
        return bool(fs.isfile(target))
    except DistgmmInputError:
        raise
    except Exception as exc:  # credentials, endpoint, network: say so before any work
        raise DistgmmInputError(f"{what} {url} cannot be reached ({type(exc).__name__}: "
                                f"{' '.join(str(exc).split())}); check the URL and "
                                "--storage-option values.") from None
