"""Claim C4 of issue 16 as a controlled probe: short prompts sent while the same replica prefills a
long one, with the long-prefill cap (the nearest vLLM 0.33 control) and without it.

Rules, and why a probe, in hol_probe.toml (pre-registered with this file; capacity_report's guard
refuses a report whose scoring files moved). This module builds the probe's trace, scores a run from
its records, drives the interleaved runs (resumable: runs.jsonl, as capacity_runner.Store keeps it) and
judges the claim with capacity.py's bootstrap and verdict rule. Pools come from an injected factory
(profile → a started one-replica session with capacity_pools' `replay`), so the driver is tested on
fakes and run on real replicas (`invoke hol-probe`).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from pathlib import Path
from statistics import median
from typing import Any, Literal

from pydantic import Field, model_validator

from model.errors import UsageError
from model.toml import Fault, NonEmptyStr, PositiveInt, PositiveNumber, Strict, load
from smoke import workload
from smoke.mix import Mix
from smoke.records import RequestRecord
from smoke.sweep import capacity as cap
from smoke.sweep.capacity_rules import Rules
from smoke.sweep.capacity_runner import Session, Store, compress, throttle_json

RULES_FILE = Path(__file__).with_name("hol_probe.toml")
RULES = {"idle": RULES_FILE, "busy": Path(__file__).with_name("hol_probe_busy.toml")}   # `invoke hol-probe --rules`


def scored(rules_file: Path = RULES_FILE) -> tuple[str, ...]:
    """The files a probe's verdict depends on: its rules, this module, and capacity's bootstrap and bounds."""
    return (f"smoke/sweep/{rules_file.name}", "smoke/sweep/hol_probe.py", "smoke/sweep/capacity.toml",
            "smoke/sweep/capacity.py")


SCORED = scored()


class _Probe(Strict):
    profiles: list[NonEmptyStr] = Field(min_length=2, max_length=2, description="two profile names")
    better: Literal["lower", "higher"]
    long_class: NonEmptyStr
    short_class: NonEmptyStr
    cpus: PositiveNumber | Literal["mean_lane"]
    trials: PositiveInt
    warmup_trials: int = Field(ge=0, description="a non-negative integer")
    period_s: PositiveNumber
    offset_s: list[float] = Field(min_length=2, max_length=2, description="[low, high] seconds")
    repetitions: int = Field(ge=3, description="an integer >= 3 (issue 16's minimum)")
    min_during: PositiveInt
    # A busy replica: a request of short_class with this many output tokens sent background_lead_s before
    # each long prompt, so the long one is never alone in the batch (0: none, the replica is idle).
    background_tokens: int = Field(default=0, ge=0, description="a non-negative integer")
    background_lead_s: float = Field(default=0.0, ge=0, description="a non-negative number of seconds")

    @model_validator(mode="after")
    def _fits(self) -> _Probe:
        lo, hi = self.offset_s
        if not 0 <= lo <= hi < self.period_s:
            raise Fault("offset_s", f"expected 0 <= low <= high < period_s ({self.period_s:g}), got {self.offset_s}")
        if self.background_lead_s + hi >= self.period_s:
            raise Fault("background_lead_s", f"expected background_lead_s + offset_s high < period_s ({self.period_s:g})")
        if self.min_during > self.trials - self.warmup_trials:
            raise Fault("min_during", f"expected at most trials - warmup_trials ({self.trials - self.warmup_trials})")
        return self


class ProbeRules(Strict):
    probe: _Probe


def load_rules(path: Path = RULES_FILE) -> ProbeRules:
    return load(ProbeRules, path)


def rules_file(name: str) -> Path:
    if name not in RULES:
        from model.errors import did_you_mean
        raise UsageError(f"--rules: no probe {name!r}{did_you_mean(name, RULES)} (probes: {', '.join(RULES)})")
    return RULES[name]


# --- the trace: pairs of a long and a short prompt ------------------------------------------------

def probe_trace(mix: Mix, rules: ProbeRules, seed: int, source: Path = RULES_FILE) -> workload.Trace:
    """`trials` pairs, pair i at i x period_s (+ background_lead_s): the long prompt, then the short one
    offset_s later, and with a background its request background_lead_s before the long one. Prompts
    are the mix's own (its generator, this seed); ids are p<i>-long / p<i>-short / p<i>-bg."""
    p = rules.probe
    names = {c.name for c in mix.classes}
    for key, cls in (("long_class", p.long_class), ("short_class", p.short_class)):
        if cls not in names:
            raise UsageError(f"{source}: probe.{key}: {cls!r} is not a class of mix {mix.name!r}")
    want = {p.long_class: p.trials, p.short_class: p.trials * (2 if p.background_tokens else 1)}
    weight = {c.name: (1.0 if c.name in want else 0.0) for c in mix.classes}
    m = replace(mix, classes=tuple(replace(c, weight=weight[c.name]) for c in mix.classes if weight[c.name]),
                duration_s=float(8 * max(want.values())), arrival=replace(mix.arrival, process="poisson", rate_rps=1.0))
    by: dict[str, list[workload.TraceRequest]] = {c: [] for c in want}
    for r in workload.generate(m, seed).requests:
        if not r.after and len(by[r.cls]) < want[r.cls]:
            by[r.cls].append(r)
    if short := [c for c, rs in by.items() if len(rs) < want[c]]:
        raise UsageError(f"probe: the mix gave too few {short[0]} requests for {p.trials} pairs (seed {seed})")
    rng = random.Random(f"{seed}:offsets")
    out: list[workload.TraceRequest] = []
    for i in range(p.trials):
        t = i * p.period_s + p.background_lead_s
        off = round(rng.uniform(*p.offset_s), 3)
        if p.background_tokens:
            bg = by[p.short_class][p.trials + i]
            out.append(replace(bg, id=f"p{i:02d}-bg", t=round(t - p.background_lead_s, 3), session="", turn=0,
                               max_tokens=p.background_tokens))
        out.append(replace(by[p.long_class][i], id=f"p{i:02d}-long", t=t, session="", turn=0))
        out.append(replace(by[p.short_class][i], id=f"p{i:02d}-short", t=round(t + off, 3), session="", turn=0))
    header = {"kind": "header", "probe": "hol", "seed": seed, "mix": mix.name, "mix_sha256": mix.sha256,
              "duration_s": p.trials * p.period_s, "requests": len(out)}
    return workload.Trace(header, tuple(out))


# --- one run: records → pairs → figures -------------------------------------------------------------

@dataclass(frozen=True)
class Pair:
    index: int
    short_ttft_ms: float | None      # None: the short failed or sent no token
    long_ttft_ms: float | None
    during: bool                     # the short left after its long and before the long's first token


def pairs(records: Sequence[RequestRecord], rules: ProbeRules) -> list[Pair]:
    """The measured pairs (warm-up pairs dropped), in order. With a background request, a pair counts
    only while the background still streamed when the short was sent (the long was not alone)."""
    by = {r.id: r for r in records}
    out = []
    for i in range(rules.probe.warmup_trials, rules.probe.trials):
        lg, sh, bg = by.get(f"p{i:02d}-long"), by.get(f"p{i:02d}-short"), by.get(f"p{i:02d}-bg")
        lt = lg.ttft_s if lg is not None and lg.ok else None
        st = sh.ttft_s if sh is not None and sh.ok else None
        during = lt is not None and st is not None and lg.sent_s <= sh.sent_s < lg.sent_s + lt
        if rules.probe.background_tokens:
            during = during and bg is not None and bg.ok and bg.end_s > sh.sent_s
        out.append(Pair(i, None if st is None else 1000 * st, None if lt is None else 1000 * lt, during))
    return out


@dataclass(frozen=True)
class Figures:
    measured: int
    counted: int
    short_ttft_p50_ms: float | None
    long_ttft_p50_ms: float | None
    failed: int                       # requests of measured pairs that failed or sent no token


def figures(ps: Sequence[Pair]) -> Figures:
    got = [x for x in ps if x.during]
    failed = sum((x.short_ttft_ms is None) + (x.long_ttft_ms is None) for x in ps)
    return Figures(len(ps), len(got), median(x.short_ttft_ms for x in got) if got else None,
                   median(x.long_ttft_ms for x in got) if got else None, failed)


def discard_reason(fig: Figures, run: cap.Run, rules: ProbeRules, cap_rules: Rules) -> str:
    """capacity.toml's bounds on the instrument, then the probe's own: enough pairs in the window."""
    if why := cap.discard_reason(run, cap_rules):
        return why
    if fig.counted < rules.probe.min_during:
        return f"{fig.counted} of {fig.measured} pairs overlapped (probe.min_during {rules.probe.min_during})"
    return ""


def as_run(records: Sequence[RequestRecord], m: Any, profile: str, seed: int, rules: ProbeRules) -> cap.Run:
    """The run as capacity.discard_reason reads it (the instrument's bounds; every pair counts as a request)."""
    n = rules.probe.trials - rules.probe.warmup_trials
    per = {rules.probe.long_class: n, rules.probe.short_class: n * (2 if rules.probe.background_tokens else 1)}
    return cap.Run(profile, 0.0, seed, per, per, m.usage.load1, m.usage.cores, m.usage.foreign_cpu_share,
                   cap.client_ttft_mean_ms(records), m.server_ttft_mean_ms, cap.send_lag_p99_ms(records))


# --- the driver ---------------------------------------------------------------------------------------

ProbeFactory = Callable[[str, str], AbstractContextManager[Session]]   # (profile, run tag) → one started replica


@dataclass
class Probe:
    rules: ProbeRules
    cap_rules: Rules
    mix: Mix
    store: Store
    pools: ProbeFactory
    say: Callable[[str], None] = print
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self.entries = self.store.entries()

    def _of(self, profile: str, k: int) -> list[dict]:
        return [e for e in self.entries if e["profile"] == profile and e["pass"] == k]

    def pending(self, profile: str, k: int) -> bool:
        es = self._of(profile, k)
        bad = sum(1 for e in es if e["discarded"])
        return len(es) == bad and bad <= self.cap_rules.discard.max_discards_per_rate

    def run(self) -> None:
        """A B A B ...: repetition k runs each profile once (a discarded run again, with the next seed)."""
        for k in range(1, self.rules.probe.repetitions + 1):
            for p in self.rules.probe.profiles:
                while self.pending(p, k):
                    self.one(p, k)

    def one(self, profile: str, k: int) -> dict:
        seed = k + 100 * len(self._of(profile, k))        # a repeat after a discard: new prompts and offsets
        trace = probe_trace(self.mix, self.rules, seed)
        tag = f"{profile}-p{k}-s{seed}"
        d = self.store.run_dir(tag)
        for f in d.iterdir():                             # an interrupted attempt of this very run
            f.unlink()
        self.say(f"[pass {k}/{self.rules.probe.repetitions}] {profile}, seed {seed}: {self.rules.probe.trials} pairs "
                 f"over {trace.header['duration_s']:.0f} s")
        t = self.clock()
        with self.pools(profile, tag) as session:
            m = session.replay(trace, d / "records.jsonl", f"{tag}-")
        fig = figures(pairs(m.records, self.rules))
        run = as_run(m.records, m, profile, seed, self.rules)
        why = discard_reason(fig, run, self.rules, self.cap_rules)
        compress(d / "records.jsonl")
        e = {"profile": profile, "pass": k, "seed": seed, "measured": fig.measured, "counted": fig.counted,
             "short_ttft_p50_ms": fig.short_ttft_p50_ms, "long_ttft_p50_ms": fig.long_ttft_p50_ms, "failed": fig.failed,
             "load1": list(run.load1), "cores": run.cores, "foreign_cpu_share": round(run.foreign_cpu_share, 4),
             "client_ttft_mean_ms": run.client_ttft_mean_ms, "server_ttft_mean_ms": run.server_ttft_mean_ms,
             "send_lag_p99_ms": run.send_lag_p99_ms, "throttle": throttle_json(m.throttle),
             "startup_s": round(session.startup_s, 1), "wall_s": round(self.clock() - t, 1),
             "dir": str(d.relative_to(self.store.root)), "discarded": why}
        self.store.append(e)
        self.entries.append(e)
        self.say(f"    -> short TTFT p50 {_ms(fig.short_ttft_p50_ms)} over {fig.counted}/{fig.measured} overlapping "
                 f"pairs; long TTFT p50 {_ms(fig.long_ttft_p50_ms)}; load {run.load1[0]:.2f}->{run.load1[1]:.2f}; "
                 f"foreign CPU {run.foreign_cpu_share:.0%}; client overhead "
                 f"{run.client_ttft_mean_ms - run.server_ttft_mean_ms:.0f} ms" + (f"; DISCARDED: {why}" if why else ""))
        return e


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f} ms"


# --- the verdict ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Judged:
    short: dict[str, cap.Interval]        # profile → mean of its valid runs' short TTFT p50 (ms)
    long: dict[str, cap.Interval]         # profile → the same for the long prompts (reported, not judged)
    verdict: cap.Verdict
    valid: dict[str, int]
    discarded: dict[str, int]


def judge(entries: Sequence[dict], rules: ProbeRules, cap_rules: Rules) -> Judged:
    a, b = rules.probe.profiles
    short, long_, valid, bad = {}, {}, {}, {}
    for p in (a, b):
        es = [e for e in entries if e["profile"] == p]
        ok = [e for e in es if not e["discarded"]]
        valid[p], bad[p] = len(ok), len(es) - len(ok)
        try:
            short[p] = cap.mean_ci([e["short_ttft_p50_ms"] for e in ok], cap_rules)
            long_[p] = cap.mean_ci([e["long_ttft_p50_ms"] for e in ok], cap_rules)
        except UsageError as exc:
            raise UsageError(f"probe: {p}: {exc}") from None
    v = cap.compare(short[a], short[b], rules.probe.better, f"{a} vs {b}: short TTFT p50 (ms) ")
    return Judged(short, long_, v, valid, bad)


def read_entries(store: Store) -> list[dict]:
    es = store.entries()
    if not es:
        raise UsageError(f"{store.runs_file}: no probe run stored: run `invoke hol-probe` first")
    return es
