"""The gate: each class's SLO (from the mix file) checked against measured percentiles.

A verdict lists every check; it fails naming the class and the bound, e.g.
"interactive_chat: ttft p90 3120 ms > 3000 ms".
"""

from __future__ import annotations

from dataclasses import dataclass

from smoke.metrics import Summary
from smoke.mix import Mix


@dataclass(frozen=True)
class Check:
    cls: str
    what: str          # "success", "ttft", "itl", "e2e", "isolation"
    bound: float
    value: float | None
    passed: bool
    text: str


@dataclass(frozen=True)
class Verdict:
    passed: bool
    checks: tuple[Check, ...]

    @property
    def failures(self) -> tuple[str, ...]:
        return tuple(c.text for c in self.checks if not c.passed)

    def line(self) -> str:
        if self.passed:
            return f"gate passed: {len(self.checks)} checks"
        return "gate failed: " + "; ".join(self.failures)


def evaluate(summary: Summary, mix: Mix) -> Verdict:
    checks: list[Check] = []
    for c in mix.classes:
        s = summary.classes.get(c.name)
        n_ok, n = (s.ok, s.requests) if s else (0, 0)
        ratio = n_ok / n if n else 0.0
        # A class that never succeeded fails whatever min_success says: nothing was measured.
        ok = n_ok > 0 and ratio >= c.slo.min_success
        checks.append(Check(c.name, "success", c.slo.min_success, ratio, ok,
                            f"{c.name}: success {n_ok}/{n} = {ratio:.2f} {'>=' if ok else '<'} {c.slo.min_success:.2f}"
                            + ("" if n else " (no request of this class ran)")))
        key = f"p{c.slo.percentile}"
        for what, bound, dist in (("ttft", c.slo.ttft_ms, s.ttft_ms if s else {}),
                                  ("itl", c.slo.itl_ms, s.itl_ms if s else {}),
                                  ("e2e", c.slo.e2e_ms, s.e2e_ms if s else {})):
            if bound is None:
                continue
            v = dist.get(key)
            passed = v is not None and v <= bound
            shown = "n/a" if v is None else f"{v:.0f} ms"
            checks.append(Check(c.name, what, bound, v, passed,
                                f"{c.name}: {what} {key} {shown} {'<=' if passed else '>'} {bound:.0f} ms"))
    bound = mix.gates.get("slow_isolation_max_itl_ratio")
    if bound is not None:
        ratio = summary.isolation.get("itl_ratio")
        # No overlap between slow and other streams: nothing to hold against the bound.
        passed = ratio is None or ratio <= bound
        shown = "n/a (no overlap)" if ratio is None else f"{ratio:.2f}"
        checks.append(Check("slow_reader", "isolation", bound, ratio, passed,
                            f"slow_reader: others' time per token with/without slow streams {shown} "
                            f"{'<=' if passed else '>'} {bound:.2f}"))
    return Verdict(all(c.passed for c in checks), tuple(checks))
