"""EM on Dask: one pass over the chunks per iteration, statistics merged in chunk order, restarts and checkpoints.

The data is a dask array chunked along rows only. Every iteration is one graph: the current
parameters travel with the chunk tasks (or, when large, as one key they share), every chunk
becomes a
:class:`~distgmm._statistics.SufficientStatistics`, and the statistics are merged in a tree of
fixed shape in chunk-index order, so the result is bit-for-bit the same whatever the number
of workers or the order in which tasks finish. The M-step runs on the client on the merged
value (K x D x D numbers), so client memory does not grow with the number of points.

Initialisation never pulls the data to the client:

``kmeans``
    k-means++ seeding by exact D^2 sampling (one pass per center) then distributed Lloyd
    iterations, then one pass of hard-assignment statistics; scikit-learn's default.
``k-means||``
    Bahmani et al. (2012) parallel seeding: 5 rounds, each one pass that samples about
    2K candidates, a pass weighting the candidates, weighted k-means++ on the client, then
    Lloyd iterations as for ``kmeans``. Use it for large K: its pass count does not grow with K.
``k-means++``
    the k-means++ seeds themselves become the means, with covariance ``reg_covar`` (as
    scikit-learn does).
``random``
    random responsibilities drawn per chunk, then one statistics pass.
``random_from_data``
    K distinct rows chosen uniformly, as means.

Random streams come from ``numpy.random.SeedSequence`` with a spawn key made of
(restart, purpose, round, chunk index), never from task order. Weights after initialisation
are normalised to sum to one (scikit-learn leaves them at ``n_k / n`` for the first
iteration of the ``random_from_data`` and ``k-means++`` methods).

Persisted data takes a shorter road once validated: each pass is one ``Client.run`` call in
which every worker computes the chunks it already holds, on its task threads, and the client
merges the per-chunk values in the same tree (see :meth:`ChunkedPoints._direct_pass`). That
skips the scheduler's task machinery (at (1e6, 8, 8) about 24 of 72 ms per iteration). When a
chunk has moved or a worker is gone, that pass goes through the scheduler as a graph, which
fetches or recomputes what it needs, and the next one looks again where the chunks are.
Beyond 64 chunks a pass runs in place only while all the chunks' values (weighed on the
previous pass of the same function) fit in ``_DIRECT_MAX_BYTES``, since they all travel to
the client. Workers started by ``dask worker`` log one INFO line ("Run out-of-band function") per direct
pass; a ``LocalCluster`` logs warnings only.

Input validation that needs the data (non-finite values, negative weights) is a summary
reduction computed in the *same* graph as the first pass, so it costs no extra read.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import math
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Callable

import dask
import dask.array as da
import numpy as np
from distributed import futures_of
from threadpoolctl import threadpool_limits

from ._kernels import nearest_center
from ._serialize import load_arrays, save_arrays
from ._statistics import (
    DataSummary,
    MixtureParams,
    SufficientStatistics,
    chunk_statistics,
    chunk_statistics_from_resp,
    chunk_summary,
    hard_assignment_statistics,
    m_step,
    merge_statistics,
)

__all__ = [
    "EMConfig",
    "FileCheckpoint",
    "fit_many",
    "score_many",
    "EMResult",
    "IterationInfo",
    "ChunkedPoints",
    "LocalPoints",
    "fit_em",
    "seed_sequence",
    "INIT_METHODS",
]

logger = logging.getLogger(__name__)

INIT_METHODS = ("kmeans", "k-means||", "k-means++", "random", "random_from_data")

_TREE_WIDTH = 8
# A pass's function and arguments travel inside every chunk task while their arrays take at
# most this many bytes in all; larger ones become one task the chunk tasks depend on.
_INLINE_PAYLOAD_BYTES = 16 << 20
# Direct passes (Client.run) over persisted data: every chunk's value travels to the client
# (the merge tree is fixed, so the bits do not depend on where chunks are). Always for at
# most this many chunks; beyond, while the chunks' values, weighed on the function's
# previous pass, take at most _DIRECT_MAX_BYTES in all. Graph passes cost per task, not
# only per pass: at 1.6e7 rows in 122 chunks, (8, 8) full, they took 1.14 s per iteration
# against 0.82 s expected from 4e6 rows in place.
_DIRECT_MAX_CHUNKS = 64
_DIRECT_MAX_BYTES = 32 << 20
_KMEANS_PARALLEL_ROUNDS = 5
_KMEANS_MAX_ITER = 300
_KMEANS_TOL = 1e-4

# Purposes in random-stream spawn keys.
_P_FIRST, _P_KPP, _P_KPAR, _P_RANDOM, _P_FROM_DATA = range(5)


def _single_threaded_blas(fn: Callable) -> Callable:
    """Run ``fn`` with one BLAS thread in this (the client's) process.

    The client only does K x D x D arithmetic (M-steps, seeding) between passes, and an
    idle OpenBLAS pool spins for a while after each call: on a 2-core machine those spinning
    threads took about 100 ms of CPU per iteration from the workers (0.21 -> 0.16 s per
    iteration at (1e6, 8, 8) full once the pool was limited to one thread).
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with threadpool_limits(limits=1, user_api="blas"):
            return fn(*args, **kwargs)

    return wrapper


def seed_sequence(random_state: Any) -> np.random.SeedSequence:
    """Turn a scikit-learn style ``random_state`` into a ``SeedSequence``.

    ``None`` draws fresh entropy; an int is used as entropy; a ``RandomState`` or
    ``Generator`` contributes one draw.
    """
    if random_state is None:
        return np.random.SeedSequence()
    if isinstance(random_state, np.random.SeedSequence):
        return random_state
    if isinstance(random_state, (int, np.integer)):
        if random_state < 0:
            raise ValueError(f"random_state must be non-negative, got {random_state}.")
        return np.random.SeedSequence(int(random_state))
    if isinstance(random_state, np.random.RandomState):
        return np.random.SeedSequence(int(random_state.randint(np.iinfo(np.int32).max)))
    if isinstance(random_state, np.random.Generator):
        return np.random.SeedSequence(int(random_state.integers(2**63)))
    raise ValueError(
        f"random_state must be None, an int, a RandomState or a Generator; got "
        f"{type(random_state).__name__}."
    )


def _rng(root: np.random.SeedSequence, *keys: int) -> np.random.Generator:
    seq = np.random.SeedSequence(root.entropy, spawn_key=tuple(root.spawn_key) + keys)
    return np.random.default_rng(seq)


# ---------------------------------------------------------------------------- data access
def _sum_tuples(parts: list[tuple]) -> tuple:
    return tuple(_ordered_sum([p[i] for p in parts]) for i in range(len(parts[0])))


def _ordered_sum(values: list) -> Any:
    total = values[0]
    for v in values[1:]:
        total = total + v
    return total


_MISSING = object()


class _Payload:
    """A chunk function and its arguments, as one opaque value in a task graph.

    Graph values that are tuples or lists are scanned by Dask for keys and tasks; seed keys
    such as ``(0, 1, 2)`` or lists of parameters must reach the function untouched.
    """

    __slots__ = ("fn", "args")

    def __init__(self, fn: Callable, args: tuple):
        self.fn, self.args = fn, args


def _run_chunk(payload: _Payload, block, weights, index: int):
    return payload.fn(block, weights, index, *payload.args)


def _chunk_graph(array: da.Array) -> tuple[dict, list]:
    """The graph and the row-chunk keys through which the passes read ``array``.

    For a persisted array, the graph of its futures (the chunks stay where they are).
    Otherwise an optimised graph whose chunk tasks have keys of their own (an identity
    task fused into the read): dask's optimiser may give a key such as ``from-zarr-…``
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


def _merge_top(parts: list, merge: Callable[[list], Any]) -> Any:
    return parts[0] if len(parts) == 1 else merge(parts)


def _array_bytes(value: Any) -> int:
    """Bytes of the NumPy arrays in ``value`` (nested lists, tuples and dataclasses such as
    :class:`MixtureParams`): what a pass's arguments weigh in a task."""
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, (list, tuple)):
        return sum(_array_bytes(v) for v in value)
    if is_dataclass(value):
        return sum(_array_bytes(getattr(value, f.name)) for f in fields(value))
    return 0


def _tree_merge(values: list, merge: Callable[[list], Any]) -> Any:
    """``merge`` over per-chunk values in the tree of :meth:`ChunkedPoints._add_pass`."""
    while len(values) > _TREE_WIDTH:
        values = [merge(values[i:i + _TREE_WIDTH]) for i in range(0, len(values), _TREE_WIDTH)]
    return _merge_top(values, merge)


def _chunk_from(data, payload: _Payload, item: tuple):
    block_key, weight_key, index = item
    weights = None if weight_key is None else data[weight_key]
    return _run_chunk(payload, data[block_key], weights, index)


async def _direct_pass_on_worker(payload: _Payload, plan: dict, dask_worker=None):
    """Run by ``Client.run`` on each worker: the pass over the chunks ``plan`` lists for
    this worker, read from its own memory (spilled chunks are read back as for a task),
    on its task threads (one chunk per thread at a time, as tasks would run); ``None``
    when one of them is not there (moved, released or recomputed elsewhere since the
    client asked where the chunks are)."""
    loop = asyncio.get_running_loop()
    executor = dask_worker.executors["default"]
    try:
        return await asyncio.gather(*[
            loop.run_in_executor(executor, _chunk_from, dask_worker.data, payload, item)
            for item in plan[dask_worker.address]])
    except KeyError:
        return None


class _RowChunks:
    """What every runner of passes over row chunks shares: the shape, the chunking and the
    validation summary gathered by the first pass.

    Runners implement ``map_reduce(chunk_fn, *args, merge=..., validate=True)`` (the merge
    of ``chunk_fn(block, weights, block_index, *args)`` over all chunks, in the fixed tree
    of :func:`_tree_merge`) and ``take_rows(indices)``.
    """

    n_rows: int
    n_features: int
    row_chunks: tuple[int, ...]
    summary: DataSummary | None
    weighted: bool

    @property
    def n_chunks(self) -> int:
        return len(self.row_chunks)

    def ensure_summary(self) -> DataSummary:
        """Compute the validation summary if no pass has done so yet."""
        if self.summary is None:
            self.summary = self.map_reduce(_summary_task, merge=merge_statistics,
                                           validate=False)
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


class LocalPoints(_RowChunks):
    """Points held in this process as NumPy row chunks: the passes without a cluster.

    The same chunk functions and the same merge tree as :class:`ChunkedPoints`, so a fit
    here gives the same bits as on a cluster with the same chunking. Chunks are evaluated
    by a pool of threads when there are several (the compiled kernels release the GIL).

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
        starts = range(0, self.n_rows, chunk_rows)
        self._blocks = [points[a:a + chunk_rows] for a in starts]
        self._weights = [None if sample_weight is None else sample_weight[a:a + chunk_rows]
                         for a in starts]
        self.row_chunks = tuple(len(b) for b in self._blocks)
        self.weighted = sample_weight is not None
        self.summary = None
        self._threads = min(threads or os.cpu_count() or 1, self.n_chunks)

    def map_reduce(self, chunk_fn: Callable, *args: Any,
                   merge: Callable[[list], Any] = merge_statistics, validate: bool = True,
                   value_bytes: int | None = None) -> Any:
        """As :meth:`ChunkedPoints.map_reduce`; the summary is checked before the pass."""
        if validate:
            self.ensure_summary()
        calls = [functools.partial(chunk_fn, b, w, i, *args)
                 for i, (b, w) in enumerate(zip(self._blocks, self._weights))]
        if self._threads > 1:
            with ThreadPoolExecutor(self._threads) as pool:
                values = list(pool.map(lambda call: call(), calls))
        else:
            values = [call() for call in calls]
        return _tree_merge(values, merge)

    def take_rows(self, indices: np.ndarray) -> np.ndarray:
        """Rows at the given global indices, as float64."""
        return np.asarray(self.points[np.asarray(indices, dtype=np.int64)], dtype=np.float64)


class ChunkedPoints(_RowChunks):
    """Points (and optional per-point weights) as row chunks, with a map-reduce over them.

    Parameters
    ----------
    points : dask.array.Array of shape (N, D)
        Chunked along rows only.
    sample_weight : dask.array.Array of shape (N,), optional
        Chunked like ``points`` rows.
    client : distributed.Client
    """

    def __init__(self, points: da.Array, sample_weight: da.Array | None, client):
        self.points = points
        self.sample_weight = sample_weight
        self.client = client
        self.n_rows, self.n_features = points.shape
        self.row_chunks = points.chunks[0]
        self.weighted = sample_weight is not None
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
        self.summary: DataSummary | None = None
        self._held: list = []
        # {worker: [(block key, weight key, chunk index)]} of the last direct pass: {} until
        # a validated pass places the chunks, None when passes go through the graph.
        held = {f.key for f in self._futures}
        persisted = all(k in held for k in self._block_keys + self._weight_keys
                        if k is not None)
        self._plan: dict | None = {} if persisted else None
        # Bytes of one chunk's value, per chunk function, from its last pass.
        self._value_bytes: dict[Callable, int] = {}

    def map_reduce(
        self,
        chunk_fn: Callable,
        *args: Any,
        merge: Callable[[list], Any] = merge_statistics,
        validate: bool = True,
        value_bytes: int | None = None,
    ) -> Any:
        """``merge`` of ``chunk_fn(block, weights, block_index, *args)`` over all chunks.

        One ``compute``. The first call also computes the validation summary in the same
        graph and raises if the data or weights are invalid, unless ``validate`` is false
        (a pass that only applies a fitted model, as ``predict`` does, needs no summary;
        it then runs in place from the first pass on). ``value_bytes`` is the size of one
        chunk's value when the caller knows it (otherwise it is weighed on the previous pass
        of ``chunk_fn``; see ``_DIRECT_MAX_BYTES``).
        """
        if value_bytes is not None:
            self._value_bytes[chunk_fn] = value_bytes
        if ((self.summary is not None or not validate) and self._plan is not None
                and self._small_values(chunk_fn)):
            result = self._direct_pass(chunk_fn, args, merge)
            if result is not _MISSING:
                return self._weighed(chunk_fn, result)
        layer: dict = {}
        tops = self._add_pass(layer, chunk_fn, args, merge)
        if self.summary is None and validate:
            summary_tops = self._add_pass(layer, _summary_task, (), merge_statistics)
            values = self._compute(layer, tops + summary_tops)
            tops, summary_tops = values[:len(tops)], values[len(tops):]
            self.summary = _merge_top(summary_tops, merge_statistics)
            self.validate_summary()
            return self._weighed(chunk_fn, _merge_top(tops, merge))
        return self._weighed(chunk_fn, _merge_top(self._compute(layer, tops), merge))

    def _small_values(self, chunk_fn: Callable) -> bool:
        """Whether a direct pass of ``chunk_fn`` may bring every chunk's value to the client."""
        if self.n_chunks <= _DIRECT_MAX_CHUNKS:
            return True
        size = self._value_bytes.get(chunk_fn)
        return size is not None and size * self.n_chunks <= _DIRECT_MAX_BYTES

    def _weighed(self, chunk_fn: Callable, result: Any) -> Any:
        """``result``, after noting its bytes as the size of one chunk's value of ``chunk_fn``
        (merges keep the size: statistics of the same models)."""
        self._value_bytes[chunk_fn] = _array_bytes(result)
        return result

    @property
    def direct(self) -> bool:
        """Whether passes run in place on the workers (persisted data, chunks placed)."""
        return bool(self._plan)

    def _place(self) -> bool | None:
        """Which worker reads which chunks in the next direct pass. False when a chunk's
        points and weights are on different workers (a graph pass brings them together),
        None when a chunk is held by no worker."""
        who_has = self.client.who_has(self._futures)
        plan: dict[str, list] = {}
        for i, (b, w) in enumerate(zip(self._block_keys, self._weight_keys)):
            holders = set(who_has.get(b, ()))
            if not holders or (w is not None and not who_has.get(w)):
                return None
            if w is not None:
                holders &= set(who_has[w])
            if not holders:
                return False
            plan.setdefault(min(holders), []).append((b, w, i))
        self._plan = plan
        return True

    def _direct_pass(self, chunk_fn: Callable, args: tuple, merge: Callable[[list], Any]):
        """The pass as one ``Client.run`` call that each worker answers with the values of
        the chunks it holds, merged on the client in the graph's tree, so with the same
        bits. ``_MISSING`` when a chunk has moved, a chunk's points and weights are
        apart, or a worker or the scheduler cannot be reached: the caller then runs the
        graph. From the first chunk held by no worker on, every pass is a graph (lost
        data is the graph's to recompute). Every pass first asks the scheduler where the
        chunks are (one small round trip), so chunks moved by a retiring worker or a
        rebalance are read where they now are.

        This skips the scheduler's task machinery: its batched messages (client to
        scheduler to worker and back, each batch sent at most every 2-10 ms), the
        bookkeeping between one task and the next, and the gather. Exceptions raised by
        ``chunk_fn`` propagate as on a graph.
        """
        try:
            placed = self._place()  # asks where the chunks are now: they may have moved
            if not placed:
                if placed is None:
                    self._plan = None
                return _MISSING
            answers = self.client.run(_direct_pass_on_worker, _Payload(chunk_fn, args),
                                      self._plan, workers=list(self._plan), on_error="return")
        except OSError:
            # The scheduler did not answer. The graph waits for it to come back, or for the
            # client to give up on it, and fails as any job does when its scheduler is lost.
            return _MISSING
        values: list = [None] * self.n_chunks
        missing = False
        for address, items in self._plan.items():
            part = answers.get(address)
            if isinstance(part, Exception) and not isinstance(part, OSError):
                raise part
            if part is None or isinstance(part, Exception):  # moved, or the worker is gone
                missing = True
                continue
            for (_, _, i), value in zip(items, part):
                values[i] = value
        if missing:
            logger.info("chunks moved or a worker left; this pass goes through the scheduler")
            return _MISSING
        return _tree_merge(values, merge)

    def _add_pass(self, layer: dict, chunk_fn: Callable, args: tuple,
                  merge: Callable[[list], Any]) -> list:
        """Add one task per chunk and the merge tree to ``layer``; return the top keys.

        The function and its arguments are inlined in each chunk task when small: as a
        task of their own, the chunk tasks could start only after it had run on one worker
        and been fetched by the others, about 6 ms per pass on a local cluster.

        The tree has a fixed shape in chunk-index order, so the result has the same bits
        whatever the number of workers or the order tasks finish in. Its last level (at
        most ``_TREE_WIDTH`` values) is merged on the client by the caller, which saves a
        task and a transfer per pass. The graph is written directly (no ``delayed``
        calls), which costs microseconds per chunk instead of about a millisecond.
        """
        token = uuid.uuid4().hex
        name = f"{chunk_fn.__name__.lstrip('_')}-{token}"
        payload = _Payload(chunk_fn, args)
        if _array_bytes(args) * self.n_chunks > _INLINE_PAYLOAD_BYTES:
            # One task holds it; workers fetch it once each (a transfer and a round trip).
            layer[f"payload-{token}"] = payload
            payload = f"payload-{token}"
        keys = []
        for i, (b, w) in enumerate(zip(self._block_keys, self._weight_keys)):
            layer[(name, i)] = (_run_chunk, payload, b, w, i)
            keys.append((name, i))
        level = 0
        while len(keys) > _TREE_WIDTH:
            level += 1
            merged = f"{merge.__name__.lstrip('_')}-{level}-{token}"
            groups = [keys[i:i + _TREE_WIDTH] for i in range(0, len(keys), _TREE_WIDTH)]
            for j, group in enumerate(groups):
                layer[(merged, j)] = (merge, group)
            keys = [(merged, j) for j in range(len(groups))]
        return keys

    def _compute(self, layer: dict, keys: list) -> list:
        futures = self.client.get({**self._graph, **layer}, keys, sync=False)
        # The previous pass's futures are released only now, after this graph is sent:
        # the client batches its messages to the scheduler at most every 10 ms, so a
        # release sent just before would hold the next graph back by up to 10 ms.
        self._held = futures
        return self.client.gather(futures)

    def take_rows(self, indices: np.ndarray) -> np.ndarray:
        """Rows at the given global indices, as float64 (a small gather, not a pass).

        One task per chunk that holds any of the rows, on the same chunk keys as the passes.
        """
        indices = np.asarray(indices, dtype=np.int64)
        bounds = np.cumsum((0,) + tuple(self.row_chunks))
        chunk_of = np.searchsorted(bounds, indices, side="right") - 1
        token = uuid.uuid4().hex
        layer: dict = {}
        keys, positions = [], []
        for c in np.unique(chunk_of):
            where = np.flatnonzero(chunk_of == c)
            key = (f"take-rows-{token}", int(c))
            layer[key] = (_run_chunk, _Payload(_take_task, (indices[where] - bounds[c],)),
                          self._block_keys[c], None, int(c))
            keys.append(key)
            positions.append(where)
        out = np.empty((len(indices), self.n_features))
        for where, rows in zip(positions, self._compute(layer, keys)):
            out[where] = rows
        return out


def _take_task(block, weights, index, local_rows):
    return np.asarray(block[local_rows], dtype=np.float64)


def _summary_task(block, weights, index):
    return chunk_summary(block, weights)


# ---------------------------------------------------------------------------- chunk tasks
def _hard_task(block, weights, index, centers, covariance_type) -> SufficientStatistics:
    return hard_assignment_statistics(block, weights, centers, covariance_type)


def _random_resp_task(block, weights, index, root, restart, n_components, covariance_type):
    rng = _rng(root, restart, _P_RANDOM, 0, index)
    resp = rng.uniform(size=(block.shape[0], n_components))
    resp /= resp.sum(axis=1)[:, None]
    return chunk_statistics_from_resp(block, resp, weights, covariance_type)


def _scores(block, weights, centers):
    X = np.asarray(block, dtype=np.float64)
    if centers is None:
        score = np.ones(X.shape[0])
    else:
        _, score = nearest_center(X, centers)
    if weights is not None:
        score = score * weights
    score = np.where(np.isfinite(score) & (score > 0), score, 0.0)
    return X, score


def _d2_sample_task(block, weights, index, centers, root, keys):
    """Total D^2 score of a block and one row drawn proportionally to it (or None)."""
    X, score = _scores(block, weights, centers)
    total = float(score.sum())
    if total <= 0:
        return [(0.0, None)]
    rng = _rng(root, *keys, index)
    i = int(np.searchsorted(np.cumsum(score), rng.random() * total, side="right"))
    return [(total, X[min(i, X.shape[0] - 1)].copy())]


def _kmeans_parallel_task(block, weights, index, centers, phi, oversampling, root, keys):
    """Sample rows with probability min(1, l * w d^2 / phi); also return the cost."""
    X, score = _scores(block, weights, centers)
    cost = float(score.sum())
    if phi is None or phi <= 0:
        return (cost, np.empty((0, X.shape[1])))
    rng = _rng(root, *keys, index)
    keep = rng.random(X.shape[0]) < oversampling * score / phi
    return (cost, X[keep])


def _candidate_weight_task(block, weights, index, candidates):
    labels, _ = nearest_center(np.asarray(block, dtype=np.float64), candidates)
    w = None if weights is None else np.asarray(weights, dtype=np.float64)
    return np.bincount(labels, weights=w, minlength=candidates.shape[0]).astype(np.float64)


def _lloyd_task(block, weights, index, centers):
    """Per-cluster weight, weighted sum of offsets from the current center, and inertia."""
    X = np.asarray(block, dtype=np.float64)
    labels, d2 = nearest_center(X, centers)
    k = centers.shape[0]
    w = np.ones(X.shape[0]) if weights is None else np.asarray(weights, dtype=np.float64)
    onehot = np.zeros((X.shape[0], k))
    onehot[np.arange(X.shape[0]), labels] = w
    offsets = onehot.T @ X - onehot.sum(axis=0)[:, None] * centers
    return (onehot.sum(axis=0), offsets, float(w @ d2))


def _merge_samples(parts: list[tuple]) -> tuple:
    return (_ordered_sum([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))


def _concat_lists(parts: list[list]) -> list:
    return [item for part in parts for item in part]


# ---------------------------------------------------------------------------- initialisation
def _d2_sample(data: _RowChunks, centers: np.ndarray | None, root, keys) -> np.ndarray | None:
    """One row drawn with probability proportional to w * D^2 (or w when no centers)."""
    candidates = data.map_reduce(_d2_sample_task, centers, root, keys, merge=_concat_lists)
    totals = np.array([c[0] for c in candidates])
    if not totals.sum() > 0:
        return None
    rng = _rng(root, *keys, data.n_chunks)  # the client's own stream for this draw
    chunk = int(np.searchsorted(np.cumsum(totals), rng.random() * totals.sum(), side="right"))
    chunk = min(chunk, len(totals) - 1)
    while totals[chunk] <= 0:
        chunk -= 1
    return candidates[chunk][1]


def _too_few_distinct(n_found: int, n_components: int) -> ValueError:
    return ValueError(
        f"the data has only {n_found} distinct points with positive weight, fewer than "
        f"n_components={n_components}; decrease n_components."
    )


def _kmeans_plusplus(data: _RowChunks, n_components: int, root, restart: int) -> np.ndarray:
    """Exact k-means++ seeding: one pass per center."""
    centers = None
    for j in range(n_components):
        row = _d2_sample(data, centers, root, (restart, _P_KPP, j))
        if row is None:
            raise _too_few_distinct(0 if centers is None else len(centers), n_components)
        centers = row[None, :] if centers is None else np.vstack([centers, row])
    return centers


def _weighted_kmeans_plusplus(points, weights, n_components, rng) -> np.ndarray:
    """k-means++ on a small weighted candidate set, on the client."""
    first = rng.choice(len(points), p=weights / weights.sum())
    centers = [points[first]]
    d2 = ((points - centers[0]) ** 2).sum(axis=1)
    for _ in range(1, n_components):
        score = d2 * weights
        if not score.sum() > 0:
            raise _too_few_distinct(len(centers), n_components)
        i = rng.choice(len(points), p=score / score.sum())
        centers.append(points[i])
        d2 = np.minimum(d2, ((points - points[i]) ** 2).sum(axis=1))
    return np.array(centers)


def _kmeans_parallel(data: _RowChunks, n_components: int, root, restart: int) -> np.ndarray:
    """k-means|| seeding (Bahmani et al. 2012) with oversampling factor 2K."""
    first = _d2_sample(data, None, root, (restart, _P_KPAR, 0))
    candidates = first[None, :]
    oversampling = 2.0 * n_components
    phi = None
    for r in range(_KMEANS_PARALLEL_ROUNDS + 1):
        cost, sampled = data.map_reduce(_kmeans_parallel_task, candidates, phi, oversampling,
                                        root, (restart, _P_KPAR, r + 1), merge=_merge_samples)
        phi = cost
        if sampled.shape[0]:
            candidates = np.vstack([candidates, sampled])
        if phi <= 0:
            break
    candidates = np.unique(candidates, axis=0)
    if candidates.shape[0] < n_components:
        raise _too_few_distinct(candidates.shape[0], n_components)
    weights = data.map_reduce(_candidate_weight_task, candidates, merge=_ordered_sum)
    rng = _rng(root, restart, _P_KPAR, _KMEANS_PARALLEL_ROUNDS + 2)
    return _weighted_kmeans_plusplus(candidates, weights, n_components, rng)


def _lloyd(data: _RowChunks, centers: np.ndarray) -> np.ndarray:
    """Distributed Lloyd iterations until the squared center shift is below tolerance."""
    summary = data.ensure_summary()
    tol = _KMEANS_TOL * float(np.mean(summary.variance))
    for it in range(_KMEANS_MAX_ITER):
        counts, offsets, inertia = data.map_reduce(_lloyd_task, centers, merge=_sum_tuples)
        shift = np.where(counts[:, None] > 0, offsets / np.maximum(counts, 1e-300)[:, None], 0.0)
        centers = centers + shift
        logger.debug("lloyd iteration %d: inertia %.6g, shift %.3g", it + 1, inertia,
                     float((shift**2).sum()))
        if float((shift**2).sum()) <= tol:
            break
    return centers


def _initial_params(data: _RowChunks, cfg: "EMConfig", root, restart: int) -> MixtureParams:
    K, cov = cfg.n_components, cfg.covariance_type
    if cfg.weights_init is not None and cfg.means_init is not None and \
            cfg.precisions_init is not None:
        return _override(None, cfg)
    method = cfg.init_params
    if method in ("kmeans", "k-means||"):
        seeds = (_kmeans_plusplus if method == "kmeans" else _kmeans_parallel)(
            data, K, root, restart)
        centers = _lloyd(data, seeds)
        total = data.map_reduce(_hard_task, centers, cov)
        params = m_step(total, cfg.reg_covar, cov)
    elif method == "random":
        total = data.map_reduce(_random_resp_task, root, restart, K, cov)
        params = m_step(total, cfg.reg_covar, cov)
    else:
        if method == "k-means++":
            means = _kmeans_plusplus(data, K, root, restart)
        else:
            rng = _rng(root, restart, _P_FROM_DATA)
            means = data.take_rows(rng.choice(data.n_rows, size=K, replace=False))
        params = _point_params(means, cfg)
    return _override(params, cfg)


def _point_params(means: np.ndarray, cfg: "EMConfig") -> MixtureParams:
    """Parameters of components each made of one point: covariance ``reg_covar``."""
    K, D = means.shape
    reg = cfg.reg_covar
    cov = {
        "full": lambda: np.tile(np.eye(D) * reg, (K, 1, 1)),
        "tied": lambda: np.eye(D) * reg,
        "diag": lambda: np.full((K, D), reg),
        "spherical": lambda: np.full(K, reg),
    }[cfg.covariance_type]()
    return MixtureParams.from_covariances(np.full(K, 1.0 / K), means, cov, cfg.covariance_type)


def _override(params: MixtureParams | None, cfg: "EMConfig") -> MixtureParams:
    """Apply user-given ``weights_init``, ``means_init`` and ``precisions_init``."""
    weights = cfg.weights_init if cfg.weights_init is not None else params.weights
    means = cfg.means_init if cfg.means_init is not None else params.means
    if cfg.precisions_init is not None:
        from ._kernels import precision_cholesky_from_precisions

        chol = precision_cholesky_from_precisions(cfg.precisions_init, cfg.covariance_type)
        return MixtureParams.from_precision_cholesky(weights, means, chol, cfg.covariance_type)
    return MixtureParams(np.asarray(weights, dtype=np.float64), np.asarray(means, np.float64),
                         params.covariances, params.precisions_cholesky, cfg.covariance_type)


# ---------------------------------------------------------------------------- the EM loop
@dataclass(frozen=True)
class EMConfig:
    """Validated settings of one fit (see :class:`distgmm.GaussianMixture` for meanings)."""

    n_components: int
    covariance_type: str = "full"
    tol: float = 1e-3
    reg_covar: float = 1e-6
    max_iter: int = 100
    n_init: int = 1
    init_params: str = "kmeans"
    weights_init: np.ndarray | None = None
    means_init: np.ndarray | None = None
    precisions_init: np.ndarray | None = None

    def fingerprint(self, data: _RowChunks, entropy) -> str:
        """Digest identifying a fit: config, data shape and chunking, seed."""
        h = hashlib.sha256()
        plain = {k: getattr(self, k) for k in ("n_components", "covariance_type", "tol",
                                               "reg_covar", "max_iter", "n_init", "init_params")}
        plain.update(shape=[data.n_rows, data.n_features], chunks=list(data.row_chunks),
                     entropy=str(entropy), weighted=data.weighted)
        h.update(json.dumps(plain, sort_keys=True).encode())
        for a in (self.weights_init, self.means_init, self.precisions_init):
            h.update(b"-" if a is None else np.ascontiguousarray(a, dtype=np.float64).tobytes())
        return h.hexdigest()


def _fingerprint(configs: list[EMConfig], data: _RowChunks, entropy) -> str:
    h = hashlib.sha256()
    for cfg in configs:
        h.update(cfg.fingerprint(data, entropy).encode())
    return h.hexdigest()


@dataclass(frozen=True)
class IterationInfo:
    """Progress of one EM iteration of one run, passed to ``on_iteration`` callbacks.

    ``config`` indexes the configurations given to :func:`fit_many` (always 0 for
    :func:`fit_em`); ``restart`` is the restart within that configuration. ``seconds`` is
    the wall time of the pass, shared by all runs evaluated in it.
    """

    restart: int
    iteration: int
    lower_bound: float
    change: float
    seconds: float
    converged: bool
    config: int = 0


@dataclass
class EMResult:
    """Outcome of one configuration: the best restart's parameters and every restart's history.

    ``params`` is None and ``error`` says why when every restart failed (only with
    ``errors="record"``).
    """

    params: MixtureParams | None
    converged: bool
    n_iter: int
    lower_bound: float
    lower_bounds: list[float]
    histories: list[list[float]] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None


@dataclass
class _Run:
    """One restart of one configuration, advanced in lockstep with the others."""

    config: int
    restart: int
    params: MixtureParams | None = None
    iteration: int = 0
    lower_bound: float = -math.inf
    lower_bounds: list[float] = field(default_factory=list)
    converged: bool = False
    done: bool = False
    error: str | None = None

    def meta(self) -> dict:
        return {"config": self.config, "restart": self.restart, "iteration": self.iteration,
                "lower_bound": None if self.lower_bound == -math.inf else self.lower_bound,
                "lower_bounds": self.lower_bounds, "converged": self.converged,
                "done": self.done, "error": self.error,
                "has_params": self.params is not None}


_PARAM_FIELDS = ("weights", "means", "covariances", "precisions_cholesky")


class FileCheckpoint:
    """Atomic checkpoint of a fit's state after initialisation and every pass (one ``.npz``).

    Parameters
    ----------
    path : str
        File to write; replaced atomically, so a kill at any moment leaves the previous
        complete checkpoint.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)

    def save(self, runs: list[_Run], fingerprint: str, entropy) -> None:
        arrays: dict[str, np.ndarray] = {}
        for j, run in enumerate(runs):
            if run.params is not None:
                for name in _PARAM_FIELDS:
                    arrays[f"run{j}_{name}"] = getattr(run.params, name)
        meta = {"kind": "distgmm-checkpoint", "version": 2, "fingerprint": fingerprint,
                "entropy": str(entropy), "runs": [run.meta() for run in runs]}
        save_arrays(self.path, arrays, meta)

    def load(self, configs: list[EMConfig], fingerprint_of: Callable[[Any], str]
             ) -> tuple[list[_Run], Any] | None:
        """The saved runs and seed entropy, or None if there is no checkpoint yet."""
        if not os.path.exists(self.path):
            return None
        arrays, meta, _ = load_arrays(self.path)
        if meta.get("kind") != "distgmm-checkpoint" or meta.get("version") != 2:
            raise ValueError(f"{self.path} is not a distgmm checkpoint of this version; remove "
                             "it or pick another checkpoint path.")
        entropy = int(meta["entropy"])
        if fingerprint_of(entropy) != meta["fingerprint"]:
            raise ValueError(
                f"checkpoint {self.path} was written by a different fit (other data, options "
                "or seed); rerun with the original options, or delete the checkpoint to start "
                "over."
            )
        runs = []
        for j, m in enumerate(meta["runs"]):
            params = None
            if m["has_params"]:
                params = MixtureParams(*(arrays[f"run{j}_{name}"] for name in _PARAM_FIELDS),
                                       configs[m["config"]].covariance_type)
            lb = m["lower_bound"]
            runs.append(_Run(m["config"], m["restart"], params, m["iteration"],
                             -math.inf if lb is None else lb, m["lower_bounds"], m["converged"],
                             m["done"], m["error"]))
        return runs, entropy


def _em_task_many(block, weights, index, params_list):
    return [chunk_statistics(block, weights, p) for p in params_list]


def _merge_lists(parts: list[list]) -> list:
    return [merge_statistics([part[j] for part in parts]) for j in range(len(parts[0]))]


@_single_threaded_blas
def fit_many(
    data: _RowChunks,
    configs: list[EMConfig],
    random_state: Any = None,
    *,
    warm_start: tuple[MixtureParams, float] | None = None,
    on_iteration: Callable[[IterationInfo], None] | None = None,
    checkpoint: FileCheckpoint | None = None,
    errors: str = "raise",
    initial_params: Callable[[int, int], MixtureParams] | None = None,
) -> list[EMResult]:
    """Fit several configurations and all their restarts in lockstep, one pass per iteration.

    Every pass over the data evaluates all runs still iterating on each chunk while it is in
    memory, so ``n_init`` restarts, or the candidates of a model selection, read the data
    once per iteration instead of once per model. Each run's numbers are exactly those of
    fitting it alone.

    Parameters
    ----------
    data : LocalPoints or ChunkedPoints
    configs : list of EMConfig
    random_state : None, int, RandomState, Generator or SeedSequence
        Restart ``r`` of every configuration uses the random streams of spawn key ``(r, ...)``.
    warm_start : (MixtureParams, float), optional
        Single configuration only: one run started from these parameters and lower bound.
    on_iteration : callable, optional
        Called with an :class:`IterationInfo` per run after every pass.
    checkpoint : FileCheckpoint, optional
        Save the state after initialisation and every pass; if the file exists and belongs
        to the same fit, continue from it.
    errors : {"raise", "record"}
        What a collapsing run does: raise at once, or end that run and record the message
        (a configuration whose runs all failed gets ``params=None`` and ``error``).
    initial_params : callable, optional
        ``initial_params(config_index, restart)`` gives a run's starting parameters,
        called for the runs in order (configuration, then restart). Default: the initialisation
        ``config.init_params`` names, from random streams derived from ``random_state``,
        the restart and the chunk index (:func:`_initial_params`).

    Returns
    -------
    list of EMResult, one per configuration: the restart with the best final lower bound
    (scikit-learn's rule: a later restart replaces the best one if its lower bound is
    higher, or if the best one's is still -inf, as after ``max_iter=0``).
    """
    from ._kernels import CollapsedComponentError

    started = time.perf_counter()
    root = seed_sequence(random_state)
    if warm_start is not None and len(configs) != 1:
        raise ValueError("warm_start takes exactly one configuration.")
    runs = None
    if checkpoint is not None:
        loaded = checkpoint.load(configs, lambda e: _fingerprint(configs, data, e))
        if loaded is not None:
            runs, entropy = loaded
            root = np.random.SeedSequence(entropy)
            logger.info("resuming from %s", checkpoint.path)
    fingerprint = _fingerprint(configs, data, root.entropy)
    if runs is None:
        n_runs = [1 if warm_start is not None else cfg.n_init for cfg in configs]
        runs = [_Run(c, r) for c, n in enumerate(n_runs) for r in range(n)]

    def save():
        if checkpoint is not None:
            checkpoint.save(runs, fingerprint, root.entropy)

    def fail(run: _Run, exc: CollapsedComponentError):
        if errors == "raise":
            raise exc
        run.error, run.done = str(exc), True
        logger.warning("config %d restart %d failed: %s", run.config, run.restart, exc)

    for run in runs:
        cfg = configs[run.config]
        if run.done or run.params is not None:
            continue
        if warm_start is not None:
            run.params, run.lower_bound = warm_start
        else:
            try:
                run.params = (_initial_params(data, cfg, root, run.restart)
                              if initial_params is None else initial_params(run.config, run.restart))
            except CollapsedComponentError as exc:
                fail(run, exc)
                continue
        if cfg.max_iter == 0:
            run.done = True
        save()
    if all(run.done for run in runs):
        data.ensure_summary()  # validation happens even when no pass is needed

    while True:
        active = [run for run in runs if not run.done]
        if not active:
            break
        t0 = time.perf_counter()
        totals = data.map_reduce(_em_task_many, [run.params for run in active],
                                 merge=_merge_lists)
        seconds = time.perf_counter() - t0
        infos = []
        for run, total in zip(active, totals):
            cfg = configs[run.config]
            try:
                params = m_step(total, cfg.reg_covar, cfg.covariance_type)
            except CollapsedComponentError as exc:
                fail(run, exc)
                continue
            lower_bound = total.log_likelihood / total.weight_sum
            change = lower_bound - run.lower_bound
            run.iteration += 1
            run.params, run.lower_bound = params, lower_bound
            run.lower_bounds.append(lower_bound)
            run.converged = abs(change) < cfg.tol
            run.done = run.converged or run.iteration >= cfg.max_iter
            infos.append(IterationInfo(run.restart, run.iteration, lower_bound, change, seconds,
                                       run.converged, run.config))
        save()
        if on_iteration is not None:
            for info in infos:
                on_iteration(info)

    results = []
    elapsed = time.perf_counter() - started
    for c in range(len(configs)):
        mine = [run for run in runs if run.config == c]
        good = [run for run in mine if run.error is None]
        histories = [list(run.lower_bounds) for run in mine]
        if not good:
            results.append(EMResult(None, False, 0, -math.inf, [], histories, elapsed,
                                    mine[0].error))
            continue
        best = good[0]
        for run in good[1:]:
            if run.lower_bound > best.lower_bound or best.lower_bound == -math.inf:
                best = run
        results.append(EMResult(best.params, best.converged, best.iteration, best.lower_bound,
                                list(best.lower_bounds), histories, elapsed))
    return results


@_single_threaded_blas
def score_many(data: _RowChunks, params_list: list[MixtureParams]) -> list[float]:
    """Mean (weighted) log-likelihood of the data under each model, in one pass."""
    totals = data.map_reduce(_em_task_many, list(params_list), merge=_merge_lists)
    return [t.log_likelihood / t.weight_sum for t in totals]


def fit_em(
    data: _RowChunks,
    cfg: EMConfig,
    random_state: Any = None,
    *,
    warm_start: tuple[MixtureParams, float] | None = None,
    on_iteration: Callable[[IterationInfo], None] | None = None,
    checkpoint: FileCheckpoint | None = None,
    initial_params: Callable[[int, int], MixtureParams] | None = None,
) -> EMResult:
    """Fit one configuration (its ``n_init`` restarts in lockstep); see :func:`fit_many`."""
    return fit_many(data, [cfg], random_state, warm_start=warm_start,
                    on_iteration=on_iteration, checkpoint=checkpoint,
                    initial_params=initial_params)[0]
