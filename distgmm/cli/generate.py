"""``distgmm generate``: write a synthetic Gaussian-mixture point store on Dask."""

from __future__ import annotations

from typing import Annotated

import typer

from distgmm.cli._options import (
    ClusterOptions, DType, LockWait, Output, StorageOption, command, dask_client, handle_errors,
    storage_options,
)
from distgmm.errors import DistgmmInputError

__all__ = ["generate"]


@command(cluster=True)
def generate(
    store: Annotated[str, typer.Argument(help="Destination store (path or URL).")],
    points: Annotated[int | None, typer.Option("--points", help="Rows [default: 10000000].")] = None,
    features: Annotated[int | None, typer.Option("--features", help="Features [default: 8].")] = None,
    components: Annotated[int | None, typer.Option("--components", help="Mixture components [default: 8].")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Random seed (default: random, recorded in the store).")] = None,
    dtype: Annotated[DType, typer.Option("--dtype", help="Stored dtype.")] = DType.float32,
    chunk_rows: Annotated[int | None, typer.Option("--chunk-rows", min=1, help="Rows per chunk (default: ~16 MiB of points).")] = None,
    preset: Annotated[str | None, typer.Option("--preset", help="Named data set: seed-blobs (300 points around (0,0), std 1.2; 600 around (3,3), std 1.8).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing point store.")] = False,
    lock_wait: LockWait = None,
    storage_option: StorageOption = None,
    *,
    cluster: ClusterOptions,
    output: Output,
) -> None:
    """Generate synthetic Gaussian-mixture data into STORE, chunk by chunk in parallel."""
    from distgmm.store import generate as generate_store
    from distgmm.store._generate import check_generate

    with handle_errors(output):
        if preset is not None and any(v is not None for v in (points, features, components)):
            raise DistgmmInputError(
                f"--preset {preset} fixes the points, features and components; drop "
                "--points/--features/--components or the preset.")
        sizes = dict(n_points=10_000_000 if points is None else points,
                     n_features=8 if features is None else features,
                     n_components=8 if components is None else components)
        check_generate(store, **sizes, dtype=dtype.value, chunk_rows=chunk_rows,
                       preset=preset, overwrite=overwrite,
                       storage_options=storage_options(storage_option))
        options = cluster
        with dask_client(options, output) as client:
            report = generate_store(
                store, **sizes, seed=seed, dtype=dtype.value,
                chunk_rows=chunk_rows, preset=preset, overwrite=overwrite,
                storage_options=storage_options(storage_option), client=client,
                lock_wait=lock_wait)
        result = report.to_dict()
        if output.json:
            output.emit_json({**result, "rows_written": result["n_rows"]})
        else:
            output.out.print(
                f"wrote {result['n_rows']:,} x {result['n_features']} {result['dtype']} rows "
                f"({result['n_components']} components, seed {result['seed']}) to {store} "
                f"in {result['n_chunks']} chunks, {result['seconds']:.1f} s "
                f"({result['rows_per_second']:,.0f} rows/s)", highlight=False)
