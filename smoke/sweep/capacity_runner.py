"""The capacity experiment's driver (issue 16): calibration, then interleaved passes of each profile's
rate search (capacity.step) and the equal-load variants, every run measured, stored and resumable.

What a run is and how it is scored live in the pre-registered files (capacity.py, capacity.toml);
this module only drives them. The order follows capacity.toml [repetitions]: pass k = 1 .. per_point
visits every profile in turn (the equal-load reference first, capacity_plan.order), starts its pools
once and runs what capacity.step(runs, rules, k) asks, then that profile's equal-load variants once
(their rate fixed from the reference's pass-1 capacity); passes at k = per_point repeat until no
profile asks for more. A run crossing a discard bound stays on record and step() asks for its rate
again (a new seed): discarded runs are never averaged in.

Every run is appended to runs.jsonl as it ends (its raw request records and router log beside it,
xz-compressed), so a rerun with the same plan resumes where the last one stopped: step() is a pure
function of the runs so far. Pools come from an injected factory (`PoolFactory`): the real one
(capacity_pools.open_pools) in run_capacity, anything with the same `replay` in tests.
"""

from __future__ import annotations

import json
import lzma
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from model.errors import UsageError
from smoke import workload
from smoke.mix import Mix
from smoke.records import RequestRecord, read as read_records
from smoke.sweep import capacity as cap, hostload
from smoke.sweep.capacity_plan import order, requests_per_session
from smoke.sweep.capacity_rules import Rules

SLOW_CLASS = "slow_reader"
CALIBRATION = "calibration"          # the pool factory's name for the calibration replica
LATER = ("host",)                   # plan keys recorded since session 13 (older stored plans lack them)


class Session(Protocol):
    startup_s: float
    tcmalloc: dict[str, bool]        # replica → libtcmalloc mapped in its server process

    def replay(self, trace: workload.Trace, records_path: Path, tag: str) -> Any: ...   # capacity_pools.Measured


PoolFactory = Callable[[str, str], AbstractContextManager[Session]]   # (profile, modifier) → pools


def variant_parts(name: str) -> tuple[str, str]:
    """'balanced/no-slow' → ('balanced', 'no-slow'); 'prefix-cache' → ('prefix-cache', '')."""
    base, _, mod = name.partition("/")
    return base, mod


def needed_variants(rules: Rules, profiles: Sequence[str], claims: Sequence[str] = ()) -> list[str]:
    """The equal-load variants of every claim (of `claims`, when given) whose variants' profiles all
    run: a variant no such claim can use is not run (a subset costs only its own claims)."""
    chosen = [rules.claims[n] for n in expand_claims(rules, claims)] if claims else rules.claims.values()
    need = {v for c in chosen if all(variant_parts(v)[0] in profiles for v in c.variants()) for v in c.variants()}
    return [v for v in rules.equal_load.variants if v in need]


def expand_claims(rules: Rules, claims: Sequence[str]) -> list[str]:
    """Claim names with each compound claim replaced by its parts; an unknown name is a UsageError."""
    out: list[str] = []
    for n in claims:
        if n not in rules.claims:
            raise UsageError(f"--claims: no claim {n!r} in capacity.toml (claims: {', '.join(sorted(rules.claims))})")
        out += rules.claims[n].parts or [n]
    return out


# --- the store: plan, calibration, runs.jsonl, raw records --------------------------------------

class Store:
    """One experiment's folder: plan.json, calibration.json, state.json, runs.jsonl, runs/…"""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.runs_file = root / "runs.jsonl"

    def _json(self, name: str) -> dict | None:
        f = self.root / name
        return json.loads(f.read_text()) if f.is_file() else None

    def _put(self, name: str, data: dict) -> None:
        tmp = self.root / (name + ".tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        tmp.replace(self.root / name)

    def plan(self, want: dict) -> dict:
        """The stored plan, or `want` stored as it; a rerun with another plan is refused. "pilot" is a label
        the code derives from the options, not one: a rerun under a relabelling rule keeps the stored text.
        A plan stored before a key was recorded (LATER) is not refused for lacking it."""
        have = self._json("plan.json")
        if have is None:
            self._put("plan.json", want)
            return want
        if diff := sorted(k for k in set(have) | set(want) if k != "pilot" and have.get(k) != want.get(k)
                          and not (k in LATER and k not in have)):
            k = diff[0]
            raise UsageError(f"{self.root}: this run was started with {k} = {have.get(k)!r}, now {want.get(k)!r}; "
                             "resume with the same options or name another --run")
        return have

    def calibration(self) -> dict | None:
        return self._json("calibration.json")

    def put_calibration(self, data: dict) -> None:
        self._put("calibration.json", data)

    def state(self) -> dict:
        return self._json("state.json") or {}

    def put_state(self, **kw: Any) -> None:
        self._put("state.json", {**self.state(), **kw})

    def entries(self) -> list[dict]:
        if not self.runs_file.is_file():
            return []
        out = []
        lines = self.runs_file.read_text().splitlines()
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except ValueError:
                if n == len(lines):      # a run killed mid-write leaves at most a torn last line
                    break
                raise UsageError(f"{self.runs_file}:{n}: expected a run entry (JSON)") from None
        return out

    def append(self, entry: dict) -> None:
        with open(self.runs_file, "a") as fh:
            fh.write(json.dumps(entry, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def run_dir(self, label: str) -> Path:
        d = self.root / "runs" / label
        d.mkdir(parents=True, exist_ok=True)
        return d


def compress(path: Path) -> Path:
    """path → path.xz (the raw records are committed compressed); the plain file is removed."""
    out = path.with_name(path.name + ".xz")
    out.write_bytes(lzma.compress(path.read_bytes(), preset=6))
    path.unlink()
    return out


def read_xz_records(path: Path) -> list[RequestRecord]:
    plain = path.with_suffix("")             # records.jsonl.xz → records.jsonl (read, then removed)
    plain.write_bytes(lzma.decompress(path.read_bytes()))
    try:
        return read_records(plain)
    finally:
        plain.unlink()


def throttle_json(t: Mapping[str, hostload.Throttle]) -> dict[str, dict]:
    """Per replica host, its CFS counters over a run as stored in runs.jsonl / calibration.json."""
    return {h: {"periods": x.periods, "throttled": x.throttled, "throttled_s": round(x.throttled_s, 3)}
            for h, x in sorted(t.items())}


def to_run(e: dict) -> cap.Run:
    shares = [hostload.Throttle(**t).share for t in e.get("throttle", {}).values() if t["periods"]]
    return cap.Run(e["label"], e["rate"], e["seed"], e["good"], e["requests"], tuple(e["load1"]), e["cores"],
                   e["foreign_cpu_share"], e["client_ttft_mean_ms"], e["server_ttft_mean_ms"], e["send_lag_p99_ms"],
                   max(shares, default=math.nan))


# --- the experiment -------------------------------------------------------------------------------

@dataclass
class Experiment:
    rules: Rules
    mix: Mix
    profiles: Sequence[str]
    store: Store
    pools: PoolFactory
    say: Callable[[str], None] = print
    rates: tuple[float, ...] = ()        # a fixed grid (a pilot): each rate once per pass, no search
    equal_load: bool = True
    bounds: dict[str, cap.SLOBound] | None = None
    skip_variants: tuple[str, ...] = ()   # variants this engine image cannot have (no tcmalloc to remove)
    search: bool = True                   # False: no rate search, only the equal-load variants ...
    equal_rps: float | None = None        # ... at this rate (an earlier run's, stored in its state)
    claims: tuple[str, ...] = ()          # only these claims' variants (() = every claim's)
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self.order = order(list(self.profiles), self.rules)
        self.per_session = requests_per_session(self.mix)
        self.entries = self.store.entries()
        self.t0 = self.clock()
        self.session = -1                     # set by run(): report-only use adds no session
        self.variants = [v for v in needed_variants(self.rules, self.profiles, self.claims)
                         if v not in self.skip_variants] if self.equal_load else []
        if not self.search and (self.equal_rps is None or not self.variants):
            raise UsageError("a run without searches needs an equal-load rate and a claim measured at equal load")

    # --- what has been run
    def _of(self, label: str, k: int | None = None, variant: bool = False) -> list[dict]:
        """A profile's search runs, or (variant) an equal-load variant's runs ('balanced' is both)."""
        return [e for e in self.entries if e["label"] == label and bool(e["variant"]) == variant
                and (k is None or e["pass"] == k)]

    def runs(self, label: str, k: int | None = None) -> list[cap.Run]:
        return [to_run(e) for e in self._of(label, k)]

    def _valid(self, label: str, rate: float | None = None, k: int | None = None,
               variant: bool = False) -> tuple[int, int]:
        """(valid, discarded) runs of a label (at a rate)."""
        es = [e for e in self._of(label, k, variant) if rate is None or e["rate"] == rate]
        bad = sum(1 for e in es if cap.discard_reason(to_run(e), self.rules))
        return len(es) - bad, bad

    # --- what to run next
    def next_search_rate(self, p: str, k: int) -> float | None:
        if not self.search:
            return None
        if not self.rates:
            return cap.next_rate(self.runs(p), self.rules, k)
        for r in self.rates:
            ok, bad = self._valid(p, r)
            if ok < k and bad <= self.rules.discard.max_discards_per_rate:
                return r
        return None

    def equal_rate(self) -> float | None:
        """Fixed once: fraction x the reference's system capacity at the end of its pass-1 search."""
        st = self.store.state()
        if "equal_load_rps" in st:
            return st["equal_load_rps"]
        if self.equal_rps is not None:
            self.store.put_state(equal_load_rps=self.equal_rps)
            return self.equal_rps
        ref = self.rules.equal_load.reference
        if not self.variants or self.next_search_rate(ref, 1) is not None:
            return None
        pts = cap.points(self.runs(ref, 1), self.rules)
        try:
            rate = cap.equal_load_rate(cap.capacity(pts, self.rules.attainment.threshold), self.rules) if pts else None
        except UsageError as exc:
            self.say(f"equal load: none ({exc})")
            rate = None
        self.store.put_state(equal_load_rps=rate)
        return rate

    def variant_pending(self, v: str, k: int) -> bool:
        if self.equal_rate() is None:
            return False
        ok, _ = self._valid(v, variant=True)
        return ok < k and self._valid(v, k=k, variant=True)[1] <= self.rules.discard.max_discards_per_rate

    # --- running
    def trace(self, rate: float, seed: int, drop: Sequence[str] = ()) -> tuple[workload.Trace, float]:
        duration = cap.duration_for(rate, self.per_session, self.rules)
        m = replace(self.mix, duration_s=duration, arrival=replace(self.mix.arrival, rate_rps=rate))
        t = workload.generate(m, seed)
        if drop:
            t = workload.Trace({**t.header, "dropped_classes": list(drop)},
                               tuple(r for r in t.requests if r.cls not in drop))
        return t, duration

    def short_classes(self, trace: workload.Trace, duration: float) -> list[str]:
        """Classes of single requests (their trace times are their send times) with fewer than
        window.min_requests_per_class requests in the measurement window: such a run is discarded
        whatever the engine does (capacity.discard_reason), so its seed is skipped unrun."""
        w = self.rules.window
        fixed = {c.name for c in self.mix.classes if not c.turns}
        n = {c: 0 for c in fixed}
        for r in trace.requests:
            if r.cls in fixed and w.warmup_s <= r.t < duration - w.drain_s:
                n[r.cls] += 1
        return sorted(c for c, k in n.items() if k < w.min_requests_per_class)

    def seed_from(self, rate: float, first: int) -> tuple[int, list[int]]:
        """The first seed from `first` whose full trace can meet the request-count rule, and those skipped."""
        skipped = []
        for seed in range(first, first + 1000):
            trace, duration = self.trace(rate, seed)
            if not self.short_classes(trace, duration):
                return seed, skipped
            skipped.append(seed)
        raise UsageError(f"{rate:g} sessions/s: 1000 seeds in a row give too few requests of some class in the window "
                         "(capacity.toml window)")

    def one(self, pools: Session, label: str, k: int, rate: float, variant: str = "") -> dict:
        assert self.bounds is not None, "calibrate first"
        prior = self._of(label, variant=bool(variant))
        if variant:    # the variants of one pass share a seed: the no-slow trace is the same trace minus slow readers
            first = 1000 * k + len(self._of(label, k, True))
        else:
            first = max((e["seed"] for e in prior), default=-1) + 1
        seed, skipped = self.seed_from(rate, first)
        drop = (SLOW_CLASS,) if variant_parts(variant)[1] == "no-slow" else ()
        trace, duration = self.trace(rate, seed, drop)
        bounds = {c: b for c, b in self.bounds.items() if c not in drop}
        ok, _ = self._valid(label, rate, variant=bool(variant))
        need = self.rules.repetitions.per_point if variant else min(k, self.rules.repetitions.per_point)
        tag = f"{'eq-' if variant else ''}{label.replace('/', '+')}-r{rate:g}-s{seed}-p{k}"
        d = self.store.run_dir(tag)
        for f in d.iterdir():       # an interrupted attempt of this very run: its partial files go
            f.unlink()
        self.say(f"[{self._elapsed()} pass {k}/{self.rules.repetitions.per_point}] {label} @ {rate:g} sessions/s, "
                 f"rep {ok + 1}/{need}, seed {seed}: {len(trace.requests)} requests over {duration:.0f} s")
        t = self.clock()
        m = pools.replay(trace, d / "records.jsonl", f"{tag}-")
        run = cap.measure(m.records, duration, bounds, self.rules, profile=label, rate=rate, seed=seed,
                          load1=m.usage.load1, cores=m.usage.cores, foreign_cpu_share=m.usage.foreign_cpu_share,
                          server_ttft_mean_ms=m.server_ttft_mean_ms)
        why = cap.discard_reason(run, self.rules)
        (d / "replicas.json").write_text(json.dumps(m.replica_of, sort_keys=True))
        (d / "router-access.jsonl").write_text("".join(x + "\n" for x in m.router_lines))
        for f in ("records.jsonl", "replicas.json", "router-access.jsonl"):
            if (d / f).is_file():
                compress(d / f)
        e = {"label": label, "profile": variant_parts(label)[0] if variant else label, "variant": variant,
             "pass": k, "rate": rate, "seed": seed, "duration_s": duration, "good": dict(run.good),
             "requests": dict(run.requests), "load1": list(run.load1), "cores": run.cores,
             "foreign_cpu_share": round(run.foreign_cpu_share, 4), "ours_cpu_share": round(m.usage.ours_cpu_share, 4),
             "client_ttft_mean_ms": run.client_ttft_mean_ms, "server_ttft_mean_ms": run.server_ttft_mean_ms,
             "send_lag_p99_ms": run.send_lag_p99_ms, "discarded": why,
             "throttle": throttle_json(m.throttle), "dir": str(d.relative_to(self.store.root)),
             "skipped_seeds": skipped, "wall_s": round(self.clock() - t, 1), "session": self.session, "at_s": round(self.clock() - self.t0, 1)}
        self.store.append(e)
        self.entries.append(e)
        att = run.attainment
        worst = min(att, key=att.get) if att else "-"
        self.say(f"    -> attainment min {att.get(worst, 0):.2f} ({worst}); load {run.load1[0]:.2f}->{run.load1[1]:.2f}; "
                 f"foreign CPU {run.foreign_cpu_share:.0%}; client overhead "
                 f"{run.client_ttft_mean_ms - run.server_ttft_mean_ms:.0f} ms; throttled "
                 + ", ".join(f"{h} {t.share:.0%}" for h, t in sorted(m.throttle.items()))
                 + (f"; DISCARDED: {why} (repeated with a new seed)" if why else ""))
        return e

    def _elapsed(self) -> str:
        s = int(self.elapsed_s())
        return f"+{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"

    def elapsed_s(self) -> float:
        """Time of every session of this run (each counted to its last stored run), this one to now."""
        last: dict[int, float] = {}
        for e in self.entries:
            last[e["session"]] = max(last.get(e["session"], 0.0), e["at_s"])
        if self.session >= 0:
            last[self.session] = self.clock() - self.t0
        return sum(last.values())

    def _mods(self, p: str) -> list[str]:
        return sorted({variant_parts(v)[1] for v in self.variants if variant_parts(v)[0] == p} - {""})

    def _variants_for(self, p: str, mod: str) -> list[str]:
        """p's variants served by its pools started with modifier mod. Every modifier gets pools of its
        own, no-slow too: on the full trace's pools its replay hit the prefix cache (session 10)."""
        return [v for v in self.variants if variant_parts(v)[0] == p and variant_parts(v)[1] == mod]

    def _pending(self, p: str, mod: str, k: int) -> bool:
        search = mod == "" and self.next_search_rate(p, k) is not None
        return search or any(self.variant_pending(v, k) for v in self._variants_for(p, mod))

    def turn(self, p: str, k: int) -> bool:
        """p's turn in pass k: start its pools only if there is something to run. True if it ran."""
        ran = False
        for mod in ("", *self._mods(p)):
            if not self._pending(p, mod, k):
                continue
            with self.pools(p, mod) as pools:
                self.say(f"[{self._elapsed()} pass {k}] {p}{'/' + mod if mod else ''}: pools ready in "
                         f"{pools.startup_s:.0f} s")
                while mod == "" and (rate := self.next_search_rate(p, k)) is not None:
                    self.one(pools, p, k, rate)
                for v in self._variants_for(p, mod):
                    while self.variant_pending(v, k):
                        self.one(pools, v, k, self.equal_rate(), variant=v)
            ran = True
        return ran

    def run(self) -> None:
        self.t0 = self.clock()
        self.session = int(self.store.state().get("sessions", 0))
        self.store.put_state(sessions=self.session + 1)
        for k in range(1, self.rules.repetitions.per_point + 1):
            for p in self.order:
                self.turn(p, k)
        while any([self.turn(p, self.rules.repetitions.per_point) for p in self.order]):
            pass
        self.say(f"[{self._elapsed()}] done: {len(self.entries)} runs, "
                 f"{sum(1 for e in self.entries if e['discarded'])} discarded")


# --- calibration ----------------------------------------------------------------------------------

def calibration_trace(mix: Mix, rules: Rules, seed: int = 16, gap_s: float = 0.2) -> workload.Trace:
    """At least warmup + requests_per_class requests of each class, round robin over the classes, each sent
    when the one before it ended (+ gap_s): sequential single requests on an idle pool. calibration.turns =
    "first": first turns only; "all": whole sessions, their turns in order (later turns carry the history)."""
    c = rules.calibration
    want = c.warmup_requests + c.requests_per_class
    per = requests_per_session(mix)
    rarest = min(v for v in per.values() if v > 0)
    m = replace(mix, duration_s=math.ceil(3 * want / rarest), arrival=replace(mix.arrival, process="poisson", rate_rps=1.0))
    reqs = workload.generate(m, seed).requests
    turns: dict[str, list[workload.TraceRequest]] = {}
    for r in reqs:
        if r.session:
            turns.setdefault(r.session, []).append(r)
    by: dict[str, list[list[workload.TraceRequest]]] = {}     # class → units (a request, or a session's turns)
    n: Counter[str] = Counter()                                # class → requests in its units
    for r in reqs:
        if not r.after and n[r.cls] < want:
            unit = sorted(turns[r.session], key=lambda x: x.turn) if c.turns == "all" and r.session else [r]
            by.setdefault(r.cls, []).append(unit)
            n[r.cls] += len(unit)
    if short := [cls for cls in per if n[cls] < want]:
        raise UsageError(f"calibration: the mix gave too few {short[0]} requests ({n[short[0]]} < {want})")
    out: list[workload.TraceRequest] = []
    for i in range(max(map(len, by.values()))):
        for cls in sorted(by):
            for r in by[cls][i] if i < len(by[cls]) else ():
                out.append(replace(r, t=0.0, after=out[-1].id if out else "", think_s=gap_s if out else 0.0))
    return workload.Trace({"kind": "header", "calibration": True, "seed": seed}, tuple(out))


def calibrate(store: Store, mix: Mix, rules: Rules, pools: PoolFactory, say: Callable[[str], None] = print,
              cpus: float = 1.0) -> dict:
    """Unloaded per-class figures → SLO bounds and service times (stored; reused on resume)."""
    from smoke.sweep import lanes
    if (have := store.calibration()) is not None:
        return have
    trace = calibration_trace(mix, rules)
    d = store.run_dir(CALIBRATION)
    with pools(CALIBRATION, "") as session:
        say(f"calibration: replica ready in {session.startup_s:.0f} s; {len(trace.requests)} sequential requests")
        m = session.replay(trace, d / "records.jsonl", "calibration-")
    if bad := [r for r in m.records if not r.ok]:
        raise UsageError(f"calibration: {len(bad)} request(s) failed, first {bad[0].id}: {bad[0].error}")
    figures = cap.unloaded(m.records, rules)
    bounds = cap.slo_bounds(figures, rules)
    service = lanes.service_seconds(m.records, rules.calibration.warmup_requests)
    compress(d / "records.jsonl")
    data = {"unloaded": {c: {"ttft_ms": f.ttft_ms, "tpot_ms": f.tpot_ms, "n": f.n} for c, f in figures.items()},
            "bounds": {c: b.model_dump() for c, b in bounds.items()}, "service_s": service,
            "load1": list(m.usage.load1), "foreign_cpu_share": m.usage.foreign_cpu_share,
            "startup_s": session.startup_s, "wall_s": m.usage.wall_s,
            "tcmalloc": any(session.tcmalloc.values()), "cpus": cpus, "rules": calibration_rules(rules),
            "throttle": throttle_json(m.throttle)}
    store.put_calibration(data)
    for c, f in sorted(figures.items()):
        say(f"  {c}: unloaded TTFT {f.ttft_ms:.0f} ms, TPOT {f.tpot_ms if f.tpot_ms is None else round(f.tpot_ms, 1)} ms"
            f" → bounds {bounds[c].ttft_ms:.0f} / {bounds[c].tpot_ms if bounds[c].tpot_ms is None else round(bounds[c].tpot_ms, 1)} ms")
    return data


def calibration_rules(rules: Rules) -> dict:
    """The rules a calibration was made under (stored with it: another run may take it only under the same)."""
    return {"calibration": rules.calibration.model_dump(), "slo": rules.slo.model_dump()}


def bounds_of(calibration: dict) -> dict[str, cap.SLOBound]:
    return {c: cap.SLOBound(**b) for c, b in calibration["bounds"].items()}


def entries_by(entries: Sequence[dict], key: str) -> Iterator[tuple[str, list[dict]]]:
    out: dict[str, list[dict]] = {}
    for e in entries:
        out.setdefault(e[key], []).append(e)
    yield from out.items()
