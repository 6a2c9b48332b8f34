"""Mix files: the request classes, their arrival process and SLOs, as data (TOML).

Mixes are registered by name (GuideLLM-style profiles): `default` is smoke/mixes/default.toml;
any other name is looked up there, and a path is read as is. Every key is checked; an unknown key
or a bad value is one UsageError line naming the file and the key.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model.errors import UsageError, did_you_mean
from model.spec import read_toml

MIXES_DIR = Path(__file__).with_name("mixes")
ENDPOINTS = ("chat", "completions")
PROCESSES = ("poisson", "gamma", "trace")
PERCENTILES = (50, 90, 95, 99)


@dataclass(frozen=True)
class Range:
    lo: float
    hi: float


@dataclass(frozen=True)
class SLO:
    percentile: int = 90
    ttft_ms: float | None = None
    itl_ms: float | None = None
    e2e_ms: float | None = None
    min_success: float = 1.0


@dataclass(frozen=True)
class SharedPrefix:
    count: int
    tokens: int


@dataclass(frozen=True)
class Turns:
    count: Range
    tool_result_tokens: Range
    think_s: Range


@dataclass(frozen=True)
class Reader:
    bytes_per_s: tuple[int, ...]
    recv_buffer_bytes: int


@dataclass(frozen=True)
class RequestClass:
    name: str
    weight: float
    endpoint: str
    prompt_tokens: Range
    output_tokens: Range
    slo: SLO
    shared_prefix: SharedPrefix | None = None
    turns: Turns | None = None
    reader: Reader | None = None


@dataclass(frozen=True)
class Arrival:
    process: str
    rate_rps: float
    cv: float = 1.0
    path: Path | None = None


@dataclass(frozen=True)
class Mix:
    name: str
    source: str
    sha256: str
    duration_s: float
    max_concurrency: int
    arrival: Arrival
    classes: tuple[RequestClass, ...]
    gates: dict[str, float] = field(default_factory=dict)

    def cls(self, name: str) -> RequestClass:
        for c in self.classes:
            if c.name == name:
                return c
        raise KeyError(name)


def resolve(name_or_path: str | Path) -> Path:
    """A registered mix name (smoke/mixes/NAME.toml) or a path to a TOML file."""
    p = Path(name_or_path)
    if p.suffix == ".toml" or p.exists():
        if not p.is_file():
            raise UsageError(f"{p}: no such mix file")
        return p
    registered = {q.stem: q for q in MIXES_DIR.glob("*.toml")}
    if str(name_or_path) in registered:
        return registered[str(name_or_path)]
    raise UsageError(f"{name_or_path}: not a mix file or a registered mix{did_you_mean(str(name_or_path), registered)}"
                     f" (registered: {', '.join(sorted(registered))})")


class _Reader:
    """Pops typed keys from a table and reports the first problem as 'file: key: what was expected'."""

    def __init__(self, source: str, where: str, table: Any) -> None:
        self.source, self.where = source, where
        if not isinstance(table, dict):
            self.fail("", f"expected a table, got {type(table).__name__}")
        self.table = dict(table)

    def fail(self, key: str, what: str) -> None:
        dotted = f"{self.where}.{key}" if self.where and key else (self.where or key)
        raise UsageError(f"{self.source}: {dotted}: {what}")

    def _has(self, key: str, required: bool) -> bool:
        if key in self.table:
            return True
        if required:
            self.fail(key, "missing")
        return False

    def number(self, key: str, default: float | None = None, *, required: bool = False,
               positive: bool = True, integer: bool = False) -> float | None:
        if not self._has(key, required):
            return default
        v = self.table.pop(key)
        ok = isinstance(v, int if integer else (int, float)) and not isinstance(v, bool)
        if not ok or (positive and v <= 0) or (not positive and v < 0):
            kind = "integer" if integer else "number"
            self.fail(key, f"expected a {'positive' if positive else 'non-negative'} {kind}, got {v!r}")
        return v

    def string(self, key: str, choices: tuple[str, ...], default: str | None = None, *,
               required: bool = False) -> str | None:
        if not self._has(key, required):
            return default
        v = self.table.pop(key)
        if not isinstance(v, str) or v not in choices:
            hint = did_you_mean(v, choices) if isinstance(v, str) else ""
            self.fail(key, f"expected one of {', '.join(choices)}, got {v!r}{hint}")
        return v

    def range(self, key: str, *, required: bool = True, integer: bool = True, allow_zero: bool = False) -> Range | None:
        if not self._has(key, required):
            return None
        v = self.table.pop(key)
        kind = int if integer else (int, float)
        if isinstance(v, kind) and not isinstance(v, bool):
            v = [v, v]
        good = (isinstance(v, list) and len(v) == 2 and all(isinstance(x, kind) and not isinstance(x, bool) for x in v)
                and (v[0] >= 0 if allow_zero else v[0] > 0) and v[0] <= v[1])
        if not good:
            self.fail(key, f"expected a {'non-negative' if allow_zero else 'positive'} "
                           f"{'integer' if integer else 'number'} or a range [low, high], got {v!r}")
        return Range(v[0], v[1])

    def sub(self, key: str) -> _Reader | None:
        if key not in self.table:
            return None
        return _Reader(self.source, f"{self.where}.{key}" if self.where else key, self.table.pop(key))

    def done(self, known: tuple[str, ...]) -> None:
        for key in self.table:
            self.fail(key, f"unknown key{did_you_mean(key, known)} (known: {', '.join(known)})")


def _slo(r: _Reader) -> SLO:
    pct = r.number("percentile", 90, integer=True)
    if pct not in PERCENTILES:
        r.fail("percentile", f"expected one of {', '.join(map(str, PERCENTILES))}, got {pct!r}")
    slo = SLO(percentile=int(pct), ttft_ms=r.number("ttft_ms"), itl_ms=r.number("itl_ms"),
              e2e_ms=r.number("e2e_ms"), min_success=r.number("min_success", 1.0))
    if slo.min_success > 1:
        r.fail("min_success", f"expected a fraction in (0, 1], got {slo.min_success!r}")
    r.done(("percentile", "ttft_ms", "itl_ms", "e2e_ms", "min_success"))
    return slo


def _class(name: str, r: _Reader) -> RequestClass:
    weight = r.number("weight", required=True)
    endpoint = r.string("endpoint", ENDPOINTS, required=True)
    prompt = r.range("prompt_tokens")
    output = r.range("output_tokens")
    s = r.sub("slo")
    slo = _slo(s) if s else SLO()
    prefix = turns = reader = None
    if (p := r.sub("shared_prefix")) is not None:
        prefix = SharedPrefix(int(p.number("count", required=True, integer=True)),
                              int(p.number("tokens", required=True, integer=True)))
        p.done(("count", "tokens"))
    if (t := r.sub("turns")) is not None:
        turns = Turns(t.range("count"), t.range("tool_result_tokens"),
                      t.range("think_s", integer=False, allow_zero=True))
        t.done(("count", "tool_result_tokens", "think_s"))
    if (d := r.sub("reader")) is not None:
        bps = d.table.pop("bytes_per_s", None)
        if isinstance(bps, int) and not isinstance(bps, bool):
            bps = [bps]
        if not (isinstance(bps, list) and bps and all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in bps)):
            d.fail("bytes_per_s", f"expected a positive integer or a list of them, got {bps!r}")
        reader = Reader(tuple(bps), int(d.number("recv_buffer_bytes", 4096, integer=True)))
        d.done(("bytes_per_s", "recv_buffer_bytes"))
    r.done(("weight", "endpoint", "prompt_tokens", "output_tokens", "slo", "shared_prefix", "turns", "reader"))
    return RequestClass(name, float(weight), endpoint, prompt, output, slo, prefix, turns, reader)


def parse(doc: dict[str, Any], source: str, base_dir: Path | None = None) -> Mix:
    top = _Reader(source, "", doc)
    m = top.sub("mix") or _Reader(source, "mix", {})
    name = m.table.pop("name", Path(source).stem)
    if not isinstance(name, str) or not name:
        m.fail("name", f"expected a non-empty string, got {name!r}")
    duration = m.number("duration_s", 60.0)
    conc = m.number("max_concurrency", 16, integer=True)
    m.done(("name", "duration_s", "max_concurrency"))
    a = top.sub("arrival") or _Reader(source, "arrival", {})
    process = a.string("process", PROCESSES, "poisson")
    rate = a.number("rate_rps", 1.0)
    cv = a.number("cv", 1.0)
    path = a.table.pop("path", None)
    if process == "trace":
        if not isinstance(path, str):
            a.fail("path", "expected the path of an arrival trace (process = \"trace\")")
        path = (base_dir / path) if base_dir and not Path(path).is_absolute() else Path(path)
    elif path is not None:
        a.fail("path", f"only used with process = \"trace\", not {process!r}")
    a.done(("process", "rate_rps", "cv", "path"))
    g = top.sub("gates") or _Reader(source, "gates", {})
    gates = {}
    if (v := g.number("slow_isolation_max_itl_ratio")) is not None:
        gates["slow_isolation_max_itl_ratio"] = float(v)
    g.done(("slow_isolation_max_itl_ratio",))
    c = top.sub("classes")
    if c is None or not c.table:
        top.fail("classes", "expected at least one [classes.NAME] table")
    classes = tuple(_class(k, _Reader(source, f"classes.{k}", c.table[k])) for k in c.table)
    top.done(("mix", "arrival", "gates", "classes"))
    sha = hashlib.sha256(repr(doc).encode()).hexdigest()
    return Mix(name, source, sha, float(duration), int(conc), Arrival(process, float(rate), float(cv), path),
               classes, gates)


def load(name_or_path: str | Path = "default") -> Mix:
    path = resolve(name_or_path)
    mix = parse(read_toml(path), str(path), path.parent)
    return mix
