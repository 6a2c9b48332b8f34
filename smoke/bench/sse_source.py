"""A small real HTTP/1.1 server that streams OpenAI-style SSE tokens at a fixed pace, on loopback.

It is the source for `invoke bench replay-capacity`: fast and cheap enough that the client is what
gets measured. It answers POST /v1/chat/completions and /v1/completions (keep-alive, chunked), one
token event every --interval seconds (0: as fast as the socket takes them), then usage and [DONE].
Run: python -m smoke.bench.sse_source --interval 0.25  → prints "PORT <n>" once listening.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time

HOST = "127.0.0.1"  # loopback only


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, interval: float) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            body = json.loads(await reader.readexactly(length)) if length else {}
            chat = b"/chat/" in head.split(b"\r\n", 1)[0]
            n = int(body.get("max_tokens", 16))
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
            # Each event carries its send time ("ts") so the client can tell its own lag from ours.
            head_ev = (b'data: {"object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":" tok"}}],"ts":'
                       if chat else b'data: {"object":"text_completion","choices":[{"index":0,"text":" tok"}],"ts":')
            loop = asyncio.get_running_loop()
            start = loop.time()
            for k in range(n):
                if interval:
                    # An absolute schedule: our own jitter does not accumulate into the stream.
                    await asyncio.sleep(max(0.0, start + (k + 1) * interval - loop.time()))
                writer.write(_chunk(head_ev + b"%.6f}\n\n" % time.time()))
                await writer.drain()
            usage = {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": n, "total_tokens": n + 1}}
            writer.write(_chunk(b"data: " + json.dumps(usage).encode() + b"\n\n") + _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


async def serve(port: int, interval: float) -> None:
    server = await asyncio.start_server(lambda r, w: handle(r, w, interval), HOST, port, backlog=8192)
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--interval", type=float, default=0.25)
    a = ap.parse_args(argv)
    _raise_fd_limit()
    try:
        asyncio.run(serve(a.port, a.interval))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
