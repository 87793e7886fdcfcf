"""GaussianMixture: parity with scikit-learn, the estimator contract, and bad input."""

from __future__ import annotations

import warnings

import dask.array as da
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture as SkGaussianMixture

import distgmm
from distgmm import CollapsedComponentError, GaussianMixture

COV_TYPES = ["full", "tied", "diag", "spherical"]


def blobs(n_per, centers, scales, seed=0, offset=0.0):
    rng = np.random.default_rng(seed)
    parts = [rng.normal(c, s, size=(n, len(c))) for n, c, s in zip(n_per, centers, scales)]
    return np.vstack(parts) + offset


DATASETS = {
    "seed-blobs-2d": lambda: blobs([300, 600], [[0, 0], [3, 3]], [1.2, 1.8], seed=1),
    "three-5d": lambda: blobs([200, 500, 300], [[0] * 5, [4] * 5, [-3, 3, 0, 2, 1]],
                              [1.0, 0.6, 1.5], seed=2),
    "one-feature": lambda: blobs([250, 250, 100], [[0], [5], [9]], [1, 0.8, 0.5], seed=3),
}


def starting_point(X, K, cov, seed=0):
    """The same starting parameters for both implementations."""
    rng = np.random.default_rng(seed)
    D = X.shape[1]
    means = X[rng.choice(len(X), K, replace=False)]
    prec = {"full": np.tile(np.eye(D), (K, 1, 1)), "tied": np.eye(D),
            "diag": np.ones((K, D)), "spherical": np.ones(K)}[cov]
    return dict(weights_init=np.full(K, 1.0 / K), means_init=means, precisions_init=prec)


def assert_same_fit(ours, ref, shift=0.0):
    assert ours.n_iter_ == ref.n_iter_
    assert ours.converged_ == ref.converged_
    assert ours.lower_bound_ == pytest.approx(ref.lower_bound_, rel=1e-6)
    np.testing.assert_allclose(ours.weights_, ref.weights_, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(ours.means_ - shift, ref.means_, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours.covariances_, ref.covariances_, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(ours.precisions_cholesky_, ref.precisions_cholesky_,
                               rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("cov", COV_TYPES)
@pytest.mark.parametrize("name", sorted(DATASETS))
def test_parity_with_sklearn_from_same_start(client, name, cov):
    X = DATASETS[name]()
    K = 3 if name != "seed-blobs-2d" else 2
    init = starting_point(X, K, cov)
    ref = SkGaussianMixture(K, covariance_type=cov, tol=1e-6, max_iter=300, **init).fit(X)
    ours = GaussianMixture(K, covariance_type=cov, tol=1e-6, max_iter=300, **init).fit(X)
    assert_same_fit(ours, ref)
    np.testing.assert_allclose(ours.lower_bounds_, ref.lower_bounds_, rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cov", COV_TYPES)
def test_parity_far_from_origin(client, cov, dtype):
    """Data with mean 1e6 and spread 1: float32 and float64 storage.

    scikit-learn's tied/diag/spherical M-step and diag/spherical E-step use raw second
    moments, which lose about 1e-4 of the covariance at this offset (it does not even
    converge), so the reference is scikit-learn on the same values (cast to float64)
    translated to the origin: a Gaussian mixture fit is translation-equivariant, so that is
    the exact answer. For 'full' scikit-learn is exact and is also compared directly.
    """
    offset = 1e6
    X = blobs([400, 600], [[0, 0, 0], [2.5, 2.5, 2.5]], [1.0, 0.7], seed=4, offset=offset)
    X = X.astype(dtype)
    X64 = X.astype(np.float64)
    init = starting_point(X64, 2, cov)
    ours = GaussianMixture(2, covariance_type=cov, tol=1e-6, max_iter=300, **init).fit(X)
    centered = dict(init, means_init=init["means_init"] - offset)
    ref = SkGaussianMixture(2, covariance_type=cov, tol=1e-6, max_iter=300,
                            **centered).fit(X64 - offset)
    assert_same_fit(ours, ref, shift=offset)
    if cov == "full":
        direct = SkGaussianMixture(2, covariance_type=cov, tol=1e-6, max_iter=300,
                                   **init).fit(X64)
        assert_same_fit(ours, direct)


def test_integer_sample_weight_equals_repeated_rows(client):
    X = DATASETS["three-5d"]()
    counts = np.random.default_rng(5).integers(0, 4, size=len(X))
    init = starting_point(X, 3, "full")
    weighted = GaussianMixture(3, tol=1e-8, **init).fit(X, sample_weight=counts)
    repeated = GaussianMixture(3, tol=1e-8, **init).fit(np.repeat(X, counts, axis=0))
    assert weighted.n_iter_ == repeated.n_iter_
    assert weighted.lower_bound_ == pytest.approx(repeated.lower_bound_, rel=1e-10)
    np.testing.assert_allclose(weighted.means_, repeated.means_, rtol=1e-9)
    np.testing.assert_allclose(weighted.covariances_, repeated.covariances_, rtol=1e-8)


def test_dask_sample_weight(client):
    X = DATASETS["seed-blobs-2d"]()
    w = np.random.default_rng(6).uniform(0.5, 2, size=len(X))
    init = starting_point(X, 2, "diag")
    a = GaussianMixture(2, covariance_type="diag", **init).fit(X, sample_weight=w)
    b = GaussianMixture(2, covariance_type="diag", **init).fit(
        da.from_array(X, chunks=(100, 2)), sample_weight=da.from_array(w, chunks=333))
    np.testing.assert_allclose(a.means_, b.means_, rtol=1e-10)


@pytest.mark.parametrize("init_params", ["kmeans", "k-means||", "k-means++", "random_from_data"])
def test_every_init_method_finds_separated_clusters(client, init_params):
    X = blobs([300, 300, 300], [[0, 0], [10, 0], [0, 10]], [0.5, 0.5, 0.5], seed=7)
    gm = GaussianMixture(3, init_params=init_params, n_init=2, random_state=0).fit(X)
    found = sorted(map(tuple, np.round(gm.means_)))
    assert found == [(0.0, 0.0), (0.0, 10.0), (10.0, 0.0)]
    assert gm.converged_


def test_random_init_is_deterministic_for_a_seed(client):
    X = DATASETS["three-5d"]()
    a = GaussianMixture(3, init_params="random", random_state=3, max_iter=5).fit(X)
    b = GaussianMixture(3, init_params="random", random_state=3, max_iter=5).fit(X)
    c = GaussianMixture(3, init_params="random", random_state=4, max_iter=5).fit(X)
    np.testing.assert_array_equal(a.means_, b.means_)
    assert not np.array_equal(a.means_, c.means_)


def test_n_init_keeps_best_lower_bound(client):
    X = DATASETS["three-5d"]()
    gm = GaussianMixture(3, init_params="random", n_init=4, random_state=0, max_iter=30).fit(X)
    finals = [h[-1] for h in gm.lower_bounds_per_init_]
    assert len(finals) == 4
    assert gm.lower_bound_ == max(finals)
    assert gm.lower_bounds_ in gm.lower_bounds_per_init_


def test_fit_predict_equals_fit_then_predict(client):
    X = DATASETS["seed-blobs-2d"]()
    labels = GaussianMixture(2, random_state=0).fit_predict(X)
    again = GaussianMixture(2, random_state=0).fit(X).predict(X)
    np.testing.assert_array_equal(labels, again)


def test_prediction_methods_match_sklearn_with_same_parameters(client):
    X = DATASETS["three-5d"]()
    ours = GaussianMixture(3, covariance_type="tied", random_state=0).fit(X)
    ref = SkGaussianMixture(3, covariance_type="tied")
    for attr in ("weights_", "means_", "covariances_", "precisions_cholesky_", "precisions_"):
        setattr(ref, attr, getattr(ours, attr))
    np.testing.assert_allclose(ours.score_samples(X), ref.score_samples(X), rtol=1e-10)
    np.testing.assert_allclose(ours.predict_proba(X), ref.predict_proba(X), atol=1e-10)
    np.testing.assert_array_equal(ours.predict(X), ref.predict(X))
    assert ours.score(X) == pytest.approx(ref.score(X), rel=1e-12)
    assert ours.bic(X) == pytest.approx(ref.bic(X), rel=1e-12)
    assert ours.aic(X) == pytest.approx(ref.aic(X), rel=1e-12)
    ref.random_state = ours.random_state = 11
    ref.n_components = 3
    Xs, ys = ours.sample(500)
    Xr, yr = ref.sample(500)
    np.testing.assert_allclose(Xs, Xr)
    np.testing.assert_array_equal(ys, yr)


def test_dask_input_gives_lazy_results_with_input_chunks(client):
    X = DATASETS["seed-blobs-2d"]()
    dX = da.from_array(X, chunks=(250, 2))
    gm = GaussianMixture(2, random_state=0).fit(dX)
    labels = gm.predict(dX)
    proba = gm.predict_proba(dX)
    scores = gm.score_samples(dX)
    assert isinstance(labels, da.Array) and labels.chunks == (dX.chunks[0],)
    assert isinstance(proba, da.Array) and proba.chunks == (dX.chunks[0], (2,))
    assert isinstance(scores, da.Array)
    np.testing.assert_array_equal(labels.compute(), gm.predict(X))
    np.testing.assert_allclose(proba.compute(), gm.predict_proba(X))
    assert gm.score(dX) == pytest.approx(gm.score(X), rel=1e-12)


def test_persisting_or_streaming_dask_input_gives_the_same_bits(client):
    dX = da.from_array(DATASETS["three-5d"](), chunks=(128, 5))
    fits = [GaussianMixture(3, random_state=0, persist=p).fit(dX) for p in (True, False)]
    assert fits[0].lower_bounds_ == fits[1].lower_bounds_
    assert np.array_equal(fits[0].covariances_, fits[1].covariances_)


def test_zarr_array_input(client, tmp_path):
    import zarr

    X = DATASETS["seed-blobs-2d"]().astype(np.float32)
    z = zarr.create_array(str(tmp_path / "x.zarr"), shape=X.shape, chunks=(128, 2),
                          dtype="float32")
    z[:] = X
    init = starting_point(X.astype(np.float64), 2, "full")
    a = GaussianMixture(2, **init).fit(z)
    b = GaussianMixture(2, **init).fit(X)
    np.testing.assert_allclose(a.means_, b.means_, rtol=1e-10)
    assert isinstance(a.predict(z), da.Array)


def test_estimator_contract(client):
    gm = GaussianMixture(4, covariance_type="diag", random_state=3, scheduler=None)
    params = gm.get_params()
    assert params["n_components"] == 4 and params["covariance_type"] == "diag"
    assert set(params) >= {"tol", "reg_covar", "max_iter", "n_init", "init_params",
                           "weights_init", "means_init", "precisions_init", "random_state",
                           "warm_start", "verbose", "verbose_interval", "scheduler", "persist"}
    copy = clone(gm)
    assert copy.get_params() == params and copy is not gm
    gm.set_params(n_components=2, tol=1e-4)
    assert gm.n_components == 2 and gm.tol == 1e-4
    assert not hasattr(gm, "means_")


def test_convergence_warning_when_max_iter_reached(client):
    X = DATASETS["three-5d"]()
    with pytest.warns(ConvergenceWarning, match="did not converge"):
        gm = GaussianMixture(3, max_iter=2, tol=0, random_state=0).fit(X)
    assert not gm.converged_ and gm.n_iter_ == 2 and len(gm.lower_bounds_) == 2


def test_warm_start_continues_from_previous_fit(client):
    X = DATASETS["three-5d"]()
    init = starting_point(X, 3, "full")
    full = GaussianMixture(3, max_iter=20, tol=0, **init)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        full.fit(X)
        warm = GaussianMixture(3, max_iter=10, tol=0, warm_start=True, **init)
        warm.fit(X).fit(X)
    np.testing.assert_allclose(warm.means_, full.means_, rtol=1e-12)


def test_collapsing_component_is_named(client):
    X = np.vstack([blobs([50, 50], [[0, 0], [5, 5]], [1, 1]), [[100.0, 100.0]]])
    means = np.array([[0.0, 0.0], [5.0, 5.0], [100.0, 100.0]])
    start = dict(means_init=means, weights_init=np.full(3, 1 / 3),
                 precisions_init=np.tile(np.eye(2), (3, 1, 1)))
    with pytest.raises(CollapsedComponentError, match=r"component 2 .*increase reg_covar") as e:
        GaussianMixture(3, reg_covar=0.0, **start).fit(X)
    assert e.value.component == 2


def test_fewer_distinct_points_than_components(client):
    X = np.vstack([np.zeros((50, 2)), np.ones((50, 2))])
    with pytest.raises(ValueError, match="only 2 distinct points.*n_components=3"):
        GaussianMixture(3, random_state=0).fit(X)


def test_verbose_logs_iterations(client, caplog):
    X = DATASETS["seed-blobs-2d"]()
    with caplog.at_level("INFO", logger="distgmm"):
        GaussianMixture(2, verbose=1, verbose_interval=1, random_state=0).fit(X)
    assert any("iteration 1:" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------ bad input
def _fit(X, **kw):
    sw = kw.pop("sample_weight", None)
    return GaussianMixture(**{"n_components": 2, **kw}).fit(X, sample_weight=sw)


BAD_INPUTS = [
    ("not 2-D", lambda: np.ones(10), {}, r"X must be 2-D .*got 1-D.*reshape\(-1, 1\)"),
    ("feature chunks", lambda: da.ones((100, 4), chunks=(50, 2)), {},
     r"chunked along the feature axis.*rechunk"),
    ("NaN", lambda: np.where(np.arange(200)[:, None] % 50 == 0, np.nan, np.ones((200, 2))),
     {}, r"NaN or infinite values in 4 of 200 rows"),
    ("inf", lambda: np.vstack([np.ones((20, 2)), [[np.inf, 0]]]), {},
     r"NaN or infinite values in 1 of 21 rows"),
    ("fewer points than components", lambda: np.ones((3, 2)), {"n_components": 5},
     r"n_samples >= n_components.*n_components = 5, n_samples = 3"),
    ("zero rows", lambda: np.ones((0, 2)), {}, r"X has 0 rows"),
    ("non-numeric", lambda: np.array([["a", "b"], ["c", "d"]]), {}, r"dtype <U1.*not numeric"),
    ("negative weights", lambda: np.random.default_rng(0).normal(size=(50, 2)),
     {"sample_weight": np.r_[-np.ones(3), np.ones(47)]}, r"3 negative values"),
    ("all-zero weights", lambda: np.random.default_rng(0).normal(size=(50, 2)),
     {"sample_weight": np.zeros(50)}, r"sample_weight sums to zero"),
    ("weights of the wrong length", lambda: np.ones((50, 2)),
     {"sample_weight": np.ones(49)}, r"sample_weight must have shape \(50,\).*got \(49,\)"),
    ("bad n_components", lambda: np.ones((10, 2)), {"n_components": 0},
     r"n_components must be an int >= 1, got 0"),
    ("bad covariance_type", lambda: np.ones((10, 2)), {"covariance_type": "banana"},
     r"covariance_type must be one of full, tied, diag, spherical; got 'banana'"),
    ("bad init_params", lambda: np.ones((10, 2)), {"init_params": "nope"},
     r"init_params must be one of kmeans, k-means\|\|"),
    ("negative tol", lambda: np.ones((10, 2)), {"tol": -1.0}, r"tol must be a finite number"),
    ("negative reg_covar", lambda: np.ones((10, 2)), {"reg_covar": -1e-3},
     r"reg_covar must be a finite number >= 0"),
    ("bad weights_init", lambda: np.ones((10, 2)), {"weights_init": [0.3, 0.3]},
     r"weights_init must sum to 1"),
    ("bad means_init", lambda: np.ones((10, 2)), {"means_init": np.zeros((3, 2))},
     r"means_init must have shape \(2, 2\), got \(3, 2\)"),
    ("bad precisions_init", lambda: np.ones((10, 2)),
     {"precisions_init": -np.tile(np.eye(2), (2, 1, 1))},
     r"precisions_init\[0\] is not symmetric positive definite"),
    ("bad persist", lambda: np.ones((10, 2)), {"persist": "yes"},
     r"persist must be 'auto', True or False; got 'yes'"),
    ("bad random_state", lambda: np.ones((10, 2)), {"random_state": "x"},
     r"random_state must be None, a non-negative int"),
]


@pytest.mark.parametrize("make_X,kwargs,message", [b[1:] for b in BAD_INPUTS],
                         ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_raises_clear_error(client, make_X, kwargs, message):
    with pytest.raises(ValueError, match=message):
        _fit(make_X(), **kwargs)


def test_nonfinite_in_dask_input_found_in_first_pass(client):
    X = np.random.default_rng(0).normal(size=(400, 3))
    X[[5, 390]] = np.nan
    with pytest.raises(ValueError, match=r"NaN or infinite values in 2 of 400 rows"):
        GaussianMixture(2, init_params="k-means||").fit(da.from_array(X, chunks=(64, 3)))


def test_store_path_input_and_missing_store(client, tmp_path):
    with pytest.raises(ValueError, match=r"cannot open .*distgmm ingest"):
        GaussianMixture(2).fit(str(tmp_path / "missing.zarr"))


def test_predict_with_wrong_feature_count(client):
    gm = GaussianMixture(2, random_state=0).fit(DATASETS["seed-blobs-2d"]())
    with pytest.raises(ValueError, match="X has 3 features, but the model was fitted with 2"):
        gm.predict(np.ones((4, 3)))


def test_public_api():
    assert distgmm.GaussianMixture is GaussianMixture


def test_fit_candidates_equal_separate_fits_and_sklearn_criteria(client):
    from distgmm._estimator import fit_candidates

    X = DATASETS["three-5d"]()
    grid = [(k, cov) for k in (1, 2, 3) for cov in ("full", "diag")]
    models = [GaussianMixture(k, covariance_type=cov, random_state=0) for k, cov in grid]
    outcomes = fit_candidates(models, X)
    for (k, cov), model, (bic, aic) in zip(grid, models, outcomes):
        alone = GaussianMixture(k, covariance_type=cov, random_state=0).fit(X)
        assert model.lower_bounds_ == alone.lower_bounds_
        np.testing.assert_array_equal(model.means_, alone.means_)
        assert bic == pytest.approx(alone.bic(X), rel=1e-10)
        assert aic == pytest.approx(alone.aic(X), rel=1e-10)
    best = min(range(len(grid)), key=lambda i: outcomes[i][0])
    assert grid[best][0] == 3, "BIC picks the three true components"
