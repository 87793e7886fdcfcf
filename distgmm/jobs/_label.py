"""The label job: write ``labels/<name>`` (and ``proba/<name>``) of a store's rows, incrementally.

The labeller (:mod:`distgmm.jobs._labeller`) labels each pending row chunk of ``points``
on the worker that reads it and writes its region of ``labels/<name>`` (and
``proba/<name>``) straight to Zarr; regions are the store's row chunks, so no two workers
write the same Zarr chunk. This process records finished chunks in batches
(:func:`distgmm.store.record_chunks_done`) as they complete, so an interrupted run keeps
its progress and a rerun only does what is left: chunks never labelled by this model,
chunks whose record was lost, and chunks that grew or appeared with appended rows.

Rules:

* A label set written by another model is refused unless ``replace=True`` (then every chunk
  is relabelled and a stale ``proba/<name>`` is removed or rewritten).
* Probabilities are part of the label set: asking for ``proba`` on a set labelled without
  them relabels every chunk; a set that has them keeps writing them on later runs.
* Scores too (``scores``: ``scores/<name>``, float32, each point's log-likelihood, and
  ``outliers/<name>``, bool, its score below the model file's outlier threshold). They
  need a model file with training figures (:mod:`distgmm._scores`). Every scored chunk's
  :class:`~distgmm._scores.ScoreMoments` go into the label state with the chunk
  (:mod:`distgmm.store._labels`), and a finished run reports the drift of the chunks
  labelled since the last finished run (its own, and those of killed runs before it)
  against the model's training figures; a run that labels nothing repeats the last
  report. Drift is reported, never an error here: the CLI turns it into an exit code on
  request (``--fail-on-drift``).
"""

from __future__ import annotations

import logging
import math
import os
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any, Callable

from distgmm import _progress
from distgmm._scores import DEFAULT_DRIFT_THRESHOLD, ScoreMoments, ScoreProfile
from distgmm.engine import ClusterPoints
from distgmm.errors import DistgmmInputError
from distgmm.jobs._common import check_name, resolve_client
from distgmm.jobs._labeller import LabelTarget, model_parameters, model_score_shift, \
    write_labels
from distgmm.store import LABELS_ATTR, LabelState, ModelFile, PointStore, open_points, \
    prepare_labels, prepare_proba, prepare_scores, read_model, record_chunks_done, \
    record_report
from distgmm.store._location import StoreLocation
from distgmm.store._lock import StoreLock, labels_lock
from distgmm.store._points import open_group_checked

__all__ = ["LabelReport", "label_store", "check_label_store"]

logger = logging.getLogger(__name__)

#: Finished chunks are recorded in about this many batches per run, and at least every
#: _RECORD_SECONDS: a killed run loses at most one batch of records (those chunks are
#: labelled again), while each record is one metadata write.
_RECORD_BATCHES = 20
_RECORD_SECONDS = 2.0


@dataclass(frozen=True)
class LabelReport:
    """What :func:`label_store` did (JSON-ready through :meth:`to_dict`)."""

    store: str
    name: str
    model: str
    fingerprint: str
    n_rows: int
    n_chunks: int
    chunks_done: int
    chunks_skipped: int
    rows_labeled: int
    proba: bool
    replaced: bool
    seconds: float
    #: Whether scores/<name> and outliers/<name> are written, against which threshold.
    scores: bool = False
    outlier_quantile: float | None = None
    outlier_threshold: float | None = None
    #: With scores: the drift of the last report's chunks (:meth:`drift_report`), or None
    #: when no chunk has been reported on.
    drift: dict[str, Any] | None = None

    @property
    def drift_detected(self) -> bool:
        """Whether the report's chunks drifted from the training scores."""
        return bool(self.drift and self.drift["drift"])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (adds ``rows_per_second`` of this run's work)."""
        rate = self.rows_labeled / self.seconds if self.seconds and self.rows_labeled else None
        return {**asdict(self), "rows_per_second": rate}


def drift_report(state: LabelState, profile: ScoreProfile, threshold: float,
                 run: str | None = None) -> dict[str, Any] | None:
    """The drift of the chunks of ``state``'s last report against ``profile``, as a JSON-ready
    dictionary: :class:`~distgmm._scores.ScoreDrift`'s fields, plus ``chunks`` (how many),
    ``at`` (when they were reported) and ``this_run`` (whether by the run of id ``run``).
    None when nothing has been reported."""
    report = state.report
    if not report:
        return None
    chunks = [i for i in report["chunks"] if i in state.chunk_scores]
    if not chunks:
        return None
    batch = ScoreMoments.merged([ScoreMoments.from_list(state.chunk_scores[i][:4])
                                 for i in chunks])
    drift = profile.drift(batch, threshold)
    return {"chunks": len(chunks), "at": report["at"],
            "this_run": run is not None and report.get("run") == run, **drift.to_dict()}


def check_drift_threshold(threshold: float) -> float:
    """Refuse a drift threshold that is not a positive number of standard errors."""
    if not (isinstance(threshold, (int, float)) and math.isfinite(threshold) and threshold > 0):
        raise DistgmmInputError(f"--drift-threshold must be a positive number of standard "
                                f"errors (e.g. {DEFAULT_DRIFT_THRESHOLD:g}), got {threshold}.")
    return float(threshold)


def check_scoring_model(loaded: ModelFile) -> ScoreProfile:
    """The model's training figures, refusing a model file without them."""
    profile = getattr(loaded.model, "training_scores_", None)
    if profile is None:
        raise DistgmmInputError(
            f"model {loaded.path} has no training scores (written by an older distgmm, or "
            "fitted with --max-iter 0), so there is no outlier threshold or drift baseline; "
            "refit it with `distgmm fit`, or label without --scores.")
    return profile


def check_label_store(points: PointStore) -> None:
    """Refuse, before any work, a store the label job could not write into: a foreign Zarr
    array (read, never written: see :meth:`PointStore.refuse_foreign`), or a local store
    in a place that cannot be written."""
    points.refuse_foreign("label")
    if points.location.is_local:
        from distgmm._atomic import check_output_directory

        check_output_directory(points.location.path, what=f"store {points.location}")


def label_store(
    model: str | os.PathLike | ModelFile,
    store: str,
    *,
    name: str | None = None,
    proba: bool = False,
    replace: bool = False,
    scores: bool = False,
    drift_threshold: float = DEFAULT_DRIFT_THRESHOLD,
    client: Any = None,
    storage_options: dict[str, Any] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    lock_wait: float | None = None,
) -> LabelReport:
    """Label the rows of a point store that this model has not labelled yet.

    Parameters
    ----------
    model : path or ModelFile
        Model file (see :mod:`distgmm.store._model`).
    store : str
        Point store path or URL (reachable by the workers).
    name : str, optional
        Label set name; default the model file's name without extension.
    proba : bool
        Also write ``proba/<name>``, shape (N, K) float32.
    replace : bool
        Relabel everything if the set was written by another model (else that is an error).
    scores : bool
        Also write ``scores/<name>`` (N,) float32 and ``outliers/<name>`` (N,) bool, record
        each chunk's score figures, and report drift (see the module docstring). A set that
        has scores keeps them on later runs.
    drift_threshold : float
        Standard errors at which drift is reported (:mod:`distgmm._scores`).
    client : distributed.Client, optional
    storage_options : dict, optional
        fsspec options for a remote store.
    on_progress : callable, optional
        Called as ``on_progress(chunks_finished, chunks_pending)`` as chunks are recorded.
    lock_wait : float, optional
        Seconds to wait while another run writes this label set (or replaces the store);
        default ``$DISTGMM_LOCK_WAIT`` or 60 (see :mod:`distgmm.store._lock`).

    Returns
    -------
    LabelReport
    """
    t0 = time.perf_counter()
    loaded = model if isinstance(model, ModelFile) else read_model(model, storage_options)
    if name is None:
        name = os.path.splitext(os.path.basename(loaded.path))[0]
    name = check_name(name)
    points = open_points(store, storage_options)
    check_label_store(points)
    d = loaded.model.means_.shape[1]
    if d != points.n_features:
        raise DistgmmInputError(
            f"model {loaded.path} was fitted on {d} features but store {store} has "
            f"{points.n_features}; label with a model fitted on data like this store's.")
    drift_threshold = check_drift_threshold(drift_threshold)
    if scores:
        check_scoring_model(loaded)
    with labels_lock(points.location, name, f"label {name}", lock_wait) as lock:
        return _label_locked(loaded, store, points.location, name, proba, replace, scores,
                             drift_threshold, resolve_client(client), on_progress, lock, t0)


def _label_locked(loaded: ModelFile, store: str, location: StoreLocation, name: str,
                  proba: bool, replace: bool, scores: bool, drift_threshold: float,
                  client: Any, on_progress: Callable[[int, int], None] | None,
                  lock: StoreLock, t0: float) -> LabelReport:
    """:func:`label_store` once the label set's lock is held."""
    group = open_group_checked(location, mode="r+")
    # One snapshot of the committed rows for the whole run: rows an append commits
    # meanwhile are left for the next run (their chunks stay pending).
    n_rows, chunk_rows = int(group["points"].shape[0]), int(group["points"].chunks[0])
    k = loaded.model.means_.shape[0]
    path = f"labels/{name}"
    previous = (group[path].attrs.get(LABELS_ATTR) or {}) if path in group else {}
    old = previous.get("model_fingerprint") or ""
    other_model = bool(old) and old != loaded.fingerprint
    if other_model and not replace:
        raise DistgmmInputError(
            f"{store}: labels/{name} were written by another model (fingerprint {old[:12]}, "
            f"this model {loaded.fingerprint[:12]}); pass --replace to relabel every row with "
            "this model, or choose another --name.")
    same_model = old == loaded.fingerprint
    had_proba = same_model and bool(previous.get("proba"))
    had_scores = same_model and bool(previous.get("scores"))
    with_proba, with_scores = proba or had_proba, scores or had_scores
    reset = (proba and same_model and not had_proba) or (scores and same_model and not had_scores)
    if reset:
        logger.info("labels/%s had no %s: relabelling every chunk", name,
                    "probabilities" if proba and not had_proba else "scores")
    profile = check_scoring_model(loaded) if with_scores else None
    run_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    extra_paths = (f"proba/{name}", f"scores/{name}", f"outliers/{name}")
    created = [p for p in (path, *extra_paths, "labels", "proba", "scores", "outliers")
               if p not in group]
    finished: list[int] = []
    try:
        state = prepare_labels(group, name, loaded.fingerprint, k, reset=reset,
                               extra={"proba": with_proba, "scores": with_scores},
                               n_rows=n_rows)
        if with_proba:
            prepare_proba(group, name, n_rows, chunk_rows, k, fresh=not had_proba)
        if with_scores:
            prepare_scores(group, name, n_rows, chunk_rows, fresh=not had_scores)
        for kind, wanted in (("proba", with_proba), ("scores", with_scores),
                             ("outliers", with_scores)):
            if not wanted and f"{kind}/{name}" in group:
                del group[f"{kind}/{name}"]  # written by another model: stale
        pending = state.chunks_pending
        skipped = len(state.chunks_done)
        logger.info("labels/%s: %d chunks to label, %d already done", name, len(pending),
                    skipped)
        _progress.report(_progress.LABEL_CHUNKS_RECORDED, 0)
        target = LabelTarget(
            location, f"labels/{name}", f"proba/{name}" if with_proba else None,
            refuse_nonfinite=True, scores=f"scores/{name}" if with_scores else None,
            outliers=f"outliers/{name}" if with_scores else None,
            threshold=profile.outlier_threshold if profile else math.nan,
            score_shift=model_score_shift(loaded.model))
        rows = ClusterPoints(open_points(location).points[:n_rows], None, client)
        run = uuid.uuid4().hex
        last = _label_chunks(rows, model_parameters(loaded.model), target, pending, group,
                             name, on_progress, lock, finished, time.time(),
                             (run_at, run) if with_scores else None)
    except BaseException:
        if not finished:  # nothing to keep: leave the store as it was
            for created_path in created:  # arrays, then their groups
                if created_path in group:
                    del group[created_path]
        raise
    drift = None
    if with_scores:
        if last is None:  # nothing labelled now, or the last chunks' record had no report
            lock.ensure_held()
            last = record_report(group, name, run_at, run)
        drift = drift_report(last, profile, drift_threshold, run)
    rows = sum(min((i + 1) * chunk_rows, n_rows) - i * chunk_rows for i in finished)
    return LabelReport(
        store=store, name=name, model=loaded.path, fingerprint=loaded.fingerprint,
        n_rows=n_rows, n_chunks=state.n_chunks, chunks_done=len(finished),
        chunks_skipped=skipped, rows_labeled=rows, proba=with_proba, replaced=other_model,
        seconds=time.perf_counter() - t0, scores=with_scores,
        outlier_quantile=profile.outlier_quantile if profile else None,
        outlier_threshold=profile.outlier_threshold if profile else None, drift=drift)


def _label_chunks(points: ClusterPoints, params, target: LabelTarget, pending: list[int],
                  group, name: str, on_progress: Callable[[int, int], None] | None,
                  lock: StoreLock, finished: list[int], started: float,
                  report: tuple[str, str] | None) -> LabelState | None:
    """Label the pending chunks and record them (with their score figures), in batches, as
    they finish (into the store and into ``finished``), while ``lock`` is still ours;
    ``started`` (Unix seconds) is recorded as each scored chunk's labelling time. Once
    every chunk is written, the last batch's record also makes the run's ``report`` (at,
    run) and its state is returned; None if there was no last batch to record."""
    if not pending:
        return None
    batch_size = max(1, len(pending) // _RECORD_BATCHES)
    batch: list[int] = []
    batch_scores: dict[int, list[float]] = {}
    last = time.monotonic()

    def flush(report: tuple[str, str] | None = None) -> LabelState | None:
        nonlocal batch, batch_scores, last
        if not batch:
            return None
        lock.ensure_held()
        state = record_chunks_done(group, name, batch, batch_scores, report)
        finished.extend(batch)
        batch, batch_scores, last = [], {}, time.monotonic()
        _progress.report(_progress.LABEL_CHUNKS_RECORDED, len(finished))
        if on_progress is not None:
            on_progress(len(finished), len(pending))
        return state

    def done(index: int, rows: int, moments: ScoreMoments | None) -> None:
        batch.append(index)
        if moments is not None:
            batch_scores[index] = moments.to_list() + [started]
        if len(finished) + len(batch) == len(pending):
            return  # the run's last chunk: recorded with the report once the pass returns
        if len(batch) >= batch_size or time.monotonic() - last > _RECORD_SECONDS:
            flush()

    try:
        write_labels(points, params, target, chunks=pending, on_chunk=done)
    except BaseException:
        flush()
        raise
    state = flush(report)
    finished.sort()
    return state
