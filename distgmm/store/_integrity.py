"""Chunk integrity of point stores: a checksum inside every chunk, and missing chunks caught on read.

Decisions (schema 2 and later; see :data:`distgmm.store.SCHEMA_VERSION`):

* **Checksums.** Every array of a store (``points``, ``weights``, ``truth``, ``labels/*``,
  ``proba/*``) ends its codec chain with Zarr v3's standard ``crc32c`` codec: each chunk
  object carries the CRC-32C of its compressed bytes, written in the same PUT or file
  replace as the chunk itself. An old and a new version of a chunk are each
  self-consistent, so readers of an earlier snapshot (a fit while an append rewrites the
  partial last chunk) never see a false mismatch, and no record outside the chunk has to be
  kept in step. Zarr verifies the CRC when it decodes the chunk; :func:`read_block` (the
  getter of every dask array :func:`~distgmm.store.open_points` builds) and
  :func:`read_rows` turn its mismatch into a :class:`StoreIntegrityError` naming the array,
  the chunk, its rows and the fix.
* **Missing chunks.** Zarr reads an absent chunk as the fill value, silently. Every chunk of
  a row array (``points``, ``weights``, ``truth``, ``ids``) below the committed row count is written
  (``write_empty_chunks`` is forced on for them, so even a chunk equal to the fill value is
  stored), so an absent one is damage. :class:`CheckedStore` wraps the store of every
  read-only open and raises instead of returning "absent" for such a chunk. Writers open the
  store writable, unwrapped: they may read chunks that do not exist yet (a partial chunk
  written in two steps).
* **Older stores.** Arrays without the ``crc32c`` codec (schema 1) are read as before: no
  checksum, no missing-chunk check (their writers skipped chunks equal to the fill value).
  Appending to them keeps their format; ``distgmm info`` says whether a store has checksums.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec
from zarr.core.array_spec import ArrayConfig
from zarr.storage import WrapperStore

from distgmm.errors import DistgmmInputError

__all__ = ["CHECKSUM_CODEC", "ROW_ARRAYS", "StoreIntegrityError", "CheckedStore", "read_block",
           "read_rows", "has_checksums", "writable_rows", "check_finite_rows"]

#: Name of the checksum codec (last in every array's codec chain from schema 2 on).
CHECKSUM_CODEC = "crc32c"
#: Arrays whose every committed chunk must exist (one value per stored row).
ROW_ARRAYS = ("points", "weights", "truth", "ids")
_WRITE_ALL = ArrayConfig(order="C", write_empty_chunks=True)


class StoreIntegrityError(DistgmmInputError):
    """A chunk of a store is missing, fails its checksum, or holds values ingest never writes.

    The message names the store, the array, the chunk index, its rows and the fix.
    """


def checksum_codec() -> Crc32cCodec:
    """The codec that ends every array's codec chain."""
    return Crc32cCodec()


def has_checksums(array: zarr.Array) -> bool:
    """Whether ``array`` was written with per-chunk checksums (schema 2 or later)."""
    return any(c.to_dict().get("name") == CHECKSUM_CODEC for c in array.metadata.codecs)


def writable_rows(array: zarr.Array, n_rows: int | None = None) -> zarr.Array:
    """``array`` (optionally viewed with ``n_rows`` rows, metadata NOT saved) writing every
    chunk, even one equal to the fill value, so that no committed chunk is ever absent."""
    aa = array._async_array
    metadata = aa.metadata
    if n_rows is not None:
        metadata = metadata.update_shape((n_rows, *metadata.shape[1:]))
    return zarr.Array(zarr.core.array.AsyncArray(metadata, aa.store_path, _WRITE_ALL))


def _rows(index: int, chunk_rows: int, n_rows: int) -> str:
    start = index * chunk_rows
    stop = min(start + chunk_rows, n_rows)
    return f"rows {start:,}-{max(start, stop - 1):,}"


def _fix(array_name: str) -> str:
    if array_name.startswith(("labels/", "proba/")):
        name = array_name.split("/", 1)[1]
        return (f"delete labels/{name} and proba/{name} from the store and run `distgmm label` "
                "again")
    return ("restore the store from a backup, or write it again from its source "
            "(`distgmm ingest ... --overwrite`, `distgmm generate ... --overwrite`)")


def missing_chunk_error(store: str, array_name: str, index: int, chunk_rows: int,
                        n_rows: int, key: str) -> StoreIntegrityError:
    """The error for an absent chunk below the committed row count."""
    return StoreIntegrityError(
        f"{store}: chunk {index} of '{array_name}' ({_rows(index, chunk_rows, n_rows)}) is "
        f"missing (no object {key}): the store is damaged; {_fix(array_name)}.")


def corrupt_chunk_error(store: str, array_name: str, index: int, chunk_rows: int,
                        n_rows: int) -> StoreIntegrityError:
    """The error for a chunk whose bytes do not match their checksum."""
    return StoreIntegrityError(
        f"{store}: chunk {index} of '{array_name}' ({_rows(index, chunk_rows, n_rows)}) fails "
        f"its checksum: its bytes changed after they were written; {_fix(array_name)}.")


class CheckedStore(WrapperStore):
    """A read-only Zarr store that refuses to read a committed chunk of a row array as absent.

    Array metadata seen through it (``<array>/zarr.json``) is remembered, so the check knows
    each array's committed shape and chunking without extra reads; it travels with the store
    when a Zarr array is pickled into a dask graph.

    Parameters
    ----------
    store : zarr.abc.store.Store
        The store to read.
    url : str
        The store's URL, for messages.
    """

    def __init__(self, store: Any, url: str = "") -> None:
        super().__init__(store)
        self.url = url
        self._arrays: dict[str, tuple[bool, int, int]] = {}

    def _with_store(self, store: Any) -> "CheckedStore":
        other = type(self)(store, self.url)
        other._arrays = dict(self._arrays)
        return other

    def _remember(self, path: str, raw: bytes) -> tuple[bool, int, int] | None:
        try:
            meta = json.loads(raw)
        except ValueError:
            return None
        if not isinstance(meta, dict) or meta.get("node_type") != "array":
            return None
        codecs = meta.get("codecs") or []
        checked = any(isinstance(c, dict) and c.get("name") == CHECKSUM_CODEC for c in codecs)
        try:
            chunk_rows = int(meta["chunk_grid"]["configuration"]["chunk_shape"][0])
            n_rows = int(meta["shape"][0])
        except (KeyError, IndexError, TypeError, ValueError):
            return None
        entry = (checked and path in ROW_ARRAYS, chunk_rows, n_rows)
        self._arrays[path] = entry
        return entry

    async def _array(self, path: str, prototype) -> tuple[bool, int, int] | None:
        entry = self._arrays.get(path)
        if entry is None:
            raw = await self._store.get(f"{path}/zarr.json", prototype)
            if raw is not None:
                entry = self._remember(path, raw.to_bytes())
        return entry

    async def get(self, key: str, prototype, byte_range=None):
        value = await self._store.get(key, prototype, byte_range)
        if key.endswith("zarr.json"):
            if value is not None and byte_range is None:
                self._remember(key[:-len("zarr.json")].rstrip("/"), value.to_bytes())
            return value
        if value is None and "/c/" in key:
            path, coords = key.rsplit("/c/", 1)
            entry = await self._array(path, prototype)
            if entry is not None and entry[0]:
                _, chunk_rows, n_rows = entry
                index = int(coords.split("/", 1)[0])
                if index * chunk_rows < n_rows:
                    raise missing_chunk_error(self.url, path, index, chunk_rows, n_rows, key)
        return value


def _is_checksum_failure(exc: BaseException) -> bool:
    return isinstance(exc, ValueError) and "checksum do not match" in str(exc)


def _store_url(array: zarr.Array) -> str:
    store = array.store_path.store
    return getattr(store, "url", "") or str(store)


def read_rows(array: zarr.Array, start: int, stop: int) -> np.ndarray:
    """``array[start:stop]``, with a checksum failure reported as :class:`StoreIntegrityError`."""
    return read_block(array, (slice(start, stop),))


def read_block(array: zarr.Array, selection: tuple, asarray: bool = True, lock=None) -> np.ndarray:
    """The getter of the dask arrays over a store: ``array[selection]``, with a checksum
    failure reported as :class:`StoreIntegrityError` naming the chunk (a dask chunk of a
    point store is one Zarr chunk, so the selection's first row names it)."""
    try:
        return np.asarray(array[selection])
    except ValueError as exc:
        if not _is_checksum_failure(exc):
            raise
        rows = selection[0] if isinstance(selection, tuple) else selection
        start = (rows.start or 0) if isinstance(rows, slice) else 0
        chunk_rows = int(array.chunks[0])
        raise corrupt_chunk_error(_store_url(array), array.path, start // chunk_rows,
                                  chunk_rows, int(array.shape[0])) from None


def check_finite_rows(block: np.ndarray, store: str, array_name: str, start: int,
                      chunk_rows: int) -> None:
    """Refuse a block of points holding NaN/inf (which ingest and generate never write).

    One sum over the block finds the common case (all finite) at memory speed; only when it
    is not finite (NaN/inf, or finite values whose sum overflows) are the rows examined.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(block.sum()):
            return
    bad = ~np.isfinite(block).all(axis=1)
    if not bad.any():
        return
    first = start + int(np.argmax(bad))
    index = start // chunk_rows
    raise StoreIntegrityError(
        f"{store}: chunk {index} of '{array_name}' holds {int(bad.sum())} rows with NaN or "
        f"infinite values (first: row {first:,}), which distgmm never writes: the store was "
        "modified by something else. Write it again from its source (`distgmm ingest` "
        "refuses such rows, or skips them with --drop-nonfinite); nothing was labelled for "
        "this chunk.")
