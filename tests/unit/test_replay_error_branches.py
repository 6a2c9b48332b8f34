"""Every error branch of the replay's request (smoke.replay.stream_one) against an httpx.MockTransport
handler that fails the way real servers and networks do: each ends as an error record whose text
names what happened, never an exception out of the replay."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from smoke import replay
from smoke.workload import TraceRequest

CHAT = TraceRequest(id="r1", t=0, cls="c", endpoint="chat", max_tokens=8,
                    messages=({"role": "user", "content": "alpha beta"},))


def _event(obj) -> bytes:
    return b"data: " + (obj if isinstance(obj, bytes) else json.dumps(obj).encode()) + b"\n\n"


TOKEN = _event({"choices": [{"index": 0, "delta": {"content": " tok"}}]})
DONE = _event(b"[DONE]")


class Body(httpx.AsyncByteStream):
    """A response body: chunks (a pause between them), then an exception or the end."""

    def __init__(self, *chunks: bytes, raise_after: Exception | None = None, pause_s: float = 0.0) -> None:
        self.chunks, self.exc, self.pause_s = chunks, raise_after, pause_s

    async def __aiter__(self):
        for i, c in enumerate(self.chunks):
            if i and self.pause_s:
                await asyncio.sleep(self.pause_s)
            yield c
        if self.exc is not None:
            raise self.exc


def record(handler, timeout_s: float = 10.0):
    async def go():
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as c:
            body = replay.request_body(CHAT, "m", None, replay.ReplayOptions(extensions=()))
            rec, _ = await replay.stream_one(c, "http://fake.test", CHAT, body, 0.0, 0.0, timeout_s)
            return rec
    return asyncio.run(go())


def sse(*chunks: bytes, **kw):
    return lambda request: httpx.Response(200, headers={"content-type": "text/event-stream"},
                                          stream=Body(*chunks, **kw))


def raises(exc: Exception):
    def handler(request):
        raise exc
    return handler


def test_a_whole_stream_is_ok():
    # the baseline the branches below depart from
    rec = record(sse(TOKEN, TOKEN, DONE))
    assert rec.status == "ok" and rec.error == "" and rec.streamed_tokens == 2 and rec.http_status == 200


@pytest.mark.parametrize("handler, http_status, starts", [
    (lambda r: httpx.Response(503, json={"error": {"message": "The engine is   busy"}}), 503,
     "HTTP 503: The engine is busy"),
    (lambda r: httpx.Response(400, text="plain words"), 400, "HTTP 400: plain words"),
    (sse(TOKEN, TOKEN), 200, "stream cut after 2 tokens (no [DONE])"),
    (sse(TOKEN, _event({"error": {"message": "engine died"}})), 200, "error event in stream after 1 tokens: engine died"),
    (sse(TOKEN, raise_after=httpx.ReadError("peer reset")), 200, "stream cut after 1 tokens: peer reset"),
    (sse(DONE), 200, "stream ended with no content token"),
    (raises(httpx.ConnectError("refused")), 0, "connect failed (server down?): refused"),
    (raises(httpx.RemoteProtocolError("closed")), 0, "connection closed before a response (server down?): closed"),
    (raises(httpx.ReadTimeout("slow")), 0, "timeout after "),
    (raises(httpx.ProxyError("proxy said no")), 0, "ProxyError: proxy said no"),
], ids=["http-503-json", "http-400-text", "no-done", "error-event", "read-error", "no-content", "connect",
        "closed-before-response", "read-timeout", "other-http-error"])
def test_each_failure_is_an_error_record_naming_it(handler, http_status, starts):
    rec = record(handler)
    assert rec.status == "error" and rec.http_status == http_status and rec.e2e_s is None
    assert rec.error.startswith(starts), rec.error


def test_a_read_timeout_says_which_and_after_how_many_tokens():
    rec = record(raises(httpx.ReadTimeout("slow")))
    assert "(ReadTimeout) after 0 tokens" in rec.error


def test_the_request_deadline_cuts_a_stream_that_never_ends():
    rec = record(sse(TOKEN, TOKEN, DONE, pause_s=60.0), timeout_s=0.5)
    assert rec.status == "error" and "(request deadline 0.5s) after 1 tokens" in rec.error, rec.error
    assert rec.ttft_s is not None and rec.streamed_tokens == 1

