"""The pre-registration guard (smoke/sweep/capacity_report.py): a temporary git repository holding
copies of the scoring files; the report renders at its score_commit and refuses, with one line,
after any change to the score in the working tree or in a later commit."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from model.errors import UsageError
from smoke.sweep import capacity_report as rep
from tests.conftest import ROOT
from tests.unit.test_capacity_report import _report


def git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                          check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path):
    git(tmp_path, "init", "-q")
    for f in rep.SCORED:
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / f, tmp_path / f)
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-qm", "score")
    (tmp_path / "README").write_text("later work that is not scoring\n")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-qm", "other")
    return tmp_path


def test_score_commit_is_the_last_commit_that_changed_the_score(repo):
    assert rep.score_commit(repo) == git(repo, "rev-parse", "HEAD~1")


def test_report_renders_at_its_score_commit_and_names_it(repo):
    c = rep.score_commit(repo)
    text = rep.render(rep.CapacityReport(**_report(score_commit=c)), repo)
    assert c in text and "| p | 2 |" in text


def test_guard_refuses_after_a_change_in_the_working_tree_or_a_later_commit(repo):
    c = rep.score_commit(repo)
    report = rep.CapacityReport(**_report(score_commit=c))
    toml = repo / "smoke/sweep/capacity.toml"
    toml.write_text(toml.read_text().replace("threshold = 0.90", "threshold = 0.80"))
    with pytest.raises(UsageError, match=r"in the working tree differ from score_commit") as e:
        rep.render(report, repo)
    assert "\n" not in str(e.value)
    git(repo, "commit", "-qam", "loosen the threshold while data comes in")
    with pytest.raises(UsageError, match=r"the score changed after the run: its score_commit is " + c[:12]):
        rep.render(report, repo)
    git(repo, "checkout", "-q", c, "--", "smoke/sweep/capacity.toml")   # reverted in the tree, not in HEAD
    with pytest.raises(UsageError, match="the score changed after the run"):
        rep.render(report, repo)


def test_guard_refuses_an_uncommitted_score(tmp_path):
    git(tmp_path, "init", "-q")
    with pytest.raises(UsageError, match="not committed"):
        rep.score_commit(tmp_path)


def test_write_puts_json_markdown_and_png_only_when_the_guard_passes(repo, tmp_path):
    c = rep.score_commit(repo)
    report = rep.CapacityReport(**_report(score_commit=c))
    md = rep.write(report, repo, tmp_path / "out")
    assert (tmp_path / "out/attainment.png").read_bytes()[:4] == b"\x89PNG"
    assert rep.CapacityReport.model_validate_json((tmp_path / "out/capacity.json").read_text()) == report
    assert "![attainment vs rate](attainment.png)" in md.read_text()
    (repo / "smoke/sweep/capacity.py").write_text("# edited\n")
    with pytest.raises(UsageError):
        rep.write(report, repo, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
