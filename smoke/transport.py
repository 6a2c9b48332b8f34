"""httpx's transport on asyncio streams instead of anyio's: the replay's per-token CPU.

A streamed token costs the client one socket read. Through httpcore's anyio backend each read
opens a cancel scope (`anyio.fail_after`, even with no timeout) and toggles `resume_reading()` /
`pause_reading()` on the transport (two epoll updates); measured on this 2-core box, that was
~40 % of the replay's CPU per paced token. `asyncio.StreamReader` keeps reading into a buffer
bounded by its `limit` (it pauses the transport above 2 x limit), so a read of buffered bytes is a
slice, and an empty buffer waits on one future. Slow readers keep their backpressure: their
connections get a small limit as well as a small SO_RCVBUF.
The same change is proposed upstream (pydantic/httpx2 PR 1170, "native asyncio network backend");
drop this module when httpx ships one.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx

# asyncio.StreamReader's buffer: pause reading above 2 x this (the default 64 KiB limit for fast readers).
FAST_LIMIT = 64 * 1024


class AsyncioStream(httpcore.AsyncNetworkStream):
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        try:
            if timeout is None:
                return await self.reader.read(max_bytes)
            async with asyncio.timeout(timeout):
                return await self.reader.read(max_bytes)
        except TimeoutError as exc:
            raise httpcore.ReadTimeout(str(exc)) from exc
        except OSError as exc:
            raise httpcore.ReadError(str(exc) or exc.__class__.__name__) from exc

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        try:
            self.writer.write(buffer)
            async with asyncio.timeout(timeout):
                await self.writer.drain()
        except TimeoutError as exc:
            raise httpcore.WriteTimeout(str(exc)) from exc
        except (OSError, RuntimeError) as exc:  # RuntimeError: write on a closed transport
            raise httpcore.WriteError(str(exc) or exc.__class__.__name__) from exc

    async def aclose(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError, asyncio.CancelledError):
            await self.writer.wait_closed()

    async def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                        timeout: float | None = None) -> httpcore.AsyncNetworkStream:
        try:
            await self.writer.start_tls(ssl_context, server_hostname=server_hostname, ssl_handshake_timeout=timeout)
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            await self.aclose()
            raise httpcore.ConnectError(str(exc) or exc.__class__.__name__) from exc
        return self

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            # The pool asks this of idle keep-alive connections: closed by the server, or not ours any more.
            return self.reader.at_eof() or self.writer.is_closing()
        key = {"ssl_object": "ssl_object", "client_addr": "sockname", "server_addr": "peername", "socket": "socket"}.get(info)
        return self.writer.get_extra_info(key) if key else None


class AsyncioBackend(httpcore.AsyncNetworkBackend):
    def __init__(self, limit: int = FAST_LIMIT) -> None:
        self.limit = limit

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                          socket_options: Iterable[tuple] | None = None) -> httpcore.AsyncNetworkStream:
        async def connect():
            sock = await _connect_socket(host, port, local_address, socket_options or ())
            return await asyncio.open_connection(sock=sock, limit=self.limit)
        return await _connected(connect(), timeout)

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Iterable[tuple] | None = None) -> httpcore.AsyncNetworkStream:
        return await _connected(asyncio.open_unix_connection(path, limit=self.limit), timeout)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


async def _connected(opening, timeout: float | None) -> AsyncioStream:
    """Await an asyncio (reader, writer) opening under `timeout`, with httpcore's connect errors."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await opening
    except TimeoutError as exc:
        raise httpcore.ConnectTimeout(str(exc) or "connect timed out") from exc
    except OSError as exc:
        raise httpcore.ConnectError(str(exc) or exc.__class__.__name__) from exc
    return AsyncioStream(reader, writer)


async def _connect_socket(host: str, port: int, local_address: str | None, options: Iterable[tuple]) -> socket.socket:
    """A connected non-blocking socket with the options set before connect (SO_RCVBUF must be)."""
    loop = asyncio.get_running_loop()
    last: OSError | None = None
    for family, type_, proto, _, addr in await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        sock = socket.socket(family, type_, proto)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for opt in options:
                sock.setsockopt(*opt)
            if local_address:
                sock.bind((local_address, 0))
            await loop.sock_connect(sock, addr)
            return sock
        except OSError as exc:
            sock.close()
            last = exc
        except BaseException:
            sock.close()
            raise
    raise last or OSError(f"no address for {host}:{port}")


def transport(limits: httpx.Limits, ssl_context: ssl.SSLContext, recv_buffer: int = 0) -> httpx.AsyncHTTPTransport:
    """An httpx transport whose connections run on AsyncioBackend (small buffers when recv_buffer is set)."""
    opts = [(socket.SOL_SOCKET, socket.SO_RCVBUF, recv_buffer)] if recv_buffer else None
    t = httpx.AsyncHTTPTransport(verify=ssl_context)
    # httpx takes no network backend; its pool does. The pool httpx built is replaced by one with the
    # same arguments plus the backend (limits and socket options go to this one only).
    t._pool = httpcore.AsyncConnectionPool(
        ssl_context=ssl_context, max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections, keepalive_expiry=limits.keepalive_expiry,
        socket_options=opts, network_backend=AsyncioBackend(min(FAST_LIMIT, recv_buffer) if recv_buffer else FAST_LIMIT))
    return t
