"""The build's phase sequence and bookkeeping (images.build.BuildState) replayed over real builds:
the phase log tails and outcome records that the full vLLM 0.33.0 source builds left in notes/deploy/builds/
and notes/deploy/debian-*.json (bookworm: torch::cudart fixed, then the GCC dead end; sid: the fix, then a
pass and the linkage). The replay hands each phase the log that phase really printed, with its exit
code, in place of the container; the record BuildState makes must match what the real build wrote."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from images.build import Attempt, BuildState, Workspace
from images import fixes
from images.fixes import offline_inputs
from model import spec
from model.errors import UsageError

ROOT = Path(__file__).resolve().parents[2]
TREE = ROOT / "tests" / "fixtures" / "vllm-0.33.0"
STAMP = re.compile(r"^\[\+\s*[\d.]+s\] ?")


class Replay:
    """Stands where the build container does: each phase gets the log and exit of the real run."""

    def __init__(self, cell: str, attempts: list[dict]) -> None:
        self.dir = ROOT / "notes" / "deploy" / "builds" / cell
        self.exits = {a["phase"]: a["exit"] for a in attempts}
        self.calls: list[tuple[str, dict]] = []

    def run(self, phase: str, script, env: dict | None = None, attempt: int = 1, args=()) -> Attempt:
        name = phase if attempt == 1 else f"{phase}.{attempt}"
        self.calls.append((name, dict(env or {})))
        text = (self.dir / f"build-{name}.tail.log").read_text()
        lines = [STAMP.sub("", ln) for ln in text.splitlines() if STAMP.match(ln)]
        return Attempt(name, self.exits[name], 1.0, "\n".join(lines))


def _recorded(cell: str) -> dict:
    distro = cell.rsplit("-", 1)[0]
    return json.loads((ROOT / "notes" / "deploy" / f"{distro}.json").read_text())["cells"][cell]["build"]


def _replay(cell_id: str, tmp_path: Path) -> tuple[BuildState, Replay, dict]:
    rec = _recorded(cell_id)
    cell = spec.load(None, machine=spec.Machine(cores=2, mem_gib=24)).get(cell_id)
    ws = Workspace(tmp_path / "cell", tmp_path / "cache")
    ws.kvlab.mkdir(parents=True)  # the real builds had the kvlab extension's source
    linkage = ROOT / "notes" / "deploy" / "builds" / cell_id / "build-linkage.tail.log"
    if linkage.exists():  # the linkage phase writes the owning packages where the stage reads them
        text = "\n".join(STAMP.sub("", ln) for ln in linkage.read_text().splitlines() if STAMP.match(ln))
        ws.wheels.mkdir(parents=True)
        (ws.wheels / "runtime-debs.txt").write_text(text.split("owning packages:", 1)[1])
    env = {"VLLM_TARGET_DEVICE": cell.target_device, "MAX_JOBS": str(cell.knobs.max_jobs),
           "CCACHE_DIR": "/cache/ccache", "PIP_CACHE_DIR": "/cache/pip", "CMAKE_ARGS": "", "DEPLOYLAB_PRE": ""}
    st = BuildState(cell, offline_inputs(TREE), env)
    bc = Replay(cell_id, rec["details"]["attempts"])
    st.run_phases(bc, ws)
    return st, bc, rec


@pytest.mark.parametrize("cell_id", ["debian-bookworm-cpu", "debian-sid-cpu"])
def test_replayed_build_makes_the_record_the_real_build_made(cell_id, tmp_path):
    st, bc, rec = _replay(cell_id, tmp_path)
    got = st.details({}).to_json()
    want = rec["details"]
    assert [c for c, _ in bc.calls] == [a["phase"] for a in want["attempts"]]
    assert [(a["phase"], a["exit"]) for a in got["attempts"]] == [(a["phase"], a["exit"]) for a in want["attempts"]]
    assert got["blockers"] == want["blockers"]
    assert got["env"] == want["env"]
    assert got["torch"] == want["torch"] and got["max_jobs"] == want["max_jobs"]
    assert got["kvlab"]["status"] == want["kvlab"]["status"]
    assert got.get("runtime_debs") == want.get("runtime_debs")
    # the tails end before the deps phase's failed candidates: what was supplied is all they show
    assert {k: (v["asked"], v["got"], v["env"]) for k, v in got["offline_inputs"].items()} == \
           {k: (v["asked"], v["got"], v["env"]) for k, v in want["offline_inputs"].items()}
    assert (st.verdict.status, st.verdict.category, list(st.verdict.evidence)) == \
           (rec["status"], rec["category"], rec["evidence"])


def test_the_fix_reaches_the_retry_and_the_phases_after_it(tmp_path):
    st, bc, _ = _replay("debian-sid-cpu", tmp_path)
    env = dict(bc.calls)
    assert "CMAKE_PROJECT_INCLUDE" not in env["wheel"]["CMAKE_ARGS"]
    assert env["wheel.2"]["CMAKE_ARGS"] == "-DCMAKE_PROJECT_INCLUDE=/deploylab/torch_cudart_stub.cmake"
    assert env["wheel.2"]["FETCHCONTENT_SOURCE_DIR_ONEDNN"].startswith("/deps/onednn-3.")
    assert st.blockers[0].fixed and st.verdict.status == "pass"


@pytest.mark.parametrize("file, old, new, message", [
    ("fixes.toml", 'action = "pip"', 'action = "pipx"', r"cmake-too-old\.action: expected one of .*pip.*, got 'pipx' \(did you mean 'pip'\?\)$"),
    ("fixes.toml", "dead_end = true", "dead_end = 1", r"gcc-gate\.dead_end: expected true or false, got 1$"),
    ("offline.toml", 'debian = "onednn"', 'debain = "onednn"', r"onednn\.debain: unknown key \(did you mean 'debian'\?\)$"),
])
def test_build_data_faults_are_one_line(tmp_path, file, old, new, message):
    text = (fixes.HERE / file).read_text()
    assert old in text
    bad = tmp_path / file
    bad.write_text(text.replace(old, new, 1))
    load = fixes.fixes if file == "fixes.toml" else fixes.offline
    with pytest.raises(UsageError, match=f"^{bad}: {message}"):
        load(bad)
