"""Seeded workload: a mix + a seed → a JSONL trace that replays exactly, byte for byte.

Randomness comes from random.Random seeded with strings (SHA-512 of the string, stable across
Python versions and platforms), one stream per purpose, so changing one class's draws does not
shift another's. Floats are rounded before they are written, and JSON keys are sorted.

A trace is a header line then one line per request, in send order. Agent turns after the first
carry `after` (the previous turn's id) and `think_s`: the replay sends them when that turn ends,
with the real assistant reply (as a call of the agent's tool) and this turn's tool result, which
answers that call by its tool_call_id, appended to the conversation.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model.errors import UsageError
from smoke.mix import Mix, Range, RequestClass
from smoke.records import LINE_FAULTS, jsonl_objects

TRACE_VERSION = 1
WORDS_FILE = Path(__file__).with_name("data") / "words.txt"


def words() -> tuple[str, ...]:
    return tuple(w for w in WORDS_FILE.read_text().split("\n") if w and not w.startswith("#"))


@dataclass(frozen=True)
class TraceRequest:
    id: str
    t: float                      # seconds after the start at which it leaves (turn 0 / single requests)
    cls: str
    endpoint: str                 # "chat" | "completions"
    max_tokens: int
    prompt: str = ""              # completions
    messages: tuple[dict[str, str], ...] = ()   # chat, first turn
    session: str = ""
    turn: int = 0
    after: str = ""               # agent turns: sent when this request ends ...
    think_s: float = 0.0          # ... plus this pause
    tool_result: str = ""
    read_bytes_per_s: int = 0     # slow readers: 0 means read as fast as possible
    recv_buffer_bytes: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d = {"id": self.id, "t": self.t, "class": self.cls, "endpoint": self.endpoint, "max_tokens": self.max_tokens}
        for key, val in (("prompt", self.prompt), ("messages", list(self.messages)), ("session", self.session),
                         ("turn", self.turn), ("after", self.after), ("think_s", self.think_s),
                         ("tool_result", self.tool_result), ("read_bytes_per_s", self.read_bytes_per_s),
                         ("recv_buffer_bytes", self.recv_buffer_bytes), ("extra", self.extra)):
            if val:
                d[key] = val
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TraceRequest:
        for key in ("id", "after", "session"):
            if not isinstance(d.get(key, ""), str):
                raise TypeError(f"{key}: expected a string, got {d[key]!r}")
        if not math.isfinite(float(d["t"])):
            raise ValueError(f"t: expected a finite time in seconds, got {d['t']!r}")
        return cls(id=d["id"], t=float(d["t"]), cls=d["class"], endpoint=d["endpoint"], max_tokens=int(d["max_tokens"]),
                   prompt=d.get("prompt", ""), messages=tuple(d.get("messages", ())), session=d.get("session", ""),
                   turn=int(d.get("turn", 0)), after=d.get("after", ""), think_s=float(d.get("think_s", 0.0)),
                   tool_result=d.get("tool_result", ""), read_bytes_per_s=int(d.get("read_bytes_per_s", 0)),
                   recv_buffer_bytes=int(d.get("recv_buffer_bytes", 0)), extra=dict(d.get("extra", {})))


@dataclass(frozen=True)
class Trace:
    header: dict[str, Any]
    requests: tuple[TraceRequest, ...]


def _rng(seed: int, *stream: object) -> random.Random:
    return random.Random(":".join(map(str, (seed, *stream))))


def _draw(rng: random.Random, r: Range) -> int:
    return rng.randint(int(r.lo), int(r.hi))


def _text(rng: random.Random, vocab: tuple[str, ...], n: int) -> str:
    return " ".join(rng.choice(vocab) for _ in range(n))


def arrivals(mix: Mix, seed: int) -> list[tuple[float, str | None]]:
    """(time, class or None) of each session start within the mix's duration."""
    a = mix.arrival
    rng = _rng(seed, "arrivals")
    if a.process == "trace":
        return _trace_arrivals(a.path, mix)
    out: list[tuple[float, str | None]] = []
    t = 0.0
    while True:
        if a.process == "poisson":
            gap = rng.expovariate(a.rate_rps)
        else:  # gamma with mean 1/rate and the given coefficient of variation: cv > 1 is bursty
            shape = 1.0 / (a.cv ** 2)
            gap = rng.gammavariate(shape, 1.0 / (a.rate_rps * shape))
        t += gap
        if t >= mix.duration_s:
            return out
        out.append((t, None))


def _trace_arrivals(path: Path | None, mix: Mix) -> list[tuple[float, str | None]]:
    if path is None or not path.is_file():
        raise UsageError(f"{mix.source}: arrival.path: no such file {path}")
    names = {c.name for c in mix.classes}
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            t = float(row["t"])
        except (ValueError, KeyError, TypeError):
            raise UsageError(f"{path}:{n}: t: expected a JSON object with a number \"t\" (seconds)") from None
        cls = row.get("class")
        if cls is not None and cls not in names:
            from model.errors import did_you_mean
            raise UsageError(f"{path}:{n}: class: unknown class {cls!r}{did_you_mean(str(cls), names)}")
        if t < 0:
            raise UsageError(f"{path}:{n}: t: expected seconds >= 0, got {t}")
        out.append((t, cls))
    out.sort(key=lambda x: x[0])
    return out


def generate(mix: Mix, seed: int) -> Trace:
    vocab = words()
    weights = [c.weight for c in mix.classes]
    pick = _rng(seed, "classes")
    # Shared documents per class with a prefix: the same few texts recur, varied questions follow.
    prefixes = {c.name: [_text(_rng(seed, "prefix", c.name, i), vocab, c.shared_prefix.tokens)
                         for i in range(c.shared_prefix.count)]
                for c in mix.classes if c.shared_prefix}
    content = {c.name: _rng(seed, "content", c.name) for c in mix.classes}
    reqs: list[TraceRequest] = []
    counts: dict[str, int] = {}
    for n, (t, cls_name) in enumerate(arrivals(mix, seed)):
        c = mix.cls(cls_name) if cls_name else pick.choices(mix.classes, weights)[0]
        reqs.extend(_requests_for(c, n, round(t, 6), content[c.name], vocab, prefixes.get(c.name),
                                  counts.get(c.name, 0)))
        counts[c.name] = counts.get(c.name, 0) + 1
    header = {"kind": "header", "version": TRACE_VERSION, "mix": mix.name, "mix_sha256": mix.sha256, "seed": seed,
              "duration_s": mix.duration_s, "max_concurrency": mix.max_concurrency,
              "arrival": {"process": mix.arrival.process, "rate_rps": mix.arrival.rate_rps, "cv": mix.arrival.cv},
              "classes": {c.name: counts.get(c.name, 0) for c in mix.classes}, "requests": len(reqs)}
    return Trace(header, tuple(reqs))


def _requests_for(c: RequestClass, n: int, t: float, rng: random.Random, vocab: tuple[str, ...],
                  prefixes: list[str] | None, seq: int) -> list[TraceRequest]:
    rid = f"{n:06d}-{c.name}"
    body = _text(rng, vocab, _draw(rng, c.prompt_tokens))
    out_tokens = _draw(rng, c.output_tokens)
    if prefixes:
        body = prefixes[rng.randrange(len(prefixes))] + "\n\nquestion: " + body
    common: dict[str, Any] = {"t": t, "cls": c.name, "endpoint": c.endpoint, "max_tokens": out_tokens}
    if c.reader:
        # Throttles in turn, so even a short run has a slow reader at each (E2E vs throttle).
        common["read_bytes_per_s"] = c.reader.bytes_per_s[seq % len(c.reader.bytes_per_s)]
        common["recv_buffer_bytes"] = c.reader.recv_buffer_bytes
    if c.endpoint == "chat":
        first = TraceRequest(id=rid, messages=({"role": "user", "content": body},), **common)
    else:
        first = TraceRequest(id=rid, prompt=body, **common)
    if not c.turns:
        return [first]
    out = [TraceRequest(**{**first.__dict__, "id": f"{rid}-t0", "session": rid})]
    for k in range(1, _draw(rng, c.turns.count)):
        tool = "tool result: " + _text(rng, vocab, _draw(rng, c.turns.tool_result_tokens))
        think = round(rng.uniform(c.turns.think_s.lo, c.turns.think_s.hi), 6)
        out.append(TraceRequest(id=f"{rid}-t{k}", t=t, cls=c.name, endpoint=c.endpoint,
                                max_tokens=_draw(rng, c.output_tokens), session=rid, turn=k,
                                after=out[-1].id, think_s=think, tool_result=tool))
    return out


def dumps(trace: Trace) -> str:
    lines = [json.dumps(trace.header, sort_keys=True, separators=(",", ":"))]
    lines += [json.dumps(r.to_json(), sort_keys=True, separators=(",", ":")) for r in trace.requests]
    return "\n".join(lines) + "\n"


def write(trace: Trace, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps(trace))
    return path


def read(path: Path) -> Trace:
    header: dict[str, Any] = {}
    reqs = []
    for n, _, d in jsonl_objects(path, "trace"):
        try:
            if isinstance(d, Exception):
                raise d
            if d.get("kind") == "header":
                header = d
                continue
            reqs.append(TraceRequest.from_json(d))
        except LINE_FAULTS as exc:
            raise UsageError(f"{path}:{n}: expected a trace request line ({exc.__class__.__name__}: {exc})") from None
    ids = {r.id for r in reqs}
    for r in reqs:
        if r.after and r.after not in ids:
            raise UsageError(f"{path}: {r.id}: after: no request {r.after!r} in the trace")
    return Trace(header, tuple(reqs))
