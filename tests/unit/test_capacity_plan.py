"""Planning the capacity experiment (smoke/sweep/capacity_plan.py): the interleaved order and the
expected time of the searches the pre-registered rules ask for."""

from __future__ import annotations

import pytest

from model.errors import UsageError
from smoke import mix
from smoke.sweep import capacity as cap, capacity_plan as plan

RULES = cap.resolved(cap.load_rules(), 2.0)   # capacity.toml says "calibrated": the grid these tests walk


def test_requests_per_session_counts_agent_turns():
    ps = plan.requests_per_session(mix.load("default"))
    assert ps["long_prefill"] == pytest.approx(0.1) and ps["agent_loop"] == pytest.approx(0.15 * 3.5)


def test_order_puts_the_equal_load_reference_first():
    assert plan.order(["class-aware", "balanced", "prefix-cache"], RULES) == ["balanced", "class-aware", "prefix-cache"]
    with pytest.raises(UsageError, match="equal-load reference 'balanced'"):
        plan.order(["class-aware"], RULES)


def test_estimate_counts_runs_windows_and_pool_starts_of_every_pass():
    # knee 3: pass 1 runs 2, 4, 3, 3.5 once; passes 2 and 3 repeat the bracket 3 / 3.5
    e = plan.estimate(RULES, {"p": 3.0}, {"x": 0.1}, run_overhead_s=0.0, pool_start_s=45.0)
    assert e.runs == {"p": 8} and e.pool_starts == 3
    # windows: 10 + max(40, 1.2 x 10 / (rate x 0.1)) + 5 → 75 s at 2, 55 s at 3, 3.5 and 4
    assert e.seconds == pytest.approx(75 + 55 * 7 + 3 * 45)
    two = plan.estimate(RULES, {"p": 3.0, "q": 3.0}, {"x": 0.1}, 10.0, 45.0)
    assert two.pool_starts == 6 and two.seconds == pytest.approx(2 * (e.seconds + 8 * 10.0))
