"""``distgmm export``: a store's labels (and probabilities) out as Parquet or CSV, keyed by id or row."""

from __future__ import annotations

from typing import Annotated

import typer

from distgmm.cli._options import (
    ClusterOptions, Output, StorageOption, command, dask_client, handle_errors, storage_options,
)

__all__ = ["export"]


@command(cluster=True)
def export(
    store: Annotated[str, typer.Argument(help="Point store (path or URL).")],
    out: Annotated[str, typer.Argument(help="OUT.parquet or OUT.csv (path or URL): one file for a store of one chunk, else a dataset directory of part files.")],
    name: Annotated[str, typer.Option("--name", help="Label set to export: labels/NAME.")],
    proba: Annotated[bool, typer.Option("--proba", help="Also export the probabilities proba_0 ... proba_{K-1} (labelled with --proba).")] = False,
    format: Annotated[str | None, typer.Option("--format", metavar="{parquet,csv}", help="Output format (default: from OUT's extension).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an earlier export at OUT.")] = False,
    storage_option: StorageOption = None,
    *,
    cluster: ClusterOptions,
    output: Output,
) -> None:
    """Write the labels/NAME of STORE to OUT: one row per store row with its id (kept by
    `ingest --id-column`) or row number, its label and, with --proba, its probabilities.

    The workers write one part file per row chunk; pandas, pyarrow, DuckDB and Spark read
    the result as one table (README: Export).
    """
    from distgmm.jobs._export import check_export_destination, export_format, export_labels
    from distgmm.store import open_points

    with handle_errors(output):
        options = storage_options(storage_option)
        fmt = export_format(out, format)
        open_points(store, options)  # fail on bad input before starting a cluster
        check_export_destination(out, fmt, overwrite, options)
        with dask_client(cluster, output) as client:
            report = export_labels(store, out, name=name, proba=proba, format=fmt,
                                   overwrite=overwrite, client=client, storage_options=options)
        result = report.to_dict()
        if output.json:
            output.emit_json({**result, "rows_written": result["n_rows"]})
            return
        shown = f"{result['n_files']} part files" if result["layout"] == "dataset" else "one file"
        rate = f", {result['rows_per_second']:,.0f} rows/s" if result["rows_per_second"] else ""
        output.out.print(
            f"exported labels/{name}{' and proba/' + name if proba else ''} of {store} to "
            f"{out} ({result['format']}, {shown}, {result['n_rows']:,} rows keyed by "
            f"{result['key']}); {result['seconds']:.2f} s{rate}", highlight=False)
