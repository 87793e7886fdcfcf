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
#: The key column kept by ``ingest --id-column`` (one value per row, from the source).
IDS = "ids"
#: 0-based source rows that ``--drop-nonfinite`` skipped, all ingests and appends in turn
#: (each ``row_log`` entry names its range ``dropped_rows: [start, stop]`` in it).
DROPPED_ROWS = "dropped_rows"
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
                  ids_dtype: np.dtype | None = None,
                  extra_attrs: dict[str, Any] | None = None, complete: bool = False) -> zarr.Group:
    """Create the group and its per-row arrays (``points``, optional ``truth``/``weights``,
    and ``ids`` of ``ids_dtype``: int64, or ``str`` for text keys).

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
    if ids_dtype is not None:
        text = ids_dtype.kind not in "iu"
        group.create_array(IDS, shape=(n_rows,), chunks=(chunk_rows,),
                           dtype=str if text else "int64", compressors=_compressors(),
                           fill_value="" if text else 0, dimension_names=("row",))
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
    for name in (*ROW_ARRAY_FILL, IDS):
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
            "'points'); distgmm reads such arrays but writes only into point stores: copy "
            f"its rows into one with `distgmm ingest {location} STORE`, or pass a store's path."
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
    """Opened points: a distgmm point store, or a foreign 2-D Zarr array read as one.

    Attributes
    ----------
    location : StoreLocation
        Where the points live (the store, or the foreign array itself).
    group : zarr.Group or None
        The store's Zarr group (read-only); None for a foreign array.
    points : dask.array.Array, shape (n_rows, n_features)
        The points, chunked by rows only (a store: one dask chunk per Zarr chunk; a foreign
        array: whole row bands of its chunks, see :func:`foreign_points`).
    weights : dask.array.Array or None, shape (n_rows,)
        Per-point weights, if the store has them.
    truth : dask.array.Array or None, shape (n_rows,)
        Ground-truth labels (synthetic stores), if present.
    ids : dask.array.Array or None, shape (n_rows,)
        The source's key of every row (``ingest --id-column``), if kept.
    attrs : dict
        The ``distgmm`` group attributes (schema version, columns, provenance...); for a
        foreign array, ``{"columns": [...]}``.
    array : zarr.Array or None
        The Zarr array behind ``points``.
    foreign : str or None
        For a foreign array, what it is (``"Zarr v2 array"``, ``"xarray variable 'X'"``...):
        readable by every command that reads points, never written by distgmm.
    """

    location: StoreLocation
    group: zarr.Group | None
    points: da.Array
    weights: da.Array | None
    truth: da.Array | None
    attrs: dict[str, Any] = field(default_factory=dict)
    array: zarr.Array | None = None
    ids: da.Array | None = None
    foreign: str | None = None

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
        """Rows per row chunk of ``points`` (the last one may be shorter)."""
        return int(self.points.chunks[0][0]) if self.points.chunks[0] else 1

    @property
    def n_chunks(self) -> int:
        """Number of row chunks holding the committed rows."""
        return math.ceil(self.n_rows / self.chunk_rows) if self.n_rows else 0

    @property
    def dtype(self) -> np.dtype:
        """Dtype of ``points`` (float32 or float64)."""
        return self.points.dtype

    @property
    def columns(self) -> list[str]:
        """Column names of ``points``."""
        return list(self.attrs.get("columns", []))

    def refuse_foreign(self, what: str) -> None:
        """Raise :class:`DistgmmInputError` if these points are a foreign array, which
        distgmm only reads: ``what`` names the write (``"label"``...)."""
        if self.foreign is not None:
            article = "an" if self.foreign.startswith("xarray") else "a"
            raise DistgmmInputError(
                f"{self.location} is {article} {self.foreign}, not a distgmm point store; distgmm reads "
                f"such arrays but never writes into them, so it cannot {what} it. Copy its rows "
                f"into a point store first (`distgmm ingest {self.location} points.zarr`), then "
                f"{what} that store.")

    def __repr__(self) -> str:
        kind = f", foreign={self.foreign!r}" if self.foreign else ""
        return (f"PointStore({self.location.url!r}, n_rows={self.n_rows}, "
                f"n_features={self.n_features}, dtype={self.dtype}, "
                f"chunk_rows={self.chunk_rows}{kind})")


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


def open_points(url: str | StoreLocation, storage_options: dict[str, Any] | None = None,
                *, variable: str | None = None) -> PointStore:
    """Open points for reading: a distgmm point store, or any 2-D Zarr array.

    Parameters
    ----------
    url : str or StoreLocation
        Local path or fsspec URL of a point store, of a 2-D Zarr array (v2 or v3, any codec
        and chunking; written by zarr-python, ``dask.array.to_zarr``, ...), or of a variable
        inside a Zarr group (``data.zarr/X``, as xarray writes a Dataset).
    storage_options : dict, optional
        fsspec options for remote URLs.
    variable : str, optional
        The array's path inside the group at ``url`` (the same as ``url + "/" + variable``).

    Returns
    -------
    PointStore
        ``foreign`` is set for anything but a point store (see :func:`foreign_points`).

    Raises
    ------
    DistgmmInputError
        Nothing there, a group that is neither a point store nor names an array, an array
        that is not 2-D numeric, a point store that is newer or incomplete.
    """
    location = url if isinstance(url, StoreLocation) else StoreLocation(url, storage_options)
    if variable:
        location = location.child(variable)
    node = _open_node(location)
    if isinstance(node, zarr.Array):
        return foreign_points(location, node)
    if not _is_point_group(node):
        raise _not_points_error(location, node)
    _check_point_group(location, node)
    points_array = node["points"]
    points = dask_rows(points_array)
    n_rows = points.shape[0]
    return PointStore(
        location=location,
        group=node,
        points=points,
        weights=_row_array(node, "weights", n_rows, location),
        truth=_row_array(node, "truth", n_rows, location),
        attrs=dict(node.attrs["distgmm"]),
        array=points_array,
        ids=_row_array(node, IDS, n_rows, location),
    )


def _open_node(location: StoreLocation) -> zarr.Array | zarr.Group:
    """The Zarr array or group at ``location`` (v2 or v3), read-only."""
    try:
        return zarr.open(location.zarr_store(read_only=True), mode="r")
    except (FileNotFoundError, NotADirectoryError, KeyError, zarr.errors.NodeNotFoundError,
            zarr.errors.GroupNotFoundError, zarr.errors.NodeTypeValidationError,
            zarr.errors.MetadataValidationError):
        raise DistgmmInputError(
            f"{location} is not a point store or a Zarr array (nothing readable there); check "
            "the path, or create a point store with `distgmm ingest` or `distgmm generate`."
        ) from None


def _is_point_group(group: zarr.Group) -> bool:
    meta = group.attrs.get("distgmm")
    return isinstance(meta, dict) and meta.get("kind") == "points"


def _not_points_error(location: StoreLocation, group: zarr.Group) -> DistgmmInputError:
    """What to say about a Zarr group that is not a point store: name its 2-D arrays."""
    candidates = []
    for name, array in sorted(group.arrays()):
        if array.ndim == 2 and array.dtype.kind in "fiu":
            candidates.append(f"{name} {tuple(array.shape)} {array.dtype}")
    if candidates:
        first = candidates[0].split(" ", 1)[0]
        return DistgmmInputError(
            f"{location} is a Zarr group (e.g. an xarray Dataset), not a distgmm point store; "
            f"its 2-D numeric arrays: {'; '.join(candidates)}. Name one: {location}/{first} "
            f"or --variable {first}.")
    found = ", ".join(f"{n} {tuple(a.shape)}" for n, a in sorted(group.arrays())) or "none"
    return DistgmmInputError(
        f"{location} is a Zarr group without 2-D numeric arrays (arrays: {found}), not a "
        "distgmm point store; pass the path of a point store or of a 2-D (rows, features) "
        "array, or create a store with `distgmm ingest`.")


def _describe_foreign(location: StoreLocation, array: zarr.Array) -> str:
    fmt = array.metadata.zarr_format
    if _dimension_names(array):
        return f"xarray variable ({'/'.join(_dimension_names(array))}) in a Zarr v{fmt} store"
    return f"Zarr v{fmt} array"


def _dimension_names(array: zarr.Array) -> list[str]:
    """Dimension names: v3 metadata, or xarray's ``_ARRAY_DIMENSIONS`` attribute (v2)."""
    names = getattr(array.metadata, "dimension_names", None) or \
        array.attrs.get("_ARRAY_DIMENSIONS") or []
    return [str(n) for n in names if n is not None]


def _foreign_columns(location: StoreLocation, array: zarr.Array) -> list[str]:
    """Column names of a foreign array: the labels of an xarray coordinate of its second
    dimension when there is one (a sibling 1-D array named after it), else x0, x1, ..."""
    n = int(array.shape[1])
    names = _dimension_names(array)
    default = [f"x{i}" for i in range(n)]
    if len(names) != 2 or "/" not in location.url.rstrip("/"):
        return default
    parent = StoreLocation(location.url.rstrip("/").rsplit("/", 1)[0], location.storage_options)
    try:
        coordinate = zarr.open_array(parent.zarr_store(read_only=True), path=names[1], mode="r")
        values = coordinate[:] if coordinate.shape == (n,) else None
    except Exception:  # no such coordinate: the default names
        return default
    return default if values is None else [str(v) for v in np.asarray(values).tolist()]


def foreign_rows(array: zarr.Array) -> int:
    """Rows per dask chunk of a foreign array: whole multiples of its row chunks (or shards)
    adding up to about :data:`DEFAULT_CHUNK_BYTES`, so that each task reads whole stored
    chunks, across every column chunk, once."""
    stored = int((getattr(array, "shards", None) or array.chunks)[0])
    target = default_chunk_rows(int(array.shape[1]), np.dtype("float64"))
    return max(1, min(int(array.shape[0]) or 1, stored * max(1, target // stored)))


def foreign_points(location: StoreLocation, array: zarr.Array) -> PointStore:
    """A foreign 2-D Zarr array as read-only points.

    Decisions: the array is read where it is, never copied; chunks along the features are
    read together (each dask chunk is a band of whole rows, :func:`foreign_rows`), so any
    chunking works; integer and float16 values are read as float64, other dtypes refused.
    It has no weights, truth, label sets or checksums: the commands that write into a store
    (``label``, ``ingest --append``) refuse it with the fix (ingest it into a store).
    """
    described = _describe_foreign(location, array)
    if array.ndim != 2:
        raise DistgmmInputError(
            f"{location} is a {array.ndim}-D Zarr array of shape {tuple(array.shape)}; distgmm "
            "needs a 2-D (rows, features) array. Pass a 2-D array, or the path of a point store.")
    if array.dtype.kind not in "fiub" or array.dtype.kind == "c":
        raise DistgmmInputError(
            f"{location} is a Zarr array of dtype {array.dtype}, not numbers; pass a numeric "
            "(rows, features) array.")
    if array.shape[1] == 0:
        raise DistgmmInputError(f"{location} has no columns (shape {tuple(array.shape)}); pass "
                                "an array with at least one feature.")
    from dask.base import tokenize

    rows = foreign_rows(array)
    name = "from-zarr-" + tokenize(location.url, array.metadata.to_dict(), rows)
    points = da.from_array(array, chunks=(rows, int(array.shape[1])), name=name)
    if array.dtype.kind != "f" or array.dtype.itemsize < 4:
        points = points.astype(np.float64)
    return PointStore(location=location, group=None, points=points, weights=None, truth=None,
                      attrs={"columns": _foreign_columns(location, array)}, array=array,
                      foreign=described)
