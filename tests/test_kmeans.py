"""The compiled k-means of the ``kmeans`` start's sample (distgmm._kmeans) against
scikit-learn's KMeans and a plain NumPy k-means++."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from distgmm._kmeans import (
    KMEANS_MAX_ITER,
    KMEANS_TOL,
    _lloyd_run,
    _seed_centers,
    kmeans_labels,
)


def blobs(seed: int, n: int = 2000, d: int = 4, k: int = 6, std=1.0):
    X, y = make_blobs(n, d, centers=k, random_state=seed, center_box=(-10, 10),
                      cluster_std=std)
    return X, y


def tolerance(X):
    return KMEANS_TOL * float(np.mean(np.var(X, axis=0)))


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lloyd_iterations_are_scikit_learns_from_the_same_centers(weighted, seed):
    """From the same starting centers, the compiled Lloyd's iterations end with scikit-learn's
    labels, centers and inertia (overlapping blobs: several iterations), one center
    starting far from every point included (emptied, then relocated as scikit-learn does)."""
    X, _ = blobs(seed, std=3.0)
    w = np.random.default_rng(seed).uniform(0.2, 3.0, len(X)) if weighted else np.ones(len(X))
    start = X[np.random.default_rng(seed).choice(len(X), 6, replace=False)]
    start[5] = 1e3  # no point is nearest to it
    ref = KMeans(6, init=start, n_init=1, algorithm="lloyd", max_iter=KMEANS_MAX_ITER,
                 tol=KMEANS_TOL).fit(X, sample_weight=w)
    shift = X.mean(axis=0)
    centers = start - shift
    labels = np.empty(len(X), dtype=np.int64)
    inertia = _lloyd_run(X - shift, w, centers, tolerance(X), KMEANS_MAX_ITER, labels)
    assert ref.n_iter_ > 2
    np.testing.assert_array_equal(labels, ref.labels_)
    np.testing.assert_allclose(centers + shift, ref.cluster_centers_, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(inertia, ref.inertia_, rtol=1e-10)
    assert len(np.unique(labels)) == 6


def greedy_kmeans_plusplus(X, w, k, uniforms, trials):
    """Plain NumPy greedy k-means++ (scikit-learn's ``_kmeans_plusplus``), drawing from
    ``uniforms`` instead of a random state."""
    first = min(np.searchsorted(np.cumsum(w), uniforms[0] * w.sum(), side="right"), len(X) - 1)
    centers = [X[first]]
    closest = ((X - X[first]) ** 2).sum(axis=1)
    for c in range(1, k):
        potential = (w * closest).sum()
        targets = uniforms[1 + (c - 1) * trials:1 + c * trials] * potential
        candidates = np.minimum(np.searchsorted(np.cumsum(w * closest), targets, side="right"),
                                len(X) - 1)
        dist = np.minimum(closest, ((X[None, :, :] - X[candidates][:, None, :]) ** 2).sum(-1))
        best = int(np.argmin(dist @ w))
        centers.append(X[candidates[best]])
        closest = dist[best]
    return np.array(centers)


@pytest.mark.parametrize("seed", range(4))
def test_seeding_is_greedy_kmeans_plusplus(seed):
    """The compiled seeding picks the rows a plain NumPy greedy k-means++ picks from the same
    uniform draws (weighted rows; rows of weight zero are never picked)."""
    X, _ = blobs(seed, n=500)
    rng = np.random.default_rng(seed)
    w = rng.uniform(0.0, 2.0, len(X))
    w[rng.choice(len(X), 100, replace=False)] = 0.0
    k, trials = 6, 2 + int(np.log(6))
    uniforms = rng.random(1 + (k - 1) * trials)
    centers = np.empty((k, X.shape[1]))
    _seed_centers(X, w, k, uniforms, trials, centers)
    np.testing.assert_array_equal(centers, greedy_kmeans_plusplus(X, w, k, uniforms, trials))
    picked = [np.flatnonzero((X == c).all(axis=1))[0] for c in centers]
    assert all(w[picked] > 0)


@pytest.mark.parametrize("seed", range(5))
def test_separated_blobs_are_found_on_every_seed(seed):
    X, y = blobs(seed, n=3000, d=8, k=8, std=0.5)
    labels = kmeans_labels(X, None, 8, 10, seed)
    assert adjusted_rand_score(y, labels) == 1.0


def test_inertia_is_as_low_as_scikit_learns_over_seeds():
    """Ten runs each, on overlapping blobs with more true clusters than k: the compiled
    k-means's inertia is within 1% of scikit-learn's KMeans's, median over 12 data sets,
    and never 5% worse."""
    ratios = []
    for seed in range(12):
        X, _ = blobs(seed, n=3000, d=5, k=12, std=np.random.default_rng(seed).uniform(0.5, 3, 12))
        w = np.random.default_rng(seed).uniform(0.5, 2.0, len(X))
        ours = kmeans_labels(X, w, 6, 10, seed)
        ref = KMeans(6, n_init=10, random_state=seed).fit(X, sample_weight=w)
        inertia = sum((w[ours == k] * ((X[ours == k] - np.average(
            X[ours == k], axis=0, weights=w[ours == k])) ** 2).sum(axis=1)).sum()
            for k in range(6))
        ratios.append(inertia / ref.inertia_)
    assert np.median(ratios) < 1.01 and max(ratios) < 1.05, ratios


def test_labels_depend_on_the_seed_and_rows_of_weight_zero_change_nothing():
    X, _ = blobs(3, std=2.0)
    w = np.random.default_rng(3).uniform(0.5, 2.0, len(X))
    labels = kmeans_labels(X, w, 6, 5, 7)
    np.testing.assert_array_equal(labels, kmeans_labels(X, w, 6, 5, 7))
    assert not np.array_equal(labels, kmeans_labels(X, w, 6, 1, 8))
    extra = np.random.default_rng(4).normal(0, 30, (50, X.shape[1]))
    at = np.sort(np.random.default_rng(5).choice(len(X) + 50, 50, replace=False))
    keep = np.setdiff1d(np.arange(len(X) + 50), at)
    X2, w2 = np.empty((len(X) + 50, X.shape[1])), np.zeros(len(X) + 50)
    X2[at], X2[keep], w2[keep] = extra, X, w
    np.testing.assert_array_equal(kmeans_labels(X2, w2, 6, 5, 7)[keep], labels)


@pytest.mark.parametrize("kernel", ["numba", "numpy"])
def test_fewer_distinct_rows_than_clusters_give_none(kernel, monkeypatch):
    """Both paths (compiled, and scikit-learn's KMeans under DISTGMM_KERNEL=numpy) count
    distinct rows of positive weight."""
    monkeypatch.setenv("DISTGMM_KERNEL", kernel)
    X = np.repeat(np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 5.0], [9.0, 9.0]]), 20, axis=0)
    w = np.ones(len(X))
    w[-20:] = 0.0  # the fourth row has no weight
    assert kmeans_labels(X, w, 4, 3, 0) is None
    labels = kmeans_labels(X, w, 3, 3, 0)
    assert adjusted_rand_score(np.repeat([0, 1, 2], 20), labels[:60]) == 1.0
    assert kmeans_labels(X, None, 4, 3, 0) is not None
