"""Replay a trace against an OpenAI-compatible server: asyncio + httpx, SSE streaming, open loop.

Requests leave at their trace times whatever the server does (open loop); a semaphore caps how
many are in flight, and a request held by the cap records how long it waited (sent_s - scheduled_s).
Slow readers get their own connection pool whose sockets have a small SO_RCVBUF, and they pull
bytes off the socket at a bounded rate: the kernel buffer fills, the TCP window closes, and the
backpressure reaches the server instead of piling up in this process.
Every outcome, errors included (connect refused, 4xx, a stream cut mid-way, timeouts), is a record.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

try:  # orjson where installed (the host: a dependency); the peer image's replay falls back to json
    from orjson import JSONDecodeError, loads as json_loads
except ImportError:
    from json import JSONDecodeError, loads as json_loads

from smoke import records as recmod, transport
from smoke.records import RequestRecord
from smoke.workload import Trace, TraceRequest

PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}
# The request class travels in a header, as an application gateway would set it: a router in front
# of several pools (smoke/router) sends each class to its pool; a plain server ignores it.
CLASS_HEADER = "X-Request-Class"


@dataclass(frozen=True)
class ReplayOptions:
    max_concurrency: int = 16
    request_timeout_s: float = 600.0     # the whole request, first byte to [DONE]
    ignore_eos: bool = True          # fixed output lengths: a random-weight model stops anywhere otherwise
    temperature: float | None = None  # None: the server's default
    # vLLM's extension: each chunk lists its token ids, so a chunk that carries several tokens (the
    # engine coalesces outputs when it runs behind) counts as several tokens, not one.
    return_token_ids: bool = True
    time_scale: float = 1.0          # >1 stretches the schedule (slower arrivals)


def request_body(req: TraceRequest, model: str, messages: Sequence[dict[str, str]] | None, opts: ReplayOptions) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "max_tokens": req.max_tokens, "stream": True,
                            "stream_options": {"include_usage": True}}
    if opts.temperature is not None:
        body["temperature"] = opts.temperature
    if opts.return_token_ids:
        body["return_token_ids"] = True
    if opts.ignore_eos:
        body["ignore_eos"] = True  # vLLM's extension; other servers ignore unknown fields or say so in a 400
    if req.endpoint == "chat":
        body["messages"] = list(messages if messages is not None else req.messages)
    else:
        body["prompt"] = req.prompt
    return body


class SSEParser:
    """Incremental SSE parser for OpenAI streams: feed bytes, get (content, usage, done) events."""

    def __init__(self, lag_sink: list[float] | None = None) -> None:
        self.buf = b""
        # Sources that stamp events with their wall-clock send time ("ts"): how late we read each one.
        self.lag_sink = lag_sink

    def feed(self, chunk: bytes) -> list[tuple[str, int, dict | None, bool]]:
        """Events as (text, tokens in it, usage, done); tokens from token_ids where sent, else 1 per text."""
        # Runs once per socket read, the replay's hottest path: one split per chunk, orjson for the data.
        *events, self.buf = (self.buf + chunk if self.buf else chunk).split(b"\n\n")
        out = []
        for event in events:
            for line in event.split(b"\n") if b"\n" in event else (event,):
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    out.append(("", 0, None, True))
                    continue
                try:
                    obj = json_loads(data)
                except JSONDecodeError:
                    continue
                if "error" in obj and not obj.get("choices"):
                    err = obj["error"]
                    raise StreamError(err.get("message", str(err)) if isinstance(err, dict) else str(err))
                text = ""
                ntok = 0
                for ch in obj.get("choices") or ():
                    delta = ch.get("delta")
                    piece = (delta.get("content") or "") if delta else (ch.get("text") or "")
                    text += piece
                    ids = ch.get("token_ids")
                    ntok += len(ids) if ids else (1 if piece else 0)
                if self.lag_sink is not None and "ts" in obj:
                    self.lag_sink.append(time.time() - obj["ts"])
                out.append((text, ntok, obj.get("usage"), False))
        return out


class StreamError(Exception):
    """An error event inside an otherwise 200 stream."""


async def stream_one(client: httpx.AsyncClient, base_url: str, req: TraceRequest, body: dict[str, Any],
                     scheduled_s: float, t0: float, timeout_s: float,
                     lag_sink: list[float] | None = None) -> tuple[RequestRecord, str]:
    """Send one streamed request; return its record and the generated text (agent turns reuse it)."""
    sent = time.perf_counter()
    times: list[float] = []
    parts: list[str] = []
    usage: dict | None = None
    nbytes = 0
    done = False
    status = 0
    error = ""
    bps = req.read_bytes_per_s
    try:
        # One deadline for the whole request, not one per socket read: a per-read timeout costs a timer
        # (anyio: a cancel scope) on every token.
        async with asyncio.timeout(timeout_s), client.stream(
                "POST", base_url + PATHS[req.endpoint], json=body, headers={CLASS_HEADER: req.cls},
                timeout=httpx.Timeout(None, connect=10.0, write=30.0)) as resp:
            status = resp.status_code
            if status != 200:
                text = (await resp.aread()).decode(errors="replace")
                error = f"HTTP {status}: {_error_text(text)}"
            else:
                parser = SSEParser(lag_sink)
                async for chunk in resp.stream:  # raw body bytes: aiter_raw's re-chunking cost ~25 % of per-token CPU
                    now = time.perf_counter()
                    nbytes += len(chunk)
                    for text, ntok, u, end in parser.feed(chunk):
                        if ntok:
                            times.extend([now] * ntok)  # tokens that came together: gaps of 0
                        if text:
                            parts.append(text)
                        if u:
                            usage = u
                        done = done or end
                    if bps:
                        # Pull no faster than the throttle: the socket's small buffer fills meanwhile.
                        await asyncio.sleep(len(chunk) / bps)
                if not done:
                    error = f"stream cut after {len(times)} tokens (no [DONE])"
    except StreamError as exc:
        error = f"error event in stream after {len(times)} tokens: {exc}"
    except httpx.ConnectError as exc:
        error = f"connect failed (server down?): {_why(exc)}"
    except TimeoutError:
        error = f"timeout after {time.perf_counter() - sent:.1f}s (request deadline {timeout_s:g}s) after {len(times)} tokens"
    except httpx.TimeoutException as exc:
        error = f"timeout after {time.perf_counter() - sent:.1f}s ({exc.__class__.__name__}) after {len(times)} tokens"
    except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
        if not status:  # accepted, then closed before any response: e.g. Docker's port proxy, engine gone
            error = f"connection closed before a response (server down?): {_why(exc)}"
        else:
            error = f"stream cut after {len(times)} tokens: {_why(exc)}"
    except httpx.HTTPError as exc:
        error = f"{exc.__class__.__name__}: {exc}"
    end = time.perf_counter()
    ok = not error and bool(times)
    if not error and not times:
        error = "stream ended with no content token"
    rec = RequestRecord(
        id=req.id, cls=req.cls, endpoint=req.endpoint, scheduled_s=scheduled_s, sent_s=sent - t0, end_s=end - t0,
        status="ok" if ok else "error", http_status=status, error=error,
        ttft_s=(times[0] - sent) if times else None,
        itl_s=tuple(b - a for a, b in zip(times, times[1:])),
        e2e_s=(end - sent) if ok else None,
        prompt_tokens=(usage or {}).get("prompt_tokens"), output_tokens=(usage or {}).get("completion_tokens"),
        streamed_tokens=len(times), bytes_read=nbytes, read_bytes_per_s=bps, session=req.session, turn=req.turn)
    return rec, "".join(parts)


def _why(exc: Exception) -> str:
    return str(exc) or exc.__class__.__name__


def _error_text(text: str) -> str:
    try:
        obj = json.loads(text)
        err = obj.get("error", obj)
        msg = err.get("message", text) if isinstance(err, dict) else str(err)
    except (ValueError, AttributeError):
        msg = text
    return " ".join(str(msg).split())[:300]


SHARD = 32  # connections per httpx client
_SSL: list = []


def _ssl_context():
    # One context for all shards: building one loads the CA bundle (~30 ms of CPU each).
    if not _SSL:
        _SSL.append(httpx.create_ssl_context())
    return _SSL[0]


class ClientPool:
    """httpx clients in shards of SHARD connections, each request on the least busy shard.

    httpcore's pool scans every connection on every request and response (quadratic: at 250
    streams it cost ~0.8 ms CPU per token); shards keep each scan short.
    """

    def __init__(self, connections: int, recv_buffer: int = 0) -> None:
        n = max(1, -(-connections // SHARD))
        self.clients = [self._client(min(SHARD, connections), recv_buffer) for _ in range(n)]
        self.busy = [0] * n

    @staticmethod
    def _client(limit: int, recv_buffer: int) -> httpx.AsyncClient:
        limits = httpx.Limits(max_connections=limit, max_keepalive_connections=limit)
        # A small receive buffer (slow readers) so unread bytes back up into the server, not into our memory.
        return httpx.AsyncClient(transport=transport.transport(limits, _ssl_context(), recv_buffer))

    @contextlib.asynccontextmanager
    async def client(self):
        i = min(range(len(self.busy)), key=self.busy.__getitem__)
        self.busy[i] += 1
        try:
            yield self.clients[i]
        finally:
            self.busy[i] -= 1

    async def aclose(self) -> None:
        for c in self.clients:
            await c.aclose()


async def replay(trace: Trace, base_url: str, model: str, out: Path | None, opts: ReplayOptions = ReplayOptions(),
                 on_record: Callable[[RequestRecord], None] | None = None,
                 lag_sink: list[float] | None = None) -> list[RequestRecord]:
    """Replay every request of the trace; append each record to `out` as it finishes."""
    base_url = base_url.rstrip("/")
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.touch()
    cap = asyncio.Semaphore(opts.max_concurrency)
    recv = max((r.recv_buffer_bytes for r in trace.requests if r.read_bytes_per_s), default=4096)
    results: list[RequestRecord] = []
    followers: dict[str, list[TraceRequest]] = {}
    for r in trace.requests:
        if r.after:
            followers.setdefault(r.after, []).append(r)
    conversations: dict[str, list[dict[str, str]]] = {}
    tasks: set[asyncio.Task] = set()

    fast = ClientPool(opts.max_concurrency)
    slow = ClientPool(opts.max_concurrency, recv or 4096) if any(r.read_bytes_per_s for r in trace.requests) else fast
    try:
        t0 = time.perf_counter()

        async def run(req: TraceRequest, at: float) -> None:
            delay = t0 + at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            messages = None
            if req.session and req.endpoint == "chat":
                conv = conversations.setdefault(req.session, list(req.messages))
                if req.turn > 0:
                    conv.append({"role": "tool", "content": req.tool_result})
                messages = list(conv)
            body = request_body(req, model, messages, opts)
            async with cap, (slow if req.read_bytes_per_s else fast).client() as client:
                rec, text = await stream_one(client, base_url, req, body, at, t0, opts.request_timeout_s, lag_sink)
            if req.session and req.endpoint == "chat":
                conversations[req.session].append({"role": "assistant", "content": text})
            results.append(rec)
            if out:
                recmod.append(out, rec)
            if on_record:
                on_record(rec)
            for nxt in followers.get(req.id, ()):
                spawn(nxt, rec.end_s + nxt.think_s * opts.time_scale)

        def spawn(req: TraceRequest, at: float) -> None:
            task = asyncio.create_task(run(req, at))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        for r in trace.requests:
            if not r.after:
                spawn(r, r.t * opts.time_scale)
        while tasks:
            await asyncio.gather(*list(tasks))
    finally:
        await fast.aclose()
        if slow is not fast:
            await slow.aclose()
    return results


def loop_factory():
    """uvloop where installed: the event loop's own cost is most of the client's per-token CPU."""
    try:
        import uvloop
        return uvloop.new_event_loop
    except ImportError:
        return None


def run(trace: Trace, base_url: str, model: str, out: Path | None, opts: ReplayOptions = ReplayOptions(),
        on_record: Callable[[RequestRecord], None] | None = None,
        lag_sink: list[float] | None = None) -> list[RequestRecord]:
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(replay(trace, base_url, model, out, opts, on_record, lag_sink))
