"""The JSON summary: every number of the Summary and the gate verdict, for machines and diffs."""

from __future__ import annotations

import dataclasses
import json as _json
from pathlib import Path
from typing import Any

from smoke.gates import Verdict
from smoke.metrics import Summary


def summary_dict(summary: Summary, verdict: Verdict, meta: dict[str, Any]) -> dict[str, Any]:
    return {
        "meta": meta,
        "duration_s": round(summary.duration_s, 3),
        "verdict": {"passed": verdict.passed, "line": verdict.line(), "failures": list(verdict.failures),
                    "checks": [dataclasses.asdict(c) for c in verdict.checks]},
        "overall": _cls(summary.overall),
        "classes": {k: _cls(v) for k, v in summary.classes.items()},
        "isolation": summary.isolation,
        "slow_readers": summary.slow_readers,
    }


def _cls(c) -> dict[str, Any]:
    d = dataclasses.asdict(c)
    d["success_ratio"] = c.success_ratio
    d["error_samples"] = list(c.error_samples)
    return d


def write(path: Path, summary: Summary, verdict: Verdict, meta: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_json.dumps(summary_dict(summary, verdict, meta), indent=2, sort_keys=True, default=str) + "\n")
    return path
