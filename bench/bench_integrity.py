"""What the per-chunk checksums cost: reading a point store with and without them.

Writes one (N, D) float32 store with ``distgmm generate`` (schema 2: zstd + crc32c per chunk)
and a copy of the same rows without checksums (schema 1: zstd only), then times, best of
``--repeats``:

* reading every chunk in this process, one chunk at a time (``read_block``, the getter of
  the store's dask arrays): decompression plus, for schema 2, the CRC-32C;
* the label job (``distgmm.jobs.label_store``) over the whole store on a local cluster of
  2 single-threaded workers, relabelling every chunk (a fresh label set each run).

    python bench/bench_integrity.py --rows 1e6 --features 8 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import numpy as np
import zarr
from zarr.codecs import ZstdCodec


def copy_without_checksums(src: str, dst: str) -> None:
    group = zarr.open_group(src, mode="r")
    meta = dict(group.attrs["distgmm"])
    meta["schema_version"] = 1
    out = zarr.create_group(dst, attributes={"distgmm": meta})
    points = group["points"]
    copy = out.create_array("points", shape=points.shape, chunks=points.chunks,
                            dtype=points.dtype, compressors=[ZstdCodec(level=3)],
                            fill_value=0.0, attributes=dict(points.attrs))
    for start in range(0, points.shape[0], points.chunks[0]):
        copy[start:start + points.chunks[0]] = points[start:start + points.chunks[0]]


def read_all(url: str) -> float:
    from distgmm.store._integrity import read_block
    from distgmm.store._location import StoreLocation

    array = zarr.open_array(StoreLocation(url).zarr_store(read_only=True), path="points",
                            mode="r")
    rows = array.chunks[0]
    t0 = time.perf_counter()
    for start in range(0, array.shape[0], rows):
        read_block(array, (slice(start, start + rows),))
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=float, default=1e6)
    parser.add_argument("--features", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", default=None, help="where the stores go (default: a temp dir)")
    args = parser.parse_args()

    from distgmm.cluster import local_cluster_client
    from distgmm.jobs import fit_store, label_store
    from distgmm.store import generate, store_info

    work = args.dir or tempfile.mkdtemp(prefix="bench-integrity-")
    checked, plain = os.path.join(work, "checked.zarr"), os.path.join(work, "plain.zarr")
    client = local_cluster_client(2, memory_limit="4GiB")
    cluster = client.cluster
    try:
        generate(checked, n_points=int(args.rows), n_features=args.features, n_components=8,
                 seed=0, overwrite=True, client=client)
        shutil.rmtree(plain, ignore_errors=True)
        copy_without_checksums(checked, plain)
        model = os.path.join(work, "m.npz")
        fit_store(checked, model, n_components=8, covariance_type="diag", max_iter=3, seed=0,
                  overwrite=True, client=client)
        info = store_info(checked, stats=False)
        print(f"{int(args.rows):,} x {args.features} float32 points, {info['n_chunks']} chunks "
              f"of {info['chunk_rows']:,} rows, {info['bytes_on_disk'] / 2**20:.1f} MiB on disk")
        stores = {"without checksums": plain, "with checksums": checked}
        label_store(model, checked, name="warm-up", client=client)
        reads: dict[str, list[float]] = {k: [] for k in stores}
        jobs: dict[str, list[float]] = {k: [] for k in stores}
        for i in range(args.repeats):  # interleaved, so drift hits both alike
            for label, url in stores.items():
                reads[label].append(read_all(url))
                jobs[label].append(label_store(model, url, name=f"b{i}", client=client).seconds)
        for label in stores:
            print(f"{label:>18}: read every chunk {min(reads[label]) * 1000:7.1f} ms "
                  f"(median {np.median(reads[label]) * 1000:.1f}); label job "
                  f"{min(jobs[label]):.3f} s (median {np.median(jobs[label]):.3f})")
        r0, r1 = (min(reads[k]) for k in stores)
        j0, j1 = (min(jobs[k]) for k in stores)
        print(f"checksums cost (best of {args.repeats}): read {100 * (r1 / r0 - 1):+.1f}%, "
              f"label job {100 * (j1 / j0 - 1):+.1f}%")
    finally:
        client.close()
        cluster.close()
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
