"""Benchmark: the fixed cost of a pass as chunks and workers grow, for both runners.

Run from the repository root (after ``pip install -e .``)::

    python bench/bench_scale.py                                   # the grid below, ~20 min
    python bench/bench_scale.py --workers 2 8 --chunks 100 1000   # part of it
    python bench/bench_scale.py --profile                         # + the client's profile

What a pass costs apart from the arithmetic, the part that grows with the cluster rather
than with the data: tiny chunks (``--rows`` rows of 8 float64 features each, persisted on
the workers), so that the kernels take microseconds and the time is the machinery. For
every number of single-threaded workers (a scheduler and ``dask worker --nworkers N`` as
processes of their own, so that the CPU time of the client, the scheduler and the
workers can be told apart) and every number of chunks, the same EM pass (one model,
K=8, D=8: its statistics and score sketch per chunk) is run through each runner of
:class:`distgmm.engine.ClusterPoints`:

* ``graph``: one task per chunk and the merge tree's tasks, through the scheduler;
* ``in place``: one ``Client.run`` in which every worker computes the chunks it holds and
  returns their values, merged on the client (the engine chooses it for persisted chunks
  while their values take at most ``IN_PLACE_MAX_BYTES``; here it is forced).

Printed: the median wall time of a pass, and per pass the CPU seconds of the client, of
the scheduler and of all workers together, and the bytes of values the client receives. With
``--profile`` the client's cProfile of the largest case's passes (where its time goes).
This machine has 2 cores: with more workers than cores the workers share them, so these
are costs of coordination, not speed-ups (``docs/scale.md``).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import subprocess
import sys
import tempfile
import time

import numpy as np
import psutil
from distributed import Client

from distgmm._statistics import MixtureParams
from distgmm.engine import ClusterPoints, scattered
from distgmm.engine import passes
from distgmm._scores import score_upper_bound
from distgmm.engine.em import _merge_scored_lists, _scored_statistics_of


def start_cluster(n_workers: int, directory: str) -> tuple[Client, list[subprocess.Popen]]:
    """A scheduler and ``n_workers`` single-threaded workers, each a process of its own."""
    scheduler_file = os.path.join(directory, f"scheduler-{n_workers}.json")
    scheduler = subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
         "--port", "0", "--no-dashboard", "--scheduler-file", scheduler_file],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not os.path.exists(scheduler_file):
        time.sleep(0.1)
    workers = subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_worker", "--scheduler-file", scheduler_file,
         "--nworkers", str(n_workers), "--nthreads", "1", "--memory-limit", "1GiB",
         "--no-dashboard"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = Client(scheduler_file=scheduler_file)
    client.wait_for_workers(n_workers, timeout=300)
    return client, [scheduler, workers]


def cpu_seconds(process: psutil.Process, children: bool = False) -> float:
    processes = [process] + (process.children(recursive=True) if children else [])
    total = 0.0
    for p in processes:
        try:
            times = p.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def model(n_features: int = 8, n_components: int = 8) -> MixtureParams:
    rng = np.random.default_rng(0)
    eye = np.tile(np.eye(n_features), (n_components, 1, 1))
    return MixtureParams(np.full(n_components, 1 / n_components),
                         rng.normal(size=(n_components, n_features)), eye, eye, "full")


def run_passes(points: ClusterPoints, runner: str, repeats: int, procs, profile=None) -> dict:
    """``repeats`` EM passes through ``runner``; medians of wall and CPU per pass."""
    params = [model()]
    walls, client_cpu, scheduler_cpu, worker_cpu = [], [], [], []
    scheduler, workers = procs
    for _ in range(repeats):
        if runner == "graph":
            points._plan = None  # every pass through the scheduler
        else:
            points._plan = points._plan or {}
        c0, s0, w0 = time.process_time(), cpu_seconds(scheduler), cpu_seconds(workers, True)
        started = time.perf_counter()
        if profile is not None:
            profile.enable()
        points.map_reduce(_scored_statistics_of, params, [score_upper_bound(p) for p in params],
                          merge=_merge_scored_lists)
        if profile is not None:
            profile.disable()
        walls.append(time.perf_counter() - started)
        client_cpu.append(time.process_time() - c0)
        scheduler_cpu.append(cpu_seconds(scheduler) - s0)
        worker_cpu.append(cpu_seconds(workers, True) - w0)
        assert runner == "graph" or points.in_place, "the pass did not run in place"
    med = lambda v: float(np.median(v))  # noqa: E731
    # Values the client receives: every chunk's in place, the merge tree's top level (at
    # most TREE_WIDTH merged values) through the graph.
    values = points.n_chunks if runner == "in place" else min(points.n_chunks,
                                                               passes.TREE_WIDTH)
    return {"wall": med(walls), "client": med(client_cpu), "scheduler": med(scheduler_cpu),
            "workers": med(worker_cpu),
            "to client MB": values * passes._array_bytes(_value()) / 1e6}


def _value() -> list:
    """One chunk's value of the benchmark's pass."""
    block = np.random.default_rng(1).normal(size=(64, 8))
    return _scored_statistics_of(block, None, 0, [model()], [score_upper_bound(model())])


def merge_cost(n_values: int) -> float:
    """Seconds to merge ``n_values`` chunk values in this process (the in-place runner's
    merge), from values computed once."""
    value = _value()
    started = time.perf_counter()
    passes.merge_values([value] * n_values, _merge_scored_lists)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", nargs="*", type=int, default=[2, 4, 8, 16, 32])
    parser.add_argument("--chunks", nargs="*", type=int, default=[100, 1000, 10000])
    parser.add_argument("--rows", type=int, default=64, help="rows per chunk")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    passes.IN_PLACE_MAX_BYTES = 1 << 40  # let the in-place runner take any number of chunks
    print(f"load average at start: {os.getloadavg()}", flush=True)
    for n in args.chunks:
        print(f"merging {n} chunk values on the client: {merge_cost(n) * 1e3:.1f} ms")
    rows = []
    profiles = {}
    with tempfile.TemporaryDirectory() as directory:
        for n_workers in args.workers:
            client, (scheduler, workers) = start_cluster(n_workers, directory)
            procs = (psutil.Process(scheduler.pid), psutil.Process(workers.pid))
            try:
                for n_chunks in args.chunks:
                    rng = np.random.default_rng(2)
                    parts = [rng.normal(size=(args.rows, 8)) for _ in range(n_chunks)]
                    X = scattered(client, parts)
                    points = ClusterPoints(X, None, client)
                    points.keepalive = [X]
                    points.map_reduce(_scored_statistics_of, [model()],  # validates
                                      [score_upper_bound(model())], merge=_merge_scored_lists)
                    for runner in ("graph", "in place"):
                        profile = (cProfile.Profile() if args.profile and n_chunks ==
                                   max(args.chunks) and n_workers == max(args.workers) else None)
                        result = run_passes(points, runner, args.repeats, procs, profile)
                        if profile is not None:
                            profiles[(n_workers, n_chunks, runner)] = profile
                        rows.append((n_workers, n_chunks, runner, result))
                        print(f"{n_workers:3d} workers {n_chunks:6d} chunks {runner:9s} " +
                              "  ".join(f"{k} {v:.3f}" for k, v in result.items()), flush=True)
                    client.cancel(X)
                    del points, X
            finally:
                client.close()
                for p in (workers, scheduler):
                    p.terminate()
                    p.wait(timeout=60)
    print(f"load average at end: {os.getloadavg()}")
    print("\n| workers | chunks | runner | wall s per pass | client CPU s | scheduler CPU s | "
          "workers' CPU s | values to client MB |")
    print("|---|---|---|---|---|---|---|---|")
    for n_workers, n_chunks, runner, r in rows:
        print(f"| {n_workers} | {n_chunks} | {runner} | {r['wall']:.3f} | {r['client']:.3f} | "
              f"{r['scheduler']:.3f} | {r['workers']:.3f} | {r['to client MB']:.2f} |")
    for key, profile in profiles.items():
        out = io.StringIO()
        pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(15)
        print(f"\nclient profile, {key[0]} workers, {key[1]} chunks, {key[2]} "
              f"({args.repeats} passes):")
        print("\n".join(out.getvalue().splitlines()[:40]))


if __name__ == "__main__":
    main()
