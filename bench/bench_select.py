"""Benchmark: many models in one pass (model selection and n_init) against one fit after another.

Run from the repository root (after ``pip install -e .``)::

    python bench/bench_select.py                       # 1e6 x 8 points, 12 candidates
    python bench/bench_select.py --rows 2e5 --iters 5
    python bench/bench_select.py --stream /tmp/select.zarr   # read from a Zarr store every pass

Two workloads on the same persisted data (a local cluster of single-threaded workers):

``select``
    12 candidates (K = 1..6, full and diag), ``fit_candidates`` (what ``distgmm select``
    runs: every pass evaluates every candidate still iterating) against fitting the 12
    estimators one after the other.
``n_init``
    one estimator with ``n_init=8`` (the restarts run in lockstep) against 8 separate fits
    with the restarts' seeds.

With ``--stream STORE`` the data is a point store (generated there if missing, float32,
zstd) read from disk on every pass (``persist=False``), as for data larger than the
cluster's memory: there the lockstep pass also reads and decompresses each chunk once
instead of once per model.

Every fit runs a fixed number of EM iterations (``tol=0``) from ``random_from_data``
starting points, so both sides do exactly the same arithmetic; the benchmark checks that
the lockstep models equal the separate ones and prints wall time, data passes and the
speed-up. (k-means-style initialisations cost passes of their own per model, which are
not shared; see the README.)
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import dask.array as da
import numpy as np
from distributed import wait
from sklearn.exceptions import ConvergenceWarning

import distgmm
from distgmm.cluster import local_cluster_client
from distgmm._estimator import fit_candidates
from distgmm.store import generate


def make_data(n, d, k=6, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 4, size=(k, d))
    return centers[rng.integers(0, k, size=n)] + rng.normal(size=(n, d))


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=float, default=1e6)
    parser.add_argument("--features", type=int, default=8)
    parser.add_argument("--iters", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--stream", metavar="STORE",
                        help="stream from this Zarr point store instead of persisted memory")
    args = parser.parse_args()
    warnings.simplefilter("ignore", ConvergenceWarning)
    n, d = int(args.rows), args.features
    common = dict(tol=0, max_iter=args.iters, init_params="random_from_data", random_state=0)
    if args.stream:
        common["persist"] = False
    grid = [(k, cov) for cov in ("full", "diag") for k in range(1, 7)]
    client = local_cluster_client(args.workers, memory_limit="8GiB")
    with client.cluster, client, client.as_current():
        if args.stream:
            if not os.path.exists(args.stream):
                generate(args.stream, n_points=n, n_features=d, n_components=6, seed=0,
                         client=client)
            dX = args.stream  # the estimator opens the store itself
        else:
            X = make_data(n, d)
            dX = da.from_array(X, chunks=(max(8192, (8 << 20) // (8 * d)), d)).persist()
            wait(dX)
        distgmm.GaussianMixture(2, **common).fit(dX)  # compile the kernels in every worker

        def lockstep():
            models = [distgmm.GaussianMixture(k, covariance_type=cov, **common)
                      for k, cov in grid]
            fit_candidates(models, dX)
            return models

        def one_by_one():
            return [distgmm.GaussianMixture(k, covariance_type=cov, **common).fit(dX)
                    for k, cov in grid]

        t_lock, lock = timed(lockstep)
        t_seq, seq = timed(one_by_one)
        same = all(np.array_equal(a.means_, b.means_) and a.lower_bounds_ == b.lower_bounds_
                   for a, b in zip(lock, seq))
        # fit_candidates: one pass per iteration for all candidates, plus one scoring pass;
        # separately: one pass per iteration per candidate (BIC needs another pass each).
        where = "streaming from Zarr" if args.stream else "persisted"
        print(f"select ({where}), {len(grid)} candidates, {args.iters} iterations, "
              f"N={n:.0e}, D={d}: "
              f"lockstep {t_lock:.2f} s ({args.iters + 1} passes), one after another "
              f"{t_seq:.2f} s ({len(grid) * args.iters} passes): {t_seq / t_lock:.1f}x; "
              f"models identical: {same}")

        restarts = 8
        t_ninit, best = timed(lambda: distgmm.GaussianMixture(
            4, n_init=restarts, **common).fit(dX))
        singles = []

        def separate():
            # restart r of a fit uses the random streams of restart r; n_init=1 fits reuse
            # restart 0's, so the separate fits here use distinct seeds instead.
            for r in range(restarts):
                singles.append(distgmm.GaussianMixture(
                    4, **{**common, "random_state": r}).fit(dX))

        t_sep, _ = timed(separate)
        print(f"n_init={restarts}, K=4 full: lockstep {t_ninit:.2f} s, {restarts} separate fits "
              f"{t_sep:.2f} s: {t_sep / t_ninit:.1f}x")


if __name__ == "__main__":
    main()
