"""A small CMake reader: the commands of a CMake file with their arguments, if() conditions parsed
into trees, and a tri-state evaluator of those conditions (True, False, or None when the facts
given do not decide). It reads CMake only; which commands are build gates is images.gates' job."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

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


def commands(text: str) -> Iterator[Command]:
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
REF = re.compile(r"\$(ENV)?\{([^}]*)\}")


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

    expanded = REF.sub(sub, text)
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
            name = REF.sub(lambda m: f"ENV{{{m.group(2)}}}" if m.group(1) else m.group(2), node[2][0])
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


def version_operands(node: tuple) -> set[str]:
    """The variables a condition compares with VERSION_* operators (the probed tools it tests)."""
    if node[0] in ("and", "or"):
        return set().union(*(version_operands(x) for x in node[1]))
    if node[0] == "not":
        return version_operands(node[1])
    if node[0] == "binary" and node[1].startswith("VERSION_"):
        return {REF.sub(lambda m: m.group(2), node[2][0])}
    return set()

