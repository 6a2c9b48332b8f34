"""The schema of capacity.toml, the pre-registered rules of the capacity experiment (issue 16).

Part of the pre-registered score: capacity_report.py refuses to render when this file, capacity.toml
or capacity.py changed after the report's `score_commit`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from model.toml import Fault, NonEmptyStr, NonNegativeNumber, PositiveInt, PositiveNumber, Strict

SEARCHED = ("system_capacity", "combined_score")                               # per profile, from its search
EQUAL_LOAD = ("rag_ttft_p50_ms", "slow_tpot_ratio", "hol_ttft_p50_ms", "tpot_p50_ms")  # per equal-load variant
METRICS = SEARCHED + EQUAL_LOAD

Fraction = Field(gt=0, lt=1, description="a fraction in (0, 1)")


class _Attainment(Strict):
    threshold: float = Fraction


class _Window(Strict):
    warmup_s: NonNegativeNumber
    drain_s: NonNegativeNumber
    min_measure_s: PositiveNumber
    min_requests_per_class: PositiveInt
    margin: float = Field(ge=1, description="a number >= 1")


class _ClassSLO(Strict):
    ttft_multiple: PositiveNumber
    tpot_multiple: PositiveNumber | None = None


class _SLO(Strict):
    classes: dict[str, _ClassSLO] = Field(min_length=1, description="a table of class = {ttft_multiple, tpot_multiple}")


class _Calibration(Strict):
    warmup_requests: int = Field(ge=0, description="a non-negative integer")
    requests_per_class: PositiveInt
    cpus: PositiveNumber | Literal["mean_lane"]
    turns: Literal["first", "all"] = "first"   # which requests of a multi-turn session calibrate its class


class _Lanes(Strict):
    cfs_period_us: int = Field(ge=1000, le=1_000_000, description="an integer of microseconds in [1000, 1000000]")


class _Repetitions(Strict):
    coarse: PositiveInt
    per_point: int = Field(ge=3, description="an integer >= 3 (the issue's minimum)")


class _Search(Strict):
    start_rps: PositiveNumber | Literal["calibrated"]
    start_utilization: float = Fraction
    factor: float = Field(gt=1, description="a factor > 1")
    min_rps: PositiveNumber
    max_rps: PositiveNumber
    resolution: float = Fraction
    max_distinct_rates: int = Field(ge=3, description="an integer >= 3")

    @model_validator(mode="after")
    def _ordered(self) -> _Search:
        if self.start_rps != "calibrated" and not self.min_rps <= self.start_rps <= self.max_rps:
            raise Fault("start_rps", f"expected min_rps <= start_rps <= max_rps, got {self.start_rps}")
        return self


class _Capacity(Strict):
    interpolate: bool


class _Bootstrap(Strict):
    confidence: float = Fraction
    n_resamples: PositiveInt
    method: Literal["percentile", "basic", "BCa"]
    seed: int


class _Discard(Strict):
    max_load_per_core: PositiveNumber
    max_foreign_cpu_share: float = Field(gt=0, lt=1, description="a fraction in (0, 1)")
    max_client_overhead_ms: PositiveNumber
    max_client_overhead_fraction: PositiveNumber
    max_send_lag_p99_ms: PositiveNumber
    max_discards_per_rate: int = Field(ge=0, description="a non-negative integer")


class _EqualLoad(Strict):
    fraction: float = Fraction
    reference: NonEmptyStr
    censored_below: Literal["min_rps", "none"]
    variants: dict[str, NonEmptyStr] = Field(min_length=1, description="a table of variant = what it runs")


class _Claim(Strict):
    what: NonEmptyStr
    metric: Literal[METRICS] | None = None  # type: ignore[valid-type]
    profile: str = ""
    versus: list[NonEmptyStr] = []
    better: Literal["higher", "lower"] | None = None
    parts: list[NonEmptyStr] = []

    @model_validator(mode="after")
    def _one_kind(self) -> _Claim:
        if self.parts and (self.metric or self.versus):
            raise Fault("parts", "expected either parts or metric/profile/versus/better, not both")
        if not self.parts and not (self.metric and self.profile and self.versus and self.better):
            raise Fault("metric", "expected metric, profile, versus and better (or parts)")
        return self

    def variants(self) -> list[str]:
        """The equal-load variants this claim compares (none for a searched metric or a compound claim);
        slow_tpot_ratio needs each one's no-slow twin too."""
        if self.metric not in EQUAL_LOAD:
            return []
        both = self.metric == "slow_tpot_ratio"
        return [x for v in (self.profile, *self.versus) for x in ((v, f"{v}/no-slow") if both else (v,))]


class _Hol(Strict):
    short_classes: list[NonEmptyStr] = Field(min_length=1, description="a non-empty list of class names")
    long_class: NonEmptyStr
    min_during: PositiveInt


class _Budget(Strict):
    search_minutes: PositiveNumber


class Rules(Strict):
    attainment: _Attainment
    window: _Window
    slo: _SLO
    calibration: _Calibration
    lanes: _Lanes
    repetitions: _Repetitions
    search: _Search
    capacity: _Capacity
    bootstrap: _Bootstrap
    discard: _Discard
    equal_load: _EqualLoad
    claims: dict[str, _Claim]
    hol: _Hol
    budget: _Budget

    @model_validator(mode="after")
    def _names_known(self) -> Rules:
        variants = self.equal_load.variants
        for name, c in self.claims.items():
            for p in c.parts:
                if p not in self.claims or self.claims[p].parts:
                    raise Fault(f"claims.{name}.parts", f"expected names of claims with a metric, got {p!r}")
            for need in c.variants():
                if need not in variants:
                    raise Fault(f"claims.{name}", f"expected variants of equal_load.variants, got {need!r}")
        return self


