"""`invoke bench replay` interrupted for real (issue 17): SIGTERM while the peer client (`vllm bench
serve`, in its own container) runs against the bench's vLLM engine, and SIGINT while that engine starts.
Either way the CLI exits 130 with one line, and no container of its owner is left: the engine and
the peer's container are removed by the toolkit's context managers, and whatever those could not
reach by the owner-label sweep that ends every interrupted task (testcontainers' reaper is off here).

Runs from a temporary folder (`invoke -r ROOT`), so the bench's results/bench/replay lands there.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from containers.labels import OWNER, ROLE
from tests.conftest import ROOT

pytestmark = [pytest.mark.faults, pytest.mark.docker, pytest.mark.timeout(900)]


def _peer_running(c) -> bool:
    return c.labels.get(ROLE) == "bench-peer" and any("vllm_bench_serve" in a for a in c.attrs["Config"]["Cmd"])


def _engine_running(c) -> bool:
    return c.labels.get(ROLE) == "smoke-engine"


@pytest.mark.parametrize("sig,when", [(signal.SIGTERM, _peer_running), (signal.SIGINT, _engine_running)],
                         ids=["sigterm-during-the-peer", "sigint-during-engine-start"])
def test_interrupted_bench_exits_130_and_leaves_no_container(docker_client, tmp_path, sig, when):
    cmd = [sys.executable, "-m", "invoke", "-r", str(ROOT), "bench", "replay", "--pairs", "4", "--model", "tiny",
           "--concurrency", "2"]
    # SIGINT reaches the CLI as a terminal's Ctrl-C would (a shell without job control starts
    # background jobs with it ignored, and children inherit that).
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    mine = {"label": f"{OWNER}={socket.gethostname()}:{proc.pid}"}
    t0 = time.monotonic()
    hit = None
    while hit is None and time.monotonic() - t0 < 600:
        assert proc.poll() is None, proc.stdout.read()
        hit = next((c for c in docker_client.containers.list(filters=mine) if when(c)), None)
        time.sleep(0.5)
    assert hit is not None, "the bench never reached the point of the fault"
    time.sleep(2)  # inside it, not at its first instant
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 130, out
    assert "interrupted: results written so far are kept" in out and "Traceback" not in out, out
    left = docker_client.containers.list(all=True, filters=mine)
    assert not left, f"left behind: {[(c.name, c.labels.get(ROLE), c.status) for c in left]}"
    assert not docker_client.networks.list(filters=mine)
    print(f"bench {signal.Signals(sig).name} after {time.monotonic() - t0:.0f} s in: exit 130, nothing left")


def _children(pid: int) -> list[int]:
    return [int(c) for t in Path(f"/proc/{pid}/task").iterdir() for c in (t / "children").read_text().split()]


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# name, arguments (short: tiny levels; the kvext grid is cut in its first shapes), the line after
# which the signal is sent, and a line printed before it that must be in what the run kept.
BENCHES = {
    "replay-capacity": (["--streams", "20,40,80", "--interval", "0.2"], "streams    20: ok", "streams    20: ok"),
    "kvext": ([], "context batch", "kvx CPU build:"),
}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
@pytest.mark.parametrize("name", list(BENCHES))
def test_interrupted_client_bench_exits_130_keeps_its_lines_and_leaves_no_process(docker_client, tmp_path, name, sig):
    """`replay-capacity` (its SSE source is a subprocess on loopback) and `kvext` (the C++ extension in
    this process) start no container: what they must not leave is a process; what they write as they
    go is their lines (stdout), which an interrupt must not lose."""
    args, when, kept = BENCHES[name]
    proc = subprocess.Popen([sys.executable, "-m", "invoke", "-r", str(ROOT), "bench", name, *args], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    t0 = time.monotonic()
    while not any(when in line for line in lines) and time.monotonic() - t0 < 300:
        assert proc.poll() is None, "".join(lines)
        time.sleep(0.2)
    assert any(when in line for line in lines), "the bench never reached the point of the fault: " + "".join(lines)
    time.sleep(1)  # inside the next measurement
    kids = _children(proc.pid)
    assert name != "replay-capacity" or kids, "the SSE source is not running"
    proc.send_signal(sig)
    t1 = time.monotonic()
    proc.wait(timeout=120)
    reader.join(timeout=10)
    out = "".join(lines)
    assert proc.returncode == 130, out
    assert "interrupted: results written so far are kept" in out and "Traceback" not in out, out
    assert kept in out, out
    deadline = time.monotonic() + 10
    while any(_alive(k) for k in kids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [k for k in kids if _alive(k)], "a process of the bench is left running"
    mine = {"label": f"{OWNER}={socket.gethostname()}:{proc.pid}"}
    assert not docker_client.containers.list(all=True, filters=mine)
    print(f"bench {name} {signal.Signals(sig).name} {t1 - t0:.0f} s in: exit 130 after {time.monotonic() - t1:.1f} s, "
          f"{len(out.splitlines())} lines kept, {len(kids)} child process(es) gone")
