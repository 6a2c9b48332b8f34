"""capacity.json and the report from a stored capacity experiment (capacity_runner.Store).

Everything that decides is the pre-registered score's: capacities and intervals from
capacity_report.profile_capacity, the equal-load figures from capacity.py's helpers over the raw
records (windows re-read from the compressed files), verdicts from capacity.judge. Claims whose
profiles or variants were not measured (a partial or pilot run) are left out and listed as such,
never guessed. A PILOT (a fixed rate grid instead of the search) is written with a banner
saying so, and never over notes/sweep's report.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from model.errors import UsageError
from smoke.sweep import capacity as cap, capacity_report as rep, hostload
from smoke.sweep.capacity_rules import EQUAL_LOAD, Rules
from smoke.sweep.capacity_runner import Store, entries_by, read_xz_records, to_run


def _windows(store: Store, entries: Sequence[dict], rules: Rules):
    """(entry, window records, replica map) of each VALID run among entries."""
    import json
    import lzma
    for e in entries:
        if cap.discard_reason(to_run(e), rules):
            continue
        d = store.root / e["dir"]
        recs = read_xz_records(d / "records.jsonl.xz")
        rp = d / "replicas.json.xz"
        replicas = json.loads(lzma.decompress(rp.read_bytes())) if rp.is_file() else {}
        yield e, cap.window(recs, e["duration_s"], rules), replicas


def equal_load_values(store: Store, entries: Sequence[dict], rules: Rules) -> dict[str, dict[str, list[float | None]]]:
    """metric → variant → one value per valid equal-load run (slow_tpot_ratio: one per pass with both
    the variant's run and its no-slow run valid)."""
    out: dict[str, dict[str, list[float | None]]] = {m: {} for m in EQUAL_LOAD}
    wins: dict[tuple[str, int], list] = {}
    for v, es in entries_by([e for e in entries if e["variant"]], "variant"):
        for e, win, replicas in _windows(store, es, rules):
            wins.setdefault((v, e["pass"]), win)
            out["rag_ttft_p50_ms"].setdefault(v, []).append(cap.ttft_p50_ms(win, "rag"))
            out["tpot_p50_ms"].setdefault(v, []).append(cap.tpot_p50_ms(win))
            out["hol_ttft_p50_ms"].setdefault(v, []).append(cap.hol_ttft_p50_ms(win, replicas, rules))
    for (v, k), win in wins.items():
        if (ns := wins.get((f"{v}/no-slow", k))) is not None:
            out["slow_tpot_ratio"].setdefault(v, []).append(cap.slow_tpot_ratio(win, ns))
    return out


def miss_causes(store: Store, rules: Rules, bounds: dict[str, cap.SLOBound]) -> list[str]:
    """Markdown: per profile (searches and variants), rate and class, the valid runs' window requests
    pooled: how many missed and why (failed / TTFT over / TPOT over with TTFT met) and TTFT p50 / p90."""
    import numpy as np
    groups: dict[tuple[str, float], list] = {}
    for e, win, _ in _windows(store, store.entries(), rules):
        groups.setdefault((e["label"], e["rate"]), []).extend(win)
    classes = sorted(bounds)
    out = ["## Why requests missed (valid runs pooled; failed / TTFT over / TPOT over, of n; TTFT p50 / p90 ms)", "",
           "| profile | rate | " + " | ".join(classes) + " |", "|" + "---|" * (len(classes) + 2)]
    for (label, rate), win in sorted(groups.items()):
        cells = []
        for c in classes:
            rs = [r for r in win if r.cls == c]
            why = Counter(miss_cause(r, bounds[c]) for r in rs)
            t = [r.ttft_s * 1000 for r in rs if r.ok and r.ttft_s is not None]
            q = f"; {np.percentile(t, 50):.0f} / {np.percentile(t, 90):.0f}" if t else ""
            cells.append(f"{why['failed']}/{why['ttft']}/{why['tpot']} of {len(rs)}{q}")
        out.append(f"| {label} | {rate:g} | " + " | ".join(cells) + " |")
    return out


def miss_cause(r, b: cap.SLOBound) -> str:
    """'' (met), 'failed' (no answer or no first token), 'ttft' (first token over), 'tpot' (cadence over)."""
    if cap.meets(r, b):
        return ""
    return "failed" if not r.ok or r.ttft_s is None else "ttft" if r.ttft_s * 1000 > b.ttft_ms else "tpot"


def measurable_claims(rules: Rules, figures: dict[str, dict[str, cap.Interval]]) -> tuple[Rules, list[str]]:
    """The rules with only the claims every figure of which was measured; and the names left out."""
    keep, left = {}, []
    for name, c in sorted(rules.claims.items(), key=lambda kv: bool(kv[1].parts)):
        ok = (all(p in keep for p in c.parts) if c.parts else
              all(p in figures.get(c.metric, {}) for p in (c.profile, *c.versus)))
        if ok:
            keep[name] = c
        else:
            left.append(name)
    return rules.model_copy(update={"claims": keep}), left


def build(store: Store, rules: Rules, plan: dict, calibration: dict, elapsed_s: float,
          say=print) -> tuple[rep.CapacityReport, list[str]]:
    """The report of everything stored; (report, notes for the reader: what is left out and why)."""
    entries = store.entries()
    notes: list[str] = []
    d = rules.discard
    if calibration.get("foreign_cpu_share", 0) > d.max_foreign_cpu_share or \
            max(calibration.get("load1", [0])) > d.max_load_per_core * len(str(plan.get("cores", "0")).split(",")):
        notes.append(f"the calibration ran on a busy host (load {calibration['load1'][0]:.2f} / {calibration['load1'][1]:.2f}, "
                     f"foreign CPU {calibration['foreign_cpu_share']:.0%}, over the runs' discard bounds): its unloaded "
                     "figures, hence the SLO bounds, are looser than an idle host's")
    profiles: dict[str, rep.ProfileCapacity] = {}
    for p in plan["profiles"]:
        runs = [to_run(e) for e in entries if e["label"] == p and not e["variant"]]
        if not runs:
            if plan.get("search", True):
                notes.append(f"{p}: no run yet")
            continue
        try:
            profiles[p] = rep.profile_capacity(runs, rules, plan["engine_cpus"])
        except (UsageError, ValueError) as exc:   # no valid run; pydantic: an interval that misses its estimate
            notes.append(f"{p}: no capacity stated ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})")
            continue
        if profiles[p].not_stated:
            notes.append(f"{p}: no capacity stated ({profiles[p].not_stated}); its points and runs are shown")
    if not any(p.system for p in profiles.values()) and (plan.get("search", True) or not any(e["variant"] for e in entries)):
        raise UsageError(f"{store.root}: no profile has a capacity yet (runs stored: {len(entries)})")
    figures = rep.capacity_figures(profiles)
    eq_rate = store.state().get("equal_load_rps")
    eq: dict[str, dict[str, rep.IntervalOut]] = {}
    if any(e["variant"] for e in entries):
        values = equal_load_values(store, entries, rules)
        for m, per in values.items():
            for v, xs in per.items():
                good = [x for x in xs if x is not None and not math.isnan(x)]
                if len(good) < 2:
                    notes.append(f"equal load {m} {v}: {len(good)} valid value(s), no interval")
                    continue
                i = cap.mean_ci(good, rules)
                figures.setdefault(m, {})[v] = i
                eq.setdefault(m, {})[v] = rep.IntervalOut.of(i)
    judged, left = measurable_claims(rules, figures)
    if left:
        notes.append("claims not judged (a profile or variant they compare was not measured or has no stated capacity): " + ", ".join(left))
    verdicts = cap.judge(judged, figures, {p: c.total_cpus for p, c in profiles.items()}) if judged.claims else {}
    report = rep.CapacityReport(
        score_commit=plan["score_commit"], model=plan["model"], engine=plan["engine"], engine_image=plan["engine_image"],
        host=plan.get("host", ""), threshold=rules.attainment.threshold,
        slo={c: cap.SLOBound(**b) for c, b in calibration["bounds"].items()},
        profiles=profiles, equal_load_rps=eq_rate, equal_load=eq, claims=rep.claims_out(rules, verdicts),
        elapsed_s=elapsed_s, budget_s=rules.budget.search_minutes * 60)
    return report, notes


def write(report: rep.CapacityReport, repo: Path, out_dir: Path, plan: dict, calibration: dict, notes: list[str],
          pilot: str = "", cfs_period_us: int = 100_000, causes: Sequence[str] = (),
          variant_runs: Sequence[dict] = ()) -> Path:
    """capacity_report.write (which refuses unless the score is the pre-registered one), then the
    runner's own sections: lanes, calibration, why requests missed, the equal-load runs, what was left
    out; a PILOT banner when pilot != ''."""
    md = rep.write(report, repo, out_dir)
    text = md.read_text()
    extra = ["", "## Lanes (CFS quotas; every profile the same total engine CPU)", "",
             f"Engines: {plan['engine_cpus']:g} CPUs per profile over cores {plan['cores']}, each quota enforced per a "
             f"{cfs_period_us / 1000:g} ms CFS period (the runs table gives each replica's throttled periods); the replay "
             "client and nginx share the rest of the host (not quota'd; their overhead is measured per run).", "",
             "| profile | replica | CPUs | OpenMP cores |", "|---|---|---|---|"]
    for p, lanes in plan.get("lanes", {}).items():
        extra += [f"| {p} | {x['host']} | {x['cpus']:g} | {x['threads']} |" for x in lanes]
    extra += ["", f"Service time per class (unloaded, {calibration.get('cpus', 1.0):g} CPUs; sizes the lanes): "
              + ", ".join(f"{c} {s * 1000:.0f} ms" for c, s in sorted(calibration["service_s"].items())),
              f"Calibration{source(calibration)}: host load {calibration['load1'][0]:.2f} / {calibration['load1'][1]:.2f}, "
              f"foreign CPU {calibration['foreign_cpu_share']:.0%}."]
    if causes:
        extra += ["", *causes]
    if variant_runs:
        extra += ["", "## Equal-load runs (attainment per class in the window; discarded runs are never averaged in)", "",
                  *runs_table(variant_runs, sorted(calibration["bounds"]))]
    if notes:
        extra += ["", "## Not stated", ""] + [f"- {n}" for n in notes]
    if pilot:
        text = f"> **PILOT** — {pilot}\n\n" + text
    md.write_text(text + "\n".join(extra) + "\n")
    return md


def runs_note(store: Store, plan: dict, calibration: dict, rules: Rules, why: str, pilot: str,
              resume: str = "") -> str:
    """The Markdown when no capacity can be stated yet (a pilot, or a run stopped before any deciding
    point had its repetitions): what was run, under what host load, and why each run was or was not
    kept. States no capacity and no verdict."""
    entries = store.entries()
    classes = sorted(rules.slo.classes)
    banner = (f"> **PILOT** — {pilot}" if pilot else
              f"> **IN PROGRESS** — the pre-registered search stopped before its end; `{resume}` resumes it")
    title = "Capacity pilot" if pilot else "Capacity experiment (unfinished)"
    out = [banner, "", f"# {title}: runs only (no capacity stated)", "",
           f"No capacity or verdict is stated: {why}.", "",
           f"Profiles: {', '.join(plan['profiles'])}. Passes: {max((e['pass'] for e in entries), default=0)} of at least "
           f"{rules.repetitions.per_point} begun. Stored runs: {len(entries)} "
           f"({sum(1 for e in entries if e['discarded'])} discarded).", "",
           f"Score: commit `{plan['score_commit']}`. Model: {plan['model']}. Engine: {plan['engine']} "
           f"(`{plan['engine_image']}`). " + rep.host_phrase(plan.get("host", ""))
           + f"Engines: {plan['engine_cpus']:g} CPUs per profile over cores {plan['cores']}.", "",
           f"## Calibration (unloaded, {calibration.get('cpus', 1.0):g} CPUs){source(calibration)}", "",
           f"Host load {calibration['load1'][0]:.2f} / {calibration['load1'][1]:.2f}, foreign CPU "
           f"{calibration['foreign_cpu_share']:.0%}; replica start {calibration['startup_s']:.0f} s, "
           f"{calibration['wall_s']:.0f} s of sequential requests.", "",
           "| class | unloaded TTFT ms | TTFT bound ms | unloaded TPOT ms | TPOT bound ms | service s |", "|---|---|---|---|---|---|"]
    for c in classes:
        b = calibration["bounds"][c]
        tp = "-" if b["tpot_ms"] is None else f"{b['unloaded_tpot_ms']:.1f} | {b['tpot_ms']:.1f}"
        out.append(f"| {c} | {b['unloaded_ttft_ms']:.0f} | {b['ttft_ms']:.0f} | {tp if b['tpot_ms'] is not None else '- | -'} "
                   f"| {calibration['service_s'][c]:.2f} |")
    out += ["", "## Runs (attainment per class in the window; discarded runs are never averaged in)", "",
            *runs_table(entries, classes)]
    return "\n".join(out) + "\n"


def source(calibration: dict) -> str:
    """Where the calibration was measured when this run took it from an earlier one (--calibration-from)."""
    return f" (taken from run {calibration['from']}, same setup)" if calibration.get("from") else ""


def runs_table(entries: Sequence[dict], classes: Sequence[str]) -> list[str]:
    """Markdown rows: each stored run with its attainment per class and the instrument's readings."""
    out = ["| profile | pass | rate | seed | wall s | " + " | ".join(classes)
           + " | load start / end | foreign CPU | ours | client overhead ms | throttled (per replica) | discarded |",
           "|" + "---|" * (len(classes) + 11)]
    for e in entries:
        att = [f"{e['good'][c] / e['requests'][c]:.2f} ({e['requests'][c]})" if e["requests"].get(c) else "-" for c in classes]
        out.append(f"| {e['label']} | {e['pass']} | {e['rate']:g} | {e['seed']} | {e['wall_s']:.0f} | " + " | ".join(att)
                   + f" | {e['load1'][0]:.2f} / {e['load1'][1]:.2f} | {e['foreign_cpu_share']:.0%} | "
                   f"{e['ours_cpu_share']:.0%} | {e['client_ttft_mean_ms'] - e['server_ttft_mean_ms']:.0f} | "
                   f"{throttle_cell(e)} | {e['discarded'] or '-'} |")
    return out


def throttle_cell(e: dict) -> str:
    """Each replica's share of throttled CFS periods and its mean throttled stretch, e.g. "31 % x 58 ms"."""
    ts = [hostload.Throttle(**v) for v in (e.get("throttle") or {}).values() if v["periods"]]
    return ", ".join(f"{t.share:.0%} x {1000 * t.throttled_s / t.throttled:.0f} ms" if t.throttled else "0 %"
                     for t in ts) or "-"
