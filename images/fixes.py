"""The build's data files as typed records: fixes.toml (what the build does about a classified
blocker) and offline.toml (FetchContent inputs supplied from the distro's own source packages),
read through model.toml so a bad edit is one line; and the two rules that use them."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any, Literal

from containers.run import SCRIPTS
from model.toml import Strict, read_toml, validate

HERE = Path(__file__).parent
FIXES = HERE / "fixes.toml"
OFFLINE = HERE / "offline.toml"


class Fix(Strict):
    action: Literal["cmake-project-include", "pip", "none"]
    include: str | None = None  # cmake-project-include: a file in images/resources/ (mounted at SCRIPTS)
    packages: list[str] | None = None  # pip: requirement strings installed before the phase
    dead_end: bool = False  # no fix exists on this distro: the build ends "gated"
    note: str | None = None  # "{torch}" is the build venv's torch version


class Offline(Strict):
    env: str  # the variable that points the engine's CMake at a local source
    debian: str  # source package names
    fedora: str


def _tables(model: type[Strict], path: Path) -> dict[str, Any]:
    return {name: validate(model, table, str(path), name) for name, table in read_toml(path).items()}


@cache
def fixes(path: Path = FIXES) -> dict[str, Fix]:
    return _tables(Fix, path)


@cache
def offline(path: Path = OFFLINE) -> dict[str, Offline]:
    return _tables(Offline, path)


def fix_env(category: str, env: dict[str, str]) -> tuple[dict[str, str], str] | None:
    """fixes.toml's fix for `category` applied to the build env, and what it changed; None when
    there is none (or it is already applied, so retrying cannot help)."""
    fix = fixes().get(category)
    if not fix or fix.dead_end or fix.action == "none":
        return None
    if fix.action == "cmake-project-include":
        arg = f"-DCMAKE_PROJECT_INCLUDE={SCRIPTS}/{fix.include}"
        if arg in env.get("CMAKE_ARGS", ""):
            return None
        return {**env, "CMAKE_ARGS": (env.get("CMAKE_ARGS", "") + " " + arg).strip()}, arg
    pkgs = " ".join(f"'{p}'" for p in fix.packages or ())
    marker = f"pip install {pkgs}"
    if marker in env.get("DEPLOYLAB_PRE", ""):
        return None
    return {**env, "DEPLOYLAB_PRE": (env.get("DEPLOYLAB_PRE", "") + f" && python -m {marker}").lstrip(" &")}, marker


def offline_inputs(tree: Path) -> dict[str, dict[str, str]]:
    """FetchContent inputs this tree lets us supply locally (an env override it reads) → offline.toml,
    with the tag the engine asks for."""
    text = "\n".join(p.read_text(errors="replace") for p in [tree / "CMakeLists.txt", *tree.glob("cmake/*.cmake")]
                     if p.is_file())
    found = {}
    for name, spec in offline().items():
        if spec.env in text:
            tags = re.findall(rf"GIT_REPOSITORY\s+\S*{name}\S*\s+GIT_TAG\s+(\S+)", text, re.I)
            # Prefer a release tag (v3.13) over a pinned commit of another architecture's branch.
            tags.sort(key=lambda t: not re.match(r"v?\d+\.\d+", t))
            found[name] = {**spec.model_dump(), "asked": tags[0] if tags else ""}
    return found
