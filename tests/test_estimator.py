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


@pytest.mark.parametrize("lazy", [False, True], ids=["in-process", "cluster"])
@pytest.mark.parametrize("cov", COV_TYPES)
@pytest.mark.parametrize("name", sorted(DATASETS))
def test_parity_with_sklearn_from_same_start(client, name, cov, lazy):
    X = DATASETS[name]()
    K = 3 if name != "seed-blobs-2d" else 2
    init = starting_point(X, K, cov)
    ref = SkGaussianMixture(K, covariance_type=cov, tol=1e-6, max_iter=300, **init).fit(X)
    data = da.from_array(X, chunks=(128, X.shape[1])) if lazy else X
    ours = GaussianMixture(K, covariance_type=cov, tol=1e-6, max_iter=300, **init).fit(data)
    assert_same_fit(ours, ref)
    np.testing.assert_allclose(ours.lower_bounds_, ref.lower_bounds_, rtol=1e-6)


@pytest.mark.parametrize("init_params", ["kmeans", "k-means++", "random", "random_from_data"])
@pytest.mark.parametrize("cov", COV_TYPES)
def test_in_process_fit_is_sklearns_fit_for_the_same_seed(init_params, cov):
    """In-memory data, no scheduler: scikit-learn's own initialisation draws, restarts in
    its order, its choice of the best restart, so the same numbers for the same seed.

    Restarts that reach the same optimum have lower bounds a rounding apart, so which one
    is kept can differ: with ``n_init=3`` the kept fit must be the same optimum (up to the
    order of the components) and every restart's start is compared through ``n_init=1``
    fits from the same stream. The first lower bound of ``k-means++`` and
    ``random_from_data`` starts (covariances of ``reg_covar``, log-densities near -1e6)
    agrees to about 1e-8 relative.
    """
    X = DATASETS["three-5d"]()
    kw = dict(n_components=3, covariance_type=cov, init_params=init_params, max_iter=40)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        sk_state, our_state = np.random.RandomState(11), np.random.RandomState(11)
        for _ in range(3):  # three restarts in a row from one stream, as n_init=3 draws
            ref = SkGaussianMixture(random_state=sk_state, **kw).fit(X)
            ours = GaussianMixture(random_state=our_state, **kw).fit(X)
            assert_same_fit(ours, ref)
            np.testing.assert_allclose(ours.lower_bounds_[1:], ref.lower_bounds_[1:],
                                       rtol=1e-9)
            np.testing.assert_array_equal(ours.predict(X), ref.predict(X))
        ref = SkGaussianMixture(random_state=11, n_init=3, **kw).fit(X)
        ours = GaussianMixture(random_state=11, n_init=3, **kw).fit(X)
    assert ours.lower_bound_ == pytest.approx(ref.lower_bound_, rel=1e-6)
    order = np.lexsort(ours.means_.T), np.lexsort(ref.means_.T)
    np.testing.assert_allclose(ours.means_[order[0]], ref.means_[order[1]], rtol=1e-4)


def test_origin_example_gives_sklearns_clusters():
    """The origin project's 30 points: with the same seed, scikit-learn's clusters (11 and
    19 points, mean log-likelihood -5.748), not another optimum."""
    from importlib.resources import files

    X = np.loadtxt(files("distgmm") / "data" / "kmeansSamples.txt")
    ref = SkGaussianMixture(n_components=2, random_state=0).fit(X)
    ours = GaussianMixture(n_components=2, random_state=0).fit(X)
    assert sorted(np.bincount(ours.predict(X))) == [11, 19]
    np.testing.assert_array_equal(ours.predict(X), ref.predict(X))
    assert ours.score(X) == pytest.approx(ref.score(X), rel=1e-12)
    assert ours.score(X) == pytest.approx(-5.748, abs=1e-3)


@pytest.mark.parametrize("lazy", [False, True], ids=["numpy", "dask"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cov", COV_TYPES)
def test_parity_far_from_origin(client, cov, dtype, lazy):
    """Data with mean 1e6 and spread 1: float32 and float64 storage.

    scikit-learn's tied/diag/spherical M-step and diag/spherical E-step use raw second
    moments, which lose about 1e-4 of the covariance at this offset (it does not even
    converge), so the reference is scikit-learn on the same values (cast to float64)
    translated to the origin: a Gaussian mixture fit is translation-equivariant, so that is
    the exact answer. For 'full' scikit-learn is exact and is also compared directly.

    Fits of dask input keep float64 attributes, exact whatever the stored dtype. In-memory
    float32 input gets float32 attributes (scikit-learn's dtype contract): the exact answer
    rounded to float32, whose spacing at 1e6 is 0.0625.
    """
    offset = 1e6
    X = blobs([400, 600], [[0, 0, 0], [2.5, 2.5, 2.5]], [1.0, 0.7], seed=4, offset=offset)
    X = X.astype(dtype)
    X64 = X.astype(np.float64)
    init = starting_point(X64, 2, cov)
    data = da.from_array(X, chunks=(300, 3)) if lazy else X
    ours = GaussianMixture(2, covariance_type=cov, tol=1e-6, max_iter=300, **init).fit(data)
    centered = dict(init, means_init=init["means_init"] - offset)
    ref = SkGaussianMixture(2, covariance_type=cov, tol=1e-6, max_iter=300,
                            **centered).fit(X64 - offset)
    if dtype == np.float32 and not lazy:
        assert ours.means_.dtype == np.float32 and ours.covariances_.dtype == np.float32
        assert ours.n_iter_ == ref.n_iter_
        np.testing.assert_array_equal(ours.means_, (ref.means_ + offset).astype(np.float32))
        np.testing.assert_allclose(ours.covariances_, ref.covariances_, rtol=1e-6)
        return
    assert ours.means_.dtype == np.float64
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
    b = GaussianMixture(2, **init).fit(da.from_array(X, chunks=(128, 2)))
    np.testing.assert_array_equal(a.means_, b.means_)
    assert a.means_.dtype == np.float64  # out of core: float64 attributes
    c = GaussianMixture(2, **init).fit(X)  # in memory: float32, as scikit-learn
    assert c.means_.dtype == np.float32
    np.testing.assert_allclose(c.means_, a.means_, rtol=1e-6)
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
    with pytest.raises(CollapsedComponentError,
                       match=r"^Fitting the mixture model failed .*increase reg_covar.*"
                             r"component 2 has a singular full covariance") as e:
        GaussianMixture(3, reg_covar=0.0, **start).fit(X)
    assert e.value.component == 2


@pytest.mark.parametrize("where", ["in-process", "cluster"])
def test_fewer_distinct_points_than_components_fits_as_sklearn_does(client, where):
    """Two distinct points, three components: reg_covar keeps every covariance well
    defined, so the fit goes on with a component that receives no points (weight ~1e-16),
    as scikit-learn's does, in this process and on the cluster."""
    X = np.vstack([np.zeros((50, 2)), np.ones((50, 2))])
    kw = {} if where == "in-process" else {"scheduler": client.scheduler.address,
                                           "init_params": "random_from_data"}
    gm = GaussianMixture(3, random_state=0, **kw).fit(X)
    assert np.isfinite(gm.means_).all() and np.isfinite(gm.covariances_).all()
    on_ones = np.isclose(gm.means_, 1.0).all(axis=1)
    assert gm.weights_[on_ones].sum() == pytest.approx(0.5, abs=1e-9)
    if where == "in-process":
        ref = SkGaussianMixture(3, random_state=0).fit(X)
        np.testing.assert_allclose(gm.weights_, ref.weights_, rtol=1e-9, atol=1e-15)
        np.testing.assert_array_equal(gm.predict(X), ref.predict(X))


def test_verbose_logs_iterations(client, caplog):
    X = DATASETS["seed-blobs-2d"]()
    with caplog.at_level("INFO", logger="distgmm"):
        GaussianMixture(2, verbose=1, verbose_interval=1, random_state=0).fit(X)
    assert any("iteration 1:" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------ bad input
def _fit(X, **kw):
    sw = kw.pop("sample_weight", None)
    return GaussianMixture(**{"n_components": 2, **kw}).fit(X, sample_weight=sw)


def _rows(n=50, d=2):
    return np.random.default_rng(0).normal(size=(n, d))


# In-memory input: scikit-learn's exception types and messages, then what to do.
BAD_INPUTS = [
    ("not 2-D", lambda: np.ones(10), {}, ValueError,
     r"(?s)Expected 2D array, got 1D array.*Reshape your data"),
    ("NaN", lambda: np.where(np.arange(200)[:, None] % 50 == 0, np.nan, np.ones((200, 2))),
     {}, ValueError, r"(?s)Input X contains NaN.*drop samples with missing values"),
    ("inf", lambda: np.vstack([np.ones((20, 2)), [[np.inf, 0]]]), {}, ValueError,
     r"Input X contains infinity.*Drop or clip the rows"),
    ("fewer points than components", lambda: _rows(3), {"n_components": 5}, ValueError,
     r"n_samples >= n_components.*n_components = 5, n_samples = 3; use fewer components"),
    ("zero rows", lambda: np.ones((0, 2)), {}, ValueError,
     r"Found array with 0 sample\(s\).*Pass at least that many rows"),
    ("zero features", lambda: np.ones((10, 0)), {}, ValueError,
     r"Found array with 0 feature\(s\).*Pass at least that many"),
    ("non-numeric", lambda: np.array([["a", "b"], ["c", "d"]], dtype=object), {}, ValueError,
     r"could not convert string to float.*Pass numbers"),
    ("complex", lambda: np.ones((10, 2)) * 1j, {}, ValueError,
     r"(?s)Complex data not supported.*Pass real numbers"),
    ("sparse", lambda: __import__("scipy.sparse").sparse.csr_matrix(np.ones((10, 2))), {},
     TypeError, r"Sparse data was passed.*toarray"),
    ("negative weights", _rows, {"sample_weight": np.r_[-np.ones(3), np.ones(47)]},
     ValueError, r"Negative values in data passed to `sample_weight`.*non-negative weight"),
    ("weights of the wrong length", _rows, {"sample_weight": np.ones(49)}, ValueError,
     r"sample_weight.shape == \(49,\), expected \(50,\).*one finite"),
    ("bad n_components", _rows, {"n_components": 0}, ValueError,
     r"'n_components' parameter of GaussianMixture must be an int in the range \[1, inf\)"),
    ("bad covariance_type", _rows, {"covariance_type": "banana"}, ValueError,
     r"'covariance_type' parameter of GaussianMixture must be a str among"),
    ("bad init_params", _rows, {"init_params": "nope"}, ValueError,
     r"'init_params' parameter .* must be a str among .*k-means\|\|"),
    ("negative tol", _rows, {"tol": -1.0}, ValueError, r"'tol' parameter .* range \[0.0, inf\)"),
    ("negative reg_covar", _rows, {"reg_covar": -1e-3}, ValueError,
     r"'reg_covar' parameter .* range \[0.0, inf\)"),
    ("bad weights_init", _rows, {"weights_init": [0.3, 0.3]}, ValueError,
     r"'weights' should be normalized, but got sum\(weights\) = 0.60000; divide"),
    ("weights_init out of range", _rows, {"weights_init": [1.5, -0.5]}, ValueError,
     r"'weights' should be in the range \[0, 1\], but got min value -0.50000, max value "
     r"1.50000"),
    ("bad means_init", _rows, {"means_init": np.zeros((3, 2))}, ValueError,
     r"'means' should have the shape of \(2, 2\), but got \(3, 2\); pass one row"),
    ("bad precisions_init", _rows, {"precisions_init": -np.tile(np.eye(2), (2, 1, 1))},
     ValueError, r"'full precision' should be symmetric, positive-definite; "
                 r"precisions_init\[0\] is not"),
    ("bad persist", _rows, {"persist": "yes"}, ValueError, r"'persist' parameter"),
    ("bad random_state", _rows, {"random_state": "x"}, ValueError, r"'random_state' parameter"),
    ("bad scheduler", _rows, {"scheduler": 8786}, TypeError, r"'scheduler' parameter"),
]


@pytest.mark.parametrize("make_X,kwargs,kind,message", [b[1:] for b in BAD_INPUTS],
                         ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_raises_sklearn_error_with_the_fix(make_X, kwargs, kind, message):
    """No client: every one of these is refused in this process, before any cluster."""
    with pytest.raises(kind, match=message):
        _fit(make_X(), **kwargs)


# Out-of-core input (dask, Zarr, stores): distgmm's own checks, in scikit-learn's words.
BAD_LAZY_INPUTS = [
    ("not 2-D", lambda: da.ones(10, chunks=5), {}, r"Expected 2D array, got 1D.*Reshape"),
    ("feature chunks", lambda: da.ones((100, 4), chunks=(50, 2)), {},
     r"chunked along the feature axis.*rechunk"),
    ("NaN", lambda: da.from_array(np.where(np.arange(200)[:, None] % 50 == 0, np.nan,
                                           np.ones((200, 2))), chunks=(64, 2)),
     {}, r"NaN or infinite values in 4 of 200 rows"),
    ("zero rows", lambda: da.ones((0, 2), chunks=(1, 2)), {}, r"Found array with 0 sample"),
    ("complex", lambda: da.ones((10, 2), chunks=(5, 2)) * 1j, {}, r"Complex data not supported"),
    ("negative weights", lambda: da.from_array(_rows(), chunks=(20, 2)),
     {"sample_weight": da.from_array(np.r_[-np.ones(3), np.ones(47)], chunks=20)},
     r"3 negative values"),
    ("all-zero weights", lambda: da.from_array(_rows(), chunks=(20, 2)),
     {"sample_weight": da.zeros(50, chunks=20)}, r"sample_weight sums to zero"),
]


@pytest.mark.parametrize("make_X,kwargs,message", [b[1:] for b in BAD_LAZY_INPUTS],
                         ids=[b[0] for b in BAD_LAZY_INPUTS])
def test_bad_lazy_input_raises_clear_error(client, make_X, kwargs, message):
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


@pytest.mark.parametrize("lazy", [False, True])
def test_predict_with_wrong_feature_count(client, lazy):
    gm = GaussianMixture(2, random_state=0).fit(DATASETS["seed-blobs-2d"]())
    X = np.ones((4, 3))
    with pytest.raises(ValueError, match="X has 3 features, but GaussianMixture is expecting 2 "
                                         "features as input. Pass data with the columns"):
        gm.predict(da.from_array(X) if lazy else X)


@pytest.mark.parametrize("lazy", [False, True], ids=["numpy", "dask"])
@pytest.mark.parametrize("method", ["predict", "predict_proba", "score_samples", "score"])
def test_prediction_refuses_nonfinite_rows(client, method, lazy):
    """A NaN row is refused, not labelled 0 with NaN probabilities."""
    gm = GaussianMixture(2, random_state=0).fit(DATASETS["seed-blobs-2d"]())
    X = np.array([[0.0, 1.0], [np.nan, 2.0]])
    with pytest.raises(ValueError, match="Input X contains NaN"):
        out = getattr(gm, method)(da.from_array(X, chunks=(1, 2)) if lazy else X)
        if isinstance(out, da.Array):
            out.compute()


def test_public_api():
    assert distgmm.GaussianMixture is GaussianMixture


@pytest.mark.parametrize("where", ["in-process", "cluster"])
def test_fit_candidates_equal_separate_fits_and_sklearn_criteria(client, where):
    from distgmm._estimator import fit_candidates

    X = DATASETS["three-5d"]()
    if where == "cluster":
        X = da.from_array(X, chunks=(250, 5))
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


def test_large_in_memory_input_goes_to_the_users_client(client, monkeypatch):
    """With a default client, in-memory input above CLIENT_MIN_BYTES is fitted on it (its
    chunk-derived initialisation); below, in this process (scikit-learn's)."""
    from distributed import get_task_stream

    import distgmm._base as base

    X = DATASETS["three-5d"]()
    with get_task_stream(client) as stream:
        GaussianMixture(3, random_state=0).fit(X)
    assert not stream.data, "a small array was sent to the cluster"
    monkeypatch.setattr(base, "CLIENT_MIN_BYTES", X.nbytes - 1)
    with get_task_stream(client) as stream:
        GaussianMixture(3, random_state=0).fit(X)
    assert stream.data, "not fitted on the cluster"  # the scatter and persist tasks at least
