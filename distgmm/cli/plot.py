"""``distgmm plot``: a model drawn over a store's points (markers or chunked density), or a label set's scores and drift history, as a PNG."""

from __future__ import annotations

from typing import Annotated

import typer

from distgmm.cli._options import (
    ClusterOptions, Output, StorageOption, Variable, command, dask_client, handle_errors,
    points_url, storage_options,
)

__all__ = ["plot"]


@command(cluster=True)
def plot(
    model: Annotated[str, typer.Argument(help="Model file (from distgmm fit/select).")],
    store: Annotated[str, typer.Argument(help="Point store (path or URL).")],
    out: Annotated[str, typer.Option("--out", "-o", help="PNG file to write.")],
    labels: Annotated[str | None, typer.Option("--labels", help="Color by the stored labels/NAME instead of predicting.")] = None,
    features: Annotated[str | None, typer.Option("--features", help="Columns to show, e.g. 0,3 (more than two: a pair grid).")] = None,
    projection: Annotated[str, typer.Option("--projection", help="auto, pca, features or pairs.")] = "auto",
    density: Annotated[str, typer.Option("--density", help="auto, on or off: per-label 2-D histograms computed chunk by chunk.")] = "auto",
    width: Annotated[int, typer.Option("--width", help="Image width in pixels.")] = 1000,
    height: Annotated[int, typer.Option("--height", help="Image height in pixels.")] = 800,
    scores: Annotated[str | None, typer.Option("--scores", metavar="NAME", help="Instead of the points: the score histograms of label set NAME (written with label --scores) against the training scores, and its drift history.")] = None,
    drift_threshold: Annotated[float, typer.Option("--drift-threshold", metavar="Z", help="With --scores: standard errors at which drift is reported (as label's).")] = 4.0,
    variable: Variable = None,
    storage_option: StorageOption = None,
    *,
    cluster: ClusterOptions,
    output: Output,
) -> None:
    """Draw MODEL over the points of STORE: labels, means, 1/2/3-sigma ellipses, boundary.

    More than two features are projected on the first two principal components (computed
    on Dask) unless --features picks columns. Large stores are drawn as per-label density.
    With --scores NAME: the scores of that label set, batch by batch, against the model's
    training scores, and each batch's mean score and outlier rate over time.
    """
    from distgmm.jobs._common import check_figure_destination
    from distgmm.jobs._plot import plot_store
    from distgmm.store import open_points, read_model

    with handle_errors(output):
        options = storage_options(storage_option)
        store = points_url(store, variable)
        read_model(model, options)  # fail on bad input before starting a cluster
        open_points(store, options)
        check_figure_destination(out, "--out", options)
        with dask_client(cluster, output) as client:
            report = plot_store(model, store, out, labels=labels, features=features,
                                projection=projection, density=density, width=width,
                                height=height, client=client, storage_options=options,
                                scores=scores, drift_threshold=drift_threshold)
        result = report.to_dict()
        if output.json:
            output.emit_json(result)
        elif scores is not None:
            output.out.print(f"wrote {result['out']} ({result['width']}x{result['height']}, "
                             f"scores and drift of labels/{scores}) in "
                             f"{result['seconds']:.2f} s", highlight=False)
        else:
            output.out.print(f"wrote {result['out']} ({result['width']}x{result['height']}, "
                             f"{result['n_rows']:,} points, "
                             f"{'density' if result['density'] else 'markers'}) in "
                             f"{result['seconds']:.2f} s", highlight=False)
