"""Outcomes → one deployment note per distro (Markdown + JSON). Reads the results store only."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from model.results import ResultsStore, StageOutcome

from model.stages import NAMES as ORDER


def _distro_of(cell: str) -> str:
    # Cell ids are "<distro>-<target>[-<engine>]"; distros themselves contain dashes.
    for target in ("-cpu", "-cuda"):
        if target in cell:
            return cell.split(target)[0]
    return cell


def _fmt_secs(s: float) -> str:
    return f"{s / 60:.1f} min" if s >= 120 else f"{s:.0f} s"


def cell_section(cell: str, outs: dict[str, StageOutcome]) -> list[str]:
    lines = [f"## {cell}", ""]
    lines += ["| stage | status | category | time |", "|---|---|---|---|"]
    for stage in ORDER:
        o = outs.get(stage)
        if o:
            lines.append(f"| {stage} | {o.status} | {o.category} | {_fmt_secs(o.seconds)} |")
    lines.append("")
    versions: dict[str, str] = {}
    for stage in ("toolchain", "build"):
        if stage in outs:
            versions.update(outs[stage].versions)
    if versions:
        lines += ["**Versions:** " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items()) if v), ""]
    base = outs.get("base")
    if base and base.status == "base-unavailable":
        lines += [f"**Base unavailable:** {base.evidence[0] if base.evidence else ''}",
                  f"Remediation: {base.remediation}", ""]
    pf = outs.get("preflight")
    if pf:
        gates = pf.details.get("gates", [])
        lines += [f"**Preflight** ({pf.status}, {_fmt_secs(pf.seconds)}): predicted {pf.status}{' (' + pf.category + ')' if pf.category else ''}", ""]
        reached = [g for g in gates if g.get("status") != "skip"]  # "skip": not reached for this target
        if reached:
            lines += ["| gate | where | needs | have | result | fix | remediation |", "|---|---|---|---|---|---|---|"]
            for g in reached:
                fix = "" if g.get("status") == "pass" else ("fixable" if g.get("fixable") else "dead end")
                lines.append(f"| {g.get('message', '')} | {g.get('source', '')} | {g.get('need', '')} | "
                             f"{g.get('found', '')} | {g.get('status', '')} | {fix} | {g.get('remediation', '')} |")
            lines.append("")
    b = outs.get("build")
    if b:
        d = b.details
        lines += [f"**Build:** {b.status} ({b.category}) in {_fmt_secs(b.seconds)}; "
                  f"MAX_JOBS={d.get('max_jobs', '?')}, disk high-water {d.get('disk_high_water_gb', '?')} GB, "
                  f"peak memory {d.get('peak_mem_gib', '?')} GiB"
                  + ("" if "measured" in d else " (an early record: host-wide disk delta and cgroup max usage with "
                     "page cache, both inflated by other work on the machine; see the rebuild for the per-build "
                     "measure)"), ""]
        blockers = d.get("blockers", [])
        if blockers or b.status != "pass":
            lines += ["Blockers, in the order met:", ""]
            for i, bl in enumerate(blockers, 1):
                fix = f" → fix: `{bl['fix']}` ({'worked' if bl.get('fixed') else 'not enough'})" if bl.get("fix") else " → no fix"
                ev = bl["evidence"][0] if bl.get("evidence") else ""
                lines.append(f"{i}. **{bl['category']}** in {bl['phase']}: `{ev}`{fix}. {bl.get('note', '')}")
            if b.status != "pass" and not any(bl.get("fix") == "" and bl["category"] == b.category for bl in blockers):
                lines.append(f"{len(blockers) + 1}. **{b.category}**: `{(b.evidence or [''])[0]}`. {b.remediation}")
            lines.append("")
        for name, info in d.get("offline_inputs", {}).items():
            lines.append(f"- offline input **{name}**: engine asks `{info['asked']}`, supplied `{info['got']}` "
                         f"from the distro's source package via `{info['env']}`")
        if d.get("torch"):
            lines.append(f"- torch {d['torch']['version']} (CUDA {d['torch']['cuda']}) from PyPI: the engine pins a "
                         "`+cpu` build that only download.pytorch.org serves")
        if d.get("env"):
            lines.append("- build env: " + ", ".join(f"`{k}={v}`" for k, v in sorted(d["env"].items())))
        if d.get("runtime_debs"):
            lines.append("- distro libraries the build links: " + ", ".join(d["runtime_debs"]))
        if d.get("kvlab"):
            k = d["kvlab"]
            lines.append(f"- kvlab extension: {k['status']} ({k['category']}) in {_fmt_secs(k['seconds'])}")
        wheels = [n for n in b.artifacts if n.endswith(".whl")]
        if wheels:
            lines.append("- wheels: " + ", ".join(f"`{w}`" for w in wheels))
        lines.append("")
    rb = outs.get("rebuild")
    if b and rb and b.status == "pass" and rb.status == "pass" and rb.seconds > 0:
        rd = rb.details
        lines += [f"**Warm rebuild (ccache):** {_fmt_secs(rb.seconds)} vs cold {_fmt_secs(b.seconds)}: "
                  f"cold/warm = {b.seconds / rb.seconds:.1f}×; disk high-water {rd.get('disk_high_water_gb', '?')} GB, "
                  f"peak memory {rd.get('peak_mem_gib', '?')} GiB"
                  + (f"; kvlab extension: {rd['kvlab']['status']} in {_fmt_secs(rd['kvlab']['seconds'])}"
                     if rd.get("kvlab") else ""), ""]
    rt = outs.get("runtime")
    if rt and rt.status == "pass":
        lines += [f"**Runtime image:** `{rt.artifacts.get('image')}`, {rt.details.get('image_size_gb', '?')} GB "
                  "(non-root, tcmalloc + libiomp preloaded)", ""]
    for stage in ("smoke", "oracle"):
        o = outs.get(stage)
        if o and o.status != "skipped":
            label = f"{o.status} ({o.category})" if o.category else o.status
            lines += [f"**{stage}:** {label}" + "".join(f"\n- {e}" for e in o.evidence[:8]), ""]
    warnings = [w for o in outs.values() for w in o.details.get("runtime_warnings", [])]
    if warnings:
        lines += ["**Runtime warnings:**", *(f"- {w}" for w in warnings), ""]
    return lines


def write_build_records(store: ResultsStore, out: Path, tail_lines: int = 120) -> list[Path]:
    """notes/builds/<cell>/: each build phase log's last lines (full logs run to MBs) as evidence."""
    written = []
    for o in store.outcomes():
        if o.stage not in ("build", "rebuild") or "logs" not in o.artifacts:
            continue
        dest = out / "builds" / o.cell
        dest.mkdir(parents=True, exist_ok=True)
        for log in sorted(Path(o.artifacts["logs"]).glob("*.log")):
            lines = log.read_text(errors="replace").splitlines()
            head = f"# last {min(tail_lines, len(lines))} of {len(lines)} lines of {o.stage}/{log.name} (run {store.run})"
            path = dest / f"{o.stage}-{log.stem}.tail.log"
            path.write_text("\n".join([head, *lines[-tail_lines:]]) + "\n")
            written.append(path)
    return written


def write_notes(store: ResultsStore, out: Path) -> list[Path]:
    by_distro: dict[str, dict[str, dict[str, StageOutcome]]] = defaultdict(dict)
    for o in store.outcomes():
        by_distro[_distro_of(o.cell)].setdefault(o.cell, {})[o.stage] = o
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for distro, cells in sorted(by_distro.items()):
        md = [f"# Deployment note: {distro}", "",
              f"Generated by `invoke notes` from the results store `{store.path.name}`. Each section is one "
              "cell; every blocker is listed in the order the tool met it, with the fix that worked.", ""]
        data: dict[str, Any] = {"distro": distro, "run": store.run, "cells": {}}
        for cell, outs in sorted(cells.items()):
            md += cell_section(cell, outs)
            data["cells"][cell] = {s: o.to_json() for s, o in outs.items()}
        (out / f"{distro}.md").write_text("\n".join(md).rstrip() + "\n")
        (out / f"{distro}.json").write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        written += [out / f"{distro}.md", out / f"{distro}.json"]
    return written + write_build_records(store, out)
