"""`invoke matrix` interrupted once and rerun: every cell ends classified and nothing finished is redone.

Runs the real CLI against the real engine on a two-distro spec (bookworm: a real toolchain image;
Fedora: base-unavailable here), interrupting the first run with SIGINT after its first outcomes.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter

import pytest

from containers.labels import OWNER
from tests.conftest import ROOT

pytestmark = pytest.mark.docker

SPEC = """
[matrix]
distros = ["debian-bookworm", "fedora-44"]
targets = ["cpu"]
[knobs]
stages = ["render", "base", "toolchain", "preflight"]
"""


def _events(path):
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_interrupted_matrix_resumes_without_redoing(tmp_path, docker_client, sig):
    spec = tmp_path / "two.toml"
    spec.write_text(SPEC)
    env = {**os.environ, "DEPLOYLAB_RESULTS": str(tmp_path / "results")}
    cmd = [sys.executable, "-m", "invoke", "matrix", "--spec", str(spec), "--run", "r"]
    events = tmp_path / "results" / "r" / "events.jsonl"

    # A shell without job control starts background jobs with SIGINT ignored, and children inherit
    # that (CI may run us so): restore the default so the CLI gets its Ctrl-C as a user's terminal would.
    first = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 300
    while not any(e["event"] == "stage-end" for e in _events(events)) and time.monotonic() < deadline:
        time.sleep(0.1)
    first.send_signal(sig)
    out1, _ = first.communicate(timeout=120)
    ended_first = [(e["cell"], e["stage"]) for e in _events(events) if e["event"] == "stage-end"]
    assert ended_first, out1
    assert len(ended_first) < 16, "the first run was meant to be interrupted before the end"
    assert "interrupted: results written so far are kept" in out1
    assert "Traceback" not in out1
    assert first.returncode == 130
    # nothing of the interrupted stage is left behind (every container the tool starts names its owner)
    assert not docker_client.containers.list(all=True, filters={"label": f"{OWNER}={socket.gethostname()}:{first.pid}"})

    second = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stdout + second.stderr
    ends = Counter((e["cell"], e["stage"]) for e in _events(events) if e["event"] == "stage-end")
    stages = ("render", "base", "toolchain", "preflight")
    for cell in ("debian-bookworm-cpu", "fedora-44-cpu"):
        for stage in stages:
            assert ends[(cell, stage)] == 1, f"{cell}/{stage} ended {ends[(cell, stage)]} times"
    for cell, stage in ended_first:
        assert f"{cell:<22} {stage:<10} kept" in second.stderr
    outcome = json.loads((tmp_path / "results/r/cells/fedora-44-cpu/base.json").read_text())
    assert outcome["status"] == "base-unavailable"
    pf = json.loads((tmp_path / "results/r/cells/debian-bookworm-cpu/preflight.json").read_text())
    assert pf["status"] == "gated" and pf["category"] == "gcc-gate"
