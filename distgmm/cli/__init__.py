"""The ``distgmm`` command line: a root Typer app composed of one module per command."""

from __future__ import annotations

import typer

from distgmm.cli import generate, info, ingest

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


def main() -> None:
    """Console-script entry point."""
    app()
