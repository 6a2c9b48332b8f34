"""What shells out: the invoke CLI (one-line errors, the CI matrix, classify), hadolint over the rendered
Dockerfiles, and check-jsonschema / zizmor over the shipped workflow. (Unit tests never shell out.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from images import render
from images.classify import expected_category
from images.render import _tool
from matrix.ci import WORKFLOW as WORKFLOW_PATH
from tests.conftest import ROOT

INVOKE = Path(sys.executable).with_name("invoke")
FIXTURES = sorted((ROOT / "tests" / "fixtures" / "logs").glob("*.log"))
WORKFLOW = ROOT / WORKFLOW_PATH


def test_every_rendered_dockerfile_passes_hadolint(tmp_path, default_matrix):
    out, done = tmp_path, render.write_all(default_matrix.cells, tmp_path)
    for r in done:
        ok, text = render.lint(out / r.cell / "Dockerfile")
        assert ok is True, f"{r.cell}: {text}"


def test_hadolint_catches_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian\nRUN apt-get install curl\n")
    ok, text = render.lint(bad)
    assert ok is False and "DL3015" in text  # --no-install-recommends missing


def test_cli_prints_one_line_and_no_traceback(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[knobs]\nmax_jobs = true\n")
    res = subprocess.run([sys.executable, "-m", "invoke", "ci-matrix", "--spec", str(bad)],
                         capture_output=True, text=True, cwd=ROOT)
    assert res.returncode != 0
    assert "Traceback" not in res.stderr + res.stdout
    err = [line for line in res.stderr.splitlines() if line.strip()]
    assert err == [f"error: {bad}: knobs.max_jobs: expected a positive integer or \"auto\", got True"]


def test_one_include_entry_per_cell(default_matrix):
    res = subprocess.run([sys.executable, "-m", "invoke", "ci-matrix"], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    # what the workflow consumes, read independently of github_matrix: one entry per cell, in the spec's
    # order (distros x targets), each naming what a job needs
    assert [(e["distro"], e["target"], e["engine"]) for e in data["include"]] == [
        (d, t, "0.33.0") for d in ("debian-bookworm", "debian-trixie", "debian-sid", "fedora-44") for t in ("cpu", "cuda")]
    assert [e["cell"] for e in data["include"]] == [c.id for c in default_matrix.cells]
    assert all(set(e) >= {"cell", "distro", "target", "engine", "max_jobs"} for e in data["include"])


@pytest.mark.parametrize("log", FIXTURES, ids=[f.stem for f in FIXTURES])
def test_invoke_classify_gives_the_fixture_category(log):
    out = subprocess.run([str(INVOKE), "classify", str(log)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:2] == ["category:", expected_category(log)], out.stdout
    assert any(ln.startswith("evidence: ") for ln in lines)
    if expected_category(log) != "success":
        assert any(ln.startswith("remediation: ") for ln in lines)


def test_invoke_classify_missing_file_is_one_line(tmp_path):
    out = subprocess.run([str(INVOKE), "classify", str(tmp_path / "nope.log")], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "cannot read log" in out.stderr


def test_workflow_validates_against_githubs_schema():
    exe = _tool("check-jsonschema")
    res = subprocess.run([exe, "--builtin-schema", "vendor.github-workflows",
                          str(ROOT / ".github/workflows/matrix.yml")], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


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
