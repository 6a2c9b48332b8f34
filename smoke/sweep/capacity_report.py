"""capacity.json (its schema) and the capacity report, rendered only from the pre-registered score.

`score_commit` is the commit that last changed the scoring files (SCORED). The renderer refuses,
with one line, when the report's score_commit is not that commit or when a scoring file differs
from it in the working tree or in HEAD: the score, gates and verdict rules were fixed before the
run and may not move while its data is read.
"""

from __future__ import annotations

import math

import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from model.errors import UsageError
from smoke.sweep import capacity as cap
from smoke.sweep.capacity_rules import Rules

SCORED = ("smoke/sweep/capacity.toml", "smoke/sweep/capacity_rules.py", "smoke/sweep/capacity.py")
Word = Literal["reproduced", "not reproduced", "no difference detectable at this power"]


# --- the pre-registration guard -----------------------------------------------------------------

def _git(repo: Path, *args: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise UsageError("git: not found (the report names the commit of its score)") from None


def score_commit(repo: Path, scored: Sequence[str] = SCORED) -> str:
    """The commit that last changed any scoring file (another experiment names its own: hol_probe)."""
    out = _git(repo, "log", "-1", "--format=%H", "--", *scored)
    if out.returncode or not out.stdout.strip():
        raise UsageError(f"{repo}: {', '.join(scored)}: not committed (commit the score before the run)")
    return out.stdout.strip()


def check_pre_registered(repo: Path, commit: str, scored: Sequence[str] = SCORED) -> None:
    last = score_commit(repo, scored)
    if last != commit:
        raise UsageError(f"{repo}: the score changed after the run: its score_commit is {commit[:12]}, "
                         f"{', '.join(scored)} last changed in {last[:12]}; rerun the experiment")
    for what, extra in (("HEAD", ("HEAD",)), ("the working tree", ())):
        if _git(repo, "diff", "--quiet", commit, *extra, "--", *scored).returncode:
            raise UsageError(f"{repo}: {', '.join(scored)} in {what} differ from score_commit {commit[:12]}; "
                             f"the score is pre-registered: render from that commit or rerun")


# --- capacity.json ------------------------------------------------------------------------------

class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IntervalOut(_Out):
    estimate: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, i: cap.Interval) -> IntervalOut:
        return cls(estimate=i.estimate, low=i.low, high=i.high, n=i.n)


MIN_REPETITIONS = 3   # a stated capacity rests on at least this many valid runs at its deciding points


class ClassCapacity(_Out):
    capacity_rps: float = Field(ge=0)
    ci_low: float
    ci_high: float
    repetitions: int = Field(ge=MIN_REPETITIONS)
    censored: Literal["", "below", "above"]
    bracket: tuple[float | None, float | None]
    described: str

    @model_validator(mode="after")
    def _inside(self) -> ClassCapacity:
        if not self.ci_low <= self.capacity_rps <= self.ci_high:
            raise ValueError(f"capacity {self.capacity_rps} outside its interval [{self.ci_low}, {self.ci_high}]")
        return self


class CurvePoint(_Out):
    rate_rps: float
    attainment: dict[str, list[float]]     # per class, one value per valid run
    requests: dict[str, list[int]]         # per class, requests in each run's window


class RunLog(_Out):
    rate_rps: float
    seed: int
    load1: tuple[float, float]             # host 1-min load average at start and end
    foreign_cpu_share: float
    client_overhead_ms: float
    send_lag_p99_ms: float
    throttled_share: float | None = None   # the most throttled replica's share of CFS periods (None: not read)
    discarded: str                         # '' or why it was not averaged in


class ProfileCapacity(_Out):
    total_cpus: float = Field(gt=0)
    system: ClassCapacity | None           # None: not stated (not_stated says why); curve and runs still shown
    classes: dict[str, ClassCapacity]
    combined_score: IntervalOut | None
    curve: list[CurvePoint]
    runs: list[RunLog]
    search: str                            # why the search stopped
    not_stated: str = ""

    @model_validator(mode="after")
    def _stated_or_why(self) -> ProfileCapacity:
        if (self.system is None) == (not self.not_stated):
            raise ValueError("a profile states its capacity or says why not, not both")
        return self


class ClaimOut(_Out):
    what: str
    verdict: Word
    text: str
    detectable: float | None = None


class CapacityReport(_Out):
    score_commit: str = Field(pattern=r"^[0-9a-f]{40}$")
    model: str
    engine: str
    engine_image: str
    host: str = ""        # CPU model, cores, memory: capacities and bounds compare on one host only
    threshold: float
    slo: dict[str, cap.SLOBound]
    profiles: dict[str, ProfileCapacity]
    equal_load_rps: float | None = None
    equal_load: dict[str, dict[str, IntervalOut]] = {}   # metric → profile → interval
    claims: dict[str, ClaimOut] = {}
    elapsed_s: float
    budget_s: float


def _class_capacity(pts: Sequence[cap.Point], rules: Rules, cls: str | None, c: cap.Capacity) -> ClassCapacity:
    """c: cap.capacity of these points for cls (computed once by the caller)."""
    thr, interp = rules.attainment.threshold, rules.capacity.interpolate
    ci = cap.points_ci(pts, rules, lambda ps: cap.capacity(ps, thr, cls, interp).rps)
    return ClassCapacity(capacity_rps=c.rps, ci_low=ci.low, ci_high=ci.high, repetitions=c.repetitions,
                         censored=c.censored, bracket=(c.lo, c.hi), described=c.describe())


def profile_capacity(runs: Sequence[cap.Run], rules: Rules, total_cpus: float) -> ProfileCapacity:
    """A profile's capacities (system and per class) with their CIs, from every run of its search."""
    pts = cap.points(runs, rules)
    if not pts:
        raise UsageError(f"{runs[0].profile if runs else '?'}: no valid run: no capacity")
    classes = list(pts[0].runs[0].requests)
    thr, interp = rules.attainment.threshold, rules.capacity.interpolate
    caps = {c: cap.capacity(pts, thr, c, interp) for c in (None, *classes)}
    # an unfinished search has too few repetitions where it decides: its points are shown, no capacity
    short = [f"{c or 'system'} {k.repetitions}" for c, k in caps.items() if k.repetitions < MIN_REPETITIONS]
    stated = not short
    return ProfileCapacity(
        total_cpus=total_cpus, system=_class_capacity(pts, rules, None, caps[None]) if stated else None,
        classes={c: _class_capacity(pts, rules, c, caps[c]) for c in classes} if stated else {},
        combined_score=IntervalOut.of(cap.points_ci(pts, rules, lambda ps: cap.combined_score(ps, thr, interp)))
        if stated else None,
        not_stated="" if stated else "search unfinished: valid runs at the deciding rate " + ", ".join(short)
        + f" ({MIN_REPETITIONS} needed)",
        curve=[CurvePoint(rate_rps=p.rate, attainment={c: [r.attainment[c] for r in p.runs] for c in classes},
                          requests={c: [r.requests[c] for r in p.runs] for c in classes}) for p in pts],
        runs=[RunLog(rate_rps=r.rate, seed=r.seed, load1=r.load1, foreign_cpu_share=r.foreign_cpu_share,
                     client_overhead_ms=r.client_ttft_mean_ms - r.server_ttft_mean_ms,
                     send_lag_p99_ms=r.send_lag_p99_ms, discarded=cap.discard_reason(r, rules),
                     throttled_share=None if math.isnan(r.throttled_share) else round(r.throttled_share, 4)) for r in runs],
        search=cap.step(runs, rules).why)


def capacity_figures(profiles: dict[str, ProfileCapacity]) -> dict[str, dict[str, cap.Interval]]:
    """The searched metrics of the claims (C1, C2, C3c), per profile with a stated capacity, for capacity.judge."""
    stated = {k: p for k, p in profiles.items() if p.system and p.combined_score}
    return {"system_capacity": {k: cap.Interval(p.system.capacity_rps, p.system.ci_low, p.system.ci_high,
                                                p.system.repetitions,
                                                p.system.bracket[1] if p.system.censored == "below" else None)
                                for k, p in stated.items()},
            "combined_score": {k: cap.Interval(p.combined_score.estimate, p.combined_score.low, p.combined_score.high,
                                               p.combined_score.n) for k, p in stated.items()}}


def equal_load_figures(values: dict[str, dict[str, list[float | None]]], rules: Rules) -> dict[str, dict[str, cap.Interval]]:
    """metric → variant → one value per valid equal-load run (None: the run had no such figure)."""
    return {m: {v: cap.mean_ci(xs, rules) for v, xs in per.items()} for m, per in values.items()}


def claims_out(rules: Rules, verdicts: dict[str, cap.Verdict]) -> dict[str, ClaimOut]:
    return {k: ClaimOut(what=rules.claims[k].what, verdict=v.word, text=v.text, detectable=v.detectable)
            for k, v in verdicts.items()}


# --- the Markdown report ------------------------------------------------------------------------

def _ci(c: ClassCapacity) -> str:
    # censored below, the estimate and interval are 0 (for the bootstrap): the cell states the rate it lies under
    if c.censored == "below":
        return f"< {c.bracket[1] or 0:.3g} (n={c.repetitions})"
    return f"{'>= ' if c.censored == 'above' else ''}{c.capacity_rps:.3g} [{c.ci_low:.3g}, {c.ci_high:.3g}] (n={c.repetitions})"


def host_phrase(host: str) -> str:
    """The host a report's figures were measured on, as one sentence ('' when its plan predates it)."""
    return f"Host: {host}. " if host else ""


def render(report: CapacityReport, repo: Path) -> str:
    """The report's Markdown; refuses (UsageError) unless the score is the pre-registered one. A run
    without searches (equal-load claims only) has no capacity, curve or search runs to show."""
    check_pre_registered(repo, report.score_commit)
    title = "Per-class SLO capacity of each serving profile" if report.profiles else \
        "Equal-load claims of the serving profiles (no rate search in this run)"
    out = [f"# {title}", "",
           f"Score, gates and verdict rules: commit `{report.score_commit}` ({', '.join(f'`{f}`' for f in SCORED)}), "
           "committed before the run.", "",
           f"Model: {report.model}. Engine: {report.engine} (`{report.engine_image}`). "
           + host_phrase(report.host) +
           f"The run took {report.elapsed_s / 60:.1f} min (calibration, pool starts and equal-load runs included); "
           f"the searches' budget is {report.budget_s / 60:.0f} min.", "",
           "## SLOs (multiples of the unloaded single-request figures on this machine)", "",
           "| class | unloaded TTFT ms | TTFT bound ms | unloaded TPOT ms | TPOT bound ms |", "|---|---|---|---|---|"]
    for c, b in sorted(report.slo.items()):
        tp = "-" if b.tpot_ms is None else f"{b.tpot_ms:.1f} ({b.tpot_multiple:g}x)"
        un = "-" if b.unloaded_tpot_ms is None else f"{b.unloaded_tpot_ms:.1f}"
        out.append(f"| {c} | {b.unloaded_ttft_ms:.1f} | {b.ttft_ms:.1f} ({b.ttft_multiple:g}x) | {un} | {tp} |")
    out += _capacity_table(report) if report.profiles else []
    out += ["", "## Claims", ""]
    for k, c in report.claims.items():
        out.append(f"- **{k}** ({c.what}): **{c.verdict}**. {c.text}")
    if report.equal_load:
        out += ["", f"## Equal load ({report.equal_load_rps} sessions/s)", "",
                "| metric | profile | mean [95 % CI] | runs |", "|---|---|---|---|"]
        for m, per in report.equal_load.items():
            out += [f"| {m} | {p} | {i.estimate:.3g} [{i.low:.3g}, {i.high:.3g}] | {i.n} |" for p, i in per.items()]
    out += _search_tables(report) if report.profiles else []
    return "\n".join(out) + "\n"


def _measured_classes(p: ProfileCapacity) -> set[str]:
    return {c for pt in p.curve for c in pt.attainment}   # also where no capacity is stated


def _classes(report: CapacityReport) -> list[str]:
    return sorted(set().union(*map(_measured_classes, report.profiles.values())))


def _capacity_table(report: CapacityReport) -> list[str]:
    classes = _classes(report)
    out = ["", "## Capacity (sessions/s, 95 % bootstrap CI over repetitions)", "",
           "| profile | CPUs | system | " + " | ".join(classes) + " | combined score | search |",
           "|" + "---|" * (len(classes) + 5)]
    for name, p in report.profiles.items():
        if p.system is None or p.combined_score is None:
            out.append(f"| {name} | {p.total_cpus:g} | not stated: {p.not_stated} | " + " | ".join("-" for _ in classes)
                       + f" | - | {p.search} |")
            continue
        cells = [_ci(p.classes[c]) if c in p.classes else "-" for c in classes]
        s = p.combined_score
        out.append(f"| {name} | {p.total_cpus:g} | {_ci(p.system)} | " + " | ".join(cells)
                   + f" | {s.estimate:.3g} [{s.low:.3g}, {s.high:.3g}] | {p.search} |")
    return out + ["", "Capacities are interpolated in attainment between the bracketing rates; `>=`/`<` mark a "
                  "capacity censored at the highest/lowest rate measured."]


def _search_tables(report: CapacityReport) -> list[str]:
    classes = _classes(report)
    out = ["", "## Attainment per point (mean over valid runs; requests per class in the windows)", "",
           "| profile | rate | runs | " + " | ".join(classes) + " |", "|" + "---|" * (len(classes) + 3)]
    for name, p in report.profiles.items():
        for pt in p.curve:
            cells = [f"{sum(pt.attainment[c]) / len(pt.attainment[c]):.2f} ({sum(pt.requests[c])})"
                     if c in pt.attainment else "-" for c in classes]
            out.append(f"| {name} | {pt.rate_rps:g} | {len(next(iter(pt.attainment.values())))} | "
                       + " | ".join(cells) + " |")
    out += ["", "## Runs (host load, client overhead; discarded runs are not averaged in)", "",
            "| profile | rate | seed | load start / end | foreign CPU | client overhead ms | send lag p99 ms | throttled | discarded |",
            "|---|---|---|---|---|---|---|---|---|"]
    for name, p in report.profiles.items():
        out += [f"| {name} | {r.rate_rps:g} | {r.seed} | {r.load1[0]:.2f} / {r.load1[1]:.2f} | {r.foreign_cpu_share:.0%} | "
                f"{r.client_overhead_ms:.0f} | {r.send_lag_p99_ms:.0f} | "
                f"{'-' if r.throttled_share is None else f'{r.throttled_share:.0%}'} | {r.discarded or '-'} |" for r in p.runs]
    return out


def grid(n: int, most_cols: int = 4) -> tuple[int, int]:
    """Rows and columns for n panels: at most most_cols a row, rows as even as they come (7 → 2 x 4)."""
    rows = max(1, -(-n // most_cols))
    return rows, max(1, -(-n // rows))


def plot(report: CapacityReport, path: Path) -> None:
    """Attainment vs rate, one panel per profile, one line per class, the threshold dashed, the system
    capacity dotted (and in the title)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter
    rows, cols = grid(len(report.profiles))
    # one rate axis for all: the profiles had equal CPU, so their knees compare across panels
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows), sharex=True, sharey=True, squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[len(report.profiles):]:
        ax.set_visible(False)
    for k, (ax, (name, p)) in enumerate(zip(flat, report.profiles.items())):
        for c in sorted(_measured_classes(p)):
            xs = [pt.rate_rps for pt in p.curve]
            ax.plot(xs, [sum(pt.attainment[c]) / len(pt.attainment[c]) for pt in p.curve], marker="o", label=c)
        ax.axhline(report.threshold, ls="--", c="k", lw=0.8)
        if p.system is not None and p.system.capacity_rps > 0:
            ax.axvline(p.system.capacity_rps, ls=":", c="grey", lw=1.0)
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
        ax.set_title(name if p.system is None else f"{name}: {_ci(p.system)}", fontsize=8)
        if k + cols >= len(report.profiles):   # no panel below this one: its rate axis is labelled
            ax.xaxis.set_tick_params(labelbottom=True)
            ax.set_xlabel("sessions/s")
    for row in axes:
        row[0].set_ylabel("SLO attainment")
    flat[len(report.profiles) - 1].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(report: CapacityReport, repo: Path, out_dir: Path) -> Path:
    """capacity.json, README.md and attainment.png under out_dir; nothing when the guard refuses."""
    text = render(report, repo)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "capacity.json").write_text(report.model_dump_json(indent=1) + "\n")
    if report.profiles:     # an equal-load-only run has no search, hence no curve
        plot(report, out_dir / "attainment.png")
        text = text.replace("## SLOs", "![attainment vs rate](attainment.png)\n\n## SLOs", 1)
    (out_dir / "README.md").write_text(text)
    return out_dir / "README.md"
