"""``distgmm info``: describe a point store (geometry, codec, size, arrays, labels, feature ranges)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from distgmm.cli._options import (
    ClusterOptions, Output, StorageOption, Variable, command, dask_client, handle_errors,
    points_url, storage_options,
)

__all__ = ["info"]


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _render(output: Output, result: dict) -> None:
    summary = Table(title=result["store"], show_header=False)
    summary.add_column(style="bold")
    summary.add_column()
    summary.add_row("rows", f"{result['n_rows']:,}")
    summary.add_row("features", str(result["n_features"]))
    summary.add_row("dtype", result["dtype"])
    summary.add_row("chunking", f"{result['chunk_rows']:,} rows x {result['n_chunks']} chunks")
    summary.add_row("codec", ", ".join(result["codec"]))
    if result.get("foreign"):
        summary.add_row("kind", f"{result['foreign']} (read-only: not a distgmm point store)")
        summary.add_row("stored as", f"{result['stored_dtype']}, chunks "
                        f"{' x '.join(map(str, result['stored_chunks']))}")
    summary.add_row("checksums", "crc32c per chunk, missing chunks detected" if
                    result["checksums"] else "none" if result.get("foreign") else
                    f"none (schema {result['schema_version']} store)")
    summary.add_row("size on disk", f"{_size(result['bytes_on_disk'])} "
                    f"({_size(result['bytes_uncompressed'])} of points uncompressed)")
    summary.add_row("arrays", ", ".join(a["name"] for a in result["arrays"]))
    output.out.print(summary)
    if result["labels"]:
        labels = Table(title="label sets")
        for col in ("name", "model", "chunks done", "complete"):
            labels.add_column(col)
        for state in result["labels"]:
            labels.add_row(state["name"], state["model_fingerprint"],
                           f"{len(state['chunks_done'])}/{state['n_chunks']}",
                           "yes" if state["complete"] else "no")
        output.out.print(labels)
    if result.get("features"):
        features = Table(title="features")
        for col in ("name", "min", "max", "mean"):
            features.add_column(col, justify="right" if col != "name" else "left")
        for f in result["features"]:
            features.add_row(f["name"], f"{f['min']:.6g}", f"{f['max']:.6g}", f"{f['mean']:.6g}")
        output.out.print(features)


@command(cluster=True)
def info(
    store: Annotated[str, typer.Argument(help="Point store (path or URL).")],
    stats: Annotated[bool, typer.Option("--stats/--no-stats", help="Compute per-feature min/max/mean on Dask (one pass).")] = True,
    variable: Variable = None,
    storage_option: StorageOption = None,
    *,
    cluster: ClusterOptions,
    output: Output,
) -> None:
    """Describe the point store STORE: rows, features, dtype, chunking, codec, size, arrays, labels."""
    from distgmm.store import open_points, store_info

    with handle_errors(output):
        options = storage_options(storage_option)
        store = points_url(store, variable)
        open_points(store, options)  # fail on a bad store before starting a cluster
        if stats:
            with dask_client(cluster, output) as client:
                result = store_info(store, storage_options=options, client=client)
        else:
            result = store_info(store, storage_options=options, stats=False)
        if output.json:
            output.emit_json(result)
        else:
            _render(output, result)
