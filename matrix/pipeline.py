"""`invoke matrix`: every selected stage of every selected cell, in order, into one results store.

A stage runs only when the stages it needs passed; otherwise it ends "skipped" naming the cause.
A failing cell never stops the others. Each outcome is written the moment its stage ends, and a
rerun reuses every outcome already written (unless force), so an interrupted run resumes.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matrix.errors import UsageError
from matrix.results import STAGES, ResultsStore, StageOutcome
from matrix.spec import Cell

# What each stage needs to have passed first. Preflight reads the rendered Dockerfile when no
# toolchain image exists (Fedora here), so it needs only render.
NEEDS: dict[str, tuple[str, ...]] = {
    "render": (),
    "base": ("render",),
    "toolchain": ("base",),
    "preflight": ("render",),
    "build": ("toolchain", "preflight"),
    "rebuild": ("build",),
    "runtime": ("build",),
    "smoke": ("runtime",),
    "oracle": ("build",),
}
# Needs that are met once the stage ran, whatever its verdict: the kvx extension is built even where
# vLLM is gated, so the oracle checks it there too (in the toolchain image).
RAN_IS_ENOUGH = {("oracle", "build")}
# "rebuild" (a warm ccache rebuild) runs only when asked for (--stages rebuild, invoke build --rebuild).
PIPELINE = tuple(s for s in STAGES if s in NEEDS and s != "rebuild")


@dataclass
class Context:
    store: ResultsStore
    work: Path  # .work: sources, per-cell build trees, caches
    force: bool = False
    vllm: str | None = None  # --vllm VERSION|PATH overrides the cell's engine source
    confirm_gates: bool = False  # run the build even when preflight predicts a gate
    on_event: Callable[[str, str, str], None] = lambda cell, stage, msg: None
    _client: Any = None
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def client(self):
        if self._client is None:
            from images.engine import client
            self._client = client()
        return self._client


def _outcome(cell: Cell, stage: str, status: str, t0: float, started: float, **kw: Any) -> StageOutcome:
    return StageOutcome(cell=cell.id, stage=stage, status=status, started=started,
                        seconds=time.monotonic() - t0, **kw)


def run_stage(ctx: Context, cell: Cell, stage: str) -> StageOutcome:
    """Run one stage (or reuse its stored outcome) and store the result."""
    have = ctx.store.get(cell.id, stage)
    if have is not None and not ctx.force:
        ctx.on_event(cell.id, stage, f"kept {have.status}")
        return have
    started, t0 = time.time(), time.monotonic()
    if stage not in cell.knobs.stages:
        out = _outcome(cell, stage, "skipped", t0, started, category="not-selected",
                       evidence=(f"{stage} is not in this cell's knobs.stages",))
        return ctx.store.write(out)
    for need in NEEDS[stage]:
        prev = ctx.store.get(cell.id, need)
        if prev is not None and prev.status == "gated" and need == "preflight" and ctx.confirm_gates:
            continue  # build anyway, to confirm (or refute) the predicted gate on the real toolchain
        if prev is not None and (stage, need) in RAN_IS_ENOUGH and prev.status != "skipped":
            continue
        if prev is None or prev.status != "pass":
            why = "not run" if prev is None else f"{prev.status}" + (f" ({prev.category})" if prev.category else "")
            ev = (f"{need}: {why}", *(prev.evidence[:2] if prev else ()))
            out = _outcome(cell, stage, "skipped", t0, started, category=f"upstream-{need}", evidence=ev,
                           remediation=prev.remediation if prev else "")
            return ctx.store.write(out)
    ctx.on_event(cell.id, stage, "start")
    ctx.store.event("stage-start", cell=cell.id, stage=stage)
    try:
        out = STAGE_FUNCS[stage](ctx, cell)
    except UsageError:
        raise
    except Exception as exc:  # a crash in one cell's stage is that cell's outcome, not the run's end
        tb = traceback.format_exc().strip().splitlines()
        out = _outcome(cell, stage, "fail", t0, started, category="internal-error",
                       evidence=(f"{exc.__class__.__name__}: {exc}", *tb[-3:]),
                       remediation="a deploylab bug: report it with this evidence")
    out = StageOutcome(**{**out.__dict__, "started": started, "seconds": time.monotonic() - t0})
    ctx.on_event(cell.id, stage, out.status)
    return ctx.store.write(out)


def run_matrix(ctx: Context, cells: Iterable[Cell], stages: Iterable[str] | None = None) -> list[StageOutcome]:
    chosen = list(stages or PIPELINE)
    unknown = [s for s in chosen if s not in NEEDS]
    if unknown:
        from matrix.errors import did_you_mean
        raise UsageError(f"--stages: unknown stage {unknown[0]!r}{did_you_mean(unknown[0], NEEDS)}")
    results = []
    for cell in cells:
        for stage in STAGES:
            if stage in chosen:
                results.append(run_stage(ctx, cell, stage))
    return results


# --- the stages --------------------------------------------------------------------------------

def stage_render(ctx: Context, cell: Cell) -> StageOutcome:
    from images.render import lint, render_cell
    t0, started = time.monotonic(), time.time()
    r = render_cell(cell)
    d = ctx.store.artifact_dir(cell.id, "render")
    (d / "Dockerfile").write_text(r.dockerfile)
    ok, text = lint(d / "Dockerfile")
    status = "fail" if ok is False else "pass"
    evidence = tuple(text.splitlines()[:5]) if ok is False else ()
    return _outcome(cell, "render", status, t0, started, category="hadolint" if status == "fail" else "",
                    evidence=evidence, artifacts={"dockerfile": str(d / "Dockerfile")},
                    details={"cuda_source": r.cuda_source, "base_image": r.base_image, "sha256": r.digest,
                             "hadolint": {True: "ok", False: "failed", None: text}[ok]})


def stage_base(ctx: Context, cell: Cell) -> StageOutcome:
    from images.bases import ensure_base
    t0, started = time.monotonic(), time.time()
    log = ctx.store.artifact_dir(cell.id, "base") / "debootstrap.log"
    r = ensure_base(ctx.client, cell.distro, log=log)
    if not r.available:
        return _outcome(cell, "base", "base-unavailable", t0, started, category="base-unavailable",
                        evidence=(r.reason,),
                        remediation=f"make {cell.distro.image} reachable (a registry or mirror), "
                                    f"or docker load a {cell.distro.name} image tagged {r.tag}")
    return _outcome(cell, "base", "pass", t0, started, details={"how": r.how, "tag": r.tag})


def stage_toolchain(ctx: Context, cell: Cell) -> StageOutcome:
    from images.dockerbuild import ImageBuildFailed
    from images.render import render_cell
    from images.toolchain import build_toolchain
    t0, started = time.monotonic(), time.time()
    render = ctx.store.get(cell.id, "render")
    cuda_source = render.details.get("cuda_source") if render else None
    log = ctx.store.artifact_dir(cell.id, "toolchain") / "docker-build.log"
    try:
        secs, probe = build_toolchain(ctx.client, render_cell(cell, cuda_source), cell.toolchain_tag, log)
    except ImageBuildFailed as exc:
        from images.classify import classify_text
        c = classify_text(exc.log)
        return _outcome(cell, "toolchain", "fail", t0, started, category=c.category,
                        evidence=(str(exc), *c.evidence), remediation=c.remediation, artifacts={"log": str(log)})
    versions = {k: str(v) for k, v in probe.items() if k in ("gcc", "python", "glibc", "cmake", "nvcc", "os")}
    return _outcome(cell, "toolchain", "pass", t0, started, versions=versions,
                    artifacts={"log": str(log), "image": cell.toolchain_tag}, details={"probe": probe})


def _engine_tree(ctx: Context, cell: Cell) -> Path:
    from images.sources import fetch_engine
    from matrix.spec import EngineSource
    engine = EngineSource.parse(ctx.vllm) if ctx.vllm else cell.engine
    return fetch_engine(engine, ctx.work / "sources")


def declared_probe(cell: Cell) -> dict[str, Any]:
    """What the rendered Dockerfile promises when no image can be built (no base): the distro's
    declared Python and the packages it installs. Compiler and CMake versions stay unknown."""
    return {"python": cell.distro.python, "numa_header": "yes" if cell.knobs.numactl else "no",
            "os": f"{cell.distro.name} (declared; no image here)", "declared": True}


def stage_preflight(ctx: Context, cell: Cell) -> StageOutcome:
    from images.preflight import gates_from_tree, hosts_of, preflight, probe_reachability
    tree = _engine_tree(ctx, cell)
    tc = ctx.store.get(cell.id, "toolchain")
    if tc is not None and tc.status == "pass":
        probe = dict(tc.details["probe"])
        # Which of the hosts the tree fetches from a container of this image can reach (GitHub: no).
        probe["reachable"] = probe_reachability(ctx.client, cell.toolchain_tag, hosts_of(gates_from_tree(tree)))
        return preflight(cell, tree, probe)
    out = preflight(cell, tree, declared_probe(cell))
    if out.status == "gated":  # a dead end visible from declared facts alone is still a verdict
        return out
    checked = [g for g in out.details["gates"] if g["status"] in ("pass", "fail")]
    unknown = [g for g in out.details["gates"] if g["status"] == "warn"]
    ev = (f"no image: {len(checked)} gate(s) checked from the rendered Dockerfile and the distro's declared "
          f"versions ({', '.join(sorted({g['kind'] for g in checked})) or 'none'}), {len(unknown)} need the image",
          *(f"checked: {g['message']} → {g['status']} (have {g['found']})" for g in checked),
          *(f"unchecked: {g['evidence']}" for g in unknown if g.get("category") in ("gcc-gate", "cmake-too-old")))
    return StageOutcome(**{**out.__dict__, "status": "base-unavailable", "category": "base-unavailable",
                           "evidence": ev})


def stage_build(ctx: Context, cell: Cell, stage: str = "build") -> StageOutcome:
    from images.build import BuildRequest, Workspace, run_build
    tc = ctx.store.get(cell.id, "toolchain")
    kvlab = Path(__file__).resolve().parent.parent / "kvlab" / "csrc"
    req = BuildRequest(cell=cell, tree=_engine_tree(ctx, cell), ws=Workspace(ctx.work / "cells" / cell.id,
                       ctx.work / "cache"), image=cell.toolchain_tag, kvlab_src=kvlab if kvlab.is_dir() else None)
    on_line = ctx.extras.get("on_build_line")
    return run_build(ctx.client, req, ctx.store.artifact_dir(cell.id, stage), on_line,
                     probe=tc.details.get("probe") if tc else None, stage=stage)


def stage_rebuild(ctx: Context, cell: Cell) -> StageOutcome:
    """The build again from a clean CMake dir: ccache makes it warm; notes report cold/warm."""
    return stage_build(ctx, cell, "rebuild")


def stage_runtime(ctx: Context, cell: Cell) -> StageOutcome:
    from images.runtime import build_runtime
    return build_runtime(ctx, cell)


def stage_smoke(ctx: Context, cell: Cell) -> StageOutcome:
    from smoke.stage import run_smoke
    return run_smoke(cell, ctx.store, image=cell.runtime_tag, record=False)


def stage_oracle(ctx: Context, cell: Cell) -> StageOutcome:
    from images.build import Workspace
    from kvlab.stage import run_oracle_stage
    t0, started = time.monotonic(), time.time()
    rt = ctx.store.get(cell.id, "runtime")
    if rt is not None and rt.status == "pass":
        return run_oracle_stage(cell=cell, image=cell.runtime_tag, store=ctx.store, client=ctx.client)
    build = ctx.store.get(cell.id, "build")
    kv = (build.details if build else {}).get("kvlab") or {}
    if kv.get("status") != "pass":
        return _outcome(cell, "oracle", "skipped", t0, started, category="upstream-kvlab",
                        evidence=(f"build: the kvx extension {kv.get('status', 'was not built')}"
                                  + (f" ({kv['category']})" if kv.get("category") else ""), *kv.get("evidence", [])[:2]))
    ws = Workspace(ctx.work / "cells" / cell.id, ctx.work / "cache")
    return run_oracle_stage(cell=cell, image=cell.toolchain_tag, store=ctx.store, client=ctx.client,
                            wheels=ws.wheels, pip_cache=ws.cache / "pip")


STAGE_FUNCS: dict[str, Callable[[Context, Cell], StageOutcome]] = {
    "render": stage_render, "base": stage_base, "toolchain": stage_toolchain, "preflight": stage_preflight,
    "build": stage_build, "rebuild": stage_rebuild, "runtime": stage_runtime, "smoke": stage_smoke, "oracle": stage_oracle,
}
