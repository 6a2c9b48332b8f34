"""`invoke bench replay-capacity`: how many concurrent streams and tokens/s the replay client sustains.

The source is smoke.bench.sse_source in its own process on 127.0.0.1, so this process's CPU time
(time.process_time) is the client's alone. Two measurements:
- streams: N streams at once, one token every `interval` s each; sustained when every stream
  completes and the client keeps pace (ITL p99 within interval + slack). Largest N is reported.
- per-token overhead: the client's CPU seconds / tokens received, at one token per socket read
  (paced streams, the worst case) and in bursts (interval 0, many tokens per read); beside the
  paced figure, in the same run, the floor: bare asyncio socket reads of the same streams.
"""

from __future__ import annotations

import asyncio
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np

from smoke import replay
from smoke.workload import Trace, TraceRequest


@dataclass(frozen=True)
class CapacityResult:
    streams: int
    interval_s: float
    tokens_per_stream: int
    ok: int
    errors: int
    wall_s: float
    client_cpu_s: float
    tokens: int
    itl_p50_ms: float
    itl_p99_ms: float
    lag_p50_ms: float = 0.0    # source's send stamp → this client's read: the client's own delay
    lag_p99_ms: float = 0.0
    first_error: str = ""
    peak_open: int = 0         # most streams open at one instant (from the records' send/end times)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s if self.wall_s else 0.0

    @property
    def cpu_ms_per_token(self) -> float:
        return 1000 * self.client_cpu_s / self.tokens if self.tokens else float("inf")

    def sustained(self, slack_ms: float = 100.0) -> bool:
        # Every stream completed, and the client kept pace: 99 % of tokens read within 100 ms of being sent.
        return self.errors == 0 and self.lag_p99_ms <= slack_ms


class Source:
    """The SSE source subprocess; stopped on exit."""

    def __init__(self, interval: float) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "smoke.bench.sse_source", "--interval", str(interval)],
                                     stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("PORT "):
            self.proc.kill()
            raise RuntimeError(f"sse_source did not start: {line!r}")
        self.url = f"http://127.0.0.1:{int(line.split()[1])}"

    def cpu_s(self) -> float:
        """The source's own CPU seconds so far (Linux /proc), to tell its share from the client's."""
        try:
            fields = open(f"/proc/{self.proc.pid}/stat").read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return float("nan")

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _trace(n: int, tokens: int, ramp_s: float) -> Trace:
    reqs = tuple(TraceRequest(id=f"c{i:05d}", t=ramp_s * i / max(n, 1), cls="capacity", endpoint="chat",
                              max_tokens=tokens, messages=({"role": "user", "content": "x"},)) for i in range(n))
    return Trace({"kind": "header", "mix": "capacity"}, reqs)


def measure(url: str, streams: int, tokens: int, interval: float, ramp_s: float = 1.0) -> CapacityResult:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    opts = replay.ReplayOptions(max_concurrency=streams, request_timeout_s=120.0)
    cpu0, t0 = time.process_time(), time.perf_counter()
    lags: list[float] = []
    recs = replay.run(_trace(streams, tokens, ramp_s), url, "capacity", None, opts, lag_sink=lags)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    ok = [r for r in recs if r.ok]
    gaps = [g for r in ok for g in r.itl_s]
    errs = [r.error for r in recs if not r.ok]
    return CapacityResult(streams, interval, tokens, len(ok), len(recs) - len(ok), wall, cpu,
                          sum(r.streamed_tokens for r in ok),
                          float(np.percentile(gaps, 50) * 1000) if gaps else 0.0,
                          float(np.percentile(gaps, 99) * 1000) if gaps else 0.0,
                          float(np.percentile(lags, 50) * 1000) if lags else 0.0,
                          float(np.percentile(lags, 99) * 1000) if lags else 0.0, errs[0] if errs else "",
                          peak_open(recs))


def bare_cpu_s(url: str, streams: int, tokens: int, ramp_s: float) -> float:
    """CPU seconds to read the same streams with bare asyncio sockets: no HTTP or SSE parsing.

    The floor of any Python client on this machine (event-loop wake + read per token), so the
    client's figure can be read as a ratio measured in the same run.
    """
    host, port = url.rsplit("/", 1)[1].split(":")
    body = b'{"max_tokens": %d, "messages": []}' % tokens
    head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % len(body)

    async def one(delay: float) -> None:
        await asyncio.sleep(delay)
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(head + body)
        while (data := await reader.read(65536)) and not data.endswith(b"0\r\n\r\n"):  # till the last chunk
            pass
        writer.close()

    async def all_() -> None:
        await asyncio.gather(*(one(ramp_s * i / streams) for i in range(streams)))

    cpu0 = time.process_time()
    with asyncio.Runner(loop_factory=replay.loop_factory()) as runner:
        runner.run(all_())
    return time.process_time() - cpu0


def peak_open(recs) -> int:
    """Most requests in flight at once: a sweep over send (+1) and end (-1) times, ends first on ties."""
    edges = sorted([(r.sent_s, 1) for r in recs] + [(r.end_s, -1) for r in recs], key=lambda e: (e[0], e[1]))
    best = cur = 0
    for _, d in edges:
        cur += d
        best = max(best, cur)
    return best


def run_capacity(levels: tuple[int, ...] = (500, 1000, 2000, 3000), interval: float = 1.0, tokens: int = 20,
                 burst_streams: int = 32, burst_tokens: int = 2000,
                 per_token_streams: int = 500, ramp_s: float = 10.0, echo=print) -> dict:
    results = []
    with Source(interval) as src:
        for n in levels:
            load, src0 = os.getloadavg()[0], src.cpu_s()
            r = measure(src.url, n, tokens, interval, ramp_s=ramp_s)
            results.append(r)
            echo(f"  (machine load average {load:.1f} on {os.cpu_count()} cores; the source used "
                 f"{src.cpu_s() - src0:.2f} s CPU in {r.wall_s:.0f} s)")
            echo(f"streams {n:5d}: ok {r.ok}/{n}, {r.peak_open} open at once, {r.tokens_per_s:7.0f} tok/s, client CPU {r.client_cpu_s:5.2f} s "
                 f"({100 * r.client_cpu_s / r.wall_s:3.0f}% of one core), {r.cpu_ms_per_token:.3f} ms CPU/token, "
                 f"ITL p50 {r.itl_p50_ms:.0f} ms p99 {r.itl_p99_ms:.0f} ms (pace {interval * 1000:.0f} ms), "
                 f"read lag p50 {r.lag_p50_ms:.1f} ms p99 {r.lag_p99_ms:.1f} ms"
                 f"{'' if r.sustained() else '  NOT sustained' + (': ' + r.first_error if r.first_error else '')}")
            if r.errors:
                break  # streams failing: more of them says nothing new
    # Per-token cost apart from per-request cost (connect, request, headers): the same streams with
    # fewer tokens; the CPU difference over the token difference is the client's cost of one token.
    # Beside it, in the same run, the floor: bare asyncio socket reads of the same streams.
    with Source(interval) as src:
        few = measure(src.url, per_token_streams, 2, interval, ramp_s=2.0)
        many = measure(src.url, per_token_streams, tokens, interval, ramp_s=2.0)
        bare = (bare_cpu_s(src.url, per_token_streams, tokens, 2.0) - bare_cpu_s(src.url, per_token_streams, 2, 2.0))
    per_token = 1000 * (many.client_cpu_s - few.client_cpu_s) / max(many.tokens - few.tokens, 1)
    per_request = 1000 * few.client_cpu_s / per_token_streams - 2 * per_token
    floor = 1000 * bare / (per_token_streams * (tokens - 2))
    echo(f"paced, one token per read: {per_token:.3f} ms client CPU per token, {per_request:.2f} ms per request "
         f"({per_token_streams} streams, 2 vs {tokens} tokens); bare socket reads of the same streams "
         f"{floor:.3f} ms per token: the client costs {per_token / floor:.1f}x the floor")
    with Source(0.0) as src:
        b = measure(src.url, burst_streams, burst_tokens, 0.0, ramp_s=0.0)
        echo(f"burst: {burst_streams} streams x {burst_tokens} tokens as fast as possible: {b.tokens_per_s:.0f} tok/s, "
             f"{b.cpu_ms_per_token:.4f} ms client CPU/token")
    best = max((r for r in results if r.sustained()), key=lambda r: r.streams, default=None)
    done = max((r for r in results if not r.errors), key=lambda r: r.streams, default=None)
    summary = {"max_sustained_streams": best.streams if best else 0,
               "max_completed_streams": done.streams if done else 0,
               "paced_cpu_ms_per_token": per_token, "cpu_ms_per_request": per_request,
               "paced_floor_cpu_ms_per_token": floor,
               "burst_cpu_ms_per_token": b.cpu_ms_per_token,
               "burst_tokens_per_s": b.tokens_per_s, "levels": [r.__dict__ for r in results]}
    echo(f"client capacity: {summary['max_sustained_streams']} concurrent streams sustained (read lag p99 <= 100 ms), "
         f"{summary['max_completed_streams']} completed without error (goal >= 2000); per-token client CPU {per_token:.3f} ms paced, "
         f"{b.cpu_ms_per_token:.4f} ms in bursts (goal < 0.1 ms)")
    return summary
