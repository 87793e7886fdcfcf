"""``distgmm run``: run a TOML job file (the commands' steps) on one cluster; ``--schema`` prints its JSON Schema."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from distgmm.errors import DistgmmInputError

from distgmm.cli._options import (
    EXIT_DRIFT, ClusterOptions, LockWait, Output, command, dask_client, handle_errors,
)
from distgmm.cli.fit import iteration_printer, render_fit
from distgmm.cli.label import render_label
from distgmm.cli._progress_view import ProgressView
from distgmm.cli.select import candidate_printer, render_select

__all__ = ["run"]


def _render_step(output: Output, kind: str, result: dict) -> None:
    if result.get("skipped"):
        output.out.print(f"{kind}: skipped, {result['reason']}", highlight=False)
    elif kind == "fit":
        render_fit(output, result)
    elif kind == "label":
        render_label(output, result)
    elif kind == "select":
        render_select(output, result)
    elif kind in ("predict", "plot", "export"):
        output.out.print(f"{kind}: wrote {result['out']} ({result.get('n_rows', 0):,} rows)",
                         highlight=False)
    else:
        output.out.print(f"{kind}: {result['store']} now has {result['n_rows']:,} rows "
                         f"({result['seconds']:.2f} s)", highlight=False)


@command(cluster=True)
def run(
    job_file: Annotated[str | None, typer.Argument(metavar="JOB.toml", help="Job file (see jobs/ for documented examples).")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", metavar="NAME=VALUE", help="Override a [vars] entry of the job, repeatable (also: env DISTGMM_VAR_<NAME>).")] = None,
    lock_wait: LockWait = None,
    allow_outside: Annotated[bool, typer.Option("--allow-outside", help="Let the job use paths outside its own directory and the --set values (only for job files you trust).")] = False,
    schema: Annotated[bool, typer.Option("--schema", help="Print the JSON Schema of job files and exit (for editors and CI checks).")] = False,
    *,
    cluster: ClusterOptions,
    output: Output,
) -> None:
    """Validate JOB.toml completely, then run its steps in order on one cluster.

    Relative paths in the job are relative to the job file's directory, and every path must
    stay inside it or inside a path given with --set (else --allow-outside). Steps are data
    (generate, ingest, fit, label, select, predict, plot, export with their options): a job
    file cannot run code. Rerunning a job skips the steps whose output is already there and
    complete. A label step with fail_on_drift = true that reports drift ends the job with
    exit code 3.
    """
    import json

    from distgmm.jobs import JobHooks, load_job, parse_sets, run_job
    from distgmm.jobs._spec import job_schema

    if schema:
        sys.stdout.write(json.dumps(job_schema(), indent=2) + "\n")
        return
    with handle_errors(output):
        if job_file is None:
            raise DistgmmInputError("missing JOB.toml; give a job file, or --schema for the "
                                    "schema of job files.")
        job = load_job(job_file, parse_sets(set_), allow_outside=allow_outside)
        output.message(f"job {job_file}: {len(job.steps)} steps"
                       + (f" ({job.description})" if job.description else ""))
        progress = ProgressView(output)
        hooks = JobHooks(
            step_started=lambda s: output.message(f"step {s.index}/{len(job.steps)}: {s.kind}"),
            step_finished=None if output.json else
            lambda s, r: _render_step(output, s.kind, r.to_dict()),
            on_iteration=iteration_printer(output), on_label_progress=progress.on_chunks,
            on_candidate=candidate_printer(output), on_pass=progress.on_pass)
        with dask_client(cluster, output) as client, progress:
            report = run_job(job, client=client, hooks=hooks, lock_wait=lock_wait)
            result = report.to_dict()
        if output.json:
            output.emit_json(result)
        elif report.failed_on_drift:
            output.message(f"job stopped: step {report.results[-1][0].index} reported drift "
                           f"({len(report.results)} of {len(job.steps)} steps in "
                           f"{report.seconds:.2f} s)")
        else:
            output.message(f"job done: {len(report.results)} steps in {report.seconds:.2f} s")
    if report.failed_on_drift:
        raise typer.Exit(EXIT_DRIFT)
