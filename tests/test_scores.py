"""Scores: the kernels against scikit-learn and NumPy, the sketch's merge and quantile bound, drift statistics, the fit's training figures."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binom, norm
from sklearn.mixture import BayesianGaussianMixture as SkBayesian
from sklearn.mixture import GaussianMixture as SkGaussianMixture

import distgmm
from distgmm._score_kernels import (
    SKETCH_BITS, bucket_lower_edges, labels_and_scores, score_buckets, score_moments,
)
from distgmm._scores import (
    ScoreMoments, ScoreProfile, chunk_score_sketch, score_block, score_upper_bound,
    scored_statistics,
)
from distgmm._statistics import MixtureParams, chunk_statistics
from distgmm.jobs._labeller import model_parameters, model_score_shift

RNG = np.random.default_rng(4)
X = np.vstack([RNG.normal(0, 1, (700, 3)), RNG.normal(5, 1.5, (500, 3)),
               RNG.normal((0, 6, 0), 0.5, (300, 3))])
COVARIANCE_TYPES = ["full", "tied", "diag", "spherical"]


@pytest.fixture(params=["numba", "numpy"])
def kernel(request, monkeypatch):
    """Both kernel paths: the compiled one and the NumPy reference."""
    monkeypatch.setenv("DISTGMM_KERNEL", request.param)
    return request.param


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("n_components", [2, 9])  # diag/spherical K*D 6 < 32 <= 27: both kernels
def test_labels_and_scores_are_scikit_learns(kernel, covariance_type, n_components):
    ref = SkGaussianMixture(n_components, covariance_type=covariance_type,
                            random_state=0).fit(X)
    params = MixtureParams.of_model(ref)
    labels, scores = labels_and_scores(X, *(getattr(params, a) for a in (
        "weights", "means", "precisions_cholesky", "covariance_type")))
    assert labels.dtype == np.int32 and scores.dtype == np.float64
    np.testing.assert_array_equal(labels, ref.predict(X))
    np.testing.assert_allclose(scores, ref.score_samples(X), rtol=1e-12, atol=1e-11)
    labels, probs, again = score_block(params, X, proba=True)
    np.testing.assert_array_equal(labels, ref.predict(X))
    np.testing.assert_allclose(again, scores, rtol=1e-12, atol=1e-11)
    np.testing.assert_allclose(probs, ref.predict_proba(X), atol=1e-6)


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_scores_of_rows_far_from_and_between_components(covariance_type):
    """Rows whose runner-up component is far below the best skip the log-sum-exp (their
    score is the best log-density exactly); rows between components, or near the cut, do not."""
    means = np.array([[0.0, 0, 0], [30, 0, 0], [0, 30, 0]])
    ref = SkGaussianMixture(3, covariance_type=covariance_type, means_init=means,
                            max_iter=1).fit(np.vstack([m + RNG.normal(0, 1, (200, 3))
                                                       for m in means]))
    # at the means (gaps of hundreds of nats), midway (gap 0) and along the line between
    # the first two, where the gap crosses the cut of -39 - log(2) nats
    far = ref.means_ + RNG.normal(0, 0.1, (3, 3))
    line = np.outer(np.linspace(0, 30, 601), [1, 0, 0])
    Y = np.vstack([far, line])
    params = MixtureParams.of_model(ref)
    labels, scores = labels_and_scores(Y, *(getattr(params, a) for a in (
        "weights", "means", "precisions_cholesky", "covariance_type")))
    expected = ref.score_samples(Y)
    np.testing.assert_array_equal(labels, ref.predict(Y))
    np.testing.assert_allclose(scores, expected, rtol=1e-13, atol=0)
    gaps = np.sort(ref._estimate_weighted_log_prob(Y), axis=1)
    gaps = gaps[:, -2] - gaps[:, -1]
    assert (gaps < -100).sum() >= 3 and (np.abs(gaps) < 1).any()
    assert ((gaps > -45) & (gaps < -35)).any()   # rows on both sides of the cut


def test_bayesian_scores_are_scikit_learns_score_samples(kernel):
    ref = SkBayesian(n_components=6, random_state=0, max_iter=500).fit(X)
    model = distgmm.BayesianGaussianMixture(n_components=6, random_state=0,
                                            max_iter=500).fit(X)
    labels, _, scores = score_block(model_parameters(model), X, model_score_shift(model))
    np.testing.assert_allclose(scores, ref.score_samples(X), rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(labels, ref.predict(X))


def test_statistics_pass_out_the_scores_they_compute(kernel):
    ref = SkGaussianMixture(3, random_state=0).fit(X)
    params = MixtureParams.of_model(ref)
    scores = np.empty(len(X))
    stats = chunk_statistics(X, None, params, scores)
    np.testing.assert_allclose(scores, ref.score_samples(X), rtol=1e-12, atol=1e-11)
    assert stats.log_likelihood == pytest.approx(scores.sum(), rel=1e-12)


def test_buckets_and_moments_against_numpy(monkeypatch):
    scores = -3.0 - RNG.chisquare(5, 5000) / 2
    scores[:3] = [-1e-9, -1e30, 0.5]  # below the first bucket's edge, beyond the last, above U
    weights = RNG.uniform(0, 2, 5000)
    compiled = score_buckets(scores, weights, 0.0), score_moments(scores, weights)
    monkeypatch.setenv("DISTGMM_KERNEL", "numpy")
    first, counts = score_buckets(scores, weights, 0.0)
    assert compiled[0][0] == first
    np.testing.assert_allclose(compiled[0][1], counts, rtol=1e-12)
    np.testing.assert_allclose(compiled[1], score_moments(scores, weights), rtol=1e-12)
    total, mean, m2 = score_moments(scores, weights)
    assert total == pytest.approx(weights.sum())
    assert mean == pytest.approx(np.average(scores, weights=weights), rel=1e-12)
    assert m2 == pytest.approx(weights @ (scores - mean) ** 2, rel=1e-9)
    # every value is in the bucket whose edges bracket its distance below the bound
    t = -scores[3:]
    first, counts = score_buckets(scores[3:], None, 0.0)
    edges = bucket_lower_edges(first, len(counts) + 1)
    index = np.searchsorted(edges, t, side="right") - 1
    np.testing.assert_array_equal(np.bincount(index, minlength=len(counts)), counts)
    assert np.all(np.diff(edges[1:]) <= edges[1:-1] * 2.0**-SKETCH_BITS * (1 + 1e-15))


@pytest.mark.parametrize("parts", [1, 3, 10])
def test_sketches_merge_to_the_whole(parts):
    scores = -2.0 - RNG.gamma(3.0, 2.0, 10_000)
    whole = chunk_score_sketch(scores, None, 0.0)
    pieces = [chunk_score_sketch(p, None, 0.0) for p in np.array_split(scores, parts)]
    merged = pieces[0]
    for piece in pieces[1:]:
        merged = merged.combine(piece)
    assert merged.first == whole.first
    np.testing.assert_array_equal(merged.counts, whole.counts)
    assert merged.weight == whole.weight
    assert merged.mean == pytest.approx(whole.mean, rel=1e-13)
    assert merged.variance == pytest.approx(np.var(scores), rel=1e-10)
    empty = chunk_score_sketch(np.empty(0), None, 0.0)
    assert empty.combine(whole).weight == whole.weight == whole.combine(empty).weight


@pytest.mark.parametrize("q", [1e-3, 0.01, 0.2, 0.5])
def test_quantile_threshold_is_within_the_stated_bound(q):
    scores = 1.5 - RNG.chisquare(8, 200_000) / 2  # U = 1.5
    sketch = chunk_score_sketch(scores, None, 1.5)
    threshold, share = sketch.quantile(q)
    exact = np.sort(scores)[math.ceil(q * len(scores)) - 1]  # the q-quantile (lower)
    assert 0 <= threshold - exact < 2.0**-SKETCH_BITS * (1.5 - exact)
    assert share == np.mean(scores < threshold) and q <= share  # exact, at least q
    assert share - q <= sketch.counts.max() / sketch.weight


def test_drift_statistics_by_hand():
    scores = -5.0 - RNG.chisquare(4, 50_000) / 2
    profile = ScoreProfile.of(chunk_score_sketch(scores, None, -5.0), settling=0.01,
                              outlier_quantile=0.01)
    batch = ScoreMoments(2000, profile.mean - 0.2, 2000 * 1.5, 40)
    drift = profile.drift(batch, threshold=4)
    se = math.sqrt(profile.variance / 2000 + profile.variance / 50_000 + 0.01**2)
    assert drift.mean_se == pytest.approx(se) and drift.mean_z == pytest.approx(-0.2 / se)
    p0 = profile.outlier_share
    tail = binom.sf(40, 2000, p0) + binom.pmf(40, 2000, p0) / 2  # mid-p
    assert drift.outlier_z == pytest.approx(norm.isf(tail), rel=1e-6)
    assert drift.outlier_rate == 0.02 and drift.drift == (abs(-0.2 / se) >= 4 or
                                                          norm.isf(tail) >= 4)
    # far beyond, where the binomial tail underflows: still finite figures
    worse = profile.drift(ScoreMoments(10_000, profile.mean - 50, 1.0, 9000))
    assert worse.drift and 100 < worse.outlier_z < math.inf and worse.mean_z < -100
    tail = profile.drift(ScoreMoments(2000, profile.mean, 1.0, 400)).outlier_z
    assert 40 < tail < math.inf  # log P(X >= 400) is about -1770: z about 59
    calm = profile.drift(ScoreMoments(10_000, profile.mean, 1.0, 0))
    assert not calm.drift and -math.inf < calm.outlier_z < 0


@pytest.mark.parametrize("estimator", [distgmm.GaussianMixture, distgmm.BayesianGaussianMixture])
def test_fit_records_the_training_scores_of_its_last_pass(estimator):
    model = estimator(n_components=3, random_state=0, max_iter=300).fit(X)
    profile = model.training_scores_
    params, shift = model._e_step_params()
    # the figures are of the last E-step's parameters, one M-step before the model's; at
    # convergence the two give the same scores to within the settling
    scores = model.score_samples(X)
    assert profile.sketch.weight == len(X)
    assert abs(profile.mean - scores.mean()) <= max(profile.settling, 1e-9) + 1e-9
    assert profile.variance == pytest.approx(scores.var(), rel=1e-3)
    if estimator is distgmm.GaussianMixture:
        assert profile.mean == pytest.approx(model.lower_bound_, rel=1e-12)
    assert profile.sketch.upper == pytest.approx(score_upper_bound(params) + shift, abs=1e-2)
    assert profile.sketch.upper > scores.max()
    assert profile.outlier_quantile == 1e-3
    assert profile.outlier_share == pytest.approx(np.mean(scores < profile.outlier_threshold),
                                                  abs=2 / len(X))


def test_fit_on_a_cluster_records_the_same_figures_as_in_process(client):
    import dask.array as da

    here = distgmm.GaussianMixture(3, random_state=0).fit(X)
    start = dict(weights_init=here.weights_, means_init=here.means_,
                 precisions_init=here.precisions_)
    local = distgmm.GaussianMixture(3, max_iter=5, tol=0, **start).fit(X)
    remote = distgmm.GaussianMixture(3, max_iter=5, tol=0, **start).fit(
        da.from_array(X, chunks=(400, 3)))
    a, b = local.training_scores_, remote.training_scores_
    assert a.mean == pytest.approx(b.mean, rel=1e-10) and a.sketch.weight == b.sketch.weight
    np.testing.assert_allclose(a.sketch.counts, b.sketch.counts)  # same scores, same buckets
    assert a.outlier_threshold == pytest.approx(b.outlier_threshold, rel=1e-12)


def test_scored_statistics_carry_the_sketch():
    ref = SkGaussianMixture(3, random_state=0).fit(X)
    params = MixtureParams.of_model(ref)
    upper = score_upper_bound(params)
    assert upper >= ref.score_samples(X).max()
    stats, sketch = scored_statistics(X, None, params, upper)
    assert sketch.weight == len(X) and sketch.mean == pytest.approx(ref.score(X), rel=1e-12)
    assert stats.n_points == len(X)
