"""The one map-reduce over row chunks that every pass over the data goes through.

A pass applies a chunk function ``fn(block, weights, index, *args)`` to every row chunk
(``weights`` is the chunk's per-point weights or None, ``index`` its position) and merges
the values with ``merge``, a function of a list of values in chunk order. The merge runs in
one tree of fixed shape (:func:`merge_tree`: groups of :data:`TREE_WIDTH` consecutive
values, level after level), so a pass gives the same bits whatever runs it, however many
workers there are and whatever order they finish in.

Two kinds of points run passes, behind the same methods (``map_reduce``, ``map_chunks``,
``take_rows``, ``ensure_summary``):

:class:`LocalPoints`
    NumPy chunks in this process, evaluated by a pool of threads (the compiled kernels
    release the GIL).
:class:`ClusterPoints`
    A dask array on a cluster, with two runners chosen in one place
    (:meth:`ClusterPoints._in_place_possible`):

    *graph*: one task per chunk and the merge tree's tasks, in one graph written
    directly (no ``delayed`` calls: microseconds per chunk instead of about a
    millisecond); the top level, at most :data:`TREE_WIDTH` values, is merged here.

    *in place*: for persisted chunks, one ``Client.run`` call in which every worker
    applies the function to the chunks it holds, on its task threads; the values come
    back here and are merged in the same tree. It skips the scheduler's task machinery
    (its batched messages, per-task bookkeeping, the gather). A chunk that moved or a
    worker that left sends that pass through the graph, which fetches or recomputes what
    it needs; a chunk lost from every worker sends every later pass there too.

Before a fit's first pass, :meth:`Points.prepare_kernels` makes sure the compiled kernels
are there (see :func:`distgmm._fused.missing_kernels`): on a cluster every worker says
which specializations numba's cache lacks, one line (a warning, so that it shows at the
command line's normal verbosity) says that they are being compiled and about how long it
takes, and the workers of each machine share the compilation out (numba compiles one
kernel at a time per process; they then load each other's work from the shared cache).
In this process, the line only: what a fit needs compiles as it is first called (so
also for the kernels the client itself calls, the ``kmeans`` start's sample k-means, when
the workers' cache is not on the client's machine).

The first pass over any points also computes the validation summary
(:class:`~distgmm._statistics.DataSummary`: non-finite rows, bad weights, per-feature
moments) in the same sweep, so validating costs no extra read of the data, and a chunk
that fails validation is never given to the pass's function.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
import uuid
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields, is_dataclass
from typing import Any, Callable

import dask
import dask.array as da
import numpy as np
from distributed import as_completed, futures_of

from distgmm._fused import compile_kernels, describe_kernels, kernel_calls, missing_kernels
from distgmm._statistics import DataSummary, chunk_summary, merge_statistics

__all__ = ["Pass", "Points", "LocalPoints", "ClusterPoints", "merge_tree", "merge_values",
           "TREE_WIDTH"]

logger = logging.getLogger(__name__)

#: Values merged by one node of the merge tree. The tree's shape depends only on the number
#: of chunks; eight keeps the graph shallow (three levels for 512 chunks) and each merge small.
TREE_WIDTH = 8
#: A pass's function and arguments travel inside every chunk task while their arrays take
#: at most this many bytes for all chunks together; larger ones become one task the chunk
#: tasks depend on (a transfer and a round trip per worker, about 6 ms on a local cluster).
INLINE_PAYLOAD_BYTES = 16 << 20
#: In-place passes bring every chunk's value to this process. Always for at most this many
#: chunks; beyond, while the values (weighed on the function's previous pass) take at most
#: :data:`IN_PLACE_MAX_BYTES` in all. Graph passes cost per task, not only per pass, so
#: passes over many chunks gain most from running in place (``bench/README.md``).
IN_PLACE_MAX_CHUNKS = 64
IN_PLACE_MAX_BYTES = 32 << 20


class Pass:
    """A chunk function with its arguments, and the merge of its values.

    Kept as one opaque object in task graphs: Dask scans tuples and lists in a graph for
    keys and tasks, and arguments such as random-stream keys ``(0, 1, 2)`` or lists of
    parameters must reach the function untouched.
    """

    __slots__ = ("fn", "args", "merge", "kind")

    def __init__(self, fn: Callable, args: tuple = (), merge: Callable[[list], Any] | None = None,
                 kind: Callable | None = None):
        self.fn, self.args, self.merge = fn, args, merge
        self.kind = kind or fn  # what the size of its values is remembered by

    def __call__(self, block, weights, index: int) -> Any:
        return self.fn(block, weights, index, *self.args)

    @property
    def name(self) -> str:
        return self.kind.__name__.lstrip("_").replace("_", "-")


def merge_tree(items: list, combine: Callable[[list], Any], width: int = TREE_WIDTH) -> list:
    """Combine ``items`` in consecutive groups of ``width``, level after level, until at most
    ``width`` remain, and return those: the merge tree's top level. ``combine`` merges
    values here, or adds a merge task to a graph on a cluster; the tree is the same."""
    while len(items) > width:
        items = [combine(items[i:i + width]) for i in range(0, len(items), width)]
    return items


def merge_values(values: list, merge: Callable[[list], Any]) -> Any:
    """The whole merge tree over per-chunk ``values`` (or over its top level)."""
    top = merge_tree(values, merge)
    return top[0] if len(top) == 1 else merge(top)


def _summary_task(block, weights, index):
    return chunk_summary(block, weights)


def _chunk_and_summary(block, weights, index, inner: Pass):
    """A chunk's value under ``inner`` and its validation summary; the value is None when
    the chunk fails validation (the summary then raises before the value is used)."""
    summary = chunk_summary(block, weights)
    if summary.n_nonfinite_rows or summary.n_nonfinite_weights or summary.n_negative_weights:
        return None, summary
    return inner(block, weights, index), summary


def _merge_with_summary(merge: Callable[[list], Any], parts: list[tuple]) -> tuple:
    values = [p[0] for p in parts]
    merged = None if any(v is None for v in values) else merge(values)
    return merged, merge_statistics([p[1] for p in parts])


def _with_summary(inner: Pass) -> Pass:
    return Pass(_chunk_and_summary, (inner,), functools.partial(_merge_with_summary, inner.merge),
                kind=inner.kind)


def _array_bytes(value: Any) -> int:
    """Bytes of the NumPy arrays in ``value`` (nested lists, tuples and dataclasses such as
    :class:`MixtureParams`): what a pass's arguments, or one chunk's value, weigh."""
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, (list, tuple)):
        return sum(_array_bytes(v) for v in value)
    if isinstance(value, Pass):
        return _array_bytes(value.args)
    if is_dataclass(value):
        return sum(_array_bytes(getattr(value, f.name)) for f in fields(value))
    return 0


def _take_task(block, weights, index, rows_by_chunk: dict):
    return np.asarray(block[rows_by_chunk[index]], dtype=np.float64)


class Points:
    """Points (and optional per-point weights) as row chunks, with the passes over them.

    Attributes
    ----------
    n_rows, n_features : int
    dtype : numpy.dtype
        Of the points as stored (the passes accumulate in float64 whatever it is).
    row_chunks : tuple of int
        Rows per chunk.
    weighted : bool
        Whether per-point weights are given.
    summary : DataSummary or None
        The validation summary, from the first pass on.
    """

    n_rows: int
    n_features: int
    dtype: np.dtype
    row_chunks: tuple[int, ...]
    weighted: bool
    summary: DataSummary | None = None

    @property
    def n_chunks(self) -> int:
        return len(self.row_chunks)

    def map_reduce(self, chunk_fn: Callable, *args: Any,
                   merge: Callable[[list], Any] = merge_statistics) -> Any:
        """``merge`` of ``chunk_fn(block, weights, index, *args)`` over all chunks, in the
        fixed tree. The first pass also validates the data (see the module docstring)."""
        pass_ = Pass(chunk_fn, args, merge)
        if self.summary is not None:
            return self._reduce(pass_)
        value, self.summary = self._reduce(_with_summary(pass_))
        self.validate_summary()
        return value

    def map_chunks(self, chunk_fn: Callable, *args: Any, chunks: list[int] | None = None,
                   on_value: Callable[[int, Any], None] | None = None) -> list:
        """``chunk_fn(block, weights, index, *args)`` of each chunk in ``chunks`` (default all),
        in that order, without merging or validating: for passes that write their results
        (labels) or gather a few rows. ``on_value(index, value)`` is called as each chunk
        finishes, in any order."""
        return self._map(Pass(chunk_fn, args), list(range(self.n_chunks)) if chunks is None
                         else list(chunks), on_value)

    def ensure_summary(self) -> DataSummary:
        """Compute the validation summary if no pass has done so yet."""
        if self.summary is None:
            self.summary = self._reduce(Pass(_summary_task, (), merge_statistics))
            self.validate_summary()
        return self.summary

    def validate_summary(self) -> None:
        s = self.summary
        if s.n_nonfinite_rows:
            raise ValueError(
                f"X contains NaN or infinite values in {s.n_nonfinite_rows} of {s.n_rows} rows; "
                "drop or impute them before fitting (distgmm ingest --drop-nonfinite skips them)."
            )
        if s.n_nonfinite_weights:
            raise ValueError(
                f"sample_weight contains {s.n_nonfinite_weights} NaN or infinite values; "
                "pass finite weights."
            )
        if s.n_negative_weights:
            raise ValueError(
                f"sample_weight contains {s.n_negative_weights} negative values; "
                "weights must be >= 0."
            )
        if not s.weight_sum > 0:
            raise ValueError(
                "sample_weight sums to zero; give at least one point a positive weight."
            )

    def take_rows(self, indices: np.ndarray) -> np.ndarray:
        """Rows at the given global indices, as float64 (one small task per chunk concerned,
        not a pass over the data)."""
        indices = np.asarray(indices, dtype=np.int64)
        bounds = np.cumsum((0,) + tuple(self.row_chunks))
        chunk_of = np.searchsorted(bounds, indices, side="right") - 1
        chunks = [int(c) for c in np.unique(chunk_of)]
        where = {c: np.flatnonzero(chunk_of == c) for c in chunks}
        rows = {c: indices[where[c]] - bounds[c] for c in chunks}
        out = np.empty((len(indices), self.n_features))
        for c, values in zip(chunks, self.map_chunks(_take_task, rows, chunks=chunks)):
            out[where[c]] = values
        return out

    def prepare_kernels(self, indices: list[int]) -> None:
        """Say so, and share the work out where possible, when the compiled kernels at
        ``indices`` of :func:`~distgmm._fused.kernel_calls` are not in numba's cache yet
        (see the module docstring)."""

    def _reduce(self, pass_: Pass) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def _map(self, pass_: Pass, chunks: list[int],
             on_value: Callable[[int, Any], None] | None) -> list:  # pragma: no cover
        raise NotImplementedError


class LocalPoints(Points):
    """Points held in this process as NumPy row chunks: the passes without a cluster.

    The same chunk functions and merge tree as :class:`ClusterPoints`, so a fit here gives
    the same bits as on a cluster with the same chunking.

    Parameters
    ----------
    points : ndarray of shape (N, D)
    sample_weight : ndarray of shape (N,) or None
    chunk_rows : int
        Rows per chunk (the last may be shorter).
    threads : int, optional
        Threads evaluating chunks; default the number of cores.
    """

    def __init__(self, points: np.ndarray, sample_weight: np.ndarray | None, chunk_rows: int,
                 threads: int | None = None):
        self.points = points
        self.sample_weight = sample_weight
        self.n_rows, self.n_features = points.shape
        self.dtype = points.dtype
        starts = range(0, self.n_rows, chunk_rows)
        self._blocks = [points[a:a + chunk_rows] for a in starts]
        self._weights = [None if sample_weight is None else sample_weight[a:a + chunk_rows]
                         for a in starts]
        self.row_chunks = tuple(len(b) for b in self._blocks)
        self.weighted = sample_weight is not None
        self.summary = None
        self._threads = min(threads or os.cpu_count() or 1, self.n_chunks)

    def _map(self, pass_: Pass, chunks: list[int],
             on_value: Callable[[int, Any], None] | None = None) -> list:
        def one(i: int) -> Any:
            value = pass_(self._blocks[i], self._weights[i], i)
            if on_value is not None:
                on_value(i, value)
            return value

        if self._threads > 1 and len(chunks) > 1:
            with ThreadPoolExecutor(self._threads) as pool:
                return list(pool.map(one, chunks))
        return [one(i) for i in chunks]

    def _reduce(self, pass_: Pass) -> Any:
        return merge_values(self._map(pass_, list(range(self.n_chunks))), pass_.merge)

    def prepare_kernels(self, indices: list[int]) -> None:
        _announce_here(indices)

    def take_rows(self, indices: np.ndarray) -> np.ndarray:
        """Rows at the given global indices, as float64."""
        return np.asarray(self.points[np.asarray(indices, dtype=np.int64)], dtype=np.float64)


def _chunk_graph(array: da.Array) -> tuple[dict, list]:
    """The graph and the row-chunk keys through which the passes read ``array``.

    For a persisted array, the graph of its futures (the chunks stay where they are).
    Otherwise an optimised graph whose chunk tasks have keys of their own (an identity
    task fused into the read): dask's optimiser may give a key such as ``from-zarr-...``
    a different task in each computation that uses it, which the scheduler warns can
    deadlock, so the passes never share chunk keys with other computations.
    """
    keys = [k[0] if isinstance(k, list) else k for k in array.__dask_keys__()]
    held = {f.key for f in futures_of(array)}
    if all(k in held for k in keys):
        return dict(array.__dask_graph__()), keys
    renamed = array.map_blocks(_identity, name=f"distgmm-chunks-{uuid.uuid4().hex}",
                               dtype=array.dtype, meta=array._meta)
    (optimised,) = dask.optimize(renamed)
    keys = [k[0] if isinstance(k, list) else k for k in optimised.__dask_keys__()]
    return dict(optimised.__dask_graph__()), keys


def _identity(block):
    return block


def _run_pass(pass_: Pass, block, weights, index: int):
    return pass_(block, weights, index)


def _chunk_from(data, pass_: Pass, item: tuple):
    block_key, weight_key, index = item
    weights = None if weight_key is None else data[weight_key]
    return pass_(data[block_key], weights, index)


#: Seconds a failed graph pass waits for its chunk functions still running on the workers.
STOP_WAIT_SECONDS = 60
#: Worker task states in which a task's function runs or may still start (until the
#: cancellation reaches the worker).
_RUNNING_STATES = frozenset({"waiting", "ready", "constrained", "executing", "long-running",
                             "cancelled", "resumed"})


def _running(keys: list, dask_worker=None) -> int:
    """Run by ``Client.run``: how many of ``keys`` this worker runs or may still start."""
    tasks = dask_worker.state.tasks
    return sum(1 for k in keys if k in tasks and tasks[k].state in _RUNNING_STATES)


def _wait_until_stopped(client: Any, keys: list) -> None:
    """Wait (at most :data:`STOP_WAIT_SECONDS`) until no worker runs any of ``keys``;
    give up quietly when the cluster cannot be asked (the failure being reported)."""
    deadline = time.monotonic() + STOP_WAIT_SECONDS
    try:
        while time.monotonic() < deadline:
            if not any(client.run(_running, keys).values()):
                return
            time.sleep(0.05)
    except Exception:  # noqa: BLE001 - the original error is the one to report
        logger.debug("could not ask the workers whether the failed pass stopped", exc_info=True)


async def _in_place_on_worker(pass_: Pass, plan: dict, dask_worker=None):
    """Run by ``Client.run`` on each worker: the pass over the chunks ``plan`` lists for
    this worker, read from its own memory (spilled chunks are read back as for a task),
    on its task threads (one chunk per thread at a time, as tasks would run); ``None``
    when one of them is not there (moved, released or recomputed elsewhere since the
    client asked where the chunks are). A chunk whose function fails is reported only once
    every chunk of this worker has finished, so that nothing of the pass still runs (and
    writes) when the caller learns of the failure."""
    loop = asyncio.get_running_loop()
    executor = dask_worker.executors["default"]
    values = await asyncio.gather(*[
        loop.run_in_executor(executor, _chunk_from, dask_worker.data, pass_, item)
        for item in plan[dask_worker.address]], return_exceptions=True)
    if any(isinstance(v, KeyError) for v in values):
        return None
    for value in values:
        if isinstance(value, BaseException):
            raise value
    return values


def _compile_plan(missing: dict[str, list[int]], hosts: dict[str, str],
                  calls: list) -> dict[str, list[int]]:
    """Which worker compiles which of the kernels missing on its machine: each machine's
    missing kernels in :func:`~distgmm._fused.kernel_calls` order (kernels of one dtype
    together, as they share callees), cut into consecutive runs of about equal estimated
    seconds, one per worker of that machine that lacks kernels."""
    plan: dict[str, list[int]] = {}
    by_host: dict[str, list[str]] = {}
    for address in sorted(missing):
        if missing[address]:
            by_host.setdefault(hosts.get(address, address), []).append(address)
    for workers in by_host.values():
        todo = sorted({i for w in workers for i in missing[w]})
        total = sum(calls[i].seconds for i in todo)
        done = 0.0
        for i in todo:
            share = min(int(done * len(workers) / total), len(workers) - 1) if total else 0
            plan.setdefault(workers[share], []).append(i)
            done += calls[i].seconds
    return plan


async def _compile_on_worker(plan: dict, dask_worker=None) -> None:
    """Run by ``Client.run``: compile this worker's share of ``plan`` on one of its
    threads (the event loop keeps answering the scheduler meanwhile)."""
    indices = plan.get(dask_worker.address)
    if indices:
        await asyncio.get_running_loop().run_in_executor(None, compile_kernels, indices)


#: (worker, kernel) pairs known to be compiled, per client (a client asks a worker once).
_prepared: "weakref.WeakKeyDictionary[Any, set[tuple[str, int]]]" = weakref.WeakKeyDictionary()
#: Indices of :func:`~distgmm._fused.kernel_calls` checked in this process (LocalPoints).
_checked_here: set[int] = set()
#: The line said while kernels compile: which, and the estimated wall time.
_COMPILING = "compiling kernels (%s; first run on this machine only, about %.0f s)"


def _announce_here(indices: list[int]) -> None:
    """Say so when kernels at ``indices`` that this process calls are not compiled yet (they
    compile when first called). Checked once per process: after the first fit they are
    loaded (or were said to compile), and reading numba's cache index again cost a fit of
    iris 1.4 ms."""
    indices = [i for i in indices if i not in _checked_here]
    if not indices:
        return
    _checked_here.update(indices)
    calls = kernel_calls()
    missing = missing_kernels(indices)
    if missing:
        logger.warning(_COMPILING, describe_kernels(missing),
                       sum(calls[i].seconds for i in missing))


class ClusterPoints(Points):
    """Points as the row chunks of a dask array on a cluster.

    Parameters
    ----------
    points : dask.array.Array of shape (N, D)
        Chunked along rows only.
    sample_weight : dask.array.Array of shape (N,), optional
        Chunked like ``points`` rows.
    client : distributed.Client
    """

    def __init__(self, points: da.Array, sample_weight: da.Array | None, client):
        if points.ndim != 2 or points.numblocks[1] != 1:
            raise ValueError(f"points must be 2-D and chunked by rows only; got chunks "
                             f"{points.chunks}: rechunk with X.rechunk({{1: -1}}).")
        self.points = points
        self.sample_weight = sample_weight
        self.client = client
        self.n_rows, self.n_features = points.shape
        self.dtype = points.dtype
        self.row_chunks = points.chunks[0]
        self.weighted = sample_weight is not None
        self.summary = None
        # Persisted data (scattered NumPy, persisted dask arrays) whose keys must outlive
        # the passes: the workers drop chunks nobody holds.
        self.keepalive: list = []
        # The chunks' graph, materialised once: keys of persisted chunks map to their
        # futures; chunks read from a store get read tasks under keys of their own.
        self._graph, self._block_keys = _chunk_graph(points)
        self._futures = futures_of(points)
        if sample_weight is not None:
            weights_graph, self._weight_keys = _chunk_graph(sample_weight)
            self._graph.update(weights_graph)
            self._futures += futures_of(sample_weight)
        else:
            self._weight_keys = [None] * len(self._block_keys)
        self._future_of = {f.key: f for f in self._futures}
        self._held: list = []
        # {worker: [(block key, weight key, chunk index)]} of the last in-place pass: {}
        # until one places the chunks, None when every pass goes through the graph.
        held = {f.key for f in self._futures}
        persisted = all(k in held for k in self._block_keys + self._weight_keys
                        if k is not None)
        self._plan: dict | None = {} if persisted else None
        # Bytes of one chunk's value, per kind of pass, from its last run.
        self._value_bytes: dict[Callable, int] = {}

    def prepare_kernels(self, indices: list[int]) -> None:
        client = self.client
        done = _prepared.setdefault(client, set())
        workers = client.scheduler_info()["workers"]
        todo = [a for a in workers if any((a, i) not in done for i in indices)]
        calls = kernel_calls()
        if todo:
            missing = client.run(missing_kernels, indices, workers=todo)
            plan = _compile_plan(missing, {a: w.get("host", a) for a, w in workers.items()},
                                 calls)
            if plan:
                logger.warning(_COMPILING, describe_kernels(
                    sorted({i for part in plan.values() for i in part})),
                    max(sum(calls[i].seconds for i in part) for part in plan.values()))
                client.run(_compile_on_worker, plan, workers=list(plan))
            done.update((a, i) for a in todo for i in indices)
        # Kernels this process calls: on the workers' machine, loaded from the cache they
        # just filled; elsewhere, said to compile here.
        _announce_here([i for i in indices if calls[i].on_client])

    @property
    def in_place(self) -> bool:
        """Whether the last pass ran in place on the workers."""
        return bool(self._plan)

    def _reduce(self, pass_: Pass) -> Any:
        everything = list(range(self.n_chunks))
        if self._in_place_possible(pass_):
            values = self._in_place(pass_, everything)
            if values is not None:
                return self._weighed(pass_, merge_values(values, pass_.merge))
        layer: dict = {}
        tops = merge_tree(self._chunk_tasks(layer, pass_, everything),
                          functools.partial(self._merge_task, layer, pass_))
        return self._weighed(pass_, merge_values(self._compute(layer, tops), pass_.merge))

    def _map(self, pass_: Pass, chunks: list[int],
             on_value: Callable[[int, Any], None] | None = None) -> list:
        if self._in_place_possible(pass_):
            values = self._in_place(pass_, chunks)
            if values is not None:
                for i, value in zip(chunks, values) if on_value is not None else ():
                    on_value(i, value)
                return values
        layer: dict = {}
        keys = self._chunk_tasks(layer, pass_, chunks)
        futures = self.client.get({**self._graph, **layer}, keys, sync=False)
        index_of = {f.key: i for f, i in zip(futures, chunks)}
        values: dict[int, Any] = {}
        try:
            for future in as_completed(futures, loop=self.client.loop):
                values[index_of[future.key]] = value = future.result()
                if on_value is not None:
                    on_value(index_of[future.key], value)
        except BaseException:
            # As the in-place runner: report a failure only once no chunk function of this
            # pass still runs, so that a caller removing what the pass wrote (a label set
            # being written) does not race a worker still writing into it.
            self.client.cancel([f for f in futures if not f.done()])
            _wait_until_stopped(self.client, list(index_of))
            raise
        return [values[i] for i in chunks]

    # ------------------------------------------------------------------ runner choice
    def _in_place_possible(self, pass_: Pass) -> bool:
        """Whether ``pass_`` may run in place: persisted chunks none of which was lost, and
        values small enough to bring every chunk's here."""
        if self._plan is None:
            return False
        if self.n_chunks <= IN_PLACE_MAX_CHUNKS:
            return True
        size = self._value_bytes.get(pass_.kind)
        return size is not None and size * self.n_chunks <= IN_PLACE_MAX_BYTES

    def _weighed(self, pass_: Pass, result: Any) -> Any:
        """``result``, after noting its bytes as the size of one chunk's value of this kind
        of pass (merges keep the size: statistics of the same models)."""
        self._value_bytes[pass_.kind] = _array_bytes(result)
        return result

    # ------------------------------------------------------------------ in place
    def _place(self) -> bool | None:
        """Which worker reads which chunks in the next in-place pass. False when a chunk is
        still being computed or its points and weights are on different workers (a graph
        pass waits for it, or brings them together), None when a chunk was lost."""
        who_has = self.client.who_has(self._futures)
        plan: dict[str, list] = {}
        for i, (b, w) in enumerate(zip(self._block_keys, self._weight_keys)):
            holders = set(who_has.get(b, ()))
            if not holders or (w is not None and not who_has.get(w)):
                computing = any(self._future_of[k].status == "pending"
                                for k in (b, w) if k is not None)
                return False if computing else None
            if w is not None:
                holders &= set(who_has[w])
            if not holders:
                return False
            plan.setdefault(min(holders), []).append((b, w, i))
        self._plan = plan
        return True

    def _in_place(self, pass_: Pass, chunks: list[int]) -> list | None:
        """The values of ``chunks`` from one ``Client.run`` call that each worker answers
        with the values of the chunks it holds; None when a chunk has moved, a chunk's
        points and weights are apart, or a worker or the scheduler cannot be reached (the
        caller then runs the graph). Every call first asks the scheduler where the chunks
        are (one small round trip), so chunks moved by a retiring worker or a rebalance are
        read where they now are. Exceptions raised by the pass's function propagate as
        from a graph."""
        try:
            placed = self._place()
            if not placed:
                if placed is None:
                    self._plan = None
                return None
            wanted = set(chunks)
            plan = {worker: [item for item in items if item[2] in wanted]
                    for worker, items in self._plan.items()}
            plan = {worker: items for worker, items in plan.items() if items}
            answers = self.client.run(_in_place_on_worker, pass_, plan, workers=list(plan),
                                      on_error="return")
        except OSError:
            # The scheduler did not answer. The graph waits for it to come back, or for the
            # client to give up on it, and fails as any job does when its scheduler is lost.
            return None
        values: dict[int, Any] = {}
        for address, items in plan.items():
            part = answers.get(address)
            if isinstance(part, Exception) and not isinstance(part, OSError):
                raise part
            if part is None or isinstance(part, Exception):  # moved, or the worker is gone
                logger.info("chunks moved or a worker left; this pass goes through the "
                            "scheduler")
                return None
            for (_, _, i), value in zip(items, part):
                values[i] = value
        return [values[i] for i in chunks]

    # ------------------------------------------------------------------ graph
    def _chunk_tasks(self, layer: dict, pass_: Pass, chunks) -> list:
        """Add one task per chunk in ``chunks`` to ``layer``; return their keys.

        The pass travels inside each chunk task when small: as a task of its own, the chunk
        tasks could start only after it had run on one worker and been fetched by the
        others."""
        token = uuid.uuid4().hex
        payload: Any = pass_
        if _array_bytes(pass_) * self.n_chunks > INLINE_PAYLOAD_BYTES:
            layer[f"payload-{token}"] = pass_
            payload = f"payload-{token}"
        keys = []
        for i in chunks:
            key = (f"{pass_.name}-{token}", i)
            layer[key] = (_run_pass, payload, self._block_keys[i], self._weight_keys[i], i)
            keys.append(key)
        return keys

    def _merge_task(self, layer: dict, pass_: Pass, group: list) -> tuple:
        """Add a merge task over ``group`` (keys of one tree level) and return its key."""
        key = (f"merge-{pass_.name}-{uuid.uuid4().hex[:16]}", 0)
        layer[key] = (pass_.merge, group)
        return key

    def _compute(self, layer: dict, keys: list) -> list:
        futures = self.client.get({**self._graph, **layer}, keys, sync=False)
        # The previous pass's futures are released only now, after this graph is sent:
        # the client batches its messages to the scheduler at most every 10 ms, so a
        # release sent just before would hold the next graph back by up to 10 ms.
        self._held = futures
        return self.client.gather(futures)
