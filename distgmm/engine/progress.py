"""Progress events: one per pass a fit makes over the data, reported as the pass ends.

A fit's passes belong to phases. :func:`~distgmm.engine.em.fit_many` (and
:func:`~distgmm.engine.em.fit_em`) take ``on_pass``, a callable given one :class:`PassInfo`
after every pass, in order; the engine neither prints nor logs them, so that a terminal can
draw progress bars and a log can write plain lines from the same events.

| phase | passes |
| --- | --- |
| ``init-sample`` | ``kmeans``: the one pass drawing the uniform sample clustered in memory |
| ``init-seeding`` | ``k-means++``: one per center; ``k-means||``: its sampling rounds and the candidates' weights |
| ``init-lloyd`` | distributed Lloyd iterations after ``k-means||`` seeding (``total`` is their cap) |
| ``init-statistics`` | the statistics a start is taken from (``random``; ``k-means||``'s hard assignments) |
| ``em`` | one per EM iteration; each evaluates every run still iterating (``total`` is ``max_iter``) |

Initialisation passes carry the restart (and configuration, for :func:`fit_many`) being
initialised; EM passes serve every run at once and carry ``restart=None``. An
initialisation that makes no pass (``random_from_data``, or all initial arrays given)
reports nothing. Per-run lower bounds stay on ``on_iteration``
(:class:`~distgmm.engine.em.IterationInfo`).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Callable, Iterator

__all__ = ["PHASES", "PassInfo", "OnPass", "reported"]

PHASES = ("init-sample", "init-seeding", "init-lloyd", "init-statistics", "em")


@dataclass(frozen=True)
class PassInfo:
    """One pass over the data, just ended.

    Attributes
    ----------
    phase : str
        One of :data:`PHASES`.
    number : int
        1-based: the pass's number within its phase for this start (``init-*``), or the EM
        iteration it computed (``em``; after a resume, the iteration count goes on).
    seconds : float
        Wall time of the pass, the merge on this process included.
    total : int or None
        How many passes the phase takes at most, when known before it starts.
    restart : int or None
        The restart being initialised (``init-*``); None for EM passes, which serve all runs.
    config : int or None
        Index of the configuration given to :func:`~distgmm.engine.em.fit_many` that the
        restart belongs to (``init-*``); None for EM passes.
    """

    phase: str
    number: int
    seconds: float
    total: int | None = None
    restart: int | None = None
    config: int | None = None


OnPass = Callable[[PassInfo], None]


@contextlib.contextmanager
def reported(on_pass: OnPass | None, phase: str, number: int, *, total: int | None = None,
             restart: int | None = None, config: int | None = None) -> Iterator[None]:
    """Time the pass run in the ``with`` block and report it to ``on_pass`` (if any) when
    it ends without an exception."""
    started = time.perf_counter()
    yield
    if on_pass is not None:
        on_pass(PassInfo(phase, number, time.perf_counter() - started, total, restart, config))
