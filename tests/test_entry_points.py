"""The estimator as a user meets it: a fresh interpreter, no Dask client made beforehand.

Every test here runs its code in a new Python process (a plain script without an
``if __name__ == "__main__":`` guard, ``python -c``, an interactive session fed on stdin,
a script with its own client, a script given a scheduler address), so nothing the test
session sets up can hide a failure. Process counts come from ``psutil`` (a dependency of
distributed): in-memory data fitted in the process starts no worker; dask input starts the
embedded cluster's workers, which must not run the user's script again.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from cluster_helpers import cli_env

FIT_BOTH = """\
print("SCRIPT START")
import numpy as np, dask.array as da, psutil
import distgmm
rng = np.random.default_rng(0)
X = np.vstack([rng.normal(0, 1.2, (300, 2)), rng.normal(3, 1.8, (600, 2))])
gm = distgmm.GaussianMixture(n_components=2, random_state=0).fit(X)
print("CHILDREN AFTER NUMPY", len(psutil.Process().children(recursive=True)))
print("SIZES", sorted(np.bincount(gm.predict(X)).tolist()))
gd = distgmm.GaussianMixture(n_components=2, random_state=0).fit(da.from_array(X, chunks=300))
print("CHILDREN AFTER DASK", len(psutil.Process().children(recursive=True)))
print("LAZY", type(gd.predict(da.from_array(X, chunks=300))).__name__, gd.converged_)
"""


def _python(*args: str, cwd: Path, stdin: str | None = None,
            timeout: float = 180) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, *args], cwd=cwd, input=stdin, capture_output=True,
                          text=True, env=cli_env(), timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return done


def _value(out: str, key: str) -> str:
    lines = [line for line in out.splitlines() if line.startswith(key + " ")]
    assert len(lines) == 1, out
    return lines[0][len(key) + 1:]


def _sklearn_sizes() -> str:
    """The cluster sizes scikit-learn finds on FIT_BOTH's data with the same seed."""
    import numpy as np
    from sklearn.mixture import GaussianMixture

    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(0, 1.2, (300, 2)), rng.normal(3, 1.8, (600, 2))])
    return str(sorted(np.bincount(GaussianMixture(2, random_state=0).fit_predict(X)).tolist()))


def _check_fit_both(out: str) -> None:
    assert out.count("SCRIPT START") == 1, "a worker ran the user's script again:\n" + out
    assert _value(out, "CHILDREN AFTER NUMPY") == "0"  # in-memory data: no cluster
    assert int(_value(out, "CHILDREN AFTER DASK")) >= 2  # the embedded cluster's workers
    assert _value(out, "SIZES") == _sklearn_sizes()  # in process: scikit-learn's fit
    assert _value(out, "LAZY") == "Array True"


@pytest.mark.timeout(300)
def test_plain_script_without_main_guard(tmp_path):
    (tmp_path / "first_fit.py").write_text(FIT_BOTH)
    done = _python("first_fit.py", cwd=tmp_path)
    _check_fit_both(done.stdout)
    assert "Traceback" not in done.stderr, done.stderr


@pytest.mark.timeout(300)
def test_python_dash_c(tmp_path):
    _check_fit_both(_python("-c", FIT_BOTH, cwd=tmp_path).stdout)


@pytest.mark.timeout(300)
def test_interactive_session(tmp_path):
    """``python -i`` reading the statements one by one, as a REPL or a notebook kernel
    runs them (no ``__file__`` in ``__main__``)."""
    done = _python("-i", cwd=tmp_path, stdin=FIT_BOTH + "exit()\n")
    _check_fit_both(done.stdout)


@pytest.mark.timeout(300)
def test_script_with_its_own_client_uses_it(tmp_path):
    """A user's own default client runs the dask fit; distgmm starts nothing of its own."""
    script = textwrap.dedent("""\
        import numpy as np, dask.array as da, psutil
        from distributed import Client, LocalCluster
        import distgmm
        from distgmm import cluster

        if __name__ == "__main__":
            with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=":0") as lc, \\
                    Client(lc):
                before = len(psutil.Process().children(recursive=True))
                X = np.random.default_rng(1).normal(size=(2000, 3))
                gm = distgmm.GaussianMixture(2, random_state=0).fit(da.from_array(X, chunks=500))
                after = len(psutil.Process().children(recursive=True))
                print("SAME PROCESSES", before == after, "EMBEDDED", bool(cluster._embedded))
                print("FITTED", gm.converged_)
        """)
    (tmp_path / "own_client.py").write_text(script)
    out = _python("own_client.py", cwd=tmp_path).stdout
    assert _value(out, "SAME PROCESSES") == "True EMBEDDED False"
    assert _value(out, "FITTED") == "True"


@pytest.mark.timeout(300)
def test_scheduler_address_with_numpy_input(tmp_path, scheduler_address):
    """``scheduler=`` with NumPy input: scattered to that cluster (this failed with
    "No clients found" when no default client existed)."""
    script = textwrap.dedent(f"""\
        import numpy as np, psutil
        import distgmm
        X = np.random.default_rng(2).normal(size=(3000, 2))
        gm = distgmm.GaussianMixture(2, random_state=0, scheduler={scheduler_address!r}).fit(X)
        print("CHILDREN", len(psutil.Process().children(recursive=True)))
        print("FITTED", gm.converged_, gm.means_.shape)
        """)
    (tmp_path / "remote.py").write_text(script)
    out = _python("remote.py", cwd=tmp_path).stdout
    assert _value(out, "CHILDREN") == "0"
    assert _value(out, "FITTED") == "True (2, 2)"


@pytest.mark.timeout(120)
def test_embedded_workers_end_with_a_killed_user_process(tmp_path):
    """``kill -9`` of the user's process: its embedded cluster's workers stop by themselves
    (they watch their parent), instead of lingering as orphans."""
    import psutil

    (tmp_path / "hang.py").write_text(textwrap.dedent("""\
        import time, psutil
        from distgmm.cluster import get_client
        get_client()
        print("WORKERS", *[p.pid for p in psutil.Process().children(recursive=True)], flush=True)
        time.sleep(300)
        """))
    proc = subprocess.Popen([sys.executable, "hang.py"], cwd=tmp_path, env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        workers = [int(pid) for pid in line.split()[1:]]
        assert line.startswith("WORKERS") and len(workers) >= 2, line + proc.stderr.read()
    finally:
        proc.kill()
        proc.wait(10)
    gone, alive = psutil.wait_procs([psutil.Process(p) for p in workers
                                     if psutil.pid_exists(p)], timeout=30)
    assert not alive, f"workers still running after their parent died: {alive}"


def _readme_python_blocks() -> list[str]:
    """The Python snippets of the README's "From Python" section (the cluster recipes for
    Slurm and Kubernetes further down need those systems)."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("\n## From Python\n", 1)[1].split("\n## ", 1)[0]
    return [m.group(1) for m in re.finditer(r"```python\n(.*?)```", section, re.S)]


@pytest.mark.timeout(400)
def test_readme_python_snippets_run_as_written(tmp_path):
    """Every Python snippet of the README's "From Python", each as a plain script in a fresh
    interpreter (a
    snippet whose comment names a `distgmm` command to make its data gets that command run
    first, in the same directory)."""
    import zarr

    blocks = _readme_python_blocks()
    assert len(blocks) >= 3
    for i, block in enumerate(blocks):
        made_with = re.search(r"made with `distgmm (.*?)`", block)
        if made_with:
            generated = subprocess.run(
                [sys.executable, "-m", "distgmm.cli", *made_with.group(1).split()],
                cwd=tmp_path, capture_output=True, text=True, env=cli_env(), timeout=180)
            assert generated.returncode == 0, generated.stderr
        (tmp_path / f"snippet{i}.py").write_text(block)
        out = _python(f"snippet{i}.py", cwd=tmp_path).stdout
        if "BayesianGaussianMixture" in block:
            assert "2 of 10 components kept" in out, out
    labels = zarr.open_array(str(tmp_path / "labels.zarr"), mode="r")
    assert labels.shape == (100_000,) and labels.dtype == np.int32
    assert set(np.unique(labels[:])) == {0, 1, 2}
