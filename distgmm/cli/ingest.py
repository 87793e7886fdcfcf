"""``distgmm ingest``: stream a text/CSV/npy/Parquet file into a point store, or append to one."""

from __future__ import annotations

from typing import Annotated

import typer

from distgmm.cli._options import (
    DType, LockWait, Output, StorageOption, command, handle_errors, storage_options,
)

__all__ = ["ingest"]


@command(cluster=False)
def ingest(
    source: Annotated[str, typer.Argument(help="Text (as numpy.loadtxt reads it), .csv, .npy or .parquet file.")],
    store: Annotated[str, typer.Argument(help="Destination store (path or URL).")],
    format: Annotated[str | None, typer.Option("--format", help="text, csv, npy or parquet (default: from the extension).")] = None,
    columns: Annotated[str | None, typer.Option("--columns", help="Columns to read, by name or 0-based index: 'x,y' or '0,2'.")] = None,
    header: Annotated[bool | None, typer.Option("--header/--no-header", help="Whether a text/CSV file has a header line (default: detected for CSV).", show_default=False)] = None,
    dtype: Annotated[DType | None, typer.Option("--dtype", help="Stored dtype (default: the source's float dtype, else float64; on --append, the store's).")] = None,
    chunk_rows: Annotated[int | None, typer.Option("--chunk-rows", min=1, help="Rows per chunk (default: ~16 MiB of points).")] = None,
    append: Annotated[bool, typer.Option("--append", help="Add the rows to the existing store (checks features and dtype).")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing point store.")] = False,
    drop_nonfinite: Annotated[bool, typer.Option("--drop-nonfinite", help="Skip rows holding NaN/inf (and report how many) instead of failing.")] = False,
    lock_wait: LockWait = None,
    storage_option: StorageOption = None,
    *,
    output: Output,
) -> None:
    """Stream SOURCE into the point store STORE (new, or --append to an existing one).

    Runs in this process (parsing is sequential); no Dask cluster is started.
    """
    from distgmm.store import ingest as ingest_store

    with handle_errors(output):
        report = ingest_store(
            source, store, format=format, columns=columns, header=header,
            dtype=dtype.value if dtype else None, chunk_rows=chunk_rows, append=append,
            overwrite=overwrite, drop_nonfinite=drop_nonfinite,
            storage_options=storage_options(storage_option), lock_wait=lock_wait)
        result = report.to_dict()
        if output.json:
            output.emit_json(result)
            return
        verb = "appended" if append else "ingested"
        output.out.print(
            f"{verb} {result['rows_written']:,} rows x {result['n_features']} features from "
            f"{source} to {store} ({result['n_rows']:,} rows now, {result['dtype']}, "
            f"{result['seconds']:.2f} s)", highlight=False)
        if result["rows_dropped"]:
            output.message(f"dropped {result['rows_dropped']:,} rows holding NaN/inf")
