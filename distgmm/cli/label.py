"""``distgmm label``: write labels (and probabilities, scores, outlier flags) of a store's rows, only for chunks not yet done; report drift."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from distgmm.errors import DistgmmInputError

from distgmm.cli._progress_view import ProgressView
from distgmm.cli._options import (
    EXIT_DRIFT, ClusterOptions, LockWait, Output, StorageOption, command, dask_client,
    handle_errors, storage_options,
)

__all__ = ["label", "render_label", "render_drift"]


def _arrays(result: dict[str, Any]) -> str:
    name = result["name"]
    kinds = ["labels"] + (["proba"] if result["proba"] else []) + \
        (["scores", "outliers"] if result.get("scores") else [])
    paths = [f"{kind}/{name}" for kind in kinds]
    return paths[0] if len(paths) == 1 else ", ".join(paths[:-1]) + " and " + paths[-1]


def render_label(output: Output, result: dict[str, Any]) -> None:
    """One summary line on stdout, then the drift table when the set has scores."""
    rate = f", {result['rows_per_second']:,.0f} rows/s" if result["rows_per_second"] else ""
    output.out.print(
        f"{_arrays(result)} in {result['store']}: labelled {result['chunks_done']} "
        f"chunks ({result['rows_labeled']:,} rows), skipped {result['chunks_skipped']} already "
        f"labelled by this model, of {result['n_chunks']}; {result['seconds']:.2f} s{rate}"
        f"{' (replaced the previous model)' if result['replaced'] else ''}", highlight=False)
    if result.get("scores"):
        render_drift(output, result)


def _z(value: Any) -> str:
    return value if isinstance(value, str) else f"{value:+.1f}"


def render_drift(output: Output, result: dict[str, Any]) -> None:
    """The drift of the last report's chunks against the model's training scores, as a
    table with the verdict under it."""
    drift = result.get("drift")
    if drift is None:
        output.out.print("drift: no scored chunks reported yet", highlight=False)
        return
    when = "labelled by this run" if drift["this_run"] else \
        f"reported by an earlier run at {drift['at']}"
    table = Table(title=f"drift of {drift['chunks']} chunk{'s' if drift['chunks'] != 1 else ''}"
                  f" ({drift['rows']:,.0f} rows) {when}, against the model's training scores",
                  title_justify="left")
    for column in ("", "batch", "training", "change", "z"):
        table.add_column(column, justify="left" if not column else "right")
    expected = drift["expected_outlier_rate"]
    ratio = drift["outlier_rate"] / expected if expected else float("nan")
    table.add_row("mean log-likelihood", f"{drift['mean']:.4f}", f"{drift['training_mean']:.4f}",
                  f"{drift['mean_change']:+.4f}", _z(drift["mean_z"]))
    table.add_row(f"outliers (score < {result['outlier_threshold']:.3f})",
                  f"{100 * drift['outlier_rate']:.3f}%", f"{100 * expected:.3f}%",
                  f"x{ratio:.2f}", _z(drift["outlier_z"]))
    output.out.print(table)
    threshold = drift["threshold"]
    if drift["drift"]:
        output.out.print(f"DRIFT: |z| >= {threshold:g} (the batch no longer looks like the "
                         "training data; refit, e.g. `distgmm fit ... --align-to` this model)",
                         highlight=False)
    else:
        output.out.print(f"no drift (mean |z| and outlier z below {threshold:g})",
                         highlight=False)


@command(cluster=True)
def label(
    model: Annotated[str, typer.Argument(help="Model file (from distgmm fit/select).")],
    store: Annotated[str, typer.Argument(help="Point store (path or URL).")],
    name: Annotated[str | None, typer.Option("--name", help="Label set name: labels/NAME (default: the model file's name).")] = None,
    proba: Annotated[bool, typer.Option("--proba", help="Also write proba/NAME, (N, K) float32.")] = False,
    scores: Annotated[bool, typer.Option("--scores", help="Also write scores/NAME (each point's log-likelihood, float32) and outliers/NAME (score below the model's outlier threshold, bool), record each chunk's mean score and outlier share, and report drift against the model's training scores.")] = False,
    drift_threshold: Annotated[float, typer.Option("--drift-threshold", metavar="Z", help="Report drift when the mean score moves this many standard errors, or the outlier count is this improbable (as a normal z).")] = 4.0,
    fail_on_drift: Annotated[bool, typer.Option("--fail-on-drift", help=f"Exit with code {EXIT_DRIFT} (after labelling and reporting) when drift is reported.")] = False,
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

    With --scores, the report compares the chunks labelled since the last finished run
    with the model's training scores (mean log-likelihood change in standard errors,
    outlier rate against the training rate); with --fail-on-drift, drift exits with
    code 3, so that cron, systemd or Airflow can alert or trigger a refit.
    """
    from distgmm.jobs import label_store
    from distgmm.jobs._label import check_drift_threshold, check_label_store, \
        check_scoring_model
    from distgmm.store import open_points, read_model

    with handle_errors(output):
        options = storage_options(storage_option)
        loaded = read_model(model, options)  # fail on bad input before starting a cluster
        check_label_store(open_points(store, options))
        check_drift_threshold(drift_threshold)
        if fail_on_drift and not scores:
            raise DistgmmInputError("--fail-on-drift judges scores: add --scores.")
        if scores:
            check_scoring_model(loaded)
        with dask_client(cluster, output) as client, ProgressView(output) as progress:
            report = label_store(loaded, store, name=name, proba=proba, replace=replace,
                                 scores=scores, drift_threshold=drift_threshold,
                                 client=client, storage_options=options,
                                 on_progress=progress.on_chunks, lock_wait=lock_wait)
            result = report.to_dict()
        if output.json:
            output.emit_json({**result, "rows_written": result["rows_labeled"]})
        else:
            render_label(output, result)
    if fail_on_drift and report.drift_detected:
        raise typer.Exit(EXIT_DRIFT)
