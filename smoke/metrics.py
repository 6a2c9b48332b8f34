"""Per-class and overall statistics from request records: percentiles, tokens/s, goodput, isolation.

Goodput counts requests that met their class's SLO as single requests (TTFT, their own median
ITL, E2E) per second of run. Slow-reader isolation compares the other classes' inter-token gaps
that ended while a slow reader was streaming with those that ended while none was.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from statistics import median

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
    out_tokens = sum((r.output_tokens or r.streamed_tokens) for r in ok)
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


def token_times(r: RequestRecord) -> list[float]:
    """Run-relative arrival time of each content token."""
    if r.ttft_s is None:
        return []
    t = r.sent_s + r.ttft_s
    out = [t]
    for g in r.itl_s:
        t += g
        out.append(t)
    return out


def isolation(records: Sequence[RequestRecord]) -> dict[str, float | int | None]:
    """Median ITL of non-slow streams with and without a slow reader streaming at that moment."""
    slow = sorted((r.sent_s, r.end_s) for r in records if r.read_bytes_per_s)
    during: list[float] = []
    apart: list[float] = []
    for r in records:
        if r.read_bytes_per_s or not r.ok:
            continue
        times = token_times(r)
        for gap, end in zip(r.itl_s, times[1:]):
            (during if any(a <= end <= b for a, b in slow) else apart).append(gap)
    med_d = median(during) * 1000 if during else None
    med_a = median(apart) * 1000 if apart else None
    ratio = (med_d / med_a) if (med_d is not None and med_a) else None
    return {"slow_streams": len(slow), "itl_gaps_during_slow": len(during), "itl_gaps_without_slow": len(apart),
            "itl_p50_ms_during_slow": med_d, "itl_p50_ms_without_slow": med_a, "itl_ratio": ratio}


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
