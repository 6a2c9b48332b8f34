"""Errors the client meets without any server (an httpx.MockTransport whose every connect is refused,
as nothing listening would): a record, never a crash."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from smoke import records, replay
from smoke.workload import Trace, TraceRequest


@pytest.fixture(autouse=True)
def nothing_listens(monkeypatch):
    def refuse(request):
        raise httpx.ConnectError("[Errno 111] Connection refused")
    monkeypatch.setattr(replay.ClientPool, "_client",
                        staticmethod(lambda limit, rb: httpx.AsyncClient(transport=httpx.MockTransport(refuse))))


def test_server_down_becomes_error_records_appended_to_file(tmp_path: Path):
    reqs = tuple(TraceRequest(id=f"r{i}", t=0.01 * i, cls="interactive_chat", endpoint="chat", max_tokens=4,
                              messages=({"role": "user", "content": "hi"},)) for i in range(3))
    out = tmp_path / "records.jsonl"
    recs = replay.run(Trace({}, reqs), "http://127.0.0.1:9", "m", out)
    assert len(recs) == 3 and all(r.status == "error" and r.error.startswith("connect failed") for r in recs)
    assert [r.id for r in records.read(out)] == sorted(r.id for r in recs)


def test_agent_followers_still_run_after_a_failed_turn(tmp_path: Path):
    first = TraceRequest(id="s-t0", t=0.0, cls="agent_loop", endpoint="chat", max_tokens=4, session="s",
                         messages=({"role": "user", "content": "task"},))
    second = TraceRequest(id="s-t1", t=0.0, cls="agent_loop", endpoint="chat", max_tokens=4, session="s", turn=1,
                          after="s-t0", think_s=0.01, tool_result="tool result: x")
    recs = replay.run(Trace({}, (first, second)), "http://127.0.0.1:9", "m", None)
    assert [r.id for r in recs] == ["s-t0", "s-t1"] and recs[1].sent_s >= recs[0].end_s
