"""A fit's starting parameters, from passes over the data (never pulling it to the client).

``kmeans`` (the default, scikit-learn's name; on a cluster it differs from scikit-learn's
in where k-means runs)
    One pass draws a uniform sample: each row is kept with probability ``size / N`` (the
    number kept in a chunk is binomial, which rows from the chunk's own stream), where
    ``size`` is :data:`INIT_SAMPLE_ROWS` or :data:`INIT_SAMPLE_ROWS_PER_COMPONENT` per
    component, whichever is larger; the whole data when it has fewer rows. On this
    process, k-means clusters the sample (scikit-learn's ``KMeans`` algorithm, compiled:
    greedy k-means++ seeding, then Lloyd's iterations to its tolerance, with the rows'
    weights; :mod:`distgmm._kmeans`), keeping the lowest inertia of
    :data:`INIT_SAMPLE_KMEANS_RUNS` runs (fewer for large K, see
    :data:`INIT_SAMPLE_KMEANS_WORK`). The start is the M-step of the
    sample's hard assignments, their counts and scatter scaled to the data's total weight.
    So it costs one pass whatever K and ``n_init`` per restart, shared by the model-selection
    candidates of that restart, where scikit-learn's ``kmeans`` runs k-means over all the
    data. A sample with fewer than K distinct rows (of positive weight) falls back to exact
    k-means++ seeding and Lloyd's iterations over all the data, which find rare distinct
    rows or say that there are too few.
``k-means||``
    Bahmani et al. (2012) parallel seeding: :data:`KMEANS_PARALLEL_ROUNDS` rounds, each one
    pass that samples about 2K candidates, a pass weighting the candidates, weighted
    k-means++ on the client, then distributed Lloyd iterations to the tolerance and one
    pass of hard-assignment statistics. Its seeding's pass count does not grow with K.
``k-means++``
    the k-means++ seeds themselves (exact D^2 sampling, one pass per center) become the
    means, with covariance ``reg_covar`` (as scikit-learn does).
``random``
    random responsibilities drawn per chunk, then one statistics pass.
``random_from_data``
    K distinct rows chosen uniformly, as means.

Random streams come from ``numpy.random.SeedSequence`` with a spawn key made of
(restart, purpose, round, chunk index), or (restart, purpose, round) for draws made on
this process, never from task order, so a seed gives the same start on any number of
workers. Weights after initialisation are normalised to sum to one. Every pass is
reported to ``on_pass`` (:mod:`distgmm.engine.progress`). (The estimator draws
scikit-learn's own initialisation instead for fits in its process.)
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable, ContextManager

import numpy as np

from distgmm._kernels import (
    _too_few_distinct,
    center_weights,
    d2_scores,
    draw_by_score,
    lloyd_statistics,
    precision_cholesky_from_precisions,
    sample_rows,
    weighted_kmeans_plusplus,
)
from distgmm._kmeans import KMEANS_MAX_ITER, KMEANS_TOL, kmeans_labels
from distgmm._statistics import (
    MixtureParams,
    SufficientStatistics,
    chunk_statistics_from_resp,
    hard_assignment_statistics,
    labelled_statistics,
)
from distgmm.engine.passes import Points
from distgmm.engine.progress import OnPass, reported

if TYPE_CHECKING:
    from distgmm.engine.em import EMConfig

__all__ = ["INIT_METHODS", "initial_statistics", "override", "seed_sequence"]

logger = logging.getLogger(__name__)

INIT_METHODS = ("kmeans", "k-means||", "k-means++", "random", "random_from_data")

#: k-means|| rounds of candidate sampling; Bahmani et al. find about 5 enough.
KMEANS_PARALLEL_ROUNDS = 5

#: ``kmeans``: rows in the uniform sample (about: the count is binomial; all rows when
#: there are fewer). At least INIT_SAMPLE_ROWS, so that the candidates of a model selection
#: (up to 16 components) share each restart's sample and its pass; beyond that,
#: INIT_SAMPLE_ROWS_PER_COMPONENT per component, so that a component holding 1/(4K) of the
#: data still gets about 64 rows. Larger samples found no more components and saved no EM
#: iteration (``bench/README.md``).
INIT_SAMPLE_ROWS = 4096
INIT_SAMPLE_ROWS_PER_COMPONENT = 256
#: ``kmeans``: k-means runs on the sample, the lowest inertia kept (``KMeans(n_init=...)``):
#: one greedy k-means++ start often merges a small component into a large one, and runs
#: are cheap on a sample (``bench/README.md``). Fewer for large K: at most
#: INIT_SAMPLE_KMEANS_WORK row-center distances per Lloyd iteration over all runs (a run
#: costs sample rows x K), and at least one run.
INIT_SAMPLE_KMEANS_RUNS = 10
INIT_SAMPLE_KMEANS_WORK = 10 * 16384 * 64

#: ``report(phase, number, total)``: a context manager timing one pass and reporting it
#: (see :mod:`distgmm.engine.progress`) with the restart being initialised.
_Report = Callable[[str, int, "int | None"], ContextManager[None]]

# Purposes in random-stream spawn keys.
_P_FIRST, _P_KPP, _P_KPAR, _P_RANDOM, _P_FROM_DATA, _P_SAMPLE = range(6)


def seed_sequence(random_state: Any) -> np.random.SeedSequence:
    """Turn a scikit-learn style ``random_state`` into a ``SeedSequence``.

    ``None`` draws fresh entropy; an int is used as entropy; a ``RandomState`` or
    ``Generator`` contributes one draw.
    """
    if random_state is None:
        return np.random.SeedSequence()
    if isinstance(random_state, np.random.SeedSequence):
        return random_state
    if isinstance(random_state, (int, np.integer)):
        if random_state < 0:
            raise ValueError(f"random_state must be non-negative, got {random_state}.")
        return np.random.SeedSequence(int(random_state))
    if isinstance(random_state, np.random.RandomState):
        return np.random.SeedSequence(int(random_state.randint(np.iinfo(np.int32).max)))
    if isinstance(random_state, np.random.Generator):
        return np.random.SeedSequence(int(random_state.integers(2**63)))
    raise ValueError(
        f"random_state must be None, an int, a RandomState or a Generator; got "
        f"{type(random_state).__name__}."
    )


def _rng(root: np.random.SeedSequence, *keys: int) -> np.random.Generator:
    seq = np.random.SeedSequence(root.entropy, spawn_key=tuple(root.spawn_key) + keys)
    return np.random.default_rng(seq)


# ---------------------------------------------------------------------------- chunk functions
def _hard_task(block, weights, index, centers, covariance_type) -> SufficientStatistics:
    return hard_assignment_statistics(block, weights, centers, covariance_type)


def _random_resp_task(block, weights, index, root, restart, n_components, covariance_type):
    rng = _rng(root, restart, _P_RANDOM, 0, index)
    resp = rng.uniform(size=(block.shape[0], n_components))
    resp /= resp.sum(axis=1)[:, None]
    return chunk_statistics_from_resp(block, resp, weights, covariance_type)


def _d2_sample_task(block, weights, index, centers, root, keys):
    """Total D^2 score of a block and one row drawn proportionally to it (or None)."""
    X, score = d2_scores(block, weights, centers)
    total = float(score.sum())
    if total <= 0:
        return [(0.0, None)]
    return [(total, draw_by_score(X, score, _rng(root, *keys, index).random()))]


def _kmeans_parallel_task(block, weights, index, centers, phi, oversampling, root, keys):
    """Sample rows with probability min(1, l * w d^2 / phi); also return the cost."""
    X, score = d2_scores(block, weights, centers)
    cost = float(score.sum())
    if phi is None or phi <= 0:
        return (cost, np.empty((0, X.shape[1])))
    keep = _rng(root, *keys, index).random(X.shape[0]) < oversampling * score / phi
    return (cost, X[keep])


def _candidate_weight_task(block, weights, index, candidates):
    return center_weights(block, weights, candidates)


def _lloyd_task(block, weights, index, centers):
    return lloyd_statistics(block, weights, centers)


def _sample_task(block, weights, index, fraction, root, keys):
    return sample_rows(block, weights, fraction, _rng(root, *keys, index))


def _concat_samples(parts: list[tuple]) -> tuple:
    rows = np.concatenate([p[0] for p in parts])
    weights = None if parts[0][1] is None else np.concatenate([p[1] for p in parts])
    return rows, weights


def _sum(values: list) -> Any:
    total = values[0]
    for v in values[1:]:
        total = total + v
    return total


def _sum_tuples(parts: list[tuple]) -> tuple:
    return tuple(_sum([p[i] for p in parts]) for i in range(len(parts[0])))


def _merge_samples(parts: list[tuple]) -> tuple:
    return (_sum([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))


def _concat_lists(parts: list[list]) -> list:
    return [item for part in parts for item in part]


# ---------------------------------------------------------------------------- seeding
def _d2_sample(data: Points, centers: np.ndarray | None, root, keys) -> np.ndarray | None:
    """One row drawn with probability proportional to w * D^2 (or w when no centers)."""
    candidates = data.map_reduce(_d2_sample_task, centers, root, keys, merge=_concat_lists)
    totals = np.array([c[0] for c in candidates])
    if not totals.sum() > 0:
        return None
    rng = _rng(root, *keys, data.n_chunks)  # the client's own stream for this draw
    chunk = int(np.searchsorted(np.cumsum(totals), rng.random() * totals.sum(), side="right"))
    chunk = min(chunk, len(totals) - 1)
    while totals[chunk] <= 0:
        chunk -= 1
    return candidates[chunk][1]


def _kmeans_plusplus(data: Points, n_components: int, root, restart: int,
                     report: _Report) -> np.ndarray:
    """Exact k-means++ seeding: one pass per center."""
    centers = None
    for j in range(n_components):
        with report("init-seeding", j + 1, n_components):
            row = _d2_sample(data, centers, root, (restart, _P_KPP, j))
        if row is None:
            raise _too_few_distinct(0 if centers is None else len(centers), n_components)
        centers = row[None, :] if centers is None else np.vstack([centers, row])
    return centers


def _kmeans_parallel(data: Points, n_components: int, root, restart: int,
                     report: _Report) -> np.ndarray:
    """k-means|| seeding (Bahmani et al. 2012) with oversampling factor 2K."""
    passes = KMEANS_PARALLEL_ROUNDS + 3  # the first center, the rounds, the weights
    with report("init-seeding", 1, passes):
        first = _d2_sample(data, None, root, (restart, _P_KPAR, 0))
    candidates = first[None, :]
    oversampling = 2.0 * n_components
    phi = None
    for r in range(KMEANS_PARALLEL_ROUNDS + 1):
        with report("init-seeding", r + 2, passes):
            cost, sampled = data.map_reduce(_kmeans_parallel_task, candidates, phi,
                                            oversampling, root, (restart, _P_KPAR, r + 1),
                                            merge=_merge_samples)
        phi = cost
        if sampled.shape[0]:
            candidates = np.vstack([candidates, sampled])
        if phi <= 0:
            break
    candidates = np.unique(candidates, axis=0)
    if candidates.shape[0] < n_components:
        raise _too_few_distinct(candidates.shape[0], n_components)
    with report("init-seeding", passes, passes):
        weights = data.map_reduce(_candidate_weight_task, candidates, merge=_sum)
    rng = _rng(root, restart, _P_KPAR, KMEANS_PARALLEL_ROUNDS + 2)
    return weighted_kmeans_plusplus(candidates, weights, n_components, rng)


def _lloyd(data: Points, centers: np.ndarray, report: _Report,
           max_iter: int = KMEANS_MAX_ITER) -> np.ndarray:
    """Distributed Lloyd iterations until the squared center shift is below tolerance."""
    tol = KMEANS_TOL * float(np.mean(data.ensure_summary().variance))
    for it in range(max_iter):
        with report("init-lloyd", it + 1, max_iter):
            counts, offsets, inertia = data.map_reduce(_lloyd_task, centers,
                                                       merge=_sum_tuples)
        shift = np.where(counts[:, None] > 0, offsets / np.maximum(counts, 1e-300)[:, None], 0.0)
        centers = centers + shift
        logger.debug("lloyd iteration %d: inertia %.6g, shift %.3g", it + 1, inertia,
                     float((shift**2).sum()))
        if float((shift**2).sum()) <= tol:
            break
    return centers


# ---------------------------------------------------------------------------- starting points
def override(params: MixtureParams | None, cfg: "EMConfig") -> MixtureParams:
    """``params`` with the user's ``weights_init``, ``means_init`` and ``precisions_init``
    in place of their own (``params`` may be None when all three are given)."""
    weights = cfg.weights_init if cfg.weights_init is not None else params.weights
    means = cfg.means_init if cfg.means_init is not None else params.means
    if cfg.precisions_init is not None:
        chol = precision_cholesky_from_precisions(cfg.precisions_init, cfg.covariance_type)
        return MixtureParams.from_precision_cholesky(weights, means, chol, cfg.covariance_type)
    return MixtureParams(np.asarray(weights, dtype=np.float64), np.asarray(means, np.float64),
                         params.covariances, params.precisions_cholesky, cfg.covariance_type)


def _uniform_sample(data: Points, size: int, root, restart: int, report: _Report,
                    samples: dict | None) -> tuple[np.ndarray, np.ndarray | None]:
    """About ``size`` rows drawn uniformly in one pass (all rows when there are fewer), with
    their weights; kept in ``samples`` for the other configurations of the same restart."""
    fraction = min(1.0, size / data.n_rows)
    key = (restart, fraction)
    if samples is not None and key in samples:
        return samples[key]
    with report("init-sample", 1, 1):
        sample = data.map_reduce(_sample_task, fraction, root, (restart, _P_SAMPLE, 0),
                                 merge=_concat_samples)
    if samples is not None:
        samples[key] = sample
    return sample


def _kmeans_start(data: Points, cfg: "EMConfig", root, restart: int, report: _Report,
                  samples: dict | None) -> SufficientStatistics:
    """``kmeans`` (see the module docstring): the statistics of the k-means clusters of a
    uniform sample, scaled to stand for the whole data."""
    K, cov = cfg.n_components, cfg.covariance_type
    size = max(INIT_SAMPLE_ROWS, INIT_SAMPLE_ROWS_PER_COMPONENT * K)
    X, w = _uniform_sample(data, size, root, restart, report, samples)
    runs = max(1, min(INIT_SAMPLE_KMEANS_RUNS, INIT_SAMPLE_KMEANS_WORK // (X.shape[0] * K)))
    seed = int(_rng(root, restart, _P_SAMPLE, 1).integers(2**31 - 1))
    labels = kmeans_labels(X, w, K, runs, seed)
    if labels is None:  # few distinct rows: exact seeding finds them, or says so
        centers = _lloyd(data, _kmeans_plusplus(data, K, root, restart, report), report)
        with report("init-statistics", 1, 1):
            return data.map_reduce(_hard_task, centers, cov)
    total = labelled_statistics(X, labels, w, K, cov)
    return total.scaled_to(data.summary.weight_sum, data.n_rows)


def initial_statistics(data: Points, cfg: "EMConfig", root: np.random.SeedSequence,
                       restart: int, *, on_pass: OnPass | None = None,
                       config: int | None = None,
                       samples: dict | None = None) -> SufficientStatistics:
    """The statistics restart ``restart`` starts from, by ``cfg.init_params`` (see the
    module docstring): of the k-means clusters' hard assignments, of random
    responsibilities, or of the K chosen points (one point per component, whose M-step
    gives covariances of ``reg_covar``).

    ``on_pass`` gets a :class:`~distgmm.engine.progress.PassInfo` after each pass, with
    this ``restart`` and ``config``. ``samples``, a dict the caller keeps for one fit, lets
    configurations of the same restart share the ``kmeans`` sample (one pass for all).
    """
    K, cov = cfg.n_components, cfg.covariance_type
    method = cfg.init_params

    def report(phase: str, number: int, total: int | None = None) -> ContextManager[None]:
        return reported(on_pass, phase, number, total=total, restart=restart, config=config)

    if method == "kmeans":
        return _kmeans_start(data, cfg, root, restart, report, samples)
    if method == "k-means||":
        centers = _lloyd(data, _kmeans_parallel(data, K, root, restart, report), report)
        with report("init-statistics", 1, 1):
            return data.map_reduce(_hard_task, centers, cov)
    if method == "random":
        with report("init-statistics", 1, 1):
            return data.map_reduce(_random_resp_task, root, restart, K, cov)
    if method == "k-means++":
        points = _kmeans_plusplus(data, K, root, restart, report)
    else:
        rng = _rng(root, restart, _P_FROM_DATA)
        points = data.take_rows(rng.choice(data.n_rows, size=K, replace=False))
    return chunk_statistics_from_resp(points, np.eye(K), None, cov)
