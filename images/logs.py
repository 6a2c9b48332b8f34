"""Small log helpers that touch no engine: timestamped lines and ninja's [n/N] progress."""

from __future__ import annotations

import re

NINJA = re.compile(r"^\s*\[(\d+)/(\d+)\]")


def ninja_progress(line: str) -> tuple[int, int] | None:
    m = NINJA.match(line)
    return (int(m.group(1)), int(m.group(2))) if m else None


def stamp(seconds: float, line: str) -> str:
    return f"[+{seconds:8.1f}s] {line}"


def tail(text: str, n: int = 40) -> str:
    return "\n".join(text.splitlines()[-n:])
