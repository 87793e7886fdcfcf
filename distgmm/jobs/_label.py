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
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

from distgmm import _progress
from distgmm.engine import ClusterPoints
from distgmm.errors import DistgmmInputError
from distgmm.jobs._common import check_name, resolve_client
from distgmm.jobs._labeller import LabelTarget, model_parameters, write_labels
from distgmm.store import LABELS_ATTR, ModelFile, PointStore, open_points, prepare_labels, \
    prepare_proba, read_model, record_chunks_done
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

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (adds ``rows_per_second`` of this run's work)."""
        rate = self.rows_labeled / self.seconds if self.seconds and self.rows_labeled else None
        return {**asdict(self), "rows_per_second": rate}


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
    with labels_lock(points.location, name, f"label {name}", lock_wait) as lock:
        return _label_locked(loaded, store, points.location, name, proba, replace,
                             resolve_client(client), on_progress, lock, t0)


def _label_locked(loaded: ModelFile, store: str, location: StoreLocation, name: str,
                  proba: bool, replace: bool, client: Any,
                  on_progress: Callable[[int, int], None] | None, lock: StoreLock,
                  t0: float) -> LabelReport:
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
    with_proba = proba or had_proba
    reset = proba and same_model and not had_proba
    if reset:
        logger.info("labels/%s had no probabilities: relabelling every chunk", name)
    created = [p for p in (path, f"proba/{name}", "labels", "proba") if p not in group]
    finished: list[int] = []
    try:
        state = prepare_labels(group, name, loaded.fingerprint, k, reset=reset,
                               extra={"proba": with_proba}, n_rows=n_rows)
        if with_proba:
            prepare_proba(group, name, n_rows, chunk_rows, k, fresh=not had_proba)
        elif f"proba/{name}" in group:
            del group[f"proba/{name}"]  # written by another model: stale
        pending = state.chunks_pending
        skipped = len(state.chunks_done)
        logger.info("labels/%s: %d chunks to label, %d already done", name, len(pending),
                    skipped)
        _progress.report(_progress.LABEL_CHUNKS_RECORDED, 0)
        target = LabelTarget(location, f"labels/{name}",
                             f"proba/{name}" if with_proba else None, refuse_nonfinite=True)
        rows = ClusterPoints(open_points(location).points[:n_rows], None, client)
        _label_chunks(rows, model_parameters(loaded.model), target, pending, group, name,
                      on_progress, lock, finished)
    except BaseException:
        if not finished:  # nothing to keep: leave the store as it was
            for created_path in created:  # arrays, then their groups
                if created_path in group:
                    del group[created_path]
        raise
    rows = sum(min((i + 1) * chunk_rows, n_rows) - i * chunk_rows for i in finished)
    return LabelReport(
        store=store, name=name, model=loaded.path, fingerprint=loaded.fingerprint,
        n_rows=n_rows, n_chunks=state.n_chunks, chunks_done=len(finished),
        chunks_skipped=skipped, rows_labeled=rows, proba=with_proba, replaced=other_model,
        seconds=time.perf_counter() - t0)


def _label_chunks(points: ClusterPoints, params, target: LabelTarget, pending: list[int],
                  group, name: str, on_progress: Callable[[int, int], None] | None,
                  lock: StoreLock, finished: list[int]) -> None:
    """Label the pending chunks and record them, in batches, as they finish (into the
    store and into ``finished``), while ``lock`` is still ours."""
    if not pending:
        return
    batch_size = max(1, len(pending) // _RECORD_BATCHES)
    batch: list[int] = []
    last = time.monotonic()

    def flush() -> None:
        nonlocal batch, last
        if batch:
            lock.ensure_held()
            record_chunks_done(group, name, batch)
            finished.extend(batch)
            batch, last = [], time.monotonic()
            _progress.report(_progress.LABEL_CHUNKS_RECORDED, len(finished))
            if on_progress is not None:
                on_progress(len(finished), len(pending))

    def done(index: int, rows: int) -> None:
        batch.append(index)
        if len(batch) >= batch_size or time.monotonic() - last > _RECORD_SECONDS:
            flush()

    try:
        write_labels(points, params, target, chunks=pending, on_chunk=done)
    finally:
        flush()
    finished.sort()
