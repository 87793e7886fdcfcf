"""``distgmm select``: fit every candidate K (and covariance type), print BIC/AIC, keep the best model."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from distgmm.cli._progress_view import ProgressView
from distgmm.cli._options import (
    ClusterOptions, Output, StorageOption, Variable, command, dask_client, handle_errors,
    points_url, storage_options,
)
from distgmm.cli.fit import InitMethod

__all__ = ["select", "candidate_printer", "render_select"]


def candidate_printer(output: Output):
    """An ``on_candidate`` callback printing one line per fitted candidate on stderr."""
    def show(record: dict[str, Any]) -> None:
        if record["error"]:
            output.message(f"K={record['n_components']:<3} {record['covariance_type']:<9} "
                           f"failed: {record['error']}")
        else:
            output.message(f"K={record['n_components']:<3} {record['covariance_type']:<9} "
                           f"BIC {record['bic']:.2f}  AIC {record['aic']:.2f}  "
                           f"{record['n_iter']} iterations")
    return show


def render_select(output: Output, result: dict[str, Any]) -> None:
    """The BIC/AIC table (chosen candidate marked) and where the outputs went, on stdout."""
    table = Table(title=f"model selection on {result['store']} (by {result['criterion'].upper()})")
    for column in ("K", "covariance", "BIC", "AIC", "iterations", "converged", ""):
        table.add_column(column, justify="right" if column in ("K", "BIC", "AIC", "iterations")
                         else "left")
    for r in result["records"]:
        chosen = (r["n_components"], r["covariance_type"]) == (result["n_components"],
                                                               result["covariance_type"])
        table.add_row(str(r["n_components"]), r["covariance_type"],
                      "-" if r["bic"] is None else f"{r['bic']:.2f}",
                      "-" if r["aic"] is None else f"{r['aic']:.2f}",
                      "-" if r["n_iter"] is None else str(r["n_iter"]),
                      "-" if r["converged"] is None else ("yes" if r["converged"] else "no"),
                      "<- chosen" if chosen else (r["error"] or ""),
                      style="bold" if chosen else None)
    output.out.print(table)
    output.out.print(f"chose K={result['n_components']} {result['covariance_type']}; model "
                     f"{result['model']} (fingerprint {result['fingerprint'][:16]})"
                     + (f", curve {result['plot']}" if result["plot"] else "")
                     + f"; {result['seconds']:.2f} s", highlight=False)


@command(cluster=True)
def select(
    store: Annotated[str, typer.Argument(help="Point store (path or URL).")],
    model: Annotated[str, typer.Option("--model", "-o", help="Where to write the chosen model (.npz); the curve goes next to it as <model>.selection.png.")],
    components: Annotated[str, typer.Option("--components", "-k", help="Candidate component counts: 1..12, 2,4,8 or 3.")] = "1..12",
    covariance_type: Annotated[str, typer.Option("--covariance-type", help="Comma-separated covariance types to try, e.g. full,diag.")] = "full",
    criterion: Annotated[str, typer.Option("--criterion", help="bic or aic (lower is better).")] = "bic",
    tol: Annotated[float, typer.Option("--tol", help="Convergence threshold of each fit.")] = 1e-3,
    max_iter: Annotated[int, typer.Option("--max-iter", help="EM iterations per fit.")] = 100,
    n_init: Annotated[int, typer.Option("--n-init", help="Initialisations per candidate.")] = 1,
    init: Annotated[InitMethod, typer.Option("--init", help="Initialisation method.")] = InitMethod.kmeans,
    reg_covar: Annotated[float, typer.Option("--reg-covar", help="Added to covariance diagonals.")] = 1e-6,
    seed: Annotated[int | None, typer.Option("--seed", help="Random seed of every candidate fit.")] = None,
    plot: Annotated[bool, typer.Option("--plot/--no-plot", help="Write the BIC/AIC curve as PNG next to the model.")] = True,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing model file.")] = False,
    outlier_quantile: Annotated[float, typer.Option("--outlier-quantile", metavar="Q", help="Record the outlier threshold below which this fraction of the training points score, for the chosen model.")] = 0.001,
    variable: Variable = None,
    storage_option: StorageOption = None,
    *,
    cluster: ClusterOptions,
    output: Output,
) -> None:
    """Fit each candidate number of components on STORE, print BIC/AIC, save the best model."""
    from distgmm.jobs import parse_components, parse_covariance_types, select_store
    from distgmm.jobs._fit import check_outlier_quantile
    from distgmm.jobs._select import check_select_outputs
    from distgmm.store import open_points

    with handle_errors(output):
        options = storage_options(storage_option)
        store = points_url(store, variable)
        parse_components(components)  # fail on bad input before starting a cluster
        parse_covariance_types(covariance_type)
        open_points(store, options)
        check_select_outputs(model, overwrite=overwrite, plot=plot, storage_options=options)
        check_outlier_quantile(outlier_quantile)
        with dask_client(cluster, output) as client, ProgressView(output) as progress:
            report = select_store(
                store, model, components=components, covariance_types=covariance_type,
                criterion=criterion, tol=tol, max_iter=max_iter, n_init=n_init,
                init_params=init.value, reg_covar=reg_covar, seed=seed, overwrite=overwrite,
                plot=plot, client=client, storage_options=options,
                on_candidate=candidate_printer(output), outlier_quantile=outlier_quantile,
                on_pass=progress.on_pass)
            result = report.to_dict()
        if output.json:
            output.emit_json(result)
        else:
            render_select(output, result)
