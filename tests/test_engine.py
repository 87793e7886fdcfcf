"""The distributed EM engine: chunk invariance, determinism across workers, checkpoints."""

from __future__ import annotations

import re

import dask.array as da
import numpy as np
import pytest
from distributed import Client, LocalCluster
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distgmm import GaussianMixture
from distgmm._fused import fit_kernels, missing_kernels
from distgmm.cluster import close_embedded_cluster

N = 240


def data():
    rng = np.random.default_rng(10)
    return np.vstack([rng.normal(0, 1.0, (100, 3)), rng.normal(3, 0.8, (140, 3))]) + 50.0


def start(cov):
    X = data()
    prec = {"full": np.tile(np.eye(3), (2, 1, 1)), "tied": np.eye(3), "diag": np.ones((2, 3)),
            "spherical": np.ones(2)}[cov]
    return dict(weights_init=[0.5, 0.5], means_init=X[[0, 200]], precisions_init=prec)


def fit_chunked(chunks, cov, **kw):
    X = da.from_array(data(), chunks=(tuple(chunks), 3))
    return GaussianMixture(2, covariance_type=cov, tol=1e-9, max_iter=200, **start(cov),
                           **kw).fit(X)


def sizes_from_cuts(cuts):
    bounds = [0, *sorted(set(cuts)), N]
    return [b - a for a, b in zip(bounds[:-1], bounds[1:])]


@pytest.fixture(scope="module")
def reference(client):
    return {cov: fit_chunked([N], cov) for cov in ("full", "tied", "diag", "spherical")}


def assert_close_fit(a, b, rtol=1e-10):
    assert a.n_iter_ == b.n_iter_
    assert a.lower_bound_ == pytest.approx(b.lower_bound_, rel=rtol)
    for attr in ("weights_", "means_", "covariances_"):
        np.testing.assert_allclose(getattr(a, attr), getattr(b, attr), rtol=rtol, atol=1e-12)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cuts=st.lists(st.integers(1, N - 1), min_size=1, max_size=12),
       cov=st.sampled_from(["full", "tied", "diag", "spherical"]))
def test_fit_does_not_depend_on_chunking(client, reference, cuts, cov):
    """Uneven chunkings give the one-chunk fit to 1e-10 relative."""
    assert_close_fit(fit_chunked(sizes_from_cuts(cuts), cov), reference[cov])


def test_one_row_chunks(client):
    """Chunks of a single row (on the first 48 rows) give the one-chunk fit."""
    X = data()[np.r_[0:24, 200:224]]

    def fit(chunks):
        init = dict(weights_init=[0.5, 0.5], means_init=X[[0, 30]],
                    precisions_init=np.tile(np.eye(3), (2, 1, 1)))
        return GaussianMixture(2, tol=1e-9, max_iter=50, **init).fit(
            da.from_array(X, chunks=(chunks, 3)))

    assert_close_fit(fit(1), fit(48))


def many_rows():
    """12,000 rows: more than a ``kmeans`` sample, so that the sample is drawn per chunk."""
    rng = np.random.default_rng(11)
    return np.vstack([rng.normal(0, 1.0, (5000, 3)), rng.normal(4, 0.8, (7000, 3))]) + 50.0


@pytest.mark.parametrize("init_params", ["k-means||", "kmeans"])
def test_same_bits_on_one_and_three_workers(client, init_params):
    """Same data, chunking and seed: identical bits whatever the number of workers.

    Uses restarts and both distributed k-means initialisations so every random stream is
    exercised (``kmeans``: the sample drawn per chunk, and its k-means on the client).
    """
    X = (da.from_array(data(), chunks=(37, 3)) if init_params == "k-means||"
         else da.from_array(many_rows(), chunks=(1000, 3)))
    results = []
    for n_workers in (1, 3):
        with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                          dashboard_address=":0") as cluster:
            gm = GaussianMixture(2, init_params=init_params, n_init=2, random_state=5,
                                 scheduler=cluster.scheduler_address).fit(X)
            results.append(gm)
            close_embedded_cluster()  # drop the cached client before its cluster goes away
    a, b = results
    assert a.lower_bounds_per_init_ == b.lower_bounds_per_init_
    for attr in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        assert np.array_equal(getattr(a, attr), getattr(b, attr)), attr


class Interrupt(Exception):
    pass


def test_checkpoint_resume_gives_uninterrupted_result(client, tmp_path):
    X = da.from_array(data(), chunks=(50, 3))
    kw = dict(n_components=2, init_params="random", n_init=2, random_state=1, tol=1e-6)
    whole = GaussianMixture(**kw).fit(X)
    ckpt = tmp_path / "fit.ckpt.npz"

    def stop_in_second_restart(info):
        if info.restart == 1 and info.iteration == 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        GaussianMixture(**kw).fit(X, on_iteration=stop_in_second_restart, checkpoint=ckpt)
    assert ckpt.exists()
    seen = []
    resumed = GaussianMixture(**kw).fit(X, checkpoint=ckpt, on_iteration=seen.append)
    assert min(info.iteration for info in seen) == 4, "resumed after the last iteration"
    assert resumed.lower_bounds_per_init_ == whole.lower_bounds_per_init_
    for attr in ("weights_", "means_", "covariances_"):
        assert np.array_equal(getattr(resumed, attr), getattr(whole, attr))


def test_checkpoint_of_another_fit_is_refused(client, tmp_path):
    X = data()
    ckpt = tmp_path / "fit.ckpt.npz"
    GaussianMixture(2, random_state=0, max_iter=3, tol=0).fit(X, checkpoint=ckpt)
    with pytest.raises(ValueError, match="written by a different fit"):
        GaussianMixture(3, random_state=0).fit(X, checkpoint=ckpt)


def test_tampered_checkpoint_is_refused(client, tmp_path):
    X = data()
    ckpt = tmp_path / "fit.ckpt.npz"
    GaussianMixture(2, random_state=0, max_iter=3, tol=0).fit(X, checkpoint=ckpt)
    with np.load(ckpt) as npz:  # edit one number, keep the stored metadata and checksum
        arrays = {name: npz[name] for name in npz.files}
    arrays["run0_means"] = arrays["run0_means"] + 1e-9
    with open(ckpt, "wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(ValueError, match="failed its checksum"):
        GaussianMixture(2, random_state=0, max_iter=3, tol=0).fit(X, checkpoint=ckpt)


def test_many_models_in_one_pass_equal_separate_fits(client):
    """fit_many evaluates all models per chunk; each result equals fitting it alone."""
    from distgmm.engine import ClusterPoints, EMConfig, fit_em, fit_many

    X = da.from_array(data(), chunks=(60, 3))
    points = ClusterPoints(X, None, client)
    configs = [EMConfig(1, "full", tol=1e-4), EMConfig(2, "diag", tol=1e-4, n_init=2,
                                                         init_params="random"),
               EMConfig(3, "full", tol=1e-4, n_init=2, init_params="random")]
    passes = []
    together = fit_many(points, configs, 7, on_iteration=lambda i: passes.append(i))
    for cfg, result in zip(configs, together):
        alone = fit_em(ClusterPoints(X, None, client), cfg, 7)
        assert result.histories == alone.histories
        assert np.array_equal(result.params.means, alone.params.means)
    longest = max(len(h) for r in together for h in r.histories)
    assert len({round(i.seconds, 12) for i in passes}) <= longest, "one pass per iteration"


def test_every_pass_is_reported_with_its_phase(client):
    """``on_pass`` hears of every pass as it ends: ``kmeans``'s one sample pass per restart
    (shared by the configurations of a restart), then one pass per EM iteration for all
    runs; ``k-means||``'s seeding, Lloyd and statistics passes, numbered within phases."""
    from distgmm.engine import ClusterPoints, EMConfig, PassInfo, fit_many

    X = da.from_array(many_rows(), chunks=(1000, 3))
    events: list[PassInfo] = []
    results = fit_many(ClusterPoints(X, None, client),
                       [EMConfig(2, n_init=2), EMConfig(3, n_init=2)], 0, on_pass=events.append)
    samples = [e for e in events if e.phase == "init-sample"]
    assert [(e.restart, e.config, e.number, e.total) for e in samples] == \
        [(0, 0, 1, 1), (1, 0, 1, 1)]
    em = [e for e in events if e.phase == "em"]
    assert events == samples + em, "initialisation first, then EM"
    assert [e.number for e in em] == list(range(1, len(em) + 1))
    assert len(em) == max(r.n_iter for r in results)
    assert all(e.restart is None and e.total == 100 and e.seconds > 0 for e in em)

    events.clear()
    fit_many(ClusterPoints(X, None, client), [EMConfig(2, init_params="k-means||")], 0,
             on_pass=events.append)
    phases = [e.phase for e in events]
    seeding = [e for e in events if e.phase == "init-seeding"]
    assert [e.number for e in seeding] == list(range(1, 9)) and seeding[0].total == 8
    lloyd = phases.count("init-lloyd")
    assert phases == ["init-seeding"] * 8 + ["init-lloyd"] * lloyd + ["init-statistics"] + \
        ["em"] * (len(phases) - 9 - lloyd)
    assert lloyd >= 1


def test_kmeans_on_the_cluster_finds_separated_clusters(client):
    """The sample's k-means finds three well-separated blobs for every seed, and EM ends at
    the optimum the in-process fit (scikit-learn's draws) reaches."""
    rng = np.random.default_rng(12)
    centers = np.array([[0, 0, 0], [10, 0, 0], [0, 10, 0]])
    X = np.vstack([rng.normal(c, 0.5, size=(n, 3)) for c, n in zip(centers, (6000, 3000, 600))])
    reference = GaussianMixture(3, random_state=0).fit(X)
    for seed in range(3):
        gm = GaussianMixture(3, random_state=seed).fit(da.from_array(X, chunks=(1000, 3)))
        assert sorted(map(tuple, np.round(gm.means_))) == sorted(map(tuple, centers * 1.0))
        assert gm.lower_bound_ == pytest.approx(reference.lower_bound_, abs=1e-3)


def test_kmeans_on_the_cluster_with_weights_fits_like_repeated_rows(client):
    """Integer weights weigh the sample's k-means and the start, as repeated rows would:
    both fits end at the same optimum."""
    rng = np.random.default_rng(13)
    X = np.vstack([rng.normal(0, 1, (3000, 2)), rng.normal(6, 1, (3000, 2))])
    w = rng.integers(0, 3, size=len(X))
    weighted = GaussianMixture(2, random_state=0, tol=1e-8).fit(
        da.from_array(X, chunks=(1000, 2)), sample_weight=da.from_array(w, chunks=1000))
    repeated = GaussianMixture(2, random_state=0, tol=1e-8).fit(
        da.from_array(np.repeat(X, w, axis=0), chunks=(1000, 2)))
    order = np.argsort(weighted.means_[:, 0]), np.argsort(repeated.means_[:, 0])
    np.testing.assert_allclose(weighted.means_[order[0]], repeated.means_[order[1]], rtol=1e-6)
    assert weighted.lower_bound_ == pytest.approx(repeated.lower_bound_, rel=1e-7)


def test_compilation_is_shared_out_between_the_workers_of_a_machine():
    """Each machine's missing kernels, in list order, cut into runs of about equal
    estimated seconds, one per worker of that machine that lacks kernels."""
    from distgmm._fused import KernelCall
    from distgmm.engine.passes import _compile_plan

    calls = [KernelCall(str(i), None, None, (), s) for i, s in enumerate([1, 3, 1, 2, 1])]
    hosts = {"a1": "a", "a2": "a", "b1": "b", "b2": "b"}
    plan = _compile_plan({"a1": [0, 1, 2, 3, 4], "a2": [0, 1, 2, 3, 4], "b1": [1, 3],
                          "b2": []}, hosts, calls)
    assert plan == {"a1": [0, 1], "a2": [2, 3, 4], "b1": [1, 3]}
    assert _compile_plan({"a1": [], "a2": []}, hosts, calls) == {}


def test_a_cluster_without_compiled_kernels_says_so_once(tmp_path, caplog):
    """Workers whose numba cache is empty compile a fit's kernels before its first pass
    (the sample k-means of the ``kmeans`` start included, which this process then finds
    compiled), after one warning line; the next fit on the same workers says nothing."""
    from distgmm._fused import compile_kernels, kernel_calls
    from distgmm.engine import ClusterPoints, EMConfig, fit_em

    # This process's own cache may lack the sample k-means (which would add a line of its
    # own, about this process): compile it here first.
    compile_kernels([i for i, call in enumerate(kernel_calls()) if call.on_client])
    X = da.from_array(data(), chunks=(60, 3))
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      env={"NUMBA_CACHE_DIR": str(tmp_path)}) as cluster, \
            Client(cluster) as own:
        with caplog.at_level("WARNING", logger="distgmm"):
            fit_em(ClusterPoints(X, None, own), EMConfig(2, max_iter=2), 0)
        lines = [r.getMessage() for r in caplog.records if "compiling kernels" in r.getMessage()]
        assert len(lines) == 1 and "E-step for float64 points, sample k-means" in lines[0]
        assert not any(own.run(missing_kernels, fit_kernels("float64", [("full", 2, 3)],
                                                            sample_kmeans=True)).values())
        caplog.clear()
        with caplog.at_level("WARNING", logger="distgmm"):
            fit_em(ClusterPoints(X, None, own), EMConfig(2, max_iter=2), 1)
        assert not [r for r in caplog.records if "compiling" in r.getMessage()]


def test_fit_many_records_a_collapsing_candidate(client):
    from distgmm.engine import ClusterPoints, EMConfig, fit_many

    X = np.vstack([data(), [[1e4, 1e4, 1e4]]])
    means = np.vstack([data()[[0, 200]], [[1e4, 1e4, 1e4]]])
    bad = EMConfig(3, "full", reg_covar=0.0, weights_init=np.full(3, 1 / 3), means_init=means,
                   precisions_init=np.tile(np.eye(3), (3, 1, 1)))
    good = EMConfig(2, "full")
    results = fit_many(ClusterPoints(da.from_array(X, chunks=(100, 3)), None, client),
                       [bad, good], 0, errors="record")
    assert results[0].params is None and "component 2" in results[0].error
    assert results[1].params is not None and results[1].error is None


# ------------------------------------------------------------ direct passes (Client.run)
def _pass_inputs(client):
    """Persisted points and weights in 12 chunks (a two-level merge tree) and two models."""
    from distgmm._statistics import MixtureParams

    X = da.from_array(data(), chunks=(20, 3))
    w = da.from_array(np.linspace(0.5, 2.0, N), chunks=(20,))
    X, w = client.persist([X, w])
    eye = np.tile(np.eye(3), (2, 1, 1))
    params = [MixtureParams(np.array([0.5, 0.5]), data()[[0, 200]], eye, eye, "full"),
              MixtureParams(np.array([0.3, 0.7]), data()[[5, 150]], eye, eye, "full")]
    return X, w, params


def _same_bits(a, b):
    for sa, sb in zip(a, b, strict=True):
        for field in ("resp_sum", "means", "scatter"):
            assert np.array_equal(getattr(sa, field), getattr(sb, field)), field
        assert (sa.log_likelihood, sa.weight_sum) == (sb.log_likelihood, sb.weight_sum)


def test_direct_passes_run_no_tasks_and_give_the_graph_bits(client):
    """Once validated, a pass over persisted chunks runs in place on the workers: no tasks
    reach the scheduler, and the result has the bits of the graph's pass."""
    from distributed import get_task_stream

    from distgmm.engine import ClusterPoints
    from distgmm.engine.em import _merge_lists, _statistics_of

    X, w, params = _pass_inputs(client)
    points = ClusterPoints(X, w, client)
    graph = points.map_reduce(_statistics_of, params, merge=_merge_lists)  # validates too
    with get_task_stream(client) as stream:
        direct = points.map_reduce(_statistics_of, params, merge=_merge_lists)
    assert points.in_place
    assert not [t for t in stream.data if "statistics-of" in str(t["key"])]
    _same_bits(direct, graph)
    streamed = ClusterPoints(da.from_array(data(), chunks=(20, 3)), None, client)
    streamed.map_reduce(_statistics_of, params, merge=_merge_lists)
    streamed.map_reduce(_statistics_of, params, merge=_merge_lists)
    assert not streamed.in_place, "only persisted chunks are read in place"


def test_many_chunks_run_in_place_while_their_values_are_small(client, monkeypatch):
    """Beyond 64 chunks a pass runs in place once the function's previous pass has shown its
    values small enough to bring every chunk's to the client; otherwise it stays a graph."""
    from distributed import get_task_stream

    from distgmm.engine import passes
    from distgmm.engine import ClusterPoints
    from distgmm.engine.em import _merge_lists, _statistics_of

    _, _, params = _pass_inputs(client)
    X = client.persist(da.from_array(data(), chunks=(3, 3)))  # 80 chunks: a 3-level tree
    points = ClusterPoints(X, None, client)
    assert points.n_chunks > passes.IN_PLACE_MAX_CHUNKS
    graph = points.map_reduce(_statistics_of, params, merge=_merge_lists)  # weighs the values
    with get_task_stream(client) as stream:
        direct = points.map_reduce(_statistics_of, params, merge=_merge_lists)
    assert points.in_place and not [t for t in stream.data if "statistics-of" in str(t["key"])]
    _same_bits(direct, graph)

    monkeypatch.setattr(passes, "IN_PLACE_MAX_BYTES", points.n_chunks * 100)
    with get_task_stream(client) as stream:
        again = points.map_reduce(_statistics_of, params, merge=_merge_lists)
    assert [t for t in stream.data if "statistics-of" in str(t["key"])], "values too large: a graph"
    _same_bits(again, graph)


def test_direct_passes_survive_chunks_moving_to_another_worker():
    """A worker retired mid-fit hands its chunks over: the next pass reads them where they
    now are. With weights, a chunk's points and weights may land on different workers;
    such passes run as graphs. Every pass has the same bits."""
    from distributed import Client

    from distgmm.engine import ClusterPoints
    from distgmm.engine.em import _merge_lists, _statistics_of

    with LocalCluster(n_workers=4, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        X, w, params = _pass_inputs(client)
        for weights in (None, w):
            points = ClusterPoints(X, weights, client)
            first = points.map_reduce(_statistics_of, params, merge=_merge_lists)
            _same_bits(points.map_reduce(_statistics_of, params, merge=_merge_lists), first)
            assert points.in_place
            holder = next(iter(client.who_has(X)[X.__dask_keys__()[0][0]]))
            client.retire_workers([holder])
            for _ in range(2):
                _same_bits(points.map_reduce(_statistics_of, params, merge=_merge_lists), first)
            if weights is None:
                assert points.in_place and holder not in points._plan


def test_parameters_too_large_to_inline_travel_as_one_task(client, monkeypatch):
    """Passes whose parameters exceed the inlining bound share them as a task: same bits."""
    from distgmm.engine import passes

    X = da.from_array(data(), chunks=(50, 3))
    inline = GaussianMixture(2, random_state=3, persist=False, **start("full")).fit(X)
    monkeypatch.setattr(passes, "INLINE_PAYLOAD_BYTES", 0)
    shared = GaussianMixture(2, random_state=3, persist=False, **start("full")).fit(X)
    assert shared.lower_bounds_ == inline.lower_bounds_
    assert np.array_equal(shared.covariances_, inline.covariances_)


def test_a_pass_whose_chunks_are_not_where_planned_goes_through_the_scheduler(client):
    """Workers asked for chunks they do not hold (a chunk moving between the placement and
    the call) answer None; the pass then runs as a graph, with the same bits."""
    from distributed import get_task_stream

    from distgmm.engine import ClusterPoints
    from distgmm.engine.em import _merge_lists, _statistics_of

    X, w, params = _pass_inputs(client)
    points = ClusterPoints(X, w, client)
    first = points.map_reduce(_statistics_of, params, merge=_merge_lists)
    points.map_reduce(_statistics_of, params, merge=_merge_lists)
    assert points.in_place and len(points._plan) == 2
    place = points._place

    def misplace():  # every worker is sent the other one's chunks
        assert place()
        lists = list(points._plan.values())
        points._plan = dict(zip(points._plan, lists[::-1]))
        return True

    points._place = misplace
    with get_task_stream(client) as stream:
        _same_bits(points.map_reduce(_statistics_of, params, merge=_merge_lists), first)
    assert [t for t in stream.data if "statistics-of" in str(t["key"])], "ran as a graph"


@pytest.mark.parametrize("weighted", [False, True])
def test_in_memory_input_is_read_in_place_after_the_first_pass(client, weighted):
    """A NumPy array (and weights) fitted on a cluster (``scheduler=``) is scattered and
    persisted: every pass, the first (validating) one included, runs in place on the
    workers; no EM pass is a graph of tasks."""
    from distributed import get_task_stream

    weights = np.linspace(0.5, 2.0, N) if weighted else None
    with get_task_stream(client) as stream:
        gm = GaussianMixture(2, tol=0, max_iter=5, scheduler=client.scheduler.address,
                             **start("full")).fit(data(), sample_weight=weights)
    assert gm.n_iter_ == 5
    passes = {m.group(1) for t in stream.data
              if (m := re.search(r"statistics-of-(\w+)", str(t["key"])))}
    assert not passes, passes
