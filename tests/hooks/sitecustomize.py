"""Test-only pause points for CLI subprocesses (``PYTHONPATH`` holds this directory).

When ``DISTGMM_TEST_PAUSE_AFTER_<WHAT>=N`` is set, a handler on distgmm's progress logger
(:mod:`distgmm._progress`) writes ``DISTGMM_TEST_PAUSE_AFTER_<WHAT>: paused after N ...`` to
stderr at the N-th such event and sleeps ``$DISTGMM_TEST_PAUSE_SECONDS`` (default 60), so
a test can kill the process, or start another one, at a known point; with
``DISTGMM_TEST_RESUME_FILE`` it resumes as soon as that file exists (so a test that lets
another process run into the paused one's lock does not depend on how fast that process
starts). Without those variables this file does nothing. It is not part of distgmm.
"""

import logging
import os
import sys
import time

_PAUSES = {  # progress event -> (environment variable, what is counted)
    "chunk-written": ("DISTGMM_TEST_PAUSE_AFTER_CHUNKS", "chunk writes"),
    "label-chunks-recorded": ("DISTGMM_TEST_PAUSE_AFTER_LABEL_CHUNKS", "recorded label chunks"),
    "iteration": ("DISTGMM_TEST_PAUSE_AFTER_ITERATIONS", "EM iterations"),
}


class _Pause(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.done: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        event = getattr(record, "distgmm_event", None)
        if event not in _PAUSES or event in self.done:
            return
        env, what = _PAUSES[event]
        wanted = os.environ.get(env)
        if wanted is None or record.distgmm_count < int(wanted):
            return
        self.done.add(event)
        sys.stderr.write(f"{env}: paused after {record.distgmm_count} {what}\n")
        sys.stderr.flush()
        until = time.monotonic() + float(os.environ.get("DISTGMM_TEST_PAUSE_SECONDS", "60"))
        resume = os.environ.get("DISTGMM_TEST_RESUME_FILE")
        while time.monotonic() < until and not (resume and os.path.exists(resume)):
            time.sleep(0.05)


if any(env in os.environ for env, _ in _PAUSES.values()):
    _logger = logging.getLogger("distgmm.progress")
    _logger.setLevel(logging.DEBUG)
    _logger.propagate = False
    _logger.addHandler(_Pause())
