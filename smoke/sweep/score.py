"""The combined score that ranks profiles, and the record statistics behind it. No Docker, no I/O.

Per phase, each profile gets four parts in [0, 1]:
  attainment (weight 0.4): the mean over classes of (requests that met their class SLO / requests
                           sent); a rejected or failed request is a miss, so admission counts here;
  itl        (weight 0.2): best p90 of the phase / this profile's p90 of per-request mean
                           inter-token time ((E2E - TTFT) / (output tokens - 1)) over the classes
                           whose SLO bounds ITL (token cadence of the latency-sensitive lanes);
  isolation  (weight 0.2): 1 / max(1, smoke.metrics.isolation's ratio: per class, E2E per output
                           token of requests that overlapped a slow reader over those that did not);
                           1 when there is no contrast;
  goodput    (weight 0.2): this profile's goodput (SLO-meeting requests/s) / the phase's best.
score = the weighted sum; with several phases the profile's score is their mean. ITL and goodput
are relative to the best profile of the same phase, so a score ranks within one sweep only.
Per-request means, not single gaps: on a loaded 2-core host the client reads several SSE events
in one socket read, so most single gaps measure as ~0 and their percentiles say little.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from statistics import median
from typing import Any

import numpy as np

from smoke.metrics import isolation, tpot_ms

WEIGHTS = {"attainment": 0.4, "itl": 0.2, "isolation": 0.2, "goodput": 0.2}


@dataclass(frozen=True)
class PhaseFigures:
    """What the score needs from one profile's phase, read from its summary.json."""
    attainment: dict[str, float]          # class → good / sent
    itl_p90_ms: float | None              # over classes with an ITL bound
    isolation_ratio: float | None
    goodput_rps: float


def figures(summary: dict[str, Any], records: list, itl_classes: set[str]) -> PhaseFigures:
    att = {}
    for name, c in summary["classes"].items():
        att[name] = (c["good"] / c["requests"]) if c["requests"] else 0.0
    tp = [t for r in records if r.cls in itl_classes and (t := tpot_ms(r)) is not None]
    itl = float(np.percentile(tp, 90)) if tp else None
    return PhaseFigures(att, itl, isolation(records)["itl_ratio"], summary["overall"]["goodput_rps"])


def parts(f: PhaseFigures, best_itl: float | None, best_goodput: float) -> dict[str, float]:
    att = sum(f.attainment.values()) / len(f.attainment) if f.attainment else 0.0
    itl = (best_itl / f.itl_p90_ms) if (best_itl and f.itl_p90_ms) else 0.0
    iso = 1.0 / max(1.0, f.isolation_ratio) if f.isolation_ratio is not None else 1.0
    good = (f.goodput_rps / best_goodput) if best_goodput else 0.0
    return {"attainment": att, "itl": itl, "isolation": iso, "goodput": good}


def rank(per_phase: dict[str, dict[str, PhaseFigures]]) -> list[dict[str, Any]]:
    """per_phase: phase → profile → figures. Returns rows sorted best first."""
    scores: dict[str, dict[str, Any]] = {}
    for phase, profs in per_phase.items():
        itls = [f.itl_p90_ms for f in profs.values() if f.itl_p90_ms]
        best_itl = min(itls) if itls else None
        best_good = max((f.goodput_rps for f in profs.values()), default=0.0)
        for name, f in profs.items():
            p = parts(f, best_itl, best_good)
            s = sum(WEIGHTS[k] * v for k, v in p.items())
            scores.setdefault(name, {"profile": name, "phases": {}})["phases"][phase] = {"score": s, **p}
    for row in scores.values():
        row["score"] = sum(x["score"] for x in row["phases"].values()) / len(row["phases"])
    return sorted(scores.values(), key=lambda r: -r["score"])


def rejected(r) -> bool:
    """Refused by the serving side: an HTTP error (503 admission, 502/504 router), or an error event
    before the first token (vLLM sends 200 headers, then 'engine busy' as the stream's only event)."""
    return bool(r.http_status) and (r.http_status != 200 or r.error.startswith("error event in stream after 0 tokens"))


def admission(recs) -> dict[str, Any]:
    """Accepted vs rejected (see rejected()) vs no answer (connect failure, timeout before headers)."""
    rej = [r for r in recs if rejected(r)]
    acc = sum(1 for r in recs if r.http_status == 200 and not rejected(r))
    why = Counter(f"HTTP {r.http_status}" if r.http_status != 200 else "error event before the first token" for r in rej)
    return {"sent": len(recs), "accepted": acc, "rejected": len(rej), "no_answer": len(recs) - acc - len(rej),
            "completed": sum(1 for r in recs if r.ok), "rejected_how": dict(why)}


def short_during_long(recs, short: str = "interactive_chat", long: str = "long_prefill") -> dict[str, Any]:
    """TTFT of short requests sent while a long prompt was prefilling (before its first token), vs the rest."""
    spans = [(r.sent_s, r.sent_s + (r.ttft_s if r.ttft_s is not None else (r.end_s - r.sent_s)))
             for r in recs if r.cls == long]
    during, apart = [], []
    for r in recs:
        if r.cls == short and r.ok and r.ttft_s is not None:
            (during if any(a <= r.sent_s <= b for a, b in spans) else apart).append(r.ttft_s * 1000)
    return {"n_during": len(during), "n_apart": len(apart),
            "ttft_p50_ms_during": median(during) if during else None,
            "ttft_p50_ms_apart": median(apart) if apart else None}
