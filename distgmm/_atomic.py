"""Atomic file writes: write a temporary file next to the target, fsync, rename over it."""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from collections.abc import Iterator
from typing import IO

__all__ = ["atomic_write", "check_output_file", "check_output_directory"]


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
