"""The build stages as `run(ctx, cell) -> StageOutcome` (the stage contract in model.stage):
render, base, toolchain, preflight, build, rebuild, runtime. The orchestrator only calls them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from model.details import BaseDetails, PreflightDetails, RenderDetails, ToolchainDetails
from model.results import StageOutcome
from model.spec import Cell
from model.stage import Context, Timed

KVLAB_CSRC = Path(__file__).resolve().parent.parent / "kvlab" / "csrc"


def render(ctx: Context, cell: Cell) -> StageOutcome:
    from images.render import lint, render_cell
    t = Timed(cell, "render")
    r = render_cell(cell)
    d = ctx.store.artifact_dir(cell.id, "render")
    (d / "Dockerfile").write_text(r.dockerfile)
    ok, text = lint(d / "Dockerfile")
    status = "fail" if ok is False else "pass"
    evidence = tuple(text.splitlines()[:5]) if ok is False else ()
    return t.done(status, category="hadolint" if status == "fail" else "",
                  evidence=evidence, artifacts={"dockerfile": str(d / "Dockerfile")},
                  details=RenderDetails(cuda_source=r.cuda_source, base_image=r.base_image, sha256=r.digest,
                                        hadolint={True: "ok", False: "failed", None: text}[ok]).to_json())


def base(ctx: Context, cell: Cell) -> StageOutcome:
    from images.bases import ensure_base
    t = Timed(cell, "base")
    log = ctx.store.artifact_dir(cell.id, "base") / "debootstrap.log"
    r = ensure_base(ctx.client, cell.distro, log=log)
    if not r.available:
        return t.done("base-unavailable", category="base-unavailable", evidence=(r.reason,),
                      remediation=f"make {cell.distro.image} reachable (a registry or mirror), "
                                  f"or docker load a {cell.distro.name} image tagged {r.tag}")
    return t.done("pass", details=BaseDetails(how=r.how, tag=r.tag).to_json())


def toolchain(ctx: Context, cell: Cell) -> StageOutcome:
    from containers.build import ImageBuildFailed
    from images.render import render_cell
    from images.toolchain import build_toolchain
    t = Timed(cell, "toolchain")
    render = ctx.store.get(cell.id, "render")
    cuda_source = RenderDetails.from_outcome(render).cuda_source or None if render else None
    log = ctx.store.artifact_dir(cell.id, "toolchain") / "docker-build.log"
    try:
        secs, probe = build_toolchain(ctx.client, render_cell(cell, cuda_source), cell.toolchain_tag, log)
    except ImageBuildFailed as exc:
        from images.classify import classify_text
        c = classify_text(exc.log)
        return t.done("fail", category=c.category, evidence=(str(exc), *c.evidence), remediation=c.remediation,
                      artifacts={"log": str(log)})
    versions = {k: str(v) for k, v in probe.items() if k in ("gcc", "python", "glibc", "cmake", "nvcc", "os")}
    return t.done("pass", versions=versions,
                  artifacts={"log": str(log), "image": cell.toolchain_tag},
                  details=ToolchainDetails(probe=probe).to_json())


def _engine_tree(ctx: Context, cell: Cell) -> Path:
    from images.sources import fetch_engine
    return fetch_engine(ctx.engine_source(cell), ctx.work / "sources")


def declared_probe(cell: Cell) -> dict[str, Any]:
    """What the rendered Dockerfile promises when no image can be built (no base): the distro's
    declared Python and the packages it installs. Compiler and CMake versions stay unknown."""
    return {"python": cell.distro.python, "numa_header": "yes" if cell.knobs.numactl else "no",
            "os": f"{cell.distro.name} (declared; no image here)", "declared": True}


def _limited(cell: Cell, probe: dict[str, Any]) -> dict[str, Any]:
    """The probe as the build will find it: a build dir on a filesystem of knobs.workspace_gb has at
    most that much free, whatever the image's own disk has."""
    ws = cell.knobs.workspace_gb
    if ws is None:
        return probe
    have = probe.get("disk_free_gb")
    return {**probe, "disk_free_gb": ws if have in (None, "") else min(float(have), ws)}


def preflight(ctx: Context, cell: Cell) -> StageOutcome:
    from images.gates import gates_from_tree, hosts_of
    from images.preflight import preflight
    from images.probe import probe_reachability
    tree = _engine_tree(ctx, cell)
    tc = ctx.store.get(cell.id, "toolchain")
    if tc is not None and tc.status == "pass":
        probe: dict[str, Any] = dict(ToolchainDetails.from_outcome(tc).probe)
        # Which of the hosts the tree fetches from a container of this image can reach (GitHub: no).
        probe["reachable"] = probe_reachability(ctx.client, cell.toolchain_tag, hosts_of(gates_from_tree(tree)))
        return preflight(cell, tree, _limited(cell, probe))
    out = preflight(cell, tree, _limited(cell, declared_probe(cell)))
    if out.status == "gated":  # a dead end visible from declared facts alone is still a verdict
        return out
    gates = PreflightDetails.from_outcome(out).gates
    checked = [g for g in gates if g.status in ("pass", "fail")]
    unknown = [g for g in gates if g.status == "warn"]
    ev = (f"no image: {len(checked)} gate(s) checked from the rendered Dockerfile and the distro's declared "
          f"versions ({', '.join(sorted({g.kind for g in checked})) or 'none'}), {len(unknown)} need the image",
          *(f"checked: {g.message} → {g.status} (have {g.found})" for g in checked),
          *(f"unchecked: {g.evidence}" for g in unknown if g.category in ("gcc-gate", "cmake-too-old")))
    return StageOutcome(**{**out.__dict__, "status": "base-unavailable", "category": "base-unavailable",
                           "evidence": ev})


def build(ctx: Context, cell: Cell, stage: str = "build") -> StageOutcome:
    from images.build import BuildRequest, Workspace, run_build
    from images.logs import ninja_progress
    tc = ctx.store.get(cell.id, "toolchain")
    req = BuildRequest(cell=cell, tree=_engine_tree(ctx, cell), ws=Workspace(ctx.cell_dir(cell), ctx.cache),
                       image=cell.toolchain_tag, kvlab_src=KVLAB_CSRC if KVLAB_CSRC.is_dir() else None)

    def on_line(phase: str, line: str) -> None:
        p = ninja_progress(line)
        if p:
            ctx.on_progress(cell.id, stage, phase, p[0], p[1])
    return run_build(ctx.client, req, ctx.store.artifact_dir(cell.id, stage), on_line,
                     probe=ToolchainDetails.from_outcome(tc).probe if tc else None, stage=stage)


def rebuild(ctx: Context, cell: Cell) -> StageOutcome:
    """The build again from a clean CMake dir: ccache makes it warm; notes report cold/warm."""
    return build(ctx, cell, "rebuild")


def runtime(ctx: Context, cell: Cell) -> StageOutcome:
    from images.runtime import build_runtime
    return build_runtime(ctx, cell)
