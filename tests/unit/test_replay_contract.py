"""The replay speaks the contract (httpx.MockTransport, tests/unit/fake_openai.py): output tokens from
usage, else from the model's tokenizer, never from counting events; tool results answer their call
by tool_call_id; engine extensions only where the engine's adapter declares them."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from smoke import replay
from smoke.workload import Trace, TraceRequest
from tests.unit.fake_openai import MODEL, Breaks, FakeOpenAI


def one(fake: FakeOpenAI, req: TraceRequest, count_tokens=None, extensions=()):
    async def go():
        async with httpx.AsyncClient(transport=httpx.MockTransport(fake)) as c:
            body = replay.request_body(req, MODEL, None, replay.ReplayOptions(extensions=extensions))
            return await replay.stream_one(c, "http://fake.test", req, body, 0.0, 0.0, 10.0,
                                           count_tokens=count_tokens)
    return asyncio.run(go())


CHAT = TraceRequest(id="r1", t=0, cls="c", endpoint="chat", max_tokens=33,
                    messages=({"role": "user", "content": "alpha beta"},))


def words(text: str) -> int:  # the fake's tokenizer: one token per word
    return len(text.split())


def test_tokens_from_usage_when_the_server_sends_it():
    rec, reply = one(FakeOpenAI(Breaks(empty_deltas=True)), CHAT, count_tokens=lambda t: 999)
    assert rec.ok and rec.output_tokens == 33 and rec.tokens_from == "usage"
    assert len(reply.text.split()) == 33


def test_tokens_from_the_tokenizer_when_usage_is_absent():
    rec, _ = one(FakeOpenAI(Breaks(no_usage=True)), CHAT, count_tokens=words)
    assert rec.ok and rec.output_tokens == 33 and rec.tokens_from == "tokenizer"


def test_empty_deltas_and_merged_chunks_do_not_change_the_count():
    # 33 tokens in 17 events, with an empty delta after each: counting events would say 17 (or 34).
    rec, _ = one(FakeOpenAI(Breaks(no_usage=True, empty_deltas=True, two_tokens_per_chunk=True)), CHAT,
                 count_tokens=words)
    assert rec.output_tokens == 33 and rec.streamed_tokens == 17


def test_no_usage_and_no_tokenizer_leaves_the_count_unknown():
    rec, _ = one(FakeOpenAI(Breaks(no_usage=True)), CHAT)
    assert rec.ok and rec.output_tokens is None and rec.tokens_from == ""


def test_extensions_only_where_declared():
    fake = FakeOpenAI()
    one(fake, CHAT)
    assert "return_token_ids" not in fake.bodies[-1] and "ignore_eos" not in fake.bodies[-1]
    one(fake, CHAT, extensions=("return_token_ids", "ignore_eos"))
    assert fake.bodies[-1]["return_token_ids"] is True and fake.bodies[-1]["ignore_eos"] is True


def test_tokenizer_counter_reads_a_tokenizer_json(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({"alpha": 0, "beta": 1, "[UNK]": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    count = replay.tokenizer_counter(tmp_path / "tokenizer.json")
    assert count("alpha beta alpha gamma") == 4
    assert replay.tokenizer_counter(tmp_path / "missing.json") is None


def test_agent_turns_answer_their_tool_call_by_id(monkeypatch):
    fake = FakeOpenAI()
    monkeypatch.setattr(replay.ClientPool, "_client",
                        staticmethod(lambda limit, rb: httpx.AsyncClient(transport=httpx.MockTransport(fake))))
    reqs = [TraceRequest(id="s-t0", t=0, cls="agent", endpoint="chat", max_tokens=4, session="s",
                         messages=({"role": "user", "content": "alpha"},))]
    for k in (1, 2):
        reqs.append(TraceRequest(id=f"s-t{k}", t=0, cls="agent", endpoint="chat", max_tokens=4, session="s", turn=k,
                                 after=f"s-t{k - 1}", tool_result=f"tool result {k}"))
    recs = replay.run(Trace({}, tuple(reqs)), "http://fake.test", MODEL, None, replay.ReplayOptions(extensions=()))
    assert [r.ok for r in recs] == [True, True, True], [r.error for r in recs]
    last = fake.bodies[-1]["messages"]
    assert [m["role"] for m in last] == ["user", "assistant", "tool", "assistant", "tool"]
    for assistant, tool in ((last[1], last[2]), (last[3], last[4])):
        assert tool["tool_call_id"] == assistant["tool_calls"][0]["id"]
    assert last[2]["tool_call_id"] != last[4]["tool_call_id"]
    assert json.loads(last[1]["tool_calls"][0]["function"]["arguments"]) == {}


def test_the_servers_own_tool_call_id_is_answered():
    reply = replay.Reply("", ({"id": "call_srv_7", "name": "lookup", "arguments": "{\"q\": 1}"},))
    msg, call_id = replay.assistant_turn(CHAT, reply)
    assert call_id == "call_srv_7" and msg["tool_calls"][0]["function"]["arguments"] == "{\"q\": 1}"
    assert replay.tool_result(call_id, "x") == {"role": "tool", "tool_call_id": "call_srv_7", "content": "x"}


def test_streamed_tool_call_deltas_are_collected():
    p = replay.SSEParser()
    deltas = [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": ""}},
              {"index": 0, "function": {"arguments": "{\"a\""}}, {"index": 0, "function": {"arguments": ": 1}"}}]
    raw = b"".join(b"data: " + json.dumps({"choices": [{"index": 0, "delta": {"tool_calls": [d]}}]}).encode() + b"\n\n"
                   for d in deltas)
    p.feed(raw)
    assert p.tool_calls == {0: {"id": "call_1", "name": "lookup", "arguments": "{\"a\": 1}"}}


def _replay_bodies(monkeypatch, opts, url="http://fake.test"):
    fake = FakeOpenAI()
    monkeypatch.setattr(replay.ClientPool, "_client",
                        staticmethod(lambda limit, rb: httpx.AsyncClient(transport=httpx.MockTransport(fake))))
    replay.run(Trace({}, (CHAT,)), url, MODEL, None, opts)
    return fake.bodies


def test_declared_extensions_decide_what_the_replay_sends(monkeypatch):
    # By default: the project's own engine (vLLM) started by the caller.
    body = _replay_bodies(monkeypatch, replay.ReplayOptions())[-1]
    assert body["ignore_eos"] is True and body["return_token_ids"] is True
    # e.g. llama.cpp: its adapter declares none
    body = _replay_bodies(monkeypatch, replay.ReplayOptions(extensions=()))[-1]
    assert "ignore_eos" not in body and "return_token_ids" not in body


def test_the_api_key_comes_from_the_named_variable_and_only_goes_in_the_header(monkeypatch, tmp_path):
    from model.errors import UsageError
    monkeypatch.setenv("DEPLOYLAB_TEST_KEY", "sekret")
    headers = replay.api_headers("DEPLOYLAB_TEST_KEY")
    assert headers == {"Authorization": "Bearer sekret"}
    fake = FakeOpenAI()
    monkeypatch.setattr(replay.ClientPool, "_client",
                        staticmethod(lambda limit, rb: httpx.AsyncClient(transport=httpx.MockTransport(fake))))
    out = tmp_path / "records.jsonl"
    replay.run(Trace({}, (CHAT,)), "http://fake.test", MODEL, out,
               replay.ReplayOptions(headers=tuple(headers.items())))
    assert fake.requests[-1].headers["authorization"] == "Bearer sekret"
    assert "sekret" not in out.read_text()
    monkeypatch.delenv("DEPLOYLAB_TEST_KEY")
    with pytest.raises(UsageError, match="DEPLOYLAB_TEST_KEY is not set"):
        replay.api_headers("DEPLOYLAB_TEST_KEY")


@pytest.mark.parametrize("owner, want", [("vllm", ("return_token_ids", "ignore_eos")), ("llamacpp", ()),
                                         ("fake", ())])
def test_the_engine_is_told_by_what_owns_the_model(monkeypatch, owner, want):
    models = {"object": "list", "data": [{"id": MODEL, "object": "model", "created": 1, "owned_by": owner}]}
    monkeypatch.setattr(replay.httpx, "get", lambda url, **kw: httpx.Response(200, json=models))
    assert set(replay.engine_extensions("http://fake.test", MODEL)) == set(want)


def test_each_request_carries_its_trace_id_once_prefixed_and_unique_per_replay(monkeypatch):
    fake = FakeOpenAI()
    monkeypatch.setattr(replay.ClientPool, "_client",
                        staticmethod(lambda limit, rb: httpx.AsyncClient(transport=httpx.MockTransport(fake))))
    replay.run(Trace({}, (CHAT,)), "http://fake.test", MODEL, None, replay.ReplayOptions(request_id_prefix="run7-"))
    assert fake.requests[-1].headers["x-request-id"] == "run7-r1"
    for _ in range(2):
        replay.run(Trace({}, (CHAT,)), "http://fake.test", MODEL, None, replay.ReplayOptions())
    a, b = (r.headers["x-request-id"] for r in fake.requests[-2:])
    assert a != b and a.endswith("-r1") and b.endswith("-r1")   # the engine may take it as its request id
