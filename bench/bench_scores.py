"""What scores cost the label job: labels alone against labels with scores and outlier flags.

Writes one (N, D) float32 store of K components with ``distgmm generate``, fits a model of
each covariance type asked for (a few iterations), then times, best of ``--repeats`` and
interleaved so that the machine's drift hits both alike, the label job
(``distgmm.jobs.label_store``) over the whole store on a local cluster of 2 single-threaded
workers, relabelling every chunk into a fresh label set each run:

* labels alone (``labels/<name>``);
* with ``scores=True`` (also ``scores/<name>`` float32, ``outliers/<name>`` bool, each
  chunk's score figures in the label state, and the drift report).

Each repeat runs the two jobs back to back; the median of the pairs' ratios is the figure
the machine's drift moves least.

The label job's wall time on this shared machine moves by tens of percent from run to
run, so it also measures, in this process and in CPU time (best of ``--repeats``), what
each worker does per chunk: the whole chunk function of the label job (read the chunk
from the store, label it, write its arrays), the kernels behind it (labels alone; labels
and scores from one E-step), and the EM statistics with and without the score sketch a fit
now computes in every pass. Last, the two kernels on in-memory data whose components
overlap more or less, since only rows between components pay the scores' log-sum-exp.

    python bench/bench_scores.py --rows 1e6 --features 8 --components 8 --repeats 15
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import numpy as np


def best_cpu(fn, repeats: int) -> float:
    """Best CPU time (seconds) of this process over ``repeats`` calls, after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return min(times)


def per_chunk(store: str, model: str, names: tuple[str, str], repeats: int
              ) -> dict[str, float]:
    """CPU seconds of one worker's work on the first chunk, in this process (one thread)."""
    import zarr
    from threadpoolctl import threadpool_limits

    from distgmm._scores import score_block, score_upper_bound, scored_statistics
    from distgmm._statistics import chunk_statistics, label_block
    from distgmm.jobs._labeller import LabelTarget, _write_chunk, model_parameters
    from distgmm.store import open_points, read_model
    from distgmm.store._integrity import read_block
    from distgmm.store._location import StoreLocation

    loaded = read_model(model)
    params, profile = model_parameters(loaded.model), loaded.model.training_scores_
    location = StoreLocation(store)
    points = zarr.open_array(location.zarr_store(read_only=True), path="points", mode="r")
    rows = points.chunks[0]
    X = read_block(points, (slice(0, rows),))
    starts = np.arange(0, open_points(store).n_rows, rows)
    plain = LabelTarget(location, f"labels/{names[0]}", refuse_nonfinite=True)
    scored = LabelTarget(location, f"labels/{names[1]}", refuse_nonfinite=True,
                         scores=f"scores/{names[1]}", outliers=f"outliers/{names[1]}",
                         threshold=profile.outlier_threshold)
    upper = score_upper_bound(params)

    def chunk(target):
        return lambda: _write_chunk(read_block(points, (slice(0, rows),)), None, 0, params,
                                    target, starts, "bench")

    with threadpool_limits(limits=1, user_api="blas"):
        return {
            "chunk (read, label, write)": best_cpu(chunk(plain), repeats),
            "chunk with scores": best_cpu(chunk(scored), repeats),
            "labels kernel": best_cpu(lambda: label_block(params, X), repeats),
            "labels+scores kernel": best_cpu(lambda: score_block(params, X), repeats),
            "EM statistics": best_cpu(lambda: chunk_statistics(X, None, params), repeats),
            "EM statistics+sketch": best_cpu(lambda: scored_statistics(X, None, params, upper),
                                             repeats),
        }


def kernels_by_overlap(rows: int, features: int, components: int, repeats: int) -> None:
    """The labels kernel against labels and scores on in-memory data whose components
    overlap more or less (means drawn with spread 0.5, 3 and 20 around unit-variance
    noise): the share of rows that need the log-sum-exp decides what scores cost."""
    from sklearn.mixture import GaussianMixture
    from threadpoolctl import threadpool_limits

    from distgmm._scores import score_block
    from distgmm._statistics import MixtureParams, label_block

    rng = np.random.default_rng(0)
    for spread in (0.5, 3.0, 20.0):
        means = rng.normal(0, spread, (components, features))
        X = (means[rng.integers(0, components, rows)]
             + rng.normal(0, 1, (rows, features))).astype(np.float32)
        for kind in ("full", "diag"):
            sample = X[:50_000].astype(np.float64)
            ref = GaussianMixture(components, covariance_type=kind, max_iter=3,
                                  random_state=0).fit(sample)
            params = MixtureParams.of_model(ref)
            top2 = np.sort(ref._estimate_weighted_log_prob(sample), axis=1)[:, -2:]
            cut = np.log(2.0 ** -56 / (components - 1))  # the kernel's (_runner_up_cut)
            share = np.mean(top2[:, 0] - top2[:, 1] >= cut)
            with threadpool_limits(limits=1, user_api="blas"):
                t0 = best_cpu(lambda: label_block(params, X), repeats)
                t1 = best_cpu(lambda: score_block(params, X), repeats)
            print(f"  spread {spread:>4}, {kind}: {100 * share:5.1f}% of rows need the sum; "
                  f"labels kernel {1000 * t0:.1f} ms, labels and scores {1000 * t1:.1f} ms "
                  f"({100 * (t1 / t0 - 1):+.0f}%)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=float, default=1e6)
    parser.add_argument("--features", type=int, default=8)
    parser.add_argument("--components", type=int, default=8)
    parser.add_argument("--covariance-types", default="full,diag")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--dir", default=None, help="where the store goes (default: a temp dir)")
    args = parser.parse_args()

    from distgmm.cluster import local_cluster_client
    from distgmm.jobs import fit_store, label_store
    from distgmm.store import generate, store_info

    work = args.dir or tempfile.mkdtemp(prefix="bench-scores-")
    store = os.path.join(work, "points.zarr")
    client = local_cluster_client(2, memory_limit="4GiB")
    cluster = client.cluster
    try:
        generate(store, n_points=int(args.rows), n_features=args.features,
                 n_components=args.components, seed=0, overwrite=True, client=client)
        info = store_info(store, stats=False)
        print(f"{int(args.rows):,} x {args.features} float32 points, {info['n_chunks']} chunks "
              f"of {info['chunk_rows']:,} rows, K={args.components}")
        for kind in args.covariance_types.split(","):
            model = os.path.join(work, f"{kind}.npz")
            fit_store(store, model, n_components=args.components, covariance_type=kind,
                      max_iter=5, seed=0, overwrite=True, client=client)
            for warm in (False, True):  # compile the workers' kernels once
                label_store(model, store, name=f"warm-{kind}-{warm}", scores=warm,
                            client=client)
            plain, scored = [], []
            for i in range(args.repeats):
                plain.append(label_store(model, store, name=f"{kind}-l{i}",
                                         client=client).seconds)
                scored.append(label_store(model, store, name=f"{kind}-s{i}", scores=True,
                                          client=client).seconds)
            b0, b1 = min(plain), min(scored)
            m0, m1 = np.median(plain), np.median(scored)
            paired = np.median(np.array(scored) / np.array(plain))
            print(f"{kind:>9}: label job {b0:.3f} s, with scores {b1:.3f} s: "
                  f"{100 * (b1 / b0 - 1):+.1f}% best of {args.repeats} "
                  f"(medians {m0:.3f} / {m1:.3f} s: {100 * (m1 / m0 - 1):+.1f}%; "
                  f"median of the paired runs' ratios {100 * (paired - 1):+.1f}%)")
            times = per_chunk(store, model, (f"{kind}-l0", f"{kind}-s0"), args.repeats)
            print("           one chunk, CPU in this process: " + ", ".join(
                f"{name} {1000 * t:.1f} ms" for name, t in times.items()))
            c0, c1 = times["chunk (read, label, write)"], times["chunk with scores"]
            print(f"           a worker's work per chunk: {100 * (c1 / c0 - 1):+.1f}% with "
                  "scores")
        print(f"kernels on {int(args.rows) // 2:,} in-memory rows by how much the components "
              "overlap, CPU in this process:")
        kernels_by_overlap(int(args.rows) // 2, args.features, args.components, args.repeats)
    finally:
        client.close()
        cluster.close()
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
