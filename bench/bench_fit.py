"""Benchmark: time to a fitted model with default parameters, scikit-learn against distgmm.

Run from the repository root (after ``pip install -e .``)::

    python bench/bench_fit.py                               # the issue's sizes, 10 seeds
    python bench/bench_fit.py --sizes 1e6,8,8 --seeds 3     # one size, quicker
    python bench/bench_fit.py --inits kmeans k-means||      # also other initialisations

For each size (N, D, K) the data is a store written by ``distgmm generate`` (Gaussian
blobs with means uniform in [-10, 10]^D, seed 1; reused from ``--work`` when there). In one
run, on the same data:

* scikit-learn: ``GaussianMixture(K, random_state=seed).fit(X)`` with default parameters
  (init ``kmeans``, tol 1e-3) on the store's points as a float64 NumPy array, 2 BLAS and
  OpenMP threads (the whole machine); its initialisation is timed inside the fit
  (``_initialize_parameters``).
* distgmm: ``distgmm.GaussianMixture(K, random_state=seed).fit(X)``, default parameters,
  ``X`` the store's points persisted on distgmm's own local cluster of 2 single-threaded
  workers, already running and warm (one fit before the timed ones loads the kernels).
  Initialisation is the time from the call to the start of the first EM pass (validation
  included), EM the time from there to the last iteration's end.
* the CLI as a whole process: ``python -m distgmm.cli fit STORE --components K --seed S``
  (interpreter start, imports, its own local cluster, reading the store, the fit, the model
  file), timed from outside.

Runs are interleaved seed by seed, so that the machine's drift hits both. Printed per size:
median and range of the totals, the ratio of medians, distgmm's initialisation share,
EM iterations, and the final lower bounds' median and worst over the seeds for both.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np
from distributed import wait
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture as SkGaussianMixture
from threadpoolctl import threadpool_limits

import distgmm
from distgmm.cluster import local_cluster_client
from distgmm.store import open_points

DEFAULT_SIZES = [(1_000_000, 8, 8), (4_000_000, 8, 16), (16_000_000, 8, 16)]
#: The seed of the generated stores (their mixture parameters and points).
DATA_SEED = 1


def parse_size(text: str) -> tuple[int, int, int]:
    n, d, k = text.split(",")
    return int(float(n)), int(d), int(k)


class TimedSkGaussianMixture(SkGaussianMixture):
    """scikit-learn's estimator, timing its own initialisation (KMeans and the first M-step)."""

    def _initialize_parameters(self, *args, **kwargs):
        started = time.perf_counter()
        super()._initialize_parameters(*args, **kwargs)
        self.init_seconds_ = getattr(self, "init_seconds_", 0.0) + time.perf_counter() - started


def store_for(work: str, n: int, d: int, k: int) -> str:
    """The generated store of this size in ``work``, written by ``distgmm generate``."""
    path = os.path.join(work, f"blobs-{n}-{d}-{k}-seed{DATA_SEED}.zarr")
    if not os.path.exists(path):
        subprocess.run([sys.executable, "-m", "distgmm.cli", "generate", path, "--points",
                        str(n), "--features", str(d), "--components", str(k), "--seed",
                        str(DATA_SEED), "-q"], check=True)
    return path


def sklearn_fit(X, k: int, seed: int) -> dict:
    with threadpool_limits(2), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        started = time.perf_counter()
        model = TimedSkGaussianMixture(k, random_state=seed).fit(X)
        total = time.perf_counter() - started
    return {"total": total, "init": model.init_seconds_, "em": total - model.init_seconds_,
            "n_iter": model.n_iter_, "lower_bound": model.lower_bound_}


def distgmm_fit(dX, k: int, seed: int, init_params: str) -> dict:
    ends: list[tuple[float, float]] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        started = time.perf_counter()
        model = distgmm.GaussianMixture(k, random_state=seed, init_params=init_params).fit(
            dX, on_iteration=lambda info: ends.append((time.perf_counter(), info.seconds)))
        total = time.perf_counter() - started
    first_pass = ends[0][0] - ends[0][1]
    return {"total": total, "init": first_pass - started, "em": ends[-1][0] - first_pass,
            "n_iter": model.n_iter_, "lower_bound": model.lower_bound_}


def cli_fit(store: str, k: int, seed: int, work: str) -> dict:
    model = os.path.join(work, "bench-fit-model.npz")
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "distgmm.cli", "fit", store, "--components",
                          str(k), "--seed", str(seed), "--model", model, "--overwrite",
                          "--json", "-q"], check=True, capture_output=True, text=True).stdout
    total = time.perf_counter() - started
    report = json.loads(out)
    return {"total": total, "n_iter": report["n_iter"], "lower_bound": report["lower_bound"],
            "fit_seconds": report["fit_seconds"]}


def _summary(runs: list[dict], key: str) -> tuple[float, float, float]:
    values = np.array([r[key] for r in runs])
    return float(np.median(values)), float(values.min()), float(values.max())


def bench_size(client, n, d, k, seeds, inits, cli_seeds, work) -> dict:
    store = store_for(work, n, d, k)
    points = open_points(store).points
    X = np.asarray(points.compute(scheduler="threads"), dtype=np.float64)
    dX = client.persist(points)
    wait(dX)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        distgmm.GaussianMixture(k, max_iter=1).fit(dX)  # the workers load the kernels
    runs: dict[str, list[dict]] = {"scikit-learn": [], **{init: [] for init in inits},
                                   "cli": []}
    for seed in seeds:
        runs["scikit-learn"].append(sklearn_fit(X, k, seed))
        for init in inits:
            runs[init].append(distgmm_fit(dX, k, seed, init))
        if seed in cli_seeds:
            runs["cli"].append(cli_fit(store, k, seed, work))
        line = "  ".join(
            f"{name} {r[-1]['total']:.2f} s" +
            (f" (init {r[-1]['init']:.2f})" if "init" in r[-1] else "") +
            f" {r[-1]['n_iter']} it {r[-1]['lower_bound']:.5f}"
            for name, r in runs.items() if r and len(r) == len(runs["scikit-learn"]))
        print(f"  seed {seed}: {line}", flush=True)
    client.cancel(dX)
    del X
    print_table([((n, d, k), runs)], header=False)
    return runs


def print_table(rows: list, header: bool = True) -> None:
    """One table row per fit kind and size: totals, ratio, initialisation, iterations and
    lower bounds over the seeds."""
    if header:
        print("\n| N, D, K | fit | total s, median (range) | ratio to scikit-learn | "
              "initialisation s (share) | EM s | EM iterations | lower bound median | worst |")
        print("|---|---|---|---|---|---|---|---|---|")
    for (n, d, k), runs in rows:
        sk = _summary(runs["scikit-learn"], "total")[0]
        for name, r in runs.items():
            if not r:
                continue
            total = _summary(r, "total")
            bounds = [x["lower_bound"] for x in r]
            init = (f"{_summary(r, 'init')[0]:.2f} ({_summary(r, 'init')[0] / total[0]:.0%})"
                    if "init" in r[0] else "")
            em = f"{_summary(r, 'em')[0]:.2f}" if "em" in r[0] else ""
            iters = sorted({x["n_iter"] for x in r})
            print(f"| {n:.2g}, {d}, {k} | {name} | {total[0]:.2f} ({total[1]:.2f}-{total[2]:.2f})"
                  f" | {sk / total[0]:.1f}x | {init} | {em} | {'/'.join(map(str, iters))} | "
                  f"{np.median(bounds):.5f} | {min(bounds):.5f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="*", type=parse_size, default=DEFAULT_SIZES,
                        help="N,D,K (e.g. 4e6,8,16)")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--cli-seeds", type=int, default=3,
                        help="seeds (the first ones) for which the CLI is timed too")
    parser.add_argument("--inits", nargs="*", default=["kmeans"],
                        help="distgmm init_params to time (default: kmeans, the default)")
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "distgmm-bench"),
                        help="directory for the generated stores (kept and reused)")
    args = parser.parse_args()
    os.makedirs(args.work, exist_ok=True)
    print(f"load average at start: {os.getloadavg()}", flush=True)
    client = local_cluster_client(2, memory_limit="8GiB")
    rows = []
    with client.cluster, client, client.as_current():
        for n, d, k in args.sizes:
            print(f"({n:.2g}, {d}, {k})", flush=True)
            runs = bench_size(client, n, d, k, list(range(args.seeds)), args.inits,
                              set(range(args.cli_seeds)), args.work)
            rows.append(((n, d, k), runs))
    print(f"load average at end: {os.getloadavg()}")
    print_table(rows)


if __name__ == "__main__":
    main()
