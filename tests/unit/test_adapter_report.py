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


def test_the_report_merges_into_the_committed_one_and_never_knows_less(tmp_path):
    from matrix.notes import write_notes
    old, new = ResultsStore(tmp_path, "old"), ResultsStore(tmp_path, "new")
    served = {"engine": "llama.cpp", "checks": [], "version": "b1"}
    old.write(StageOutcome("engine-llama.cpp", "conform", "pass", details=served,
                           provenance={"run": "old", "date": "2026-12-01T00:00:00Z"}))
    old.write(StageOutcome("engine-vllm-cpu", "conform", "pass", details={"engine": "vllm-cpu", "checks": []},
                           provenance={"run": "old", "date": "2026-12-01T00:00:00Z"}))
    out = tmp_path / "notes"
    write_notes(old, out)
    assert not list(out.glob("engine-*")), "engine cells are the adapter matrix's rows, not distro notes"
    # a later run on a machine where llama.cpp could not be had, and that never tried vllm-cpu
    new.write(StageOutcome("engine-llama.cpp", "conform", "engine-unavailable", category="engine-unavailable",
                           evidence=("no image",), details={"engine": "llama.cpp"},
                           provenance={"run": "new", "date": "2026-12-06T00:00:00Z"}))
    new.write(StageOutcome("engine-tgi", "conform", "engine-unavailable", category="engine-unavailable",
                           evidence=("container image only",), details={"engine": "tgi"},
                           provenance={"run": "new", "date": "2026-12-06T00:00:00Z"}))
    write_notes(new, out)
    rows = {r["cell"]: r for r in json.loads((out / "adapters.json").read_text())}
    assert rows["engine-llama.cpp"]["status"] == "pass" and rows["engine-vllm-cpu"]["status"] == "pass"
    assert rows["engine-tgi"]["status"] == "engine-unavailable"
    md = (out / "adapters.md").read_text()
    assert "results run new, old" in md and "| llama.cpp | b1 | pass (0/0) |" in md
    assert not (out / "adapters.json").read_text().count('"distro"')
