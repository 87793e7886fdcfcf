"""The docker-compose topology without Docker: `dask scheduler` and `dask worker` processes on 127.0.0.1, driven by the CLI.

Faults (SIGKILLed workers and scheduler), concurrent jobs, TLS, and the compose file itself.
Every process is started by :class:`cluster_helpers.DaskProcesses` and killed in teardown.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from cluster_helpers import (
    REPO, SCHEDULER_ARGS, WORKER_ARGS, DaskProcesses, Watched, distgmm, free_port,
    make_certificates,
)
from distgmm._serialize import load_arrays

#: An EM run that keeps moving for all its iterations (random init, tol 0: exactly max_iter).
FIT_ARGS = ["--components", "4", "--seed", "1", "--init", "random", "--max-iter", "8",
            "--tol", "0"]
OTHER_FIT_ARGS = ["--components", "3", "--seed", "2", "--init", "random", "--max-iter", "6",
                  "--tol", "0"]
#: How long a CLI may take to notice that its scheduler died (connect timeout 20 s + slack).
SCHEDULER_LOSS_BOUND = 45.0


# ----------------------------------------------------------------------------- helpers
def ok(done: subprocess.CompletedProcess) -> dict:
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def model_arrays(path: Path) -> dict[str, np.ndarray]:
    arrays, _, _ = load_arrays(path)
    return arrays


def assert_same_bits(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
        assert a[key].tobytes() == b[key].tobytes(), f"{key} differs"


def labels_of(store: Path, name: str) -> np.ndarray:
    return zarr.open_group(str(store), mode="r")[f"labels/{name}"][:]


def is_dead(pid: int) -> bool:
    """Gone, or a zombie waiting for its parent (a ``dask worker --no-nanny`` we started)."""
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def worker_pids(cluster: DaskProcesses) -> dict[str, int]:
    """Worker name -> pid of the process running the Worker (the nanny's child, if any)."""
    with cluster.client() as client:
        pids = client.run(os.getpid)
        names = {a: w["name"] for a, w in client.scheduler_info(n_workers=-1)["workers"].items()}
    return {names[a]: pid for a, pid in pids.items()}


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cluster")


@pytest.fixture(scope="module")
def dask_cluster(work):
    """Scheduler + two nanny-supervised workers, like ``docker compose up --scale worker=2``."""
    cluster = DaskProcesses(work / "main-cluster")
    try:
        yield cluster.start(2)
    finally:
        cluster.stop()


@pytest.fixture
def fresh_cluster(tmp_path):
    """A factory of clusters for tests that kill processes; all are stopped at teardown."""
    started: list[DaskProcesses] = []

    def start(n_workers: int = 2, nanny: bool = True, **kwargs) -> DaskProcesses:
        cluster = DaskProcesses(tmp_path / f"cluster{len(started)}", **kwargs)
        started.append(cluster)
        return cluster.start(n_workers, nanny=nanny)

    try:
        yield start
    finally:
        for cluster in started:
            cluster.stop()


@pytest.fixture(scope="module")
def store(work, dask_cluster) -> Path:
    """100,000 points from 6 blobs in 40 chunks, generated on the cluster."""
    path = work / "points.zarr"
    ok(distgmm("generate", str(path), "--points", "100000", "--features", "4",
               "--components", "6", "--seed", "3", "--chunk-rows", "2500", "--json",
               "--scheduler", dask_cluster.address))
    return path


@pytest.fixture(scope="module")
def reference(work, store, dask_cluster) -> dict:
    """The undisturbed fit (model arrays) and its labels, both run on the cluster."""
    model = work / "reference.npz"
    report = ok(distgmm("fit", str(store), *FIT_ARGS, "--model", str(model), "--json",
                        "--scheduler", dask_cluster.address))
    assert report["n_iter"] == 8 and len(set(report["lower_bounds"])) > 4  # EM kept moving
    ok(distgmm("label", str(model), str(store), "--name", "reference", "--json",
               "--scheduler", dask_cluster.address))
    labels = labels_of(store, "reference")
    assert len(np.unique(labels)) == 4
    return {"model": model, "arrays": model_arrays(model), "labels": labels}


# ----------------------------------------------------------------------------- faults
@pytest.mark.timeout(120)
@pytest.mark.parametrize("nanny", [True, False], ids=["nanny-restarts-worker", "no-nanny"])
def test_worker_sigkill_mid_fit_gives_the_undisturbed_model(tmp_path, store, reference,
                                                            fresh_cluster, nanny):
    cluster = fresh_cluster(2, nanny=nanny)
    victim = worker_pids(cluster)["w0"]
    model = tmp_path / "m.npz"
    fit = Watched("fit", str(store), *FIT_ARGS, "--model", str(model), "--json",
                  "--scheduler", cluster.address)
    try:
        fit.wait_for(r"iteration\s+2\s")
        assert fit.proc.poll() is None
        os.kill(victim, signal.SIGKILL)
        code, out, err = fit.finish()
    finally:
        fit.kill()
    assert code == 0, err
    # the fit went on after the kill, and the worker really died
    assert re.search(r"iteration\s+8\s", err)
    assert is_dead(victim)
    assert json.loads(out)["n_iter"] == 8
    assert_same_bits(model_arrays(model), reference["arrays"])
    if nanny:  # the nanny started a new worker process in its place
        cluster.wait_for_workers(2, timeout=30)
        assert victim not in worker_pids(cluster).values()
    else:
        assert cluster.n_workers() == 1


@pytest.mark.timeout(120)
def test_worker_sigkill_during_label_gives_identical_labels(store, reference, fresh_cluster):
    cluster = fresh_cluster(2, nanny=False)
    victim = worker_pids(cluster)["w1"]
    job = Watched("label", str(reference["model"]), str(store), "--name", "killed", "--json",
                  "--scheduler", cluster.address)
    try:
        done, total = map(int, job.wait_for(r"labelled (\d+)/(\d+) chunks").groups())
        assert done < total and job.proc.poll() is None
        os.kill(victim, signal.SIGKILL)
        code, out, err = job.finish()
    finally:
        job.kill()
    assert code == 0, err
    report = json.loads(out)
    assert report["chunks_done"] + report["chunks_skipped"] == report["n_chunks"] == 40
    assert cluster.n_workers() == 1
    np.testing.assert_array_equal(labels_of(store, "killed"), reference["labels"])


@pytest.mark.timeout(180)
def test_scheduler_killed_during_fit_fails_fast_then_resumes_on_a_new_one(
        tmp_path, store, reference, fresh_cluster):
    first = fresh_cluster(2)
    model, checkpoints = tmp_path / "m.npz", tmp_path / "ckpt"
    fit = Watched("fit", str(store), *FIT_ARGS, "--model", str(model), "--checkpoint",
                  str(checkpoints), "--json", "--scheduler", first.address)
    try:
        fit.wait_for(r"iteration\s+3\s")
        first.kill_scheduler()
        killed = time.monotonic()
        code, out, err = fit.finish(timeout=SCHEDULER_LOSS_BOUND + 30)
        noticed = time.monotonic() - killed
    finally:
        fit.kill()
    first.stop()
    assert code == 1
    error = json.loads(out)  # --json: the error object on stdout, the line on stderr
    assert error["ok"] is False and error["error"]["type"] == "cluster", out
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"error: lost the Dask scheduler at {first.address}"), err
    assert "--resume" in last
    assert noticed < SCHEDULER_LOSS_BOUND, f"took {noticed:.1f} s to notice"
    print(f"scheduler loss noticed after {noticed:.1f} s")
    assert not model.exists()
    checkpoint = checkpoints / "m.ckpt.npz"
    assert checkpoint.exists()

    second = fresh_cluster(2)
    done = distgmm("fit", str(store), *FIT_ARGS, "--model", str(model), "--checkpoint",
                   str(checkpoints), "--resume", "--json", "--scheduler", second.address)
    report = ok(done)
    assert report["resumed"] and report["n_iter"] == 8
    # it continued from the checkpoint: iterations 1-3 were not run again
    redone = [int(n) for n in re.findall(r"iteration\s+(\d+)\s", done.stderr)]
    assert redone and min(redone) >= 4 and max(redone) == 8
    assert not checkpoint.exists()
    assert_same_bits(model_arrays(model), reference["arrays"])


@pytest.mark.timeout(180)
def test_two_fits_and_a_label_job_at_the_same_time(tmp_path, store, reference, dask_cluster):
    job = tmp_path / "label.toml"
    job.write_text(f'[[step]]\nrun = "label"\nmodel = "{reference["model"]}"\n'
                   f'store = "{store}"\nname = "concurrent"\n')
    scheduler = ["--scheduler", dask_cluster.address, "--json"]
    running = [
        Watched("fit", str(store), *FIT_ARGS, "--model", str(tmp_path / "a.npz"), *scheduler),
        Watched("fit", str(store), *OTHER_FIT_ARGS, "--model", str(tmp_path / "b.npz"),
                *scheduler),
        Watched("run", str(job), "--allow-outside", *scheduler),  # its paths are elsewhere
    ]
    try:
        results = [w.finish(timeout=150) for w in running]
    finally:
        for w in running:
            w.kill()
    for code, _, err in results:
        assert code == 0, err
    assert_same_bits(model_arrays(tmp_path / "a.npz"), reference["arrays"])
    np.testing.assert_array_equal(labels_of(store, "concurrent"), reference["labels"])
    # the other fit, alone on the cluster, gives the same bits as under contention
    ok(distgmm("fit", str(store), *OTHER_FIT_ARGS, "--model", str(tmp_path / "alone.npz"),
               *scheduler))
    assert_same_bits(model_arrays(tmp_path / "b.npz"), model_arrays(tmp_path / "alone.npz"))
    assert json.loads(results[2][1])["steps"][0]["chunks_done"] == 40


# ----------------------------------------------------------------------------- security
@pytest.mark.timeout(150)
def test_tls_cluster_works_with_certificates_and_refuses_clients_without(tmp_path,
                                                                         fresh_cluster):
    trusted, stranger = make_certificates(tmp_path / "certs")
    cluster = fresh_cluster(2, tls=trusted)
    assert cluster.address.startswith("tls://")
    with cluster.client() as client:  # workers talk TLS too
        workers = client.scheduler_info(n_workers=-1)["workers"]
        assert len(workers) == 2 and all(a.startswith("tls://") for a in workers)
    tls = ["--scheduler", cluster.address, *trusted.cli_flags(), "--json"]
    store, model = tmp_path / "s.zarr", tmp_path / "m.npz"
    ok(distgmm("generate", str(store), "--preset", "seed-blobs", "--seed", "4", *tls))
    ok(distgmm("fit", str(store), "--components", "2", "--seed", "0", "--model", str(model),
               *tls))
    ok(distgmm("label", str(model), str(store), "--name", "tls", *tls))
    labels, truth = labels_of(store, "tls"), zarr.open_group(str(store), mode="r")["truth"][:]
    assert max((labels == truth).mean(), (labels != truth).mean()) > 0.85  # overlapping blobs

    def refused(*args: str) -> str:
        started = time.monotonic()
        done = distgmm("info", str(store), *args)
        assert time.monotonic() - started < 40
        assert done.returncode != 0
        lines = done.stderr.strip().splitlines()
        assert lines[-1].startswith("error: "), done.stderr
        return lines[-1]

    # no certificates at all: refused before connecting, as bad input
    assert "--tls-ca-file" in refused("--scheduler", cluster.address)
    # a certificate from another CA: the handshake fails
    message = refused("--scheduler", cluster.address, *stranger.cli_flags())
    assert "could not connect to the Dask scheduler" in message
    # plain TCP to the TLS port: the scheduler drops the connection
    plain = cluster.address.replace("tls://", "tcp://")
    assert "could not connect to the Dask scheduler" in refused("--scheduler", plain)
    log = (cluster.workdir / "scheduler.log").read_text()
    assert "TLS handshake failed" in log
    # a raw Dask client without TLS gets nowhere either
    from distributed import Client

    with pytest.raises(OSError):
        Client(plain, timeout="5s", set_as_default=False)


@pytest.mark.timeout(60)
def test_unreachable_scheduler_is_a_clear_error(tmp_path):
    port = free_port()  # nothing listens there
    started = time.monotonic()
    done = distgmm("info", str(tmp_path / "none.zarr"), "--scheduler",
                   f"tcp://127.0.0.1:{port}")
    assert done.returncode == 2  # the store is checked before connecting
    (tmp_path / "k.txt").write_text("1 2\n3 4\n5 6\n")
    assert distgmm("ingest", str(tmp_path / "k.txt"), str(tmp_path / "k.zarr")).returncode == 0
    done = distgmm("info", str(tmp_path / "k.zarr"), "--scheduler", f"tcp://127.0.0.1:{port}")
    elapsed = time.monotonic() - started
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith(
        f"error: could not connect to the Dask scheduler at tcp://127.0.0.1:{port}")
    assert elapsed < 50


@pytest.mark.timeout(60)
def test_a_port_that_is_not_a_dask_scheduler_fails_within_the_timeout(tmp_path):
    """An HTTP server accepts the connection and never sends Dask's handshake: Dask's own
    connect would wait forever; distgmm gives up after --scheduler-timeout."""
    (tmp_path / "k.txt").write_text("1 2\n3 4\n5 6\n")
    assert distgmm("ingest", str(tmp_path / "k.txt"), str(tmp_path / "k.zarr")).returncode == 0
    port = free_port()
    http = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind",
                             "127.0.0.1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:  # wait until it listens
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert time.monotonic() < deadline, "http.server did not start"
            time.sleep(0.1)
        started = time.monotonic()
        done = distgmm("info", str(tmp_path / "k.zarr"), "--scheduler",
                       f"tcp://127.0.0.1:{port}", "--scheduler-timeout", "4", timeout=40)
        elapsed = time.monotonic() - started
    finally:
        http.kill()
        http.wait(10)
    assert done.returncode == 1, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: could not connect to the Dask scheduler at "
                           f"tcp://127.0.0.1:{port}"), done.stderr
    assert "no Dask handshake within 4 s" in last and "Traceback" not in done.stderr
    assert elapsed < 15, f"took {elapsed:.1f} s"


@pytest.mark.timeout(30)
def test_a_malformed_scheduler_address_is_refused_at_once(tmp_path):
    (tmp_path / "k.txt").write_text("1 2\n3 4\n5 6\n")
    assert distgmm("ingest", str(tmp_path / "k.txt"), str(tmp_path / "k.zarr")).returncode == 0
    for address in ("notanaddress", "tcp://127.0.0.1", "tcp://:8786", "http://127.0.0.1:1"):
        started = time.monotonic()
        done = distgmm("info", str(tmp_path / "k.zarr"), "--scheduler", address)
        assert time.monotonic() - started < 10
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: --scheduler") and \
            "tcp://HOST:PORT" in lines[0], done.stderr


@pytest.mark.timeout(120)
def test_a_frozen_scheduler_ends_the_command_within_the_timeout(tmp_path, store,
                                                                 fresh_cluster):
    """SIGSTOP keeps the scheduler's connections open (the kernel still acknowledges), so
    only the watchdog's pings notice; the command exits 1 with a clear message."""
    cluster = fresh_cluster(1)
    fit = Watched("fit", str(store), *FIT_ARGS, "--model", str(tmp_path / "m.npz"),
                  "--scheduler", cluster.address, "--scheduler-timeout", "4",
                  DISTGMM_TEST_PAUSE_AFTER_ITERATIONS="2", DISTGMM_TEST_PAUSE_SECONDS="1")
    try:
        fit.wait_for("DISTGMM_TEST_PAUSE_AFTER_ITERATIONS: paused")
        os.kill(cluster.scheduler.pid, signal.SIGSTOP)
        stopped = time.monotonic()
        code, out, err = fit.finish(timeout=60)
        noticed = time.monotonic() - stopped
    finally:
        fit.kill()
        os.kill(cluster.scheduler.pid, signal.SIGCONT)
    assert code == 1 and out == "", err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"error: stopped answering the Dask scheduler at {cluster.address} "
                           "(no reply for 4 s)"), err
    assert "--resume" in last and "Traceback" not in err
    # pings every timeout/4, a ping may take the whole timeout, then the client is closed
    assert noticed < 4 * 1.25 + 10, f"took {noticed:.1f} s"
    assert not (tmp_path / "m.npz").exists()

    # frozen before the command starts: the handshake never comes
    os.kill(cluster.scheduler.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        done = distgmm("info", str(store), "--scheduler", cluster.address,
                       "--scheduler-timeout", "3", timeout=40)
        elapsed = time.monotonic() - started
    finally:
        os.kill(cluster.scheduler.pid, signal.SIGCONT)
    assert done.returncode == 1 and "no Dask handshake within 3 s" in done.stderr, done.stderr
    assert elapsed < 15


@pytest.mark.timeout(90)
def test_embedded_cluster_dashboard_listens_on_loopback_only():
    """The dashboard of the CLI's own LocalCluster is bound to 127.0.0.1, the address the
    commands print."""
    import psutil

    from distgmm.cluster import local_cluster_client

    client = local_cluster_client(1, memory_limit="1GiB")
    cluster = client.cluster
    try:
        link = client.dashboard_link
        port = int(re.search(r":(\d+)/status", link).group(1))
        listening = [c.laddr for c in psutil.Process().net_connections("tcp")
                     if c.status == psutil.CONN_LISTEN and c.laddr.port == port]
    finally:
        client.close()
        cluster.close()
    assert link.startswith("http://127.0.0.1:")
    assert listening and all(addr.ip == "127.0.0.1" for addr in listening), listening


class _Payload:
    """Unpickling this creates a file: proof that a loader executed code."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.timeout(60)
def test_model_files_are_never_unpickled_and_job_files_run_no_code(tmp_path, store,
                                                                   reference):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.npz"
    arrays = dict(model_arrays(reference["model"]))
    payload = np.empty(1, dtype=object)
    payload[0] = _Payload(str(marker))
    # np.savez pickles object arrays; a loader with allow_pickle=True would run the payload
    np.savez(evil, **{**arrays, "weights": payload})
    for args in (["label", str(evil), str(store), "--name", "evil"],
                 ["predict", str(evil), str(tmp_path / "x.txt")]):
        (tmp_path / "x.txt").write_text("0 0 0 0\n")
        done = distgmm(*args)
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith("error: ")
    assert not marker.exists()

    for step in ('run = "shell"\ncommand = "touch {m}"',
                 'run = "fit"\nstore = "s.zarr"\nmodel = "m.npz"\ncomponents = 2\n'
                 'command = "touch {m}"',
                 'run = "python"\ncode = "open(\'{m}\', \'w\')"'):
        job = tmp_path / "job.toml"
        job.write_text("[[step]]\n" + step.format(m=marker) + "\n")
        done = distgmm("run", str(job))
        assert done.returncode == 2, done.stderr
        assert "error: " in done.stderr
    assert not marker.exists()


# ----------------------------------------------------------------------------- compose
def _compose_validator() -> list[str] | None:
    """A command that validates compose files offline: ``docker compose`` or ``docker-compose``."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def _resolved_compose(*files: str) -> dict:
    """The compose files as the validator resolves them (merged, anchors and defaults applied).

    Without a validator (allowed outside CI only) the last file is parsed with PyYAML, for
    the structural checks.
    """
    import yaml

    validator = _compose_validator()
    if validator is None:
        if os.environ.get("CI"):
            pytest.fail("CI needs a compose validator: run tests/install-compose-validator.sh")
        return yaml.safe_load((REPO / files[-1]).read_text())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISTGMM_", "COMPOSE_"))}
    env["DOCKER_HOST"] = "unix:///nonexistent/docker.sock"  # proves no engine is needed
    flags = [a for f in files for a in ("-f", str(REPO / f))]
    done = subprocess.run([*validator, *flags, "--profile", "jobs", "config"],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=60)
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)


@pytest.mark.timeout(90)
def test_embedded_cluster_workers_start_with_huge_page_malloc():
    """The CLI's own LocalCluster gives its workers WORKER_ENVIRONMENT, next to Dask's own
    pre-spawn settings (which it must not drop)."""
    from distgmm.cluster import local_cluster_client

    client = local_cluster_client(1, memory_limit="1GiB")
    cluster = client.cluster
    try:
        (env,) = client.run(lambda: {k: os.environ.get(k) for k in
                                     ("GLIBC_TUNABLES", "MALLOC_TRIM_THRESHOLD_")}).values()
    finally:
        client.close()
        cluster.close()
    assert env == {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1", "MALLOC_TRIM_THRESHOLD_": "65536"}


def test_compose_file_is_valid_and_is_the_tested_topology():
    config = _resolved_compose("docker-compose.yml")
    services = config["services"]
    assert set(services) == {"scheduler", "worker", "runner"}
    scheduler, worker, runner = (services[s] for s in ("scheduler", "worker", "runner"))

    # the scheduler port is never published; the dashboard only on 127.0.0.1
    published = []
    for name, service in services.items():
        for port in service.get("ports", []):
            spec = port if isinstance(port, str) else \
                f"{port.get('host_ip', '')}:{port.get('published', '')}:{port['target']}"
            published.append((name, spec))
    assert published, "the dashboard should be published"
    for name, spec in published:
        assert name == "scheduler" and spec.startswith("127.0.0.1:"), spec
        assert not spec.split("/")[0].endswith(":8786"), spec
    # scheduler, workers and runner share the internal network; only the scheduler is on another
    assert config["networks"]["cluster"].get("internal") is True
    for service in services.values():
        assert "cluster" in service["networks"]
    assert set(scheduler["networks"]) == {"cluster", "dashboard"}
    assert set(worker["networks"]) == set(runner["networks"]) == {"cluster"}
    # workers scale: no fixed name, no host port
    assert "container_name" not in worker and not worker.get("ports")
    # one volume shared by the workers and the runner (stores, models, checkpoints)
    def data_volume(service):
        vols = service.get("volumes", [])
        return [v for v in vols if (v if isinstance(v, str) else v["source"]).startswith("data")]
    assert data_volume(worker) and data_volume(runner)
    # the commands the tests run: `dask scheduler ...` and `dask worker SCHEDULER ...`
    assert scheduler["command"][:2] == ["dask", "scheduler"]
    assert all(a in scheduler["command"] for a in SCHEDULER_ARGS)
    assert worker["command"][:3] == ["dask", "worker", "tcp://scheduler:8786"]
    joined = " ".join(worker["command"])
    assert " ".join(WORKER_ARGS) in joined
    assert worker["environment"]["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"
    # the runner is the distgmm CLI pointed at the scheduler
    assert runner["entrypoint"] == ["distgmm"]
    env = runner["environment"]
    env = env if isinstance(env, dict) else dict(e.split("=", 1) for e in env)
    assert env["DISTGMM_SCHEDULER"] == "tcp://scheduler:8786"
    # the image installs this package
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(r"pip install \"?\.\[", dockerfile) and "COPY distgmm" in dockerfile
    assert re.search(r"^USER (?!root)", dockerfile, re.M)


@pytest.mark.timeout(90)
def test_compose_tls_override_is_valid_and_uses_tls_everywhere():
    config = _resolved_compose("docker-compose.yml", "docker-compose.tls.yml")
    services = config["services"]
    flags = ["--tls-ca-file", "/certs/ca.pem", "--tls-cert", "/certs/dask.pem",
             "--tls-key", "/certs/dask-key.pem"]
    scheduler, worker = services["scheduler"]["command"], services["worker"]["command"]
    assert scheduler[:2] == ["dask", "scheduler"] and "tls" in scheduler
    assert worker[:3] == ["dask", "worker", "tls://scheduler:8786"]
    for command in (scheduler, worker):
        assert " ".join(flags) in " ".join(command)
    env = services["runner"]["environment"]
    assert env["DISTGMM_SCHEDULER"] == "tls://scheduler:8786"
    assert env["DISTGMM_TLS_CERT"] == "/certs/dask.pem"
    for service in services.values():
        assert any("/certs:ro" in (v if isinstance(v, str) else f"{v['source']}:{v['target']}:ro")
                   for v in service["volumes"])
