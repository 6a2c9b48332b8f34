"""Preflight pinned to its own earlier output: every CMake file of the vendored vLLM 0.33.0 tree
tokenized and every if() parsed and evaluated, every gate the tree declares, and each gate's status
per cell, compared with tests/fixtures/preflight-pinned.json. That file was written by this file's
--write mode run against the pre-split images/preflight.py (commit 8b7a658, its functions aliased
under the new module names), so a refactor that changes any of it fails here. No Docker, no network."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))

from images import cmake, gates as gt, preflight as pf  # noqa: E402
from model import spec  # noqa: E402
from tests.unit.test_preflight import BOOKWORM, SID, TREE, TRIXIE  # noqa: E402

PINNED = ROOT / "tests" / "fixtures" / "preflight-pinned.json"
DECLARED = {"python": "3.14", "os": "fedora-44 (declared; no image here)", "declared": True}
SCENARIOS = {  # cell id → the probe it is evaluated against (test_preflight's real probes)
    "debian-bookworm-cpu": BOOKWORM, "debian-trixie-cpu": TRIXIE, "debian-sid-cpu": SID,
    "debian-bookworm-cuda": BOOKWORM, "debian-trixie-cuda": {**TRIXIE, "nvcc": "13.0.88"},
    "fedora-44-cpu": DECLARED,
}


def _digest(obj) -> str:
    return hashlib.sha256(repr(obj).encode()).hexdigest()[:16]


def tokens_and_conditions() -> dict:
    """Per CMake file: a digest of its commands, and of every if()/elseif() parsed, shown and
    evaluated under each cell's facts."""
    matrix = spec.load(None, machine=spec.Machine(cores=2, mem_gib=24))
    cfg = gt.load_config()
    facts = {c: pf.facts_for(matrix.get(c), p, cfg) for c, p in SCENARIOS.items()}
    out = {}
    files = sorted([TREE / "CMakeLists.txt", *TREE.rglob("*.cmake")])
    for f in files:
        cmds = list(cmake.commands(f.read_text(errors="replace")))
        conds = []
        for c in cmds:
            if c.name in ("if", "elseif"):
                node = cmake.parse_condition(c.args)
                conds.append((c.line, cmake.show(node), tuple(cmake.evaluate_condition(node, fx)
                                                              for fx in facts.values())))
        out[str(f.relative_to(TREE))] = {"commands": len(cmds), "tokens": _digest([(c.name, c.args, c.line) for c in cmds]),
                                         "conditions": len(conds), "evaluated": _digest(conds)}
    return out


def snapshot(monkeypatch=None) -> dict:
    matrix = spec.load(None, machine=spec.Machine(cores=2, mem_gib=24))
    gates = gt.gates_from_tree(TREE)
    cells = {}
    for cid, probe in SCENARIOS.items():
        o = pf.preflight(matrix.get(cid), TREE, probe)
        cells[cid] = {"status": o.status, "category": o.category, "evidence": list(o.evidence),
                      "remediation": o.remediation, "versions": o.versions,
                      "details": {k: v for k, v in o.details.items() if k not in ("gates", "source")},
                      "gates": {g["id"]: [g["status"], g["found"], g["fixable"], g["category"], g["remediation"],
                                          g["evidence"]] for g in o.details["gates"]}}
    return {"_captured": "python tests/unit/test_preflight_pinned.py --write against the pre-split images/preflight.py "
                         "(8b7a658), tests/fixtures/vllm-0.33.0, test_preflight's probes; torch's CUDA stubbed to 13.0",
            "files": tokens_and_conditions(),
            "gates": [{"id": g.id, "need": g.need, "message": g.message, "label": g.label,
                       "when": [cmake.show(c) for c in g.when], "fires": cmake.show(g.fires) if g.fires else None,
                       "override": g.override, "index": g.index, "marker": g.marker} for g in gates],
            "cells": cells}


def _stub_torch_cuda(monkeypatch) -> None:
    # cuda cells read torch's CUDA from PyPI; the pin is about this code, not today's PyPI
    import images.sources
    monkeypatch.setattr(images.sources, "torch_cuda_of", lambda version, python: "13.0")


def test_preflight_matches_its_pinned_output(monkeypatch):
    _stub_torch_cuda(monkeypatch)
    pinned = json.loads(PINNED.read_text())
    now = json.loads(json.dumps(snapshot()))
    assert now["files"] == pinned["files"]
    assert [g["id"] for g in now["gates"]] == [g["id"] for g in pinned["gates"]]
    assert now["gates"] == pinned["gates"]
    for cid in SCENARIOS:
        assert now["cells"][cid] == pinned["cells"][cid], cid


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    import pytest
    mp = pytest.MonkeyPatch()
    _stub_torch_cuda(mp)
    PINNED.write_text(json.dumps(snapshot(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {PINNED}")
