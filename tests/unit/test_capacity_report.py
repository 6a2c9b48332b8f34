"""capacity.json's schema and the profile summary built from constructed runs (no git here: the
pre-registration guard shells out to git and is tested in tests/integration/test_capacity_guard.py)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from smoke.sweep import capacity as cap, capacity_report as rep

RULES = cap.resolved(cap.load_rules(), 2.0)   # capacity.toml says "calibrated": the grid these tests walk
FAST = RULES.model_copy(update={"bootstrap": RULES.bootstrap.model_copy(update={"n_resamples": 999})})


def runs_for(profile: str, knee: float, load=(0.5, 0.5)) -> list[cap.Run]:
    """A search driven to its end against a known knee: a passes everywhere, b fails above the knee."""
    runs: list[cap.Run] = []
    while (rate := cap.next_rate(runs, FAST)) is not None:
        k = len(runs)
        b = 100 - (k % 3) if rate <= knee else 60 + (k % 3) * 5
        runs.append(cap.Run(profile, rate, k, {"a": 100, "b": b}, {"a": 100, "b": 100}, load, 2, 0.02, 120.0, 100.0, 10.0))
    return runs


def test_profile_capacity_states_system_and_class_capacities_with_intervals():
    runs = runs_for("p", 3.3)
    runs.append(cap.Run("p", 2.0, 99, {"a": 0, "b": 0}, {"a": 100, "b": 100}, (9.0, 9.0), 2, 0.02, 120.0, 100.0, 10.0))
    p = rep.profile_capacity(runs, FAST, 2.0)
    assert p.system.ci_low <= p.system.capacity_rps <= p.system.ci_high
    assert p.system.bracket[0] <= 3.3 < p.system.bracket[1] and p.system.repetitions >= 3
    assert p.classes["a"].censored == "above" and p.classes["b"].capacity_rps == pytest.approx(p.system.capacity_rps)
    assert [r.discarded for r in p.runs].count("") == len(runs) - 1 and p.runs[-1].discarded.startswith("host load")
    assert all(0.0 not in pt.attainment["a"] for pt in p.curve)               # the loaded run's zeros are not in a curve
    assert p.search == "resolved" and p.combined_score.low <= p.combined_score.estimate <= p.combined_score.high


def _report(**over) -> dict:
    p = rep.profile_capacity(runs_for("p", 3.3), FAST, 2.0)
    b = cap.SLOBound(ttft_ms=500, tpot_ms=50, unloaded_ttft_ms=100, unloaded_tpot_ms=10, ttft_multiple=5, tpot_multiple=5)
    d = {"score_commit": "a" * 40, "model": "m", "engine": "vllm 0.33.0", "engine_image": "img", "threshold": 0.9, "slo": {"a": b, "b": b},
         "profiles": {"p": p}, "elapsed_s": 60.0, "budget_s": 5400.0}
    return {**d, **over}


def test_capacity_json_round_trips_and_rejects_what_the_issue_forbids():
    r = rep.CapacityReport(**_report())
    assert rep.CapacityReport.model_validate_json(r.model_dump_json()) == r
    with pytest.raises(ValidationError, match="score_commit"):
        rep.CapacityReport(**_report(score_commit="HEAD"))
    c = r.profiles["p"].system.model_dump()
    with pytest.raises(ValidationError, match="repetitions"):
        rep.ClassCapacity(**{**c, "repetitions": 2})
    with pytest.raises(ValidationError, match="outside its interval"):
        rep.ClassCapacity(**{**c, "capacity_rps": c["ci_high"] + 1})
    with pytest.raises(ValidationError, match="states its capacity or says why not"):
        rep.ProfileCapacity(**{**r.profiles["p"].model_dump(), "not_stated": "search unfinished"})
    with pytest.raises(ValidationError, match="verdict"):
        rep.ClaimOut(what="x", verdict="partly reproduced", text="")


def test_searches_to_verdict_class_aware_vs_one_pool():
    profiles = {"class-aware": rep.profile_capacity(runs_for("class-aware", 6.5), FAST, 2.0),
                "balanced": rep.profile_capacity(runs_for("balanced", 3.3), FAST, 2.0)}
    only_c1 = FAST.model_copy(update={"claims": {"C1": FAST.claims["C1"]}})
    v = cap.judge(only_c1, rep.capacity_figures(profiles), {"class-aware": 2.0, "balanced": 2.0})
    assert v["C1"].word == cap.REPRODUCED and "intervals separate" in v["C1"].text
    (c1,) = rep.claims_out(only_c1, v).values()
    assert c1.verdict == "reproduced" and c1.what.startswith("one shared pool saturates")
    el = rep.equal_load_figures({"rag_ttft_p50_ms": {"a": [100.0, 110.0, None, 120.0]}}, FAST)
    assert el["rag_ttft_p50_ms"]["a"].n == 3 and el["rag_ttft_p50_ms"]["a"].estimate == pytest.approx(110.0)


def test_a_capacity_censored_below_reads_as_under_the_lowest_rate_not_as_zero():
    runs = [cap.Run("p", r, k, {"a": 100, "b": 50}, {"a": 100, "b": 100}, (0.5, 0.5), 2, 0.02, 120.0, 100.0, 10.0)
            for k, r in enumerate([0.25, 0.25, 0.25, 0.5, 0.5, 0.5])]          # every rate fails on b
    p = rep.profile_capacity(runs, FAST, 2.0)
    assert p.system.censored == "below" and p.system.capacity_rps == 0
    assert rep._ci(p.system) == "< 0.25 (n=3)"               # not "< 0.25 [0, 0]": that interval is the encoding
    assert rep._ci(p.classes["a"]).startswith(">= 0.5 [")
    ok = rep.profile_capacity([cap.Run("q", r, k, {"a": 100, "b": 100}, {"a": 100, "b": 100}, (0.5, 0.5), 2, 0.02,
                                       120.0, 100.0, 10.0) for k, r in enumerate([0.25] * 3 + [0.5] * 3)], FAST, 2.0)
    fig = rep.capacity_figures({"p": p, "q": ok})["system_capacity"]
    assert fig["p"].below == 0.25 and fig["q"].below is None
    text = cap.compare(fig["q"], fig["p"], "higher").text
    assert "vs < 0.25 (censored: the lowest rate measured failed)" in text and "0 [0, 0]" not in text
