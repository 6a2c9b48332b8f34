"""What shells out: the hadolint binary over rendered Dockerfiles, and the invoke CLI's one-line errors.
(Unit tests neither shell out nor touch the network.)"""

from __future__ import annotations

import subprocess
import sys

from images import render
from tests.conftest import ROOT


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
