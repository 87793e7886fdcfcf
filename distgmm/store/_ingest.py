"""Ingest CSV, Parquet, Zarr, npy and text sources (local or at URLs) into point stores and append rows, crash-safely.

Readers are in :mod:`distgmm.store._sources`. A key column (``id_column``) goes to the
``ids`` array beside ``points``, written and committed with the rows; the source rows that
``drop_nonfinite`` skipped go to ``dropped_rows``, and each ``row_log`` entry names its range
there.

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

import itertools
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import zarr
from zarr.codecs import ZstdCodec

from distgmm._atomic import is_url, local_path, url_filesystem
from distgmm._progress import CHUNK_WRITTEN, report
from distgmm.errors import DistgmmInputError
from distgmm.store._integrity import checksum_codec, read_rows, writable_rows
from distgmm.store._location import StoreLocation, building_store, check_store_destination
from distgmm.store._lock import replace_lock, rows_lock
from distgmm.store._points import (
    DROPPED_ROWS,
    IDS,
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
from distgmm.store._sources import (
    BLOCK_ROWS,
    MAX_ABS_VALUE,
    Source,
    open_source,
    source_digest,
)

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
    #: The key column kept in ``ids``, and the range of this run's entries in the store's
    #: ``dropped_rows`` (source rows skipped by ``drop_nonfinite``), if any.
    id_column: str | None = None
    dropped_rows: list[int] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return asdict(self)


class _RowWriter:
    """Buffers incoming row blocks (and their keys) and writes whole chunks past the
    committed shape."""

    def __init__(self, group: zarr.Group, n_rows: int, dtype: np.dtype) -> None:
        self.points = group["points"]
        self.ids = group[IDS] if IDS in group else None
        self.chunk_rows = int(self.points.chunks[0])
        self.dtype = dtype
        self.companions = [group[name] for name in ROW_ARRAY_FILL if name in group]
        self.start = (n_rows // self.chunk_rows) * self.chunk_rows
        # Old rows of the partial last chunk, rewritten unchanged in front of the new rows.
        self.buffer: list[np.ndarray] = []
        self.id_buffer: list[np.ndarray] = []
        self.buffered = 0
        self.prefix = {a.path: read_rows(a, self.start, n_rows) for a in self.companions}
        if n_rows > self.start:
            self._push(read_rows(self.points, self.start, n_rows),
                       None if self.ids is None else read_rows(self.ids, self.start, n_rows))
        self.rows_added = 0
        self.chunks_written = 0

    def _push(self, block: np.ndarray, ids: np.ndarray | None) -> None:
        self.buffer.append(block)
        if self.ids is not None:
            self.id_buffer.append(ids)
        self.buffered += len(block)

    def add(self, block: np.ndarray, ids: np.ndarray | None = None) -> None:
        block = np.asarray(block, dtype=self.dtype)
        if self.ids is not None:
            ids = _stored_ids(ids, self.ids.dtype)
        self._push(block, ids)
        self.rows_added += len(block)
        while self.buffered >= self.chunk_rows:
            self._flush(self.chunk_rows)

    def finish(self) -> int:
        """Write the last partial chunk; return the new total row count (uncommitted)."""
        if self.buffered:
            self._flush(self.buffered)
        return self.start

    @staticmethod
    def _take(buffer: list[np.ndarray], n: int) -> tuple[np.ndarray, list[np.ndarray]]:
        data = np.concatenate(buffer) if len(buffer) > 1 else buffer[0]
        return data[:n], [data[n:]] if len(data) > n else []

    def _flush(self, n: int) -> None:
        chunk, self.buffer = self._take(self.buffer, n)
        self.buffered -= n
        stop = self.start + n
        staged_view(self.points, stop)[self.start:stop] = chunk
        if self.ids is not None:
            keys, self.id_buffer = self._take(self.id_buffer, n)
            staged_view(self.ids, stop)[self.start:stop] = keys
        for array in self.companions:
            values = np.full(n, ROW_ARRAY_FILL[array.path.rsplit("/", 1)[-1]], dtype=array.dtype)
            prefix = self.prefix.pop(array.path, None)
            if prefix is not None:
                values[:len(prefix)] = prefix
            staged_view(array, stop)[self.start:stop] = values
        self.start = stop
        self.chunks_written += 1
        report(CHUNK_WRITTEN, self.chunks_written)


def _stored_ids(ids: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Keys as the store keeps them: int64, or text (anything else is written as its text)."""
    if dtype.kind in "iu":
        if ids.dtype.kind not in "iu":
            raise DistgmmInputError(
                "the --id-column holds non-integer keys but this store keeps integer ids; "
                "append a source whose key column holds integers, or ingest into a new store.")
        return ids.astype(np.int64)
    return np.asarray([("" if v is None else str(v)) for v in ids.tolist()], dtype=str)


def value_limit(dtype: np.dtype) -> float:
    """Largest magnitude a store of ``dtype`` accepts (see :data:`MAX_ABS_VALUE`)."""
    return min(MAX_ABS_VALUE, float(np.finfo(dtype).max))


def _first_block(source: Source) -> tuple[Iterator, np.ndarray | None]:
    """The source's blocks, and the keys of its first block (which decide the ``ids``
    array's dtype of a new store; None without an id column)."""
    blocks = iter(source.blocks())
    first = next(blocks, None)
    if first is None:
        return iter(()), None
    return itertools.chain([first], blocks), first[1]


def _write_rows(group: zarr.Group, source: Source, blocks: Iterator, n_rows: int,
                dtype: np.dtype) -> int:
    writer = _RowWriter(group, n_rows, dtype)
    for values, ids in blocks:
        writer.add(values, ids)
    total = writer.finish()
    if writer.rows_added == 0:
        raise DistgmmInputError(
            f"{source.path}: no rows left to store ({source.dropped} dropped as non-finite); "
            "check the file."
        )
    return total


def _record_dropped(group: zarr.Group, source: Source) -> list[int] | None:
    """Append the source rows ``drop_nonfinite`` skipped to ``dropped_rows``; return their
    range ``[start, stop]`` in it (None when none were dropped)."""
    if not source.dropped_rows:
        return None
    if DROPPED_ROWS not in group:
        group.create_array(DROPPED_ROWS, shape=(0,), chunks=(BLOCK_ROWS,), dtype="int64",
                           compressors=[ZstdCodec(level=3), checksum_codec()], fill_value=-1,
                           dimension_names=("dropped",))
    array = group[DROPPED_ROWS]
    start = int(array.shape[0])
    stop = start + len(source.dropped_rows)
    array.resize((stop,))
    writable_rows(array)[start:stop] = np.asarray(source.dropped_rows, dtype=np.int64)
    return [start, stop]


def _log_entry(op: str, source: Source, before: int, after: int, sha256: str,
               dropped: list[int] | None) -> dict[str, Any]:
    entry = {"op": op, "source": _where(source.path), "format": source.format, "source_sha256": sha256,
             "rows_before": before, "rows_after": after, "rows_dropped": source.dropped,
             "time": now_iso()}
    if source.id_column is not None:
        entry["id_column"] = source.id_column
    if dropped is not None:
        entry["dropped_rows"] = dropped
    return entry


def _where(source: str) -> str:
    """A source as recorded: a URL as it is, a local path made absolute."""
    return source if is_url(source) else os.path.abspath(local_path(source))


def _source_bytes(source: str, storage_options: dict[str, Any] | None) -> int:
    """Bytes of a source file (an upper bound on what a text source's rows take)."""
    fs, target = (url_filesystem(source, storage_options) if is_url(source)
                  else (None, local_path(source)))
    return int(fs.size(target)) if fs is not None else os.path.getsize(target)


def ingest(source: str, store: str, *, format: str | None = None,
           columns: str | Sequence[str | int] | None = None, header: bool | None = None,
           dtype: str | None = None, chunk_rows: int | None = None, append: bool = False,
           overwrite: bool = False, drop_nonfinite: bool = False,
           storage_options: dict[str, Any] | None = None,
           lock_wait: float | None = None, id_column: str | None = None,
           source_options: dict[str, Any] | None = None) -> IngestReport:
    """Stream a CSV/Parquet/Zarr/npy/text source into a new point store (or append to one).

    Parameters
    ----------
    source : str
        Local path or fsspec URL of a file, a Parquet dataset (directory, hive partitions)
        or a Zarr array; never loaded whole (see :mod:`distgmm.store._sources`).
    store : str
        Destination path or fsspec URL.
    format : {"text", "csv", "npy", "parquet", "zarr"}, optional
        Source format; default from the name (see :func:`~distgmm.store._sources.open_source`).
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
        Skip rows with NaN/inf or missing values instead of failing; how many is reported
        (``rows_dropped``) and which source rows is recorded in the store (``dropped_rows``).
    storage_options : dict, optional
        fsspec options for a remote ``store`` (and for the source, unless ``source_options``).
    lock_wait : float, optional
        Seconds to wait while another process writes this store; default
        ``$DISTGMM_LOCK_WAIT`` or 60 (see :mod:`distgmm.store._lock`).
    id_column : str, optional
        A CSV/Parquet column kept as every row's key in the store's ``ids`` array (int64 or
        text), for ``distgmm export`` back to the source's rows; not a feature.
    source_options : dict, optional
        fsspec options for a remote source, when they differ from ``storage_options``.

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
                             storage_options=storage_options, lock_wait=lock_wait,
                             id_column=id_column, source_options=source_options)
    t0 = time.perf_counter()
    source_options = storage_options if source_options is None else source_options
    src = open_source(source, format=format, columns=columns, header=header,
                      drop_nonfinite=drop_nonfinite, storage_options=source_options,
                      id_column=id_column)
    stored = check_dtype(dtype or src.native_dtype or "float64")
    src.max_abs = value_limit(stored)
    if chunk_rows is None:
        chunk_rows = default_chunk_rows(src.n_features, stored)
        # Known row count (npy/Parquet/Zarr), or an upper bound for text: each cell needs
        # at least one character and one separator.
        known = src.n_rows or _source_bytes(source, source_options) // (2 * src.n_features)
        if known:
            chunk_rows = min(chunk_rows, known)
    location = StoreLocation(store, storage_options)
    check_store_destination(location, overwrite)
    sha256 = source_digest(source, source_options)
    provenance = {"op": "ingest", "source": _where(source),
                  "format": src.format, "source_sha256": sha256, "time": now_iso()}
    if id_column is not None:
        provenance["id_column"] = id_column
    with rows_lock(location, "ingest", lock_wait) as lock, building_store(
            location, overwrite=overwrite,
            guard=lambda: replace_lock(location, "ingest --overwrite", lock_wait)) as tmp:
        blocks, first_ids = _first_block(src)
        group = create_layout(tmp, n_rows=0, n_features=src.n_features, dtype=stored,
                              chunk_rows=chunk_rows, columns=src.columns, provenance=provenance,
                              ids_dtype=None if id_column is None else
                              (first_ids.dtype if first_ids is not None else np.dtype("int64")))
        n_rows = _write_rows(group, src, blocks, 0, stored)
        dropped = _record_dropped(group, src)
        commit_rows(group, n_rows, _log_entry("ingest", src, 0, n_rows, sha256, dropped))
        lock.ensure_held()
        mark_complete(group)
    logger.info("ingested %d rows from %s into %s", n_rows, source, store)
    return IngestReport(store=store, source=source, format=src.format, rows_before=0,
                        rows_written=n_rows, rows_dropped=src.dropped, n_rows=n_rows,
                        n_features=src.n_features, dtype=stored.name, chunk_rows=chunk_rows,
                        seconds=time.perf_counter() - t0, id_column=id_column,
                        dropped_rows=dropped)


def append(source: str, store: str, *, format: str | None = None,
           columns: str | Sequence[str | int] | None = None, header: bool | None = None,
           dtype: str | None = None, drop_nonfinite: bool = False,
           storage_options: dict[str, Any] | None = None,
           lock_wait: float | None = None, id_column: str | None = None,
           source_options: dict[str, Any] | None = None) -> IngestReport:
    """Append the rows of a source to an existing point store, committing them in one write.

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
    id_column, source_options
        As in :func:`ingest`; a store with ``ids`` needs an ``id_column`` on every append,
        and a store without them takes none.

    Returns
    -------
    IngestReport
    """
    t0 = time.perf_counter()
    source_options = storage_options if source_options is None else source_options
    location = StoreLocation(store, storage_options)
    existing = open_group_checked(location)  # checked before anything is created
    points = existing["points"]
    n_features, stored = points.shape[1], points.dtype
    if (IDS in existing) != (id_column is not None):
        raise DistgmmInputError(
            f"{store} keeps a key column (ids): pass --id-column naming the source's key "
            "column." if IDS in existing else
            f"{store} keeps no key column: drop --id-column, or ingest into a new store.")
    if dtype is not None and check_dtype(dtype) != stored:
        raise DistgmmInputError(
            f"dtype mismatch: {store} stores {stored.name} but {dtype} was requested; "
            f"append with --dtype {stored.name} or ingest into a new store."
        )
    src = open_source(source, format=format, columns=columns, header=header,
                      drop_nonfinite=drop_nonfinite, storage_options=source_options,
                      id_column=id_column)
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
    sha256 = source_digest(source, source_options)
    with rows_lock(location, "ingest --append", lock_wait) as lock:
        group = open_group_checked(location, mode="r+")
        n_before = int(group["points"].shape[0])
        n_rows = _write_rows(group, src, iter(src.blocks()), n_before, stored)
        dropped = _record_dropped(group, src)
        lock.ensure_held()
        commit_rows(group, n_rows, _log_entry("append", src, n_before, n_rows, sha256,
                                              dropped))
    logger.info("appended %d rows from %s to %s (%d -> %d)", n_rows - n_before, source,
                store, n_before, n_rows)
    return IngestReport(store=store, source=source, format=src.format, rows_before=n_before,
                        rows_written=n_rows - n_before, rows_dropped=src.dropped, n_rows=n_rows,
                        n_features=n_features, dtype=stored.name,
                        chunk_rows=int(points.chunks[0]), seconds=time.perf_counter() - t0,
                        id_column=id_column, dropped_rows=dropped)


_append_rows = append  # ``ingest`` has a parameter named ``append``
