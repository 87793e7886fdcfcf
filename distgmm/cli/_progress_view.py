"""Progress of a command's long phases on stderr: rich bars on a terminal, plain lines in logs.

A fit (``fit``, ``select``, ``run``) reports every pass it makes over the data
(:class:`distgmm.engine.PassInfo`: initialisation passes, then one per EM iteration), and a
label job every batch of chunks it records. On a terminal each phase gets a progress bar
(initialisation passes, EM iterations, chunks labelled), redrawn in place, with the
per-iteration lines and log records printed above it. When stderr is not a terminal (cron,
systemd, Airflow logs) there is nothing to redraw: each initialisation pass and each batch
of labelled chunks is one plain line, and EM iterations keep their one line each
(:func:`distgmm.cli.fit.iteration_printer`). ``-q`` shows neither; ``--json`` leaves
stderr's progress as it is (stdout carries only the JSON object).
"""

from __future__ import annotations

from typing import Any

from rich.progress import (
    BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn,
)

from distgmm.cli._options import Output

__all__ = ["ProgressView"]

#: How each phase of :data:`distgmm.engine.PHASES` is named to a person.
PHASE_NAMES = {
    "init-sample": "initialisation: sample pass",
    "init-seeding": "initialisation: seeding passes",
    "init-lloyd": "initialisation: Lloyd passes",
    "init-statistics": "initialisation: statistics pass",
    "em": "EM iterations",
}


class ProgressView:
    """Callbacks for a command's progress (``on_pass``, ``on_chunks``), drawn as bars on a
    terminal and as plain lines otherwise; use as a context manager around the work."""

    def __init__(self, output: Output) -> None:
        self.output = output
        self.bars: Progress | None = None
        if not output.quiet and output.err.is_terminal:
            self.bars = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(),
                                 console=output.err)
        self._tasks: dict[Any, TaskID] = {}

    def __enter__(self) -> "ProgressView":
        if self.bars is not None:
            self.bars.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bars is not None:
            if exc[0] is None:  # a phase that ended early (EM converged) is complete
                for task in self.bars.tasks:
                    self.bars.update(task.id, total=task.completed)
            self.bars.stop()

    def _bar(self, key: Any, description: str, total: int | None, completed: int) -> None:
        assert self.bars is not None
        if key not in self._tasks:
            self._tasks[key] = self.bars.add_task(description, total=total)
        self.bars.update(self._tasks[key], completed=completed, total=total)
        self.bars.refresh()  # lines printed next show this state (once a pass: cheap)

    def on_pass(self, info: Any) -> None:
        """A pass over the data ended (:class:`distgmm.engine.PassInfo`)."""
        name = PHASE_NAMES.get(info.phase, info.phase)
        start = ""
        if info.restart is not None:
            start = f" (start {info.restart + 1}" + (
                f", candidate {info.config + 1})" if info.config else ")")
        if self.bars is not None:
            self._bar((info.phase, info.restart, info.config), name + start, info.total,
                      info.number)
        elif info.phase != "em":  # EM iterations have their own lines
            of = f"/{info.total}" if info.total else ""
            self.output.message(f"{name}{start}: {info.number}{of} done, {info.seconds:.2f} s")

    def on_chunks(self, done: int, total: int) -> None:
        """The label job has recorded ``done`` of ``total`` chunks."""
        if self.bars is not None:
            self._bar("label", "chunks labelled", total, done)
        else:
            self.output.message(f"labelled {done}/{total} chunks")
