"""Zarr point stores: open, create, ingest, append, generate, inspect, label state, model files."""

from distgmm.store._generate import PRESETS, GenerateReport, generate, mixture_parameters
from distgmm.store._info import feature_stats, store_info
from distgmm.store._integrity import StoreIntegrityError
from distgmm.store._ingest import IngestReport, append, ingest
from distgmm.store._labels import (
    LABELS_ATTR,
    LabelState,
    create_label_array,
    label_names,
    label_state,
    prepare_labels,
    prepare_proba,
    prepare_scores,
    record_chunks_done,
    record_report,
    write_rows,
)
from distgmm.store._location import StoreLocation
from distgmm.store._lock import StoreBusyError
from distgmm.store._model import ModelFile, load_model, read_model, save_model
from distgmm.store._points import (
    DEFAULT_CHUNK_BYTES,
    SCHEMA_VERSION,
    PointStore,
    default_chunk_rows,
    open_points,
)
from distgmm.store._sources import SOURCE_FORMATS

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "LABELS_ATTR",
    "PRESETS",
    "SCHEMA_VERSION",
    "SOURCE_FORMATS",
    "GenerateReport",
    "IngestReport",
    "LabelState",
    "ModelFile",
    "PointStore",
    "StoreBusyError",
    "StoreIntegrityError",
    "StoreLocation",
    "append",
    "create_label_array",
    "default_chunk_rows",
    "feature_stats",
    "generate",
    "ingest",
    "label_names",
    "label_state",
    "load_model",
    "mixture_parameters",
    "open_points",
    "prepare_labels",
    "prepare_proba",
    "prepare_scores",
    "read_model",
    "record_chunks_done",
    "record_report",
    "save_model",
    "store_info",
    "write_rows",
]
