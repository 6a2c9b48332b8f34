"""The adapter-matrix report reads conform and smoke outcomes from the store: every engine a row,
an unavailable engine with its reason, the latency and attainment columns from the smoke outcome."""

from __future__ import annotations

import json

from matrix import adapters
from model.results import ResultsStore, StageOutcome


def test_rows_and_report_from_stored_outcomes(tmp_path):
    store = ResultsStore(tmp_path, "a")
    store.write(StageOutcome("engine-tgi", "conform", "engine-unavailable", category="engine-unavailable",
                             evidence=("ships only as a container image; no registry here",), details={"engine": "tgi"}))
    checks = [{"check": "models", "status": "pass", "required": True, "evidence": ""},
              {"check": "unknown-model", "status": "fail", "required": True, "evidence": "200"}]
    store.write(StageOutcome("engine-llama.cpp", "conform", "fail", category="contract",
                             details={"engine": "llama.cpp", "checks": checks, "version": "b11669", "startup_s": 1.5,
                                      "image_bytes": 5e8, "memory_bytes": 2.5e8, "memory_kind": "at-end"}))
    store.write(StageOutcome("engine-llama.cpp", "smoke", "fail", category="slo", details={
        "mix": "ci", "requests": 20, "attainment": {"rag": 0.5, "agent_loop": 1.0},
        "ttft_ms": {"p50": 900.0, "p99": 15000.0}, "tpot_ms": {"p50": 40.0, "p99": 95.0}, "http_5xx": 0,
        "load_1m": [1.2, 1.9]}))
    paths = adapters.write(store, tmp_path / "out")
    md = (tmp_path / "out" / "adapters.md").read_text()
    assert "| tgi | | engine-unavailable: ships only as a container image; no registry here |" in md
    assert ("| llama.cpp | b11669 | fail (1/2): unknown-model | agent_loop 100%, rag 50% | 900 / 15000 | 40 / 95 | 0 | 1.2 / 1.9 "
            "| 1.5 | 0.5 | 0.25 (at-end) |") in md
    assert "| check | required | llama.cpp |" in md and "| unknown-model | yes | fail: 200 |" in md
    rows = json.loads((tmp_path / "out" / "adapters.json").read_text())
    assert [r["engine"] for r in rows] == ["llama.cpp", "tgi"]
    assert paths[-1].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_source_engine_is_credited_its_cells_build_only_for_the_image_that_build_made(tmp_path):
    store, builds = ResultsStore(tmp_path, "a"), ResultsStore(tmp_path, "m")
    cell = "debian-trixie-cpu"
    store.write(StageOutcome(f"engine-vllm-{cell}", "conform", "pass",
                             details={"engine": "vllm", "checks": [], "image_id": "sha256:aa"}))
    builds.write(StageOutcome(cell, "build", "pass", seconds=2000.0))
    builds.write(StageOutcome(cell, "runtime", "pass", seconds=150.0, details={"image_id": "sha256:aa"}))
    assert adapters.rows(store, builds)[0]["image_build_s"] == 2150.0
    assert adapters.rows(store)[0]["image_build_s"] is None  # no matrix run named
    builds.write(StageOutcome(cell, "runtime", "pass", seconds=150.0, details={"image_id": "sha256:bb"}))
    assert adapters.rows(store, builds)[0]["image_build_s"] is None  # rebuilt since: not this image's build
