"""SSE parsing, records, metrics, gates and reports, from hand-made records (no server needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from smoke import gates, metrics, mix as mixmod, records
from smoke.records import RequestRecord
from smoke.replay import SSEParser, StreamError, request_body
from smoke.report import json as json_report, markdown, png
from smoke.workload import TraceRequest


def test_sse_parser_handles_split_events_token_ids_usage_and_done():
    p = SSEParser()
    raw = (b'data: {"choices":[{"delta":{"role":"assistant","content":""}}]}\n\n'
           b'data: {"choices":[{"delta":{"content":"ab"},"token_ids":[5,6]}]}\n\n'
           b'data: {"choices":[{"text":"c"}]}\n\n'
           b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":3}}\n\n'
           b"data: [DONE]\n\n")
    events = []
    for i in range(0, len(raw), 7):  # arbitrary split points, as TCP delivers them
        events += p.feed(raw[i:i + 7])
    assert [(t, n) for t, n, _, _ in events] == [("", 0), ("ab", 2), ("c", 1), ("", 0), ("", 0)]
    assert events[3][2] == {"prompt_tokens": 3, "completion_tokens": 3} and events[-1][3] is True


def test_sse_error_event_raises():
    with pytest.raises(StreamError, match="boom"):
        SSEParser().feed(b'data: {"error": {"message": "boom"}}\n\n')


def test_request_body_chat_and_completions():
    chat = TraceRequest(id="a", t=0, cls="c", endpoint="chat", max_tokens=5, messages=({"role": "user", "content": "x"},))
    body = request_body(chat, "m", None, __import__("smoke.replay", fromlist=["x"]).ReplayOptions())
    assert body["stream"] and body["stream_options"] == {"include_usage": True} and body["messages"][0]["content"] == "x"
    comp = TraceRequest(id="b", t=0, cls="c", endpoint="completions", max_tokens=5, prompt="p")
    assert request_body(comp, "m", None, __import__("smoke.replay", fromlist=["x"]).ReplayOptions())["prompt"] == "p"


def rec(i: int, cls: str, ttft: float, itl: tuple[float, ...], sent: float = 0.0, status: str = "ok",
        bps: int = 0, nbytes: int = 1000) -> RequestRecord:
    e2e = ttft + sum(itl) if status == "ok" else None
    return RequestRecord(id=f"r{i}", cls=cls, endpoint="chat", scheduled_s=sent, sent_s=sent,
                         end_s=sent + (e2e or 0.1), status=status, http_status=200 if status == "ok" else 400,
                         error="" if status == "ok" else "HTTP 400: too long", ttft_s=ttft if status == "ok" else None,
                         itl_s=itl, e2e_s=e2e, prompt_tokens=10, output_tokens=len(itl) + 1 if status == "ok" else None,
                         streamed_tokens=len(itl) + 1 if status == "ok" else 0, bytes_read=nbytes, read_bytes_per_s=bps)


def test_records_round_trip_and_torn_last_line(tmp_path: Path):
    p = tmp_path / "r.jsonl"
    a, b = rec(1, "x", 0.1, (0.01, 0.02)), rec(2, "y", 0.2, (), status="error")
    records.append(p, a)
    records.append(p, b)
    with open(p, "a") as fh:
        fh.write('{"id": "r3", "cls"')  # killed mid-write
    got = records.read(p)
    assert [r.id for r in got] == ["r1", "r2"] and got[0].itl_s == (0.01, 0.02) and not got[1].ok


def _mix():
    return mixmod.load("default")


def test_class_stats_percentiles_goodput_and_errors():
    rs = [rec(i, "interactive_chat", 0.1 * (i + 1), (0.01,) * 5, sent=i) for i in range(10)]
    rs.append(rec(99, "interactive_chat", 0, (), status="error"))
    s = metrics.summarize(rs, _mix())
    c = s.classes["interactive_chat"]
    assert (c.requests, c.ok, c.errors) == (11, 10, 1)
    assert c.ttft_ms["p50"] == pytest.approx(550.0) and c.itl_ms["p99"] == pytest.approx(10.0)
    assert c.good == 10 and c.goodput_rps == pytest.approx(10 / s.duration_s)
    assert c.error_samples == ("r99: HTTP 400: too long",)
    assert s.classes["rag"].requests == 0 and s.overall.requests == 11


def test_goodput_counts_only_requests_within_slo():
    slo = _mix().cls("interactive_chat").slo  # ttft 3000 ms, itl 300 ms
    assert metrics.meets_slo(rec(1, "interactive_chat", 1.0, (0.01,)), slo)
    assert not metrics.meets_slo(rec(2, "interactive_chat", 3.5, (0.01,)), slo)
    assert not metrics.meets_slo(rec(3, "interactive_chat", 0.1, (0.5, 0.5, 0.5)), slo)


def test_isolation_compares_each_class_with_and_without_slow_streams():
    slow = rec(0, "slow_reader", 0.1, (1.0,) * 9, sent=10.0, bps=1000)         # streams 10.0 .. 19.1
    during = rec(1, "interactive_chat", 0.1, (0.04,) * 10, sent=12.0)           # inside the slow window
    apart = rec(2, "interactive_chat", 0.1, (0.01,) * 10, sent=0.0)             # before it
    lone = rec(3, "rag", 0.1, (0.5,) * 10, sent=30.0)                            # one side only: no ratio
    iso = metrics.isolation([slow, during, apart, lone])
    assert iso["slow_streams"] == 1 and iso["requests_during_slow"] == 1 and iso["requests_without_slow"] == 2
    assert iso["classes"]["interactive_chat"]["ratio"] == pytest.approx(0.5 / 0.2)   # E2E/token 50 vs 20 ms
    assert iso["classes"]["rag"]["ratio"] is None and iso["itl_ratio"] == pytest.approx(2.5)


def test_isolation_is_not_fooled_by_tokens_read_together():
    """All tokens in one read after a long wait (gaps 0): gap medians said 0 ms; per token it is 10 ms."""
    slow = rec(0, "slow_reader", 0.1, (1.0,) * 9, sent=10.0, bps=1000)
    during = rec(1, "interactive_chat", 0.11, (0.0,) * 10, sent=12.0)
    apart = rec(2, "interactive_chat", 0.11, (0.0,) * 10, sent=0.0)
    iso = metrics.isolation([slow, during, apart])
    assert iso["classes"]["interactive_chat"]["ms_per_token_p50_without"] == pytest.approx(10.0)
    assert iso["itl_ratio"] == pytest.approx(1.0)


def test_slow_reader_stats_by_throttle():
    rs = [rec(0, "slow_reader", 0.1, (0.5,) * 10, bps=1000, nbytes=5000),
          rec(1, "slow_reader", 0.1, (0.1,) * 10, bps=5000, nbytes=5000),
          rec(2, "interactive_chat", 0.1, (0.01,) * 10, nbytes=5000)]
    sr = metrics.slow_reader_stats(rs)
    assert list(sr) == ["1000", "5000", "unthrottled"]
    assert sr["1000"]["read_bytes_per_s_p50"] == pytest.approx(1000) and sr["1000"]["ms_per_token_p50"] == pytest.approx(500)


def test_gate_names_the_class_and_bound_that_failed():
    m = _mix()
    rs = [rec(i, c.name, 0.05, (0.01,) * 4, sent=i) for i, c in enumerate(m.classes)]
    rs.append(rec(50, "interactive_chat", 9.0, (0.01,) * 4))
    rs.append(rec(51, "interactive_chat", 9.0, (0.01,) * 4))
    v = gates.evaluate(metrics.summarize(rs, m), m)
    assert not v.passed
    assert len(v.failures) == 1 and v.failures[0].startswith("interactive_chat: ttft p90 ") and "> 3000 ms" in v.failures[0]
    assert v.line().startswith("gate failed: interactive_chat: ttft p90")


def test_gate_fails_a_class_that_never_ran():
    m = _mix()
    rs = [rec(i, c.name, 0.05, (0.01,) * 4) for i, c in enumerate(m.classes) if c.name != "rag"]
    v = gates.evaluate(metrics.summarize(rs, m), m)
    assert any(f.startswith("rag: success 0/0") for f in v.failures)


def test_reports_render(tmp_path: Path):
    m = _mix()
    rs = [rec(i, c.name, 0.05 + i / 100, (0.01, 0.02, 0.03), sent=i, bps=2000 if c.name == "slow_reader" else 0)
          for i, c in enumerate(m.classes)]
    s = metrics.summarize(rs, m)
    v = gates.evaluate(s, m)
    meta = {"target": "t", "mix": "default"}
    md = markdown.render(s, v, meta)
    assert all(f"| {c.name} |" in md for c in m.classes) and "## Gate checks" in md
    d = json.loads(json_report.write(tmp_path / "s.json", s, v, meta).read_text())
    assert d["verdict"]["passed"] == v.passed and set(d["classes"]) == {c.name for c in m.classes}
    pngs = png.write(tmp_path, rs, [c.name for c in m.classes])
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in pngs.values())


def test_server_histogram_median_between_snapshots():
    from smoke.bench.peer import _BUCKET, histogram_median_ms
    before = {0.01: 0.0, 0.02: 0.0, 0.05: 0.0, float("inf"): 0.0}
    after = {0.01: 2.0, 0.02: 6.0, 0.05: 10.0, float("inf"): 10.0}   # median (5th of 10) in 10-20 ms
    assert histogram_median_ms(before, after) == pytest.approx(17.5)
    assert histogram_median_ms(after, after) is None
    line = 'vllm:time_to_first_token_seconds_bucket{engine="0",le="0.05",model_name="tiny-llama"} 12.0'
    assert _BUCKET.match(line).groups() == ("0.05", "12.0")


def test_runtime_warnings_are_distinct_and_unprefixed():
    # Lines captured from the real sid-cpu smoke run's server.log (vLLM 0.33.0, 2026-11-28).
    log = """(APIServer pid=1) WARNING 11-28 08:23:45 [cpu.py:242] Triton is not installed. triton-cpu is expected on x86 CPUs.
(APIServer pid=1) INFO 11-28 08:23:45 [api_server.py:1] vLLM API server version 0.33.0
(EngineCore pid=32) WARNING 11-28 08:24:02 [cpu.py:242] Triton is not installed. triton-cpu is expected on x86 CPUs.
/opt/venv/lib/python3.14/site-packages/vllm/triton_utils/dispatcher.py:138: FutureWarning: `torch.distributed.reduce_op` is deprecated, please use `torch.distributed.ReduceOp` instead
"""
    from smoke.stage import runtime_warnings
    assert runtime_warnings(log) == ["Triton is not installed. triton-cpu is expected on x86 CPUs.",
                                     "FutureWarning: `torch.distributed.reduce_op` is deprecated, please use "
                                     "`torch.distributed.ReduceOp` instead"]
