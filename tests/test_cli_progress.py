"""Progress as people and logs see it: plain lines when stderr is a pipe, bars on a terminal.

Real CLI subprocesses on a local cluster of one worker; the terminal is a pseudo-terminal
(``pty``) on stderr, as an interactive shell gives one.
"""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys

import pytest

from cluster_helpers import cli_env, distgmm


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("progress") / "s.zarr"
    done = distgmm("generate", str(path), "--points", "20000", "--features", "2",
                   "--components", "3", "--seed", "1", "--chunk-rows", "5000", "-q")
    assert done.returncode == 0, done.stderr
    return path


@pytest.mark.timeout(300)
def test_plain_lines_in_a_log(store, tmp_path):
    model = tmp_path / "m.npz"
    done = distgmm("fit", str(store), "-k", "3", "-o", str(model), "--seed", "0",
                   "--workers", "1")
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    # the initialisation's one sample pass, then one line per EM iteration
    assert [x for x in lines if x.startswith("initialisation:")] == [
        next(x for x in lines if re.fullmatch(
            r"initialisation: sample pass \(start 1\): 1/1 done, \d+\.\d\d s", x))]
    assert any(re.match(r"init 1 iteration +1 +lower bound", x) for x in lines)
    assert "\x1b[" not in done.stderr and "━" not in done.stderr  # no bars, no escapes
    done = distgmm("label", str(model), str(store), "--workers", "1")
    assert done.returncode == 0, done.stderr
    assert "labelled 4/4 chunks" in done.stderr.splitlines()


@pytest.mark.timeout(300)
def test_bars_on_a_terminal(store, tmp_path):
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "distgmm.cli", "fit", str(store), "-k", "3", "-o",
         str(tmp_path / "m.npz"), "--seed", "0", "--workers", "1"],
        stdout=subprocess.PIPE, stderr=terminal, text=True,
        env=cli_env(TERM="xterm", COLUMNS="120"))
    os.close(terminal)
    seen = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # the terminal's last writer ended
            break
        if not chunk:
            break
        seen += chunk
    os.close(controller)
    stdout, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, seen.decode(errors="replace")[-3000:]
    text = seen.decode(errors="replace")
    assert "initialisation: sample pass (start 1)" in text
    assert "EM iterations" in text and "━" in text  # the bars, drawn in place
    assert "\r" in text or "\x1b[" in text
    assert "fit " in stdout and "lower bound" in stdout  # the summary stays on stdout
