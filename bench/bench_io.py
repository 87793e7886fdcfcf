"""Data in and out: ingest throughput of CSV and Parquet sources, and export throughput.

Writes an (N, D) float64 table as CSV and as Parquet (pandas), then times, best of
``--repeats``, ``distgmm.store.ingest`` of each into a new store in this process (reading,
the source's SHA-256 and the store's writes). Then generates an (N, D) store, labels it
with probabilities on a local cluster of 2 single-threaded workers, and times
``export_labels`` to Parquet and to CSV (one part file per chunk, written by the workers).

    python bench/bench_io.py --rows 1e6 --features 8 --repeats 2

Run it with ``PYTHONPATH`` pointing at another checkout to compare ingest readers.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import numpy as np
import pandas as pd


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=float, default=1e6)
    parser.add_argument("--features", type=int, default=8)
    parser.add_argument("--chunk-rows", type=int, default=250_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-export", action="store_true")
    args = parser.parse_args()
    n, d = int(args.rows), args.features
    from distgmm.store import ingest

    directory = tempfile.mkdtemp(prefix="distgmm-bench-io-")
    try:
        frame = pd.DataFrame(np.random.default_rng(1).normal(size=(n, d)),
                             columns=[f"c{i}" for i in range(d)])
        sources = {"csv": os.path.join(directory, "t.csv"),
                   "parquet": os.path.join(directory, "t.parquet")}
        frame.to_csv(sources["csv"], index=False)
        frame.to_parquet(sources["parquet"])
        store = os.path.join(directory, "s.zarr")
        for kind, path in sources.items():
            def run(path=path):
                shutil.rmtree(store, ignore_errors=True)
                ingest(path, store)

            seconds = best(run, args.repeats)
            print(f"ingest {kind:8s} {os.path.getsize(path) / 2**20:7.1f} MiB  {seconds:6.2f} s  "
                  f"{n / seconds:12,.0f} rows/s")
        if args.no_export:
            return
        from distgmm.cluster import local_cluster_client
        from distgmm.jobs import fit_store, label_store
        from distgmm.jobs._export import export_labels
        from distgmm.store import generate

        client = local_cluster_client(2, 1, None)
        try:
            generated = os.path.join(directory, "g.zarr")
            generate(generated, n_points=n, n_features=d, n_components=4, seed=0,
                     chunk_rows=args.chunk_rows, client=client)
            model = os.path.join(directory, "m.npz")
            fit_store(generated, model, n_components=4, max_iter=3, seed=0, client=client)
            label_store(model, generated, name="a", proba=True, client=client)
            for fmt in ("parquet", "csv"):
                out = os.path.join(directory, f"labels.{fmt}")
                report = None

                def run(out=out, fmt=fmt):
                    nonlocal report
                    report = export_labels(generated, out, name="a", proba=True,
                                           overwrite=True, client=client)

                seconds = best(run, args.repeats)
                size = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
                print(f"export {fmt:8s} {report.n_files} files {size / 2**20:7.1f} MiB  "
                      f"{seconds:6.2f} s  {n / seconds:12,.0f} rows/s")
        finally:
            cluster = client.cluster
            client.close()
            cluster.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
