"""The pre-registered capacity score (smoke/sweep/capacity.py, rules in capacity.toml): attainment from
real RequestRecord objects, capacity, the bracket-then-bisect search, bootstrap CIs, verdicts,
the discard rule and SLO calibration. Records and runs are constructed here; nothing is mocked."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from model.errors import UsageError
from model.toml import validate
from smoke.records import RequestRecord
from smoke.sweep import capacity as cap
from smoke.sweep.capacity_rules import Rules

RULES = cap.resolved(cap.load_rules(), 2.0)   # capacity.toml says "calibrated": the grid these tests walk
FAST = RULES.model_copy(update={"bootstrap": RULES.bootstrap.model_copy(update={"n_resamples": 999})})
B = cap.SLOBound(ttft_ms=500, tpot_ms=50, unloaded_ttft_ms=100, unloaded_tpot_ms=10, ttft_multiple=5, tpot_multiple=5)


def rec(i, cls="chat", sched=20.0, ttft=0.1, e2e=1.0, n=11, status="ok", sent=None, bps=0) -> RequestRecord:
    sent = sched if sent is None else sent
    return RequestRecord(id=f"r{i}", cls=cls, endpoint="chat", scheduled_s=sched, sent_s=sent, end_s=sent + e2e,
                         status=status, http_status=200 if status == "ok" else 503,
                         ttft_s=ttft if status == "ok" else None, e2e_s=e2e if status == "ok" else None,
                         output_tokens=n if status == "ok" else None, streamed_tokens=n, read_bytes_per_s=bps)


def run(rate, att=None, *, load=(0.5, 0.5), over=0.0, lag=0.0, seed=0, n=100, profile="p", foreign=0.0) -> cap.Run:
    """A run whose class attainments are `att` (class → fraction) over n requests per class."""
    att = att if att is not None else {"chat": 1.0}
    return cap.Run(profile, rate, seed, {c: round(a * n) for c, a in att.items()}, {c: n for c in att},
                   load, 2, foreign, 100.0 + over, 100.0, lag)


# --- rules ---------------------------------------------------------------------------------------

def test_rules_file_validates_and_states_the_issue_minimums():
    assert RULES.attainment.threshold == 0.90
    assert RULES.repetitions.per_point >= 3
    assert RULES.budget.search_minutes == 90
    assert set(RULES.claims) >= {"C1", "C2", "C3", "C4", "C7"}
    assert RULES.claims["C3"].parts == ["C3a", "C3b", "C3c"]


def test_bad_rules_are_one_line():
    doc = RULES.model_dump()
    doc["repetitions"]["per_point"] = 2
    with pytest.raises(UsageError, match=r"^x.toml: repetitions.per_point: expected an integer >= 3 \(the issue.s minimum\), got 2$"):
        validate(Rules, doc, "x.toml")
    doc = RULES.model_dump()
    doc["claims"]["C3"]["parts"] = ["C3a", "C9"]
    with pytest.raises(UsageError, match=r"claims.C3.parts: expected names of claims with a metric, got 'C9'"):
        validate(Rules, doc, "x.toml")
    doc = RULES.model_dump()
    del doc["equal_load"]["variants"]["slow-isolation/no-slow"]
    with pytest.raises(UsageError, match=r"claims.C3b: expected variants of equal_load.variants, got 'slow-isolation/no-slow'"):
        validate(Rules, doc, "x.toml")
    doc = RULES.model_dump()
    doc["search"]["start_rps"] = 64.0
    with pytest.raises(UsageError, match=r"search.start_rps: expected min_rps <= start_rps <= max_rps"):
        validate(Rules, doc, "x.toml")
    doc = RULES.model_dump()
    doc["lanes"]["cfs_period_us"] = 500
    with pytest.raises(UsageError, match=r"^x.toml: lanes.cfs_period_us: expected an integer of microseconds in \[1000, 1000000\]"):
        validate(Rules, doc, "x.toml")
    doc = RULES.model_dump()
    doc["equal_load"]["censored_below"] = "zero"
    with pytest.raises(UsageError, match=r"^x.toml: equal_load.censored_below: "):
        validate(Rules, doc, "x.toml")


# --- records → one run ---------------------------------------------------------------------------

def test_window_drops_warmup_and_drain_by_trace_time():
    recs = [rec(0, sched=5.0), rec(1, sched=10.0), rec(2, sched=79.9), rec(3, sched=80.0), rec(4, sched=99.0)]
    assert [r.id for r in cap.window(recs, 85.0, RULES)] == ["r1", "r2"]   # warmup 10 s, drain 5 s


def test_meets_bounds_ttft_and_tpot_and_counts_failures_as_misses():
    assert cap.meets(rec(0, ttft=0.4, e2e=0.9, n=11), B)            # TPOT 50 ms: on the bound
    assert not cap.meets(rec(1, ttft=0.6), B)                       # TTFT 600 > 500
    assert not cap.meets(rec(2, ttft=0.1, e2e=1.2, n=11), B)        # TPOT 110 > 50
    assert not cap.meets(rec(3, status="error"), B)
    assert cap.meets(rec(4, ttft=0.1, e2e=5.0, n=1), B)             # one token: no TPOT to judge
    slow = B.model_copy(update={"tpot_ms": None})
    assert cap.meets(rec(5, ttft=0.1, e2e=9.0, n=11), slow)


def test_measure_counts_attainment_in_the_window_and_client_figures_over_the_run():
    recs = [rec(i, sched=20 + i * 0.1, ttft=(t := 0.1 if i % 4 else 0.9), e2e=t + 0.4)   # every 4th misses
            for i in range(40)]
    recs += [rec(100, sched=1.0, ttft=0.9, sent=1.5)]                                     # warm-up: not scored
    r = cap.measure(recs, 85.0, {"chat": B}, RULES, profile="p", rate=2.0, seed=7, load1=(1.0, 1.5), cores=2,
                    foreign_cpu_share=0.01, server_ttft_mean_ms=150.0)
    assert r.requests == {"chat": 40} and r.good == {"chat": 30} and r.attainment == {"chat": 0.75}
    assert r.client_ttft_mean_ms == pytest.approx((30 * 100 + 11 * 900) / 41)
    assert r.send_lag_p99_ms == pytest.approx(500 * 0.6, rel=0.05)
    with pytest.raises(UsageError, match="class 'rag' has no SLO"):
        cap.measure([rec(0, cls="rag")], 85.0, {"chat": B}, RULES, profile="p", rate=2.0, seed=0,
                    load1=(0, 0), cores=2, foreign_cpu_share=0.0, server_ttft_mean_ms=1.0)


def test_duration_sizes_the_window_for_the_rarest_class():
    # at 2 sessions/s, long_prefill at 0.1 per session: 1.2 x 10 / 0.2 = 60 s measured
    assert cap.duration_for(2.0, {"chat": 1.0, "long_prefill": 0.1}, RULES) == pytest.approx(10 + 60 + 5)
    assert cap.duration_for(100.0, {"chat": 1.0}, RULES) == pytest.approx(10 + 40 + 5)


# --- the discard rule ----------------------------------------------------------------------------

def test_discard_reasons():
    assert cap.discard_reason(run(2.0), RULES) == ""
    assert cap.discard_reason(run(2.0, load=(1.0, 8.5)), RULES).startswith("host load 8.50 > 4 x 2 cores")
    assert cap.discard_reason(run(2.0, load=(7.9, 7.9)), RULES) == ""
    assert cap.discard_reason(run(2.0, foreign=0.15), RULES) == "foreign CPU 15% of the host > 10%"
    assert "client TTFT overhead 101 ms > 100 ms" in cap.discard_reason(run(2.0, over=101), RULES)
    big = cap.Run("p", 2.0, 0, {"chat": 100}, {"chat": 100}, (0, 0), 2, 0.0, 1300.0, 1000.0, 0.0)
    assert "300 ms > 250 ms" in cap.discard_reason(big, RULES)        # 25 % of 1000 ms is the larger bound
    assert "send lag p99 300 ms" in cap.discard_reason(run(2.0, lag=300), RULES)
    assert cap.discard_reason(run(2.0, n=9), RULES) == "too few requests in the window: chat 9"
    assert cap.discard_reason(run(2.0, n=10), RULES) == ""


def test_discarded_runs_are_never_averaged_in():
    runs = [run(2.0, {"chat": 1.0}), run(2.0, {"chat": 0.0}, load=(9.0, 9.0)), run(2.0, {"chat": 0.8}, seed=1)]
    (p,) = cap.points(runs, RULES)
    assert len(p.runs) == 2 and p.mean("chat") == pytest.approx(0.9)
    ci = cap.points_ci([p], FAST, lambda ps: ps[0].mean("chat"))
    assert 0.8 <= ci.low <= ci.high <= 1.0                          # the 0.0 of the loaded run never enters


# --- capacity ------------------------------------------------------------------------------------

def pts(*rows):
    return [cap.Point(rate, tuple(run(rate, a, seed=i) for i, a in enumerate(atts))) for rate, atts in rows]


def test_capacity_interpolates_between_the_bracketing_points():
    p = pts((1.0, [{"chat": 1.0}] * 3), (2.0, [{"chat": 1.0}] * 3), (4.0, [{"chat": 0.8}] * 3))
    c = cap.capacity(p, 0.9, "chat")
    assert (c.rps, c.lo, c.hi, c.censored, c.repetitions) == (pytest.approx(3.0), 2.0, 4.0, "", 3)
    assert "interpolated between 2 and 4" in c.describe()
    assert cap.capacity(p, 0.9, "chat", interpolate=False).rps == 2.0


def test_capacity_knee_is_below_the_lowest_failure_and_censoring_is_stated():
    noisy = pts((2.0, [{"chat": 1.0}]), (4.0, [{"chat": 0.5}]), (8.0, [{"chat": 0.95}]))
    assert cap.capacity(noisy, 0.9, "chat").hi == 4.0
    up = cap.capacity(pts((2.0, [{"chat": 1.0}]), (4.0, [{"chat": 0.95}])), 0.9, "chat")
    assert (up.rps, up.censored) == (4.0, "above") and up.describe().startswith(">= 4")
    down = cap.capacity(pts((2.0, [{"chat": 0.5}])), 0.9, "chat")
    assert (down.rps, down.censored) == (0.0, "below") and down.describe().startswith("< 2")


def test_system_capacity_is_bound_by_the_worst_class_and_combined_score_is_a_geometric_mean():
    p = pts((2.0, [{"a": 1.0, "b": 1.0}] * 3), (4.0, [{"a": 0.95, "b": 0.7}] * 3), (8.0, [{"a": 0.85, "b": 0.5}] * 3))
    assert cap.capacity(p, 0.9).rps == pytest.approx(2.0 + 0.1 / 0.3 * 2)     # b binds
    assert cap.capacity(p, 0.9, "a").rps == pytest.approx(4.0 + 0.05 / 0.1 * 4)
    assert cap.combined_score(p, 0.9) == pytest.approx((6.0 * (2 + 2 / 3)) ** 0.5)


# --- the search ----------------------------------------------------------------------------------

def drive(truth, rules=RULES, limit=200, discard_every=0, reps=None, runs=None):
    """Run the search against a known attainment function of the rate (a number: class chat; a dict:
    per class); every discard_every-th run is made from a loaded host (discarded)."""
    runs = list(runs or [])
    while (rate := cap.next_rate(runs, rules, reps)) is not None:
        k = len(runs)
        bad = discard_every and k % discard_every == discard_every - 1
        att = truth(rate, k)
        runs.append(run(rate, att if isinstance(att, dict) else {"chat": att}, seed=k,
                        load=(9.0, 9.0) if bad else (0.5, 0.5)))
        assert len(runs) < limit, "search did not stop"
    return runs


def test_search_brackets_then_bisects_to_the_resolution_on_a_step_function():
    runs = drive(lambda r, k: 1.0 if r <= 3.3 else 0.5)
    p = cap.points(runs, RULES)
    c = cap.capacity(p, 0.9, "chat")
    assert c.lo <= 3.3 < c.hi and c.hi - c.lo <= 0.25 * c.lo
    assert c.repetitions >= 3
    rates = [r.rate for r in runs]
    assert rates[:3] == [2.0, 4.0, 2.0]                             # coarse up, then the bracket is topped up
    assert cap.step(runs, RULES).why == "resolved"
    assert len(runs) <= 3 * RULES.search.max_distinct_rates


def test_search_goes_down_the_grid_and_censors_at_both_ends():
    runs = drive(lambda r, k: 1.0 if r <= 0.6 else 0.0)
    assert [r.rate for r in runs][:3] == [2.0, 1.0, 0.5]
    assert 0.5 <= cap.capacity(cap.points(runs, RULES), 0.9, "chat").rps <= 0.6
    high = drive(lambda r, k: 1.0)
    assert cap.step(high, RULES).why == "censored above max_rps"
    assert [r.rate for r in high].count(32.0) == 3
    low = drive(lambda r, k: 0.0)
    assert cap.step(low, RULES).why == "censored below min_rps" and [r.rate for r in low].count(0.25) == 3


def test_search_repeats_discarded_runs_and_stops_after_too_many():
    runs = drive(lambda r, k: 1.0 if r <= 3.3 else 0.5, discard_every=4)
    valid = [r for r in runs if not cap.discard_reason(r, RULES)]
    c = cap.capacity(cap.points(runs, RULES), 0.9, "chat")
    assert c.lo <= 3.3 < c.hi and len(valid) < len(runs)
    stuck = drive(lambda r, k: 1.0, discard_every=1)
    assert len(stuck) == 3 and cap.step(stuck, RULES).why == "stopped: 3 runs discarded at 2 sessions/s"


def test_search_rechecks_a_coarse_point_whose_repetitions_flip_it():
    # the single coarse run at 4 failed by chance; its repetitions pass, so the search goes up again
    runs = drive(lambda r, k: (0.8 if k == 1 else 1.0) if r <= 5.0 else 0.5)
    c = cap.capacity(cap.points(runs, RULES), 0.9, "chat")
    assert c.lo <= 5.0 < c.hi


def test_search_in_interleaved_passes_repeats_only_the_deciding_points():
    truth = lambda r, k: {"a": 1.0 if r <= 7.0 else 0.5, "b": 1.0 if r <= 5.0 else 0.5}   # noqa: E731
    first = drive(truth, reps=1)
    assert [r.rate for r in first] == [2.0, 4.0, 8.0, 6.0, 5.0]       # pass 1: bracket and bisect, once each
    runs = drive(truth, reps=3, runs=drive(truth, reps=2, runs=first))
    per = {p.rate: len(p.runs) for p in cap.points(runs, RULES)}
    assert per == {2.0: 1, 4.0: 1, 5.0: 3, 6.0: 3, 8.0: 3}          # 8 decides class a's capacity
    pts = cap.points(runs, RULES)
    a, b = cap.capacity(pts, 0.9, "a"), cap.capacity(pts, 0.9, "b")
    assert (a.lo, a.hi, a.repetitions) == (6.0, 8.0, 3) and (b.lo, b.hi, b.repetitions) == (5.0, 6.0, 3)
    assert cap.step(runs, RULES).why == "resolved"


@settings(max_examples=60, deadline=None)
@given(st.floats(min_value=0.26, max_value=31.0))
def test_search_in_passes_brackets_any_knee_inside_the_bounds(knee):
    truth = lambda r, k: 1.0 if r <= knee else 0.4      # noqa: E731
    runs: list = []
    for reps in (1, 2, 3):
        runs = drive(truth, reps=reps, runs=runs)
    c = cap.capacity(cap.points(runs, RULES), 0.9, "chat")
    assert c.lo <= knee < c.hi and c.repetitions == 3
    why = cap.step(runs, RULES).why
    assert why == "resolved" and c.hi - c.lo <= RULES.search.resolution * c.lo or why.startswith("stopped: max")


# --- intervals and verdicts ----------------------------------------------------------------------

def test_separate_intervals_decide_by_direction():
    a, b = cap.mean_ci([10.0, 10.5, 11.0], FAST), cap.mean_ci([20.0, 20.5, 21.0], FAST)
    assert a.high < b.low and a.n == 3
    assert cap.compare(b, a, "higher").word == cap.REPRODUCED
    assert cap.compare(a, b, "higher").word == cap.NOT_REPRODUCED
    assert cap.compare(a, b, "lower").word == cap.REPRODUCED


def test_overlapping_intervals_state_the_detectable_difference():
    a, b = cap.mean_ci([10.0, 15.0, 20.0], FAST), cap.mean_ci([12.0, 17.0, 22.0], FAST)
    v = cap.compare(a, b, "lower")
    assert v.word == "no difference detectable at this power"
    assert v.detectable == pytest.approx(a.half_width + b.half_width) and v.detectable > 2.0
    assert "n = 3" in v.text
    with pytest.raises(UsageError, match="needs 2\\+"):
        cap.mean_ci([1.0, None], FAST)


def test_capacity_ci_over_repetitions():
    tight = pts((2.0, [{"chat": 1.0}] * 3), (4.0, [{"chat": 0.8}, {"chat": 0.8}, {"chat": 0.8}]))
    assert cap.points_ci(tight, FAST, lambda ps: cap.capacity(ps, 0.9, "chat").rps).low == pytest.approx(3.0)
    wide = pts((2.0, [{"chat": 1.0}] * 3), (4.0, [{"chat": 0.89}, {"chat": 0.5}, {"chat": 0.7}]))
    ci = cap.points_ci(wide, FAST, lambda ps: cap.capacity(ps, 0.9, "chat").rps)
    assert ci.low < ci.estimate < ci.high and ci.high <= 4.0


def test_judge_combines_parts_and_requires_equal_cpu():
    i = lambda lo, hi: cap.Interval((lo + hi) / 2, lo, hi, 3)    # noqa: E731
    prof = ["class-aware", "balanced", "large-token", "small-interactive", "prefix-cache", "slow-isolation",
            "long-prefill-limit", "balanced/no-tcmalloc", "class-aware-b2048",
            "balanced-least-conn"]
    fig = {m: {p: i(1, 2) for p in prof} for m in ("system_capacity", "combined_score", "rag_ttft_p50_ms",
                                                   "slow_tpot_ratio", "hol_ttft_p50_ms", "tpot_p50_ms")}
    fig["system_capacity"]["class-aware"] = i(5, 6)
    fig["rag_ttft_p50_ms"]["prefix-cache"] = i(0.1, 0.5)
    cpus = dict.fromkeys(prof, 2.0)
    v = cap.judge(RULES, fig, cpus)
    assert v["C1"].word == cap.REPRODUCED and v["C3c"].word == cap.REPRODUCED and v["C3a"].word == cap.REPRODUCED
    assert v["C3b"].word == cap.NO_DIFFERENCE and v["C3"].word == cap.NO_DIFFERENCE
    assert v["X2"].word == cap.NO_DIFFERENCE      # 1-2 vs 1-2: the intervals overlap
    assert v["X3"].word == cap.NO_DIFFERENCE
    fig["system_capacity"]["balanced-least-conn"] = i(0.2, 0.5)
    assert cap.judge(RULES, fig, cpus)["X3"].word == cap.NOT_REPRODUCED
    fig["slow_tpot_ratio"]["slow-isolation"] = i(3, 4)
    assert cap.judge(RULES, fig, cpus)["C3"].word == cap.NOT_REPRODUCED
    with pytest.raises(UsageError, match="claim C1: class-aware had 2.0 CPUs, balanced 1.5"):
        cap.judge(RULES, fig, {**cpus, "balanced": 1.5})


# --- calibration and the equal-load figures ------------------------------------------------------

def test_slo_bounds_are_the_multiples_of_the_unloaded_figures():
    recs = [rec(i, cls=c, sent=i, ttft=0.05 if i >= 3 else 2.0, e2e=0.05 + 0.01 * 10, n=11)
            for c in RULES.slo.classes for i in range(13)]                          # first 3: warm-up, slow
    unl = cap.unloaded(recs, RULES)
    assert unl["rag"].ttft_ms == pytest.approx(50) and unl["rag"].tpot_ms == pytest.approx(10) and unl["rag"].n == 10
    b = cap.slo_bounds(unl, RULES)
    assert b["rag"].ttft_ms == pytest.approx(250) and b["rag"].tpot_ms == pytest.approx(30)
    assert b["slow_reader"].tpot_ms is None
    assert b["batch_summary"].ttft_ms == pytest.approx(400)
    with pytest.raises(UsageError, match="no unloaded figures for class 'agent_loop'"):
        cap.slo_bounds({k: v for k, v in unl.items() if k != "agent_loop"}, RULES)
    with pytest.raises(UsageError, match="rag: 9 requests after warm-up, expected 10"):
        cap.unloaded([r for r in recs if r.id != "r12" or r.cls != "rag"], RULES)


def test_hol_counts_only_short_requests_on_the_replica_that_prefills():
    long = rec("L", cls="long_prefill", sent=20.0, ttft=2.0)
    shorts = [rec(i, cls="interactive_chat", sent=20.5 + i * 0.1, ttft=0.8) for i in range(5)]
    other = [rec(10 + i, cls="rag", sent=20.5, ttft=0.05) for i in range(5)]
    after = [rec(20 + i, cls="agent_loop", sent=23.0, ttft=0.05) for i in range(5)]
    where = {"rL": "a", **{r.id: "a" for r in shorts + after}, **{r.id: "b" for r in other}}
    assert cap.hol_ttft_p50_ms([long, *shorts, *other, *after], where, RULES) == pytest.approx(800)
    assert cap.hol_ttft_p50_ms([long, *shorts[:4]], where, RULES) is None           # under hol.min_during


def test_equal_load_figures():
    win = [rec(0, cls="rag", ttft=0.2), rec(1, cls="rag", ttft=0.4), rec(2, cls="slow_reader", e2e=9.0, bps=1500)]
    assert cap.ttft_p50_ms(win, "rag") == pytest.approx(300)
    assert cap.tpot_p50_ms(win) == pytest.approx(70)                                 # the slow reader left out
    assert cap.slow_tpot_ratio([rec(0, e2e=2.1)], [rec(0, e2e=1.1)]) == pytest.approx(2.0)
    assert cap.equal_load_rate(cap.Capacity(5.0, 4.0, 6.0, "", 3), RULES) == 4.0
    assert cap.equal_load_rate(cap.Capacity(8.0, 8.0, None, "above", 3), RULES) == 6.4   # fraction x highest rate


def test_a_reference_censored_below_puts_the_equal_load_at_the_floor_unless_the_rules_say_none():
    below = cap.Capacity(0.0, None, 0.25, "below", 3)
    assert RULES.equal_load.censored_below == "min_rps"
    assert cap.equal_load_rate(below, RULES) == RULES.search.min_rps
    none = RULES.model_copy(update={"equal_load": RULES.equal_load.model_copy(update={"censored_below": "none"})})
    with pytest.raises(UsageError, match="balanced: capacity below"):
        cap.equal_load_rate(below, none)


def test_the_calibration_replica_gets_the_mean_lane_or_the_committed_number():
    assert RULES.calibration.cpus == "mean_lane"
    assert cap.calibration_cpus(RULES, engine_cpus=1.5, replicas=2) == 0.75
    fixed = RULES.model_copy(update={"calibration": RULES.calibration.model_copy(update={"cpus": 1.0})})
    assert cap.calibration_cpus(fixed, engine_cpus=1.5, replicas=2) == 1.0


def test_a_calibrated_start_is_the_committed_utilization_of_the_measured_demand_and_must_be_resolved():
    rules = cap.load_rules()
    assert rules.search.start_rps == "calibrated"
    with pytest.raises(UsageError, match="resolve it from the calibration first"):
        cap.step([], rules)
    per_session, service = {"a": 0.5, "b": 0.1}, {"a": 0.2, "b": 3.0}       # 0.4 s of one CPU per session
    start = cap.calibrated_start(rules, service, per_session, engine_cpus=1.5)
    assert start == pytest.approx(rules.search.start_utilization * 1.5 / 0.4, abs=1e-4)
    assert cap.step([], cap.resolved(rules, start)).rate == start
    # Service measured on a 0.75-CPU replica counts as 0.75 CPU-seconds per second of it.
    assert cap.calibrated_start(rules, service, per_session, 1.5, calibration_cpus=0.75) == pytest.approx(start / 0.75, abs=1e-4)
    # Clamped to the searched range: a demand so small the start would pass max_rps starts at max_rps.
    assert cap.calibrated_start(rules, {"a": 1e-6, "b": 1e-6}, per_session, 1.5) == rules.search.max_rps
