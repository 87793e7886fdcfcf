"""Kernels and statistics against independent references (SciPy, scikit-learn, NumPy)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import multivariate_normal
from sklearn.covariance import EmpiricalCovariance

from distgmm._kernels import (
    CollapsedComponentError,
    covariances_from_precision_cholesky,
    distinct_rows,
    log_gaussian_prob,
    log_responsibilities,
    nearest_center,
    precision_cholesky,
    precision_cholesky_from_precisions,
    precisions_from_cholesky,
    sample_rows,
)
from distgmm._statistics import (
    chunk_statistics,
    chunk_statistics_from_resp,
    chunk_summary,
    labelled_statistics,
    m_step,
    merge_statistics,
    MixtureParams,
)

COV_TYPES = ["full", "tied", "diag", "spherical"]


def random_covariances(rng, cov, K, D):
    if cov == "full":
        A = rng.normal(size=(K, D, D))
        return A @ A.transpose(0, 2, 1) + D * np.eye(D)
    if cov == "tied":
        A = rng.normal(size=(D, D))
        return A @ A.T + D * np.eye(D)
    if cov == "diag":
        return rng.uniform(0.5, 2.0, size=(K, D))
    return rng.uniform(0.5, 2.0, size=K)


def dense(cov_type, covariances, K, D):
    """Each component's covariance as a D x D matrix."""
    if cov_type == "full":
        return covariances
    if cov_type == "tied":
        return np.repeat(covariances[None], K, axis=0)
    if cov_type == "diag":
        return np.stack([np.diag(c) for c in covariances])
    return np.stack([c * np.eye(D) for c in covariances])


@pytest.mark.parametrize("cov", COV_TYPES)
@pytest.mark.parametrize("offset", [0.0, 1e4])
def test_log_gaussian_prob_matches_scipy(cov, offset):
    rng = np.random.default_rng(1)
    K, D = 3, 4
    means = rng.normal(size=(K, D)) + offset
    covariances = random_covariances(rng, cov, K, D)
    X = rng.normal(size=(50, D)) * 2 + offset
    got = log_gaussian_prob(X, means, precision_cholesky(covariances, cov), cov)
    full = dense(cov, covariances, K, D)
    want = np.column_stack([multivariate_normal(means[k], full[k]).logpdf(X) for k in range(K)])
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-8)


@pytest.mark.parametrize("cov", COV_TYPES)
def test_precision_cholesky_round_trips(cov):
    rng = np.random.default_rng(2)
    covariances = random_covariances(rng, cov, 3, 4)
    chol = precision_cholesky(covariances, cov)
    np.testing.assert_allclose(covariances_from_precision_cholesky(chol, cov), covariances,
                               rtol=1e-10)
    precisions = precisions_from_cholesky(chol, cov)
    np.testing.assert_allclose(precision_cholesky_from_precisions(precisions, cov), chol,
                               rtol=1e-8, atol=1e-12)


def test_singular_covariance_names_component():
    covariances = np.stack([np.eye(2), np.zeros((2, 2))])
    with pytest.raises(CollapsedComponentError,
                       match="increase reg_covar.*component 1 has a singular full") as e:
        precision_cholesky(covariances, "full")
    assert e.value.component == 1
    with pytest.raises(CollapsedComponentError, match="component 2"):
        precision_cholesky(np.array([1.0, 2.0, 0.0]), "spherical")


def test_log_responsibilities_normalise():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(40, 2))
    weights = np.array([0.2, 0.8])
    means = np.array([[0.0, 0.0], [1.0, 1.0]])
    chol = precision_cholesky(np.ones((2, 2)), "diag")
    log_norm, log_resp = log_responsibilities(X, weights, means, chol, "diag")
    np.testing.assert_allclose(np.exp(log_resp).sum(axis=1), 1.0, rtol=1e-12)
    joint = log_gaussian_prob(X, means, chol, "diag") + np.log(weights)
    np.testing.assert_allclose(log_norm, np.log(np.exp(joint).sum(axis=1)), rtol=1e-12)


def test_nearest_center_matches_brute_force():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(100, 3)) + 500.0
    C = rng.normal(size=(5, 3)) + 500.0
    labels, d2 = nearest_center(X, C)
    brute = ((X[:, None, :] - C[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(labels, brute.argmin(1))
    np.testing.assert_allclose(d2, brute.min(1), rtol=1e-9)


@pytest.mark.parametrize("cov", ["full", "diag"])
def test_hard_statistics_match_empirical_covariance(cov):
    rng = np.random.default_rng(5)
    X = rng.normal(size=(200, 3)) * [1, 2, 3] + 1e6
    resp = np.zeros((200, 2))
    resp[:120, 0] = 1
    resp[120:, 1] = 1
    stats = chunk_statistics_from_resp(X, resp, None, cov)
    for k, rows in enumerate([slice(0, 120), slice(120, 200)]):
        ref = EmpiricalCovariance().fit(X[rows])
        np.testing.assert_allclose(stats.means[k], ref.location_, rtol=1e-14)
        expected = ref.covariance_ * (rows.stop - rows.start)
        got = stats.scatter[k]
        np.testing.assert_allclose(got, expected if cov == "full" else np.diag(expected),
                                   rtol=1e-8)


@settings(max_examples=25, deadline=None)
@given(cuts=st.lists(st.integers(1, 299), max_size=6, unique=True),
       cov=st.sampled_from(COV_TYPES), weighted=st.booleans())
def test_merged_statistics_equal_whole_block(cuts, cov, weighted):
    """Statistics merged over any split of the rows equal those of the whole block."""
    rng = np.random.default_rng(6)
    X = rng.normal(size=(300, 3)) + 1e5
    w = rng.uniform(0, 3, size=300) if weighted else None
    K = 3
    params = MixtureParams.from_covariances(
        np.full(K, 1 / K), X[[0, 100, 200]], random_covariances(rng, cov, K, 3), cov)
    whole = chunk_statistics(X, w, params)
    bounds = [0, *sorted(cuts), 300]
    parts = [chunk_statistics(X[a:b], None if w is None else w[a:b], params)
             for a, b in zip(bounds[:-1], bounds[1:])]
    merged = merge_statistics(parts)
    np.testing.assert_allclose(merged.resp_sum, whole.resp_sum, rtol=1e-12)
    np.testing.assert_allclose(merged.means, whole.means, rtol=1e-13)
    np.testing.assert_allclose(merged.scatter, whole.scatter, rtol=1e-9, atol=1e-9)
    assert merged.log_likelihood == pytest.approx(whole.log_likelihood, rel=1e-12)
    assert merged.n_points == 300


def test_m_step_matches_sklearn_estimator():
    from sklearn.mixture._gaussian_mixture import _estimate_gaussian_parameters

    rng = np.random.default_rng(7)
    X = rng.normal(size=(150, 3))
    resp = rng.dirichlet(np.ones(3), size=150)
    for cov in COV_TYPES:
        params = m_step(chunk_statistics_from_resp(X, resp, None, cov), 1e-6, cov)
        nk, means, covariances = _estimate_gaussian_parameters(X, resp, 1e-6, cov)
        np.testing.assert_allclose(params.weights, nk / nk.sum(), rtol=1e-12)
        np.testing.assert_allclose(params.means, means, rtol=1e-12)
        np.testing.assert_allclose(params.covariances, covariances, rtol=1e-10)


@pytest.mark.parametrize("cov", ["full", "tied", "diag", "spherical"])
def test_m_step_keeps_an_empty_component_as_sklearn_does(cov):
    """A component with no points gets weight 10 eps / n and covariance reg_covar (plus the
    pooled scatter for tied): scikit-learn's M-step, used here as the reference."""
    from sklearn.mixture._gaussian_mixture import _estimate_gaussian_parameters

    X = np.random.default_rng(8).normal(size=(20, 2))
    resp = np.zeros((20, 2))
    resp[:, 0] = 1
    params = m_step(chunk_statistics_from_resp(X, resp, None, cov), 1e-6, cov)
    weights, means, covariances = _estimate_gaussian_parameters(X, resp, 1e-6, cov)
    np.testing.assert_allclose(params.weights, weights / weights.sum(), rtol=1e-12)
    assert params.weights[1] < 1e-15
    np.testing.assert_allclose(params.means, means, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(params.covariances, covariances, rtol=1e-10)


@pytest.mark.parametrize("cov", COV_TYPES)
@pytest.mark.parametrize("weighted", [False, True])
def test_labelled_statistics_equal_one_hot_responsibilities(cov, weighted):
    """Hard assignments without the (n, K) array: the statistics of one-hot
    responsibilities, an empty component included."""
    rng = np.random.default_rng(9)
    X = rng.normal(size=(500, 3)) * [1, 2, 3] + 1e4
    labels = rng.integers(0, 4, size=500)
    labels[labels == 2] = 3  # component 2 receives no rows
    w = rng.uniform(0, 2, size=500) if weighted else None
    got = labelled_statistics(X.astype(np.float32), labels, w, 4, cov)
    ref = chunk_statistics_from_resp(X.astype(np.float32), np.eye(4)[labels], w, cov)
    np.testing.assert_allclose(got.resp_sum, ref.resp_sum, rtol=1e-13)
    np.testing.assert_allclose(got.means, ref.means, rtol=1e-13)
    np.testing.assert_allclose(got.scatter, ref.scatter, rtol=1e-9, atol=1e-9)
    assert (got.weight_sum, got.n_points) == pytest.approx((ref.weight_sum, ref.n_points))
    assert got.resp_sum[2] == 0 and not got.scatter[2].any()


def test_statistics_scaled_to_the_data_keep_the_m_step():
    """A sample's statistics scaled to the data's weight: counts and scatter grow, the
    M-step's parameters do not change."""
    rng = np.random.default_rng(10)
    X = rng.normal(size=(300, 2))
    stats = labelled_statistics(X, rng.integers(0, 3, size=300), None, 3, "full")
    scaled = stats.scaled_to(3e6, 3_000_000)
    np.testing.assert_allclose(scaled.resp_sum, stats.resp_sum * 1e4)
    assert (scaled.weight_sum, scaled.n_points) == (3e6, 3_000_000)
    a, b = m_step(stats, 0.0, "full"), m_step(scaled, 0.0, "full")
    np.testing.assert_allclose(a.weights, b.weights, rtol=1e-12)
    np.testing.assert_allclose(a.covariances, b.covariances, rtol=1e-12)


def test_sample_rows_is_a_uniform_sample_with_its_weights():
    X = np.arange(20000, dtype=np.float32).reshape(-1, 2)
    w = np.arange(10000, dtype=np.float64)
    rows, weights = sample_rows(X, w, 0.1, np.random.default_rng(0))
    assert rows.dtype == np.float64 and 900 < len(rows) < 1100
    assert len(np.unique(rows[:, 0])) == len(rows)  # without replacement
    np.testing.assert_array_equal(weights, rows[:, 0] / 2)  # each row keeps its weight
    assert np.all(np.diff(weights) > 0)  # in the block's order
    again, _ = sample_rows(X, w, 0.1, np.random.default_rng(0))
    np.testing.assert_array_equal(rows, again)
    assert len(sample_rows(X, None, 1.0, np.random.default_rng(1))[0]) == 10000
    assert sample_rows(X, None, 0.0, np.random.default_rng(1))[0].shape == (0, 2)


def test_distinct_rows_count_rows_of_positive_weight():
    X = np.array([[0.0, 1], [0, 1], [2, 3], [4, 5]])
    assert distinct_rows(X, None) == 3
    assert distinct_rows(X, np.array([1.0, 1, 0, 1])) == 2
    assert distinct_rows(X[:0], None) == 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_chunk_summary_kernel_matches_numpy(dtype, monkeypatch):
    """The compiled validation moments equal NumPy's, with non-finite rows left out."""
    rng = np.random.default_rng(11)
    X = (rng.normal(size=(5000, 4)) * [1, 10, 100, 1000] + 1e5).astype(dtype)
    X[7, 2], X[99, 0], X[100, 3] = np.nan, np.inf, -np.inf
    X.flags.writeable = False
    fused = chunk_summary(X, None)
    monkeypatch.setenv("DISTGMM_KERNEL", "numpy")
    ref = chunk_summary(X, None)
    assert (fused.n_nonfinite_rows, fused.n_finite) == (ref.n_nonfinite_rows, ref.n_finite) \
        == (3, 4997)
    np.testing.assert_allclose(fused.mean, ref.mean, rtol=1e-14)
    np.testing.assert_allclose(fused.m2, ref.m2, rtol=1e-11)
    empty = chunk_summary(np.full((3, 2), np.nan, dtype=dtype), None)
    assert empty.n_finite == 0 and not empty.mean.any() and not empty.m2.any()


def test_chunk_summary_counts_nonfinite_and_negative():
    X = np.ones((6, 2))
    X[1, 0] = np.nan
    X[4, 1] = np.inf
    s = chunk_summary(X, np.array([1.0, -1, 2, np.nan, 1, 1]))
    assert (s.n_rows, s.n_nonfinite_rows, s.n_negative_weights, s.n_nonfinite_weights) == \
        (6, 2, 1, 1)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 700), D=st.integers(1, 10), K=st.integers(1, 6),
       cov=st.sampled_from(COV_TYPES), weighted=st.booleans(),
       dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**16))
def test_fused_kernel_matches_numpy_reference(n, D, K, cov, weighted, dtype, seed):
    """The compiled kernel computes what the NumPy reference computes, to rounding."""
    from distgmm._fused import fused_labels, fused_log_prob, fused_statistics
    from distgmm._statistics import chunk_statistics_reference

    rng = np.random.default_rng(seed)
    X = (rng.normal(size=(n, D)) * 3 + 1e3).astype(dtype)
    w = rng.uniform(0, 2, size=n) * (rng.uniform(size=n) > 0.2) if weighted else None
    params = MixtureParams.from_covariances(
        rng.dirichlet(np.ones(K)), rng.normal(size=(K, D)) * 3 + 1e3,
        random_covariances(rng, cov, K, D), cov)
    ref = chunk_statistics_reference(X, w, params)
    resp_sum, means, scatter, ll = fused_statistics(
        X, w, params.weights, params.means, params.precisions_cholesky, cov)
    scale = max(ref.resp_sum.max(), 1e-300)
    np.testing.assert_allclose(resp_sum, ref.resp_sum, rtol=1e-9, atol=1e-12 * scale)
    live = ref.resp_sum > 1e-8 * scale
    np.testing.assert_allclose(means[live], ref.means[live], rtol=1e-11)
    spread = float(np.var(X.astype(np.float64))) + 1.0
    np.testing.assert_allclose(scatter[live], ref.scatter[live], rtol=1e-7,
                               atol=1e-9 * scale * spread)
    assert ll == pytest.approx(ref.log_likelihood, rel=1e-10, abs=1e-8)
    weighted_lp = log_gaussian_prob(X, params.means, params.precisions_cholesky, cov) + \
        np.log(params.weights)
    np.testing.assert_allclose(
        fused_log_prob(X, params.weights, params.means, params.precisions_cholesky, cov),
        weighted_lp, rtol=1e-10, atol=1e-9)
    labels = fused_labels(X, params.weights, params.means, params.precisions_cholesky, cov)
    top2 = np.sort(weighted_lp, axis=1)[:, -2:] if K > 1 else None
    clear = np.ones(n, bool) if K == 1 else (top2[:, 1] - top2[:, 0]) > 1e-8
    np.testing.assert_array_equal(labels[clear], weighted_lp.argmax(axis=1)[clear])


def test_vectorisable_exp_is_within_one_ulp_of_libm():
    """The kernels' own exp (a polynomial the compiler vectorises) matches libm's."""
    from distgmm._fused import _exp_or_zero

    x = np.concatenate([-np.random.default_rng(0).uniform(0, 500, 20000),
                        [0.0, -0.0, -1e-300, -np.log(2) / 2, -np.log(2), -499.999, -1e-9]])
    ours = np.array([_exp_or_zero(v) for v in x])
    np.testing.assert_allclose(ours, np.exp(x), rtol=2.5e-16, atol=0)
    assert [_exp_or_zero(v) for v in (-500.0, -600.0, -745.5, -np.inf)] == [0.0] * 4


@pytest.mark.parametrize("cov", ["full", "diag", "spherical"])
def test_fused_collapsing_component_is_computed_exactly(cov):
    """One component with a tiny variance (1e7 sd from the shift) is computed exactly
    centered inside the expanded-moment kernels, while the others use the GEMM form."""
    from distgmm._fused import _expanded_setup, fused_labels, fused_log_prob, fused_statistics
    from distgmm._statistics import chunk_statistics_reference

    rng = np.random.default_rng(4)
    K, D = 8, 8
    means = rng.normal(0, 3, size=(K, D))
    X = np.concatenate([means[k] + rng.normal(size=(60, D)) for k in range(K - 1)]
                       + [means[K - 1] + 1e-4 * rng.normal(size=(60, D))])
    scale = np.r_[np.ones(K - 1), 1e-8]
    covariances = {"full": np.eye(D) * scale[:, None, None], "diag": np.ones((K, D)) *
                   scale[:, None], "spherical": scale}[cov]
    params = MixtureParams.from_covariances(np.full(K, 1 / K), means, covariances, cov)
    setup = _expanded_setup(params.weights, params.means, params.precisions_cholesky, cov)
    assert setup is not None and list(setup.exact) == [K - 1]
    ref = chunk_statistics_reference(X, None, params)
    resp_sum, m, scatter, ll = fused_statistics(X, None, params.weights, params.means,
                                                params.precisions_cholesky, cov)
    np.testing.assert_allclose(resp_sum, ref.resp_sum, rtol=1e-10)
    np.testing.assert_allclose(scatter, ref.scatter, rtol=1e-8, atol=1e-14)
    assert ll == pytest.approx(ref.log_likelihood, rel=1e-11)
    if cov == "full":
        lp = log_gaussian_prob(X, params.means, params.precisions_cholesky, cov)
    else:  # the reference's diag form is expanded (as scikit-learn's): compute it directly
        prec = np.broadcast_to(1 / (covariances if cov == "diag" else covariances[:, None]),
                               (K, D))
        lp = -0.5 * (D * np.log(2 * np.pi) + (((X[:, None, :] - means) ** 2) * prec).sum(-1)
                     - np.log(prec).sum(axis=1))
    lp = lp + np.log(params.weights)
    np.testing.assert_allclose(
        fused_log_prob(X, params.weights, params.means, params.precisions_cholesky, cov),
        lp, rtol=1e-10)
    np.testing.assert_array_equal(
        fused_labels(X, params.weights, params.means, params.precisions_cholesky, cov),
        lp.argmax(axis=1))


@pytest.mark.parametrize("cov", ["diag", "spherical"])
def test_float32_labels_redo_close_calls_in_float64(cov):
    """diag/spherical labels come from a float32 GEMM; rows whose two best components are
    within its rounding are redone in float64, so every label is the float64 path's
    (points are put near the boundaries, where float32 alone gets some wrong)."""
    from distgmm._fused import _expanded_features, _expanded_setup, _fused_scores_expanded, \
        _read_only, fused_labels

    rng = np.random.default_rng(11)
    K, D = 16, 24
    means = rng.normal(0, 2, size=(K, D)) + 50.0
    covariances = {"diag": rng.uniform(0.5, 2.0, size=(K, D)),
                   "spherical": rng.uniform(0.5, 2.0, size=K)}[cov]
    params = MixtureParams.from_covariances(np.full(K, 1 / K), means, covariances, cov)
    args = (params.weights, params.means, params.precisions_cholesky, cov)
    # Points where two components' log-densities cross on the segment between their means
    # (found by bisection), nudged along it: gaps from about 1e-8 to 1, where float32's
    # rounding is about 1e-3.
    lp_of = lambda Y: log_gaussian_prob(Y, means, params.precisions_cholesky, cov)  # noqa: E731
    a = rng.integers(0, K, 6000)
    b = (a + rng.integers(1, K, 6000)) % K
    rows = np.arange(6000)
    lo, hi = np.zeros(6000), np.ones(6000)  # at t = 0 the point is means[b]: b wins
    for _ in range(60):
        t = (lo + hi) / 2
        lp = lp_of(means[a] * t[:, None] + means[b] * (1 - t[:, None]))
        a_wins = lp[rows, a] > lp[rows, b]
        hi, lo = np.where(a_wins, t, hi), np.where(a_wins, lo, t)
    t = lo + rng.choice([-1, 1], 6000) * 10.0 ** rng.uniform(-10, -3, 6000)
    X = means[a] * t[:, None] + means[b] * (1 - t[:, None])
    X = np.vstack([X, means[rng.integers(0, K, 2000)] + rng.normal(size=(2000, D))])
    setup = _expanded_setup(*args)
    assert setup is not None and not len(setup.exact)
    in64 = _fused_scores_expanded(_read_only(X), *setup, True)[1]
    lp = _fused_scores_expanded(_read_only(X), *setup, False)[0]
    top2 = np.sort(lp, axis=1)[:, -2:]
    decided = top2[:, 1] - top2[:, 0] > 1e-9  # not tied to float64 rounding
    labels = fused_labels(X, *args)
    np.testing.assert_array_equal(labels[decided], in64[decided])
    # float32 alone (the same features and GEMM, no check) gets some of these wrong
    shift, Gt, log_const, cross_terms = setup[:4]
    zt = np.empty((Gt.shape[1], len(X)))
    zt[-1] = 1.0
    _expanded_features(X, 0, shift, cross_terms, zt)
    only32 = ((Gt.astype(np.float32) @ zt.astype(np.float32)) + log_const[:, None]).argmax(0)
    assert (only32[decided] != in64[decided]).sum() > 10


@pytest.mark.parametrize("cov", COV_TYPES)
def test_fused_stays_exact_for_components_far_apart(cov):
    """Means 1e5 standard deviations apart take the exactly centered path (no cancellation)."""
    from distgmm._fused import fused_statistics
    from distgmm._statistics import chunk_statistics_reference

    rng = np.random.default_rng(9)
    K, D = 8, 8
    means = np.repeat(np.arange(K)[:, None] * 1e5, D, axis=1)
    X = np.repeat(means, 50, axis=0) + rng.normal(size=(50 * K, D))
    covariances = {"full": np.tile(np.eye(D), (K, 1, 1)), "tied": np.eye(D),
                   "diag": np.ones((K, D)), "spherical": np.ones(K)}[cov]
    params = MixtureParams.from_covariances(np.full(K, 1 / K), means, covariances, cov)
    ref = chunk_statistics_reference(X, None, params)
    _, _, scatter, _ = fused_statistics(X, None, params.weights, params.means,
                                        params.precisions_cholesky, cov)
    np.testing.assert_allclose(scatter, ref.scatter, rtol=1e-9)


def test_kernel_calls_list_every_specialization_the_wrappers_compile():
    """After the wrappers ran on float32 and float64 points, writable or read-only,
    weighted or not, under every covariance type and both diag kernels, no kernel has a
    compiled specialization beyond those :func:`kernel_calls` lists (which the engine
    compiles ahead of a fit, and whose absence it announces)."""
    from distgmm._fused import compile_kernels, kernel_calls, missing_kernels
    from distgmm._kmeans import kmeans_labels

    calls = kernel_calls()
    compile_kernels(list(range(len(calls))))
    assert missing_kernels() == []
    listed: dict = {}
    for call in calls:
        listed.setdefault(call.kernel, set()).add(
            tuple(call.kernel.typeof_pyval(a) for a in call.arguments))
    rng = np.random.default_rng(12)
    for dtype in (np.float32, np.float64):
        for read_only in (False, True):
            X = rng.normal(size=(300, 3)).astype(dtype)
            w = rng.uniform(size=300)
            X.flags.writeable = w.flags.writeable = not read_only
            chunk_summary(X, w)
            for cov, K in (("full", 2), ("tied", 3), ("diag", 2), ("diag", 16),
                           ("spherical", 2), ("spherical", 16)):
                params = MixtureParams.from_covariances(
                    np.full(K, 1 / K), rng.normal(size=(K, 3)), random_covariances(rng, cov, K, 3),
                    cov)
                for array in (params.weights, params.means, params.precisions_cholesky):
                    array.flags.writeable = not read_only
                for weights in (None, w):
                    chunk_statistics(X, weights, params)
                params.labels(X)
                params.weighted_log_prob(X)
            kmeans_labels(X, None, 3, 2, 0)
            kmeans_labels(X, w, 3, 2, 0)
    for kernel, signatures in listed.items():
        assert set(kernel.signatures) == signatures, kernel.py_func.__name__


def test_a_fresh_cache_lacks_the_fit_kernels_until_compiled(tmp_path):
    """In a process whose numba cache is empty, the kernels a fit needs are missing and a
    fit in that process says it compiles them; once compiled (and cached), a new process
    finds them all and says nothing."""
    import os
    import subprocess
    import sys

    script = (
        "import logging, sys, numpy as np\n"
        "logging.basicConfig(stream=sys.stdout, format='%(message)s')\n"
        "from distgmm._fused import compile_kernels, fit_kernels, missing_kernels\n"
        "from distgmm.engine import local_points\n"
        "wanted = fit_kernels('float64', [('full', 2, 2)], sample_kmeans=True)\n"
        "missing = missing_kernels(wanted)\n"
        "print('missing', len(missing), len(wanted))\n"
        "local_points(np.zeros((10, 2)), None).prepare_kernels(wanted)\n"
        "compile_kernels(missing)\n")
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    env.pop("DISTGMM_KERNEL", None)
    first = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                           text=True, check=True).stdout
    assert "missing 4 4" in first
    assert ("compiling kernels (validation, E-step for float64 points, sample k-means; "
            "first run") in first
    second = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                            text=True, check=True).stdout
    assert "missing 0 4" in second and "compiling" not in second
