"""The build's limit knobs (build_mem_gib, workspace_gb): validated as every knob is, out of the
cell's digest, and in the identity of the stages they shape only, so that dropping a limit reruns
the build and keeps what it needs. An engine-lost outcome is redone whatever its identity."""

from __future__ import annotations

import pytest

from matrix import pipeline
from model import spec
from model.errors import UsageError
from model.results import ResultsStore, StageOutcome

TRIXIE = "matrix.distros=['debian-trixie']"


def _cell(*sets: str):
    return spec.load(sets=[TRIXIE, *sets]).get("debian-trixie-cpu")


def test_limits_default_to_none_and_take_positive_numbers():
    assert (_cell().knobs.build_mem_gib, _cell().knobs.workspace_gb) == (None, None)
    c = _cell("build_mem_gib=0.5", "knobs.workspace_gb=6")
    assert (c.knobs.build_mem_gib, c.knobs.workspace_gb) == (0.5, 6.0)
    assert _cell("build_mem_gib=none").knobs.build_mem_gib is None
    for bad in ("build_mem_gib=0", "workspace_gb=-2", "workspace_gb=big"):
        with pytest.raises(UsageError, match=r"^--set: knobs\.(build_mem_gib|workspace_gb): expected a positive number"):
            _cell(bad)


def test_limits_stay_out_of_the_digest():
    """Outcomes stored before the knobs existed keep their identity, and a limit changes no stage
    that does not name it (render, toolchain ...)."""
    assert _cell().digest == _cell("build_mem_gib=0.5", "workspace_gb=6").digest


def test_dropping_a_limit_reruns_the_build_only(tmp_path):
    store = ResultsStore(tmp_path, "r")
    ctx = pipeline.Context(store=store, work=tmp_path)
    events = []
    ctx.on_event = lambda c, s, m: events.append((s, m))
    limited, free = _cell("build_mem_gib=0.25"), _cell()
    for stage in ("render", "preflight", "build"):
        ident = pipeline.identity(ctx, limited, stage)
        store.write(StageOutcome(cell=limited.id, stage=stage, status="pass", started=1.0, identity=ident))
    assert "limits" not in pipeline.identity(ctx, limited, "render")
    assert pipeline.identity(ctx, limited, "build")["limits"] == {"build_mem_gib": 0.25}
    assert "limits" not in pipeline.identity(ctx, limited, "preflight")  # preflight reads workspace_gb only
    assert pipeline.run_stage(ctx, free, "render").started == 1.0
    assert pipeline.run_stage(ctx, free, "preflight").started == 1.0
    pipeline.run_stage(ctx, free, "build")  # skipped here (no toolchain), but not kept
    assert ("build", "stale (limits {'build_mem_gib': 0.25} → none): running again") in events
    assert "limits" not in store.get(free.id, "build").identity


@pytest.mark.parametrize("category", ["engine-lost", "internal-error"])
def test_an_outcome_that_says_nothing_of_the_cell_is_redone(tmp_path, category, hadolint_ok):
    store = ResultsStore(tmp_path, "r")
    ctx = pipeline.Context(store=store, work=tmp_path)
    events = []
    ctx.on_event = lambda c, s, m: events.append(m)
    cell = _cell()
    store.write(StageOutcome(cell=cell.id, stage="render", status="fail", category=category, started=1.0,
                             identity=pipeline.identity(ctx, cell, "render")))
    again = pipeline.run_stage(ctx, cell, "render")
    assert events[0] == f"stale ({category} last time): running again" and again.started > 1.0
    assert again.status == "pass"


def _refused(ctx, cell):
    """A stage whose engine connection breaks under it (what docker-py raises when dockerd's socket goes)."""
    from requests.exceptions import ConnectionError as Refused
    raise Refused("('Connection aborted.', FileNotFoundError(2, 'No such file or directory'))")


def test_a_stage_whose_engine_connection_broke_ends_engine_lost(tmp_path, monkeypatch):
    """Not internal-error (a bug of ours, kept): the engine went away under the stage, so the outcome
    is engine-lost and the next run redoes it."""
    ctx = pipeline.Context(store=ResultsStore(tmp_path, "r"), work=tmp_path)
    monkeypatch.setitem(pipeline.IMPLEMENTATIONS, "render", f"{__name__}:_refused")
    out = pipeline.run_stage(ctx, _cell(), "render")
    assert (out.status, out.category) == ("fail", "engine-lost") and out.evidence[0].startswith("ConnectionError")
