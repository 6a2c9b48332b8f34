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
import os
import contextlib
import json
import signal
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

try:  # orjson where installed (the host: a dependency); the peer image's replay falls back to json
    from orjson import JSONDecodeError, loads as json_loads
except ImportError:
    from json import JSONDecodeError, loads as json_loads

from model.errors import UsageError
from smoke import records as recmod, transport
from smoke.records import RequestRecord
from smoke.workload import Trace, TraceRequest

PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}
# The request class travels in a header, as an application gateway would set it: a router in front
# of several pools (smoke/router) sends each class to its pool; a plain server ignores it.
CLASS_HEADER = "X-Request-Class"
# Each request's trace id (after ReplayOptions.request_id_prefix), so a router's log names the
# replica that served it (the capacity runner's head-of-line figure needs request → replica).
ID_HEADER = "X-Request-Id"


# Engine extensions are sent only where the engine's adapter declares them (engines/NAME.toml
# [extensions]): vLLM's ignore_eos (fixed output lengths: a random-weight model stops anywhere
# otherwise) and return_token_ids (each chunk lists its token ids, so a chunk that carries several
# tokens times several, with gaps of 0). Other engines get the OpenAI contract only.
VLLM_EXTENSIONS = ("ignore_eos", "return_token_ids")
# The agent loop's tool: every turn after the first answers a call of it.
TOOL_NAME = "lookup"


@dataclass(frozen=True)
class ReplayOptions:
    max_concurrency: int = 16
    request_timeout_s: float = 600.0     # the whole request, first byte to [DONE]
    temperature: float | None = None  # None: the server's default
    # What the engine's adapter declares (engine_extensions tells for a URL); vLLM's by default, the
    # engine the project starts itself (smoke stage, sweep, benches).
    extensions: tuple[str, ...] = VLLM_EXTENSIONS
    time_scale: float = 1.0          # >1 stretches the schedule (slower arrivals)
    headers: tuple[tuple[str, str], ...] = ()   # e.g. Authorization (never written to a record)
    # The served model's tokenizer.json: output tokens where the server sends no usage. None: the
    # project's test model's, when that is what is served and it is on disk.
    tokenizer: Path | None = None
    # Prepended to each request's trace id in its X-Request-Id ("" = a fresh random one per replay):
    # ids stay unique on a server that serves several replays of one trace (vLLM takes the header
    # as its own request id).
    request_id_prefix: str = ""


def request_body(req: TraceRequest, model: str, messages: Sequence[dict[str, Any]] | None, opts: ReplayOptions) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "max_tokens": req.max_tokens, "stream": True,
                            "stream_options": {"include_usage": True}}
    if opts.temperature is not None:
        body["temperature"] = opts.temperature
    for ext in opts.extensions or ():
        body[ext] = True
    if req.endpoint == "chat":
        body["messages"] = list(messages if messages is not None else req.messages)
    else:
        body["prompt"] = req.prompt
    return body


class SSEParser:
    """Incremental SSE parser for OpenAI streams: feed bytes, get (content, usage, done) events."""

    def __init__(self, lag_sink: list[float] | None = None) -> None:
        self.buf = b""
        self.tool_calls: dict[int, dict[str, str]] = {}
        # Sources that stamp events with their wall-clock send time ("ts"): how late we read each one.
        self.lag_sink = lag_sink

    def feed(self, chunk: bytes) -> list[tuple[str, int, dict | None, bool]]:
        """Events as (text, tokens in it, usage, done); tokens from token_ids where sent, else 1 per text.

        The per-event count times the tokens (TTFT, gaps); the record's token count is usage's.
        Tool calls streamed in deltas are kept in `tool_calls` (id, name, arguments so far).
        """
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
                    if delta and delta.get("tool_calls"):
                        self._tool_deltas(delta["tool_calls"])
                    text += piece
                    ids = ch.get("token_ids")
                    ntok += len(ids) if ids else (1 if piece else 0)
                if self.lag_sink is not None and "ts" in obj:
                    self.lag_sink.append(time.time() - obj["ts"])
                out.append((text, ntok, obj.get("usage"), False))
        return out


    def _tool_deltas(self, calls: list[dict]) -> None:
        for c in calls:
            slot = self.tool_calls.setdefault(c.get("index", 0), {"id": "", "name": "", "arguments": ""})
            fn = c.get("function") or {}
            slot["id"] = c.get("id") or slot["id"]
            slot["name"] = fn.get("name") or slot["name"]
            slot["arguments"] += fn.get("arguments") or ""


class StreamError(Exception):
    """An error event inside an otherwise 200 stream."""


@dataclass(frozen=True)
class Reply:
    """What an agent turn needs of the answer: its text and the tool calls the server made."""
    text: str
    tool_calls: tuple[dict[str, str], ...] = ()


async def stream_one(client: httpx.AsyncClient, base_url: str, req: TraceRequest, body: dict[str, Any],
                     scheduled_s: float, t0: float, timeout_s: float,
                     lag_sink: list[float] | None = None, headers: dict[str, str] | None = None,
                     count_tokens: Callable[[str], int] | None = None) -> tuple[RequestRecord, Reply]:
    """Send one streamed request; return its record and the reply (agent turns reuse it).

    Output tokens come from the server's usage; where it sends none, from the model's tokenizer
    over the generated text (count_tokens); never from the number of events.
    """
    sent = time.perf_counter()
    times: list[float] = []
    parts: list[str] = []
    usage: dict | None = None
    nbytes = 0
    done = False
    status = 0
    error = ""
    bps = req.read_bytes_per_s
    parser = SSEParser(lag_sink)
    try:
        # One deadline for the whole request, not one per socket read: a per-read timeout costs a timer
        # (anyio: a cancel scope) on every token.
        async with asyncio.timeout(timeout_s), client.stream(
                "POST", base_url + PATHS[req.endpoint], json=body, headers={**(headers or {}), CLASS_HEADER: req.cls},
                timeout=httpx.Timeout(None, connect=10.0, write=30.0)) as resp:
            status = resp.status_code
            if status != 200:
                text = (await resp.aread()).decode(errors="replace")
                error = f"HTTP {status}: {_error_text(text)}"
            else:
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
    text = "".join(parts)
    calls = tuple(parser.tool_calls[k] for k in sorted(parser.tool_calls))
    ok = not error and bool(times or calls)
    if not error and not ok:
        error = "stream ended with no content token"
    out_tokens, source = (usage or {}).get("completion_tokens"), "usage"
    if out_tokens is None:
        out_tokens, source = (count_tokens(text), "tokenizer") if count_tokens and ok else (None, "")
    rec = RequestRecord(
        id=req.id, cls=req.cls, endpoint=req.endpoint, scheduled_s=scheduled_s, sent_s=sent - t0, end_s=end - t0,
        status="ok" if ok else "error", http_status=status, error=error,
        ttft_s=(times[0] - sent) if times else None,
        itl_s=tuple(b - a for a, b in zip(times, times[1:])),
        e2e_s=(end - sent) if ok else None,
        prompt_tokens=(usage or {}).get("prompt_tokens"), output_tokens=out_tokens, tokens_from=source,
        streamed_tokens=len(times), bytes_read=nbytes, read_bytes_per_s=bps, session=req.session, turn=req.turn)
    return rec, Reply(text, calls)


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


def ssl_context():
    # One context for all shards: building one loads the CA bundle (~30 ms of CPU each). The
    # system's bundle (ssl's default paths, SSL_CERT_FILE honoured), not one shipped with a package.
    if not _SSL:
        import ssl
        _SSL.append(ssl.create_default_context())
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
        return httpx.AsyncClient(transport=transport.transport(limits, ssl_context(), recv_buffer))

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
    conversations: dict[str, list[dict[str, Any]]] = {}
    pending_call: dict[str, str] = {}   # session -> the id of the tool call its next turn answers
    tasks: set[asyncio.Task] = set()
    headers = dict(opts.headers)
    id_prefix = opts.request_id_prefix or f"{uuid.uuid4().hex[:12]}-"
    count_tokens = tokenizer_counter(opts.tokenizer or test_model_tokenizer(model))

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
                    conv.append(tool_result(pending_call.pop(req.session, ""), req.tool_result))
                messages = list(conv)
            body = request_body(req, model, messages, opts)
            async with cap, (slow if req.read_bytes_per_s else fast).client() as client:
                rec, reply = await stream_one(client, base_url, req, body, at, t0, opts.request_timeout_s, lag_sink,
                                              {**headers, ID_HEADER: id_prefix + req.id}, count_tokens)
            if req.session and req.endpoint == "chat":
                msg, call_id = assistant_turn(req, reply)
                conversations[req.session].append(msg)
                pending_call[req.session] = call_id
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


def assistant_turn(req: TraceRequest, reply: Reply) -> tuple[dict[str, Any], str]:
    """The assistant message an agent turn adds, and the id of the tool call the next turn answers.

    The agent calls its tool every turn: the server's own call where it made one, else one of ours
    (the test model's random weights never choose a tool), so every tool result that follows
    answers a call in the conversation by its tool_call_id.
    """
    call = reply.tool_calls[0] if reply.tool_calls else None
    call_id = (call or {}).get("id") or f"call_{req.id}"
    fn = {"name": (call or {}).get("name") or TOOL_NAME, "arguments": (call or {}).get("arguments") or "{}"}
    msg = {"role": "assistant", "content": reply.text,
           "tool_calls": [{"id": call_id, "type": "function", "function": fn}]}
    return msg, call_id


def tool_result(call_id: str, content: str) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "content": content}


def api_headers(api_key_env: str = "") -> dict[str, str]:
    """The Authorization header from the environment variable the user named (never logged or stored)."""
    if not api_key_env:
        return {}
    key = os.environ.get(api_key_env)
    if not key:
        raise UsageError(f"--api-key-env: environment variable {api_key_env} is not set (or empty)")
    return {"Authorization": f"Bearer {key}"}


def engine_extensions(base_url: str, model: str, headers: dict[str, str] | None = None) -> tuple[str, ...]:
    """The extensions the adapter of the engine at base_url declares, the engine told by what its
    /v1/models says owns `model`; () for an engine the project does not know (plain OpenAI)."""
    from engines.adapters import by_owner
    try:
        data = httpx.get(base_url.rstrip("/") + "/v1/models", headers=headers, timeout=10,
                         verify=ssl_context()).json().get("data") or []
    except (httpx.HTTPError, ValueError, AttributeError):
        return ()
    owner = next((m.get("owned_by", "") for m in data if isinstance(m, dict) and m.get("id") == model), "")
    ad = by_owner(owner)
    return tuple(ad.request_extras()) if ad else ()


def test_model_tokenizer(model: str) -> Path | None:
    """The project's test model's tokenizer.json, when `model` is that model and it is on disk."""
    try:
        from model import settings
    except ImportError:  # the peer image's copy of the replay has no project around it
        return None
    if model != "tiny-llama":
        return None
    found = sorted(settings.models().glob("*-llama-*/tokenizer.json"))
    return found[0] if found else None


def tokenizer_counter(path: Path | None) -> Callable[[str], int] | None:
    """Tokens in a text by the model's own tokenizer (the `tokenizers` package), or None."""
    if path is None or not Path(path).is_file():
        return None
    try:
        from tokenizers import Tokenizer
    except ImportError:
        return None
    tok = Tokenizer.from_file(str(path))
    return lambda text: len(tok.encode(text, add_special_tokens=False).ids)


def loop_factory():
    """uvloop where installed: the event loop's own cost is most of the client's per-token CPU."""
    try:
        import uvloop
        return uvloop.new_event_loop
    except ImportError:
        return None


async def interruptible(coro):
    """Await coro; a SIGTERM cancels it at an await and then raises KeyboardInterrupt, as asyncio.Runner
    does for SIGINT. The CLI's own SIGTERM handler raises wherever Python is, which inside a transport's
    callback makes the loop print "Fatal error on transport" and a traceback before the interrupt."""
    loop, task, hit = asyncio.get_running_loop(), asyncio.current_task(), []
    prev = signal.getsignal(signal.SIGTERM)
    try:
        loop.add_signal_handler(signal.SIGTERM, lambda: (hit.append(1), task.cancel()))
    except (ValueError, RuntimeError, NotImplementedError):    # not the main thread: leave it to the caller
        return await coro
    try:
        return await coro
    except asyncio.CancelledError:
        if hit:
            raise KeyboardInterrupt("SIGTERM") from None
        raise
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
        signal.signal(signal.SIGTERM, prev)      # remove_signal_handler leaves SIG_DFL


def run(trace: Trace, base_url: str, model: str, out: Path | None, opts: ReplayOptions = ReplayOptions(),
        on_record: Callable[[RequestRecord], None] | None = None,
        lag_sink: list[float] | None = None) -> list[RequestRecord]:
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(interruptible(replay(trace, base_url, model, out, opts, on_record, lag_sink)))
