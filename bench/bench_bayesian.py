"""Benchmark: distgmm's BayesianGaussianMixture against scikit-learn's, per iteration, from the same start.

Run from the repository root (after ``pip install -e .``)::

    python bench/bench_bayesian.py                    # (1e6, 8, 8) full, the issue's size
    python bench/bench_bayesian.py --sizes 1e6,8,8,full 1e6,8,8,diag --iters 6

For each size it generates well-separated blobs, draws one start (scikit-learn's own,
from a ``max_iter=0`` fit, which distgmm's in-process path reproduces exactly), then runs
a fixed number of variational iterations from it in both: scikit-learn on the in-memory
array with all cores' BLAS threads (a warm-started fit with ``max_iter=iters``, timed as a
whole and divided by the iterations), distgmm on its own local cluster with the points
persisted (wall time between successive iterations' callbacks: the pass, the merge and the
variational M-step). It also checks that both reach the same lower bound.
"""

from __future__ import annotations

import argparse
import copy
import time
import warnings

import numpy as np

from _table import print_markdown
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import BayesianGaussianMixture as SkBayesianGaussianMixture
from threadpoolctl import threadpool_limits

import distgmm
from distgmm._layout import default_chunk_rows
from distgmm.cluster import local_cluster_client
from distgmm.engine import scattered

DEFAULT_SIZES = [(1_000_000, 8, 8, "full")]


def parse_size(text: str) -> tuple[int, int, int, str]:
    n, d, k, *cov = text.split(",")
    return int(float(n)), int(d), int(k), (cov[0] if cov else "full")


def make_data(n: int, d: int, k: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 4, size=(k, d))
    return centers[rng.integers(0, k, size=n)] + rng.normal(size=(n, d))


def bench_size(client, n: int, d: int, k: int, cov: str, iters: int) -> dict:
    X = make_data(n, d, k)
    kw = dict(n_components=k, covariance_type=cov, tol=0, random_state=0, warm_start=True,
              init_params="random_from_data")
    warnings.simplefilter("ignore", ConvergenceWarning)
    n_threads = len(client.scheduler_info()["workers"])
    sk = SkBayesianGaussianMixture(max_iter=0, **kw).fit(X)
    ours = distgmm.BayesianGaussianMixture(max_iter=0, **kw).fit(X)  # the same start
    with threadpool_limits(n_threads):
        sk.set_params(max_iter=iters)
        t0 = time.perf_counter()
        sk.fit(X)
        sk_it = (time.perf_counter() - t0) / iters

    chunk_rows = min(1 << 17, default_chunk_rows(d, X.dtype))
    dX = scattered(client, [X[a:a + chunk_rows] for a in range(0, n, chunk_rows)])
    stamps: list[float] = []
    run = copy.deepcopy(ours).set_params(max_iter=iters + 2)
    run.fit(dX, on_iteration=lambda info: stamps.append(time.perf_counter()))
    ours_it = float(np.median(np.diff(stamps[1:])))
    same = copy.deepcopy(ours).set_params(max_iter=iters).fit(dX)
    return {
        "size": f"({n:.2g}, {d}, {k}) {cov}",
        "sklearn s/it": sk_it,
        "distgmm s/it": ours_it,
        "speed-up": sk_it / ours_it,
        "lower bound rel. diff": abs(same.lower_bound_ - float(np.ravel(sk.lower_bound_)[0]))
        / abs(float(np.ravel(sk.lower_bound_)[0])),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="*", type=parse_size, default=DEFAULT_SIZES,
                        help="N,D,K[,covariance_type] (e.g. 1e6,8,8,full)")
    parser.add_argument("--iters", type=int, default=6)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    client = local_cluster_client(args.workers, memory_limit="8GiB")
    with client.cluster, client, client.as_current():
        rows = [bench_size(client, n, d, k, cov, args.iters) for n, d, k, cov in args.sizes]
    print_markdown(rows)


if __name__ == "__main__":
    main()
