"""Outcomes → one deployment note per distro (Markdown + JSON). Reads the results store only.

A note never knows less than the one it replaces: per cell and stage it keeps the newest outcome of
any run (the committed note's or the store's) with that outcome's provenance, and a skipped outcome
never replaces one that ran. Full build logs are kept compressed beside the notes. The serving
engines' outcomes (the adapter matrix) go to adapters.md/json/png beside them, merged the same way.
"""

from __future__ import annotations

import json
import lzma
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

from matrix import adapters
from model.details import BuildArtifacts, BuildDetails, PreflightDetails, RuntimeDetails, SmokeDetails
from model.results import ResultsStore, StageOutcome, provenance
from model.stages import NAMES as ORDER


ENGINE_CELL = "engine-"  # conform_engine's cells: the adapter matrix (matrix/adapters.py)
ADAPTERS_JSON = "adapters.json"


def _distro_of(cell: str) -> str:
    # Cell ids are "<distro>-<target>[-<engine>]"; distros themselves contain dashes.
    for target in ("-cpu", "-cuda"):
        if target in cell:
            return cell.split(target)[0]
    return cell


def _fmt_secs(s: float) -> str:
    return f"{s / 60:.1f} min" if s >= 120 else f"{s:.0f} s"


def _from(o: StageOutcome) -> str:
    p = o.provenance
    return f"{p.get('run', '?')}, {p.get('date', '?')[:10]}, {p.get('host', '?')}" if p else "?"


def _q(v: object) -> object:
    return "?" if v is None else v


def _preflight(pf: StageOutcome | None) -> list[str]:
    if pf is None:
        return []
    d = PreflightDetails.from_outcome(pf)
    lines = [f"**Preflight** ({pf.status}, {_fmt_secs(pf.seconds)}): predicted {pf.status}"
             f"{' (' + pf.category + ')' if pf.category else ''}", ""]
    if d.reached:  # a gate with status "skip" is not reached for this target
        lines += ["| gate | where | needs | have | result | fix | remediation |", "|---|---|---|---|---|---|---|"]
        for g in d.reached:
            # Only a gate that failed against a probe is fixable or a dead end; an unprobed one is open.
            fix = {"fail": "fixable" if g.fixable else "dead end", "warn": "unchecked"}.get(g.status, "")
            lines.append(f"| {g.message} | {g.source} | {g.need} | {g.found} | {g.status} | {fix} | {g.remediation} |")
        lines.append("")
    return lines


def _build(b: StageOutcome | None, rb: StageOutcome | None) -> list[str]:
    if b is None:
        return []
    if b.status == "skipped":  # nothing was built, so nothing was measured
        return [f"**Build:** skipped ({b.category})" + (f": {b.evidence[0]}" if b.evidence else ""), ""]
    d = BuildDetails.from_outcome(b)
    lines = [f"**Build:** {b.status} ({b.category}) in {_fmt_secs(b.seconds)}; "
             f"MAX_JOBS={_q(d.max_jobs)}, disk high-water {_q(d.disk_high_water_gb)} GB, "
             f"peak memory {_q(d.peak_mem_gib)} GiB"
             + ("" if d.measured is not None else " (an early record: host-wide disk delta and cgroup max usage "
                "with page cache, both inflated by other work on the machine; see the rebuild for the per-build "
                "measure)"), ""]
    if d.blockers or b.status != "pass":
        lines += ["Blockers, in the order met:", ""]
        for i, bl in enumerate(d.blockers, 1):
            fix = f" → fix: `{bl.fix}` ({'worked' if bl.fixed else 'not enough'})" if bl.fix else " → no fix"
            ev = bl.evidence[0] if bl.evidence else ""
            lines.append(f"{i}. **{bl.category}** in {bl.phase}: `{ev}`{fix}. {bl.note}")
        if b.status != "pass" and not any(bl.fix == "" and bl.category == b.category for bl in d.blockers):
            lines.append(f"{len(d.blockers) + 1}. **{b.category}**: `{(b.evidence or [''])[0]}`. {b.remediation}")
        lines.append("")
    for name, info in d.offline_inputs.items():
        lines.append(f"- offline input **{name}**: engine asks `{info.asked}`, supplied `{info.got}` "
                     f"from the distro's source package via `{info.env}`")
    if d.torch:
        lines.append(f"- torch {d.torch.version} (CUDA {d.torch.cuda}) from PyPI: the engine pins a "
                     "`+cpu` build that only download.pytorch.org serves")
    if d.env:
        lines.append("- build env: " + ", ".join(f"`{k}={v}`" for k, v in sorted(d.env.items())))
    if d.runtime_debs:
        lines.append("- distro libraries the build links: " + ", ".join(d.runtime_debs))
    if d.kvlab:
        lines.append(f"- kvlab extension: {d.kvlab.status} ({d.kvlab.category}) in {_fmt_secs(d.kvlab.seconds)}")
    wheels = [n for n in BuildArtifacts.from_outcome(b).files if n.endswith(".whl")]
    if wheels:
        lines.append("- wheels: " + ", ".join(f"`{w}`" for w in wheels))
    lines.append("")
    if rb and b.status == "pass" and rb.status == "pass" and rb.seconds > 0:
        r = BuildDetails.from_outcome(rb)
        run = (rb.provenance or {}).get("run")
        # A ratio only within one run: a build of another run may have met a cache the rebuild's build did not.
        versus = (f"vs cold {_fmt_secs(b.seconds)}: cold/warm = {b.seconds / rb.seconds:.1f}×"
                  if run and run == (b.provenance or {}).get("run") else
                  f"(run {run or 'not recorded'}: not the run of the build above, so no cold/warm ratio)")
        lines += [f"**Warm rebuild (ccache):** {_fmt_secs(rb.seconds)} {versus}; disk high-water {_q(r.disk_high_water_gb)} GB, "
                  f"peak memory {_q(r.peak_mem_gib)} GiB"
                  + (f"; kvlab extension: {r.kvlab.status} in {_fmt_secs(r.kvlab.seconds)}" if r.kvlab else ""), ""]
    return lines


def _runtime(rt: StageOutcome | None) -> list[str]:
    if rt is None or rt.status != "pass":
        return []
    d = RuntimeDetails.from_outcome(rt)
    how = ([f"runs as `{d.user}`"] if d.user else []) + (
        ["preloads " + ", ".join(f"`{Path(x).name}`" for x in d.preload)] if d.preload else [])
    return [f"**Runtime image:** `{rt.artifacts.get('image')}`, {_q(d.image_size_gb)} GB"
            + (f" ({'; '.join(how)})" if how else ""), ""]


def cell_section(cell: str, outs: dict[str, StageOutcome]) -> list[str]:
    lines = [f"## {cell}", ""]
    lines += ["| stage | status | category | time | from (run, date, host) |", "|---|---|---|---|---|"]
    for stage in ORDER:
        o = outs.get(stage)
        if o:
            lines.append(f"| {stage} | {o.status} | {o.category} | {_fmt_secs(o.seconds)} | {_from(o)} |")
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
    lines += _preflight(outs.get("preflight"))
    lines += _build(outs.get("build"), outs.get("rebuild"))
    lines += _runtime(outs.get("runtime"))
    for stage in ("smoke", "oracle"):
        o = outs.get(stage)
        if o and o.status != "skipped":
            label = f"{o.status} ({o.category})" if o.category else o.status
            lines += [f"**{stage}:** {label}" + "".join(f"\n- {e}" for e in o.evidence[:8]), ""]
    warnings = (SmokeDetails.from_outcome(outs["smoke"]).runtime_warnings or []) if "smoke" in outs else []
    if warnings:
        lines += ["**Runtime warnings:**", *(f"- {w}" for w in warnings), ""]
    return lines


def write_build_logs(store: ResultsStore, taken: set[tuple[str, str]], out: Path) -> list[Path]:
    """builds/<cell>/<stage>-<phase>.log.xz: the full log of every build outcome the notes took from
    this store, so each figure in a note traces to a log line. Other runs' logs are left as they are."""
    written = []
    for o in store.outcomes():
        logs = BuildArtifacts.from_outcome(o).logs if o.stage in ("build", "rebuild") else ""
        if (o.cell, o.stage) not in taken or not logs:
            continue
        dest = out / "builds" / o.cell
        dest.mkdir(parents=True, exist_ok=True)
        for log in sorted(Path(logs).glob("*.log")):
            path = dest / f"{o.stage}-{log.stem}.log.xz"
            with open(log, "rb") as src, lzma.open(path, "wb", preset=9) as dst:
                shutil.copyfileobj(src, dst)
            written.append(path)
    return written


def _committed(path: Path) -> dict[str, dict[str, StageOutcome]]:
    """The outcomes a committed note holds (cell → stage → outcome), with their provenance."""
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    cells: dict[str, dict[str, StageOutcome]] = {}
    for cell, stages in data.get("cells", {}).items():
        for stage, raw in stages.items():
            o = StageOutcome.from_json(raw)
            if not o.provenance:  # written before outcomes carried their provenance
                o = StageOutcome(**{**o.__dict__, "provenance": {**provenance(data.get("run", "?"), o.started),
                                                                 "host": "not recorded", "machine": ""}})
            cells.setdefault(cell, {})[stage] = o
    return cells


def keep(old: StageOutcome | None, new: StageOutcome) -> StageOutcome:
    """The outcome a note keeps: the newer one, unless it is a skip and the older one ran."""
    if old is None:
        return new
    if new.status == "skipped" and old.status != "skipped":
        return old
    return new if new.started >= old.started else old


def write_notes(store: ResultsStore, out: Path) -> list[Path]:
    by_distro: dict[str, dict[str, dict[str, StageOutcome]]] = defaultdict(dict)
    engines = False
    for o in store.outcomes():
        if o.cell.startswith(ENGINE_CELL):  # the adapter matrix's rows, not a distro's cells
            engines = True
            continue
        by_distro[_distro_of(o.cell)].setdefault(o.cell, {})[o.stage] = o
    out.mkdir(parents=True, exist_ok=True)
    for committed in out.glob("*.json"):  # committed notes are re-rendered even where the store has nothing
        if committed.name != ADAPTERS_JSON:
            by_distro.setdefault(committed.stem, {})
    written, taken = [], set()
    for distro, fresh in sorted(by_distro.items()):
        cells = _committed(out / f"{distro}.json")
        for cell, outs in fresh.items():
            for stage, o in outs.items():
                kept = keep(cells.get(cell, {}).get(stage), o)
                cells.setdefault(cell, {})[stage] = kept
                if kept is o:
                    taken.add((cell, stage))
        md = [f"# Deployment note: {distro}", "",
              "Generated by `invoke notes` from the results store; each outcome names the run, date and host "
              "it came from (the newest of any run is kept). Each section is one cell; every blocker is listed "
              "in the order the tool met it, with the fix that worked.", ""]
        data: dict[str, Any] = {"distro": distro, "cells": {}}
        for cell, outs in sorted(cells.items()):
            md += cell_section(cell, outs)
            data["cells"][cell] = {s: o.to_json() for s, o in outs.items()}
        (out / f"{distro}.md").write_text("\n".join(md).rstrip() + "\n")
        (out / f"{distro}.json").write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        written += [out / f"{distro}.md", out / f"{distro}.json"]
    if engines or (out / ADAPTERS_JSON).is_file():
        written += adapters.write(store, out)
    return written + write_build_logs(store, taken, out)
