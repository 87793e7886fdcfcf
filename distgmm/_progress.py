"""Progress events: what a long-running job has done so far, as log records.

Writers, the label job and the EM loop report each unit of work (a chunk written, label
chunks recorded, an iteration) through :func:`report` on the ``distgmm.progress`` logger,
at DEBUG level, with the event's name and count in the record (``distgmm_event``,
``distgmm_count``). Anything can watch them with a logging handler: log files at ``-vv``,
and the test suite, whose handler pauses a command at a chosen event so that another
process can kill it or run beside it (``tests/hooks/sitecustomize.py``). No test code
lives in the library.
"""

from __future__ import annotations

import logging

__all__ = ["CHUNK_WRITTEN", "ITERATION", "LABEL_CHUNKS_RECORDED", "report"]

_logger = logging.getLogger("distgmm.progress")

#: A writer (ingest, append, generate) wrote its n-th chunk.
CHUNK_WRITTEN = "chunk-written"
#: The label job recorded n chunks as labelled (0: the label set is prepared, no chunk yet).
LABEL_CHUNKS_RECORDED = "label-chunks-recorded"
#: A fit finished its n-th EM iteration (over all restarts).
ITERATION = "iteration"


def report(event: str, count: int) -> None:
    """Report the ``count``-th unit of ``event``."""
    _logger.debug("%s %d", event, count, extra={"distgmm_event": event, "distgmm_count": count})
