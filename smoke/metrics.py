"""Per-class and overall statistics from request records: percentiles, tokens/s, goodput, isolation.

Goodput counts requests that met their class's SLO as single requests (TTFT, their own median
ITL, E2E) per second of run. Slow-reader isolation compares, class by class, the other classes'
time per output token while a slow reader was streaming with that while none was.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from statistics import median
from typing import Any

import numpy as np

from smoke.mix import SLO, Mix
from smoke.records import RequestRecord

PCTS = (50, 90, 95, 99)


def percentiles(values: Sequence[float], pcts: Iterable[int] = PCTS) -> dict[str, float | None]:
    if not values:
        return {f"p{p}": None for p in pcts}
    arr = np.asarray(values, dtype=float)
    return {f"p{p}": float(np.percentile(arr, p)) for p in pcts}


def meets_slo(r: RequestRecord, slo: SLO) -> bool:
    if not r.ok:
        return False
    if slo.ttft_ms is not None and (r.ttft_s is None or r.ttft_s * 1000 > slo.ttft_ms):
        return False
    if slo.itl_ms is not None and r.itl_s and median(r.itl_s) * 1000 > slo.itl_ms:
        return False
    if slo.e2e_ms is not None and (r.e2e_s is None or r.e2e_s * 1000 > slo.e2e_ms):
        return False
    return True


@dataclass(frozen=True)
class ClassStats:
    cls: str
    requests: int
    ok: int
    errors: int
    ttft_ms: dict[str, float | None]
    itl_ms: dict[str, float | None]
    e2e_ms: dict[str, float | None]
    output_tokens: int
    tokens_per_s: float
    goodput_rps: float
    good: int
    prompt_tokens_mean: float | None
    error_samples: tuple[str, ...] = ()

    @property
    def success_ratio(self) -> float:
        return self.ok / self.requests if self.requests else 0.0


@dataclass(frozen=True)
class Summary:
    duration_s: float
    overall: ClassStats
    classes: dict[str, ClassStats]
    isolation: dict[str, float | int | None]
    slow_readers: dict[str, dict[str, float | int | None]] = field(default_factory=dict)


def class_stats(name: str, recs: Sequence[RequestRecord], duration_s: float, slo: SLO | None) -> ClassStats:
    ok = [r for r in recs if r.ok]
    # Tokens from the server's usage or the model's tokenizer (RequestRecord.tokens_from), never from
    # counting SSE events: an engine may pack several tokens in one event, or send empty ones.
    out_tokens = sum(r.output_tokens or 0 for r in ok)
    good = sum(1 for r in ok if slo is None or meets_slo(r, slo))
    prompts = [r.prompt_tokens for r in ok if r.prompt_tokens is not None]
    errs = tuple(dict.fromkeys(f"{r.id}: {r.error}" for r in recs if not r.ok))[:5]
    d = max(duration_s, 1e-9)
    return ClassStats(
        cls=name, requests=len(recs), ok=len(ok), errors=len(recs) - len(ok),
        ttft_ms=_ms(percentiles([r.ttft_s for r in ok if r.ttft_s is not None])),
        itl_ms=_ms(percentiles([g for r in ok for g in r.itl_s])),
        e2e_ms=_ms(percentiles([r.e2e_s for r in ok if r.e2e_s is not None])),
        output_tokens=out_tokens, tokens_per_s=out_tokens / d, goodput_rps=good / d, good=good,
        prompt_tokens_mean=(sum(prompts) / len(prompts)) if prompts else None, error_samples=errs)


def _ms(d: dict[str, float | None]) -> dict[str, float | None]:
    return {k: (None if v is None else v * 1000.0) for k, v in d.items()}


def tpot_ms(r: RequestRecord) -> float | None:
    """A request's mean inter-token time: (E2E - TTFT) / (output tokens - 1), in ms."""
    n = r.output_tokens
    if not r.ok or r.e2e_s is None or r.ttft_s is None or not n or n < 2:
        return None
    return (r.e2e_s - r.ttft_s) * 1000 / (n - 1)


def ms_per_token(r: RequestRecord) -> float | None:
    """A request's E2E over its output tokens, in ms: how fast it was served, however it was read."""
    n = r.output_tokens
    if not r.ok or r.e2e_s is None or not n:
        return None
    return r.e2e_s * 1000 / n


def isolation(records: Sequence[RequestRecord]) -> dict[str, Any]:
    """Do slow readers slow the others? Per class, the median E2E per output token of its requests
    that overlapped a slow stream over that of those that did not; `itl_ratio` is the median of the
    classes' ratios (classes with requests on both sides only).

    Per request and per class, not per gap: on a busy 2-core host the API server hands out several
    tokens in one SSE read (gaps of 0, and the wait lands in TTFT), so gap medians, and even
    (E2E - TTFT)/tokens, came out near 0 for whole runs (sid: ratio 112 from a 0.06 ms baseline);
    and classes differ in length, so pooling them measures which classes fell on which side.
    """
    slow = [(r.sent_s, r.end_s) for r in records if r.read_bytes_per_s]
    sides: dict[str, tuple[list[float], list[float]]] = {}
    for r in records:
        t = None if r.read_bytes_per_s else ms_per_token(r)
        if t is None:
            continue
        during, apart = sides.setdefault(r.cls, ([], []))
        (during if any(x < r.end_s and r.sent_s < y for x, y in slow) else apart).append(t)
    per_class = {c: {"during": len(d), "without": len(a), "ms_per_token_p50_during": median(d) if d else None,
                     "ms_per_token_p50_without": median(a) if a else None,
                     "ratio": median(d) / median(a) if d and a and median(a) else None}
                 for c, (d, a) in sides.items()}
    ratios = [v["ratio"] for v in per_class.values() if v["ratio"] is not None]
    return {"slow_streams": len(slow), "requests_during_slow": sum(v["during"] for v in per_class.values()),
            "requests_without_slow": sum(v["without"] for v in per_class.values()),
            "classes": per_class, "itl_ratio": median(ratios) if ratios else None}


def slow_reader_stats(records: Sequence[RequestRecord]) -> dict[str, dict[str, float | int | None]]:
    """Per throttle: E2E and the read rate achieved; 'unthrottled' is the other streams, for contrast."""
    groups: dict[str, list[RequestRecord]] = {}
    for r in records:
        if r.ok and r.bytes_read:
            groups.setdefault(str(r.read_bytes_per_s) if r.read_bytes_per_s else "unthrottled", []).append(r)
    out = {}
    for key, rs in sorted(groups.items(), key=lambda kv: (kv[0] == "unthrottled", int(kv[0]) if kv[0].isdigit() else 0)):
        streaming = [r.e2e_s - r.ttft_s for r in rs if r.e2e_s and r.ttft_s is not None and r.e2e_s > r.ttft_s]
        rates = [r.bytes_read / (r.e2e_s - r.ttft_s) for r in rs if r.e2e_s and r.ttft_s is not None and r.e2e_s > r.ttft_s]
        out[key] = {"requests": len(rs), "e2e_p50_ms": median(r.e2e_s for r in rs) * 1000,
                    "stream_p50_ms": median(streaming) * 1000 if streaming else None,
                    "bytes_p50": median(r.bytes_read for r in rs),
                    "read_bytes_per_s_p50": median(rates) if rates else None,
                    "ms_per_token_p50": median((r.e2e_s - r.ttft_s) * 1000 / max(r.streamed_tokens - 1, 1)
                                               for r in rs if r.e2e_s and r.ttft_s is not None)}
    return out


def summarize(records: Sequence[RequestRecord], mix: Mix | None = None) -> Summary:
    if records:
        duration = max(r.end_s for r in records) - min(r.sent_s for r in records)
    else:
        duration = 0.0
    names = [c.name for c in mix.classes] if mix else sorted({r.cls for r in records})
    names += sorted({r.cls for r in records} - set(names))
    by = {n: [r for r in records if r.cls == n] for n in names}
    slos = {c.name: c.slo for c in mix.classes} if mix else {}
    classes = {n: class_stats(n, by[n], duration, slos.get(n)) for n in names}
    overall = class_stats("overall", list(records), duration, None)
    good = sum(c.good for c in classes.values())
    overall = ClassStats(**{**overall.__dict__, "good": good, "goodput_rps": good / max(duration, 1e-9)})
    return Summary(duration, overall, classes, isolation(records), slow_reader_stats(records))
