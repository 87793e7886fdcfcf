"""Overlapping writers, as an operator's overlapping cron runs would start them: real CLI processes.

Each test forces the overlap with a test pause hook (the first process sleeps at a known
point, holding its lock, while the second one starts), then compares the store with what
running the same commands one after the other gives: every row present exactly once, labels
equal to the sequential run's. Also: locks left by killed processes, and S3 lease locks.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time

import numpy as np
import pytest
import zarr

import distgmm
from cluster_helpers import KMEANS_SAMPLES, Watched, distgmm as cli
from distgmm.store import append, generate, ingest, label_state, open_points
from distgmm.store._lock import StoreBusyError, StoreLock, lock_url
from distgmm.store._location import StoreLocation

KMEANS = KMEANS_SAMPLES
PAUSED_CHUNKS = "DISTGMM_TEST_PAUSE_AFTER_CHUNKS: paused"
PAUSED_LABELS = "DISTGMM_TEST_PAUSE_AFTER_LABEL_CHUNKS: paused"
PAUSED_FIT = "DISTGMM_TEST_PAUSE_AFTER_ITERATIONS: paused"


def ok(done) -> dict:
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def finished(job: Watched, timeout: float = 120) -> dict:
    code, out, err = job.finish(timeout)
    assert code == 0, err
    return json.loads(out)


def lock_files(directory) -> list[str]:
    return sorted(n for n in os.listdir(directory) if ".distgmm-lock-" in n)


@pytest.fixture
def batches(tmp_path):
    """A 30-row store in 8-row chunks and two distinct batches of 45 and 37 rows."""
    url = str(tmp_path / "s.zarr")
    ingest(KMEANS, url, chunk_rows=8)
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(45, 2)), rng.normal(10, 1, size=(37, 2))
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    return url, a, b


# ----------------------------------------------------------------------------- appends
@pytest.mark.timeout(120)
def test_two_appends_at_once_queue_and_keep_every_row(tmp_path, batches):
    url, a, b = batches
    first = Watched("ingest", str(tmp_path / "a.npy"), url, "--append", "--json",
                    DISTGMM_TEST_PAUSE_AFTER_CHUNKS="1", DISTGMM_TEST_PAUSE_SECONDS="3")
    try:
        first.wait_for(PAUSED_CHUNKS)  # it holds the store's rows lock, mid-append
        second = Watched("ingest", str(tmp_path / "b.npy"), url, "--append", "--json")
        reports = [finished(first), finished(second)]
    finally:
        first.kill()
    # the second waited for the first, then appended after it: as if run one after the other
    assert [(r["rows_before"], r["n_rows"]) for r in reports] == [(30, 75), (75, 112)]
    np.testing.assert_array_equal(open_points(url).points.compute(),
                                  np.vstack([np.loadtxt(KMEANS), a, b]))
    assert lock_files(tmp_path) == []


@pytest.mark.timeout(120)
def test_an_append_that_may_not_wait_fails_clearly_and_changes_nothing(tmp_path, batches):
    url, a, _ = batches
    resume = tmp_path / "resume"
    first = Watched("ingest", str(tmp_path / "a.npy"), url, "--append", "--json",
                    DISTGMM_TEST_PAUSE_AFTER_CHUNKS="1", DISTGMM_TEST_PAUSE_SECONDS="120",
                    DISTGMM_TEST_RESUME_FILE=str(resume))
    try:
        first.wait_for(PAUSED_CHUNKS)
        started = time.monotonic()
        second = cli("ingest", str(tmp_path / "b.npy"), url, "--append", "--lock-wait", "0.5")
        assert time.monotonic() - started < 20
        resume.touch()
        finished(first)
    finally:
        first.kill()
    assert second.returncode == 1
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {url} is busy: its rows are being "
                                                   "written by `ingest --append` (pid "), lines
    assert "--lock-wait" in lines[0]
    np.testing.assert_array_equal(open_points(url).points.compute(),
                                  np.vstack([np.loadtxt(KMEANS), a]))


@pytest.mark.timeout(120)
def test_a_killed_appends_lock_does_not_block_the_next_writer(tmp_path, batches):
    url, a, _ = batches
    job = Watched("ingest", str(tmp_path / "a.npy"), url, "--append",
                  DISTGMM_TEST_PAUSE_AFTER_CHUNKS="2", DISTGMM_TEST_PAUSE_SECONDS="60")
    try:
        job.wait_for(PAUSED_CHUNKS)
        assert lock_files(tmp_path) == [".s.zarr.distgmm-lock-rows"]
        os.kill(job.proc.pid, signal.SIGKILL)
        assert job.proc.wait(30) == -signal.SIGKILL
    finally:
        job.kill()
    # the kernel released the dead process's lock: the next append does not wait at all
    started = time.monotonic()
    ok(cli("ingest", str(tmp_path / "a.npy"), url, "--append", "--lock-wait", "0", "--json"))
    assert time.monotonic() - started < 20
    np.testing.assert_array_equal(open_points(url).points.compute(),
                                  np.vstack([np.loadtxt(KMEANS), a]))
    assert lock_files(tmp_path) == []  # and the file the killed one left is gone


# ----------------------------------------------------------------------------- labels
@pytest.fixture
def labelled(tmp_path, client, scheduler_address):
    """A 2500-row store in 300-row chunks and two different model files."""
    url = str(tmp_path / "p.zarr")
    generate(url, n_points=2500, n_features=2, n_components=3, seed=3, chunk_rows=300,
             client=client)
    models = []
    for k, seed in ((3, 0), (2, 1)):
        path = str(tmp_path / f"m{k}.npz")
        ok(cli("fit", url, "-k", str(k), "--seed", str(seed), "--model", path, "--json",
               "--scheduler", scheduler_address))
        models.append(path)
    return url, models


def expected_labels(model: str, url: str) -> np.ndarray:
    return distgmm.load_model(model).predict(open_points(url).points.compute())


@pytest.mark.timeout(180)
def test_two_label_runs_of_one_name_with_different_models(tmp_path, labelled,
                                                          scheduler_address):
    url, (old, new) = labelled
    cluster = ["--scheduler", scheduler_address, "--json"]
    # The first run pauses after preparing labels/current for the old model, before its
    # chunk tasks start: without a lock, the second run relabelled everything meanwhile and
    # the first one's tasks then overwrote it with old labels recorded as the new model's.
    first = Watched("label", old, url, "--name", "current", *cluster,
                    DISTGMM_TEST_PAUSE_AFTER_LABEL_CHUNKS="0", DISTGMM_TEST_PAUSE_SECONDS="3")
    try:
        first.wait_for(PAUSED_LABELS)
        second = Watched("label", new, url, "--name", "current", "--replace", *cluster)
        reports = [finished(first), finished(second)]
    finally:
        first.kill()
    # sequential: the old model labels everything, then the new one relabels everything
    assert reports[0]["chunks_done"] == 9 and not reports[0]["replaced"]
    assert reports[1]["chunks_done"] == 9 and reports[1]["replaced"]
    np.testing.assert_array_equal(open_points(url).group["labels/current"][:],
                                  expected_labels(new, url))
    state = label_state(url, "current")
    assert state.complete
    assert state.model_fingerprint == distgmm.store.read_model(new).fingerprint
    again = ok(cli("label", new, url, "--name", "current", *cluster))
    assert again["chunks_done"] == 0 and again["chunks_skipped"] == 9
    assert lock_files(tmp_path) == []


@pytest.mark.timeout(180)
def test_a_label_run_that_may_not_wait_fails_clearly(tmp_path, labelled, scheduler_address):
    url, (old, new) = labelled
    cluster = ["--scheduler", scheduler_address]
    resume = tmp_path / "resume"
    first = Watched("label", old, url, "--name", "current", *cluster,
                    DISTGMM_TEST_PAUSE_AFTER_LABEL_CHUNKS="1", DISTGMM_TEST_PAUSE_SECONDS="120",
                    DISTGMM_TEST_RESUME_FILE=str(resume))
    try:
        first.wait_for(PAUSED_LABELS)
        second = cli("label", new, url, "--name", "current", "--replace", "--lock-wait", "0",
                     *cluster)
        resume.touch()
        code, _, err = first.finish()
        assert code == 0, err
    finally:
        first.kill()
    assert second.returncode == 1
    assert second.stderr.strip().splitlines()[-1].startswith(
        f"error: {url} is busy: labels/current are being written by `label current` (pid ")
    np.testing.assert_array_equal(open_points(url).group["labels/current"][:],
                                  expected_labels(old, url))


@pytest.mark.timeout(180)
def test_label_during_an_append_labels_the_committed_rows_then_the_rest(
        tmp_path, labelled, scheduler_address):
    url, (model, _) = labelled
    new_rows = np.random.default_rng(5).normal(size=(450, 2)).astype(np.float32)
    np.save(tmp_path / "new.npy", new_rows)
    cluster = ["--scheduler", scheduler_address, "--json"]
    # 2500 rows = 8 chunks of 300 + 100: the append rewrites chunk 8 and adds chunk 9
    appending = Watched("ingest", str(tmp_path / "new.npy"), url, "--append", "--json",
                        DISTGMM_TEST_PAUSE_AFTER_CHUNKS="1", DISTGMM_TEST_PAUSE_SECONDS="4")
    try:
        appending.wait_for(PAUSED_CHUNKS)  # chunk 8 rewritten, nothing committed yet
        during = ok(cli("label", model, url, "--name", "n", *cluster))
        appended = finished(appending)
    finally:
        appending.kill()
    assert (during["n_rows"], during["chunks_done"]) == (2500, 9)
    assert appended["n_rows"] == 2950
    # after the commit, the grown chunk 8 and the new chunk 9 are pending, nothing else
    assert label_state(url, "n").chunks_pending == [8, 9]
    after = ok(cli("label", model, url, "--name", "n", *cluster))
    assert (after["chunks_done"], after["chunks_skipped"], after["rows_labeled"]) == (2, 8, 550)
    np.testing.assert_array_equal(open_points(url).group["labels/n"][:],
                                  expected_labels(model, url))


@pytest.mark.timeout(180)
def test_append_during_a_fit_leaves_the_fit_on_the_rows_it_started_with(
        tmp_path, labelled, scheduler_address):
    url, _ = labelled
    reference = tmp_path / "reference.npz"
    args = ["-k", "3", "--seed", "4", "--init", "random", "--tol", "0", "--max-iter", "6",
            "--scheduler", scheduler_address, "--json"]
    ok(cli("fit", url, "--model", str(reference), *args))
    np.save(tmp_path / "new.npy", np.random.default_rng(6).normal(size=(450, 2)).astype("f4"))
    fitting = Watched("fit", url, "--model", str(tmp_path / "during.npz"), *args,
                      DISTGMM_TEST_PAUSE_AFTER_ITERATIONS="2", DISTGMM_TEST_PAUSE_SECONDS="3")
    try:
        fitting.wait_for(PAUSED_FIT)
        assert ok(cli("ingest", str(tmp_path / "new.npy"), url, "--append", "--json"))[
            "n_rows"] == 2950
        report = finished(fitting)
    finally:
        fitting.kill()
    assert report["n_rows"] == 2500 and report["n_iter"] == 6
    from distgmm._serialize import load_arrays

    fitted, ref = load_arrays(tmp_path / "during.npz")[0], load_arrays(reference)[0]
    for name in ref:
        assert fitted[name].tobytes() == ref[name].tobytes(), name


@pytest.mark.timeout(180)
def test_overwrite_waits_for_a_label_run_of_the_store(tmp_path, labelled, scheduler_address):
    url, (model, _) = labelled
    cluster = ["--scheduler", scheduler_address]
    labelling = Watched("label", model, url, "--name", "x", *cluster, "--json",
                        DISTGMM_TEST_PAUSE_AFTER_LABEL_CHUNKS="1", DISTGMM_TEST_PAUSE_SECONDS="4")
    try:
        labelling.wait_for(PAUSED_LABELS)
        refused = cli("ingest", KMEANS, url, "--overwrite", "--lock-wait", "0.5")
        assert refused.returncode == 1
        assert "labels/x are being written by `label x`" in refused.stderr, refused.stderr
        assert open_points(url).n_rows == 2500
        waited = cli("ingest", KMEANS, url, "--overwrite", "--json")  # waits for the label run
        report = finished(labelling)
    finally:
        labelling.kill()
    assert report["chunks_done"] == 9
    assert ok(waited)["n_rows"] == 30
    store = open_points(url)
    assert store.n_rows == 30 and "labels" not in store.group
    assert lock_files(tmp_path) == []


# ----------------------------------------------------------------------------- S3 leases
def _s3_store(s3_options, name: str) -> str:
    url = f"s3://distgmm-test/{name}.zarr"
    ingest(KMEANS, url, chunk_rows=8, storage_options=s3_options)
    return url


def _plant_lock(s3_options, url: str, **owner) -> str:
    import s3fs

    lock = lock_url(StoreLocation(url, s3_options), "rows")
    holder = {"token": "t", "host": socket.gethostname(), "pid": os.getpid(),
              "pid_start": None, "operation": "ingest --append", "scope": "rows",
              "acquired": time.time(), "heartbeat": time.time(), "beat": 0, "lease": 60.0,
              **owner}
    s3fs.S3FileSystem(**s3_options).pipe_file(lock, json.dumps(holder).encode())
    return lock


def test_s3_lock_is_exclusive_and_released(s3_options):
    url = _s3_store(s3_options, "excl")
    location = StoreLocation(url, s3_options)
    held = StoreLock(location, "rows", "test").acquire(0)
    try:
        with pytest.raises(StoreBusyError, match=r"is busy: its rows are being written by "
                                                 r"`test` \(pid \d+ on "):
            StoreLock(location, "rows", "other").acquire(0.3)
    finally:
        held.release()
    StoreLock(location, "rows", "again").acquire(0).release()
    append(KMEANS, url, storage_options=s3_options, lock_wait=0)
    assert open_points(url, s3_options).n_rows == 60


def test_s3_lock_of_a_live_holder_elsewhere_blocks_until_its_lease_lapses(s3_options):
    url = _s3_store(s3_options, "lease")
    _plant_lock(s3_options, url, host="another-host", heartbeat=time.time())
    with pytest.raises(StoreBusyError, match="another-host"):
        append(KMEANS, url, storage_options=s3_options, lock_wait=0.5)
    assert open_points(url, s3_options).n_rows == 30
    # the same lock, silent for longer than its lease: abandoned, taken over
    _plant_lock(s3_options, url, host="another-host", heartbeat=time.time() - 120)
    append(KMEANS, url, storage_options=s3_options, lock_wait=0)
    assert open_points(url, s3_options).n_rows == 60


def test_s3_lock_of_a_dead_process_on_this_host_is_broken_at_once(s3_options):
    url = _s3_store(s3_options, "dead")
    gone = 2**22 + 12345  # above the default pid_max: no such process
    _plant_lock(s3_options, url, pid=gone, heartbeat=time.time())
    append(KMEANS, url, storage_options=s3_options, lock_wait=0)
    assert open_points(url, s3_options).n_rows == 60
    import s3fs

    fs = s3fs.S3FileSystem(**s3_options)
    fs.invalidate_cache()
    assert not fs.exists(lock_url(StoreLocation(url, s3_options), "rows"))


def test_s3_holder_whose_lease_was_taken_over_commits_nothing(s3_options, monkeypatch):
    url = _s3_store(s3_options, "lost")
    location = StoreLocation(url, s3_options)
    monkeypatch.setenv("DISTGMM_LOCK_LEASE", "0.4")
    stalled = StoreLock(location, "rows", "stalled").acquire(0)
    stalled._stop.set()  # its heartbeats stop, as in a process stalled for too long
    stalled._beater.join()
    time.sleep(0.6)
    taker = StoreLock(location, "rows", "taker").acquire(0)  # the lease lapsed: taken over
    try:
        assert not stalled._impl.heartbeat()
        stalled._lost = True
        with pytest.raises(StoreBusyError, match="lost its lock"):
            stalled.ensure_held()
    finally:
        taker.release()
        stalled.release()


def test_zarr_array_path_in_group_is_not_confused_with_lock(tmp_path):
    """Lock files sit beside the store; Zarr never sees them as members."""
    url = str(tmp_path / "z.zarr")
    ingest(KMEANS, url)
    lock = StoreLock(StoreLocation(url), "rows", "test").acquire(0)
    try:
        assert sorted(zarr.open_group(url, mode="r").array_keys()) == ["points"]
        assert os.path.exists(tmp_path / ".z.zarr.distgmm-lock-rows")
    finally:
        lock.release()
    assert lock_files(tmp_path) == []
