"""Per-class SLO capacity: the pre-registered score of issue 16. No Docker, no I/O but reading rules.

From request records (smoke.records) of one run at one arrival rate: per class, the fraction of the
requests in the measurement window that met the class's TTFT and TPOT bounds (attainment). From
attainment-vs-rate points: a class's capacity (the highest rate meeting the threshold, interpolated
between the bracketing points), the rate search that finds it (`next_rate`, a pure state machine the
runner drives), bootstrap CIs over repetitions, and the verdict rule per claim. The numbers that
decide anything live in capacity.toml (schema: capacity_rules.py); the three files are the
pre-registered score (capacity_report.py refuses to render when one changed after `score_commit`).
Latency helpers are defined here, not imported, so that a change to them cannot bypass that guard.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import mean, median
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict
from scipy import stats

from model.errors import UsageError
from model.toml import load
from smoke.metrics import tpot_ms  # the one definition: tokens from usage or the tokenizer
from smoke.records import RequestRecord
from smoke.sweep.capacity_rules import SEARCHED, Rules

RULES_FILE = Path(__file__).with_name("capacity.toml")
REPRODUCED, NOT_REPRODUCED, NO_DIFFERENCE = "reproduced", "not reproduced", "no difference detectable at this power"


def load_rules(path: Path = RULES_FILE) -> Rules:
    return load(Rules, path)


# --- one run: records → attainment --------------------------------------------------------------

class SLOBound(BaseModel):
    """A class's bounds, derived from its unloaded figures on this machine (stored with the report)."""
    model_config = ConfigDict(extra="forbid", frozen=True)
    ttft_ms: float
    tpot_ms: float | None
    unloaded_ttft_ms: float
    unloaded_tpot_ms: float | None
    ttft_multiple: float
    tpot_multiple: float | None


def meets(r: RequestRecord, b: SLOBound) -> bool:
    """Answered, first token within the TTFT bound, and (with 2+ tokens) cadence within the TPOT bound."""
    if not r.ok or r.ttft_s is None or r.ttft_s * 1000 > b.ttft_ms:
        return False
    t = tpot_ms(r)
    return b.tpot_ms is None or t is None or t <= b.tpot_ms


def window(records: Sequence[RequestRecord], duration_s: float, rules: Rules) -> list[RequestRecord]:
    """Requests whose trace time falls in [warmup, duration - drain): the same population per profile."""
    w = rules.window
    return [r for r in records if w.warmup_s <= r.scheduled_s < duration_s - w.drain_s]


def duration_for(rate_rps: float, requests_per_session: Mapping[str, float], rules: Rules) -> float:
    """Arrival window for a run at this rate: warm-up + a measured window in which every class expects
    margin x min_requests_per_class requests (requests_per_session: the mix's expected count per class)."""
    w = rules.window
    rarest = min(v for v in requests_per_session.values() if v > 0)
    measure = max(w.min_measure_s, w.margin * w.min_requests_per_class / (rate_rps * rarest))
    return w.warmup_s + measure + w.drain_s


@dataclass(frozen=True)
class Run:
    """One replay of one profile at one rate: what the score and the discard rule need."""
    profile: str
    rate: float
    seed: int
    good: Mapping[str, int]           # per class, requests in the window that met the SLO
    requests: Mapping[str, int]       # per class, requests in the window
    load1: tuple[float, float]        # 1-min load average at the run's start and end
    cores: int
    foreign_cpu_share: float          # host CPU busy time outside the pools, router and client / (cores x wall)
    client_ttft_mean_ms: float        # all answered requests of the run (the histogram's population)
    server_ttft_mean_ms: float        # the engines' own TTFT histogram, delta over the run
    send_lag_p99_ms: float
    throttled_share: float = math.nan  # the most throttled replica's share of CFS periods (recorded, not a bound)

    @property
    def attainment(self) -> dict[str, float]:
        return {c: (self.good[c] / n if n else 0.0) for c, n in self.requests.items()}


def measure(records: Sequence[RequestRecord], duration_s: float, bounds: Mapping[str, SLOBound], rules: Rules, *,
            profile: str, rate: float, seed: int, load1: tuple[float, float], cores: int,
            foreign_cpu_share: float, server_ttft_mean_ms: float) -> Run:
    win = window(records, duration_s, rules)
    good, n = Counter(), Counter({c: 0 for c in bounds})
    for r in win:
        if r.cls not in bounds:
            raise UsageError(f"record {r.id}: class {r.cls!r} has no SLO (capacity.toml slo.classes)")
        n[r.cls] += 1
        good[r.cls] += meets(r, bounds[r.cls])
    return Run(profile, rate, seed, {c: good[c] for c in n}, dict(n), load1, cores, foreign_cpu_share,
               client_ttft_mean_ms(records), server_ttft_mean_ms, send_lag_p99_ms(records))


def client_ttft_mean_ms(records: Sequence[RequestRecord]) -> float:
    """The client's mean TTFT over every answered request of the run (NaN when none was: a discard)."""
    ttfts = [r.ttft_s * 1000 for r in records if r.ok and r.ttft_s is not None]
    return mean(ttfts) if ttfts else math.nan


def send_lag_p99_ms(records: Sequence[RequestRecord]) -> float:
    """How late the client sent requests past their trace time, p99 over the run."""
    lags = [(r.sent_s - r.scheduled_s) * 1000 for r in records]
    return float(np.percentile(lags, 99)) if lags else 0.0


def discard_reason(run: Run, rules: Rules) -> str:
    """Why this run may not be averaged in ('' when it may)."""
    d = rules.discard
    if max(run.load1) > d.max_load_per_core * run.cores:
        return f"host load {max(run.load1):.2f} > {d.max_load_per_core:g} x {run.cores} cores"
    if run.foreign_cpu_share > d.max_foreign_cpu_share:
        return f"foreign CPU {run.foreign_cpu_share:.0%} of the host > {d.max_foreign_cpu_share:.0%}"
    over = run.client_ttft_mean_ms - run.server_ttft_mean_ms
    allowed = max(d.max_client_overhead_ms, d.max_client_overhead_fraction * run.server_ttft_mean_ms)
    if not over <= allowed:  # NaN (nothing answered) is a discard too
        return f"client TTFT overhead {over:.0f} ms > {allowed:.0f} ms"
    if run.send_lag_p99_ms > d.max_send_lag_p99_ms:
        return f"client send lag p99 {run.send_lag_p99_ms:.0f} ms > {d.max_send_lag_p99_ms:g} ms"
    few = {c: k for c, k in run.requests.items() if k < rules.window.min_requests_per_class}
    if few:
        return "too few requests in the window: " + ", ".join(f"{c} {k}" for c, k in sorted(few.items()))
    return ""


# --- calibration: unloaded single requests → SLO bounds ----------------------------------------

@dataclass(frozen=True)
class Unloaded:
    ttft_ms: float
    tpot_ms: float | None
    n: int


def unloaded(records: Sequence[RequestRecord], rules: Rules) -> dict[str, Unloaded]:
    """Per class, medians over sequential single requests on an idle pool, after the first
    calibration.warmup_requests of each class (in send order). A failed request is an error."""
    c = rules.calibration
    by: dict[str, list[RequestRecord]] = {}
    for r in sorted(records, key=lambda r: r.sent_s):
        by.setdefault(r.cls, []).append(r)
    out = {}
    for cls, rs in sorted(by.items()):
        rs = rs[c.warmup_requests:]
        if bad := [r for r in rs if not r.ok or r.ttft_s is None]:
            raise UsageError(f"calibration: {cls} request {bad[0].id} failed ({bad[0].error or bad[0].status})")
        if len(rs) < c.requests_per_class:
            raise UsageError(f"calibration: {cls}: {len(rs)} requests after warm-up, expected {c.requests_per_class}")
        tp = [t for r in rs if (t := tpot_ms(r)) is not None]
        out[cls] = Unloaded(median(r.ttft_s * 1000 for r in rs), median(tp) if tp else None, len(rs))
    return out


def slo_bounds(figures: Mapping[str, Unloaded], rules: Rules) -> dict[str, SLOBound]:
    """Each class's bounds: capacity.toml's multiples x its unloaded figures."""
    known = rules.slo.classes
    if extra := sorted(set(figures) - set(known)):
        raise UsageError(f"{RULES_FILE}: slo.classes.{extra[0]}: missing (the class was measured but has no multiples)")
    if absent := sorted(set(known) - set(figures)):
        raise UsageError(f"calibration: no unloaded figures for class {absent[0]!r}")
    out = {}
    for cls, m in known.items():
        f = figures[cls]
        if m.tpot_multiple is not None and f.tpot_ms is None:
            raise UsageError(f"calibration: {cls}: no TPOT (answers under 2 tokens) but tpot_multiple is set")
        out[cls] = SLOBound(ttft_ms=m.ttft_multiple * f.ttft_ms,
                            tpot_ms=None if m.tpot_multiple is None else m.tpot_multiple * f.tpot_ms,
                            unloaded_ttft_ms=f.ttft_ms, unloaded_tpot_ms=f.tpot_ms,
                            ttft_multiple=m.ttft_multiple, tpot_multiple=m.tpot_multiple)
    return out


# --- per-run figures of the equal-load claims (C3a, C3b, C4, C7) -------------------------------

def equal_load_rate(reference_capacity: Capacity, rules: Rules) -> float:
    """fraction x the reference's capacity; censored below, the search's floor (equal_load.censored_below =
    "min_rps": a load every profile was measured at) or none; censored above, fraction x its highest rate."""
    if reference_capacity.censored == "below":
        if rules.equal_load.censored_below == "none":
            raise UsageError(f"{rules.equal_load.reference}: capacity below the lowest rate measured: no equal load")
        return rules.search.min_rps
    return round(rules.equal_load.fraction * reference_capacity.rps, 4)


def ttft_p50_ms(win: Sequence[RequestRecord], cls: str) -> float | None:
    t = [r.ttft_s * 1000 for r in win if r.cls == cls and r.ok and r.ttft_s is not None]
    return median(t) if t else None


def tpot_p50_ms(win: Sequence[RequestRecord]) -> float | None:
    """Median TPOT over answered requests that are not throttled slow readers."""
    t = [x for r in win if not r.read_bytes_per_s and (x := tpot_ms(r)) is not None]
    return median(t) if t else None


def slow_tpot_ratio(with_slow: Sequence[RequestRecord], without_slow: Sequence[RequestRecord]) -> float | None:
    """C3b: the other classes' TPOT p50 with slow readers in the trace over the same trace without them."""
    a, b = tpot_p50_ms(with_slow), tpot_p50_ms(without_slow)
    return a / b if a is not None and b else None


def hol_ttft_p50_ms(win: Sequence[RequestRecord], replica_of: Mapping[str, str], rules: Rules) -> float | None:
    """C4: TTFT p50 of short requests sent while THEIR replica prefilled a long prompt (from the long
    request's send to its first token); None under hol.min_during such requests."""
    h = rules.hol
    spans: dict[str, list[tuple[float, float]]] = {}
    for r in win:
        if r.cls == h.long_class and r.id in replica_of:
            end = r.sent_s + (r.ttft_s if r.ttft_s is not None else r.end_s - r.sent_s)
            spans.setdefault(replica_of[r.id], []).append((r.sent_s, end))
    during = [r.ttft_s * 1000 for r in win
              if r.cls in h.short_classes and r.ok and r.ttft_s is not None and r.id in replica_of
              and any(a <= r.sent_s < b for a, b in spans.get(replica_of[r.id], ()))]
    return median(during) if len(during) >= h.min_during else None


# --- points and capacity ------------------------------------------------------------------------

@dataclass(frozen=True)
class Point:
    rate: float
    runs: tuple[Run, ...]             # valid runs only

    def mean(self, cls: str | None = None) -> float:
        """Mean attainment over runs; cls None: the binding class (min over classes)."""
        if cls is None:
            return min(self.mean(c) for c in self.runs[0].requests)
        return sum(r.good[cls] / r.requests[cls] if r.requests[cls] else 0.0 for r in self.runs) / len(self.runs)


def points(runs: Sequence[Run], rules: Rules) -> list[Point]:
    """The valid runs grouped by rate, ascending. Discarded runs never enter a point."""
    by: dict[float, list[Run]] = {}
    for r in runs:
        if not discard_reason(r, rules):
            by.setdefault(r.rate, []).append(r)
    return [Point(rate, tuple(rs)) for rate, rs in sorted(by.items())]


@dataclass(frozen=True)
class Capacity:
    rps: float                        # 0.0 when censored below
    lo: float | None                  # highest passing rate below hi
    hi: float | None                  # lowest failing rate
    censored: Literal["", "below", "above"]
    repetitions: int                  # fewest valid runs of the deciding points

    def describe(self) -> str:
        if self.censored == "above":
            return f">= {self.rps:g} sessions/s (no measured rate failed)"
        if self.censored == "below":
            return f"< {self.hi:g} sessions/s (the lowest measured rate failed)"
        return f"{self.rps:.3g} sessions/s (interpolated between {self.lo:g} and {self.hi:g})"


def capacity(pts: Sequence[Point], threshold: float, cls: str | None = None, interpolate: bool = True) -> Capacity:
    """Highest rate whose attainment meets the threshold, below the lowest failing rate."""
    fail = [p for p in pts if p.mean(cls) < threshold]
    if not fail:
        top = pts[-1]
        return Capacity(top.rate, top.rate, None, "above", len(top.runs))
    hi = fail[0]
    below = [p for p in pts if p.rate < hi.rate]
    if not below:
        return Capacity(0.0, None, hi.rate, "below", len(hi.runs))
    lo = below[-1]
    a_lo, a_hi = lo.mean(cls), hi.mean(cls)
    rps = lo.rate + (a_lo - threshold) / (a_lo - a_hi) * (hi.rate - lo.rate) if interpolate else lo.rate
    return Capacity(rps, lo.rate, hi.rate, "", min(len(lo.runs), len(hi.runs)))


def combined_score(pts: Sequence[Point], threshold: float, interpolate: bool = True) -> float:
    """C2: geometric mean over classes of class capacity (0 when any class is censored below)."""
    caps = [capacity(pts, threshold, c, interpolate).rps for c in pts[0].runs[0].requests]
    return 0.0 if min(caps) <= 0 else math.exp(sum(map(math.log, caps)) / len(caps))


# --- the rate search ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Step:
    rate: float | None                # None: the search is over
    why: str


def calibration_cpus(rules: Rules, engine_cpus: float, replicas: int) -> float:
    """The calibration replica's quota: calibration.cpus, or "mean_lane" = the engines' CPUs over the
    reference profile's replicas (what a replica gets on average, so bounds include the lane's quota)."""
    c = rules.calibration.cpus
    return round(engine_cpus / replicas, 4) if c == "mean_lane" else float(c)


def calibrated_start(rules: Rules, service_s: Mapping[str, float], per_session: Mapping[str, float],
                     engine_cpus: float, calibration_cpus: float = 1.0) -> float:
    """search.start_rps = "calibrated": start_utilization x the session rate at which the engines' CPUs
    would be busy all the time with requests served one at a time (calibration's service seconds on
    its replica of calibration_cpus, counted as CPU-seconds at that quota). Every profile gets the
    same start, so the searches share one rate grid."""
    demand = sum(n * service_s[c] * calibration_cpus for c, n in per_session.items())
    s = rules.search
    return round(min(max(s.start_utilization * engine_cpus / demand, s.min_rps), s.max_rps), 4)


def resolved(rules: Rules, start_rps: float) -> Rules:
    """The rules with a numeric first rate (what step() needs)."""
    return rules.model_copy(update={"search": rules.search.model_copy(update={"start_rps": start_rps})})


def step(runs: Sequence[Run], rules: Rules, reps: int | None = None) -> Step:
    """The next rate to run for one profile, from every run so far (discarded ones included).

    reps: valid runs wanted at each deciding point in this pass (1 .. repetitions.per_point; default
    per_point). New points run repetitions.coarse times. Deciding points are the system bracket's two
    ends before each bisection, and, once the system search ends, every class's bracket ends too (or
    its censored end), so each stated capacity rests on `reps` runs at both of its points."""
    s, thr = rules.search, rules.attainment.threshold
    need = min(reps or rules.repetitions.per_point, rules.repetitions.per_point)
    bad = Counter(r.rate for r in runs if discard_reason(r, rules))
    if over := [r for r, k in bad.items() if k > rules.discard.max_discards_per_rate]:
        return Step(None, f"stopped: {bad[over[0]]} runs discarded at {over[0]:g} sessions/s")
    pts = {p.rate: p for p in points(runs, rules)}
    if not pts:
        if s.start_rps == "calibrated":
            raise UsageError("capacity.toml search.start_rps = \"calibrated\": resolve it from the calibration first")
        return Step(s.start_rps, "coarse")
    if few := [r for r, p in pts.items() if len(p.runs) < rules.repetitions.coarse]:
        return Step(few[0], "repeat")

    def short(rates) -> float | None:
        return next((r for r in rates if r is not None and len(pts[r].runs) < need), None)

    def finish(why: str) -> Step:
        ordered = list(pts.values())
        caps = [capacity(ordered, thr, c) for c in (None, *ordered[0].runs[0].requests)]
        r = short(x for c in caps for x in (c.lo, c.hi))
        return Step(r, "repeat") if r is not None else Step(None, why)

    def new(rate: float, why: str) -> Step:
        return Step(rate, why) if len(pts) < s.max_distinct_rates else finish("stopped: max_distinct_rates reached")

    fail = [r for r, p in pts.items() if p.mean() < thr]
    if not fail:
        top = max(pts)
        return finish("censored above max_rps") if top >= s.max_rps else new(min(top * s.factor, s.max_rps), "coarse up")
    hi = min(fail)
    below = [r for r, p in pts.items() if r < hi and p.mean() >= thr]
    if not below:
        return finish("censored below min_rps") if hi <= s.min_rps else new(max(hi / s.factor, s.min_rps), "coarse down")
    lo = max(below)
    if (r := short((lo, hi))) is not None:
        return Step(r, "repeat")
    if hi - lo <= s.resolution * lo:
        return finish("resolved")
    return new(round((lo + hi) / 2, 4), "bisect")


def next_rate(runs: Sequence[Run], rules: Rules, reps: int | None = None) -> float | None:
    return step(runs, rules, reps).rate


# --- confidence intervals and verdicts ----------------------------------------------------------

@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float
    n: int                            # repetitions behind it (fewest per resampled point)
    below: float | None = None        # a capacity censored below this rate (the lowest measured failed): 0, 0, 0

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def describe(self) -> str:
        if self.below is not None:
            return f"< {self.below:g} (censored: the lowest rate measured failed)"
        return f"{self.estimate:.3g} [{self.low:.3g}, {self.high:.3g}]"


def points_ci(pts: Sequence[Point], rules: Rules, statistic: Callable[[Sequence[Point]], float]) -> Interval:
    """Bootstrap CI of statistic(points): each point with 2+ runs is resampled independently (whole
    runs, all classes together); points with one run stay as measured."""
    pts = list(pts)
    est = statistic(pts)
    multi = [k for k, p in enumerate(pts) if len(p.runs) >= 2]
    if not multi:
        raise UsageError("no point has 2+ valid runs: no interval (repetitions.per_point not reached)")

    def resampled(*idx: np.ndarray) -> float:
        cur = list(pts)
        for k, ix in zip(multi, idx):
            cur[k] = Point(pts[k].rate, tuple(pts[k].runs[int(i)] for i in ix))
        return statistic(cur)

    return _boot(tuple(np.arange(len(pts[k].runs)) for k in multi), resampled, rules, est,
                 min(len(pts[k].runs) for k in multi))


def mean_ci(values: Sequence[float], rules: Rules) -> Interval:
    """Bootstrap CI of the mean of per-run values (one value per valid run)."""
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=float)
    if len(v) < 2:
        raise UsageError(f"{len(v)} valid run value(s): no interval (needs 2+)")
    return _boot((v,), lambda x: float(np.mean(x)), rules, float(np.mean(v)), len(v))


def _boot(data: tuple[np.ndarray, ...], statistic, rules: Rules, est: float, n: int) -> Interval:
    b = rules.bootstrap
    res = stats.bootstrap(data, statistic, n_resamples=b.n_resamples, method=b.method, confidence_level=b.confidence,
                          vectorized=False, paired=False, rng=np.random.default_rng(b.seed))
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if math.isnan(lo) or math.isnan(hi):  # every resample equal: the interval is the value itself
        lo = hi = est
    # A percentile interval of a kinked statistic (interpolation, min over classes) can miss the
    # point estimate; it is widened to hold it, never narrowed.
    return Interval(est, min(lo, est), max(hi, est), n)


@dataclass(frozen=True)
class Verdict:
    word: str
    text: str
    detectable: float | None = None   # overlap: the smallest difference these intervals could show


def compare(a: Interval, b: Interval, better: str, what: str = "") -> Verdict:
    """a is the claim's profile, b the one it should beat."""
    nums = f"{a.describe()} vs {b.describe()}"
    up, down = a.low > b.high, a.high < b.low
    if up or down:
        word = REPRODUCED if up == (better == "higher") else NOT_REPRODUCED
        return Verdict(word, f"{what}{nums}: intervals separate")
    mdd = a.half_width + b.half_width
    return Verdict(NO_DIFFERENCE, f"{what}{nums}: intervals overlap; with n = {min(a.n, b.n)} runs per point a "
                                  f"difference below {mdd:.3g} cannot be told apart", mdd)


def combine(parts: Mapping[str, Verdict]) -> Verdict:
    """Every part reproduced → reproduced; any part not reproduced → not reproduced; else no difference."""
    if len(parts) == 1:
        return next(iter(parts.values()))
    words = [v.word for v in parts.values()]
    word = (REPRODUCED if all(w == REPRODUCED for w in words) else
            NOT_REPRODUCED if NOT_REPRODUCED in words else NO_DIFFERENCE)
    return Verdict(word, "; ".join(f"{k}: {v.word} ({v.text})" for k, v in parts.items()))


def judge(rules: Rules, figures: Mapping[str, Mapping[str, Interval]], cpus: Mapping[str, float]) -> dict[str, Verdict]:
    """figures: metric → profile → Interval. Capacity claims compare only profiles of equal CPU."""
    out: dict[str, Verdict] = {}
    for name, c in sorted(rules.claims.items(), key=lambda kv: bool(kv[1].parts)):
        if c.parts:
            out[name] = combine({p: out[p] for p in c.parts})
            continue
        got = figures.get(c.metric, {})
        if missing := [p for p in (c.profile, *c.versus) if p not in got]:
            raise UsageError(f"claim {name}: no {c.metric} for profile {missing[0]!r}")
        if c.metric in SEARCHED:
            if unequal := [p for p in c.versus if cpus.get(p) != cpus.get(c.profile)]:
                raise UsageError(f"claim {name}: {c.profile} had {cpus.get(c.profile)} CPUs, {unequal[0]} "
                                 f"{cpus.get(unequal[0])}: capacities compare at equal CPU only")
        out[name] = combine({v: compare(got[c.profile], got[v], c.better, f"{c.profile} vs {v}: ") for v in c.versus})
    return out
