"""A real Dask cluster of separate processes on 127.0.0.1 (what docker-compose.yml runs), and TLS certificates.

``dask scheduler`` and ``dask worker`` (as ``python -m dask ...`` with this interpreter, so a
virtualenv's own dask runs) are started as subprocesses with the same arguments as
the compose services (:data:`SCHEDULER_ARGS`, :data:`WORKER_ARGS`; ``test_cluster.py`` checks
the compose file against them), bound to 127.0.0.1 on free ports. Every process started
here is killed by :meth:`DaskProcesses.stop`, which the fixtures call in their teardown.
"""

from __future__ import annotations

import datetime
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
#: The origin project's 30 two-dimensional points, as shipped in the package.
KMEANS_SAMPLES = str(REPO / "distgmm" / "data" / "kmeansSamples.txt")
#: The ``dask`` command of the interpreter running the tests.
DASK = [sys.executable, "-m", "dask"]

#: Arguments of the compose ``scheduler`` service after ``dask scheduler`` (address and
#: dashboard flags differ: compose listens on the internal network, tests on 127.0.0.1).
SCHEDULER_ARGS: list[str] = []
#: Arguments of the compose ``worker`` service after ``dask worker SCHEDULER``.
WORKER_ARGS = ["--nthreads", "1", "--no-dashboard"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: Test-only pause points for the CLI subprocesses (``hooks/sitecustomize.py``).
HOOKS = Path(__file__).resolve().parent / "hooks"


def cli_env(**extra: str) -> dict[str, str]:
    """The environment for CLI subprocesses: this checkout first on the path, the tests'
    pause hooks (active only with ``DISTGMM_TEST_PAUSE_*``), no inherited scheduler."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(HOOKS), env.get("PYTHONPATH", "")])
    for name in ("DISTGMM_SCHEDULER", "DISTGMM_TLS_CA_FILE", "DISTGMM_TLS_CERT", "DISTGMM_TLS_KEY"):
        env.pop(name, None)
    env.update(extra)
    return env


def distgmm(*args: str, timeout: float = 180, **env: str) -> subprocess.CompletedProcess:
    """Run ``distgmm ARGS`` (as ``python -m distgmm.cli``) and wait for it."""
    return subprocess.run([sys.executable, "-m", "distgmm.cli", *args], capture_output=True,
                          text=True, env=cli_env(**env), timeout=timeout)


def distgmm_popen(*args: str, **env: str) -> subprocess.Popen:
    """Start ``distgmm ARGS`` with stdout and stderr piped (stderr line-buffered text)."""
    return subprocess.Popen([sys.executable, "-m", "distgmm.cli", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            bufsize=1, env=cli_env(**env))


class Watched:
    """A CLI subprocess whose stderr is read by a thread, so a test can wait for a line."""

    def __init__(self, *args: str, **env: str):
        self.proc = distgmm_popen(*args, **env)
        self.lines: list[str] = []
        self._queue: queue.Queue = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout: float = 60) -> re.Match:
        """Block until a stderr line matches ``pattern``; fail if the process ends first."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._queue.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no line matching {pattern!r} within {timeout} s:\n{self.stderr}")
            if line is None:
                pytest.fail(f"exited {self.proc.wait()} before {pattern!r}:\n{self.stderr}")
            match = re.search(pattern, line)
            if match:
                return match

    def finish(self, timeout: float = 120) -> tuple[int, str, str]:
        """Wait for the exit; return (exit code, stdout, stderr)."""
        out = self.proc.stdout.read()
        code = self.proc.wait(timeout)
        self._reader.join(10)
        return code, out, self.stderr

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@dataclass
class TlsFiles:
    """PEM files of one party: the CA that signed it, its certificate and its key."""

    ca: str
    cert: str
    key: str

    def scheduler_flags(self) -> list[str]:
        return ["--tls-ca-file", self.ca, "--tls-cert", self.cert, "--tls-key", self.key]

    cli_flags = scheduler_flags


def _dask_env() -> dict[str, str]:
    env = cli_env()
    # Fast failure detection so the fault tests are quick; the defaults are minutes.
    env.setdefault("DASK_DISTRIBUTED__SCHEDULER__WORKER_TTL", "20s")
    return env


@dataclass
class DaskProcesses:
    """A scheduler and workers as separate ``dask`` processes on 127.0.0.1."""

    workdir: Path
    tls: TlsFiles | None = None
    port: int = field(default_factory=free_port)
    scheduler: subprocess.Popen | None = None
    workers: list[subprocess.Popen] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"{'tls' if self.tls else 'tcp'}://127.0.0.1:{self.port}"

    def _log(self, name: str):
        self.workdir.mkdir(parents=True, exist_ok=True)
        return open(self.workdir / f"{name}.log", "ab")

    def start_scheduler(self) -> None:
        tls = self.tls.scheduler_flags() if self.tls else []
        cmd = [*DASK, "scheduler", *SCHEDULER_ARGS, "--host", "127.0.0.1",
               "--port", str(self.port), "--no-dashboard", *tls]
        if self.tls:
            cmd += ["--protocol", "tls"]
        with self._log("scheduler") as log:
            self.scheduler = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                              env=_dask_env(), start_new_session=True)

    def start_worker(self, nanny: bool = True, name: str | None = None) -> subprocess.Popen:
        tls = self.tls.scheduler_flags() if self.tls else []
        name = name or f"w{len(self.workers)}"
        cmd = [*DASK, "worker", self.address, *WORKER_ARGS, "--host", "127.0.0.1",
               "--name", name, "--memory-limit", "2GiB", "--death-timeout", "60",
               "--local-directory", str(self.workdir / name), *tls]
        if not nanny:
            cmd.append("--no-nanny")
        with self._log(name) as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                    env=_dask_env(), start_new_session=True)
        self.workers.append(proc)
        return proc

    def start(self, n_workers: int = 2, nanny: bool = True, timeout: float = 60) -> "DaskProcesses":
        self.start_scheduler()
        for _ in range(n_workers):
            self.start_worker(nanny=nanny)
        self.wait_for_workers(n_workers, timeout)
        return self

    def client(self, timeout: str = "20s"):
        from distributed import Client

        security = None
        if self.tls:
            from distributed.security import Security

            security = Security(tls_ca_file=self.tls.ca, tls_client_cert=self.tls.cert,
                                tls_client_key=self.tls.key, require_encryption=True)
        return Client(self.address, security=security, timeout=timeout, set_as_default=False)

    def wait_for_workers(self, n: int, timeout: float = 60) -> None:
        """Block until ``n`` workers are connected (fail with the logs otherwise)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with self.client(timeout="5s") as client:
                    client.wait_for_workers(n, timeout=max(1.0, deadline - time.monotonic()))
                    return
            except Exception as exc:  # not up yet: retry until the deadline
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"{n} workers not connected to {self.address} in {timeout} s: {exc}\n"
                        + self.logs()) from exc
                time.sleep(0.5)

    def n_workers(self) -> int:
        with self.client(timeout="5s") as client:
            return len(client.scheduler_info(n_workers=-1)["workers"])

    def logs(self) -> str:
        parts = []
        for log in sorted(self.workdir.glob("*.log")):
            parts.append(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}")
        return "\n".join(parts)

    def kill_scheduler(self) -> None:
        if self.scheduler is not None and self.scheduler.poll() is None:
            self.scheduler.send_signal(signal.SIGKILL)
            self.scheduler.wait(10)

    def stop(self) -> None:
        """SIGKILL every process started here (and their children: nannies start workers)."""
        for proc in [*self.workers, self.scheduler]:
            if proc is None:
                continue
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:  # pragma: no cover - a kernel that ignores SIGKILL
                pass


def make_certificates(directory: Path) -> tuple[TlsFiles, TlsFiles]:
    """A CA and one leaf certificate for 127.0.0.1 signed by it, plus a second, unrelated CA's leaf.

    Returns ``(trusted, stranger)``: ``trusted`` is used by scheduler, workers and client
    (Dask's Security lets them share a certificate); ``stranger`` is valid but signed by
    another CA, so the cluster must refuse it.
    """
    directory.mkdir(parents=True, exist_ok=True)
    try:
        import cryptography  # noqa: F401
        make = _ca_and_leaf
    except ImportError:  # not a dependency of distgmm or distributed: use the openssl command
        make = _ca_and_leaf_openssl
    return make(directory, "cluster"), make(directory, "stranger")


def _ca_and_leaf_openssl(directory: Path, prefix: str) -> TlsFiles:
    files = TlsFiles(str(directory / f"{prefix}-ca.pem"), str(directory / f"{prefix}.pem"),
                     str(directory / f"{prefix}-key.pem"))
    ca_key, csr, ext = (str(directory / f"{prefix}{s}") for s in ("-ca-key.pem", ".csr", ".cnf"))
    Path(ext).write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n"
                         "extendedKeyUsage=serverAuth,clientAuth\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    for cmd in (
        ["req", "-x509", *ec, "-days", "1", "-subj", f"/CN={prefix} test CA",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-keyout", ca_key, "-out", files.ca],
        ["req", *ec, "-subj", f"/CN={prefix} dask", "-keyout", files.key, "-out", csr],
        ["x509", "-req", "-in", csr, "-CA", files.ca, "-CAkey", ca_key, "-CAcreateserial",
         "-days", "1", "-extfile", ext, "-out", files.cert],
    ):
        subprocess.run(["openssl", *cmd], check=True, capture_output=True, timeout=60)
    return files


def _ca_and_leaf(directory: Path, prefix: str) -> TlsFiles:
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    validity = (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1))

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder().subject_name(name(f"{prefix} test CA"))
        .issuer_name(name(f"{prefix} test CA")).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity[0]).not_valid_after(validity[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder().subject_name(name(f"{prefix} dask"))
        .issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity[0]).not_valid_after(validity[1])
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                              ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    files = TlsFiles(str(directory / f"{prefix}-ca.pem"), str(directory / f"{prefix}.pem"),
                     str(directory / f"{prefix}-key.pem"))
    Path(files.ca).write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    Path(files.cert).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    Path(files.key).write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    os.chmod(files.key, 0o600)
    return files


# ------------------------------------------------------------------- CLI test helpers
def run(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "distgmm.cli", *args], capture_output=True,
                          text=True, env=cli_env(), timeout=timeout)


def run_json(*args: str) -> dict:
    done = run(*args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # stdout is exactly one JSON object


def one_error_line(done: subprocess.CompletedProcess) -> str:
    """The command failed with exit 2 and exactly one ``error:`` line, no traceback."""
    assert done.returncode == 2, (done.returncode, done.stderr)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1] == errors[0]
    return errors[0]


def copy_store(src: str, dst) -> str:
    shutil.copytree(src, dst)
    return str(dst)


def kill_when_paused(args: list[str], env: dict[str, str], marker: str) -> None:
    """Run the CLI with a pause hook and SIGKILL it while it sleeps at the hook."""
    proc = subprocess.Popen([sys.executable, "-m", "distgmm.cli", *args],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env=cli_env(DISTGMM_TEST_PAUSE_SECONDS="60", **env))
    try:
        deadline = time.monotonic() + 120
        for line in proc.stderr:
            if marker in line:
                break
            assert time.monotonic() < deadline
        else:
            pytest.fail(f"the command ended without pausing (exit {proc.wait()})")
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
