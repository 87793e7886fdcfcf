"""Optional peer benchmark: Spark MLlib's GaussianMixture (pyspark, local[2]) per EM iteration.

Needs Java 17 and ``pip install pyspark``. Run from the repository root::

    python bench/bench_spark.py --sizes 1e6,8,8

The data is the same as ``bench_em.py``'s (same generator and seed), written to Parquet,
read by Spark, assembled into vectors and cached before timing. Spark MLlib only fits full
covariances and cannot be started from given parameters, so the per-iteration time is
``(t(maxIter=n) - t(maxIter=1)) / (n - 1)`` with ``tol=0``, which removes the start-up and
initialisation from the figure. Compare with the distgmm column of ``bench_em.py`` at the
same size.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import pyarrow as pa
import pyarrow.parquet as pq

from bench_em import make_data, parse_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="*", type=parse_size,
                        default=[parse_size("1e6,8,8"), parse_size("1e6,2,4")])
    parser.add_argument("--iters", type=int, default=6)
    parser.add_argument("--driver-memory", default="8g")
    args = parser.parse_args()

    from pyspark.ml.clustering import GaussianMixture
    from pyspark.ml.feature import VectorAssembler
    from pyspark.sql import SparkSession

    spark = (SparkSession.builder.master("local[2]")
             .config("spark.driver.memory", args.driver_memory)
             .config("spark.ui.enabled", "false")
             .config("spark.sql.shuffle.partitions", "4")
             .getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    with tempfile.TemporaryDirectory() as tmp:
        for n, d, k, _ in args.sizes:
            X = make_data(n, d, k)
            path = os.path.join(tmp, f"x{n}-{d}.parquet")
            pq.write_table(pa.table({f"x{j}": X[:, j] for j in range(d)}), path)
            frame = VectorAssembler(inputCols=[f"x{j}" for j in range(d)],
                                    outputCol="features").transform(spark.read.parquet(path))
            frame = frame.select("features").repartition(4).cache()
            frame.count()

            def fit(iters: int) -> float:
                t = time.perf_counter()
                GaussianMixture(k=k, maxIter=iters, tol=0.0, seed=1).fit(frame)
                return time.perf_counter() - t

            fit(1)
            t1 = min(fit(1) for _ in range(2))
            tn = fit(args.iters)
            per_it = (tn - t1) / (args.iters - 1)
            print(f"spark MLlib local[2] ({n:.0e}, {d}, {k}) full: {per_it:.3f} s/iteration "
                  f"(maxIter=1: {t1:.2f} s, maxIter={args.iters}: {tn:.2f} s)", flush=True)
            frame.unpersist()
    spark.stop()


if __name__ == "__main__":
    main()
