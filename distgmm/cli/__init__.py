"""The ``distgmm`` command line: a root Typer app composed of one module per command.

Help is plain text (``rich_markup_mode=None``): help strings hold literal brackets
(``[vars]``, ``[default: 60]``) that rich markup would swallow. A command line Typer cannot
parse (an unknown option, a missing argument) is one ``error: ...`` line on stderr and exit
code 2, as every other bad input (with ``--json`` also the JSON error object on stdout).
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from distgmm.cli import (
    demo, export, fit, generate, info, ingest, label, plot, predict, run, select,
)
from distgmm.cli._options import EXIT_BAD_INPUT, click_errors, error_object

__all__ = ["app", "main"]

app = typer.Typer(
    name="distgmm",
    help="Gaussian mixtures (EM) on chunked Zarr point stores, on Dask.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        from distgmm import __version__

        sys.stdout.write(f"distgmm {__version__}\n")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print distgmm's version and exit.")] = False,
) -> None:
    """Gaussian mixtures (EM) on chunked Zarr point stores, on Dask."""


app.command("generate")(generate.generate)
app.command("ingest")(ingest.ingest)
app.command("info")(info.info)
app.command("fit")(fit.fit)
app.command("label")(label.label)
app.command("export")(export.export)
app.command("select")(select.select)
app.command("predict")(predict.predict)
app.command("plot")(plot.plot)
app.command("run")(run.run)
app.command("demo")(demo.demo)


def _usage_error(exc: click_errors.UsageError, argv: list[str]) -> int:
    """One ``error:`` line for a command line that does not parse (exit 2)."""
    command = exc.ctx.command_path if exc.ctx is not None else "distgmm"
    message = " ".join(exc.format_message().split())
    sys.stderr.write(f"error: {message} (see `{command} --help`)\n")
    if "--json" in argv:
        sys.stdout.write(__import__("json").dumps(error_object(
            command.split(" ", 1)[-1], "usage", message, EXIT_BAD_INPUT)) + "\n")
    return EXIT_BAD_INPUT


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        code = app(args=argv, prog_name="distgmm", standalone_mode=False)
    except getattr(click_errors, "NoArgsIsHelpError", ()) as exc:  # `distgmm` or a group alone: its help
        sys.stdout.write(exc.ctx.get_help() + "\n")
        code = 0
    except click_errors.UsageError as exc:
        code = _usage_error(exc, argv)
    except typer.Abort:
        sys.stderr.write("error: interrupted\n")
        code = 130
    sys.exit(code or 0)
