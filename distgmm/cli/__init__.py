"""The ``distgmm`` command line: a root Typer app composed of one module per command."""

from __future__ import annotations

import typer

from distgmm.cli import demo, fit, generate, info, ingest, label, plot, predict, run, select

__all__ = ["app", "main"]

app = typer.Typer(
    name="distgmm",
    help="Gaussian mixtures (EM) on chunked Zarr point stores, on Dask.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("generate")(generate.generate)
app.command("ingest")(ingest.ingest)
app.command("info")(info.info)
app.command("fit")(fit.fit)
app.command("label")(label.label)
app.command("select")(select.select)
app.command("predict")(predict.predict)
app.command("plot")(plot.plot)
app.command("run")(run.run)
app.command("demo")(demo.demo)


def main() -> None:
    """Console-script entry point."""
    app()
