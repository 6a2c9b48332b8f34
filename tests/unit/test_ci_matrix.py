"""CI export: the GitHub Actions matrix and bake file, and the shipped workflow against GitHub's schema."""

from __future__ import annotations

import json
import subprocess
import sys

from images.render import _tool, render_cell
from matrix.ci import bake_file, github_matrix
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


def test_workflow_consumes_invoke_ci_matrix():
    text = (ROOT / ".github/workflows/matrix.yml").read_text()
    assert "invoke ci-matrix" in text and "fromJSON(needs.plan.outputs.matrix)" in text
