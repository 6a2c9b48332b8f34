"""Workload: six classes as data, seeded byte-identical traces, arrival processes, agent chains."""

from __future__ import annotations

import json
import statistics
from dataclasses import replace
from pathlib import Path

from smoke import mix as mixmod, workload as wl

SIX = {"interactive_chat", "rag", "long_prefill", "agent_loop", "batch_summary", "slow_reader"}


def test_default_mix_has_the_six_classes_with_slos():
    m = mixmod.load("default")
    assert {c.name for c in m.classes} == SIX
    assert all(c.slo.ttft_ms for c in m.classes)
    assert m.cls("rag").shared_prefix and m.cls("agent_loop").turns and m.cls("slow_reader").reader


def test_same_seed_gives_byte_identical_trace(tmp_path: Path):
    m = mixmod.load("default")
    a = wl.write(wl.generate(m, 42), tmp_path / "a.jsonl").read_bytes()
    b = wl.write(wl.generate(mixmod.load("default"), 42), tmp_path / "b.jsonl").read_bytes()
    assert a == b
    assert a != wl.dumps(wl.generate(m, 43)).encode()


def test_trace_round_trips(tmp_path: Path):
    t = wl.generate(mixmod.load("default"), 5)
    p = wl.write(t, tmp_path / "t.jsonl")
    assert wl.dumps(wl.read(p)) == p.read_text()


def test_rag_requests_share_a_few_prefixes():
    t = wl.generate(replace(mixmod.load("default"), duration_s=600), 1)
    rag = [r.messages[0]["content"].split("\n\nquestion: ")[0] for r in t.requests if r.cls == "rag"]
    assert len(rag) > 10 and len(set(rag)) == 3


def test_agent_turns_chain_and_grow():
    t = wl.generate(replace(mixmod.load("default"), duration_s=300), 2)
    ids = {r.id: r for r in t.requests}
    follow = [r for r in t.requests if r.after]
    assert follow
    for r in follow:
        prev = ids[r.after]
        assert prev.session == r.session and prev.turn == r.turn - 1 and r.tool_result.startswith("tool result:")


def test_poisson_and_gamma_rates():
    m = replace(mixmod.load("default"), duration_s=20000)
    pois = [t for t, _ in wl.arrivals(m, 1)]
    gam = [t for t, _ in wl.arrivals(replace(m, arrival=replace(m.arrival, process="gamma", cv=3.0)), 1)]
    for times in (pois, gam):
        assert abs(len(times) / 20000 - m.arrival.rate_rps) < 0.1 * m.arrival.rate_rps
    cv = lambda ts: statistics.pstdev(g := [b - a for a, b in zip(ts, ts[1:])]) / statistics.mean(g)  # noqa: E731
    assert 0.85 < cv(pois) < 1.15  # exponential gaps
    assert cv(gam) > 2.0           # bursty


def test_trace_arrivals_keep_times_and_classes(tmp_path: Path):
    m = mixmod.load("ci")
    rows = [json.loads(x) for x in (mixmod.MIXES_DIR / "ci-arrivals.jsonl").read_text().splitlines()]
    got = wl.arrivals(m, 0)
    assert [(t, c) for t, c in got] == [(r["t"], r["class"]) for r in rows]
    counts = wl.generate(m, 0).header["classes"]
    assert set(counts) == SIX and all(v >= 2 for v in counts.values())


def test_slow_readers_take_each_throttle_in_turn():
    t = wl.generate(mixmod.load("ci"), 0)
    assert [r.read_bytes_per_s for r in t.requests if r.cls == "slow_reader"] == [500, 2000]
    assert all(r.recv_buffer_bytes == 4096 for r in t.requests if r.cls == "slow_reader")
