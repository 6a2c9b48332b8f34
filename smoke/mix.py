"""Mix files: the request classes, their arrival process and SLOs, as data (TOML).

Mixes are registered by name (GuideLLM-style profiles): `default` is smoke/mixes/default.toml;
any other name is looked up there, and a path is read as is. Every key is checked; an unknown key
or a bad value is one UsageError line naming the file and the key.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, PlainValidator, TypeAdapter, ValidationError, field_validator, model_validator

from model.errors import UsageError, did_you_mean
from model.toml import (Fault, NonEmptyStr, NonNegativeNumber, PositiveInt, PositiveNumber, Strict, read_toml,
                        validate)

MIXES_DIR = Path(__file__).with_name("mixes")
ENDPOINTS = ("chat", "completions")
PROCESSES = ("poisson", "gamma", "trace")
PERCENTILES = (50, 90, 95, 99)


@dataclass(frozen=True)
class Range:
    lo: float
    hi: float


def _span(item: Any, what: str) -> Any:
    """A value or a [low, high] pair of `item`, as a Range."""
    pair = TypeAdapter(tuple[item, item], config=ConfigDict(strict=True))

    def check(v: Any) -> Range:
        try:
            lo, hi = pair.validate_python(tuple(v) if isinstance(v, list) else (v, v))
            if lo <= hi:
                return Range(lo, hi)
        except ValidationError:
            pass
        raise ValueError(f"expected {what} or a range [low, high]")
    return Annotated[Range, PlainValidator(check)]


Tokens = _span(PositiveInt, "a positive integer")
Seconds = _span(NonNegativeNumber, "a non-negative number")


# The tables a class reads by attribute are the models themselves; RequestClass, Arrival and Mix stay
# dataclasses (named from their TOML key or file, and dataclasses.replace()d by the sweep and smoke).

class SLO(Strict):
    percentile: Literal[PERCENTILES] = 90  # type: ignore[valid-type]
    ttft_ms: PositiveNumber | None = None
    itl_ms: PositiveNumber | None = None
    e2e_ms: PositiveNumber | None = None
    min_success: float = Field(1.0, gt=0, le=1, description="a fraction in (0, 1]")


class SharedPrefix(Strict):
    count: PositiveInt
    tokens: PositiveInt


class Turns(Strict):
    count: Tokens
    tool_result_tokens: Tokens
    think_s: Seconds


class Reader(Strict):
    bytes_per_s: tuple[PositiveInt, ...] = Field(min_length=1, description="a positive integer or a list of them")
    recv_buffer_bytes: PositiveInt = 4096

    @field_validator("bytes_per_s", mode="before")
    @classmethod
    def _listed(cls, v: Any) -> Any:
        return (v,) if isinstance(v, int) else tuple(v) if isinstance(v, list) else v


class _Class(Strict):
    weight: PositiveNumber
    endpoint: Literal[ENDPOINTS]  # type: ignore[valid-type]
    prompt_tokens: Tokens
    output_tokens: Tokens
    slo: SLO = SLO()
    shared_prefix: SharedPrefix | None = None
    turns: Turns | None = None
    reader: Reader | None = None


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


class _Arrival(Strict):
    process: Literal[PROCESSES] = "poisson"  # type: ignore[valid-type]
    rate_rps: PositiveNumber = 1.0
    cv: PositiveNumber = 1.0
    path: str | None = None

    @model_validator(mode="after")
    def _trace_has_a_path(self) -> _Arrival:
        if self.process == "trace" and self.path is None:
            raise Fault("path", 'expected the path of an arrival trace (process = "trace")')
        if self.process != "trace" and self.path is not None:
            raise Fault("path", f'only used with process = "trace", not {self.process!r}')
        return self


class _Meta(Strict):
    name: NonEmptyStr | None = None
    duration_s: PositiveNumber = 60.0
    max_concurrency: PositiveInt = 16


class _Gates(Strict):
    slow_isolation_max_itl_ratio: PositiveNumber | None = None


class _MixFile(Strict):
    mix: _Meta = _Meta()
    arrival: _Arrival = _Arrival()
    gates: _Gates = _Gates()
    classes: dict[str, _Class] = Field(min_length=1, description="at least one [classes.NAME] table")


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


def parse(doc: dict[str, Any], source: str, base_dir: Path | None = None) -> Mix:
    f = validate(_MixFile, doc, source)
    a = f.arrival
    path = None if a.path is None else Path(a.path) if not base_dir or Path(a.path).is_absolute() else base_dir / a.path
    gates = {k: v for k, v in f.gates.model_dump().items() if v is not None}
    return Mix(f.mix.name or Path(source).stem, source, hashlib.sha256(repr(doc).encode()).hexdigest(),
               f.mix.duration_s, f.mix.max_concurrency, Arrival(a.process, a.rate_rps, a.cv, path),
               tuple(RequestClass(name, **dict(c)) for name, c in f.classes.items()), gates)


def load(name_or_path: str | Path = "default") -> Mix:
    path = resolve(name_or_path)
    mix = parse(read_toml(path), str(path), path.parent)
    return mix
