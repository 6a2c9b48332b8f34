"""Runtime image of a cell whose build passed: its wheels installed on the distro's base, non-root,
tcmalloc and libiomp preloaded. The smoke and oracle stages start this image."""

from __future__ import annotations

import re
from pathlib import Path

from containers.build import ImageBuildFailed
from containers.images import ensure_image, render
from images.render import TEMPLATES
from model.details import BuildArtifacts, BuildDetails, RuntimeDetails
from model.results import StageOutcome
from model.spec import Cell
from model.stage import Timed

RUNTIME_PACKAGES = {
    "debian": ["python3", "python3-venv", "libnuma1", "numactl", "libtcmalloc-minimal4", "libgomp1",
               "g++", "procps", "ca-certificates"],
}


def runtime_requirements(tree: Path, torch: str) -> str:
    """requirements/common.txt of the tree + the torch the build linked + intel-openmp (libiomp5)."""
    # ml_dtypes: the kvlab oracle stage runs in this image against the installed kvx extension.
    # torch.__version__ carries a local tag (2.14.0+cu130) that is not a PyPI version.
    # A tree whose build recorded no torch, or that has no common.txt (tests/fixtures/tiny-engine),
    # gets neither: the image build then fails or passes on its own, never as a crash of this stage.
    lines = [*([f"torch=={torch.split('+')[0]}"] if torch else []), "intel-openmp; platform_machine == 'x86_64'",
             "ml_dtypes"]
    common = tree / "requirements" / "common.txt"
    for line in (common.read_text() if common.exists() else "").splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith(("-r", "--")) and not re.match(r"torch\b", line):
            lines.append(line)
    return "\n".join(lines) + "\n"


TEMPLATE = "runtime.Dockerfile.j2"


def _context(cell: Cell, linked_packages: list[str]) -> dict:
    base = RUNTIME_PACKAGES.get(cell.family, [])
    return {"cell": cell, "base_image": cell.base_tag, "packages": [*base, *(p for p in linked_packages if p not in base)]}


def render_runtime(cell: Cell, linked_packages: list[str] = ()) -> str:
    """linked_packages: distro packages owning the shared libraries the build linked (build stage)."""
    return render(TEMPLATE, TEMPLATES, **_context(cell, list(linked_packages)))


def build_runtime(ctx, cell: Cell) -> StageOutcome:
    t = Timed(cell, "runtime")
    build = ctx.store.get(cell.id, "build")
    built = BuildDetails.from_outcome(build)
    wheels_dir = Path(BuildArtifacts.from_outcome(build).wheels)
    tree = wheels_dir.parent / "src"
    files: dict[str, Path | bytes] = {f"wheels/{w.name}": w for w in sorted(wheels_dir.glob("*.whl"))}
    files["wheels/runtime-requirements.txt"] = runtime_requirements(tree, built.torch_version).encode()
    log = ctx.store.artifact_dir(cell.id, "runtime") / "docker-build.log"
    try:
        # Always built (force): a rerun of this stage follows a new build of the wheels.
        ensure_image(ctx.client, cell.runtime_tag, TEMPLATE, TEMPLATES, log,
                     context=_context(cell, built.runtime_debs or []), files=files, force=True)
    except ImageBuildFailed as exc:
        from images.classify import classify_text
        c = classify_text(exc.log)
        return t.done("fail", category=c.category, evidence=(str(exc)[:300], *c.evidence),
                      remediation=c.remediation, artifacts={"log": str(log)})
    image = ctx.client.images.get(cell.runtime_tag)
    config = image.attrs.get("Config") or {}
    env = dict(e.split("=", 1) for e in config.get("Env") or [] if "=" in e)
    return t.done("pass", artifacts={"log": str(log), "image": cell.runtime_tag},
                  details=RuntimeDetails(image_size_gb=round(image.attrs.get("Size", 0) / 1e9, 2),
                                         wheels=sorted(files), image_id=image.id, user=config.get("User") or "root",
                                         preload=env.get("LD_PRELOAD", "").replace(":", " ").split() or None).to_json())
