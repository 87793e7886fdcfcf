"""Zarr point stores: open, create, ingest, append, generate, inspect, label state."""

from distgmm.store._ingest import IngestReport, append, ingest
from distgmm.store._location import StoreLocation
from distgmm.store._points import (
    DEFAULT_CHUNK_BYTES,
    SCHEMA_VERSION,
    PointStore,
    default_chunk_rows,
    open_points,
)

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "SCHEMA_VERSION",
    "IngestReport",
    "PointStore",
    "StoreLocation",
    "append",
    "default_chunk_rows",
    "ingest",
    "open_points",
]
