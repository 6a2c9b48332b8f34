"""The replay client's asyncio transport against a real HTTP/1.1 SSE server on loopback
(smoke.bench.sse_source in its own process; no Docker): streams, keep-alive, slow readers, deadline."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from smoke import replay
from smoke.bench.capacity import Source
from smoke.workload import Trace, TraceRequest


def _reqs(n: int, tokens: int, cls: str = "chat", bps: int = 0, endpoint: str = "chat", gap: float = 0.0):
    return tuple(TraceRequest(id=f"{cls}{i:03d}", t=gap * i, cls=cls, endpoint=endpoint, max_tokens=tokens,
                              messages=({"role": "user", "content": "x"},), prompt="x",
                              read_bytes_per_s=bps, recv_buffer_bytes=4096 if bps else 0) for i in range(n))


@pytest.fixture(scope="module")
def paced():
    with Source(0.01) as src:
        yield src.url


def test_every_token_of_every_stream_arrives_on_both_endpoints(paced):
    reqs = _reqs(40, 25) + _reqs(10, 7, cls="comp", endpoint="completions")
    recs = replay.run(Trace({}, reqs), paced, "m", None, replay.ReplayOptions(max_concurrency=40))
    assert all(r.ok for r in recs), [r.error for r in recs if not r.ok][:3]
    by = {r.id: r for r in recs}
    assert all(by[q.id].streamed_tokens == q.max_tokens == by[q.id].output_tokens for q in reqs)
    # Paced by the source (10 ms): the gaps are real, not one read of everything.
    gaps = sorted(g for r in recs for g in r.itl_s)
    assert gaps[len(gaps) // 2] > 0.005


def test_connections_are_reused_across_sequential_requests(paced):
    # 30 requests one after another through a cap of 1: a pool that could not tell an idle keep-alive
    # connection from a dead one would fail or reconnect; every request must succeed.
    recs = replay.run(Trace({}, _reqs(30, 3, gap=0.0)), paced, "m", None, replay.ReplayOptions(max_concurrency=1))
    assert [r.ok for r in recs] == [True] * 30


def test_slow_reader_reads_at_its_throttle_while_others_stream_freely():
    with Source(0.0) as src:  # the source writes as fast as the socket takes it
        slow = _reqs(1, 200, cls="slow", bps=4000)
        fast = _reqs(1, 200, cls="fast")
        recs = {r.cls: r for r in replay.run(Trace({}, slow + fast), src.url, "m", None)}
    s, f = recs["slow"], recs["fast"]
    assert s.ok and f.ok and s.streamed_tokens == f.streamed_tokens == 200
    rate = s.bytes_read / s.e2e_s
    assert 0.7 * 4000 <= rate <= 1.3 * 4000, rate          # pulled at the throttle, ~5 s for ~20 KB
    assert f.bytes_read / f.e2e_s > 10 * rate                # the other stream is not held back


def test_request_deadline_becomes_an_error_record():
    with Source(2.0) as src:  # one token every 2 s; the deadline is 1 s
        recs = replay.run(Trace({}, _reqs(2, 5)), src.url, "m", None, replay.ReplayOptions(request_timeout_s=1.0))
    assert all(r.status == "error" and r.error.startswith("timeout after") and "request deadline 1s" in r.error
               for r in recs), [r.error for r in recs]


def _cli_sigterm(signum, frame):
    raise KeyboardInterrupt("SIGTERM")        # what tasks.py installs


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_mid_replay_stops_it_with_streams_open(sig):
    # 60 paced streams (~1 s each, one started every 50 ms): the signal lands while many are mid-read.
    # Ctrl-C or `kill` must end the run, not let it finish (session 15 saw a SIGINT outlive a capacity run).
    prev = signal.signal(signal.SIGTERM, _cli_sigterm)
    timer = threading.Timer(1.0, os.kill, (os.getpid(), sig))
    try:
        with Source(0.05) as src:
            timer.start()
            t = time.monotonic()
            with pytest.raises(KeyboardInterrupt):
                replay.run(Trace({}, _reqs(60, 20, gap=0.05)), src.url, "m", None,
                           replay.ReplayOptions(max_concurrency=60))
            assert time.monotonic() - t < 2.0            # all 60 would take ~4 s
    finally:
        timer.cancel()
        signal.signal(signal.SIGTERM, prev)
