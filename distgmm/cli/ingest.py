"""``distgmm ingest``: stream a CSV, Parquet, Zarr, npy or text source into a point store, or append to one."""

from __future__ import annotations

from typing import Annotated

import typer

from distgmm.cli._options import (
    DType, LockWait, Output, StorageOption, command, handle_errors, storage_options,
)

__all__ = ["ingest"]


@command(cluster=False)
def ingest(
    source: Annotated[str, typer.Argument(help="A .csv file, a Parquet file or dataset directory (hive partitions too), a Zarr array (or data.zarr/VARIABLE), a .npy file, or whitespace text as numpy.loadtxt reads it; a path or a URL (s3://...).")],
    store: Annotated[str, typer.Argument(help="Destination store (path or URL).")],
    format: Annotated[str | None, typer.Option("--format", metavar="{csv,parquet,zarr,npy,text}", help="Source format (default: from the name; a directory is Zarr if it holds Zarr metadata, else Parquet).")] = None,
    columns: Annotated[str | None, typer.Option("--columns", help="Columns to read, by name or 0-based index: 'x,y' or '0,2'.")] = None,
    header: Annotated[bool | None, typer.Option("--header/--no-header", help="Whether a text/CSV file has a header line (default: detected for CSV).", show_default=False)] = None,
    dtype: Annotated[DType | None, typer.Option("--dtype", help="Stored dtype (default: the source's float dtype, else float64; on --append, the store's).")] = None,
    chunk_rows: Annotated[int | None, typer.Option("--chunk-rows", min=1, help="Rows per chunk (default: ~16 MiB of points).")] = None,
    append: Annotated[bool, typer.Option("--append", help="Add the rows to the existing store (checks features and dtype).")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing point store.")] = False,
    drop_nonfinite: Annotated[bool, typer.Option("--drop-nonfinite", help="Skip rows holding NaN, inf or empty cells instead of failing; how many is reported and which source rows is recorded in the store (dropped_rows).")] = False,
    id_column: Annotated[str | None, typer.Option("--id-column", metavar="NAME", help="CSV/Parquet column kept as each row's key (the store's ids), for `distgmm export`; not a feature.")] = None,
    lock_wait: LockWait = None,
    storage_option: StorageOption = None,
    *,
    output: Output,
) -> None:
    """Stream SOURCE into the point store STORE (new, or --append to an existing one).

    Runs in this process (reading is sequential); no Dask cluster is started. Empty CSV
    cells are missing values: an error naming the row, or skipped with --drop-nonfinite.
    """
    from distgmm.store import ingest as ingest_store

    with handle_errors(output):
        report = ingest_store(
            source, store, format=format, columns=columns, header=header,
            dtype=dtype.value if dtype else None, chunk_rows=chunk_rows, append=append,
            overwrite=overwrite, drop_nonfinite=drop_nonfinite,
            storage_options=storage_options(storage_option), lock_wait=lock_wait,
            id_column=id_column)
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
            output.message(f"dropped {result['rows_dropped']:,} rows holding NaN/inf or empty "
                           f"cells (their source rows: {store}/dropped_rows"
                           f"[{result['dropped_rows'][0]}:{result['dropped_rows'][1]}])")
