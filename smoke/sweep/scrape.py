"""Per-replica server metrics: Prometheus text from each vLLM /metrics, before and after a replay.

Samples are summed over their labels per metric name; the sweep keeps the raw text too. Counters,
histogram sums and counts become deltas over the replay; gauges keep their last value. No Docker.
"""

from __future__ import annotations

import re
from pathlib import Path

import httpx

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+([-+0-9.eEinfINFNa]+)")
# The handful a reader of the sweep report wants per pool; everything else stays in the raw files.
KEY = ("vllm:request_success_total", "vllm:prompt_tokens_total", "vllm:generation_tokens_total",
       "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total", "vllm:num_preemptions_total",
       "vllm:admission_rejections_total",
       "vllm:inter_token_latency_seconds_sum", "vllm:inter_token_latency_seconds_count",
       "vllm:time_to_first_token_seconds_sum", "vllm:time_to_first_token_seconds_count",
       "vllm:request_queue_time_seconds_sum", "vllm:request_queue_time_seconds_count",
       "vllm:num_requests_running", "vllm:num_requests_waiting")


def parse(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m or m.group(1).endswith("_created"):
            continue
        try:
            v = float(m.group(3))
        except ValueError:
            continue
        out[m.group(1)] = out.get(m.group(1), 0.0) + v
    return out


def fetch(url: str, save: Path | None = None) -> dict[str, float]:
    try:
        text = httpx.get(url.rstrip("/") + "/metrics", timeout=10).text
    except httpx.HTTPError as exc:
        text = f"# scrape failed: {exc.__class__.__name__}: {exc}\n"
    if save:
        save.parent.mkdir(parents=True, exist_ok=True)
        save.write_text(text)
    return parse(text)


def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    out = {}
    for k, v in after.items():
        counter = k.endswith(("_total", "_sum", "_count", "_bucket"))
        out[k] = v - before.get(k, 0.0) if counter else v
    return out


def key_figures(d: dict[str, float]) -> dict[str, float | None]:
    """The KEY series plus derived ones: prefix cache hit rate, mean server TTFT and queue time."""
    out: dict[str, float | None] = {k.removeprefix("vllm:"): d.get(k) for k in KEY}
    q, h = d.get("vllm:prefix_cache_queries_total"), d.get("vllm:prefix_cache_hits_total")
    out["prefix_cache_hit_rate"] = (h / q) if q else None
    for name in ("time_to_first_token_seconds", "inter_token_latency_seconds", "request_queue_time_seconds"):
        s, n = d.get(f"vllm:{name}_sum"), d.get(f"vllm:{name}_count")
        out[f"{name}_mean"] = (s / n) if n else None
    return out
