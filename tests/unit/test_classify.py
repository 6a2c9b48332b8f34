"""The log classifier on real logs (tests/fixtures/logs/<category>__<name>.log, each captured from a real
run; its first line says how) and on rule-selection edge cases. No Docker here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from images.classify import classify_file, classify_text, expected_category, load_rules
from model.errors import UsageError

ROOT = Path(__file__).resolve().parents[2]
LOGS = ROOT / "tests" / "fixtures" / "logs"
FIXTURES = sorted(LOGS.glob("*.log"))
INVOKE = Path(sys.executable).with_name("invoke")


def test_there_are_fixtures_with_capture_headers():
    assert len(FIXTURES) >= 8
    for f in FIXTURES:
        first = f.read_text(errors="replace").splitlines()[0]
        assert first.startswith("# captured: ") and " | date: " in first, f.name
        assert "__" in f.name, f"{f.name}: expected <category>__<short-name>.log"


@pytest.mark.parametrize("log", FIXTURES, ids=[f.stem for f in FIXTURES])
def test_invoke_classify_gives_the_fixture_category(log):
    out = subprocess.run([str(INVOKE), "classify", str(log)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:2] == ["category:", expected_category(log)], out.stdout
    assert any(ln.startswith("evidence: ") for ln in lines)
    if expected_category(log) != "success":
        assert any(ln.startswith("remediation: ") for ln in lines)


def test_every_category_the_issue_names_has_a_rule():
    cats = {r.category for r in load_rules()}
    assert {"cmake-too-old", "torch-cuda-config", "gcc-gate", "fetch-blocked", "tls-untrusted", "disk-full",
            "oom-killed", "missing-numa-header", "python-unsupported", "shm-too-small", "missing-cxx-compiler",
            "tcmalloc-not-preloaded", "success"} <= cats


def test_first_fatal_cause_wins_over_cascading_errors():
    text = ("-- Configuring\n"
            "CMake Error at CMakeLists.txt:1 (cmake_minimum_required):\n"
            "  CMake 3.26 or higher is required.  You are running version 3.25.1\n"
            "fatal error: numa.h: No such file or directory\n"
            "ninja: build stopped: subcommand failed.\n")
    c = classify_text(text)
    assert (c.category, c.rule, c.line) == ("cmake-too-old", "cmake-too-old", 3)
    assert "cmake>=3.26" in c.remediation  # named group filled in


def test_a_cause_beats_an_earlier_generic_failure():
    c = classify_text("FAILED: foo.o\nsomething\ncc1plus: out of memory allocating 123 bytes\n")
    assert c.category == "oom-killed"


def test_shm_beats_disk_full_on_the_same_line():
    line = "RuntimeError: unable to write to file </torch_1_2_0>: No space left on device (28)"
    assert classify_text(line).category == "shm-too-small"
    assert classify_text("cp: error writing 'x': No space left on device").category == "disk-full"


def test_warning_beats_success_but_not_a_failure():
    ok = "INFO Application startup complete.\n"
    warn = "WARNING libtcmalloc is not found in LD_PRELOAD. For best performance, please follow\n"
    assert classify_text(ok).category == "success"
    assert classify_text(warn + ok).category == "tcmalloc-not-preloaded"
    assert classify_text(warn + "ERROR: Failed building wheel for vllm\n").category == "build-error"


def test_nothing_matched_is_unknown_with_the_tail():
    c = classify_text("# captured: x\nall fine\nreally\n")
    assert (c.category, c.rule, c.evidence) == ("unknown", "", ("all fine", "really"))


def test_evidence_lines_are_clipped():
    c = classify_text("No space left on device " + "x" * 1000)
    assert len(c.evidence[0]) < 320


def test_missing_log_and_bad_rules_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="cannot read log"):
        classify_file(tmp_path / "nope.log")
    rules = tmp_path / "rules.toml"
    rules.write_text('[[rule]]\nid = "a"\ncategory = "a"\npatterns = ["("]\n')
    with pytest.raises(UsageError, match=r"rules.toml: rule\[0\].patterns\[0\]: not a valid regex"):
        load_rules(rules)
    rules.write_text('[[rule]]\nid = "a"\ncategory = "a"\npatterns = "x"\n')
    with pytest.raises(UsageError, match=r"rule\[0\].patterns: expected a non-empty list"):
        load_rules(rules)
    rules.write_text('[[rule]]\nid = "a"\ncategory = "a"\npatterns = ["x"]\nprio = 3\n')
    with pytest.raises(UsageError, match=r"rule\[0\].prio: unknown key"):
        load_rules(rules)


def test_invoke_classify_missing_file_is_one_line(tmp_path):
    out = subprocess.run([str(INVOKE), "classify", str(tmp_path / "nope.log")], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "cannot read log" in out.stderr


def test_pip_retries_alone_do_not_beat_success():
    retry = ("WARNING: Retrying (Retry(total=4, connect=None, read=None, redirect=None, status=None)) after "
             "connection broken by 'NewConnectionError('<pip._vendor.urllib3.connection.HTTPSConnection object>: "
             "Failed to establish a new connection: [Errno -3] Temporary failure in name resolution')': /whl/cpu/\n")
    assert classify_text(retry + "Successfully built vllm\n").category == "success"
    c = classify_text(retry + "ERROR: Could not find a version that satisfies the requirement torch==2.14.0+cpu\n")
    assert (c.category, c.rule) == ("fetch-blocked", "fetch-retried")
    assert classify_text("fatal: unable to access 'x': Could not resolve host: github.com\n").rule == "fetch-blocked"


def test_phase_footer_and_docker_build_count_as_success():
    assert classify_text("[+ 1.0s] Setting up x\n# exit 0 after 9.5s\n").category == "success"
    assert classify_text("Step 9/9 : LABEL a=b\nSuccessfully built dc8ad73e874b\n").category == "success"
    failed = "[+ 9.5s]     Your installed Caffe2 version uses CUDA but I cannot find the CUDA\n# exit 1 after 10.3s\n"
    assert classify_text(failed).category == "torch-cuda-config"
