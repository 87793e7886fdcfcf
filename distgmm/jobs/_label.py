"""The label job: write ``labels/<name>`` (and ``proba/<name>``) chunk by chunk on Dask, incrementally.

Each pending row chunk of ``points`` is one task that reads its rows from Zarr on the worker,
computes the labels with the model's kernels (vectorised over sub-blocks) and writes its own
region of ``labels/<name>`` (and ``proba/<name>``) straight to Zarr. Regions are the store's
row chunks, so no two tasks write the same Zarr chunk. The client records finished chunks
in batches (:func:`distgmm.store.record_chunks_done`) as tasks complete, so an interrupted
run keeps its progress and a rerun only does what is left: chunks never labelled by this
model, chunks whose record was lost, and chunks that grew or appeared with appended rows.

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

import numpy as np
import zarr

from distgmm._statistics import MixtureParams
from distgmm.errors import DistgmmInputError
from distgmm.jobs._common import check_name, pause_for_tests, resolve_client
from distgmm.store import LABELS_ATTR, ModelFile, PointStore, open_points, prepare_labels, \
    read_model, record_chunks_done
from distgmm.store._integrity import check_finite_rows, read_rows
from distgmm.store._location import StoreLocation
from distgmm.store._lock import StoreLock, labels_lock
from distgmm.store._points import _compressors, open_group_checked

__all__ = ["LabelReport", "label_store", "label_block", "model_params", "check_label_store",
           "PAUSE_ENV"]

logger = logging.getLogger(__name__)

#: Test hook: pause (for ``kill -9``, or to start another run) once this many chunks are
#: recorded as done; at 0, once the label set is prepared, before any chunk is labelled.
PAUSE_ENV = "DISTGMM_TEST_PAUSE_AFTER_LABEL_CHUNKS"
_SUB_BLOCK_ROWS = 65536
_RECORD_SECONDS = 2.0
_RECORD_BATCHES = 20


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


def model_params(model: Any) -> MixtureParams:
    """The :class:`MixtureParams` of a fitted ``GaussianMixture`` (small; shipped to tasks)."""
    return MixtureParams.of_model(model)


def label_block(params: MixtureParams, X: np.ndarray, proba: bool = False
                ) -> tuple[np.ndarray, np.ndarray | None]:
    """Labels (int32) and optionally probabilities (float32) of a block ``X`` of shape (n, D).

    Labels alone skip the normalisation (``argmax`` of the weighted log-densities is the
    ``argmax`` of the responsibilities: :meth:`MixtureParams.labels`); probabilities are
    computed in sub-blocks of rows to stay in cache.
    """
    if not proba:
        return params.labels(X).astype(np.int32), None
    n = X.shape[0]
    labels = np.empty(n, dtype=np.int32)
    probs = np.empty((n, params.n_components), dtype=np.float32)
    for start in range(0, n, _SUB_BLOCK_ROWS):
        log_resp = params.log_responsibilities(X[start:start + _SUB_BLOCK_ROWS])[1]
        labels[start:start + log_resp.shape[0]] = log_resp.argmax(axis=1)
        probs[start:start + log_resp.shape[0]] = np.exp(log_resp)
    return labels, probs


def _label_chunk(index: int, *, location: StoreLocation, name: str, chunk_rows: int,
                 n_rows: int, params: MixtureParams, proba: bool) -> int:
    """Task: label row chunk ``index`` and write its regions; returns the chunk index.

    The rows are read through the checked store (a missing or damaged chunk is an error
    naming it) and must be finite: a NaN row would otherwise get label 0.
    """
    start = index * chunk_rows
    stop = min(start + chunk_rows, n_rows)
    X = read_rows(zarr.open_array(location.zarr_store(read_only=True), path="points",
                                  mode="r"), start, stop)
    check_finite_rows(X, location.url, "points", start, chunk_rows)
    store = location.zarr_store(read_only=False)
    labels, probs = label_block(params, X, proba)
    if proba:
        zarr.open_array(store, path=f"proba/{name}", mode="r+")[start:stop] = probs
    zarr.open_array(store, path=f"labels/{name}", mode="r+")[start:stop] = labels
    return index


def _prepare_proba(group: zarr.Group, name: str, n_rows: int, chunk_rows: int, k: int,
                   fresh: bool) -> None:
    path = f"proba/{name}"
    if not fresh and path in group and group[path].shape[1] == k:
        group[path].resize((n_rows, k))
        return
    group.require_group("proba").create_array(
        name, shape=(n_rows, k), chunks=(chunk_rows, k), dtype="float32", fill_value=np.nan,
        compressors=_compressors(), dimension_names=("row", "component"), overwrite=True)


def _pause_threshold() -> int | None:
    value = os.environ.get(PAUSE_ENV)
    return int(value) if value else None


def check_label_store(points: PointStore) -> None:
    """Refuse, before any work, a local store the label job could not write into."""
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
    loaded = model if isinstance(model, ModelFile) else read_model(model)
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
            _prepare_proba(group, name, n_rows, chunk_rows, k, fresh=not had_proba)
        elif f"proba/{name}" in group:
            del group[f"proba/{name}"]  # written by another model: stale
        pending = state.chunks_pending
        skipped = len(state.chunks_done)
        logger.info("labels/%s: %d chunks to label, %d already done", name, len(pending),
                    skipped)
        _run_chunks(pending, location, name, chunk_rows, n_rows, model_params(loaded.model),
                    with_proba, client, group, on_progress, lock, finished)
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


def _run_chunks(pending: list[int], location: StoreLocation, name: str, chunk_rows: int,
                n_rows: int, params: MixtureParams, proba: bool, client: Any, group: zarr.Group,
                on_progress: Callable[[int, int], None] | None, lock: StoreLock,
                finished: list[int]) -> None:
    """Submit one task per pending chunk and record them, in batches, as they finish
    (into the store and into ``finished``), while ``lock`` is still ours."""
    if not pending:
        return
    from distributed import as_completed

    threshold = _pause_threshold()
    if threshold == 0:  # the test hook at 0: after preparing, before any chunk is labelled
        pause_for_tests(PAUSE_ENV, 0, "recorded label chunks")
        threshold = None
    futures = client.map(_label_chunk, pending, location=location, name=name,
                         chunk_rows=chunk_rows, n_rows=n_rows, params=params, proba=proba,
                         pure=False)
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
            if on_progress is not None:
                on_progress(len(finished), len(pending))

    try:
        for future in as_completed(futures, loop=client.loop):
            batch.append(future.result())
            if len(batch) >= batch_size or time.monotonic() - last > _RECORD_SECONDS:
                flush()
                if threshold is not None and len(finished) >= threshold:
                    pause_for_tests(PAUSE_ENV, threshold, "recorded label chunks")
                    threshold = None
    finally:
        flush()
        client.cancel([f for f in futures if not f.done()])
    finished.sort()
