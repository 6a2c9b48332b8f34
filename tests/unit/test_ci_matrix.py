"""CI export: the GitHub Actions matrix and bake file, and the shipped workflow: GitHub's schema, its job graph,
and zizmor's static analysis with no finding."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from images.render import _tool, render_cell
from matrix.ci import WORKFLOW as WORKFLOW_PATH
from matrix.ci import bake_file, github_matrix, workflow_problems
from tests.conftest import ROOT


def test_one_include_entry_per_cell(default_matrix):
    res = subprocess.run([sys.executable, "-m", "invoke", "ci-matrix"], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert data == github_matrix(default_matrix.cells)
    assert [e["cell"] for e in data["include"]] == [c.id for c in default_matrix.cells]
    assert all(set(e) >= {"cell", "distro", "target", "engine", "max_jobs"} for e in data["include"])


def test_bake_file_has_a_target_per_cell(default_matrix):
    bake = bake_file([render_cell(c, "distro" if c.target == "cuda" else None) for c in default_matrix.cells], "d")
    assert len(bake["target"]) == len(default_matrix.cells)
    assert sorted(bake["group"]["default"]["targets"]) == sorted(bake["target"])


def test_workflow_validates_against_githubs_schema():
    exe = _tool("check-jsonschema")
    res = subprocess.run([exe, "--builtin-schema", "vendor.github-workflows",
                          str(ROOT / ".github/workflows/matrix.yml")], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


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


def test_zizmor_finds_nothing_in_the_workflow():
    """GitHub Actions static analysis, offline, its strictest persona: template injection, unpinned actions,
    persisted checkout credentials, broad permissions, ... ."""
    exe = _tool("zizmor")
    assert exe, "zizmor is not installed: pip install -e '.[dev]'"
    res = subprocess.run([exe, "--offline", "--persona", "pedantic", "--format", "json", str(WORKFLOW)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert json.loads(res.stdout) == []


def test_zizmor_still_finds_an_injection(tmp_path):
    """The check above can fail: the old workflow's input spliced into a run: script is reported."""
    bad = tmp_path / "bad.yml"
    bad.write_text(WORKFLOW.read_text().replace('--spec "$SPEC"', "--spec '${{ inputs.spec }}'"))
    res = subprocess.run([_tool("zizmor"), "--offline", "--format", "json", str(bad)], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode != 0 and "template-injection" in res.stdout
