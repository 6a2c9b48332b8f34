"""Preflight predicts bookworm's gates, and the real build on the real engine stops on the same gate.

Runs the actual vLLM 0.33.0 source build in the bookworm toolchain container: the tool meets
torch-cuda-config, applies its fix, and then meets the GCC gate, a dead end (~5 min, mostly pip).
"""

from __future__ import annotations

import pytest

from matrix import pipeline
from model.results import ResultsStore
from tests.conftest import ROOT

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, docker_client, default_matrix):
    ctx = pipeline.Context(store=ResultsStore(tmp_path_factory.mktemp("results"), "gate"), work=ROOT / ".work")
    ctx._client = docker_client
    ctx.confirm_gates = True
    cell = default_matrix.get("debian-bookworm-cpu")
    return {s: pipeline.run_stage(ctx, cell, s) for s in ("render", "base", "toolchain", "preflight", "build")}


def test_preflight_names_the_cmake_and_gcc_gates_quickly(outcomes):
    pf = outcomes["preflight"]
    assert pf.status == "gated" and pf.category == "gcc-gate"
    assert pf.seconds < 60
    text = "\n".join(pf.evidence)
    assert "cmake 3.25.1 < 3.26" in text
    assert "12.2.0 < 12.3" in text and "X86 backend requires gcc/g++ >= 12.3" in text


def test_the_real_build_stops_on_the_same_gate(outcomes):
    b = outcomes["build"]
    assert b.status == "gated" and b.category == "gcc-gate", (b.category, b.evidence)
    assert any("X86 backend requires gcc/g++ >= 12.3" in e for e in b.evidence)
    cats = [bl["category"] for bl in b.details["blockers"]]
    assert cats[-1] == "gcc-gate"
    assert "torch-cuda-config" in cats and cats.index("torch-cuda-config") < cats.index("gcc-gate")
    fixed = [bl for bl in b.details["blockers"] if bl["category"] == "torch-cuda-config"][0]
    assert fixed["fixed"] and "CMAKE_PROJECT_INCLUDE" in fixed["fix"]
    assert b.versions["gcc"].startswith("12.2.")


def test_the_kvlab_extension_is_built_in_the_same_container_anyway(outcomes):
    """vLLM is gated on bookworm, but the hybrid-KV extension still gets its own recorded build."""
    k = outcomes["build"].details["kvlab"]
    assert k["status"] == "pass", k
    assert any(n.startswith("kvlab") and n.endswith(".whl") for n in outcomes["build"].artifacts), outcomes["build"].artifacts
