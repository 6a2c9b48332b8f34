"""Preflight: read the build gates from an engine's source tree and predict, in seconds, where a cell's
build would stop.

Gates are found by reading the tree, never from a table per engine version:
  - cmake_minimum_required in CMakeLists.txt,
  - message(FATAL_ERROR ...) whose guarding if() compares a compiler version (gates.toml [variables]),
    followed through include() of the tree's own .cmake files, with the if() nesting kept so a gate
    under `VLLM_TARGET_DEVICE STREQUAL "cpu"` or an x86 guard only applies where it is reached,
  - PYTHON_SUPPORTED_VERSIONS in CMake and requires-python in pyproject.toml,
  - build-system requires and requirements/build*.txt pins of probed tools (cmake, ninja),
  - the torch pin of a target's build requirements and the index it needs (checked at find_package(Torch)),
  - FetchContent sources that need the network, with the FETCHCONTENT_SOURCE_DIR_<NAME> override.
Each gate is evaluated against the toolchain probe of the cell's container (images.toolchain.probe).
What a failing gate means and whether it can be worked around lives in gates.toml.
"""

from __future__ import annotations

import fnmatch
import re
import time
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from packaging.markers import InvalidMarker, Marker
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from model.errors import UsageError
from model.spec import read_toml
from model.results import StageOutcome

GATES = Path(__file__).with_name("gates.toml")
STATUSES = ("pass", "fail", "warn", "skip")


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


@dataclass(frozen=True)
class GateResult:
    gate: Gate
    status: str  # pass | fail | warn (cannot be decided from the probe) | skip (not reached)
    found: str
    fixable: bool
    category: str
    remediation: str
    evidence: str

    def to_json(self) -> dict[str, Any]:
        g = self.gate
        return {"id": g.id, "kind": g.kind, "subject": g.subject, "need": g.need, "found": self.found,
                "status": self.status, "fixable": self.fixable, "category": self.category,
                "source": g.source, "message": g.message, "when": [show(c) for c in g.when],
                "override": g.override, "remediation": self.remediation, "evidence": self.evidence}


# --- gates.toml -----------------------------------------------------------------------------

def load_config(path: Path = GATES) -> dict[str, Any]:
    doc = read_toml(path)
    for key in ("variables", "tools", "facts"):
        if not isinstance(doc.get(key), dict):
            raise UsageError(f"{path}: {key}: expected a table")
    for var, pair in doc["variables"].items():
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise UsageError(f"{path}: variables.{var}: expected [probe key, label]")
    remedies = doc.get("remedy")
    if not isinstance(remedies, list) or not remedies:
        raise UsageError(f"{path}: remedy: expected an array of [[remedy]] tables")
    allowed = {"kind", "subject", "cells", "category", "fixable", "remediation"}
    for i, r in enumerate(remedies):
        where = f"{path}: remedy[{i}]"
        if not isinstance(r, dict):
            raise UsageError(f"{where}: expected a table")
        if set(r) - allowed:
            raise UsageError(f"{where}.{sorted(set(r) - allowed)[0]}: unknown key (expected {', '.join(sorted(allowed))})")
        for key in ("kind", "remediation", "category"):
            if not isinstance(r.get(key), str):
                raise UsageError(f"{where}.{key}: expected a string")
        if not isinstance(r.get("fixable"), bool):
            raise UsageError(f"{where}.fixable: expected true or false")
        if "cells" in r and not (isinstance(r["cells"], list) and all(isinstance(c, str) for c in r["cells"])):
            raise UsageError(f"{where}.cells: expected a list of cell-id globs")
    return doc


# --- a small CMake reader: commands, arguments, if() conditions -----------------------------

Tok = tuple[str, bool]  # (text, quoted)


@dataclass(frozen=True)
class Command:
    name: str  # lower case
    args: tuple[Tok, ...]
    line: int


_BRACKET = re.compile(r"#\[(=*)\[")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_UNQUOTED = re.compile(r'(?:\$\{[^}]*\}|\$ENV\{[^}]*\}|[^\s()"#])+')


def _skip_blank(text: str, i: int, line: int) -> tuple[int, int]:
    """Past whitespace and comments (# to the end of the line, or a #[[...]] bracket comment) from i:
    the next index and its line number."""
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
            i += 1
        elif c.isspace():
            i += 1
        elif c == "#":
            m = _BRACKET.match(text, i)
            close = f"]{m.group(1)}]" if m else "\n"
            end = text.find(close, i)
            end = n if end < 0 else end + (len(close) if m else 0)
            line += text.count("\n", i, end)
            i = end
        else:
            break
    return i, line


def _commands(text: str) -> Iterator[Command]:
    """CMake commands with their arguments; comments dropped, ( and ) kept as unquoted tokens."""
    i, n, line = 0, len(text), 1
    while True:
        i, line = _skip_blank(text, i, line)
        if i >= n:
            return
        if m := _IDENT.match(text, i):
            j = m.end()
            while j < n and text[j] in " \t":
                j += 1
            if j >= n or text[j] != "(":
                i = m.end()
                continue
            start_line = line
            args, i, line = _arguments(text, j + 1, line)
            yield Command(m.group(0).lower(), tuple(args), start_line)
        else:
            i += 1


def _arguments(text: str, i: int, line: int) -> tuple[list[Tok], int, int]:
    args: list[Tok] = []
    depth, n = 0, len(text)
    while True:
        i, line = _skip_blank(text, i, line)
        if i >= n:
            break
        c = text[i]
        if c == '"':
            j, buf = i + 1, []
            while j < n and text[j] != '"':
                if text[j] == "\\" and j + 1 < n:
                    if text[j + 1] == "\n":
                        line += 1
                    else:
                        buf.append(text[j:j + 2] if text[j + 1] not in '"\\' else text[j + 1])
                    j += 2
                    continue
                if text[j] == "\n":
                    line += 1
                buf.append(text[j])
                j += 1
            args.append(("".join(buf), True))
            i = j + 1
        elif c == "(":
            depth += 1
            args.append(("(", False))
            i += 1
        elif c == ")":
            if depth == 0:
                return args, i + 1, line
            depth -= 1
            args.append((")", False))
            i += 1
        else:
            m = _UNQUOTED.match(text, i)
            if not m:
                i += 1
                continue
            args.append((m.group(0), False))
            i = m.end()
    return args, i, line


_UNARY = {"EXISTS", "COMMAND", "DEFINED", "POLICY", "TARGET", "TEST", "IS_DIRECTORY", "IS_SYMLINK",
          "IS_ABSOLUTE", "IS_READABLE", "IS_WRITABLE", "IS_EXECUTABLE"}
_BINARY = {"STREQUAL", "STRLESS", "STRGREATER", "STRLESS_EQUAL", "STRGREATER_EQUAL", "EQUAL", "LESS",
           "GREATER", "LESS_EQUAL", "GREATER_EQUAL", "VERSION_EQUAL", "VERSION_LESS", "VERSION_GREATER",
           "VERSION_LESS_EQUAL", "VERSION_GREATER_EQUAL", "MATCHES", "IN_LIST", "IS_NEWER_THAN", "PATH_EQUAL"}


def parse_condition(toks: tuple[Tok, ...]) -> tuple:
    """if() arguments → ("or"|"and", items) | ("not", x) | ("unary", op, tok) | ("binary", op, l, r) | ("value", tok)."""
    pos = 0

    def kw(word: str) -> bool:
        return pos < len(toks) and not toks[pos][1] and toks[pos][0] == word

    def group(op: str, sub) -> tuple:
        nonlocal pos
        items = [sub()]
        while kw(op.upper()):
            pos += 1
            items.append(sub())
        return items[0] if len(items) == 1 else (op, tuple(items))

    def or_() -> tuple:
        return group("or", and_)

    def and_() -> tuple:
        return group("and", not_)

    def not_() -> tuple:
        nonlocal pos
        if kw("NOT"):
            pos += 1
            return ("not", not_())
        return primary()

    def primary() -> tuple:
        nonlocal pos
        if kw("("):
            pos += 1
            node = or_()
            if kw(")"):
                pos += 1
            return node
        if pos >= len(toks):
            return ("value", ("", True))
        tok = toks[pos]
        pos += 1
        if not tok[1] and tok[0] in _UNARY and pos < len(toks):
            pos += 1
            return ("unary", tok[0], toks[pos - 1])
        if pos < len(toks) and not toks[pos][1] and toks[pos][0] in _BINARY and pos + 1 < len(toks):
            op, rhs = toks[pos][0], toks[pos + 1]
            pos += 2
            return ("binary", op, tok, rhs)
        return ("value", tok)

    node = or_()
    return node


def show(node: tuple) -> str:
    """A condition back as CMake text (for details and evidence)."""
    kind = node[0]
    if kind in ("and", "or"):
        return f" {kind.upper()} ".join(f"({show(x)})" if x[0] in ("and", "or") else show(x) for x in node[1])
    if kind == "not":
        inner = show(node[1])
        return f"NOT ({inner})" if node[1][0] in ("and", "or") else f"NOT {inner}"
    if kind == "unary":
        return f"{node[1]} {_tok(node[2])}"
    if kind == "binary":
        return f"{_tok(node[2])} {node[1]} {_tok(node[3])}"
    return _tok(node[1])


def _tok(tok: Tok) -> str:
    return f'"{tok[0]}"' if tok[1] else tok[0]


# --- tri-state evaluation: True, False, or None when the facts do not say -------------------

_TRUE = {"1", "ON", "YES", "TRUE", "Y"}
_FALSE = {"0", "OFF", "NO", "FALSE", "N", "IGNORE", "NOTFOUND", ""}
_REF = re.compile(r"\$(ENV)?\{([^}]*)\}")


def _fact(facts: Mapping[str, Any], name: str) -> str | None:
    if name not in facts:
        return None
    v = facts[name]
    return ("ON" if v else "OFF") if isinstance(v, bool) else str(v)


def _value(tok: Tok, facts: Mapping[str, Any]) -> str | None:
    text, quoted = tok
    unknown = False

    def sub(m: re.Match[str]) -> str:
        nonlocal unknown
        v = _fact(facts, f"ENV{{{m.group(2)}}}" if m.group(1) else m.group(2))
        unknown = unknown or v is None
        return v or ""

    expanded = _REF.sub(sub, text)
    if unknown:
        return None
    if quoted or expanded != text:
        return expanded
    if text in facts:
        return _fact(facts, text)
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", text) and text.upper() == text and text.upper() not in _TRUE | _FALSE:
        return None  # looks like a variable nobody told us about
    return text


def _vtuple(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v)[:4])


def _vcmp(a: str, b: str) -> int:
    ta, tb = _vtuple(a), _vtuple(b)
    width = max(len(ta), len(tb))
    ta, tb = ta + (0,) * (width - len(ta)), tb + (0,) * (width - len(tb))
    return (ta > tb) - (ta < tb)


def _truth(s: str | None) -> bool | None:
    if s is None:
        return None
    u = s.upper()
    if u in _TRUE:
        return True
    if u in _FALSE or u.endswith("-NOTFOUND"):
        return False
    try:
        return float(s) != 0
    except ValueError:
        return True


def evaluate_condition(node: tuple, facts: Mapping[str, Any]) -> bool | None:
    kind = node[0]
    if kind in ("and", "or"):
        vals = [evaluate_condition(x, facts) for x in node[1]]
        decisive = kind == "or"  # True decides an OR, False decides an AND
        if decisive in vals:
            return decisive
        return None if None in vals else not decisive
    if kind == "not":
        v = evaluate_condition(node[1], facts)
        return None if v is None else not v
    if kind == "unary":
        if node[1] == "DEFINED":
            name = _REF.sub(lambda m: f"ENV{{{m.group(2)}}}" if m.group(1) else m.group(2), node[2][0])
            return True if name in facts else None
        return None
    if kind == "binary":
        op, a, b = node[1], _value(node[2], facts), _value(node[3], facts)
        if a is None or b is None:
            return None
        if op == "STREQUAL":
            return a == b
        if op == "MATCHES":
            return re.search(b, a) is not None
        if op.startswith("VERSION_"):
            c = _vcmp(a, b)
            return {"VERSION_EQUAL": c == 0, "VERSION_LESS": c < 0, "VERSION_GREATER": c > 0,
                    "VERSION_LESS_EQUAL": c <= 0, "VERSION_GREATER_EQUAL": c >= 0}[op]
        if op in ("EQUAL", "LESS", "GREATER", "LESS_EQUAL", "GREATER_EQUAL"):
            try:
                x, y = float(a), float(b)
            except ValueError:
                return None
            return {"EQUAL": x == y, "LESS": x < y, "GREATER": x > y, "LESS_EQUAL": x <= y,
                    "GREATER_EQUAL": x >= y}[op]
        return None
    tok = node[1]
    if not tok[1] and tok[0].upper() in _TRUE | _FALSE:
        return tok[0].upper() in _TRUE
    return _truth(_value(tok, facts))


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
        var = _REF.sub(lambda m: m.group(2), node[2][0])
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
    for cmd in _commands(text):
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
            target = _REF.sub(lambda m: "" if m.group(2) in ("CMAKE_CURRENT_LIST_DIR", "CMAKE_SOURCE_DIR",
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
        return _REF.sub(lambda m: sets.get(m.group(2), m.group(0)) if not m.group(1) else m.group(0), text)

    for name, kv, where, here, how in fetches:
        kv = {k: expand(v) for k, v in kv.items()}
        url = kv.get("GIT_REPOSITORY") or kv.get("URL")
        if not url:
            gates.append(None)
            continue
        override = ""
        for other, okv, *_ in fetches:
            src = okv.get("SOURCE_DIR", "")
            if other == name and not (okv.get("GIT_REPOSITORY") or okv.get("URL")) and (m := _REF.fullmatch(src)):
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


def gates_from_tree(src: Path, config: Mapping[str, Any] | None = None) -> list[Gate]:
    """Every gate the tree declares, in the order a build meets them: Python and pip pins, then CMake's
    configure in the order it reads the tree (include() followed where it appears)."""
    src = Path(src)
    if not (src / "CMakeLists.txt").is_file():
        raise UsageError(f"{src}: not an engine source tree (no CMakeLists.txt)")
    cfg = config if config is not None else load_config()
    walked: dict[str, Any] = {"gates": [], "fetches": [], "sets": {}}
    _walk(src, "CMakeLists.txt", (), cfg["variables"], walked, set())
    pins, torch = _pins(src, cfg["tools"], cfg.get("indexes", {}))
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


# --- evaluation -----------------------------------------------------------------------------

def facts_for(cell: Any, probe: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    facts = {k: v for k, v in config["facts"].items() if not isinstance(v, dict)}
    arch = str(probe.get("arch") or "x86_64")  # the probe has no arch key yet: this lab is x86_64
    facts.update(config["facts"].get("arch", {}).get(arch, {"CMAKE_SYSTEM_PROCESSOR": arch}))
    facts.update(config["facts"].get("target", {}).get(getattr(cell, "target", "cpu"), {}))
    return facts


def _remedy(gate: Gate, cell: Any, config: Mapping[str, Any]) -> dict[str, Any]:
    cid = getattr(cell, "id", "")
    for r in config["remedy"]:
        if r["kind"] != gate.kind:
            continue
        if "subject" in r and not fnmatch.fnmatchcase(gate.subject, r["subject"]):
            continue
        if "cells" in r and not any(fnmatch.fnmatchcase(cid, p) for p in r["cells"]):
            continue
        return r
    return {"fixable": False, "category": "", "remediation": f"no remedy in gates.toml for a {gate.kind} gate"}


class _Blank(dict):
    def __missing__(self, key: str) -> str:
        return f"<{key}>"


def _short(need: str) -> str:
    return need[2:] if need.startswith(">=") and "," not in need else need


def _check(gate: Gate, probe: Mapping[str, Any], cell: Any, facts: Mapping[str, Any]) -> tuple[str, str, str]:
    """(status, found, why) of one gate that is reached."""
    reachable = probe.get("reachable") or {}
    if gate.kind in ("cmake", "compiler", "pin"):
        if gate.subject not in probe:
            return "warn", "", f"{gate.subject} not probed"  # e.g. a declared probe with no image
        found = str(probe.get(gate.subject) or "")
        if not found:
            return "fail", "", f"{gate.label} not found"
        if gate.fires is not None:
            fired = evaluate_condition(gate.fires, {**facts, **{v: found for v in _vars_in(gate.fires)}})
            if fired is None:
                return "warn", found, "guard cannot be decided from the probe"
            return ("fail" if fired else "pass"), found, f"{found} {'<' if fired else '>='} {_short(gate.need)}"
        if not gate.need:
            return "pass", found, "present"
        ok = _satisfies(found, gate.need)
        if not ok and _short(gate.need) != gate.need:
            return "fail", found, f"{found} < {_short(gate.need)}"
        return ("pass" if ok else "fail"), found, f"{found} {'satisfies' if ok else 'does not satisfy'} {gate.need}"
    if gate.kind == "python":
        if "python" not in probe:
            return "warn", "", "python not probed"
        found = str(probe.get("python") or "")
        if not found:
            return "fail", "", "python3 not found"
        if re.fullmatch(r"[\d. ]+", gate.need):  # a list of supported X.Y versions
            xy = ".".join(found.split(".")[:2])
            ok = xy in gate.need.split()
            return ("pass" if ok else "fail"), found, f"{xy} {'in' if ok else 'not in'} {gate.need}"
        ok = _satisfies(found, gate.need)
        return ("pass" if ok else "fail"), found, f"{found} {'in' if ok else 'not in'} {gate.need}"
    if gate.kind in ("fetch", "torch"):
        host = gate.host
        ok = reachable.get(host)
        if ok is None:
            return "warn", "", f"needs {host}; reachability not probed"
        return ("pass" if ok else "fail"), ("reachable" if ok else "unreachable"), f"{host} {'reachable' if ok else 'unreachable'}"
    if gate.kind in ("disk", "memory"):
        key = "disk_free_gb" if gate.kind == "disk" else "mem_gib"
        val = probe.get(key)
        if val in (None, ""):
            return "warn", "", f"{key} not probed"
        ok = float(val) >= float(gate.need)
        return ("pass" if ok else "fail"), f"{float(val):g}", f"{float(val):g} {'>=' if ok else '<'} {gate.need}"
    return "warn", "", f"unknown gate kind {gate.kind}"


def _vars_in(node: tuple) -> set[str]:
    if node[0] in ("and", "or"):
        return set().union(*(_vars_in(x) for x in node[1]))
    if node[0] == "not":
        return _vars_in(node[1])
    if node[0] == "binary" and node[1].startswith("VERSION_"):
        return {_REF.sub(lambda m: m.group(2), node[2][0])}
    return set()


def _marker_holds(marker: str, probe: Mapping[str, Any], facts: Mapping[str, Any]) -> bool:
    py = str(probe.get("python") or "3")
    env = {"platform_machine": str(facts.get("CMAKE_SYSTEM_PROCESSOR", "x86_64")), "platform_system": "Linux",
           "sys_platform": "linux", "os_name": "posix", "python_full_version": py,
           "python_version": ".".join(py.split(".")[:2]), "implementation_name": "cpython",
           "platform_python_implementation": "CPython", "implementation_version": py}
    try:
        return Marker(marker).evaluate(env)
    except InvalidMarker:
        return True


def _satisfies(found: str, need: str) -> bool:
    try:
        return SpecifierSet(need).contains(Version(found), prereleases=True)
    except (InvalidSpecifier, InvalidVersion):
        return False


def resource_gates(cell: Any) -> list[Gate]:
    """Disk and memory needs come from the cell's knobs, not the tree."""
    knobs = getattr(cell, "knobs", None)
    if knobs is None:
        return []
    return [Gate("disk", "disk_free_gb", f"{knobs.disk_gb:g}", "free disk the build needs at peak",
                 "knobs.disk_gb", "disk"),
            Gate("memory", "mem_gib", f"{knobs.gib_per_job:g}", "memory one compile job needs",
                 "knobs.gib_per_job", "memory")]


def evaluate(gates: list[Gate], probe: Mapping[str, Any], cell: Any,
             config: Mapping[str, Any] | None = None) -> list[GateResult]:
    cfg = config if config is not None else load_config()
    facts = facts_for(cell, probe, cfg)
    suite = getattr(getattr(cell, "distro", None), "suite", "")
    results = []
    for gate in gates:
        reached = all(evaluate_condition(c, facts) is not False for c in gate.when)
        if reached and gate.marker:
            reached = _marker_holds(gate.marker, probe, facts)
        if reached and gate.fires is not None:
            # a guard that is false whatever the version (e.g. a CUDA-only GCC gate on a CPU cell)
            reached = evaluate_condition(gate.fires, facts) is not False
        if not reached:
            results.append(GateResult(gate, "skip", "", True, "", "", ""))
            continue
        status, found, why = _check(gate, probe, cell, facts)
        rem = _remedy(gate, cell, cfg)
        fixable = bool(rem["fixable"])
        if gate.kind == "fetch" and not gate.override:
            fixable = False  # nothing in the tree lets us point it at a local copy
        values = _Blank(need=_short(gate.need), spec=gate.need, found=found or "none", subject=gate.subject, label=gate.label,
                        override=gate.override, url=gate.need if gate.kind == "fetch" else gate.index,
                        host=gate.host, suite=suite or "the distro's")
        remediation = rem["remediation"].format_map(values) if status != "pass" else ""
        evidence = ""
        if status in ("fail", "warn"):
            message = _REF.sub(lambda m: found if m.group(2) in cfg["variables"] and found else m.group(0), gate.message)
            evidence = f"{gate.label} {why} ({gate.source}: {message})"
        results.append(GateResult(gate, status, found, fixable, rem.get("category", ""), remediation, evidence))
    return results


def cuda_gates(cell: Any, src: Path, probe: Mapping[str, Any]) -> list[GateResult]:
    """CUDA cells: the image's nvcc against the CUDA that the pinned torch from PyPI was built for
    (read from the wheel's METADATA over the network). Kernels built with one CUDA major and
    loaded beside a torch of another fail; the image records its toolkit for exactly this check."""
    req = Path(src) / "requirements" / "build" / "cuda.txt"
    if getattr(cell, "target", "") != "cuda" or not req.is_file():
        return []
    pin = next(((n, m.group(1)) for n, line in enumerate(req.read_text().splitlines(), 1)
                if (m := re.match(r"\s*torch\s*==\s*([0-9][\w.]*)\s*(;|$)", line))), None)
    if pin is None:
        return []
    from images.sources import torch_cuda_of
    line, version = pin
    nvcc = str(probe.get("nvcc") or "")
    python = str(probe.get("python") or getattr(getattr(cell, "distro", None), "python", ""))
    try:
        torch_cuda = torch_cuda_of(version, python)
    except UsageError as exc:
        torch_cuda, lookup_error = "", str(exc)
    else:
        lookup_error = ""
    gate = Gate("cuda", "nvcc", f"{torch_cuda or '?'}.x", f"torch=={version} from PyPI is built for CUDA "
                f"{torch_cuda or '?'}", f"requirements/build/cuda.txt:{line}", label="nvcc")
    major = lambda v: v.split(".")[0]  # noqa: E731
    if lookup_error:
        status, why = "warn", lookup_error
    elif not nvcc and probe.get("declared"):
        status, why = "warn", "not probed (no image)"
    elif not nvcc:
        status, why = "fail", "no nvcc in the image"
    elif not torch_cuda:
        status, why = "pass", f"torch=={version} is a CPU-only wheel"
    elif major(nvcc) != major(torch_cuda):
        status, why = "fail", f"{nvcc} vs torch's CUDA {torch_cuda}: different CUDA majors"
    else:
        status, why = ("pass" if nvcc.split(".")[:2] == torch_cuda.split(".")[:2] else "warn"), f"{nvcc} vs {torch_cuda}"
    remediation = "" if status == "pass" else (
        f"a CUDA {torch_cuda} toolkit (NVIDIA's repository or image: knobs.cuda = \"nvidia-repo\" and "
        f"knobs.cuda_version = \"{torch_cuda}.x\", where reachable) or a torch built for CUDA {major(nvcc) if nvcc else '?'}")
    evidence = "" if status == "pass" else f"nvcc {why} ({gate.source}: {gate.message})"
    return [GateResult(gate, status, nvcc, False, "cuda-version-mismatch", remediation, evidence)]


def preflight(cell: Any, src: Path, probe: Mapping[str, Any], config: Mapping[str, Any] | None = None) -> StageOutcome:
    """Predict the build's outcome for one cell: "gated" when a gate with no workaround fails."""
    t0 = time.monotonic()
    started = time.time()
    cfg = config if config is not None else load_config()
    gates = [*resource_gates(cell), *gates_from_tree(Path(src), cfg)]
    results = [*evaluate(gates, probe, cell, cfg), *cuda_gates(cell, Path(src), probe)]
    failing = [r for r in results if r.status == "fail"]
    dead = [r for r in failing if not r.fixable]
    status = "gated" if dead else "pass"
    category = dead[0].category if dead else ""
    remediation = " | ".join(dict.fromkeys(r.remediation for r in failing if r.remediation))
    versions = {k: str(v) for k, v in probe.items() if k != "reachable"}
    counts = {s: sum(r.status == s for r in results) for s in STATUSES}
    return StageOutcome(
        cell=getattr(cell, "id", str(cell)), stage="preflight", status=status, category=category,
        evidence=tuple(r.evidence for r in failing), remediation=remediation, started=started,
        seconds=time.monotonic() - t0, versions=versions,
        details={"source": str(src), "gates": [r.to_json() for r in results], "counts": counts,
                 "first_dead_end": dead[0].gate.id if dead else "",
                 "warnings": [r.evidence for r in results if r.status == "warn"]},
    )


# --- the network part of a probe (the only Docker code here; images.toolchain.probe does the rest)

REACH_SCRIPT = 'for h in "$@"; do if getent hosts "$h" >/dev/null && timeout 5 bash -c "</dev/tcp/$h/443" 2>/dev/null; ' \
               'then echo "$h=1"; else echo "$h=0"; fi; done'


def hosts_of(gates: list[Gate]) -> list[str]:
    return sorted({g.host for g in gates if g.kind in ("fetch", "torch") and g.host})


def probe_reachability(client: Any, image: str, hosts: list[str]) -> dict[str, bool]:
    """Which hosts a container of `image` can open a TCP connection to on 443 (DNS first)."""
    if not hosts:
        return {}
    raw = client.containers.run(image, ["bash", "-c", REACH_SCRIPT, "reach", *hosts], remove=True,
                                stdout=True, stderr=False, mem_limit="128m")
    out = {}
    for line in raw.decode(errors="replace").splitlines():
        host, sep, ok = line.partition("=")
        if sep:
            out[host] = ok.strip() == "1"
    return out


def probe_cell(client: Any, image: str, gates: list[Gate]) -> dict[str, Any]:
    """images.toolchain.probe of the cell's image, plus `reachable` for the hosts the gates need."""
    from images.toolchain import probe
    found = probe(client, image)
    found["reachable"] = probe_reachability(client, image, hosts_of(gates))
    return found
