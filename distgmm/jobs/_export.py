"""The export job: a store's labels (and probabilities) back out as Parquet or CSV, keyed by id or row.

``export STORE --name NAME OUT`` writes one row per store row: ``id`` (the store's ``ids``,
kept by ``ingest --id-column``) or else ``row`` (0-based store row, int64), ``label``
(int32), and with ``proba`` the columns ``proba_0`` ... ``proba_{K-1}`` (float32).

Decisions:

* **Written by the workers, chunk by chunk**, through the engine's ``Points.map_chunks`` as
  the labeller writes labels (:mod:`distgmm.jobs._labeller`): the "points" of the pass are
  the label array's row chunks; each task reads its ids and probabilities from the store
  and writes its own part file. Nothing but row counts comes back to this process.
* **Layout**: a store of one row chunk gives one file at ``OUT``. More chunks give a dataset
  directory at ``OUT`` as Spark writes one: ``part-00000.parquet`` (or ``.csv``) per chunk,
  in row order, and an empty ``_SUCCESS`` written last. pandas (``read_parquet(OUT)``),
  pyarrow, DuckDB (``read_parquet('OUT/*.parquet')``), Spark (``spark.read.parquet(OUT)``)
  and polars read the dataset as one table; every CSV part has the header line (Spark's
  ``header=true``; ``read_csv('OUT/*.csv')`` in DuckDB, ``spark.read.option('header',
  True).csv(OUT)``).
* **Nothing partial**: a local export is built under a hidden sibling name and renamed into
  place when complete (:func:`~distgmm.store._location.building`); a remote one (no
  rename on object stores) is removed on failure and has ``_SUCCESS`` only once complete.
  An existing ``OUT`` is replaced only with ``overwrite`` and only if it is an earlier
  export (a Parquet file or dataset, a CSV file or dataset).
* Labels that do not cover the store's rows (a label run not done since an append) or
  probabilities never written are refused with the ``distgmm label`` command that fixes it.
"""

from __future__ import annotations

import functools
import io
import json
import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from distgmm._atomic import is_url, write_file
from distgmm.engine import ClusterPoints
from distgmm.errors import DistgmmInputError
from distgmm.jobs._common import check_name, resolve_client
from distgmm.store import StoreLocation, label_state, open_points
from distgmm.store._location import building
from distgmm.store._points import IDS, dask_rows

__all__ = ["ExportReport", "export_labels", "check_export_destination", "export_format",
           "result_table", "encode_table", "EXPORT_FORMATS"]

EXPORT_FORMATS = ("parquet", "csv")
_SUCCESS = "_SUCCESS"


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export_labels` wrote (JSON-ready through :meth:`to_dict`)."""

    store: str
    name: str
    out: str
    format: str
    layout: str
    key: str
    proba: bool
    n_rows: int
    n_files: int
    model_fingerprint: str
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (adds ``rows_per_second``)."""
        rate = self.n_rows / self.seconds if self.seconds and self.n_rows else None
        return {**asdict(self), "rows_per_second": rate}


def export_format(out: str, format: str | None) -> str:
    """``format``, else the one named by ``out``'s extension; anything else is refused."""
    fmt = format or os.path.splitext(out.rstrip("/"))[1].lstrip(".").lower()
    fmt = {"pq": "parquet"}.get(fmt, fmt)
    if fmt not in EXPORT_FORMATS:
        raise DistgmmInputError(f"cannot tell the format of {out}; name it OUT.parquet or "
                                "OUT.csv, or pass --format parquet|csv.")
    return fmt


def _is_export(location: StoreLocation, fmt: str) -> bool:
    """Whether what is at ``location`` is an earlier export: a dataset directory (only part
    files and markers) or a file of the format."""
    fs, path = location.filesystem()
    if fs.isdir(path):
        names = [os.path.basename(p.rstrip("/")) for p in fs.ls(path, detail=False)]
        return bool(names) and all(n == _SUCCESS or (n.startswith("part-") and
                                                     n.endswith(f".{fmt}")) for n in names)
    with fs.open(path, "rb") as handle:
        head = handle.read(4)
    if fmt == "parquet":
        return head == b"PAR1"
    return head[:1] == b'"' or head[:3] in (b"id,", b"row")


def check_export_destination(out: str, fmt: str, overwrite: bool,
                             storage_options: dict[str, Any] | None = None) -> None:
    """Refuse, before any work, an ``OUT`` that exists (without ``overwrite``), is not an
    earlier export, or cannot be written."""
    from distgmm._atomic import check_output_directory, check_output_url

    location = StoreLocation(out, storage_options)
    if is_url(out):
        check_output_url(out, what="export", storage_options=storage_options)
    else:
        check_output_directory(os.path.dirname(location.path), what=f"export {out}")
    if not location.exists():
        return
    if not _is_export(location, fmt):
        raise DistgmmInputError(f"{out} exists and is not an earlier {fmt} export; refusing "
                                "to replace it. Choose another path or remove it yourself.")
    if not overwrite:
        raise DistgmmInputError(f"{out} already exists; pass --overwrite to replace it, or "
                                "choose another path.")


@dataclass(frozen=True)
class _Target:
    """Where the chunk tasks write: a directory of parts, or one file."""

    store: StoreLocation
    labels: str
    proba: str | None
    ids: bool
    out: str
    single: bool
    fmt: str
    metadata: str
    storage_options: dict[str, Any] | None = field(default=None, compare=False)


@functools.lru_cache(maxsize=8)
def _arrays(target: _Target, token: str) -> tuple[Any, Any]:
    """The ``ids`` and probability arrays of the store, opened once per worker and run."""
    import zarr

    group = zarr.open_group(target.store.zarr_store(read_only=True), mode="r")
    return (group[IDS] if target.ids else None,
            group[target.proba] if target.proba else None)


def result_table(labels: np.ndarray, *, ids: np.ndarray | None = None, start: int = 0,
                 proba: np.ndarray | None = None, metadata: str | None = None):
    """The rows distgmm writes out (export, ``predict --out``) as a pyarrow table: ``id``
    (the given keys) or ``row`` (``start``, ``start + 1``...), ``label`` (int32), and
    ``proba_0`` ... (float32) when ``proba`` is given."""
    import pyarrow as pa

    stop = start + labels.shape[0]
    columns = {"id": pa.array(np.asarray(ids))} if ids is not None else \
        {"row": pa.array(np.arange(start, stop, dtype=np.int64))}
    columns["label"] = pa.array(labels.astype(np.int32, copy=False))
    if proba is not None:
        values = np.asarray(proba, dtype=np.float32)
        columns.update({f"proba_{k}": pa.array(values[:, k]) for k in range(values.shape[1])})
    table = pa.table(columns)
    return table if metadata is None else table.replace_schema_metadata({"distgmm": metadata})


def _table(labels: np.ndarray, start: int, target: _Target, token: str):
    stop = start + labels.shape[0]
    ids, proba = _arrays(target, token)
    return result_table(labels, ids=None if ids is None else ids[start:stop], start=start,
                        proba=None if proba is None else proba[start:stop],
                        metadata=target.metadata)


def encode_table(table, fmt: str) -> bytes:
    """``table`` as the bytes of a Parquet (zstd) or CSV (header line) file."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    if fmt == "parquet":
        pq.write_table(table, sink, compression="zstd")
    else:
        pacsv.write_csv(table, sink)
    return sink.getvalue()


def _write_part(block, weights, index, target: _Target, starts: np.ndarray, token: str) -> int:
    """Chunk function: the export rows of chunk ``index``, written as its part file."""
    labels = np.asarray(block)[:, 0]
    data = encode_table(_table(labels, int(starts[index]), target, token), target.fmt)
    path = target.out if target.single else f"{target.out.rstrip('/')}/part-{index:05d}.{target.fmt}"
    write_file(path, data, target.storage_options)
    return int(labels.shape[0])


def export_labels(store: str, out: str, *, name: str, proba: bool = False,
                  format: str | None = None, overwrite: bool = False, client: Any = None,
                  storage_options: dict[str, Any] | None = None) -> ExportReport:
    """Write the labels ``labels/<name>`` of ``store`` (and ``proba/<name>``) to ``out``.

    Parameters
    ----------
    store : str
        Point store path or URL.
    out : str
        Destination path or URL (``.parquet`` or ``.csv``; see the module docstring for
        the file-or-dataset layout).
    name : str
        Label set name.
    proba : bool
        Also write the probabilities (the label run must have written them, ``--proba``).
    format : {"parquet", "csv"}, optional
        Default from ``out``'s extension.
    overwrite : bool
        Replace an earlier export at ``out``.
    client : distributed.Client, optional
    storage_options : dict, optional
        fsspec options for remote URLs (store and ``out``).

    Returns
    -------
    ExportReport
    """
    t0 = time.perf_counter()
    name = check_name(name)
    fmt = export_format(out, format)
    points = open_points(store, storage_options)
    points.refuse_foreign("export labels from")
    group = points.group
    if f"labels/{name}" not in group:
        raise DistgmmInputError(f"{store} has no labels/{name}; write them with `distgmm label "
                                f"MODEL {store} --name {name}` first.")
    state = label_state(group, name)
    if not state.complete:
        raise DistgmmInputError(
            f"{store}: labels/{name} cover {len(state.chunks_done)} of {state.n_chunks} row "
            f"chunks (rows were appended, or a label run stopped); run `distgmm label MODEL "
            f"{store} --name {name}` with its model first.")
    if proba and f"proba/{name}" not in group:
        raise DistgmmInputError(f"{store} has no proba/{name}; label with `distgmm label ... "
                                f"--name {name} --proba` first, or export without --proba.")
    check_export_destination(out, fmt, overwrite, storage_options)
    location = StoreLocation(out, storage_options)
    n_rows = points.n_rows
    labels = dask_rows(group[f"labels/{name}"])[:n_rows]
    single = labels.numblocks[0] <= 1
    metadata = json.dumps({"store": points.location.url, "labels": name,
                           "model_fingerprint": state.model_fingerprint})
    client = resolve_client(client)
    with building(location) as build:
        out_path = build.url if not build.is_local else build.path
        if single and build.is_local:
            # ``building`` gives a directory to fill; one file goes to a path inside it.
            os.makedirs(out_path, exist_ok=True)
            out_path = os.path.join(out_path, f"part-00000.{fmt}")
        target = _Target(points.location, f"labels/{name}", f"proba/{name}" if proba else None,
                         points.ids is not None, out_path, single, fmt, metadata,
                         storage_options)
        if n_rows:
            starts = np.cumsum((0,) + tuple(labels.chunks[0]))[:-1]
            written = ClusterPoints(labels[:, None], None, client).map_chunks(
                _write_part, target, starts, uuid.uuid4().hex)
            if sum(written) != n_rows:  # pragma: no cover - a broken invariant
                raise RuntimeError(f"exported {sum(written)} rows of {n_rows}")
        else:
            write_file(out_path, encode_table(_table(np.empty(0, np.int32), 0, target, ""), fmt),
                       storage_options)
        if not single:
            write_file(f"{build.url.rstrip('/')}/{_SUCCESS}" if not build.is_local
                       else os.path.join(build.path, _SUCCESS), b"", storage_options)
        if single and build.is_local:
            _single_file_in_place(build.path, out_path)
    return ExportReport(store=store, name=name, out=out, format=fmt,
                        layout="file" if single else "dataset",
                        key="id" if points.ids is not None else "row", proba=proba,
                        n_rows=n_rows, n_files=1 if single else labels.numblocks[0],
                        model_fingerprint=state.model_fingerprint,
                        seconds=time.perf_counter() - t0)


def _single_file_in_place(directory: str, part: str) -> None:
    """Turn the build directory holding one part into that file (renamed in its place), so
    that :func:`building` renames a file to ``OUT``."""
    hidden = f"{directory}.part"
    os.rename(part, hidden)
    os.rmdir(directory)
    os.rename(hidden, directory)

