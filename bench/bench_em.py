"""Benchmark: distgmm vs scikit-learn EM on the same data from the same start, per iteration.

Run from the repository root (after ``pip install -e .``)::

    python bench/bench_em.py                      # the issue's sizes
    python bench/bench_em.py --sizes 1e6,8,8,full --iters 10

For each size it generates data, starts both implementations from the same weights, means
and precisions, runs a fixed number of iterations (tol=0) and reports seconds per iteration
(medians: scikit-learn's own ``_e_step`` + ``_m_step``; for distgmm the wall time between
successive ``on_iteration`` callbacks, which includes scheduling, the merge and the
client-side M-step),
the ratio, attained GFLOP/s (3*N*K*D^2 flops per iteration for full covariances, the
issue's convention; 8*N*K*D for diag) against
the machine's measured GEMM rate, the time against the machine's limit (those flops at the
GEMM rate plus N*K exponentials at NumPy's vectorised exp rate, one core per worker), peak
memory of the client and of the workers, and labeling throughput: distgmm labelling the
persisted points into a Zarr array on disk (``distgmm.predict_to_zarr``, the workers write
their chunks' labels) against scikit-learn's ``predict`` into memory, best of 3 each; and,
for information, the label job (``distgmm label``: rows read from a point store on disk,
labels written to it). distgmm's data is persisted on distgmm's own local cluster
(``distgmm.cluster.local_cluster_client``: worker processes, one per core, one thread each).
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
import warnings

import numpy as np

from _table import print_markdown
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture as SkGaussianMixture
from threadpoolctl import threadpool_limits

import distgmm
from distgmm.engine import scattered
from distgmm.cluster import local_cluster_client
from distgmm.jobs import label_store
from distgmm.store import default_chunk_rows, ingest

DEFAULT_SIZES = [
    (1_000_000, 2, 4, "full"),
    (1_000_000, 8, 8, "full"),
    (4_000_000, 8, 8, "full"),
    (1_000_000, 32, 8, "full"),
    (100_000, 32, 16, "full"),
    (1_000_000, 8, 8, "diag"),
    (1_000_000, 64, 64, "diag"),
]


def parse_size(text: str) -> tuple[int, int, int, str]:
    n, d, k, *cov = text.split(",")
    return int(float(n)), int(d), int(k), (cov[0] if cov else "full")


def gemm_gflops(threads: int) -> float:
    """Measured double-precision GEMM rate of this machine with ``threads`` BLAS threads."""
    a = np.random.default_rng(0).normal(size=(2000, 2000))
    with threadpool_limits(threads):
        a @ a
        best = min(_timed(lambda: a @ a) for _ in range(3))
    return 2 * 2000**3 / best / 1e9


def exp_rate(threads: int) -> float:
    """Exponentials per second of the machine: NumPy's vectorised ``exp`` on one core,
    times ``threads`` (one per worker)."""
    x = -np.random.default_rng(0).uniform(0, 50, size=1 << 22)
    out = np.empty_like(x)
    np.exp(x, out=out)
    best = min(_timed(lambda: np.exp(x, out=out)) for _ in range(5))
    return threads * x.size / best


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def make_data(n, d, k, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 4, size=(k, d))
    labels = rng.integers(0, k, size=n)
    X = centers[labels] + rng.normal(size=(n, d))
    return X


def start(X, k, cov, seed=1):
    rng = np.random.default_rng(seed)
    d = X.shape[1]
    prec = {"full": np.tile(np.eye(d), (k, 1, 1)), "tied": np.eye(d),
            "diag": np.ones((k, d)), "spherical": np.ones(k)}[cov]
    return dict(weights_init=np.full(k, 1 / k), means_init=X[rng.choice(len(X), k, replace=False)],
                precisions_init=prec)


def sklearn_iteration(model, X, iters: int) -> float:
    """Median seconds of scikit-learn's own E-step + M-step (one EM iteration)."""
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        _, log_resp = model._e_step(X)
        model._m_step(X, log_resp)
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def bench_size(client, n, d, k, cov, iters, gemm, exps, work):
    X = make_data(n, d, k)
    init = start(X, k, cov)
    warnings.simplefilter("ignore", ConvergenceWarning)

    n_threads = len(client.scheduler_info()["workers"])
    with threadpool_limits(n_threads):
        sk = SkGaussianMixture(k, covariance_type=cov, tol=0, max_iter=1, **init).fit(X)
        sk_it = sklearn_iteration(sk, X, iters)

    # The product's default chunk size (16 MiB, as for stores and NumPy input), at most
    # 131072 rows so that a million small-D rows still make 8 chunks for the workers.
    chunk_rows = min(1 << 17, default_chunk_rows(d, X.dtype))
    # Scattered and persisted as distgmm does with NumPy input.
    dX = scattered(client, [X[a:a + chunk_rows] for a in range(0, n, chunk_rows)])
    client.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    times = []

    gm = distgmm.GaussianMixture(k, covariance_type=cov, tol=0, max_iter=iters + 2, **init)
    gm.fit(dX, on_iteration=lambda info: times.append(time.perf_counter()))
    # Wall time between successive iterations' callbacks: the whole pass (graph, tasks,
    # merge) plus the client's M-step. The first pass also compiles and validates.
    ours_it = float(np.median(np.diff(times[1:])))

    with tempfile.TemporaryDirectory(dir=work) as tmp:
        out = os.path.join(tmp, "labels.zarr")
        t_label = min(_timed(lambda: distgmm.predict_to_zarr(gm, dX, out, overwrite=True,
                                                             client=client))
                      for _ in range(3))
        assert np.array_equal(distgmm.predict_to_zarr(gm, dX, out, overwrite=True,
                                                      client=client)[:1000], gm.predict(X[:1000]))
        np.save(os.path.join(tmp, "x.npy"), X)
        store = os.path.join(tmp, "points.zarr")
        ingest(os.path.join(tmp, "x.npy"), store)
        model = os.path.join(tmp, "model.npz")
        distgmm.save_model(gm, model)
        t_job = min(label_store(model, store, name=f"run{i}", client=client).seconds
                    for i in range(3))
    with threadpool_limits(n_threads):
        t_sk_label = min(_timed(lambda: sk.predict(X)) for _ in range(3))

    # The convention for full covariances; for diag/spherical the same count of the
    # four N x K x D products an iteration needs (E-step and M-step, 2 flops per multiply-add).
    flops = 3 * n * k * d * d if cov in ("full", "tied") else 8 * n * k * d
    # The machine limit: the flops at the GEMM rate plus N*K exponentials.
    limit = flops / gemm / 1e9 + n * k / exps
    worker_rss = client.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    client_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "size": f"({n:.2g}, {d}, {k}) {cov}",
        "sklearn s/it": sk_it,
        "distgmm s/it": ours_it,
        "speed-up": sk_it / ours_it,
        "GFLOP/s": flops / ours_it / 1e9,
        "of GEMM": flops / ours_it / 1e9 / gemm,
        "limit s/it": limit,
        "of limit": ours_it / limit,
        "label Mrows/s": n / t_label / 1e6,
        "sklearn label Mrows/s": n / t_sk_label / 1e6,
        "label ratio": t_sk_label / t_label,
        "label job Mrows/s": n / t_job / 1e6,
        "client MiB": client_rss / 1024,
        "worker max MiB": max(worker_rss.values()) / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="*", type=parse_size, default=DEFAULT_SIZES,
                        help="N,D,K[,covariance_type] (e.g. 1e6,8,8,full)")
    parser.add_argument("--iters", type=int, default=6)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--work", default=None,
                        help="directory for the label outputs and point stores (default: $TMPDIR)")
    args = parser.parse_args()
    gemm = gemm_gflops(args.workers)
    exps = exp_rate(args.workers)
    print(f"machine GEMM rate ({args.workers} threads): {gemm:.1f} GFLOP/s; "
          f"exp rate: {exps / 1e9:.2f} G/s")
    client = local_cluster_client(args.workers, memory_limit="8GiB")
    with client.cluster, client, client.as_current():
        rows = []
        for n, d, k, cov in args.sizes:
            row = bench_size(client, n, d, k, cov, args.iters, gemm, exps, args.work)
            rows.append(row)
            print("  ".join(f"{key}={val:.3g}" if isinstance(val, float) else f"{key}={val}"
                            for key, val in row.items()), flush=True)
    print()
    print_markdown(rows)


if __name__ == "__main__":
    main()
