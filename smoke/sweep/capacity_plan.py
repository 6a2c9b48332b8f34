"""Planning the capacity experiment before it runs: the interleaved order and the expected time.

Not part of the score (it decides nothing about the data): it replays capacity.step against an
assumed knee per profile to count the runs and pool starts the pre-registered rules will ask for,
so windows, resolution and rate limits can be set to fit the budget from a MEASURED run overhead
and pool start, before the run. No Docker, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from model.errors import UsageError
from smoke.mix import Mix
from smoke.sweep import capacity as cap
from smoke.sweep.capacity_rules import Rules


def requests_per_session(mix: Mix) -> dict[str, float]:
    """Expected requests per arriving session, per class (an agent session sends its mean turn count)."""
    total = sum(c.weight for c in mix.classes)
    return {c.name: c.weight / total * ((c.turns.count.lo + c.turns.count.hi) / 2 if c.turns else 1.0)
            for c in mix.classes}


def order(profiles: Sequence[str], rules: Rules) -> list[str]:
    """The turn order of every pass: the equal-load reference first (its pass-1 capacity fixes the
    equal-load rate before any other profile's turn), then the rest as given."""
    ref = rules.equal_load.reference
    if ref not in profiles:
        raise UsageError(f"profiles: the equal-load reference {ref!r} (capacity.toml equal_load.reference) "
                             "is not among them")
    return [ref, *(p for p in profiles if p != ref)]


@dataclass(frozen=True)
class Estimate:
    runs: dict[str, int]              # per profile
    pool_starts: int
    seconds: float

    @property
    def minutes(self) -> float:
        return self.seconds / 60


def estimate(rules: Rules, knee_rps: Mapping[str, float], per_session: Mapping[str, float],
             run_overhead_s: float, pool_start_s: float) -> Estimate:
    """Expected time of the searches if profile p's attainment steps down at knee_rps[p]: each run
    costs its arrival window (capacity.duration_for) + run_overhead_s (drain wait, scrapes, between
    runs); each profile's turn in a pass that runs anything costs one pool start."""
    classes = list(per_session)
    runs: dict[str, list[cap.Run]] = {p: [] for p in knee_rps}
    seconds, starts = 0.0, 0

    def turn(p: str, reps: int) -> bool:
        nonlocal seconds, starts
        ran = False
        while (rate := cap.next_rate(runs[p], rules, reps)) is not None:
            att = rules.window.min_requests_per_class if rate <= knee_rps[p] else 0
            runs[p].append(cap.Run(p, rate, len(runs[p]), dict.fromkeys(classes, att),
                                   dict.fromkeys(classes, rules.window.min_requests_per_class), (0.0, 0.0), 1,
                                   0.0, 0.0, 0.0, 0.0))
            seconds += cap.duration_for(rate, per_session, rules) + run_overhead_s
            ran = True
        starts += ran
        seconds += pool_start_s if ran else 0.0
        return ran

    for k in range(1, rules.repetitions.per_point + 1):
        for p in knee_rps:
            turn(p, k)
    while any([turn(p, rules.repetitions.per_point) for p in knee_rps]):
        pass
    return Estimate({p: len(r) for p, r in runs.items()}, starts, seconds)
