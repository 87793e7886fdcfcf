"""Label arrays in a point store and their per-chunk progress record (``labels/<name>`` attributes).

Attribute schema (on the array ``labels/<name>``, key ``"distgmm_labels"``)::

    {
        "schema_version": 1,
        "model_fingerprint": "<str>",   # identifies the model that wrote the labels
        "n_components": <int or null>,
        "chunks_done": [0, 1, 5, ...],  # sorted indices of row chunks (of ``points``) written
        "proba": <bool>,                # the label job's: proba/<name> is written too
        "scores": <bool>,               # the label job's: scores/<name> and outliers/<name> too
        # with scores:
        "chunk_scores": {"<i>": [weight, mean, m2, outliers, labelled_at], ...},
        "unreported": [i, ...],         # scored chunks no finished run has reported on yet
        "report": {"at": "<ISO time>", "run": "<id>", "chunks": [i, ...]} or null
    }

``chunk_scores`` holds, per scored chunk, its rows, mean score, centered sum of squared
scores, outlier count and when it was labelled (Unix seconds): mergeable, so the drift of
any set of chunks follows from them (:class:`distgmm._scores.ScoreMoments`). A run records
its chunks into ``unreported`` as they finish; a run that finishes reports on all of them
(``report``) and empties it, so the chunks of a killed run are reported by the next one.
``report`` stays until a later run reports, so a rerun that labels nothing repeats the
last verdict instead of forgetting it.

Rules (shared by :func:`label_state`, :func:`prepare_labels` and the label job):

* The array has ``points``' row chunking, dtype int32 and fill value -1 (unlabelled).
* Chunk ``i`` covers rows ``[i*chunk_rows, min((i+1)*chunk_rows, n_rows))`` of the *current*
  ``points``. It counts as done only if listed in ``chunks_done`` **and** the labels array is
  at least as long as that range. So after an append, the old partial last chunk (which now
  has more rows) and every new chunk are pending without anyone editing the record.
* A different ``model_fingerprint`` means nothing is done for the new model:
  :func:`prepare_labels` resets the record (chunk scores and report included).
* The record is written by one process (the job's client) after chunk writes succeed, in
  the same atomic ``zarr.json`` write as any resize: a crash can lose the record of a chunk
  that was written (it is redone), never record a chunk that was not.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec
from zarr.core.metadata.io import save_metadata
from zarr.core.sync import sync

from distgmm.errors import DistgmmInputError
from distgmm.store._integrity import checksum_codec
from distgmm.store._location import StoreLocation
from distgmm.store._points import _compressors, _label_compressors, open_group_checked

__all__ = ["LABELS_ATTR", "LabelState", "label_state", "label_names", "prepare_labels",
           "prepare_proba", "prepare_scores", "record_chunks_done", "record_report",
           "create_label_array", "write_rows"]

LABELS_ATTR = "distgmm_labels"
LABELS_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class LabelState:
    """Progress of one label set against the current ``points``.

    Attributes
    ----------
    name : str
        Label set name (``labels/<name>``).
    model_fingerprint : str
        Model that wrote it.
    n_components : int or None
        Components of that model, if recorded.
    n_chunks : int
        Row chunks of the current ``points``.
    chunks_done, chunks_pending : list of int
        Chunk indices done (see the module rules) and still to do.
    scores : bool
        Whether the set has scores and outlier flags.
    chunk_scores : dict of int to list of float
        ``[weight, mean, m2, outliers, labelled_at]`` of each done, scored chunk.
    unreported : list of int
        Scored chunks no finished run has reported on.
    report : dict or None
        ``{"at": ISO time, "run": id, "chunks": [...]}`` of the last finished run's report.
    """

    name: str
    model_fingerprint: str
    n_components: int | None
    n_chunks: int
    chunks_done: list[int]
    chunks_pending: list[int]
    scores: bool = False
    chunk_scores: dict[int, list[float]] = field(default_factory=dict, repr=False)
    unreported: list[int] = field(default_factory=list)
    report: dict[str, Any] | None = None

    @property
    def complete(self) -> bool:
        """Whether every chunk of the current points is labelled."""
        return not self.chunks_pending

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (per-chunk scores only counted)."""
        out = {**asdict(self), "complete": self.complete}
        out["chunk_scores"] = len(self.chunk_scores)
        return out


def _group(store: str | StoreLocation | zarr.Group, mode: str = "r") -> zarr.Group:
    if isinstance(store, zarr.Group):
        return store
    location = store if isinstance(store, StoreLocation) else StoreLocation(store)
    return open_group_checked(location, mode=mode)


def label_names(store: str | StoreLocation | zarr.Group) -> list[str]:
    """Names of the label sets in a store (arrays under ``labels/``), sorted."""
    group = _group(store)
    if "labels" not in group:
        return []
    return sorted(name for name, _ in group["labels"].arrays())


def _state_from(name: str, labels: zarr.Array, n_rows: int, chunk_rows: int) -> LabelState:
    record = labels.attrs.get(LABELS_ATTR) or {}
    n_chunks = math.ceil(n_rows / chunk_rows) if n_rows else 0
    covered = labels.shape[0]
    done = sorted(
        i for i in set(record.get("chunks_done", []))
        if 0 <= i < n_chunks and min((i + 1) * chunk_rows, n_rows) <= covered
    )
    done_set = set(done)
    chunk_scores = {int(i): list(v) for i, v in (record.get("chunk_scores") or {}).items()
                    if int(i) in done_set}
    return LabelState(
        name=name,
        model_fingerprint=str(record.get("model_fingerprint", "")),
        n_components=record.get("n_components"),
        n_chunks=n_chunks,
        chunks_done=done,
        chunks_pending=[i for i in range(n_chunks) if i not in done_set],
        scores=bool(record.get("scores", False)),
        chunk_scores=chunk_scores,
        unreported=[int(i) for i in record.get("unreported", [])],
        report=record.get("report"),
    )


def label_state(store: str | StoreLocation | zarr.Group, name: str) -> LabelState:
    """Read which chunks of ``labels/<name>`` are done, against the store's current rows.

    Parameters
    ----------
    store : str, StoreLocation or zarr.Group
        The point store.
    name : str
        Label set name.

    Raises
    ------
    DistgmmInputError
        If the store has no label set of that name.
    """
    group = _group(store)
    path = f"labels/{name}"
    if path not in group:
        raise DistgmmInputError(
            f"{store}: no label set {name!r}; existing: {', '.join(label_names(group)) or 'none'}."
        )
    points = group["points"]
    return _state_from(name, group[path], points.shape[0], points.chunks[0])


def write_rows(arrays: Iterable[tuple[zarr.Array, np.ndarray]], start: int, stop: int) -> None:
    """Write rows ``start:stop`` of several per-row arrays (a chunk's labels, probabilities,
    scores, outlier flags) in one trip through Zarr's event loop: their encodings and
    store writes overlap instead of queueing (about a third of the wall time of three
    local writes; one round trip instead of three on object stores)."""
    async def _all() -> None:
        await asyncio.gather(*(array._async_array.setitem(slice(start, stop), values)
                               for array, values in arrays))
    sync(_all())


def _save(array: zarr.Array, n_rows: int, record: dict[str, Any]) -> None:
    """Save shape and record in one ``zarr.json`` write."""
    aa = array._async_array
    attrs = {**aa.metadata.attributes, LABELS_ATTR: record}
    metadata = aa.metadata.update_shape((n_rows, *aa.metadata.shape[1:])).update_attributes(attrs)
    sync(save_metadata(aa.store_path, metadata))
    object.__setattr__(aa, "metadata", metadata)


def prepare_labels(store: str | StoreLocation | zarr.Group, name: str, model_fingerprint: str,
                   n_components: int | None = None, *, reset: bool = False,
                   extra: dict[str, Any] | None = None, n_rows: int | None = None) -> LabelState:
    """Create or extend ``labels/<name>`` for a model and return what is left to do.

    A new array, or one written by another model, starts with nothing done. An existing
    array for the same model is resized to the row count, keeping the record of chunks
    that were complete (the grown partial chunk is dropped from it) unless ``reset``.
    ``extra`` adds JSON keys to the record (e.g. the label job's ``"proba"`` flag).
    ``n_rows`` is the caller's snapshot of the committed rows (default: read now); a label
    job passes the count it labels, so that an append committing meanwhile cannot make it
    record chunks it never read.
    """
    group = _group(store, mode="r+")
    points = group["points"]
    chunk_rows = points.chunks[0]
    if n_rows is None:
        n_rows = points.shape[0]
    path = f"labels/{name}"
    record = {"schema_version": LABELS_SCHEMA_VERSION, "model_fingerprint": model_fingerprint,
              "n_components": n_components, "chunks_done": [], **(extra or {})}
    if path in group:
        labels = group[path]
        old = _state_from(name, labels, n_rows, chunk_rows)
        if old.model_fingerprint == model_fingerprint and not reset:
            record["chunks_done"] = old.chunks_done
            previous = labels.attrs.get(LABELS_ATTR) or {}
            for key in ("chunk_scores", "unreported", "report"):
                if key in previous:
                    record[key] = previous[key]
    else:
        labels = group.require_group("labels").create_array(
            name, shape=(n_rows,), chunks=(chunk_rows,), dtype="int32", fill_value=-1,
            compressors=_label_compressors(), dimension_names=("row",))
    _save(labels, n_rows, record)
    return _state_from(name, labels, n_rows, chunk_rows)


def record_chunks_done(store: str | StoreLocation | zarr.Group, name: str,
                       chunks: Iterable[int],
                       chunk_scores: dict[int, list[float]] | None = None,
                       report: tuple[str, str] | None = None) -> LabelState:
    """Add chunk indices to the done record of ``labels/<name>`` (call from one process only),
    with their scores' figures if given (then also to ``unreported``), in one write; with
    ``report=(at, run)`` (a run's last chunks) that same write is also
    :func:`record_report`'s."""
    group = _group(store, mode="r+")
    labels = group[f"labels/{name}"]
    record = dict(labels.attrs.get(LABELS_ATTR) or {})
    chunks = {int(c) for c in chunks}
    record["chunks_done"] = sorted(set(record.get("chunks_done", [])) | chunks)
    if chunk_scores:
        record["chunk_scores"] = {**(record.get("chunk_scores") or {}),
                                  **{str(int(i)): list(v) for i, v in chunk_scores.items()}}
        record["unreported"] = sorted(set(record.get("unreported", [])) | set(chunk_scores))
    if report is not None:
        _move_unreported(record, *report)
    _save(labels, labels.shape[0], record)
    points = group["points"]
    return _state_from(name, labels, points.shape[0], points.chunks[0])


def record_report(store: str | StoreLocation | zarr.Group, name: str, at: str,
                  run: str) -> LabelState:
    """A finished run's report: the unreported chunks become ``report`` (by run ``run``, at
    time ``at``) and ``unreported`` is emptied; nothing changes when there were none."""
    group = _group(store, mode="r+")
    labels = group[f"labels/{name}"]
    record = dict(labels.attrs.get(LABELS_ATTR) or {})
    if _move_unreported(record, at, run):
        _save(labels, labels.shape[0], record)
    points = group["points"]
    return _state_from(name, labels, points.shape[0], points.chunks[0])


def _move_unreported(record: dict[str, Any], at: str, run: str) -> bool:
    """Make the record's unreported chunks its ``report``; whether there were any."""
    if not record.get("unreported"):
        return False
    record["report"] = {"at": at, "run": run, "chunks": sorted(record["unreported"])}
    record["unreported"] = []
    return True


def _score_compressors() -> list:
    """Codecs of score arrays: byte-shuffled LZ4 at level 1 (blosc), then the checksum.
    Scores are float32 noise in their low bytes; writing 524,288 of them took 2.6-2.9 ms
    of CPU for 1.58 MB, where the points' zstd level 3 took 5.9 ms for 1.76 MB and no
    compression 2.7 ms for 2.10 MB (``bench/README.md``)."""
    return [BloscCodec(cname="lz4", clevel=1, shuffle="shuffle"), checksum_codec()]


def _flag_compressors() -> list:
    """Codecs of outlier flags (mostly false): bit-shuffled LZ4 at level 1, then the
    checksum: 1.3 ms and 22 KiB per 524,288 flags, against 1.8 ms and 12 KiB with the
    labels' bit-shuffled zstd."""
    return [BloscCodec(cname="lz4", clevel=1, shuffle="bitshuffle"), checksum_codec()]


def prepare_scores(group: zarr.Group, name: str, n_rows: int, chunk_rows: int,
                   fresh: bool) -> None:
    """Create ``scores/<name>`` (N,) float32 (NaN until written) and ``outliers/<name>``
    (N,) bool (false until written), or, unless ``fresh``, resize existing ones to the
    current rows. Chunked like ``points``' rows."""
    arrays = (("scores", "float32", np.nan, _score_compressors()),
              ("outliers", "bool", False, _flag_compressors()))
    for kind, dtype, fill, compressors in arrays:
        path = f"{kind}/{name}"
        if not fresh and path in group:
            group[path].resize((n_rows,))
            continue
        group.require_group(kind).create_array(
            name, shape=(n_rows,), chunks=(chunk_rows,), dtype=dtype, fill_value=fill,
            compressors=compressors, dimension_names=("row",), overwrite=True)


def prepare_proba(group: zarr.Group, name: str, n_rows: int, chunk_rows: int, n_components: int,
                  fresh: bool) -> None:
    """Create ``proba/<name>`` (N, K) float32 (NaN until written), or, unless ``fresh``,
    resize an existing one of K columns to the current rows."""
    path = f"proba/{name}"
    if not fresh and path in group and group[path].shape[1] == n_components:
        group[path].resize((n_rows, n_components))
        return
    group.require_group("proba").create_array(
        name, shape=(n_rows, n_components), chunks=(chunk_rows, n_components), dtype="float32",
        fill_value=np.nan, compressors=_compressors(), dimension_names=("row", "component"),
        overwrite=True)


def create_label_array(location: StoreLocation, n_rows: int, chunk_rows: int) -> zarr.Array:
    """A new standalone labels array at ``location``: (N,) int32, fill value -1 (unlabelled),
    chunks of ``chunk_rows`` rows, the label sets' codecs."""
    return zarr.create_array(location.zarr_store(read_only=False), shape=(n_rows,),
                             chunks=(chunk_rows,), dtype="int32", fill_value=-1,
                             compressors=_label_compressors(), dimension_names=("row",))
