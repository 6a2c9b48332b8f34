"""What `invoke matrix` tells the user: the plan with estimates, and progress lines in a log."""

from __future__ import annotations

import io

from rich.console import Console

from matrix import pipeline
from matrix.progress import LiveProgress, estimate, plan
from model.results import ResultsStore, StageOutcome
from model.stages import BY_NAME


def test_plan_names_what_runs_what_is_kept_and_estimates_from_earlier_records(tmp_path, default_matrix):
    cell = default_matrix.get("debian-trixie-cpu")
    old = ResultsStore(tmp_path, "earlier")
    old.write(StageOutcome(cell=cell.id, stage="build", status="pass", started=1.0, seconds=3000.0))
    store = ResultsStore(tmp_path, "now")
    ctx = pipeline.Context(store=store, work=tmp_path)
    store.write(StageOutcome(cell=cell.id, stage="render", status="pass", started=2.0,
                             identity=pipeline.identity(ctx, cell, "render")))
    assert estimate(store, cell.id, "build") == 3000.0          # the last record of the same cell
    assert estimate(store, cell.id, "runtime") == BY_NAME["runtime"].typical_s  # else the table's
    lines = plan(ctx, [cell], ["render", "build", "runtime"])
    assert lines[0] == f"{cell.id}: run build ~50 min, runtime ~3 min; keep render (pass)"
    assert lines[-1].startswith("at most ~53 min")


def test_a_log_gets_a_line_per_tenth_of_a_phase(tmp_path, default_matrix):
    out = io.StringIO()
    ctx = pipeline.Context(store=ResultsStore(tmp_path, "r"), work=tmp_path)
    with LiveProgress(ctx, Console(file=out, force_terminal=False, width=120)):
        ctx.on_event("c", "build", "start")
        for n in range(1, 101):
            ctx.on_progress("c", "build", "wheel", n, 100)
        ctx.on_event("c", "build", "pass")
    lines = [ln for ln in out.getvalue().splitlines() if "wheel [" in ln]
    # the phase's start, then each tenth
    assert len(lines) == 11 and "[1/100]" in lines[0] and "[10/100]" in lines[1] and "[100/100]" in lines[-1]


def test_the_plan_keeps_only_what_the_run_will_keep(tmp_path, default_matrix):
    """A stored outcome whose identity no longer holds, or that reads one that will be redone, runs again
    (B's report, session 7: the plan said 'keep build (fail)' for a build the run then redid)."""
    cell = default_matrix.get("debian-trixie-cpu")
    store = ResultsStore(tmp_path, "now")
    ctx = pipeline.Context(store=store, work=tmp_path)
    for stage, status in (("render", "pass"), ("build", "fail"), ("runtime", "pass")):
        store.write(StageOutcome(cell=cell.id, stage=stage, status=status, started=1.0,
                                 category="engine-lost" if stage == "build" else "",
                                 identity=pipeline.identity(ctx, cell, stage)))
    line = plan(ctx, [cell], ["render", "build", "runtime"])[0]
    # engine-lost is redone, and the runtime that reads the build goes with it
    assert line.startswith(f"{cell.id}: run build ~") and line.endswith(", runtime ~3 min; keep render (pass)"), line
