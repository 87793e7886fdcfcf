"""Safe, atomic storage of named NumPy arrays plus JSON metadata in one ``.npz`` file (no pickle).

The metadata is stored as UTF-8 JSON bytes in the array ``__meta__``; files are read with
``allow_pickle=False`` so loading never executes code. Writes go to a temporary file in the
same directory and are renamed over the target, so a reader sees the old file or the new one,
never a torn one; a file at a URL (``s3://...``, any fsspec file system) is written in one
PUT, which object stores make atomic too. A SHA-256 over the arrays (names, dtypes, shapes, bytes) and metadata is
stored alongside and checked on load, so a corrupted or edited file is rejected.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile

import numpy as np

from ._atomic import read_file, write_file

__all__ = ["save_arrays", "load_arrays", "content_digest", "CorruptFileError"]

_META = "__meta__"
_DIGEST = "__sha256__"


class CorruptFileError(ValueError):
    """A file is not a readable distgmm array file, or its checksum does not match."""


def content_digest(arrays: dict[str, np.ndarray], meta: dict) -> str:
    """SHA-256 hex digest of arrays (sorted by name) and canonical JSON metadata."""
    h = hashlib.sha256()
    h.update(json.dumps(meta, sort_keys=True, separators=(",", ":")).encode())
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(name.encode())
        h.update(str(a.dtype.str).encode())
        h.update(repr(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def save_arrays(path: str | os.PathLike, arrays: dict[str, np.ndarray], meta: dict,
                storage_options: dict | None = None) -> str:
    """Write ``arrays`` and ``meta`` to ``path`` (a local path or an fsspec URL, with
    ``storage_options``) atomically; return the content digest."""
    path = os.fspath(path)
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    for name, a in arrays.items():
        if a.dtype == object:
            raise TypeError(f"array {name!r} has dtype object, which cannot be stored safely")
    digest = content_digest(arrays, meta)
    payload = dict(arrays)
    payload[_META] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)
    payload[_DIGEST] = np.frombuffer(digest.encode(), dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, **payload)
    write_file(path, buffer.getvalue(), storage_options)
    return digest


def load_arrays(path: str | os.PathLike, storage_options: dict | None = None
                ) -> tuple[dict[str, np.ndarray], dict, str]:
    """Read a file written by :func:`save_arrays` (a local path or an fsspec URL).

    Returns
    -------
    arrays : dict of str to ndarray
    meta : dict
    digest : str

    Raises
    ------
    CorruptFileError
        The file is not an ``.npz`` written by distgmm, or its checksum does not match.
    """
    path = os.fspath(path)
    try:
        raw = read_file(path, storage_options)
        if not raw.startswith(b"PK"):
            raise ValueError("not a zip archive")
        with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
            data = {name: npz[name] for name in npz.files}
    except FileNotFoundError:
        raise
    except (OSError, ValueError, TypeError, zipfile.BadZipFile, EOFError) as exc:
        raise CorruptFileError(
            f"{path} is not a readable distgmm file ({exc.__class__.__name__}); "
            "it may be truncated or not a distgmm file: write it again"
        ) from None
    if _META not in data or _DIGEST not in data:
        raise CorruptFileError(
            f"{path} is not a distgmm file (no metadata); write it again with distgmm"
        )
    try:
        meta = json.loads(data.pop(_META).tobytes().decode())
        stored = data.pop(_DIGEST).tobytes().decode()
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CorruptFileError(f"{path} has unreadable metadata; write it again") from None
    if content_digest(data, meta) != stored:
        raise CorruptFileError(
            f"{path} failed its checksum: the file was modified or corrupted after it was "
            "written; write it again"
        )
    return data, meta, stored
