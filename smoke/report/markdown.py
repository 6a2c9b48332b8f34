"""The Markdown report: one table row per class, then isolation, slow readers and the verdict."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from smoke.gates import Verdict
from smoke.metrics import ClassStats, Summary


def _f(v: float | None, digits: int = 0) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def _row(c: ClassStats) -> str:
    t, i, e = c.ttft_ms, c.itl_ms, c.e2e_ms
    return (f"| {c.cls} | {c.ok}/{c.requests} | {_f(t['p50'])} | {_f(t['p90'])} | {_f(t['p99'])} | "
            f"{_f(i['p50'], 1)} | {_f(i['p90'], 1)} | {_f(i['p99'], 1)} | {_f(e['p50'])} | {_f(e['p90'])} | "
            f"{c.tokens_per_s:.1f} | {c.goodput_rps:.3f} |")


def render(summary: Summary, verdict: Verdict, meta: dict[str, Any]) -> str:
    lines = [f"# Smoke: {meta.get('target', '')}", ""]
    lines += [f"- {k}: {v}" for k, v in meta.items() if k != "target"]
    lines += [f"- duration: {summary.duration_s:.1f} s", f"- verdict: **{verdict.line()}**", ""]
    lines += ["| class | ok/sent | TTFT p50 ms | p90 | p99 | ITL p50 ms | p90 | p99 | E2E p50 ms | p90 | out tok/s | goodput req/s |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [_row(c) for c in summary.classes.values()] + [_row(summary.overall), ""]
    iso = summary.isolation
    lines += ["## Slow-reader isolation", "",
              f"Other classes' E2E per output token, p50, of requests that overlapped one of {iso.get('slow_streams')} "
              f"slow streams vs of those that did not; ratio (median over classes) {_f(iso.get('itl_ratio'), 2)}.", "",
              "| class | requests during / without | ms/token during | without | ratio |", "|---|---|---|---|---|"]
    lines += [f"| {c} | {v['during']} / {v['without']} | {_f(v['ms_per_token_p50_during'], 1)} | "
              f"{_f(v['ms_per_token_p50_without'], 1)} | {_f(v['ratio'], 2)} |" for c, v in (iso.get("classes") or {}).items()]
    lines += [""]
    if summary.slow_readers:
        lines += ["## Read rate per throttle", "",
                  "| throttle B/s | requests | E2E p50 ms | streaming p50 ms | bytes p50 | read B/s p50 | ms/token p50 |",
                  "|---|---|---|---|---|---|---|"]
        for k, s in summary.slow_readers.items():
            lines.append(f"| {k} | {s['requests']} | {_f(s['e2e_p50_ms'])} | {_f(s['stream_p50_ms'])} | "
                         f"{_f(s['bytes_p50'])} | {_f(s['read_bytes_per_s_p50'])} | {_f(s['ms_per_token_p50'], 2)} |")
        lines.append("")
    lines += ["## Gate checks", ""] + [f"- {'✔' if c.passed else '✘'} {c.text}" for c in verdict.checks]
    errs = [e for c in summary.classes.values() for e in c.error_samples]
    if errs:
        lines += ["", "## Errors (samples)", ""] + [f"- {e}" for e in errs]
    return "\n".join(lines) + "\n"


def write(path: Path, summary: Summary, verdict: Verdict, meta: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(summary, verdict, meta))
    return path
