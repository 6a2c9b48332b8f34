"""SIGINT and SIGTERM to `invoke matrix` while the runtime stage builds its image and while the
oracle stage's container runs (issue 17), on the tiny engine (tests/fixtures/tiny-engine).

An interrupt is not a stage's verdict: the stage gets no outcome (what the store held stays byte
for byte), the event log says `stage-interrupted` with the signal, the CLI exits 130 with one line,
nothing of the run's owner is left (nor the image build's own container), and the rerun runs the
interrupted stage and what follows it while keeping everything before. The tiny engine's runtime
image builds for real (apt, a venv, pip from PyPI) and fails at its `import vllm, torch` check
(build-failed): no torch here; the oracle then runs in the toolchain image on the kvx wheel.

One build for the module; each test copies its results store and resumes from it, interrupting the
runtime stage with one signal and the oracle with the other.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import time

import pytest

from containers.labels import OWNER, ROLE
from tests.faults import tiny
from tests.faults.tiny import CELL, make_lab

pytestmark = [pytest.mark.faults, pytest.mark.docker, pytest.mark.timeout(900)]

SPEC = """
[matrix]
distros = ["debian-bookworm"]
targets = ["cpu"]
[knobs]
max_jobs = 1
disk_gb = 0.1
stages = ["render", "base", "toolchain", "preflight", "build", "runtime", "smoke", "oracle"]
"""
BUILT = ("render", "base", "toolchain", "preflight", "build")


@pytest.fixture(scope="module")
def built(tmp_path_factory, shared_cache, docker_client):
    lab = make_lab(tmp_path_factory.mktemp("built"), shared_cache, SPEC)
    tiny.finish(tiny.matrix(lab, stages=BUILT))
    assert tiny.outcome(lab, "build")["status"] == "pass"
    return lab


@pytest.fixture
def resumed(tmp_path, built):
    """A store of its own holding the module's build; the work dir (wheels, sources) is the build's."""
    shutil.copytree(built[0] / "results", tmp_path / "results")
    (tmp_path / "work").symlink_to(built[0] / "work")
    env = {**built[2], "DEPLOYLAB_RESULTS": str(tmp_path / "results")}
    return tmp_path, built[1], env


def _events(lab) -> list[dict]:
    return [json.loads(line) for line in (tiny.store(lab) / "events.jsonl").read_text().splitlines() if line.strip()]


def _outcomes(lab) -> dict[str, bytes]:
    return {p.stem: p.read_bytes() for p in (tiny.store(lab) / "cells" / CELL).glob("*.json")}


def _until(proc, cond, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert proc.poll() is None, f"the run ended before {what}:\n{proc.stdout.read()}"
        assert time.monotonic() < deadline, f"{what}: not reached in {timeout:.0f} s"
        time.sleep(0.1)


def _runtime_build_containers(client) -> list:
    """The classic builder's own containers for a RUN step of the runtime template (they carry no label)."""
    steps = ("/wheels/runtime-requirements.txt", "libtcmalloc-minimal4")
    return [c for c in client.containers.list(all=True)
            if any(s in " ".join(c.attrs["Config"].get("Cmd") or []) for s in steps)]


def _interrupt(lab, proc, sig, stage: str, before: dict[str, bytes], docker_client) -> tuple[str, float]:
    """Send `sig`, then check: exit 130 in one line, the stage interrupted and stored nothing, every
    outcome stored before unchanged, nothing of the run left. Returns the output and the seconds
    from signal to exit."""
    t0 = time.monotonic()
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=180)
    took = time.monotonic() - t0
    assert proc.returncode == 130, out
    assert "interrupted: results written so far are kept" in out and "Traceback" not in out, out
    cut = [e for e in _events(lab) if e["event"] == "stage-interrupted"][-1]
    assert (cut["stage"], cut["why"]) == (stage, signal.Signals(sig).name), cut
    assert f"{stage:<10} interrupted ({signal.Signals(sig).name})" in out, out
    assert _outcomes(lab) == before, "an outcome stored before the interrupt changed, or the stage stored one"
    tiny.intact(lab, docker_client, proc.pid)
    deadline = time.monotonic() + 15  # dockerd removes a cancelled step's container on its own
    while _runtime_build_containers(docker_client) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _runtime_build_containers(docker_client), "the runtime image build's container is left"
    return out, took


@pytest.mark.parametrize("at_runtime,at_oracle", [(signal.SIGINT, signal.SIGTERM), (signal.SIGTERM, signal.SIGINT)],
                         ids=["sigint-runtime-sigterm-oracle", "sigterm-runtime-sigint-oracle"])
def test_interrupted_runtime_and_oracle_stages_resume(resumed, docker_client, at_runtime, at_oracle):
    lab, t0 = resumed, time.monotonic()
    log = tiny.store(lab) / "cells" / CELL / "runtime" / "docker-build.log"

    # 1. the runtime stage's image build is under way (past its base steps): interrupt it
    before = _outcomes(lab)
    assert set(before) == set(BUILT)
    first = tiny.matrix(lab)
    _until(first, lambda: log.exists() and "Step 6/" in log.read_text(), "the runtime image build")
    time.sleep(1.5)
    _, runtime_exit_s = _interrupt(lab, first, at_runtime, "runtime", before, docker_client)

    # 2. the rerun keeps the build, runs the runtime stage again, and is interrupted in the oracle
    second = tiny.matrix(lab)
    mine = {"label": [f"{OWNER}={socket.gethostname()}:{second.pid}", f"{ROLE}=oracle"]}
    _until(second, lambda: docker_client.containers.list(filters=mine), "the oracle container")
    time.sleep(2)
    before = _outcomes(lab)
    assert set(before) == {*BUILT, "runtime", "smoke"}
    out, oracle_exit_s = _interrupt(lab, second, at_oracle, "oracle", before, docker_client)
    for stage in BUILT:
        assert f"{stage:<10} kept pass" in out, out
    assert "runtime    start" in out and "runtime    fail" in out, out
    rt = tiny.outcome(lab, "runtime")
    assert (rt["status"], rt["category"]) == ("fail", "build-failed"), rt["evidence"]
    assert "ModuleNotFoundError: No module named 'vllm'" in log.read_text()  # the image's own check

    # 3. the last rerun runs the oracle alone
    out = tiny.finish(tiny.matrix(lab))
    for stage in (*BUILT, "runtime", "smoke"):
        assert f"{stage:<10} kept" in out, out
    assert "oracle     start" in out and tiny.outcome(lab, "oracle")["status"] == "pass"
    assert _outcomes(lab) | {"oracle": b""} == before | {"oracle": b""}
    ends = [e["stage"] for e in _events(lab) if e["event"] == "stage-end"]
    assert all(ends.count(s) == 1 for s in (*BUILT, "runtime", "smoke", "oracle")), ends
    print(f"runtime {signal.Signals(at_runtime).name}: exit 130 {runtime_exit_s:.1f} s after the signal; "
          f"oracle {signal.Signals(at_oracle).name}: {oracle_exit_s:.1f} s; test {time.monotonic() - t0:.0f} s")
