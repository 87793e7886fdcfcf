"""The point-store layout: schema attributes, opening a store, staged row writes and the commit."""

from __future__ import annotations

import datetime
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import dask.array as da
import numpy as np
import zarr
from zarr.codecs import BloscCodec, ZstdCodec
from zarr.core.metadata.io import save_metadata
from zarr.core.sync import sync

from distgmm._layout import DEFAULT_CHUNK_BYTES, default_chunk_rows
from distgmm.errors import DistgmmInputError
from distgmm.store._integrity import checksum_codec, read_block, writable_rows
from distgmm.store._location import StoreLocation

__all__ = [
    "SCHEMA_VERSION",
    "DEFAULT_CHUNK_BYTES",
    "PointStore",
    "open_points",
    "default_chunk_rows",
]

logger = logging.getLogger(__name__)

#: Version of the group-attribute schema below; bumped on incompatible layout changes.
#: 2: every array ends its codecs with ``crc32c`` and row arrays store every chunk
#: (:mod:`distgmm.store._integrity`). Schema 1 stores open and append as before, unchecked.
SCHEMA_VERSION = 2
#: Per-row arrays besides ``points`` and the value appended rows get when the source has none.
ROW_ARRAY_FILL = {"weights": 1.0, "truth": -1}
#: How many append records ``points`` keeps in its ``row_log`` attribute.
ROW_LOG_LENGTH = 200
_SUPPORTED_DTYPES = ("float32", "float64")
def check_dtype(dtype: str | np.dtype) -> np.dtype:
    """Return ``dtype`` as a NumPy dtype if it is float32 or float64, else raise."""
    try:
        parsed = np.dtype(dtype)
    except TypeError:
        parsed = None
    if parsed is None or parsed.name not in _SUPPORTED_DTYPES:
        raise DistgmmInputError(f"dtype {dtype!r} is not supported; use float32 or float64.")
    return parsed


def now_iso() -> str:
    """UTC time stamp for provenance records."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _compressors() -> list:
    """Codecs of row arrays and probabilities: zstd level 3, then the chunk's checksum."""
    return [ZstdCodec(level=3), checksum_codec()]


def _label_compressors() -> list:
    """Codecs of label arrays (small integers): bit-shuffled zstd at level 1, faster and
    smaller than the points' codec for them (``bench/README.md``); then the checksum."""
    return [BloscCodec(cname="zstd", clevel=1, shuffle="bitshuffle"), checksum_codec()]


def create_layout(location: StoreLocation, *, n_rows: int, n_features: int, dtype: np.dtype,
                  chunk_rows: int, columns: list[str] | None, provenance: dict[str, Any],
                  with_truth: bool = False, with_weights: bool = False,
                  extra_attrs: dict[str, Any] | None = None, complete: bool = False) -> zarr.Group:
    """Create the group and its per-row arrays (``points``, optional ``truth``/``weights``).

    ``distgmm.complete`` starts false; :func:`mark_complete` sets it as the last write.
    """
    if chunk_rows < 1:
        raise DistgmmInputError(f"chunk rows must be at least 1, got {chunk_rows}.")
    if columns is None:
        columns = [f"x{i}" for i in range(n_features)]
    attrs = {
        "distgmm": {
            "schema_version": SCHEMA_VERSION,
            "kind": "points",
            "complete": complete,
            "columns": list(columns),
            "provenance": provenance,
            **(extra_attrs or {}),
        }
    }
    group = zarr.create_group(location.zarr_store(read_only=False), attributes=attrs,
                              overwrite=True)
    group.create_array("points", shape=(n_rows, n_features), chunks=(chunk_rows, n_features),
                       dtype=dtype, compressors=_compressors(), fill_value=0.0,
                       dimension_names=("row", "feature"),
                       attributes={"row_log": []})
    if with_truth:
        group.create_array("truth", shape=(n_rows,), chunks=(chunk_rows,), dtype="int32",
                           compressors=_compressors(), fill_value=-1, dimension_names=("row",))
    if with_weights:
        group.create_array("weights", shape=(n_rows,), chunks=(chunk_rows,), dtype="float64",
                           compressors=_compressors(), fill_value=1.0,
                           dimension_names=("row",))
    return group


def mark_complete(group: zarr.Group) -> None:
    """Flip ``distgmm.complete`` to true: the one write that makes a remote store visible."""
    meta = dict(group.attrs["distgmm"])
    meta["complete"] = True
    group.attrs.update({"distgmm": meta})


def staged_view(array: zarr.Array, n_rows: int) -> zarr.Array:
    """A view of ``array`` with ``n_rows`` rows whose metadata is NOT saved.

    Writes through the view land in the same chunk keys as the array's own, so chunks past
    the committed shape can be written while readers still see the old shape. Every chunk
    is written, even one equal to the fill value (see :func:`writable_rows`).
    """
    return writable_rows(array, n_rows)


def commit_rows(group: zarr.Group, n_rows: int, log_entry: dict[str, Any] | None) -> None:
    """Make ``n_rows`` rows visible: resize the other per-row arrays, then ``points`` last.

    The ``points`` shape and its ``row_log`` attribute are saved in one ``zarr.json`` write
    (atomic: a temp file and ``os.replace`` for local stores, a single PUT for object
    stores), so the visible row count and its log can never disagree.
    """
    for name in ROW_ARRAY_FILL:
        if name in group:
            group[name].resize((n_rows,))
    points = group["points"]
    aa = points._async_array
    attrs = dict(aa.metadata.attributes)
    if log_entry is not None:
        attrs["row_log"] = (list(attrs.get("row_log", [])) + [log_entry])[-ROW_LOG_LENGTH:]
    metadata = aa.metadata.update_shape((n_rows, aa.metadata.shape[1])).update_attributes(attrs)
    sync(save_metadata(aa.store_path, metadata))
    object.__setattr__(aa, "metadata", metadata)


def open_group_checked(location: StoreLocation, mode: str = "r") -> zarr.Group:
    """Open a point-store group, raising :class:`DistgmmInputError` if it is not one.

    The store is checked read-only first, so that opening a missing store for writing
    creates nothing.
    """
    group = _open_group(location, "r")
    _check_point_group(location, group)
    return group if mode == "r" else _open_group(location, "r+")


def _open_group(location: StoreLocation, mode: str) -> zarr.Group:
    try:
        return zarr.open_group(location.zarr_store(read_only=(mode == "r")), mode=mode)
    except zarr.errors.ContainsArrayError:
        raise DistgmmInputError(
            f"{location} is a plain Zarr array, not a point store (a Zarr group holding "
            "'points'); put its rows into a store with `distgmm ingest`, or pass the "
            "store's path."
        ) from None
    except (FileNotFoundError, NotADirectoryError, zarr.errors.GroupNotFoundError,
            zarr.errors.NodeTypeValidationError):
        raise DistgmmInputError(
            f"{location} is not a point store (no Zarr group there); check the path, or "
            "create one with `distgmm ingest` or `distgmm generate`."
        ) from None


def _check_point_group(location: StoreLocation, group: zarr.Group) -> None:
    meta = group.attrs.get("distgmm")
    if not isinstance(meta, dict) or meta.get("kind") != "points" or "points" not in group:
        raise DistgmmInputError(
            f"{location} is a Zarr group but not a distgmm point store (no 'distgmm' "
            "attributes or no 'points' array); create stores with `distgmm ingest`."
        )
    if meta.get("schema_version", 0) > SCHEMA_VERSION:
        raise DistgmmInputError(
            f"{location} uses point-store schema {meta['schema_version']}, newer than this "
            f"distgmm understands ({SCHEMA_VERSION}); upgrade distgmm."
        )
    if not meta.get("complete", False):
        raise DistgmmInputError(
            f"{location} is an incomplete point store (its writer was interrupted); "
            "delete it and write it again."
        )


@dataclass
class PointStore:
    """An opened point store: dask arrays over its per-row arrays plus its attributes.

    Attributes
    ----------
    location : StoreLocation
        Where the store lives.
    group : zarr.Group
        The opened Zarr group (read-only).
    points : dask.array.Array, shape (n_rows, n_features)
        The points, one dask chunk per Zarr chunk (row chunks only).
    weights : dask.array.Array or None, shape (n_rows,)
        Per-point weights, if the store has them.
    truth : dask.array.Array or None, shape (n_rows,)
        Ground-truth labels (synthetic stores), if present.
    attrs : dict
        The ``distgmm`` group attributes (schema version, columns, provenance...).
    """

    location: StoreLocation
    group: zarr.Group
    points: da.Array
    weights: da.Array | None
    truth: da.Array | None
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def n_rows(self) -> int:
        """Number of committed rows."""
        return int(self.points.shape[0])

    @property
    def n_features(self) -> int:
        """Number of features (columns of ``points``)."""
        return int(self.points.shape[1])

    @property
    def chunk_rows(self) -> int:
        """Rows per Zarr chunk of ``points``."""
        return int(self.group["points"].chunks[0])

    @property
    def n_chunks(self) -> int:
        """Number of row chunks holding the committed rows."""
        return math.ceil(self.n_rows / self.chunk_rows) if self.n_rows else 0

    @property
    def dtype(self) -> np.dtype:
        """Stored dtype of ``points`` (float32 or float64)."""
        return self.points.dtype

    @property
    def columns(self) -> list[str]:
        """Column names of ``points``."""
        return list(self.attrs.get("columns", []))

    def __repr__(self) -> str:
        return (f"PointStore({self.location.url!r}, n_rows={self.n_rows}, "
                f"n_features={self.n_features}, dtype={self.dtype}, chunk_rows={self.chunk_rows})")


def _row_array(group: zarr.Group, name: str, n_rows: int, location: StoreLocation) -> da.Array | None:
    if name not in group:
        return None
    array = group[name]
    if array.shape[0] < n_rows:
        raise DistgmmInputError(
            f"{location}: array {name!r} has {array.shape[0]} rows but 'points' has {n_rows}; "
            "the store is inconsistent, write it again."
        )
    # Rows past ``n_rows`` belong to an append that was never committed: not visible.
    return dask_rows(array)[:n_rows]


def dask_rows(array: zarr.Array) -> da.Array:
    """A dask array over a Zarr array, one task per Zarr chunk, whose reads report a chunk
    that fails its checksum as an error naming it (:func:`read_block`)."""
    from dask.base import tokenize

    name = "from-zarr-" + tokenize(array, array.chunks, "distgmm-checked")
    return da.from_array(array, chunks=array.chunks, name=name, getitem=read_block)


def open_points(url: str | StoreLocation, storage_options: dict[str, Any] | None = None) -> PointStore:
    """Open a point store for reading.

    Parameters
    ----------
    url : str or StoreLocation
        Local path or fsspec URL of the store.
    storage_options : dict, optional
        fsspec options for remote URLs.

    Returns
    -------
    PointStore

    Raises
    ------
    DistgmmInputError
        If nothing is there, it is not a distgmm point store, or its writer did not finish.
    """
    location = url if isinstance(url, StoreLocation) else StoreLocation(url, storage_options)
    group = open_group_checked(location)
    points_array = group["points"]
    points = dask_rows(points_array)
    n_rows = points.shape[0]
    return PointStore(
        location=location,
        group=group,
        points=points,
        weights=_row_array(group, "weights", n_rows, location),
        truth=_row_array(group, "truth", n_rows, location),
        attrs=dict(group.attrs["distgmm"]),
    )
