"""Build gates read from an engine's source tree (and the cell's knobs), in the order a build meets
them: Python and pip pins first, then CMake's configure in the order it reads the tree.

  - cmake_minimum_required in CMakeLists.txt,
  - message(FATAL_ERROR ...) whose guarding if() compares a compiler version (gates.toml [variables]),
    followed through include() of the tree's own .cmake files, with the if() nesting kept so a gate
    under `VLLM_TARGET_DEVICE STREQUAL "cpu"` or an x86 guard only applies where it is reached,
  - PYTHON_SUPPORTED_VERSIONS in CMake and requires-python in pyproject.toml,
  - build-system requires and requirements/build*.txt pins of probed tools (cmake, ninja),
  - the torch pin of a target's build requirements and the index it needs (checked at find_package(Torch)),
  - FetchContent sources that need the network, with the FETCHCONTENT_SOURCE_DIR_<NAME> override.
gates.toml says which CMake variable is which probed tool; images.preflight evaluates the gates.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlparse

from packaging.requirements import InvalidRequirement, Requirement
from pydantic import ConfigDict, Field, PlainValidator

from images.cmake import REF, Tok, commands, parse_condition
from model.errors import UsageError
from model.toml import Strict, load

GATES = Path(__file__).with_name("gates.toml")


# --- records --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Gate:
    kind: str  # cmake | compiler | python | pin | torch | fetch | disk | memory
    subject: str  # probe key ("gxx", "cmake", "python"), package or FetchContent name
    need: str  # a version specifier (">=12.3"), a list ("3.11 3.12"), or a URL for fetch gates
    message: str  # the tree's own words
    source: str  # "cmake/cpu_extension.cmake:136"
    label: str = ""  # how evidence names the subject ("gcc" for gxx)
    when: tuple = ()  # parsed if() conditions under which the gate is reached
    fires: tuple | None = None  # compiler gates: the condition that raises the FATAL_ERROR
    override: str = ""  # fetch gates: the variable that points CMake at a local source
    index: str = ""  # torch gates: the package index the pin needs
    marker: str = ""  # pins: the PEP 508 environment marker that selects this line

    @property
    def id(self) -> str:
        return f"{self.kind}:{self.subject}@{self.source}"

    @property
    def host(self) -> str:
        url = self.index or (self.need if self.kind == "fetch" else "")
        return urlparse(url).hostname or ""



# --- gates.toml -----------------------------------------------------------------------------

def _scalar(v: Any) -> str | bool | int | float:
    if isinstance(v, (str, bool, int, float)):
        return v
    raise ValueError("expected a string, a number or true/false")


def _pair(v: Any) -> tuple[str, str]:
    if isinstance(v, list) and len(v) == 2 and all(isinstance(x, str) for x in v):
        return v[0], v[1]
    raise ValueError("expected [probe key, label]")


Scalar = Annotated[Any, PlainValidator(_scalar)]


class Facts(Strict):
    """What CMake variables hold while the gates are reached: plain values, per arch, per target."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, Scalar]
    arch: dict[str, dict[str, Scalar]] = {}
    target: dict[str, dict[str, Scalar]] = {}


class Remedy(Strict):
    kind: Literal["cmake", "compiler", "python", "pin", "torch", "fetch", "disk", "memory"]
    subject: str | None = None  # a glob over the gate's subject
    cells: list[str] | None = None  # globs over cell ids
    category: str
    fixable: bool
    remediation: str


class GatesConfig(Strict):
    variables: dict[str, Annotated[tuple[str, str], PlainValidator(_pair)]]  # VAR = [probe key, label]
    tools: dict[str, str]
    indexes: dict[str, str] = {}
    facts: Facts
    remedy: Annotated[list[Remedy], Field(min_length=1)]


def load_config(path: Path = GATES) -> GatesConfig:
    return load(GatesConfig, path)


# --- which compiler version a FATAL_ERROR's guard requires -----------------------------------

_NEGATE = {"VERSION_LESS": ">=", "VERSION_GREATER_EQUAL": "<", "VERSION_GREATER": "<=",
           "VERSION_LESS_EQUAL": ">", "VERSION_EQUAL": "!="}
_HOLDS = {"VERSION_LESS": "<", "VERSION_GREATER_EQUAL": ">=", "VERSION_GREATER": ">",
          "VERSION_LESS_EQUAL": "<=", "VERSION_EQUAL": "=="}


def _version_test(node: tuple, variables: Mapping[str, Any], negated: bool = False) -> tuple[str, str] | None:
    """(variable, requirement) of the first version comparison on a known variable in a FATAL_ERROR guard.

    The guard fires the error, so the requirement is the comparison's negation, unless it sits under
    an odd number of NOTs (`if(NOT (... VERSION_GREATER_EQUAL 12.3))` requires >= 12.3).
    """
    kind = node[0]
    if kind in ("and", "or"):
        for x in node[1]:
            if found := _version_test(x, variables, negated):
                return found
        return None
    if kind == "not":
        return _version_test(node[1], variables, not negated)
    if kind == "binary" and node[1].startswith("VERSION_"):
        var = REF.sub(lambda m: m.group(2), node[2][0])
        if var in variables:
            ops = _HOLDS if negated else _NEGATE
            return var, f"{ops[node[1]]}{node[3][0]}"
    return None


# --- walking the tree -----------------------------------------------------------------------

@dataclass
class _Frame:
    previous: list[tuple]
    current: tuple


def _else_of(previous: list[tuple]) -> tuple:
    nots = tuple(("not", c) for c in previous)
    return nots[0] if len(nots) == 1 else ("and", nots)


def _message_text(args: tuple[Tok, ...]) -> str:
    text = re.sub(r"\s+", " ", "".join(t for t, _ in args[1:])).strip()
    first = text.split(". ", 1)[0]  # evidence names the gate; the full text stays in the tree
    return first + ("." if first != text and not first.endswith(".") else "")


def _walk(tree: Path, rel: str, context: tuple, variables: Mapping[str, Any], out: dict[str, Any],
          seen: set[str]) -> None:
    if rel in seen:
        return
    seen.add(rel)
    try:
        text = (tree / rel).read_text(errors="replace")
    except OSError:
        return
    stack: list[_Frame] = []
    guards: list[tuple] = []  # after a return() inside an if(): later commands need NOT(that branch)
    skip_depth = 0  # inside function()/macro() bodies: only reached when called, not a gate
    for cmd in commands(text):
        name = cmd.name
        if name in ("function", "macro"):
            skip_depth += 1
            continue
        if name in ("endfunction", "endmacro"):
            skip_depth = max(0, skip_depth - 1)
            continue
        if skip_depth:
            continue
        if name == "if":
            cond = parse_condition(cmd.args)
            stack.append(_Frame([cond], cond))
            continue
        if name == "elseif" and stack:
            cond = parse_condition(cmd.args)
            f = stack[-1]
            f.current = ("and", (_else_of(f.previous), cond))
            f.previous.append(cond)
            continue
        if name == "else" and stack:
            stack[-1].current = _else_of(stack[-1].previous)
            continue
        if name == "endif" and stack:
            stack.pop()
            continue
        here = (*context, *guards, *(f.current for f in stack))
        where = f"{rel}:{cmd.line}"
        words = [t for t, _ in cmd.args]
        if name == "return":
            if not stack:
                return
            inner = tuple(f.current for f in stack)
            guards.append(("not", inner[0] if len(inner) == 1 else ("and", inner)))
        elif name == "include" and words:
            target = REF.sub(lambda m: "" if m.group(2) in ("CMAKE_CURRENT_LIST_DIR", "CMAKE_SOURCE_DIR",
                                                               "CMAKE_CURRENT_SOURCE_DIR") else m.group(0), words[0])
            target = target.lstrip("/")
            if target.endswith(".cmake") and (tree / target).is_file():
                _walk(tree, target, here, variables, out, seen)
        elif name == "cmake_minimum_required" and "VERSION" in words:
            need = words[words.index("VERSION") + 1].split("...")[0]
            out["gates"].append(Gate("cmake", "cmake", f">={need}", f"cmake_minimum_required(VERSION {need})",
                                     where, "cmake", here))
        elif name == "message" and words and words[0] in ("FATAL_ERROR", "SEND_ERROR") and stack:
            test = _version_test(stack[-1].current, variables)
            if test:
                var, need = test
                key, label = variables[var]
                kind = "cmake" if key == "cmake" else "compiler"
                out["gates"].append(Gate(kind, key, need, _message_text(cmd.args), where, label,
                                         here[:-1], stack[-1].current))
        elif name == "set" and words and words[0] == "PYTHON_SUPPORTED_VERSIONS":
            out["python_versions"] = (tuple(words[1:]), where, here)
        elif name == "set" and len(words) == 2 and "${" not in words[1]:
            out["sets"][words[0]] = words[1]  # plain values only: enough to read URLs kept in variables
        elif name == "find_package" and words and words[0] == "Torch":
            out["gates"].append(Gate("torch-at", "torch", "", "find_package(Torch)", where, "torch", here))
        elif name in ("fetchcontent_declare", "fetchcontent_populate") and words:
            kv = _keywords(words[1:], ("GIT_REPOSITORY", "URL", "SOURCE_DIR", "GIT_TAG"))
            out["fetches"].append((words[0], kv, where, here, name))
            out["gates"].append(Gate("fetch-at", words[0], str(len(out["fetches"]) - 1), "", where))


def _keywords(words: list[str], keys: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for i, w in enumerate(words[:-1]):
        if w in keys and w not in out:
            out[w] = words[i + 1]
    return out


def _fetch_gates(fetches: list, sets: Mapping[str, str]) -> list[Gate | None]:
    """One entry per FetchContent call (None where it needs no network), aligned with `fetches`."""
    gates: list[Gate | None] = []

    def expand(text: str) -> str:
        return REF.sub(lambda m: sets.get(m.group(2), m.group(0)) if not m.group(1) else m.group(0), text)

    for name, kv, where, here, how in fetches:
        kv = {k: expand(v) for k, v in kv.items()}
        url = kv.get("GIT_REPOSITORY") or kv.get("URL")
        if not url:
            gates.append(None)
            continue
        override = ""
        for other, okv, *_ in fetches:
            src = okv.get("SOURCE_DIR", "")
            if other == name and not (okv.get("GIT_REPOSITORY") or okv.get("URL")) and (m := REF.fullmatch(src)):
                override = m.group(2)  # the tree's own switch to a local checkout
                break
        override = override or _guard_override(here)
        if not override and how == "fetchcontent_declare":
            override = f"FETCHCONTENT_SOURCE_DIR_{name.upper()}"  # CMake's built-in override
        tag = f" {kv['GIT_TAG']}" if kv.get("GIT_TAG") else ""
        gates.append(Gate("fetch", name, url, f"FetchContent {name} from {url}{tag}", where, name, here,
                          override=override))
    return gates


_OVERRIDE_VAR = re.compile(r"(?:ENV\{)?([A-Za-z0-9_]*(?:_SRC_DIR|_SOURCE_DIR|_ROOT_DIR))\}?$")


def _guard_override(when: tuple) -> str:
    """A download reached only when `NOT X_SRC_DIR` (or `NOT DEFINED ENV{X_ROOT_DIR}`) can be skipped by setting X."""
    def names(node: tuple) -> Iterator[str]:
        if node[0] in ("and", "or"):
            for x in node[1]:
                yield from names(x)
        elif node[0] in ("value", "unary"):
            yield node[-1][0]

    for cond in when:
        negated = [cond[1]] if cond[0] == "not" else [x[1] for x in cond[1] if x[0] == "not"] if cond[0] == "and" else []
        for node in negated:
            for name in names(node):
                if m := _OVERRIDE_VAR.match(name.replace("$ENV{", "ENV{")):
                    return m.group(1)
    return ""


def _target_of(path: Path) -> str:
    """requirements/build/cpu.txt, requirements/cpu-build.txt → "cpu"; requirements/build.txt → ""."""
    stem = path.stem
    if path.parent.name == "build":
        return stem
    return stem[:-len("-build")] if stem.endswith("-build") else ""


def _target_cond(target: str) -> tuple:
    return (("binary", "STREQUAL", ("VLLM_TARGET_DEVICE", False), (target, True)),) if target else ()


def _requirement_files(tree: Path) -> list[Path]:
    req = tree / "requirements"
    files = [*req.glob("build.txt"), *req.glob("*-build.txt"), *req.glob("build/*.txt")]
    return sorted({f for f in files if f.is_file()})


def _pins(tree: Path, tools: Mapping[str, str], indexes: Mapping[str, str]) -> tuple[list[Gate], list[tuple[Requirement, str, str, tuple]]]:
    """Tool pins as gates, and torch pins as (requirement, source, index, when) for the torch gate."""
    gates: list[Gate] = []
    torch: list[tuple[Requirement, str, str, tuple]] = []
    py = tree / "pyproject.toml"
    sources: list[tuple[str, int, str, tuple, str]] = []  # (text, line, file, when, index)
    if py.is_file():
        text = py.read_text(errors="replace")
        try:
            requires = tomllib.loads(text).get("build-system", {}).get("requires", [])
        except tomllib.TOMLDecodeError as exc:
            raise UsageError(f"{py}: not valid TOML: {exc}") from None
        lines = text.splitlines()
        for r in requires:
            line = next((i + 1 for i, ln in enumerate(lines) if r in ln), 0)
            sources.append((r, line, "pyproject.toml", (), ""))
    for f in _requirement_files(tree):
        rel = str(f.relative_to(tree))
        when = _target_cond(_target_of(f))
        index = ""
        for i, raw in enumerate(f.read_text(errors="replace").splitlines(), 1):
            line = raw.split(" #")[0].strip()
            if line.startswith(("--extra-index-url", "--index-url", "-i ")):
                index = line.split()[-1].split("=", 1)[-1]
            elif line and not line.startswith(("#", "-")):
                sources.append((line, i, rel, when, index))
    for text, line, rel, when, index in sources:
        try:
            req = Requirement(text)
        except InvalidRequirement:
            continue
        where = f"{rel}:{line}"
        if req.name.lower() in tools:
            gates.append(Gate("pin", req.name.lower(), str(req.specifier), text, where, req.name.lower(), when,
                              marker=str(req.marker or "")))
        elif req.name.lower() == "torch" and when:
            local = next((s.version.split("+", 1)[1] for s in req.specifier if "+" in s.version), "")
            torch.append((req, where, index or indexes.get(local, ""), when))
    return gates, torch


def _python_gates(tree: Path, walked: dict[str, Any]) -> list[Gate]:
    gates = []
    py = tree / "pyproject.toml"
    if py.is_file():
        text = py.read_text(errors="replace")
        spec = tomllib.loads(text).get("project", {}).get("requires-python")
        if spec:
            line = next((i + 1 for i, ln in enumerate(text.splitlines()) if ln.startswith("requires-python")), 0)
            gates.append(Gate("python", "python", spec, f"requires-python = {spec!r}", f"pyproject.toml:{line}",
                              "python"))
    if "python_versions" in walked:
        versions, where, here = walked["python_versions"]
        gates.append(Gate("python", "python", " ".join(versions),
                          f"PYTHON_SUPPORTED_VERSIONS {' '.join(versions)}", where, "python", here))
    return gates


def gates_from_tree(src: Path, config: GatesConfig | None = None) -> list[Gate]:
    """Every gate the tree declares, in the order a build meets them: Python and pip pins, then CMake's
    configure in the order it reads the tree (include() followed where it appears)."""
    src = Path(src)
    if not (src / "CMakeLists.txt").is_file():
        raise UsageError(f"{src}: not an engine source tree (no CMakeLists.txt)")
    cfg = config if config is not None else load_config()
    walked: dict[str, Any] = {"gates": [], "fetches": [], "sets": {}}
    _walk(src, "CMakeLists.txt", (), cfg.variables, walked, set())
    pins, torch = _pins(src, cfg.tools, cfg.indexes)
    gates = [*_python_gates(src, walked), *pins]
    fetch_gates = _fetch_gates(walked["fetches"], walked["sets"])
    cmake_gates: list[Gate] = []
    for g in walked["gates"]:
        if g.kind == "fetch-at":
            fetched = fetch_gates[int(g.need)]
            cmake_gates += [fetched] if fetched else []
            continue
        if g.kind != "torch-at":
            cmake_gates.append(g)
            continue
        # find_package(Torch) is where a torch that cannot be had bites: keep the walk order
        # (the gate's source is the pin; find_package(Torch) is where a wrong torch fails)
        cmake_gates += [Gate("torch", "torch", f"{req.name}{req.specifier}",
                             f"find_package(Torch) at {g.source} needs {req.name}{req.specifier} from {index or 'PyPI'}",
                             where, "torch", (*g.when, *when), index=index, marker=str(req.marker or ""))
                        for req, where, index, when in torch if "+" in str(req.specifier)]
    return [*gates, *cmake_gates]


def resource_gates(cell: Any) -> list[Gate]:
    """Disk and memory needs come from the cell's knobs, not the tree."""
    knobs = getattr(cell, "knobs", None)
    if knobs is None:
        return []
    return [Gate("disk", "disk_free_gb", f"{knobs.disk_gb:g}", "free disk the build needs at peak",
                 "knobs.disk_gb", "disk"),
            Gate("memory", "mem_gib", f"{knobs.gib_per_job:g}", "memory one compile job needs",
                 "knobs.gib_per_job", "memory")]


def hosts_of(gates: list[Gate]) -> list[str]:
    """The hosts the fetch and torch gates need (what a reachability probe asks about)."""
    return sorted({g.host for g in gates if g.kind in ("fetch", "torch") and g.host})
