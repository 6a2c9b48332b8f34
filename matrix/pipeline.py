"""`invoke matrix`: every selected stage of every selected cell, in order, into one results store.

A stage runs only when the stages it needs passed; otherwise it ends "skipped" naming the cause.
A failing cell never stops the others. Each outcome is written the moment its stage ends, and a
rerun reuses every outcome already written (unless force), so an interrupted run resumes.
Order and needs come from model.stages; this module only maps each stage to its implementation.
"""

from __future__ import annotations

import importlib
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from containers.engine import client as docker_client, engine_gone

from model.errors import UsageError
from model.results import REDO_CATEGORIES, StageOutcome, fingerprint
from model.spec import Cell
from model import stage as stagemod
from model.stage import Stage, Timed
from model.stages import BY_NAME, NAMES, PIPELINE, check_names

__all__ = ["Context", "PIPELINE", "run_matrix", "run_stage", "implementation"]


@dataclass
class Context(stagemod.Context):
    """The orchestrator's context: its Docker client comes from the container toolkit."""

    client_factory: Callable[[], Any] | None = docker_client

# stage → "module:function"; imported on first use so `invoke render` never loads Docker or numpy.
IMPLEMENTATIONS: dict[str, str] = {
    "render": "images.stages:render",
    "base": "images.stages:base",
    "toolchain": "images.stages:toolchain",
    "preflight": "images.stages:preflight",
    "build": "images.stages:build",
    "rebuild": "images.stages:rebuild",
    "runtime": "images.stages:runtime",
    "smoke": "smoke.stage:run",
    "oracle": "kvlab.stage:run",
}
assert set(IMPLEMENTATIONS) == set(NAMES), "every stage in model.stages has one implementation"


def implementation(stage: str) -> Stage:
    module, _, attr = IMPLEMENTATIONS[stage].partition(":")
    return getattr(importlib.import_module(module), attr)


def _unmet(ctx: Context, cell: Cell, stage: str, t: Timed) -> StageOutcome | None:
    """The skipped outcome when a need of `stage` is not met, else None."""
    spec = BY_NAME[stage]
    for need in spec.needs:
        prev = ctx.store.get(cell.id, need)
        if prev is not None and prev.status == "gated" and need == "preflight" and ctx.confirm_gates:
            continue  # build anyway, to confirm (or refute) the predicted gate on the real toolchain
        if prev is not None and need in spec.ran_is_enough and prev.status != "skipped":
            continue
        if prev is None or prev.status != "pass":
            why = "not run" if prev is None else f"{prev.status}" + (f" ({prev.category})" if prev.category else "")
            return t.done("skipped", category=f"upstream-{need}",
                          evidence=(f"{need}: {why}", *(prev.evidence[:2] if prev else ())),
                          remediation=prev.remediation if prev else "")
    return None


def identity(ctx: stagemod.Context, cell: Cell, stage: str) -> dict[str, Any]:
    """What an outcome of `stage` is made from: the cell's config, the engine source, and the stored
    outcomes it needs or reads. Equal identity: the stored outcome is still true and is kept."""
    spec = BY_NAME[stage]
    ident = {"cell": cell.digest, "engine": ctx.engine_source(cell).label,
             "inputs": {n: fingerprint(ctx.store.get(cell.id, n)) for n in (*spec.needs, *spec.reads)}}
    limits = cell.knobs.limits(spec.knobs)
    if limits:  # only when set: outcomes stored before these knobs existed keep their identity
        ident["limits"] = limits
    return ident


def _changed(old: dict[str, Any], new: dict[str, Any]) -> str:
    if not old:
        return "stored without an identity"
    if old.get("cell") != new["cell"]:
        return "the cell's config changed"
    if old.get("engine") != new["engine"]:
        return f"engine {old.get('engine')} → {new['engine']}"
    if old.get("limits") != new.get("limits"):
        return f"limits {old.get('limits') or 'none'} → {new.get('limits') or 'none'}"
    redone = [n for n, fp in new["inputs"].items() if (old.get("inputs") or {}).get(n) != fp]
    return f"{', '.join(redone)} changed since" if redone else "inputs changed"


def _stored(ctx: Context, cell: Cell, stage: str) -> StageOutcome | None:
    have = None if ctx.force else ctx.store.get(cell.id, stage)
    # --confirm-gates lifts a skip that a gated preflight caused: that skip is judged again.
    if have is not None and ctx.confirm_gates and have.status == "skipped" and have.category == "upstream-preflight":
        return None
    return have


def _keeps(have: StageOutcome, ident: dict[str, Any]) -> bool:
    return have.identity == ident and have.category not in REDO_CATEGORIES


def reusable(ctx: Context, cell: Cell, stage: str) -> StageOutcome | None:
    """The stored outcome run_stage keeps as it stands (identity unchanged, not a category to redo)."""
    have = _stored(ctx, cell, stage)
    return have if have is not None and _keeps(have, identity(ctx, cell, stage)) else None


def run_stage(ctx: Context, cell: Cell, stage: str) -> StageOutcome:
    """Run one stage (or reuse its stored outcome while its identity holds) and store the result."""
    have, ident = _stored(ctx, cell, stage), identity(ctx, cell, stage)
    if have is not None:
        if _keeps(have, ident):
            ctx.on_event(cell.id, stage, f"kept {have.status}")
            return have
        why = f"{have.category} last time" if have.category in REDO_CATEGORIES else _changed(have.identity, ident)
        ctx.on_event(cell.id, stage, f"stale ({why}): running again")
    t = Timed(cell, stage)
    if stage not in cell.knobs.stages:
        return ctx.store.write(t.done("skipped", category="not-selected", identity=ident,
                                      evidence=(f"{stage} is not in this cell's knobs.stages",)))
    skipped = _unmet(ctx, cell, stage, t)
    if skipped is not None:
        return ctx.store.write(replace(skipped, identity=ident))
    ctx.on_event(cell.id, stage, "start")
    ctx.store.event("stage-start", cell=cell.id, stage=stage)
    try:
        out = implementation(stage)(ctx, cell)
    except UsageError:
        raise
    except KeyboardInterrupt as exc:
        # Not the stage's verdict: no outcome (what is stored stays as it was, and the rerun runs the
        # stage again); the event log says which stage stopped and why.
        why = str(exc) or "SIGINT"
        ctx.store.event("stage-interrupted", cell=cell.id, stage=stage, seconds=round(t.elapsed, 2), why=why)
        ctx.on_event(cell.id, stage, f"interrupted ({why[:80]})")
        raise
    except Exception as exc:  # a crash in one cell's stage is that cell's outcome, not the run's end
        tb = traceback.format_exc().strip().splitlines()
        if engine_gone(exc):  # dockerd restarted or stopped under the stage: redone by the next run
            out = t.done("fail", category="engine-lost", evidence=(f"{exc.__class__.__name__}: {exc}", *tb[-3:]),
                         remediation="the Docker engine stopped answering while the stage ran: rerun once it "
                                     "answers (an engine-lost outcome is redone)")
        else:
            out = t.done("fail", category="internal-error", evidence=(f"{exc.__class__.__name__}: {exc}", *tb[-3:]),
                         remediation="a deploylab bug: report it with this evidence")
    out = replace(out, started=t.started, seconds=t.elapsed, identity=ident)
    ctx.on_event(cell.id, stage, out.status)
    return ctx.store.write(out)


def run_matrix(ctx: Context, cells: Iterable[Cell], stages: Iterable[str] | None = None) -> list[StageOutcome]:
    chosen = list(stages or PIPELINE)
    check_names(chosen, "--stages")
    return [run_stage(ctx, cell, stage) for cell in cells for stage in NAMES if stage in chosen]
