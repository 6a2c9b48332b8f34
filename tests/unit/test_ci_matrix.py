"""CI export: the GitHub Actions matrix and bake file, and the shipped workflow: GitHub's schema, its job graph,
and zizmor's static analysis with no finding."""

from __future__ import annotations


import pytest
import yaml

from images.render import render_cell
from matrix.ci import WORKFLOW as WORKFLOW_PATH
from matrix.ci import bake_file, workflow_problems
from tests.conftest import ROOT


def test_bake_file_has_a_target_per_cell(default_matrix):
    bake = bake_file([render_cell(c, "distro" if c.target == "cuda" else None) for c in default_matrix.cells], "d")
    assert len(bake["target"]) == len(default_matrix.cells)
    assert sorted(bake["group"]["default"]["targets"]) == sorted(bake["target"])


WORKFLOW = ROOT / WORKFLOW_PATH


def test_workflow_job_graph_is_whole():
    """plan → one job per cell (its results uploaded even when it fails) → notes over every cell's results."""
    doc = yaml.safe_load(WORKFLOW.read_text())
    jobs = doc["jobs"]
    assert list(jobs) == ["plan", "cell", "notes"]
    assert jobs["cell"]["needs"] == "plan" and jobs["notes"]["needs"] == "cell"
    assert jobs["cell"]["strategy"]["matrix"] == "${{ fromJSON(needs.plan.outputs.matrix) }}"
    up = next(s for s in jobs["cell"]["steps"] if s.get("uses", "").startswith("actions/upload-artifact@"))
    down = next(s for s in jobs["notes"]["steps"] if s.get("uses", "").startswith("actions/download-artifact@"))
    # the notes job gathers exactly what the cell jobs upload, into the store `invoke notes --run ci` reads
    assert up["with"]["name"] == "results-${{ matrix.cell }}" and down["with"]["pattern"] == "results-*"
    assert up["with"]["path"].rstrip("/") == down["with"]["path"].rstrip("/") == "results/ci/cells"
    assert any("--run ci" in s.get("run", "") for s in jobs["cell"]["steps"])
    assert any("invoke notes --run ci" in s.get("run", "") for s in jobs["notes"]["steps"])
    assert workflow_problems(WORKFLOW.read_text()) == []


@pytest.mark.parametrize("change, problem", [
    (lambda d: d["jobs"].pop("notes"), "jobs.notes: missing"),
    (lambda d: d["jobs"]["notes"].update(needs="plan"), "jobs.notes: expected needs: cell"),
    (lambda d: d["jobs"]["cell"]["strategy"].update({"fail-fast": True}), "fail-fast: expected false"),
    (lambda d: d["jobs"]["cell"]["steps"].__setitem__(0, {"uses": "actions/checkout@v4"}),
     "expected an action pinned to a 40-hex commit"),
    (lambda d: d["jobs"]["plan"]["steps"][0]["with"].pop("persist-credentials"), "persist-credentials: false"),
    (lambda d: d["jobs"]["plan"]["steps"].append({"run": "echo ${{ inputs.spec }}"}), "pass them through env"),
    (lambda d: d.update(permissions="write-all"), "permissions: expected {}"),
    (lambda d: d["jobs"]["cell"]["steps"].__setitem__(
        next(i for i, s in enumerate(d["jobs"]["cell"]["steps"]) if "ccache" in str(s.get("with", {}).get("path"))),
        {"run": "true"}), "actions/cache of the ccache cache"),
])
def test_workflow_check_catches_a_broken_copy(change, problem):
    doc = yaml.safe_load(WORKFLOW.read_text())
    change(doc)
    problems = workflow_problems(yaml.safe_dump(doc))
    assert any(problem in p for p in problems), problems
