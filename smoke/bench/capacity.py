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
import contextlib
import os
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable
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
    steady_cpu_ms_per_token: float = float("nan")  # measured in a Window, when one was asked for

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s if self.wall_s else 0.0

    @property
    def cpu_ms_per_token(self) -> float:
        return 1000 * self.client_cpu_s / self.tokens if self.tokens else float("inf")

    def sustained(self, slack_ms: float = 100.0) -> bool:
        # Every stream completed, and the client kept pace: 99 % of tokens read within 100 ms of being sent.
        return self.errors == 0 and self.lag_p99_ms <= slack_ms


class Window:
    """CPU seconds and tokens between two instants of a run, sampled from a timer thread.

    Placed after the last stream has opened and before the first one ends, it holds no connect,
    request or teardown work: the steady-state cost of reading tokens.
    """

    def __init__(self, start_s: float, end_s: float, count: Callable[[], int]) -> None:
        self.count, self.samples = count, []
        self.timers = [threading.Timer(t, self._sample) for t in (start_s, end_s)]

    def _sample(self) -> None:
        self.samples.append((time.process_time(), self.count()))

    def __enter__(self) -> Window:
        for t in self.timers:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        for t in self.timers:
            t.cancel()

    @property
    def ms_per_token(self) -> float:
        if len(self.samples) < 2 or self.samples[1][1] <= self.samples[0][1]:
            return float("nan")
        (c0, n0), (c1, n1) = self.samples
        return 1000 * (c1 - c0) / (n1 - n0)


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


def steady_window(tokens: int, interval: float, ramp_s: float) -> tuple[float, float]:
    """From after the last stream's second token to half a second before the first stream ends."""
    return ramp_s + 2 * interval + 0.5, tokens * interval - 0.5


def measure(url: str, streams: int, tokens: int, interval: float, ramp_s: float = 1.0,
            window: bool = False) -> CapacityResult:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    opts = replay.ReplayOptions(max_concurrency=streams, request_timeout_s=120.0)
    cpu0, t0 = time.process_time(), time.perf_counter()
    lags: list[float] = []  # one entry per event read: the window's token count
    with Window(*steady_window(tokens, interval, ramp_s), lags.__len__) if window else contextlib.nullcontext() as w:
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
                          peak_open(recs), w.ms_per_token if window else float("nan"))


def bare_ms_per_token(url: str, streams: int, tokens: int, interval: float, ramp_s: float) -> float:
    """Steady-state CPU per token reading the same streams with bare asyncio sockets: no HTTP, no SSE.

    The floor of any Python client on this machine (an event-loop wake and a read per token), so
    the client's figure can be read as a ratio measured in the same run.
    """
    host, port = url.rsplit("/", 1)[1].split(":")
    body = b'{"max_tokens": %d, "messages": []}' % tokens
    head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % len(body)

    async def one(delay: float) -> None:
        await asyncio.sleep(delay)
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(head + body)
        while (data := await reader.read(65536)) and not data.endswith(b"0\r\n\r\n"):  # till the last chunk
            reads.append(None)  # paced: one event per read
        writer.close()

    async def all_() -> None:
        await asyncio.gather(*(one(ramp_s * i / streams) for i in range(streams)))

    reads: list[None] = []
    with Window(*steady_window(tokens, interval, ramp_s), reads.__len__) as w, \
            asyncio.Runner(loop_factory=replay.loop_factory()) as runner:
        runner.run(replay.interruptible(all_()))
    return w.ms_per_token


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
                 per_token_streams: int = 500, per_token_rate: float = 2000.0, paces: tuple[float, ...] = (1.0, 0.2, 0.05), reps: int = 3,
                 ramp_s: float = 10.0, echo=print) -> dict:
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
    # Per-token cost in the steady state (a Window: no connect/request/teardown work in it). It
    # depends on the pace: a token that comes alone finds the loop asleep and its caches cold.
    # So several paces, each beside its floor (bare asyncio socket reads of the same streams),
    # interleaved `reps` times in one run; medians reported.
    paced = {}
    for pace in paces:
        n = min(per_token_streams, int(per_token_rate * pace))  # <= per_token_rate tokens/s: the source keeps up
        toks = int(min(200, max(20, 10 / pace)))                # >= ~10 s of streaming per run
        client, floor = [], []
        with Source(pace) as src:
            for _ in range(reps):
                client.append(measure(src.url, n, toks, pace, ramp_s=2.0, window=True).steady_cpu_ms_per_token)
                floor.append(bare_ms_per_token(src.url, n, toks, pace, ramp_s=2.0))
        c, f = float(np.median(client)), float(np.median(floor))
        paced[pace] = {"streams": n, "tokens_per_stream": toks, "cpu_ms_per_token": c, "floor_cpu_ms_per_token": f,
                       "runs": client, "floor_runs": floor}
        echo(f"paced, one token per read every {pace * 1000:.0f} ms ({n} streams, steady state, median of {reps}): "
             f"client {c:.3f} ms CPU per token (runs {', '.join(f'{x:.3f}' for x in client)}); bare socket reads "
             f"{f:.3f} ms: the client costs {c / f:.1f}x the floor")
    with Source(0.0) as src:
        b = measure(src.url, burst_streams, burst_tokens, 0.0, ramp_s=0.0)
        echo(f"burst: {burst_streams} streams x {burst_tokens} tokens as fast as possible: {b.tokens_per_s:.0f} tok/s, "
             f"{b.cpu_ms_per_token:.4f} ms client CPU/token")
    best = max((r for r in results if r.sustained()), key=lambda r: r.streams, default=None)
    done = max((r for r in results if not r.errors), key=lambda r: r.streams, default=None)
    summary = {"max_sustained_streams": best.streams if best else 0,
               "max_completed_streams": done.streams if done else 0,
               "paced": paced,
               "burst_cpu_ms_per_token": b.cpu_ms_per_token,
               "burst_tokens_per_s": b.tokens_per_s, "levels": [r.__dict__ for r in results]}
    echo(f"client capacity: {summary['max_sustained_streams']} concurrent streams sustained (read lag p99 <= 100 ms), "
         f"{summary['max_completed_streams']} completed without error (goal >= 2000); per-token client CPU "
         + ", ".join(f"{v['cpu_ms_per_token']:.3f} ms at one token per {k * 1000:.0f} ms" for k, v in paced.items())
         + f", {b.cpu_ms_per_token:.4f} ms in bursts (goal < 0.1 ms)")
    return summary
