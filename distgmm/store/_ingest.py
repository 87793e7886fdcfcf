"""Ingest text/CSV/npy/Parquet files into point stores and append rows, crash-safely.

How a write stays crash-safe (a ``kill -9`` at any moment leaves the old or the new store,
readable, never a torn one):

* A **new store** is built under a hidden temporary name next to the target
  (``.<name>.distgmm-tmp-<id>``) and renamed into place when complete; replacing an existing
  store (``overwrite``) swaps the two directories atomically (Linux ``renameat2``). On object
  stores, which cannot rename, the store is written in place and only the last write sets
  the group attribute ``distgmm.complete``; incomplete stores are refused by ``open_points``.
* An **append** first writes every chunk the new rows touch *past the visible shape* (through
  a view whose metadata is not saved), then commits by rewriting ``points/zarr.json`` with the
  new shape in a single write. Zarr's ``LocalStore`` writes each key to a temporary file and
  ``os.replace``-s it; an object-store PUT is atomic. Readers of the old metadata ignore every
  row past the old shape, so the uncommitted chunks are invisible until the commit.
* The **partial last chunk**: when the store's row count is not a multiple of the chunk rows,
  the first chunk the append touches already holds visible rows. It is rewritten as a whole
  with those old rows read back and written bit-for-bit unchanged, followed by the new rows.
  Because a chunk key is replaced atomically, a reader (or a crash) sees either the old chunk
  or the new one, and both hold identical values for every visible row. We chose this over
  "whole chunks only" stores, which would force padding or leave the last rows unstored.
* Other per-row arrays (``weights``, ``truth``) are resized *before* ``points``; ``points``'
  shape is the row count of record, and longer companions are read up to it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import zarr

from distgmm._progress import CHUNK_WRITTEN, report
from distgmm.errors import DistgmmInputError
from distgmm.store._integrity import read_rows
from distgmm.store._location import StoreLocation, building_store, check_store_destination
from distgmm.store._lock import replace_lock, rows_lock
from distgmm.store._points import (
    ROW_ARRAY_FILL,
    check_dtype,
    commit_rows,
    create_layout,
    default_chunk_rows,
    mark_complete,
    now_iso,
    open_group_checked,
    staged_view,
)
from distgmm.store._sources import MAX_ABS_VALUE, Source, open_source

__all__ = ["IngestReport", "ingest", "append"]

logger = logging.getLogger(__name__)



@dataclass(frozen=True)
class IngestReport:
    """What an ingest or append did.

    Attributes
    ----------
    store, source : str
        Destination store URL and source file.
    format : str
        Source format (text, csv, npy, parquet).
    rows_before, rows_written, rows_dropped, n_rows : int
        Rows in the store before, rows added, source rows skipped as non-finite, rows after.
    n_features, chunk_rows : int
        Store geometry.
    dtype : str
        Stored dtype.
    seconds : float
        Wall time.
    """

    store: str
    source: str
    format: str
    rows_before: int
    rows_written: int
    rows_dropped: int
    n_rows: int
    n_features: int
    dtype: str
    chunk_rows: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return asdict(self)


class _RowWriter:
    """Buffers incoming row blocks and writes whole chunks past the committed shape."""

    def __init__(self, group: zarr.Group, n_rows: int, dtype: np.dtype) -> None:
        self.points = group["points"]
        self.chunk_rows = int(self.points.chunks[0])
        self.dtype = dtype
        self.companions = [group[name] for name in ROW_ARRAY_FILL if name in group]
        self.start = (n_rows // self.chunk_rows) * self.chunk_rows
        # Old rows of the partial last chunk, rewritten unchanged in front of the new rows.
        self.buffer: list[np.ndarray] = []
        self.buffered = 0
        self.prefix = {a.path: read_rows(a, self.start, n_rows) for a in self.companions}
        if n_rows > self.start:
            self._push(read_rows(self.points, self.start, n_rows))
        self.rows_added = 0
        self.chunks_written = 0

    def _push(self, block: np.ndarray) -> None:
        self.buffer.append(block)
        self.buffered += len(block)

    def add(self, block: np.ndarray) -> None:
        block = np.asarray(block, dtype=self.dtype)
        self._push(block)
        self.rows_added += len(block)
        while self.buffered >= self.chunk_rows:
            self._flush(self.chunk_rows)

    def finish(self) -> int:
        """Write the last partial chunk; return the new total row count (uncommitted)."""
        if self.buffered:
            self._flush(self.buffered)
        return self.start

    def _flush(self, n: int) -> None:
        data = np.concatenate(self.buffer) if len(self.buffer) > 1 else self.buffer[0]
        chunk, rest = data[:n], data[n:]
        self.buffer = [rest] if len(rest) else []
        self.buffered = len(rest)
        stop = self.start + n
        staged_view(self.points, stop)[self.start:stop] = chunk
        for array in self.companions:
            values = np.full(n, ROW_ARRAY_FILL[array.path.rsplit("/", 1)[-1]], dtype=array.dtype)
            prefix = self.prefix.pop(array.path, None)
            if prefix is not None:
                values[:len(prefix)] = prefix
            staged_view(array, stop)[self.start:stop] = values
        self.start = stop
        self.chunks_written += 1
        report(CHUNK_WRITTEN, self.chunks_written)


def value_limit(dtype: np.dtype) -> float:
    """Largest magnitude a store of ``dtype`` accepts (see :data:`MAX_ABS_VALUE`)."""
    return min(MAX_ABS_VALUE, float(np.finfo(dtype).max))


def _write_rows(group: zarr.Group, source: Source, n_rows: int, dtype: np.dtype) -> int:
    writer = _RowWriter(group, n_rows, dtype)
    for block in source.blocks():
        writer.add(block)
    total = writer.finish()
    if writer.rows_added == 0:
        raise DistgmmInputError(
            f"{source.path}: no rows left to store ({source.dropped} dropped as non-finite); "
            "check the file."
        )
    return total


def source_digest(path: str) -> str:
    """SHA-256 of a source file's bytes: recorded with every ingest and append, so that a
    job step can tell that this very file is already in the store (a rerun skips it)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def _log_entry(op: str, source: Source, before: int, after: int, sha256: str) -> dict[str, Any]:
    return {"op": op, "source": os.path.abspath(source.path), "format": source.format,
            "source_sha256": sha256, "rows_before": before, "rows_after": after,
            "rows_dropped": source.dropped, "time": now_iso()}


def ingest(source: str, store: str, *, format: str | None = None,
           columns: str | Sequence[str | int] | None = None, header: bool | None = None,
           dtype: str | None = None, chunk_rows: int | None = None, append: bool = False,
           overwrite: bool = False, drop_nonfinite: bool = False,
           storage_options: dict[str, Any] | None = None,
           lock_wait: float | None = None) -> IngestReport:
    """Stream a text/CSV/npy/Parquet file into a new point store (or append to one).

    Parameters
    ----------
    source : str
        Local file to read; never loaded whole (text is parsed in blocks of lines, ``.npy``
        is memory-mapped, Parquet is read batch by batch).
    store : str
        Destination path or fsspec URL.
    format : {"text", "csv", "npy", "parquet"}, optional
        Source format; default from the extension.
    columns : str or sequence, optional
        Columns to read by name or 0-based index (``"x,y"``, ``"0,1"``); default all numeric.
    header : bool, optional
        Force (or deny) a header line in text/CSV; default: detected for CSV.
    dtype : {"float32", "float64"}, optional
        Stored dtype. Default: the source's own float dtype (npy/Parquet) or float64; on
        append it must equal the store's.
    chunk_rows : int, optional
        Rows per chunk (new stores only); default about 16 MiB of points per chunk.
    append : bool
        Add the rows to the existing store at ``store`` (see :func:`append`).
    overwrite : bool
        Replace an existing point store (never anything else).
    drop_nonfinite : bool
        Skip rows with NaN/inf (reported in ``rows_dropped``) instead of failing.
    storage_options : dict, optional
        fsspec options for a remote ``store``.
    lock_wait : float, optional
        Seconds to wait while another process writes this store; default
        ``$DISTGMM_LOCK_WAIT`` or 60 (see :mod:`distgmm.store._lock`).

    Returns
    -------
    IngestReport

    Raises
    ------
    DistgmmInputError
        On any bad input; no store is left behind (the destination is untouched).
    distgmm.store.StoreBusyError
        Another process kept the store busy for longer than ``lock_wait``.
    """
    if append:
        if overwrite or chunk_rows is not None:
            raise DistgmmInputError(
                "--append cannot be combined with --overwrite or --chunk-rows; the store keeps "
                "its chunking. Drop those options."
            )
        return _append_rows(source, store, format=format, columns=columns, header=header,
                             dtype=dtype, drop_nonfinite=drop_nonfinite,
                             storage_options=storage_options, lock_wait=lock_wait)
    t0 = time.perf_counter()
    src = open_source(source, format=format, columns=columns, header=header,
                      drop_nonfinite=drop_nonfinite)
    stored = check_dtype(dtype or src.native_dtype or "float64")
    src.max_abs = value_limit(stored)
    if chunk_rows is None:
        chunk_rows = default_chunk_rows(src.n_features, stored)
        # Known row count (npy/Parquet), or an upper bound for text: each cell needs at
        # least one character and one separator.
        known = getattr(src, "n_rows", None) or os.path.getsize(source) // (2 * src.n_features)
        if known:
            chunk_rows = min(chunk_rows, known)
    location = StoreLocation(store, storage_options)
    check_store_destination(location, overwrite)
    sha256 = source_digest(source)
    provenance = {"op": "ingest", "source": os.path.abspath(source), "format": src.format,
                  "source_sha256": sha256,
                  "time": now_iso()}
    with rows_lock(location, "ingest", lock_wait) as lock, building_store(
            location, overwrite=overwrite,
            guard=lambda: replace_lock(location, "ingest --overwrite", lock_wait)) as tmp:
        group = create_layout(tmp, n_rows=0, n_features=src.n_features, dtype=stored,
                              chunk_rows=chunk_rows, columns=src.columns, provenance=provenance)
        n_rows = _write_rows(group, src, 0, stored)
        commit_rows(group, n_rows, _log_entry("ingest", src, 0, n_rows, sha256))
        lock.ensure_held()
        mark_complete(group)
    logger.info("ingested %d rows from %s into %s", n_rows, source, store)
    return IngestReport(store=store, source=source, format=src.format, rows_before=0,
                        rows_written=n_rows, rows_dropped=src.dropped, n_rows=n_rows,
                        n_features=src.n_features, dtype=stored.name, chunk_rows=chunk_rows,
                        seconds=time.perf_counter() - t0)


def append(source: str, store: str, *, format: str | None = None,
           columns: str | Sequence[str | int] | None = None, header: bool | None = None,
           dtype: str | None = None, drop_nonfinite: bool = False,
           storage_options: dict[str, Any] | None = None,
           lock_wait: float | None = None) -> IngestReport:
    """Append the rows of a file to an existing point store, committing them in one write.

    The source must have as many (selected) columns as the store has features. Its dtype
    must match the store's: an explicit ``dtype`` must equal it, and a float32/float64 npy or
    Parquet source of the other precision is refused unless ``dtype`` names the store's dtype
    (consent to convert). Companion arrays get ``weights=1.0`` and ``truth=-1`` for new rows.
    See the module docstring for why a crash cannot leave a torn store. The store's ``rows``
    lock is held from reading the row count to the commit, so concurrent appends queue.

    Parameters
    ----------
    source, store, format, columns, header, dtype, drop_nonfinite, storage_options, lock_wait
        As in :func:`ingest`.

    Returns
    -------
    IngestReport
    """
    t0 = time.perf_counter()
    location = StoreLocation(store, storage_options)
    points = open_group_checked(location)["points"]  # checked before anything is created
    n_features, stored = points.shape[1], points.dtype
    if dtype is not None and check_dtype(dtype) != stored:
        raise DistgmmInputError(
            f"dtype mismatch: {store} stores {stored.name} but {dtype} was requested; "
            f"append with --dtype {stored.name} or ingest into a new store."
        )
    src = open_source(source, format=format, columns=columns, header=header,
                      drop_nonfinite=drop_nonfinite)
    src.max_abs = value_limit(stored)
    if src.n_features != n_features:
        raise DistgmmInputError(
            f"{source}: {src.n_features} columns but {store} has {n_features} features; "
            "select matching columns with --columns."
        )
    if dtype is None and src.native_dtype is not None and src.native_dtype != stored:
        raise DistgmmInputError(
            f"dtype mismatch: {source} holds {src.native_dtype.name} but {store} stores "
            f"{stored.name}; pass --dtype {stored.name} to convert, or ingest into a new store."
        )
    sha256 = source_digest(source)
    with rows_lock(location, "ingest --append", lock_wait) as lock:
        group = open_group_checked(location, mode="r+")
        n_before = int(group["points"].shape[0])
        n_rows = _write_rows(group, src, n_before, stored)
        lock.ensure_held()
        commit_rows(group, n_rows, _log_entry("append", src, n_before, n_rows, sha256))
    logger.info("appended %d rows from %s to %s (%d -> %d)", n_rows - n_before, source,
                store, n_before, n_rows)
    return IngestReport(store=store, source=source, format=src.format, rows_before=n_before,
                        rows_written=n_rows - n_before, rows_dropped=src.dropped, n_rows=n_rows,
                        n_features=n_features, dtype=stored.name,
                        chunk_rows=int(points.chunks[0]), seconds=time.perf_counter() - t0)


_append_rows = append  # ``ingest`` has a parameter named ``append``
