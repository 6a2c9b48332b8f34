"""`invoke matrix` over the tiny engine in a lab of its own, for the fault tests: start it, let it
finish, read an outcome, and check that a run left the store whole and nothing of its own behind."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from containers.labels import OWNER
from tests.conftest import ROOT

TINY = ROOT / "tests" / "fixtures" / "tiny-engine"
CELL = "debian-bookworm-cpu"
RUN = "f"
Lab = tuple[Path, Path, dict]  # (folder, spec file, environment): results/ and work/ inside the folder


def make_lab(tmp: Path, cache: Path, spec_text: str) -> Lab:
    (tmp / "work").mkdir()
    (tmp / "work" / "cache").symlink_to(cache)
    spec = tmp / "tiny.toml"
    spec.write_text(spec_text)
    env = {**os.environ, "DEPLOYLAB_RESULTS": str(tmp / "results"), "DEPLOYLAB_WORK": str(tmp / "work")}
    return tmp, spec, env


def matrix(lab: Lab, *sets: str, confirm_gates: bool = False, stages: tuple[str, ...] = ()) -> subprocess.Popen:
    tmp, spec, env = lab
    cmd = [sys.executable, "-m", "invoke", "matrix", "--spec", str(spec), "--vllm", str(TINY), "--run", RUN,
           *(x for s in sets for x in ("--set", s)), *(x for s in stages for x in ("--stages", s)),
           *(["--confirm-gates"] if confirm_gates else [])]
    # SIGINT reaches the CLI as a terminal's Ctrl-C would (a shell without job control starts
    # background jobs with it ignored, and children inherit that).
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)  # the CLI's own cleanup runs, as on Ctrl-C
        try:
            out, _ = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        raise AssertionError(f"invoke matrix still running after {timeout:.0f} s; its output:\n{out}") from None
    assert proc.returncode == 0, out
    assert "Traceback" not in out, out
    return out


def store(lab: Lab) -> Path:
    return lab[0] / "results" / RUN


def outcome(lab: Lab, stage: str) -> dict:
    return json.loads((store(lab) / "cells" / CELL / f"{stage}.json").read_text())


def intact(lab: Lab, docker_client, *pids: int) -> None:
    """Every outcome is whole JSON (no temp file of a cut write), and nothing of these runs is left:
    no container or network of their owner, no mount on the build dir, no filesystem image."""
    assert not list(store(lab).rglob(".*.json.*")), "a temp file of an interrupted write"
    for p in store(lab).rglob("*.json"):
        json.loads(p.read_text())
    for pid in pids:
        mine = {"label": f"{OWNER}={socket.gethostname()}:{pid}"}
        assert not docker_client.containers.list(all=True, filters=mine), f"containers of run {pid} left behind"
        assert not docker_client.networks.list(filters=mine), f"networks of run {pid} left behind"
    build_dir = lab[0] / "work" / "cells" / CELL / "src" / "build"
    assert not os.path.ismount(build_dir), "the small filesystem is still mounted"
    assert not list(build_dir.parent.glob(".build.ext4")), "the filesystem image is still there"
