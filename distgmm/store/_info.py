"""Summary of a point store: geometry, codec, size on disk, arrays, label progress, feature ranges."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from distgmm.store._integrity import CHECKSUM_CODEC, has_checksums
from distgmm.store._labels import label_names, label_state
from distgmm.store._location import StoreLocation
from distgmm.store._points import PointStore, open_points

__all__ = ["store_info", "feature_stats"]

logger = logging.getLogger(__name__)


def _codec_names(array) -> list[str]:
    """The compression codecs of ``array`` (Zarr v3 codecs, or a v2 array's filters and
    compressor), without the byte layout and the checksum."""
    metadata = array.metadata
    if metadata.zarr_format == 2:
        codecs = list(metadata.filters or []) + ([metadata.compressor] if metadata.compressor
                                                  else [])
        return [codec.get_config().get("id", type(codec).__name__) for codec in codecs]
    names = []
    for codec in metadata.codecs:
        config = codec.to_dict()
        name = config.get("name", type(codec).__name__)
        settings = config.get("configuration") or {}
        if name in ("bytes", CHECKSUM_CODEC):
            continue
        level = settings.get("level")
        names.append(f"{name}(level={level})" if level is not None else name)
    return names


def _size_on_disk(location: StoreLocation) -> int:
    fs, path = location.filesystem()
    return int(fs.du(path, total=True))


def feature_stats(points: PointStore, client=None) -> dict[str, np.ndarray]:
    """Per-feature min, max and mean (float64) of the committed points, computed on Dask.

    Returns
    -------
    dict
        ``min``, ``max``, ``mean``: arrays of shape (n_features,).
    """
    from distgmm.cluster import get_client

    x = points.points
    client = client or get_client()
    futures = client.compute([x.min(axis=0), x.max(axis=0), x.mean(axis=0, dtype=np.float64)])
    low, high, mean = client.gather(futures)
    return {"min": np.asarray(low, dtype=float), "max": np.asarray(high, dtype=float),
            "mean": np.asarray(mean, dtype=float)}


def store_info(store: str | StoreLocation, *, storage_options: dict[str, Any] | None = None,
               stats: bool = True, client=None) -> dict[str, Any]:
    """Describe a point store as a JSON-ready dictionary.

    Parameters
    ----------
    store : str or StoreLocation
        Path or URL of the store.
    storage_options : dict, optional
        fsspec options for a remote store.
    stats : bool
        Compute per-feature min/max/mean (one pass over the points on Dask).
    client : distributed.Client, optional
        Default: :func:`distgmm.cluster.get_client`.

    Returns
    -------
    dict
        Keys ``store, n_rows, n_features, dtype, chunk_rows, n_chunks, codec, checksums,
        bytes_on_disk, bytes_uncompressed, columns, schema_version, arrays, labels,
        provenance, row_log`` (``checksums``: whether chunks carry CRC-32C checksums and
        missing chunks are detected, true from schema 2 on) and,
        with ``stats``, ``features`` (one ``{name, min, max, mean}`` per column).
    """
    points = open_points(store, storage_options)
    if points.foreign is not None:
        return _foreign_info(points, stats, client)
    group = points.group
    arrays = []
    for path in ("points", "weights", "truth", "ids", "dropped_rows"):
        if path in group:
            arrays.append(path)
    arrays += [f"labels/{n}" for n in label_names(group)]
    if "proba" in group:
        arrays += [f"proba/{n}" for n, _ in sorted(group["proba"].arrays())]
    described = []
    for path in arrays:
        array = group[path]
        described.append({"name": path, "shape": list(array.shape), "dtype": str(array.dtype),
                          "chunks": list(array.chunks)})
    info: dict[str, Any] = {
        "store": points.location.url,
        "n_rows": points.n_rows,
        "n_features": points.n_features,
        "dtype": points.dtype.name,
        "chunk_rows": points.chunk_rows,
        "n_chunks": points.n_chunks,
        "codec": _codec_names(group["points"]),
        "checksums": has_checksums(group["points"]),
        "bytes_on_disk": _size_on_disk(points.location),
        "bytes_uncompressed": points.n_rows * points.n_features * points.dtype.itemsize,
        "columns": points.columns,
        "schema_version": points.attrs.get("schema_version"),
        "arrays": described,
        "labels": [label_state(group, n).to_dict() for n in label_names(group)],
        "provenance": points.attrs.get("provenance"),
        "row_log": list(group["points"].attrs.get("row_log", [])),
    }
    if "generated" in points.attrs:
        info["generated"] = points.attrs["generated"]
    if stats and points.n_rows:
        info["features"] = _features(points, client)
    return info


def _features(points: PointStore, client) -> list[dict[str, Any]]:
    values = feature_stats(points, client=client)
    return [{"name": name, "min": float(values["min"][j]), "max": float(values["max"][j]),
             "mean": float(values["mean"][j])} for j, name in enumerate(points.columns)]


def _foreign_info(points: PointStore, stats: bool, client) -> dict[str, Any]:
    """:func:`store_info`'s keys for a foreign array (``foreign`` says what it is; no label
    sets, provenance or row log; ``chunk_rows`` is the rows per task it is read in)."""
    array = points.array
    info: dict[str, Any] = {
        "store": points.location.url,
        "foreign": points.foreign,
        "n_rows": points.n_rows,
        "n_features": points.n_features,
        "dtype": points.dtype.name,
        "stored_dtype": str(array.dtype),
        "chunk_rows": points.chunk_rows,
        "n_chunks": points.n_chunks,
        "stored_chunks": list(array.chunks),
        "codec": _codec_names(array),
        "checksums": False,
        "bytes_on_disk": _size_on_disk(points.location),
        "bytes_uncompressed": points.n_rows * points.n_features * array.dtype.itemsize,
        "columns": points.columns,
        "schema_version": None,
        "arrays": [{"name": array.path or points.location.url.rstrip("/").rsplit("/", 1)[-1],
                    "shape": list(array.shape),
                    "dtype": str(array.dtype), "chunks": list(array.chunks)}],
        "labels": [],
        "provenance": None,
        "row_log": [],
    }
    if stats and points.n_rows:
        info["features"] = _features(points, client)
    return info
