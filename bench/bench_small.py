"""Benchmark: the drop-in on in-memory data, against scikit-learn, and where fits should run.

Run from the repository root (after ``pip install -e .``)::

    python bench/bench_small.py                    # iris, the origin example, the threshold
    python bench/bench_small.py --sizes 1e4,1e5    # threshold rows only at these sizes

Three measurements, in one run:

1. **20 fits of iris** (K=3, default parameters, seeds 0..19), what a notebook or a grid
   search does: scikit-learn with one BLAS thread (its single-threaded time) against
   ``distgmm.GaussianMixture`` as a user calls it (no client: in this process).
2. **The origin example** (``kmeansSamples.txt``, K=2, ``random_state=0``): cluster sizes,
   score and time of each.
3. **Where in-memory data should be fitted**: for NumPy arrays of D=8, K=8 (full, the same
   starting parameters, 10 iterations, tol=0), the wall time of a fit in this process
   (distgmm's default for in-memory data), on distgmm's own local cluster
   already running (``scheduler=`` its address: scatter, passes, gather), and the time to
   start that cluster, which a first fit on a cluster also pays; scikit-learn (all cores)
   for scale. Where in-memory data is fitted is decided from this table (see
   ``bench/README.md`` and ``distgmm/_estimator.py``).
"""

from __future__ import annotations

import argparse
import time
import warnings
from importlib.resources import files

import numpy as np
from sklearn.datasets import load_iris
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture as SkGaussianMixture
from threadpoolctl import threadpool_limits

import distgmm
from distgmm._estimator import CLIENT_MIN_BYTES


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def iris(repeats: int) -> None:
    X = load_iris().data
    distgmm.GaussianMixture(3, random_state=0).fit(X)  # load the compiled kernels once

    def fits(cls):
        for seed in range(20):
            cls(3, random_state=seed).fit(X)

    with threadpool_limits(1):
        sk = min(_timed(lambda: fits(SkGaussianMixture)) for _ in range(repeats))
    ours = min(_timed(lambda: fits(distgmm.GaussianMixture)) for _ in range(repeats))
    same = all(np.array_equal(SkGaussianMixture(3, random_state=s).fit_predict(X),
                              distgmm.GaussianMixture(3, random_state=s).fit_predict(X))
               for s in range(20))
    print(f"20 iris fits: scikit-learn (1 thread) {sk:.3f} s, distgmm {ours:.3f} s, "
          f"ratio {ours / sk:.2f}; the same labels for all 20 seeds: {same}")


def origin_example() -> None:
    X = np.loadtxt(files("distgmm") / "data" / "kmeansSamples.txt")
    for name, cls in (("scikit-learn", SkGaussianMixture), ("distgmm", distgmm.GaussianMixture)):
        seconds = _timed(lambda: cls(2, random_state=0).fit(X))
        gm = cls(2, random_state=0).fit(X)
        sizes = sorted(np.bincount(gm.predict(X)).tolist())
        print(f"kmeansSamples.txt, K=2, seed 0: {name:12s} clusters {sizes}, score "
              f"{gm.score(X):.4f}, {seconds * 1000:.1f} ms")


def threshold(sizes: list[int]) -> None:
    from distgmm.cluster import local_cluster_client

    t0 = time.perf_counter()
    client = local_cluster_client()
    start = time.perf_counter() - t0
    address = client.scheduler.address
    print(f"\nlocal cluster start ({len(client.scheduler_info()['workers'])} workers): "
          f"{start:.2f} s")
    print("| N (D=8, K=8) | MiB | in process s | warm cluster s | cluster / in process | "
          "scikit-learn s |")
    print("|---|---|---|---|---|---|")
    D, K = 8, 8
    for n in sizes:
        rng = np.random.default_rng(0)
        centers = rng.normal(0, 6, size=(K, D))
        X = centers[rng.integers(0, K, n)] + rng.normal(size=(n, D))
        init = dict(weights_init=np.full(K, 1 / K), means_init=centers + 0.5,
                    precisions_init=np.tile(np.eye(D), (K, 1, 1)), tol=0, max_iter=10)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            local = min(_timed(lambda: distgmm.GaussianMixture(K, **init).fit(X))
                        for _ in range(2))
            remote = min(_timed(lambda: distgmm.GaussianMixture(
                K, scheduler=address, **init).fit(X)) for _ in range(2))
            sk = _timed(lambda: SkGaussianMixture(K, **init).fit(X))
        print(f"| {n:.0e} | {X.nbytes / 2**20:.1f} | {local:.3f} | {remote:.3f} | "
              f"{remote / local:.2f} | {sk:.3f} |")
    client.close()
    client.cluster.close()
    print(f"\nCLIENT_MIN_BYTES = {CLIENT_MIN_BYTES / 2**20:.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1e4,1e5,1e6,4e6",
                        help="comma-separated row counts for the threshold table")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    iris(args.repeats)
    origin_example()
    threshold([int(float(s)) for s in args.sizes.split(",")])


if __name__ == "__main__":
    main()
