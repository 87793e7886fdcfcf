"""k-means of a small in-memory weighted point set: the ``kmeans`` initialisation's sample.

The ``kmeans`` start of a fit on a cluster clusters a uniform sample of a few thousand rows
on the client (:mod:`distgmm.engine.init`). This is scikit-learn's ``KMeans`` algorithm
(``algorithm="lloyd"``), compiled:

* greedy k-means++ seeding (Arthur and Vassilvitskii 2007, with scikit-learn's
  ``2 + log K`` local trials per center, keeping the candidate that lowers the weighted
  potential most);
* Lloyd's iterations until the labels stop changing or the summed squared shift of the
  centers is at most ``tol`` times the mean per-feature variance of the points, at most
  ``max_iter``; an emptied cluster takes the point farthest from its center (scikit-learn's
  relocation); the labels are those of the final centers;
* the lowest weighted inertia of ``n_init`` runs (the first on ties).

Why not scikit-learn's ``KMeans`` itself: its k-means++ seeding is Python-bound (about 1 ms
a run, whatever the sample), which made the ten runs the largest part of initialising a
fit of a million points (``bench/README.md``, "Time to a fitted model"). Compiled, the same
ten runs take a fraction of that. The random numbers come from one NumPy ``Generator``
seeded with ``seed``, drawn before the compiled code runs, so the labels depend on the seed
only. With ``DISTGMM_KERNEL=numpy`` (the NumPy reference path) scikit-learn's ``KMeans``
runs instead, with the same parameters; it draws its own random numbers, so that path
starts from other (equally good) clusters.

Nothing here imports Dask.
"""

from __future__ import annotations

import numpy as np

from distgmm._fused import _jit, _jit_ordered, use_fused

__all__ = ["kmeans_labels", "kernel_arguments", "KMEANS_MAX_ITER", "KMEANS_TOL"]

#: Lloyd iterations stop after this many, or when the summed squared shift of the centers
#: falls below KMEANS_TOL times the points' mean per-feature variance (scikit-learn's
#: ``KMeans`` defaults; the distributed Lloyd iterations of the other initialisations use
#: them too).
KMEANS_MAX_ITER = 300
KMEANS_TOL = 1e-4


def kmeans_labels(X: np.ndarray, weights: np.ndarray | None, n_clusters: int, n_init: int,
                  seed: int) -> np.ndarray | None:
    """Labels of the k-means clusters of a small point set (see the module docstring).

    Parameters
    ----------
    X : ndarray of shape (m, D), float64
    weights : ndarray of shape (m,) or None
        Non-negative row weights (None: all one). Rows of weight zero take no part (they
        are labelled with their nearest cluster's index).
    n_clusters : int
    n_init : int
        Runs from different seedings; the lowest inertia is kept.
    seed : int

    Returns
    -------
    labels : ndarray of shape (m,), int64, or None
        None when fewer than ``n_clusters`` rows of positive weight are distinct.
    """
    # Writable C-ordered copies: the compiled kernels have one specialization each.
    X = np.array(X, dtype=np.float64, order="C")
    w = np.ones(X.shape[0]) if weights is None else np.array(weights, dtype=np.float64)
    weighed = w > 0
    if not weighed.all():  # rows of weight zero are not there; each gets its nearest cluster
        labels = kmeans_labels(X[weighed], w[weighed], n_clusters, n_init, seed)
        if labels is None:
            return None
        onehot = np.zeros((labels.size, n_clusters))
        onehot[np.arange(labels.size), labels] = w[weighed]
        centers = (onehot.T @ X[weighed]) / onehot.sum(axis=0)[:, None]
        out = np.empty(X.shape[0], dtype=np.int64)
        out[weighed] = labels
        out[~weighed] = ((X[~weighed, None, :] - centers) ** 2).sum(axis=2).argmin(axis=1)
        return out
    if not use_fused():
        return _sklearn_kmeans_labels(X, w, n_clusters, n_init, seed)
    if not _has_distinct_rows(X, n_clusters):
        return None
    trials = 2 + int(np.log(n_clusters))
    uniforms = np.random.default_rng(seed).random((n_init, 1 + (n_clusters - 1) * trials))
    tol = KMEANS_TOL * float(np.mean(np.var(X, axis=0)))
    labels = np.empty(X.shape[0], dtype=np.int64)
    _best_of_runs(X - X.mean(axis=0), w, n_clusters, uniforms, trials, tol, KMEANS_MAX_ITER,
                  labels)
    return labels


def kernel_arguments() -> list[tuple]:
    """The compiled kernels :func:`kmeans_labels` calls, each with tiny arguments of the
    types it gives them and its compile seconds on one core (``bench/README.md``), for
    :func:`distgmm._fused.kernel_calls`."""
    X, w = np.zeros((4, 2)), np.ones(4)
    return [(_has_distinct_rows, (X, 2), 0.1),
            (_best_of_runs, (X, w, 2, np.zeros((1, 3)), 2, 0.0, 1,
                             np.empty(4, dtype=np.int64)), 1.9)]


def _sklearn_kmeans_labels(X: np.ndarray, w: np.ndarray, n_clusters: int, n_init: int,
                           seed: int) -> np.ndarray | None:
    """The NumPy reference path: scikit-learn's ``KMeans``, on one thread (its threads
    merge partial sums in the order they finish, which would make the labels depend on the
    machine)."""
    from sklearn.cluster import KMeans

    from distgmm._kernels import distinct_rows, thread_pools

    if distinct_rows(X, w) < n_clusters:
        return None
    with thread_pools().limit(limits=1):
        return KMeans(n_clusters, n_init=n_init, random_state=seed).fit(
            X, sample_weight=w).labels_.astype(np.int64)


# ---------------------------------------------------------------------------- compiled
# Loops that store while they compute are compiled without reassociation (as the E-step's,
# see distgmm._fused._jit_ordered), so the labels do not depend on where the arrays lie in
# memory; the squared distances, pure sums over the features that store nothing, are
# compiled with it, so that they are vectorised (the ten runs took 8.2 ms without, 3.9 ms
# with, on a 4096 x 8 sample at K = 8).
@_jit_ordered
def _has_distinct_rows(X, n_clusters):
    """Whether at least ``n_clusters`` rows are distinct (stops as soon as that many are
    found: O(m K D) at worst)."""
    m, d = X.shape
    found = np.empty(n_clusters, dtype=np.int64)
    n_found = 0
    for i in range(m):
        new = True
        for j in range(n_found):
            same = True
            for f in range(d):
                if X[i, f] != X[found[j], f]:
                    same = False
                    break
            if same:
                new = False
                break
        if new:
            found[n_found] = i
            n_found += 1
            if n_found == n_clusters:
                return True
    return False


@_jit
def _sq_dist(X, i, centers, k):
    s = 0.0
    for f in range(X.shape[1]):
        t = X[i, f] - centers[k, f]
        s += t * t
    return s


@_jit
def _row_sq_dist(X, i, j):
    s = 0.0
    for f in range(X.shape[1]):
        t = X[i, f] - X[j, f]
        s += t * t
    return s


@_jit_ordered
def _first_above(cumulative, target):
    """The first index whose cumulative value exceeds ``target`` (the last when none)."""
    lo, hi = 0, cumulative.shape[0] - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if cumulative[mid] > target:
            hi = mid
        else:
            lo = mid + 1
    return lo


@_jit_ordered
def _seed_centers(X, w, n_clusters, uniforms, trials, centers):
    """Greedy k-means++ seeding into ``centers`` (K, D), from the run's ``uniforms``."""
    m = X.shape[0]
    cumulative = np.empty(m)
    closest = np.empty(m)
    best_dist = np.empty(m)
    trial_dist = np.empty(m)
    total = 0.0
    for i in range(m):
        total += w[i]
        cumulative[i] = total
    first = _first_above(cumulative, uniforms[0] * total)
    for f in range(X.shape[1]):
        centers[0, f] = X[first, f]
    potential = 0.0
    for i in range(m):
        closest[i] = _row_sq_dist(X, i, first)
        potential += w[i] * closest[i]
    for c in range(1, n_clusters):
        total = 0.0
        for i in range(m):
            total += w[i] * closest[i]
            cumulative[i] = total
        best_potential = np.inf
        best = 0
        for t in range(trials):
            candidate = _first_above(cumulative, uniforms[1 + (c - 1) * trials + t] * potential)
            trial_potential = 0.0
            for i in range(m):
                trial_dist[i] = min(closest[i], _row_sq_dist(X, i, candidate))
                trial_potential += w[i] * trial_dist[i]
            if trial_potential < best_potential:
                best_potential = trial_potential
                best = candidate
                best_dist, trial_dist = trial_dist, best_dist
        for f in range(X.shape[1]):
            centers[c, f] = X[best, f]
        closest, best_dist = best_dist, closest
        potential = best_potential


@_jit_ordered
def _assign(X, centers, labels, distances):
    """Nearest center (the first on ties) and squared distance to it, for every row."""
    for i in range(X.shape[0]):
        best = _sq_dist(X, i, centers, 0)
        label = 0
        for k in range(1, centers.shape[0]):
            d = _sq_dist(X, i, centers, k)
            if d < best:
                best = d
                label = k
        labels[i] = label
        distances[i] = best


@_jit_ordered
def _update_centers(X, w, labels, distances, centers_new):
    """Weighted means of the clusters into ``centers_new``; an empty cluster takes the row
    farthest from its center (taken out of its own cluster), farthest first."""
    n_clusters, d = centers_new.shape
    totals = np.zeros(n_clusters)
    for k in range(n_clusters):
        for f in range(d):
            centers_new[k, f] = 0.0
    for i in range(X.shape[0]):
        k = labels[i]
        totals[k] += w[i]
        for f in range(d):
            centers_new[k, f] += w[i] * X[i, f]
    n_empty = 0
    for k in range(n_clusters):
        if not totals[k] > 0:
            n_empty += 1
    if n_empty:
        taken = np.zeros(X.shape[0], dtype=np.bool_)
        for k in range(n_clusters):
            if totals[k] > 0:
                continue
            i = -1  # the farthest row not taken yet (the first on ties)
            for j in range(X.shape[0]):
                if not taken[j] and (i < 0 or distances[j] > distances[i]):
                    i = j
            taken[i] = True
            old = labels[i]
            for f in range(d):
                centers_new[k, f] = w[i] * X[i, f]
                centers_new[old, f] -= w[i] * X[i, f]
            totals[k] = w[i]
            totals[old] -= w[i]
    for k in range(n_clusters):
        if totals[k] > 0:
            for f in range(d):
                centers_new[k, f] /= totals[k]


@_jit_ordered
def _lloyd_run(X, w, centers, tol, max_iter, labels):
    """Lloyd's iterations from ``centers`` (updated in place); the final labels into
    ``labels``; returns the weighted inertia."""
    m = X.shape[0]
    distances = np.empty(m)
    previous = np.empty(m, dtype=np.int64)
    for i in range(m):
        previous[i] = -1
    centers_new = np.empty(centers.shape)
    strict = False
    for _ in range(max_iter):
        _assign(X, centers, labels, distances)
        _update_centers(X, w, labels, distances, centers_new)
        shift = 0.0
        for k in range(centers.shape[0]):
            for f in range(centers.shape[1]):
                t = centers_new[k, f] - centers[k, f]
                shift += t * t
                centers[k, f] = centers_new[k, f]
        same = True
        for i in range(m):
            if labels[i] != previous[i]:
                same = False
            previous[i] = labels[i]
        if same:
            strict = True
            break
        if shift <= tol:
            break
    if not strict:
        _assign(X, centers, labels, distances)
    inertia = 0.0
    for i in range(m):
        inertia += w[i] * distances[i]
    return inertia


@_jit_ordered
def _best_of_runs(X, w, n_clusters, uniforms, trials, tol, max_iter, labels):
    """The labels of the run of lowest inertia (the first on ties) into ``labels``."""
    centers = np.empty((n_clusters, X.shape[1]))
    run_labels = np.empty(X.shape[0], dtype=np.int64)
    best = np.inf
    for r in range(uniforms.shape[0]):
        _seed_centers(X, w, n_clusters, uniforms[r], trials, centers)
        inertia = _lloyd_run(X, w, centers, tol, max_iter, run_labels)
        if inertia < best:
            best = inertia
            for i in range(run_labels.shape[0]):
                labels[i] = run_labels[i]
    return best

