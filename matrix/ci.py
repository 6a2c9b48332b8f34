"""Export the matrix for CI: a GitHub Actions matrix and a buildx bake file (both plain JSON), and check
the shipped workflow that consumes them (.github/workflows/matrix.yml) is whole and safe to copy."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import yaml

from images.render import Rendered
from model.spec import Cell


def github_matrix(cells: Iterable[Cell]) -> dict[str, Any]:
    """`{"include": [...]}`, one entry per cell, for `strategy.matrix: ${{ fromJSON(...) }}`."""
    return {"include": [c.ci_entry() for c in cells]}


def bake_file(rendered: Iterable[Rendered], dockerfiles_dir: str) -> dict[str, Any]:
    """A docker buildx bake file (JSON form): one target per cell, grouped as "default"."""
    targets: dict[str, Any] = {}
    for r in rendered:
        name = r.cell.replace(".", "_")
        targets[name] = {
            "context": f"{dockerfiles_dir}/{r.cell}",
            "dockerfile": "Dockerfile",
            "tags": [f"deploylab/toolchain:{r.cell}"],
            "labels": {"org.deploylab.cell": r.cell, "org.deploylab.cuda-source": r.cuda_source},
        }
    return {"group": {"default": {"targets": sorted(targets)}}, "target": targets}


WORKFLOW = ".github/workflows/matrix.yml"
_PINNED = re.compile(r"^[\w.-]+/[\w./-]+@[0-9a-f]{40}$")


def workflow_problems(text: str) -> list[str]:
    """What is missing or unsafe in the shipped CI workflow (matrix.yml): the job graph plan → one job per
    cell → notes over all cells, the caches, and the safety rules zizmor checks that a copy must keep.
    An empty list: the workflow is whole."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return [f"not valid YAML: {exc}"]
    if not isinstance(doc, dict) or not isinstance(doc.get("jobs"), dict):
        return ["expected a mapping with jobs:"]
    jobs: dict[str, Any] = doc["jobs"]
    out: list[str] = []
    if doc.get("permissions") != {}:
        out.append("permissions: expected {} at the top (each job asks for what it needs)")
    for name in ("plan", "cell", "notes"):
        if not isinstance(jobs.get(name), dict):
            out.append(f"jobs.{name}: missing")
    if out:
        return out
    plan, cell, notes = jobs["plan"], jobs["cell"], jobs["notes"]

    def steps(job: dict[str, Any]) -> list[dict[str, Any]]:
        return [s for s in job.get("steps", []) if isinstance(s, dict)]

    def uses(job: dict[str, Any], action: str) -> list[dict[str, Any]]:
        return [s for s in steps(job) if str(s.get("uses", "")).split("@")[0] == action]

    def runs(job: dict[str, Any], command: str) -> bool:
        return any(command in str(s.get("run", "")) for s in steps(job))

    if not runs(plan, "invoke ci-matrix") or "matrix" not in plan.get("outputs", {}):
        out.append("jobs.plan: expected a step running `invoke ci-matrix` and an output `matrix`")
    if _needs(cell) != {"plan"} or cell.get("strategy", {}).get("matrix") != "${{ fromJSON(needs.plan.outputs.matrix) }}":
        out.append("jobs.cell: expected needs: plan and strategy.matrix from needs.plan.outputs.matrix")
    if cell.get("strategy", {}).get("fail-fast") is not False:
        out.append("jobs.cell.strategy.fail-fast: expected false (one cell's failure must not cancel the others)")
    if not runs(cell, "invoke") or not any("matrix --cells" in str(s.get("run", "")) for s in steps(cell)):
        out.append("jobs.cell: expected a step running `invoke matrix --cells` for its cell")
    uploads = uses(cell, "actions/upload-artifact")
    prefix = "results-"
    if not any(str(s.get("with", {}).get("name", "")).startswith(prefix) and s.get("if") == "always()"
               for s in uploads):
        out.append(f"jobs.cell: expected an always() upload of an artifact named {prefix}<cell>")
    cached = " ".join(str(s.get("with", {}).get("path", "")) for s in uses(cell, "actions/cache"))
    for path in ("ccache", "pip"):
        if path not in cached:
            out.append(f"jobs.cell: expected actions/cache of the {path} cache")
    if _needs(notes) != {"cell"} or "cancelled()" not in str(notes.get("if", "")) and "always()" not in str(
            notes.get("if", "")):
        out.append("jobs.notes: expected needs: cell and an if that runs it after failed cells too")
    if not any(str(s.get("with", {}).get("pattern", "")) == prefix + "*" and s["with"].get("merge-multiple") is True
               for s in uses(notes, "actions/download-artifact")):
        out.append(f"jobs.notes: expected a download of every {prefix}* artifact, merged")
    if not runs(notes, "invoke notes") or not uses(notes, "actions/upload-artifact"):
        out.append("jobs.notes: expected `invoke notes` over the merged results and an upload of the notes")
    for jname, job in jobs.items():
        for i, s in enumerate(steps(job)):
            where = f"jobs.{jname}.steps[{i}]"
            if "uses" in s and not _PINNED.match(str(s["uses"])):
                out.append(f"{where}.uses: expected an action pinned to a 40-hex commit, got {s['uses']!r}")
            if str(s.get("uses", "")).startswith("actions/checkout@") and \
                    s.get("with", {}).get("persist-credentials") is not False:
                out.append(f"{where}: expected persist-credentials: false on checkout")
            if "${{" in str(s.get("run", "")):
                out.append(f"{where}.run: expressions expand into the script text: pass them through env:")
    return out


def _needs(job: dict[str, Any]) -> set[str]:
    needs = job.get("needs", [])
    return {needs} if isinstance(needs, str) else set(needs)
