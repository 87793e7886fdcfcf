"""``distgmm fit``: fit a mixture on a point store with live per-iteration progress; write the model file."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any

import typer
from rich.table import Table

from distgmm.errors import DistgmmInputError

from distgmm.cli._progress_view import ProgressView
from distgmm.cli._options import (
    ClusterOptions, Output, StorageOption, Variable, command, dask_client, handle_errors,
    points_url, storage_options,
)

__all__ = ["fit", "CovarianceType", "InitMethod", "WeightPrior", "iteration_printer",
           "render_fit"]


class CovarianceType(str, Enum):
    """Covariance parameterisations."""

    full = "full"
    tied = "tied"
    diag = "diag"
    spherical = "spherical"


class WeightPrior(str, Enum):
    """Weight priors of a Bayesian mixture."""

    dirichlet_process = "dirichlet_process"
    dirichlet_distribution = "dirichlet_distribution"


class InitMethod(str, Enum):
    """Initialisation methods (see distgmm.engine.init)."""

    kmeans = "kmeans"
    kmeans_parallel = "k-means||"
    kmeans_plusplus = "k-means++"
    random = "random"
    random_from_data = "random_from_data"


def iteration_printer(output: Output):
    """An ``on_iteration`` callback printing one progress line per EM iteration on stderr."""
    def show(info: Any) -> None:
        mark = "  converged" if info.converged else ""
        output.message(f"init {info.restart + 1} iteration {info.iteration:>4}  lower bound "
                       f"{info.lower_bound:>14.6f}  change {info.change:>+11.3e}  "
                       f"{info.seconds:6.2f} s{mark}")
    return show


def render_fit(output: Output, result: dict[str, Any]) -> None:
    """The summary table of a fit on stdout."""
    table = Table(title=f"fit {result['model']}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("store", f"{result['store']} ({result['n_rows']:,} rows x "
                  f"{result['n_features']} features{', weighted' if result['weighted'] else ''})")
    if result.get("prior"):
        table.add_row("model", f"Bayesian, at most {result['n_components']} components "
                      f"({result['prior']} prior), {result['covariance_type']} covariance")
        table.add_row("components kept", f"{result['components_kept']} of "
                      f"{result['n_components']} (posterior weight above 1%)")
    else:
        table.add_row("model", f"{result['n_components']} components, "
                      f"{result['covariance_type']} covariance")
    table.add_row("iterations", f"{result['n_iter']} (n_init {result['n_init']})")
    table.add_row("converged", "yes" if result["converged"] else "NO")
    table.add_row("lower bound", f"{result['lower_bound']:.6f}")
    table.add_row("fit time", f"{result['fit_seconds']:.2f} s (total {result['seconds']:.2f} s)")
    if result["checkpoint"]:
        table.add_row("checkpoint", f"{result['checkpoint']}"
                      f"{' (resumed)' if result['resumed'] else ''}, removed")
    if result["aligned_to"]:
        table.add_row("aligned to", f"{result['aligned_to']} (new ids <- components "
                      f"{result['permutation']})")
    if result.get("outlier_threshold") is not None:
        table.add_row("outliers", f"score < {result['outlier_threshold']:.4f} "
                      f"(the {result['outlier_quantile']:g} quantile of the training scores)")
    if result.get("plot"):
        table.add_row("convergence plot", result["plot"])
    table.add_row("fingerprint", result["fingerprint"][:16])
    output.out.print(table)


@command(cluster=True)
def fit(
    store: Annotated[str, typer.Argument(help="Point store (path or URL).")],
    components: Annotated[int, typer.Option("--components", "-k", help="Number of mixture components.")],
    model: Annotated[str, typer.Option("--model", "-o", help="Model file to write (.npz).")],
    covariance_type: Annotated[CovarianceType, typer.Option("--covariance-type", help="Covariance parameterisation.")] = CovarianceType.full,
    tol: Annotated[float, typer.Option("--tol", help="Convergence threshold on the change of the mean log-likelihood.")] = 1e-3,
    max_iter: Annotated[int, typer.Option("--max-iter", help="EM iterations per initialisation.")] = 100,
    n_init: Annotated[int, typer.Option("--n-init", help="Initialisations; the best is kept.")] = 1,
    init: Annotated[InitMethod, typer.Option("--init", help="Initialisation method.")] = InitMethod.kmeans,
    reg_covar: Annotated[float, typer.Option("--reg-covar", help="Added to covariance diagonals.")] = 1e-6,
    seed: Annotated[int | None, typer.Option("--seed", help="Random seed (default: fresh entropy, kept in the checkpoint).")] = None,
    weights: Annotated[bool, typer.Option("--weights", help="Use the store's 'weights' array as sample weights.")] = False,
    checkpoint: Annotated[str | None, typer.Option("--checkpoint", metavar="DIR", help="Checkpoint every iteration to DIR/<model name>.ckpt.npz (removed when the model is written).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the checkpoint in --checkpoint DIR if there is one (else start).")] = False,
    align_to: Annotated[str | None, typer.Option("--align-to", metavar="OLD_MODEL", help="Renumber components to match this model's label ids.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing model file.")] = False,
    plot: Annotated[bool, typer.Option("--plot", help="Also write the convergence curve next to the model (<model>.convergence.png).")] = False,
    bayesian: Annotated[bool, typer.Option("--bayesian", help="Fit a Bayesian (variational) mixture: --components is an upper bound, and the weight prior switches off the components the data do not need.")] = False,
    prior: Annotated[WeightPrior | None, typer.Option("--prior", help="With --bayesian: the weight prior (default: dirichlet_process).")] = None,
    weight_concentration: Annotated[float | None, typer.Option("--weight-concentration", metavar="X", help="With --bayesian: the weight concentration prior (default 1/K; smaller keeps fewer components).")] = None,
    outlier_quantile: Annotated[float, typer.Option("--outlier-quantile", metavar="Q", help="Record the outlier threshold below which this fraction of the training points score (label --scores flags points below it).")] = 0.001,
    variable: Variable = None,
    storage_option: StorageOption = None,
    *,
    cluster: ClusterOptions,
    output: Output,
) -> None:
    """Fit a Gaussian mixture with COMPONENTS components to STORE and write it to MODEL
    (with --bayesian, a variational mixture of at most COMPONENTS components).

    With --checkpoint DIR every completed iteration is saved atomically; after a crash or a
    kill, the same command with --resume continues and writes exactly the model an
    uninterrupted fit would have. Without --resume an existing checkpoint is refused.
    """
    from distgmm.jobs import fit_store
    from distgmm.jobs._fit import check_fit_outputs, check_outlier_quantile
    from distgmm.store import open_points, read_model

    with handle_errors(output):
        options = storage_options(storage_option)
        store = points_url(store, variable)
        if not bayesian and (prior is not None or weight_concentration is not None):
            raise DistgmmInputError("--prior and --weight-concentration apply to a Bayesian "
                                    "mixture; add --bayesian, or drop them.")
        if weight_concentration is not None and not weight_concentration > 0:
            raise DistgmmInputError(f"--weight-concentration must be positive, got "
                                    f"{weight_concentration}.")
        open_points(store, options)  # fail on bad input before starting a cluster
        check_outlier_quantile(outlier_quantile)
        check_fit_outputs(model, overwrite=overwrite, checkpoint_dir=checkpoint, plot=plot,
                          storage_options=options)
        if align_to is not None:
            read_model(align_to, options)
        with dask_client(cluster, output) as client, ProgressView(output) as progress:
            report = fit_store(
                store, model, n_components=components, covariance_type=covariance_type.value,
                tol=tol, max_iter=max_iter, n_init=n_init, init_params=init.value,
                reg_covar=reg_covar, seed=seed, weights=weights, checkpoint_dir=checkpoint,
                resume=resume, align_to=align_to, overwrite=overwrite, client=client,
                storage_options=options, on_iteration=iteration_printer(output), plot=plot,
                prior=(prior or WeightPrior.dirichlet_process).value if bayesian else None,
                weight_concentration=weight_concentration, outlier_quantile=outlier_quantile,
                on_pass=progress.on_pass)
            result = report.to_dict()
        if output.json:
            output.emit_json(result)
        else:
            render_fit(output, result)
