"""``distgmm label``: write labels (and probabilities) of a store's rows, only for chunks not yet done."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from distgmm.cli._options import (
    ClusterOptions, LockWait, Output, StorageOption, command, dask_client, handle_errors,
    storage_options,
)

__all__ = ["label", "progress_printer", "render_label"]


def progress_printer(output: Output):
    """An ``on_progress`` callback printing recorded chunk counts on stderr."""
    def show(done: int, total: int) -> None:
        output.message(f"labelled {done}/{total} chunks")
    return show


def render_label(output: Output, result: dict[str, Any]) -> None:
    """One summary line on stdout."""
    rate = f", {result['rows_per_second']:,.0f} rows/s" if result["rows_per_second"] else ""
    extra = " and proba/" + result["name"] if result["proba"] else ""
    output.out.print(
        f"labels/{result['name']}{extra} in {result['store']}: labelled {result['chunks_done']} "
        f"chunks ({result['rows_labeled']:,} rows), skipped {result['chunks_skipped']} already "
        f"labelled by this model, of {result['n_chunks']}; {result['seconds']:.2f} s{rate}"
        f"{' (replaced the previous model)' if result['replaced'] else ''}", highlight=False)


@command(cluster=True)
def label(
    model: Annotated[str, typer.Argument(help="Model file (from distgmm fit/select).")],
    store: Annotated[str, typer.Argument(help="Point store (path or URL).")],
    name: Annotated[str | None, typer.Option("--name", help="Label set name: labels/NAME (default: the model file's name).")] = None,
    proba: Annotated[bool, typer.Option("--proba", help="Also write proba/NAME, (N, K) float32.")] = False,
    replace: Annotated[bool, typer.Option("--replace", help="Relabel everything if NAME was written by another model.")] = False,
    lock_wait: LockWait = None,
    storage_option: StorageOption = None,
    *,
    cluster: ClusterOptions,
    output: Output,
) -> None:
    """Label the rows of STORE with MODEL into labels/NAME, chunk by chunk.

    Incremental: chunks already labelled by this model are skipped, so a rerun after new
    rows were appended (or after an interrupted run) only labels what is left.
    """
    from distgmm.jobs import label_store
    from distgmm.jobs._label import check_label_store
    from distgmm.store import open_points, read_model

    with handle_errors(output):
        options = storage_options(storage_option)
        loaded = read_model(model, options)  # fail on bad input before starting a cluster
        check_label_store(open_points(store, options))
        with dask_client(cluster, output) as client:
            report = label_store(loaded, store, name=name, proba=proba, replace=replace,
                                 client=client, storage_options=options,
                                 on_progress=progress_printer(output), lock_wait=lock_wait)
            result = report.to_dict()
        if output.json:
            output.emit_json({**result, "rows_written": result["rows_labeled"]})
        else:
            render_label(output, result)
