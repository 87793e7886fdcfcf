"""Benchmark: an EM fit streaming from a Zarr store three times larger than the workers' memory.

Run from the repository root (after ``pip install -e .``)::

    python bench/bench_outofcore.py --dir /tmp/ooc --rows 100e6 --memory-limit 512MiB

It generates a point store (float32, zstd) with ``distgmm.store.generate`` if it is not
there yet, starts distgmm's own local cluster (``local_cluster_client``) whose total
worker memory limit is about a third of the store's uncompressed size, fits a few EM
iterations straight from Zarr, and reports seconds per iteration, the read rate
(uncompressed bytes per second) against the disk's sequential read rate (measured with
``dd``-style reads of the chunk files, page cache dropped where possible), every worker's
peak RSS against its limit, and whether any worker restarted.
"""

from __future__ import annotations

import argparse
import glob
import os
import resource
import time

import numpy as np
from sklearn.exceptions import ConvergenceWarning

import distgmm
from distgmm.cluster import local_cluster_client
from distgmm.store import generate, open_points


def disk_read_rate(path: str, limit_bytes: int = 2 << 30) -> float:
    """Sequential read rate of the store's chunk files (bytes/s), page cache dropped if root."""
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        pass
    files = sorted(glob.glob(os.path.join(path, "points", "c", "**", "*"), recursive=True))
    files = [f for f in files if os.path.isfile(f)]
    total, t = 0, time.perf_counter()
    for name in files:
        with open(name, "rb") as f:
            total += len(f.read())
        if total > limit_bytes:
            break
    return total / (time.perf_counter() - t)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default="/tmp/distgmm-ooc")
    parser.add_argument("--rows", type=float, default=100e6)
    parser.add_argument("--features", type=int, default=8)
    parser.add_argument("--components", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--memory-limit", default="512MiB")
    parser.add_argument("--iters", type=int, default=3)
    args = parser.parse_args()
    import warnings

    warnings.simplefilter("ignore", ConvergenceWarning)
    store = os.path.join(args.dir, "points.zarr")
    n_rows = int(args.rows)
    client = local_cluster_client(args.workers, memory_limit=args.memory_limit)
    with client.cluster, client, client.as_current():
        if not os.path.exists(store):
            t = time.perf_counter()
            generate(store, n_points=n_rows, n_features=args.features,
                     n_components=args.components, seed=0, dtype="float32", client=client)
            print(f"generated {n_rows:,} rows in {time.perf_counter() - t:.1f} s")
        ps = open_points(store)
        data_bytes = ps.n_rows * ps.n_features * np.dtype(ps.dtype).itemsize
        limit = sum(w["memory_limit"] for w in client.scheduler_info()["workers"].values())
        print(f"store: {ps.n_rows:,} x {ps.n_features} {ps.dtype}, {data_bytes / 2**30:.2f} GiB "
              f"uncompressed in {ps.n_chunks} chunks; total worker memory limit "
              f"{limit / 2**30:.2f} GiB (ratio {data_bytes / limit:.1f})")
        disk = disk_read_rate(store)
        print(f"disk sequential read of chunk files: {disk / 2**20:.0f} MiB/s (compressed)")
        pids_before = client.run(os.getpid)
        times = []
        gm = distgmm.GaussianMixture(args.components, init_params="random_from_data",
                                     max_iter=args.iters, tol=0, random_state=0)
        gm.fit(store, on_iteration=lambda info: times.append(info.seconds))
        pids_after = client.run(os.getpid)
        peaks = client.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
        per_worker = limit / args.workers
        it = float(np.median(times))
        print(f"seconds per iteration (median of {len(times)}): {it:.2f}")
        print(f"read rate: {data_bytes / it / 2**20:.0f} MiB/s uncompressed")
        for addr, peak in peaks.items():
            print(f"worker {addr}: peak RSS {peak / 2**20:.0f} MiB of {per_worker / 2**20:.0f} "
                  f"MiB limit ({peak / per_worker:.0%})")
        print("worker restarts:", "none" if pids_before == pids_after else "YES")
        print(f"client peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
