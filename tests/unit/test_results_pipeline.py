"""The results store and the pipeline's resume/skip rules, on stages that need no engine."""

from __future__ import annotations

import json

import pytest

from matrix import pipeline
from matrix.notes import write_notes
from model.results import ResultsStore, StageOutcome


def test_outcomes_round_trip_and_events_append(tmp_path):
    store = ResultsStore(tmp_path, "r1")
    o = StageOutcome(cell="c", stage="build", status="gated", category="gcc-gate", evidence=("a", "b"),
                     versions={"gcc": "12.2.0"}, details={"blockers": [{"category": "x"}]})
    written = store.write(o)
    assert store.get("c", "build") == written
    assert written.provenance["run"] == "r1" and written.provenance["date"].endswith("Z")
    assert {**written.__dict__, "provenance": {}} == o.__dict__
    assert [x.stage for x in store.outcomes("c")] == ["build"]
    events = [json.loads(line) for line in (store.path / "events.jsonl").read_text().splitlines()]
    assert events[-1]["event"] == "stage-end" and events[-1]["status"] == "gated"
    assert not list(store.path.glob("cells/c/.*")), "no temp files left behind"


def test_unknown_status_is_refused():
    with pytest.raises(ValueError):
        StageOutcome(cell="c", stage="s", status="ok")


def test_render_runs_once_and_a_rerun_keeps_it(tmp_path, default_matrix, hadolint_ok):
    ctx = pipeline.Context(store=ResultsStore(tmp_path, "r"), work=tmp_path / "work")
    cell = default_matrix.get("debian-trixie-cpu")
    first = pipeline.run_stage(ctx, cell, "render")
    assert first.status == "pass" and first.details["hadolint"] == "ok"
    events = []
    ctx.on_event = lambda c, s, m: events.append(m)
    again = pipeline.run_stage(ctx, cell, "render")
    assert again == first and events == ["kept pass"]
    ctx.force = True
    assert pipeline.run_stage(ctx, cell, "render").started > first.started


def test_a_stage_whose_need_did_not_pass_is_skipped_with_the_cause(tmp_path, default_matrix):
    store = ResultsStore(tmp_path, "r")
    cell = default_matrix.get("fedora-44-cpu")
    store.write(StageOutcome(cell=cell.id, stage="render", status="pass"))
    store.write(StageOutcome(cell=cell.id, stage="base", status="base-unavailable", category="base-unavailable",
                             evidence=("cannot pull fedora:44",), remediation="make it reachable"))
    ctx = pipeline.Context(store=store, work=tmp_path)
    out = pipeline.run_stage(ctx, cell, "toolchain")
    assert out.status == "skipped" and out.category == "upstream-base"
    assert out.evidence[0] == "base: base-unavailable (base-unavailable)"
    assert out.remediation == "make it reachable"


def test_the_oracle_follows_a_gated_build_when_its_extension_built(tmp_path, default_matrix):
    """vLLM gated, kvx built: the oracle is not skipped for the build's verdict, only for kvx's."""
    store = ResultsStore(tmp_path, "r")
    cell = default_matrix.get("debian-bookworm-cpu")
    ctx = pipeline.Context(store=store, work=tmp_path)
    store.write(StageOutcome(cell=cell.id, stage="build", status="gated", category="gcc-gate",
                             details={"kvlab": {"status": "fail", "category": "missing-cxx-compiler",
                                                "evidence": ["CMAKE_CXX_COMPILER not set"]}}))
    out = pipeline.run_stage(ctx, cell, "oracle")
    assert out.status == "skipped" and out.category == "upstream-kvlab"
    assert out.evidence[:2] == ("build: the kvx extension fail (missing-cxx-compiler)", "CMAKE_CXX_COMPILER not set")
    store.write(StageOutcome(cell=cell.id, stage="build", status="skipped", category="upstream-preflight"))
    ctx.force = True
    assert pipeline.run_stage(ctx, cell, "oracle").category == "upstream-build"


def test_stages_outside_the_cells_knobs_are_skipped(tmp_path, default_matrix):
    ctx = pipeline.Context(store=ResultsStore(tmp_path, "r"), work=tmp_path)
    out = pipeline.run_stage(ctx, default_matrix.get("debian-trixie-cuda"), "build")
    assert out.status == "skipped" and out.category == "not-selected"


def test_unknown_stage_name_is_a_usage_error(tmp_path, default_matrix):
    from model.errors import UsageError
    ctx = pipeline.Context(store=ResultsStore(tmp_path, "r"), work=tmp_path)
    with pytest.raises(UsageError, match="did you mean 'preflight'"):
        pipeline.run_matrix(ctx, default_matrix.cells[:1], ["prefligth"])


def test_notes_list_blockers_in_order_with_fixes(tmp_path):
    store = ResultsStore(tmp_path, "r")
    store.write(StageOutcome(
        cell="debian-bookworm-cpu", stage="build", status="gated", category="gcc-gate",
        evidence=("X86 backend requires gcc/g++ >= 12.3",), remediation="use trixie",
        versions={"gcc": "12.2.0"},
        details={"max_jobs": 2, "blockers": [
            {"phase": "wheel", "category": "torch-cuda-config", "evidence": ["Caffe2 uses CUDA"],
             "fix": "-DCMAKE_PROJECT_INCLUDE=/deploylab/torch_cudart_stub.cmake", "fixed": True, "note": "n1"},
            {"phase": "wheel.2", "category": "gcc-gate", "evidence": ["X86 backend requires gcc/g++ >= 12.3"],
             "fix": "", "fixed": False, "note": "no newer GCC"}]}))
    paths = write_notes(store, tmp_path / "notes")
    md = (tmp_path / "notes" / "debian-bookworm.md").read_text()
    assert [p.name for p in paths] == ["debian-bookworm.md", "debian-bookworm.json"]
    first, second = md.index("torch-cuda-config"), md.index("**gcc-gate** in wheel.2")
    assert first < second and "worked" in md and "→ no fix" in md
    data = json.loads((tmp_path / "notes" / "debian-bookworm.json").read_text())
    assert data["cells"]["debian-bookworm-cpu"]["build"]["category"] == "gcc-gate"


def test_a_redone_stage_makes_what_read_it_stale(tmp_path, default_matrix):
    """Issue 17: an outcome is kept only while what it was made from is unchanged."""
    store = ResultsStore(tmp_path, "r")
    cell = default_matrix.get("debian-bookworm-cpu")
    ctx = pipeline.Context(store=store, work=tmp_path)
    events = []
    ctx.on_event = lambda c, s, m: events.append((s, m))
    store.write(StageOutcome(cell=cell.id, stage="build", status="gated", category="gcc-gate", started=1.0,
                             details={"kvlab": {"status": "fail", "category": "x"}}))
    first = pipeline.run_stage(ctx, cell, "oracle")
    assert first.status == "skipped" and first.identity["inputs"]["build"] == "gated@1.000"
    assert pipeline.run_stage(ctx, cell, "oracle") == first and events[-1] == ("oracle", "kept skipped")
    # the build is redone (a new outcome): the oracle that read the old one runs again
    store.write(StageOutcome(cell=cell.id, stage="build", status="gated", category="gcc-gate", started=2.0,
                             details={"kvlab": {"status": "fail", "category": "y"}}))
    again = pipeline.run_stage(ctx, cell, "oracle")
    assert ("oracle", "stale (build changed since): running again") in events
    assert again.started > first.started and again.identity["inputs"]["build"] == "gated@2.000"
    # so does a new runtime image, which the oracle reads without needing it
    store.write(StageOutcome(cell=cell.id, stage="runtime", status="fail", started=3.0))
    pipeline.run_stage(ctx, cell, "oracle")
    assert events[-3] == ("oracle", "stale (runtime changed since): running again")


def test_a_changed_cell_or_engine_is_not_kept(tmp_path, hadolint_ok):
    from model import spec
    store = ResultsStore(tmp_path, "r")
    a = spec.load(sets=["matrix.distros=['debian-trixie']"]).get("debian-trixie-cpu")
    b = spec.load(sets=["matrix.distros=['debian-trixie']", "knobs.numactl=false"]).get("debian-trixie-cpu")
    assert a.digest != b.digest and a.id == b.id
    ctx = pipeline.Context(store=store, work=tmp_path)
    events = []
    ctx.on_event = lambda c, s, m: events.append(m)
    first = pipeline.run_stage(ctx, a, "render")
    pipeline.run_stage(ctx, b, "render")
    assert events[-3] == "stale (the cell's config changed): running again"
    ctx.vllm = "0.32.0"
    pipeline.run_stage(ctx, b, "render")
    assert events[-3] == "stale (engine vllm-0.33.0 → vllm-0.32.0): running again"
    assert store.get(a.id, "render").started > first.started


def test_an_outcome_stored_without_identity_is_not_trusted(tmp_path, default_matrix, hadolint_ok):
    store = ResultsStore(tmp_path, "r")
    cell = default_matrix.get("debian-trixie-cpu")
    store.write(StageOutcome(cell=cell.id, stage="render", status="pass", started=1.0))
    ctx = pipeline.Context(store=store, work=tmp_path)
    assert pipeline.run_stage(ctx, cell, "render").started > 1.0


def test_notes_after_a_partial_run_remove_no_committed_evidence(tmp_path):
    """Issue 17: on a machine where sid only reached render, `invoke notes` keeps the committed
    sid build, runtime, smoke and oracle sections and deletes no file."""
    import shutil
    import time

    from tests.conftest import ROOT
    out = tmp_path / "deploy"
    shutil.copytree(ROOT / "notes" / "deploy", out)
    before = {p.relative_to(out) for p in out.rglob("*")}
    committed = json.loads((out / "debian-sid.json").read_text())["cells"]["debian-sid-cpu"]
    assert committed["build"]["status"] == "pass"
    store = ResultsStore(tmp_path / "results", "partial")
    now = time.time()
    store.write(StageOutcome(cell="debian-sid-cpu", stage="render", status="pass", started=now))
    store.write(StageOutcome(cell="debian-sid-cpu", stage="build", status="skipped", category="upstream-toolchain",
                             started=now))
    write_notes(store, out)
    assert before <= {p.relative_to(out) for p in out.rglob("*")}
    sid = json.loads((out / "debian-sid.json").read_text())["cells"]["debian-sid-cpu"]
    assert sid["render"]["provenance"]["run"] == "partial"
    for stage in ("build", "runtime", "smoke", "oracle"):
        assert sid[stage]["status"] == committed[stage]["status"] == "pass"
        assert sid[stage]["started"] == committed[stage]["started"]
    md = (out / "debian-sid.md").read_text()
    assert "**Build:** pass" in md and "| render | pass |  | 0 s | partial," in md
    # the other distros' notes are untouched
    assert json.loads((out / "debian-trixie.json").read_text()) == json.loads(
        (ROOT / "notes" / "deploy" / "debian-trixie.json").read_text())


def test_a_cold_warm_ratio_only_within_one_run(tmp_path):
    """A build of another run may have met a warm cache: the 2026-12-06 trixie build (28 min, ccache
    left by an interrupted build) against a 2026-11-28 rebuild once printed 'cold/warm = 8.6x'."""
    cell = "debian-trixie-cpu"
    for run, b_run in (("r", "r"), ("r", "old")):
        store = ResultsStore(tmp_path / b_run / run, run)
        store.write(StageOutcome(cell, "build", "pass", category="success", seconds=1700.0,
                                 provenance={"run": run, "date": "2026-12-06"}))
        store.write(StageOutcome(cell, "rebuild", "pass", category="success", seconds=200.0,
                                 provenance={"run": b_run, "date": "2026-11-28"}))
        write_notes(store, tmp_path / b_run / "notes")
        md = (tmp_path / b_run / "notes" / "debian-trixie.md").read_text()
        if b_run == run:
            assert "cold/warm = 8.5×" in md
            store.write(StageOutcome("debian-trixie-cuda", "build", "skipped", category="not-selected"))
            write_notes(store, tmp_path / b_run / "notes")
            md = (tmp_path / b_run / "notes" / "debian-trixie.md").read_text()
            cuda = md.split("## debian-trixie-cuda")[1]
            assert "**Build:** skipped (not-selected)\n" in cuda and "MAX_JOBS" not in cuda
        else:
            assert "cold/warm =" not in md and "not the run of the build above" in md


def test_notes_read_typed_smoke_and_build_records(tmp_path):
    """The runtime-warnings list comes from the smoke record; every phase log of the build record's
    logs folder is kept whole, xz-compressed, beside the note."""
    import lzma

    from model.details import BuildArtifacts, SmokeDetails
    cell = "debian-trixie-cpu"
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "wheel.log").write_text("".join(f"[{n}/9000] line {n}\n" for n in range(3000)))
    store = ResultsStore(tmp_path / "results", "r")
    store.write(StageOutcome(cell, "build", "pass", category="success",
                             artifacts=BuildArtifacts(logs=str(logs), wheels="").to_json()))
    store.write(StageOutcome(cell, "smoke", "pass", details=SmokeDetails(
        failures=[], duration_s=60.0, runtime_warnings=["Triton is not installed."]).to_json()))
    paths = write_notes(store, tmp_path / "notes")
    md = (tmp_path / "notes" / "debian-trixie.md").read_text()
    assert "**Runtime warnings:**\n- Triton is not installed." in md
    kept = tmp_path / "notes" / "builds" / cell / "build-wheel.log.xz"
    assert kept in paths and lzma.decompress(kept.read_bytes()) == (logs / "wheel.log").read_bytes()


def test_an_interrupted_stage_stores_nothing_and_says_so_in_the_events(tmp_path, default_matrix, monkeypatch,
                                                                         hadolint_ok):
    """Ctrl-C or SIGTERM (tasks turn it into KeyboardInterrupt("SIGTERM")) is not the stage's verdict:
    the outcome stored before stays byte for byte, and the event log names the stage and the signal."""
    ctx = pipeline.Context(store=ResultsStore(tmp_path, "r"), work=tmp_path / "work")
    cell = default_matrix.get("debian-trixie-cpu")
    pipeline.run_stage(ctx, cell, "render")
    stored = ctx.store.outcome_path(cell.id, "render").read_bytes()

    def cut(ctx, cell):
        raise KeyboardInterrupt("SIGTERM")
    monkeypatch.setattr(pipeline, "implementation", lambda stage: cut)
    ctx.force = True
    said = []
    ctx.on_event = lambda c, s, m: said.append(m)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run_stage(ctx, cell, "render")
    assert said == ["start", "interrupted (SIGTERM)"]
    assert ctx.store.outcome_path(cell.id, "render").read_bytes() == stored
    last = json.loads((ctx.store.path / "events.jsonl").read_text().splitlines()[-1])
    assert (last["event"], last["stage"], last["why"]) == ("stage-interrupted", "render", "SIGTERM")
