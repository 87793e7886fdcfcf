"""``distgmm predict``: label the rows of a small file (CSV, Parquet, npy, text) with a model, without a store."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from distgmm.cli._options import Output, StorageOption, command, handle_errors, storage_options

__all__ = ["predict"]


@command(cluster=False)
def predict(
    model: Annotated[str, typer.Argument(help="Model file (from distgmm fit/select).")],
    file: Annotated[str, typer.Argument(help="Points: a .csv, Parquet, Zarr, .npy or whitespace-text source (path or URL).")],
    proba: Annotated[bool, typer.Option("--proba", help="Also output the (N, K) component probabilities (text: label then probabilities per row; .csv/.parquet: columns proba_0...; .npy: the probabilities).")] = False,
    out: Annotated[str | None, typer.Option("--out", help="Write to this file instead of stdout: .csv or .parquet (a table with a header: row or id, label, proba_*), .npy, else text.")] = None,
    format: Annotated[str | None, typer.Option("--format", metavar="{csv,parquet,zarr,npy,text}", help="Source format (default: from the name).")] = None,
    columns: Annotated[str | None, typer.Option("--columns", help="Columns to read, by name or 0-based index.")] = None,
    header: Annotated[bool | None, typer.Option("--header/--no-header", help="Whether a text/CSV file has a header line.", show_default=False)] = None,
    id_column: Annotated[str | None, typer.Option("--id-column", metavar="NAME", help="CSV/Parquet column written as each row's id (in --out tables and --json).")] = None,
    storage_option: StorageOption = None,
    *,
    output: Output,
) -> None:
    """Print (or --out) the label of every row of FILE under MODEL; --proba adds probabilities.

    Runs in this process (meant for small files); no Dask cluster is started. For large
    data, ingest it into a store and use `distgmm label`.
    """
    from distgmm.jobs._predict import (
        check_prediction_out, predict_file, write_prediction, write_text,
    )

    with handle_errors(output):
        if out is not None:
            check_prediction_out(out)
        prediction = predict_file(model, file, proba=proba, format=format, columns=columns,
                                  header=header, id_column=id_column,
                                  storage_options=storage_options(storage_option))
        if out is not None:
            write_prediction(prediction, out)
        if output.json:
            result = {"model": prediction.model, "fingerprint": prediction.fingerprint,
                      "file": file, "n_rows": prediction.n_rows, "out": out}
            if out is None:
                if prediction.ids is not None:
                    result["ids"] = prediction.ids.tolist()
                result["labels"] = prediction.labels.tolist()
                if proba:
                    result["proba"] = prediction.proba.tolist()
            output.emit_json(result)
        elif out is None:
            write_text(sys.stdout, prediction)
        else:
            output.message(f"wrote {'labels and probabilities' if proba else 'labels'} of "
                           f"{prediction.n_rows} rows to {out}")
