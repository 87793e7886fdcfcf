"""Variational mixture maths (distgmm._bayesian) against scikit-learn's BayesianGaussianMixture.

scikit-learn is the independent reference: its private steps (``_check_parameters``,
``_initialize``, ``_e_step``, ``_m_step``, ``_compute_lower_bound``) run on the whole data
with explicit responsibilities, while distgmm's run on chunks through
``chunk_statistics`` with the equivalent E-step parameters, merged statistics and no
per-row responsibilities.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.datasets import load_breast_cancer, load_iris, load_wine, make_blobs
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import BayesianGaussianMixture

from distgmm._bayesian import (
    BayesianPriors,
    VariationalParams,
    expected_log_weights,
    lower_bound,
    lower_bound_converged,
    posterior_mean_weights,
    resolve_priors,
    responsibility_entropy,
    variational_estep,
    variational_m_step,
)
from distgmm._statistics import (
    DataMoments,
    MixtureParams,
    chunk_moments,
    chunk_statistics,
    chunk_statistics_from_resp,
    merge_statistics,
)

COV_TYPES = ["full", "tied", "diag", "spherical"]
PRIOR_TYPES = ["dirichlet_process", "dirichlet_distribution"]
REG_COVAR = 1e-6
N_COMPONENTS = 5
#: Uneven row chunks (fractions of the rows) for the chunked runs.
CHUNK_FRACTIONS = (0.0, 0.13, 0.4, 0.41, 0.77, 1.0)


@functools.cache
def dataset(name: str) -> np.ndarray:
    """iris, wine and breast_cancer as scikit-learn ships them (no scaling: wine's and
    breast_cancer's features span five orders of magnitude, which the parity survives), and
    four Gaussian blobs away from the origin."""
    loaders = {"iris": load_iris, "wine": load_wine, "breast_cancer": load_breast_cancer}
    if name in loaders:
        return loaders[name]().data
    X, _ = make_blobs(n_samples=400, centers=4, n_features=3, cluster_std=[0.5, 1.0, 1.5, 0.7],
                      center_box=(-8, 8), random_state=3)
    return X + 50.0


DATASETS = ["iris", "wine", "breast_cancer", "blobs"]


def random_resp(n_samples: int, n_components: int, seed: int) -> np.ndarray:
    """scikit-learn's ``init_params="random"`` responsibilities for ``random_state=seed``."""
    resp = np.random.RandomState(seed).uniform(size=(n_samples, n_components))
    return resp / resp.sum(axis=1)[:, None]


def chunk_bounds(n_rows: int, fractions=CHUNK_FRACTIONS) -> list[tuple[int, int]]:
    cuts = sorted({int(round(f * n_rows)) for f in fractions})
    return [(a, b) for a, b in zip(cuts[:-1], cuts[1:]) if b > a]


def sklearn_model(X, cov, prior_type, n_components=N_COMPONENTS, **kwargs):
    """A BayesianGaussianMixture with its priors resolved on ``X`` (not fitted)."""
    model = BayesianGaussianMixture(n_components=n_components, covariance_type=cov,
                                    weight_concentration_prior_type=prior_type,
                                    reg_covar=REG_COVAR, **kwargs)
    model._check_parameters(X)
    return model


def priors_of(model) -> BayesianPriors:
    return BayesianPriors(
        model.weight_concentration_prior_type, model.weight_concentration_prior_,
        model.mean_precision_prior_, np.asarray(model.mean_prior_, dtype=np.float64),
        model.degrees_of_freedom_prior_, model.covariance_prior_, model.covariance_type)


def moments_of(X, w=None, diagonal=False) -> DataMoments:
    """Data moments merged over uneven chunks, as the engine's first pass would give them."""
    return functools.reduce(DataMoments.combine, [
        chunk_moments(X[a:b], None if w is None else w[a:b], diagonal)
        for a, b in chunk_bounds(X.shape[0])])


def state_of(model) -> VariationalParams:
    return VariationalParams.of_model(model)


def scalar(value) -> float:
    """scikit-learn's tied lower bound is a (1,) array; everything else a scalar."""
    return float(np.squeeze(value))


def sklearn_iterations(X, resp0, model, n_iter):
    """scikit-learn's fit loop on explicit responsibilities: the state after the start and
    ``(lower bound, state)`` after every iteration."""
    model._initialize(X, resp0)
    states, bounds = [state_of(model)], []
    for _ in range(n_iter):
        log_prob_norm, log_resp = model._e_step(X)
        model._m_step(X, log_resp)
        bounds.append(scalar(model._compute_lower_bound(log_resp, log_prob_norm)))
        states.append(state_of(model))
    return bounds, states


def distgmm_iterations(X, w, resp0, priors, n_iter, bounds=None):
    """The same loop on row chunks: M-step on merged statistics, E-step through
    ``chunk_statistics`` with the equivalent parameters, bound from the statistics."""
    bounds = chunk_bounds(X.shape[0]) if bounds is None else bounds
    chunks = [(X[a:b], None if w is None else w[a:b], resp0[a:b]) for a, b in bounds]
    cov = priors.covariance_type
    total = merge_statistics([chunk_statistics_from_resp(Xc, rc, wc, cov)
                              for Xc, wc, rc in chunks])
    state = variational_m_step(total, priors, REG_COVAR)
    states, lower_bounds = [state], []
    for _ in range(n_iter):
        estep = variational_estep(state)
        total = merge_statistics([chunk_statistics(Xc, wc, estep.params) for Xc, wc, _ in chunks])
        state = variational_m_step(total, priors, REG_COVAR)
        lower_bounds.append(lower_bound(total, estep, state))
        states.append(state)
    return lower_bounds, states


def concentration_array(state: VariationalParams) -> np.ndarray:
    return np.atleast_2d(np.asarray(state.weight_concentration))


STATE_FIELDS = ("mean_precision", "means", "degrees_of_freedom", "covariances",
                "precisions_cholesky")


def state_differences(ours: VariationalParams, theirs: VariationalParams) -> dict[str, float]:
    """Largest difference per parameter array, relative to that array's largest magnitude
    (entries near zero, such as small off-diagonal covariances, are not divided by
    themselves)."""
    pairs = {f: (getattr(ours, f), getattr(theirs, f)) for f in STATE_FIELDS}
    pairs["weight_concentration"] = (concentration_array(ours), concentration_array(theirs))
    pairs["weights"] = (posterior_mean_weights(ours), posterior_mean_weights(theirs))
    return {name: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))
                        / np.max(np.abs(np.asarray(b))))
            for name, (a, b) in pairs.items()}


def assert_states_close(ours, theirs, rtol):
    worst = state_differences(ours, theirs)
    assert max(worst.values()) < rtol, worst


# ------------------------------------------------------------------------- the kernels


@pytest.mark.parametrize("kernel", ["numba", "numpy"])
@pytest.mark.parametrize("cov", COV_TYPES)
def test_kernels_take_weights_that_do_not_sum_to_one(kernel, cov, monkeypatch):
    """The E-step only adds ``log w_k``: scaling every weight leaves the statistics as they
    are and shifts the log-likelihood by ``W log c``, in both kernel paths. The variational
    E-step relies on it."""
    monkeypatch.setenv("DISTGMM_KERNEL", kernel)
    X = dataset("blobs")
    w = np.random.default_rng(1).uniform(0.5, 2.0, size=X.shape[0])
    model = sklearn_model(X, cov, "dirichlet_process")
    model._initialize(X, random_resp(X.shape[0], N_COMPONENTS, 0))
    params = variational_estep(state_of(model)).params
    normalised = params.weights / params.weights.sum()
    unit, scaled = (chunk_statistics(X, w, MixtureParams(weights, params.means, params.covariances,
                                                         params.precisions_cholesky, cov))
                    for weights in (normalised, 1e-3 * normalised))
    np.testing.assert_allclose(scaled.resp_sum, unit.resp_sum, rtol=1e-12)
    np.testing.assert_allclose(scaled.means, unit.means, rtol=1e-12)
    np.testing.assert_allclose(scaled.scatter, unit.scatter, rtol=1e-10,
                               atol=1e-12 * np.abs(unit.scatter).max())
    assert scaled.log_likelihood == pytest.approx(
        unit.log_likelihood + w.sum() * np.log(1e-3), rel=1e-12)


# ------------------------------------------------------------------------------ priors


@pytest.mark.parametrize("cov", COV_TYPES)
@pytest.mark.parametrize("name", ["iris", "wine", "blobs"])
def test_default_priors_are_sklearn_from_chunked_moments(cov, name):
    X = dataset(name)
    model = sklearn_model(X, cov, "dirichlet_distribution")
    for diagonal in ([False, True] if cov in ("diag", "spherical") else [False]):
        priors = resolve_priors(N_COMPONENTS, cov, moments_of(X, diagonal=diagonal),
                                weight_concentration_prior_type="dirichlet_distribution")
        expected = priors_of(model)
        assert priors.weight_concentration_prior == expected.weight_concentration_prior
        assert priors.mean_precision_prior == expected.mean_precision_prior
        assert priors.degrees_of_freedom_prior == expected.degrees_of_freedom_prior
        np.testing.assert_allclose(priors.mean_prior, expected.mean_prior, rtol=1e-14)
        np.testing.assert_allclose(priors.covariance_prior, expected.covariance_prior,
                                   rtol=1e-12)
        assert np.shape(priors.covariance_prior) == np.shape(expected.covariance_prior)


@pytest.mark.parametrize("cov", COV_TYPES)
def test_given_priors_are_kept_and_checked_as_sklearn_does(cov):
    X = dataset("iris")
    D = X.shape[1]
    given_cov = {"full": 2 * np.eye(D), "tied": 2 * np.eye(D), "diag": np.full(D, 2.0),
                 "spherical": 2.0}[cov]
    kwargs = dict(weight_concentration_prior=0.3, mean_precision_prior=0.5,
                  mean_prior=np.arange(D, dtype=float), degrees_of_freedom_prior=D + 1.5,
                  covariance_prior=given_cov)
    priors = resolve_priors(3, cov, moments_of(X), **kwargs)
    model = sklearn_model(X, cov, "dirichlet_process", n_components=3, **kwargs)
    expected = priors_of(model)
    for field in ("weight_concentration_prior", "mean_precision_prior",
                  "degrees_of_freedom_prior"):
        assert getattr(priors, field) == getattr(expected, field)
    np.testing.assert_array_equal(priors.mean_prior, expected.mean_prior)
    np.testing.assert_array_equal(priors.covariance_prior, expected.covariance_prior)

    bad = {"degrees_of_freedom_prior": D - 1.0, "mean_prior": np.zeros(D + 1)}
    if cov != "spherical":
        bad["covariance_prior"] = {"full": -np.eye(D), "tied": np.ones((D, D + 1)),
                                   "diag": np.zeros(D)}[cov]
    for name, value in bad.items():
        with pytest.raises(ValueError) as theirs:
            sklearn_model(X, cov, "dirichlet_process", **{name: value})
        with pytest.raises(ValueError) as ours:
            resolve_priors(N_COMPONENTS, cov, moments_of(X), **{name: value})
        assert str(ours.value) == str(theirs.value)


def test_moments_merge_exactly_and_weights_repeat_rows():
    X = dataset("blobs")
    w = np.random.default_rng(2).integers(0, 4, size=X.shape[0])
    merged = moments_of(X, w.astype(float))
    whole = chunk_moments(np.repeat(X, w, axis=0), None)
    assert merged.weight_sum == whole.weight_sum
    np.testing.assert_allclose(merged.mean, whole.mean, rtol=1e-14)
    np.testing.assert_allclose(merged.covariance, np.cov(np.repeat(X, w, axis=0).T), rtol=1e-12)
    np.testing.assert_allclose(merged.scatter, whole.scatter, rtol=1e-12)


def test_default_covariance_prior_needs_more_than_one_unit_of_weight():
    moments = chunk_moments(np.ones((3, 2)), np.array([0.5, 0.25, 0.0]))
    with pytest.raises(ValueError, match="total sample weight above 1"):
        resolve_priors(2, "diag", moments)


# ------------------------------------------------------------------ M-step and E-step


@pytest.mark.parametrize("prior_type", PRIOR_TYPES)
@pytest.mark.parametrize("cov", COV_TYPES)
def test_m_step_is_sklearns_including_an_empty_component(cov, prior_type):
    X = dataset("wine")
    resp = random_resp(X.shape[0], N_COMPONENTS, 4)
    resp[:, 2] = 0.0  # a component that received nothing
    resp /= resp.sum(axis=1)[:, None]
    model = sklearn_model(X, cov, prior_type)
    model._initialize(X, resp)
    total = merge_statistics([chunk_statistics_from_resp(X[a:b], resp[a:b], None, cov)
                              for a, b in chunk_bounds(X.shape[0])])
    state = variational_m_step(total, priors_of(model), REG_COVAR)
    assert_states_close(state, state_of(model), 1e-13)


@pytest.mark.parametrize("prior_type", PRIOR_TYPES)
@pytest.mark.parametrize("cov", COV_TYPES)
def test_estep_params_give_sklearns_weighted_log_prob(cov, prior_type):
    X = dataset("iris")
    model = sklearn_model(X, cov, prior_type)
    model._initialize(X, random_resp(X.shape[0], N_COMPONENTS, 5))
    state = state_of(model)
    estep = variational_estep(state)
    np.testing.assert_allclose(expected_log_weights(state), model._estimate_log_weights(),
                               rtol=1e-15)
    expected = model._estimate_weighted_log_prob(X)
    np.testing.assert_allclose(estep.params.weighted_log_prob(X) + estep.log_weight_shift,
                               expected, rtol=1e-12)
    assert estep.log_weights.max() == 0.0
    np.testing.assert_array_equal(estep.params.labels(X), model.predict(X))
    np.testing.assert_allclose(np.exp(estep.params.log_responsibilities(X)[1]),
                               model.predict_proba(X), rtol=1e-10, atol=1e-13)


def test_estep_weights_do_not_underflow_in_many_dimensions():
    """With nu_k near D the constants c_k are about -D/2: at D = 2000 every unshifted weight
    exp(E[log pi_k] + c_k) is 0, the shifted ones are not and give scikit-learn's
    responsibilities."""
    rng = np.random.default_rng(6)
    X = rng.normal(size=(40, 2000))
    X[20:] += 0.3
    model = sklearn_model(X, "diag", "dirichlet_process", n_components=2)
    resp = np.zeros((40, 2))
    resp[:20, 0] = resp[20:, 1] = 1.0
    model._initialize(X, resp)
    estep = variational_estep(state_of(model))
    assert np.all(np.exp(estep.log_weights + estep.log_weight_shift) == 0.0)
    _, log_resp = model._estimate_log_prob_resp(X)
    total = chunk_statistics(X, None, estep.params)
    np.testing.assert_allclose(total.resp_sum, np.exp(log_resp).sum(axis=0), rtol=1e-12)


# ------------------------------------------------------------------------- lower bound


@pytest.mark.parametrize("offset", [0.0, 1e4])
@pytest.mark.parametrize("cov", COV_TYPES)
def test_responsibility_entropy_from_statistics_is_the_explicit_sum(cov, offset):
    """-sum_i w_i sum_k r_ik log r_ik from per-row responsibilities, against the value from
    merged statistics alone, with weights and data far from the origin."""
    X = dataset("blobs") + offset
    w = np.random.default_rng(7).uniform(0.0, 3.0, size=X.shape[0])
    model = sklearn_model(X, cov, "dirichlet_process")
    model._initialize(X, random_resp(X.shape[0], N_COMPONENTS, 8))
    estep = variational_estep(state_of(model))
    _, log_resp = estep.params.log_responsibilities(X)
    resp = np.exp(log_resp)
    explicit = -float(np.sum(w[:, None] * resp * np.where(resp > 0, log_resp, 0.0)))
    total = merge_statistics([chunk_statistics(X[a:b], w[a:b], estep.params)
                              for a, b in chunk_bounds(X.shape[0])])
    assert responsibility_entropy(total, estep) == pytest.approx(explicit, rel=1e-9)


@pytest.mark.parametrize("prior_type", PRIOR_TYPES)
@pytest.mark.parametrize("cov", COV_TYPES)
def test_lower_bound_is_sklearns_from_explicit_responsibilities(cov, prior_type):
    X = dataset("breast_cancer")
    model = sklearn_model(X, cov, prior_type)
    model._initialize(X, random_resp(X.shape[0], N_COMPONENTS, 9))
    estep = variational_estep(state_of(model))
    log_prob_norm, log_resp = model._e_step(X)
    model._m_step(X, log_resp)
    expected = scalar(model._compute_lower_bound(log_resp, log_prob_norm))
    total = merge_statistics([chunk_statistics(X[a:b], None, estep.params)
                              for a, b in chunk_bounds(X.shape[0])])
    state = variational_m_step(total, priors_of(model), REG_COVAR)
    assert lower_bound(total, estep, state) == pytest.approx(expected, rel=1e-11)


@pytest.mark.parametrize("cov", COV_TYPES)
def test_a_component_with_no_weight_left_adds_nothing(cov):
    """A Dirichlet process with a tiny concentration and empty last sticks: their expected
    log weights are about -1e4, their equivalent weights exactly 0 (log -inf in the
    kernels), and the E-step, the statistics and the bound stay scikit-learn's."""
    X = dataset("iris")
    resp = random_resp(X.shape[0], N_COMPONENTS, 16)
    resp[:, 3:] = 0.0
    resp /= resp.sum(axis=1)[:, None]
    model = sklearn_model(X, cov, "dirichlet_process", weight_concentration_prior=1e-4)
    model._initialize(X, resp)
    estep = variational_estep(state_of(model))
    assert np.all(estep.log_weights[3:] < -1e3) and np.all(estep.params.weights[3:] == 0.0)
    log_prob_norm, log_resp = model._e_step(X)
    model._m_step(X, log_resp)
    expected = scalar(model._compute_lower_bound(log_resp, log_prob_norm))
    total = merge_statistics([chunk_statistics(X[a:b], None, estep.params)
                              for a, b in chunk_bounds(X.shape[0])])
    np.testing.assert_array_equal(total.resp_sum[3:], 0.0)
    state = variational_m_step(total, priors_of(model), REG_COVAR)
    assert lower_bound(total, estep, state) == pytest.approx(expected, rel=1e-11)
    assert_states_close(state, state_of(model), 1e-12)


# --------------------------------------------------------------------- whole iterations


@pytest.mark.parametrize("prior_type", PRIOR_TYPES)
@pytest.mark.parametrize("cov", COV_TYPES)
@pytest.mark.parametrize("name", DATASETS)
def test_iterations_follow_sklearn(name, cov, prior_type):
    """25 iterations from the same random responsibilities: every lower bound and every
    posterior, on row chunks, as scikit-learn's loop computes them on the whole data."""
    X = dataset(name)
    resp0 = random_resp(X.shape[0], N_COMPONENTS, 10)
    model = sklearn_model(X, cov, prior_type)
    expected_bounds, expected_states = sklearn_iterations(X, resp0, model, 25)
    priors = resolve_priors(N_COMPONENTS, cov, moments_of(X),
                            weight_concentration_prior_type=prior_type)
    bounds, states = distgmm_iterations(X, None, resp0, priors, 25)
    np.testing.assert_allclose(bounds, expected_bounds, rtol=1e-10)
    for ours, theirs in zip(states, expected_states):
        assert_states_close(ours, theirs, 1e-9)


@pytest.mark.parametrize("prior_type", PRIOR_TYPES)
@pytest.mark.parametrize("cov", COV_TYPES)
def test_loop_reproduces_sklearns_public_fit(cov, prior_type):
    """scikit-learn's ``fit`` with ``init_params="random"`` starts from
    ``RandomState(seed).uniform`` responsibilities: from those, the loop gives its
    ``lower_bounds_``, stops at its ``n_iter_`` with ``lower_bound_converged`` and ends
    with its fitted attributes."""
    X = dataset("blobs")
    model = BayesianGaussianMixture(
        n_components=N_COMPONENTS, covariance_type=cov, weight_concentration_prior_type=prior_type,
        reg_covar=REG_COVAR, init_params="random", random_state=11, max_iter=200, tol=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        model.fit(X)
    priors = resolve_priors(N_COMPONENTS, cov, moments_of(X),
                            weight_concentration_prior_type=prior_type)
    resp0 = random_resp(X.shape[0], N_COMPONENTS, 11)
    bounds, states = distgmm_iterations(X, None, resp0, priors, model.n_iter_)
    # scikit-learn's tied bound is a (1,) array, so its lower_bounds_ is (n_iter, 1)
    np.testing.assert_allclose(bounds, np.ravel(model.lower_bounds_), rtol=1e-10)
    history = [-np.inf, *bounds]
    stops = [lower_bound_converged(a, b, 1e-3) for a, b in zip(history[:-1], history[1:])]
    assert stops == [False] * (model.n_iter_ - 1) + [True]
    assert_states_close(states[-1], state_of(model), 1e-9)
    attributes = states[-1].sklearn_attributes()
    for name, value in attributes.items():
        if name != "weight_concentration_":
            np.testing.assert_allclose(value, getattr(model, name), rtol=1e-8,
                                       atol=1e-10 * np.abs(getattr(model, name)).max())


def test_dirichlet_process_keeps_the_components_the_data_needs():
    """Eight components offered to four blobs: the posterior mean weights (scikit-learn's
    ``weights_``) keep the same components above 1% as scikit-learn's fit and leave the
    others near zero. (From this random start both end in the same local optimum, one
    component covering two blobs, hence three or four.)"""
    X = dataset("blobs")
    model = BayesianGaussianMixture(n_components=8, reg_covar=REG_COVAR, init_params="random",
                                    random_state=0, max_iter=500).fit(X)
    priors = resolve_priors(8, "full", moments_of(X))
    _, states = distgmm_iterations(X, None, random_resp(X.shape[0], 8, 0), priors,
                                   model.n_iter_)
    weights = posterior_mean_weights(states[-1])
    np.testing.assert_allclose(weights, model.weights_, rtol=1e-8, atol=1e-12)
    assert weights.sum() == pytest.approx(1.0, rel=1e-15)
    kept = weights > 0.01
    np.testing.assert_array_equal(kept, model.weights_ > 0.01)
    assert 3 <= kept.sum() <= 4
    assert weights[~kept].max() < 3e-3


def test_convergence_rule_is_on_the_total_bound():
    assert not lower_bound_converged(-np.inf, -1e300, 1e-3)
    assert lower_bound_converged(1000.0, 1000.0 + 9e-4, 1e-3)
    assert not lower_bound_converged(1000.0, 1000.0 - 2e-3, 1e-3)


@pytest.mark.parametrize("kernel", ["numpy"])
def test_numpy_reference_kernel_follows_sklearn_too(kernel, monkeypatch):
    monkeypatch.setenv("DISTGMM_KERNEL", kernel)
    test_iterations_follow_sklearn("wine", "full", "dirichlet_process")
    test_iterations_follow_sklearn("iris", "spherical", "dirichlet_distribution")


# ------------------------------------------------------------- chunking and weights


@settings(max_examples=12, deadline=None)
@given(cuts=st.lists(st.integers(1, 399), max_size=6, unique=True),
       cov=st.sampled_from(COV_TYPES), prior_type=st.sampled_from(PRIOR_TYPES))
def test_fit_does_not_depend_on_the_chunking(cuts, cov, prior_type):
    X = dataset("blobs")
    resp0 = random_resp(X.shape[0], N_COMPONENTS, 12)
    priors = resolve_priors(N_COMPONENTS, cov, moments_of(X),
                            weight_concentration_prior_type=prior_type)
    whole_bounds, whole_states = distgmm_iterations(X, None, resp0, priors, 10, [(0, 400)])
    edges = [0, *sorted(cuts), 400]
    bounds, states = distgmm_iterations(X, None, resp0, priors, 10,
                                        list(zip(edges[:-1], edges[1:])))
    np.testing.assert_allclose(bounds, whole_bounds, rtol=1e-10)
    assert_states_close(states[-1], whole_states[-1], 1e-10)


@pytest.mark.parametrize("prior_type", PRIOR_TYPES)
@pytest.mark.parametrize("cov", COV_TYPES)
def test_integer_weights_are_repeated_rows(cov, prior_type):
    """A point of weight w counts as w copies: weighted chunks give scikit-learn's fit of
    the data with every row repeated (rows of weight 0 dropped), priors included."""
    X = dataset("iris")
    w = np.random.default_rng(13).integers(0, 4, size=X.shape[0])
    repeated = np.repeat(X, w, axis=0)
    resp0 = random_resp(X.shape[0], N_COMPONENTS, 14)
    model = sklearn_model(repeated, cov, prior_type)
    expected_bounds, expected_states = sklearn_iterations(repeated, np.repeat(resp0, w, axis=0),
                                                          model, 15)
    priors = resolve_priors(N_COMPONENTS, cov, moments_of(X, w.astype(float)),
                            weight_concentration_prior_type=prior_type)
    bounds, states = distgmm_iterations(X, w.astype(float), resp0, priors, 15)
    np.testing.assert_allclose(bounds, expected_bounds, rtol=1e-10)
    assert_states_close(states[-1], expected_states[-1], 1e-9)


@pytest.mark.parametrize("cov", COV_TYPES)
def test_data_far_from_the_origin_keeps_its_digits(cov):
    """Moved by 1e6 (about 1e6 standard deviations), the fit is the same one moved: the
    statistics, the M-step and the lower bound use centered quantities only. (scikit-learn's
    tied, diag and spherical M-steps subtract uncentered moments and lose 1e-5 to 1e-3
    here.) Two iterations: ``X + 1e6`` is itself ``X`` rounded to about 1e-10, and EM
    iterations amplify such perturbations whatever the arithmetic."""
    X = dataset("blobs") - 50.0
    resp0 = random_resp(X.shape[0], N_COMPONENTS, 15)
    near = resolve_priors(N_COMPONENTS, cov, moments_of(X))
    far = resolve_priors(N_COMPONENTS, cov, moments_of(X + 1e6))
    near_bounds, near_states = distgmm_iterations(X, None, resp0, near, 2)
    far_bounds, far_states = distgmm_iterations(X + 1e6, None, resp0, far, 2)
    np.testing.assert_allclose(far_bounds, near_bounds, rtol=1e-10)
    moved, far_state = near_states[-1], far_states[-1]
    np.testing.assert_allclose(far_state.means - 1e6, moved.means, atol=1e-8)
    np.testing.assert_allclose(far_state.covariances, moved.covariances, rtol=1e-8,
                               atol=1e-9 * np.abs(moved.covariances).max())
