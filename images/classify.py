"""Classify a build or server log: the outcome, its evidence line(s), what to do, and the warnings beside it.

Rules are data (rules.toml), validated through model.toml like every file a user edits. Parsing only:
this module never talks to Docker, so its tests need no engine.

Outcome by severity, never by which line came first across severities:
  1. a `fatal` rule (a named cause: the shm check, no C++ compiler, port in use, ...) — the earliest wins,
     so the first cause beats the errors that cascade from it;
  2. the process died (a traceback, "failed to start", a non-zero exit, killed: [outcome].fatal) after
     the last success line: an `error` rule if one matched, else the log kind's crash category
     (server-crashed / build-failed) with the last exception line as evidence — never unknown or success;
  3. `success` when a success line matched, else an `error` rule, else `unknown`.
`warning` rules never decide the outcome: they are reported as findings beside it.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from model.errors import UsageError
from model.toml import Strict, load

RULES = Path(__file__).with_name("rules.toml")
MAX_EVIDENCE = 3
MAX_LINE = 300  # pip prints every rejected version on one line
UNKNOWN = "unknown"
SUCCESS = "success"
HEADER = "# captured: "  # a fixture's first line (tests/fixtures/logs): how it was captured, and its exit code
HEADER_EXIT = re.compile(r"\| exit: (-?\d+)")


def _regex(p: str) -> str:
    try:
        re.compile(p)
    except re.error as exc:
        raise ValueError(f"not a valid regex: {exc}") from None
    except (RecursionError, OverflowError):  # found by fuzzing: "(" * 1000 overflows re's parser
        raise ValueError("not a valid regex: nested too deep for Python's re") from None
    return p


def _template(text: str) -> str:
    """A remediation: {name} placeholders only, filled from the pattern's named groups."""
    try:
        fields = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(text) if f is not None]
    except ValueError as exc:
        raise ValueError(f"not a valid template: {exc}") from None
    # No conversions or format specs ({x!r}, {x:>5}): fuzzing found "{_!0}" passing here, failing in format_map.
    bad = next((f + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "") for f, spec, conv in fields
                if conv or spec or not re.fullmatch(r"[A-Za-z_]\w*", f)), None)
    if bad is not None:
        raise ValueError(f"not a valid template: {{{bad}}} (expected {{name}} of a named group)")
    return text


Regex = Annotated[str, AfterValidator(_regex)]
Template = Annotated[str, AfterValidator(_template)]
Name = Annotated[str, Field(min_length=1, pattern=r"^[a-z0-9][a-z0-9-]*$")]


class RuleSpec(Strict):
    id: Name
    category: Name
    severity: Literal["fatal", "error", "warning", "success"]
    patterns: Annotated[list[Regex], Field(min_length=1)]
    remediation: Template = ""
    before: Annotated[int, Field(ge=0, le=5)] = 0  # lines above the match kept as evidence (CMake's file:line)


class KindSpec(Strict):
    name: Name
    crashed: Name  # the category of a log of this kind that died of a cause no rule names
    remediation: str
    patterns: list[Regex] = []  # empty: the default kind (listed last)


class OutcomeSpec(Strict):
    fatal: Annotated[list[Regex], Field(min_length=1)]  # the process died
    exception: Regex  # the line quoted when no rule names the cause (the last one that matches)


class RulesFile(Strict):
    outcome: OutcomeSpec
    kind: Annotated[list[KindSpec], Field(min_length=1)]
    rule: Annotated[list[RuleSpec], Field(min_length=1)]


@dataclass(frozen=True)
class Rule:
    id: str
    category: str
    severity: str
    patterns: tuple[re.Pattern[str], ...]
    remediation: str
    before: int = 0


@dataclass(frozen=True)
class Kind:
    name: str
    crashed: str
    remediation: str
    patterns: tuple[re.Pattern[str], ...]


@dataclass(frozen=True)
class Rules:
    rules: tuple[Rule, ...]
    fatal: tuple[re.Pattern[str], ...]
    exception: re.Pattern[str]
    kinds: tuple[Kind, ...]

    def categories(self, severity: str) -> set[str]:
        return {r.category for r in self.rules if r.severity == severity}


@dataclass(frozen=True)
class Finding:
    """A warning beside the outcome (e.g. tcmalloc not preloaded): worth fixing, never the verdict."""
    category: str
    evidence: str
    remediation: str
    rule: str
    line: int


@dataclass(frozen=True)
class Classification:
    category: str
    evidence: tuple[str, ...]
    remediation: str
    rule: str  # the rule id; "" when no rule named it (unknown, or a crash no rule explains)
    line: int = 0  # 1-based line of the evidence, 0 when none
    severity: str = ""  # fatal | crashed | error | success | unknown
    kind: str = ""  # server | build (rules.toml [[kind]])
    findings: tuple[Finding, ...] = ()

    def lines(self) -> list[str]:
        """What `invoke classify` prints."""
        out = [f"category: {self.category}" + (f"  (rule {self.rule}, line {self.line})" if self.rule else "")]
        out += [f"evidence: {e}" for e in self.evidence]
        if self.remediation:
            out.append(f"remediation: {self.remediation}")
        out += [f"finding: {f.category} (line {f.line}): {f.evidence} -> {f.remediation}" for f in self.findings]
        return out


def _clip(line: str) -> str:
    line = line.strip()
    return line if len(line) <= MAX_LINE else line[:MAX_LINE] + " …"


class _Blank(dict):
    """format_map helper: a placeholder with no value stays readable instead of raising."""

    def __missing__(self, key: str) -> str:
        return f"<{key}>"


def load_rules(path: Path = RULES) -> Rules:
    doc = load(RulesFile, path)
    seen: set[str] = set()
    for i, r in enumerate(doc.rule):
        if r.id in seen:
            raise UsageError(f"{path}: rule[{i}].id: duplicate rule id {r.id!r}")
        seen.add(r.id)
    # a warning's category must never name a failure: the outcome could then read like a warning
    shared = {r.category for r in doc.rule if r.severity == "warning"} & {
        r.category for r in doc.rule if r.severity != "warning"}
    if shared:
        i, r = next((i, r) for i, r in enumerate(doc.rule) if r.category in shared and r.severity == "warning")
        raise UsageError(f"{path}: rule[{i}].category: {r.category!r} is used by warning and non-warning rules; "
                         "expected a category of its own")
    for i, k in enumerate(doc.kind):
        if bool(k.patterns) == (i == len(doc.kind) - 1):
            raise UsageError(f"{path}: kind[{i}].patterns: expected " + (
                "none: the last kind is the default" if k.patterns else "patterns: only the last kind is the default"))
    return Rules(
        rules=tuple(Rule(r.id, r.category, r.severity, tuple(re.compile(p) for p in r.patterns), r.remediation,
                         r.before) for r in doc.rule),
        fatal=tuple(re.compile(p) for p in doc.outcome.fatal),
        exception=re.compile(doc.outcome.exception),
        kinds=tuple(Kind(k.name, k.crashed, k.remediation, tuple(re.compile(p) for p in k.patterns)) for k in doc.kind))


_DEFAULT: Rules | None = None


def _default_rules() -> Rules:
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = load_rules()
    return _DEFAULT


def _first(lines: list[str], rules: list[Rule]) -> tuple[int, Rule, re.Match[str]] | None:
    """The earliest matching line over `rules`; on one line, the rule listed first."""
    best = None
    for order, rule in enumerate(rules):
        for idx, line in enumerate(lines):
            if best is not None and (idx, order) >= best[0]:
                break
            m = next((m for p in rule.patterns if (m := p.search(line))), None)
            if m:
                best = ((idx, order), rule, m)
                break
    return None if best is None else (best[0][0], best[1], best[2])


def _last(lines: list[str], patterns: tuple[re.Pattern[str], ...]) -> int:
    return next((i for i in range(len(lines) - 1, -1, -1) if any(p.search(lines[i]) for p in patterns)), -1)


def classify_text(text: str, rules: Rules | None = None) -> Classification:
    rs = rules if rules is not None else _default_rules()
    lines = text.replace("\r\n", "\n").split("\n")  # numbered as editors and grep -n number them
    offset, exit_code = 0, None
    if lines and lines[0].startswith(HEADER):  # the header names the command: never a log line to match
        m = HEADER_EXIT.search(lines[0])
        exit_code = int(m.group(1)) if m else None
        lines, offset = lines[1:], 1
    kind = next(k for k in rs.kinds if not k.patterns or any(p.search(ln) for ln in lines for p in k.patterns))
    findings = _findings(lines, [r for r in rs.rules if r.severity == "warning"], offset)
    by = {s: [r for r in rs.rules if r.severity == s] for s in ("fatal", "error", "success")}

    cause = _first(lines, by["fatal"])
    if cause:
        return _named(lines, cause, "fatal", kind.name, findings, offset)
    error = _first(lines, by["error"])
    last_ok = _last(lines, tuple(p for r in by["success"] for p in r.patterns))
    died = bool(exit_code) or _last(lines, rs.fatal) > last_ok
    if died:
        if error:
            return _named(lines, error, "error", kind.name, findings, offset)
        return _crashed(lines, rs, kind, findings, offset)
    if last_ok >= 0:
        ok = _first(lines, by["success"])
        assert ok is not None
        return _named(lines, ok, "success", kind.name, findings, offset)
    if error:
        return _named(lines, error, "error", kind.name, findings, offset)
    tail = tuple(_clip(ln) for ln in lines if ln.strip())[-MAX_EVIDENCE:]
    return Classification(UNKNOWN, tail, "no rule matched: read the log's last lines and add a rule to "
                          "images/rules.toml", "", 0, UNKNOWN, kind.name, findings)


def _findings(lines: list[str], warnings: list[Rule], offset: int) -> tuple[Finding, ...]:
    out = []
    for rule in warnings:
        for idx, line in enumerate(lines):
            m = next((m for p in rule.patterns if (m := p.search(line))), None)
            if m:
                out.append(Finding(rule.category, _clip(line), _fill(rule.remediation, m), rule.id, idx + 1 + offset))
                break
    return tuple(sorted(out, key=lambda f: f.line))


def _fill(remediation: str, m: re.Match[str] | None) -> str:
    return remediation.format_map(_Blank({k: v for k, v in (m.groupdict() if m else {}).items() if v}))


def _named(lines: list[str], hit: tuple[int, Rule, re.Match[str]], severity: str, kind: str,
           findings: tuple[Finding, ...], offset: int) -> Classification:
    first, rule, m = hit
    evidence = [_clip(ln) for ln in lines[max(0, first - rule.before):first] if ln.strip()]
    evidence.append(_clip(lines[first]))
    for line in lines[first + 1:]:
        if len(evidence) >= MAX_EVIDENCE + rule.before:
            break
        if any(p.search(line) for p in rule.patterns) and _clip(line) not in evidence:
            evidence.append(_clip(line))
    return Classification(rule.category, tuple(evidence), _fill(rule.remediation, m), rule.id, first + 1 + offset,
                          severity, kind, findings)


def _crashed(lines: list[str], rs: Rules, kind: Kind, findings: tuple[Finding, ...],
             offset: int) -> Classification:
    """A log that died of a cause no rule names: the last exception line (else the last fatal line) as evidence."""
    idx = _last(lines, (rs.exception,))
    if idx < 0:
        idx = _last(lines, rs.fatal)
    if idx < 0:  # only the exit code says it failed
        idx = max((i for i, ln in enumerate(lines) if ln.strip()), default=-1)
    evidence = (_clip(lines[idx]),) if idx >= 0 else ()
    return Classification(kind.crashed, evidence, kind.remediation, "", idx + 1 + offset if idx >= 0 else 0, "crashed", kind.name,
                          findings)


def classify_file(path: Path | str, rules: Rules | None = None) -> Classification:
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise UsageError(f"{p}: cannot read log: {exc.strerror or exc}") from None
    return classify_text(data.decode("utf-8", errors="replace"), rules)


def expected_category(path: Path) -> str:
    """Fixture convention: tests/fixtures/logs/<category>__<short-name>.log."""
    return path.name.split("__", 1)[0]
