"""``distgmm demo``: the first run for a new user — data, fits, model selection, labels and plots."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from distgmm.cli._options import ClusterOptions, Output, command, dask_client, handle_errors

__all__ = ["demo"]


@command(cluster=True)
def demo(
    directory: Annotated[str, typer.Argument(metavar="[DIR]", help="Output directory (created; earlier demo outputs in it are replaced).")] = "distgmm-demo",
    *,
    cluster: ClusterOptions,
    output: Output,
) -> None:
    """Write two small data sets into stores, fit, select K, label, and plot, into DIR.

    The seed-blobs data (2 blobs, 900 points) is fitted with K=2; kmeansSamples.txt (30
    points, shipped with distgmm) gets its K chosen by BIC over 1..6. Takes about a minute
    on a laptop's local cluster.
    """
    from distgmm.jobs import run_demo
    from distgmm.jobs._demo import check_demo_directory

    with handle_errors(output):
        check_demo_directory(directory)
        with dask_client(cluster, output) as client:
            report = run_demo(directory, client=client, on_step=output.message)
            result = report.to_dict()
        if output.json:
            output.emit_json(result)
            return
        table = Table(title=f"distgmm demo: outputs in {result['directory']}")
        table.add_column("what")
        table.add_column("where")
        for what, where in result["outputs"].items():
            table.add_row(what, where)
        output.out.print(table)
        output.out.print(f"done in {result['seconds']:.1f} s. Next: `distgmm info "
                         f"{result['outputs']['blobs store']}`, open the PNG files, or try "
                         "`distgmm run jobs/...toml`.", highlight=False)
