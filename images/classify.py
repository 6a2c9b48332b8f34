"""Classify a build or server log: category, the evidence line(s), and what to do about it.

Rules are data (rules.toml). Parsing only: this module never talks to Docker, so its tests need
no engine. Selection: the highest priority tier that matched, then the earliest line in it, so
the first fatal cause wins over the errors that cascade from it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from model.errors import UsageError
from model.spec import read_toml

RULES = Path(__file__).with_name("rules.toml")
MAX_EVIDENCE = 3
MAX_LINE = 300  # pip prints every rejected version on one line
UNKNOWN = "unknown"
SUCCESS = "success"


@dataclass(frozen=True)
class Rule:
    id: str
    category: str
    patterns: tuple[re.Pattern[str], ...]
    remediation: str
    priority: int
    before: int = 0  # lines before the match kept as evidence (CMake puts the file:line there)
    note: bool = False  # a runtime note: reported only when the log otherwise succeeded (or matched nothing)


@dataclass(frozen=True)
class Classification:
    category: str
    evidence: tuple[str, ...]
    remediation: str
    rule: str  # the rule id, "" when nothing matched
    line: int = 0  # 1-based line that matched, 0 when nothing matched


def _clip(line: str) -> str:
    line = line.strip()
    return line if len(line) <= MAX_LINE else line[:MAX_LINE] + " …"


class _Blank(dict):
    """format_map helper: a placeholder with no value stays readable instead of raising."""

    def __missing__(self, key: str) -> str:
        return f"<{key}>"


def load_rules(path: Path = RULES) -> tuple[Rule, ...]:
    doc = read_toml(path)
    raw = doc.get("rule")
    if not isinstance(raw, list) or not raw:
        raise UsageError(f"{path}: rule: expected an array of [[rule]] tables")
    rules, seen = [], set()
    for i, r in enumerate(raw):
        where = f"{path}: rule[{i}]"
        if not isinstance(r, dict):
            raise UsageError(f"{where}: expected a table")
        unknown = set(r) - {"id", "category", "patterns", "remediation", "priority", "before", "note"}
        if unknown:
            raise UsageError(f"{where}.{sorted(unknown)[0]}: unknown key (expected id, category, patterns, "
                             "remediation, priority, before, note)")
        if not isinstance(r.get("note", False), bool):
            raise UsageError(f"{where}.note: expected true or false")
        for key in ("id", "category"):
            if not isinstance(r.get(key), str) or not r[key]:
                raise UsageError(f"{where}.{key}: expected a non-empty string")
        if r["id"] in seen:
            raise UsageError(f"{where}.id: duplicate rule id {r['id']!r}")
        seen.add(r["id"])
        pats = r.get("patterns")
        if not isinstance(pats, list) or not pats or not all(isinstance(p, str) for p in pats):
            raise UsageError(f"{where}.patterns: expected a non-empty list of regex strings")
        compiled = []
        for j, p in enumerate(pats):
            try:
                compiled.append(re.compile(p))
            except re.error as exc:
                raise UsageError(f"{where}.patterns[{j}]: not a valid regex: {exc}") from None
        rem = r.get("remediation", "")
        if not isinstance(rem, str):
            raise UsageError(f"{where}.remediation: expected a string")
        prio = r.get("priority", 100)
        if not isinstance(prio, int) or isinstance(prio, bool):
            raise UsageError(f"{where}.priority: expected an integer, got {prio!r}")
        before = r.get("before", 0)
        if not isinstance(before, int) or isinstance(before, bool) or not 0 <= before <= 5:
            raise UsageError(f"{where}.before: expected an integer 0..5, got {before!r}")
        rules.append(Rule(r["id"], r["category"], tuple(compiled), rem, prio, before, r.get("note", False)))
    return tuple(rules)


_DEFAULT: tuple[Rule, ...] | None = None


def _default_rules() -> tuple[Rule, ...]:
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = load_rules()
    return _DEFAULT


def classify_text(text: str, rules: tuple[Rule, ...] | None = None) -> Classification:
    """The category of one log's text; 'unknown' with the last lines as evidence when no rule matched."""
    rules = rules if rules is not None else _default_rules()
    lines = text.splitlines()
    best, best_match = _pick(lines, [(i, r) for i, r in enumerate(rules) if not r.note])
    if best is None or rules[best[2]].category == SUCCESS:
        # notes (e.g. tcmalloc not preloaded) matter only when nothing failed
        note, note_match = _pick(lines, [(i, r) for i, r in enumerate(rules) if r.note])
        if note is not None:
            best, best_match = note, note_match
    if best is None:
        tail = tuple(_clip(ln) for ln in lines if ln.strip() and not ln.startswith("# captured:"))[-MAX_EVIDENCE:]
        return Classification(UNKNOWN, tail, "no rule matched: read the log's last lines and add a rule to "
                              "images/rules.toml", "", 0)
    rule = rules[best[2]]
    first = best[1]
    evidence = [_clip(ln) for ln in lines[max(0, first - rule.before):first] if ln.strip()]
    evidence.append(_clip(lines[first]))
    for line in lines[first + 1:]:
        if len(evidence) >= MAX_EVIDENCE + rule.before:
            break
        if any(p.search(line) for p in rule.patterns) and _clip(line) not in evidence:
            evidence.append(_clip(line))
    values = _Blank({k: v for k, v in (best_match.groupdict() if best_match else {}).items() if v})
    return Classification(rule.category, tuple(evidence), rule.remediation.format_map(values), rule.id, first + 1)


def _pick(lines: list[str], rules: list[tuple[int, Rule]]) -> tuple[tuple[int, int, int] | None, re.Match[str] | None]:
    """(-priority, line index, rule order) of the winner: highest tier, then earliest line, then file order."""
    best: tuple[int, int, int] | None = None
    best_match: re.Match[str] | None = None
    for order, rule in rules:
        if best is not None and -rule.priority > best[0]:
            continue  # a higher tier already matched
        for idx, line in enumerate(lines):
            if best is not None and (-rule.priority, idx, order) >= best:
                break
            m = next((m for p in rule.patterns if (m := p.search(line))), None)
            if m:
                best, best_match = (-rule.priority, idx, order), m
                break
    return best, best_match


def classify_file(path: Path | str, rules: tuple[Rule, ...] | None = None) -> Classification:
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise UsageError(f"{p}: cannot read log: {exc.strerror or exc}") from None
    return classify_text(data.decode("utf-8", errors="replace"), rules)


def expected_category(path: Path) -> str:
    """Fixture convention: tests/fixtures/logs/<category>__<short-name>.log."""
    return path.name.split("__", 1)[0]
