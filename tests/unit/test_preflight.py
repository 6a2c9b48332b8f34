"""Preflight gates read from a real vLLM 0.33.0 tree (tests/fixtures/vllm-0.33.0, an unmodified extract
of the PyPI sdist) and evaluated against probes read from real containers. No Docker here."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from images import cmake, gates as gt, preflight as pf
from model import spec
from model.errors import UsageError

TREE = Path(__file__).resolve().parents[1] / "fixtures" / "vllm-0.33.0"

# Probes: images.toolchain.probe + preflight.probe_reachability run on the real engine on
# 2026-11-28 against deploylab/toolchain:<cell> images built by `invoke build` (bookworm, trixie, sid).
REACH = {"download.pytorch.org": False, "github.com": False, "pypi.org": True}
BOOKWORM = {"gcc": "12.2.0", "gxx": "12.2.0", "python": "3.11.2", "glibc": "2.36", "cmake": "3.25.1",
            "ninja": "1.11.1", "nvcc": "", "disk_free_gb": 61.9, "mem_gib": 23.5, "cores": 2,
            "os": "Debian GNU/Linux 12 (bookworm)", "reachable": REACH}
TRIXIE = {"gcc": "14.2.0", "gxx": "14.2.0", "python": "3.13.5", "glibc": "2.41", "cmake": "3.31.6",
          "ninja": "1.12.1", "nvcc": "", "disk_free_gb": 61.9, "mem_gib": 23.5, "cores": 2,
          "os": "Debian GNU/Linux 13 (trixie)", "reachable": REACH}
SID = {"gcc": "16.2.0", "gxx": "16.2.0", "python": "3.14.10", "glibc": "2.43", "cmake": "4.3.4",
       "ninja": "1.13.2", "nvcc": "", "disk_free_gb": 61.9, "mem_gib": 23.5, "cores": 2,
       "os": "Debian GNU/Linux forky/sid", "reachable": REACH}


@pytest.fixture(scope="module")
def matrix():
    return spec.load(None, machine=spec.Machine(cores=2, mem_gib=24))


@pytest.fixture(scope="module")
def gates():
    return gt.gates_from_tree(TREE)


def by(results, kind, source_prefix=""):
    return [r for r in results if r.gate.kind == kind and r.gate.source.startswith(source_prefix)]


def test_gates_come_from_the_tree(gates):
    cmake = [g for g in gates if g.kind == "cmake"]
    assert [(g.need, g.source) for g in cmake] == [(">=3.26", "CMakeLists.txt:1")]
    gcc = {g.source: g for g in gates if g.kind == "compiler"}
    x86 = gcc["cmake/cpu_extension.cmake:136"]
    assert (x86.subject, x86.need, x86.label) == ("gxx", ">=12.3", "gcc")
    assert x86.message == "X86 backend requires gcc/g++ >= 12.3"
    assert gcc["CMakeLists.txt:25"].need == ">=11.3"
    assert gcc["CMakeLists.txt:1695"].need == ">=13"  # the CUDA-only GCC gate
    py = [g.need for g in gates if g.kind == "python"]
    assert py == [">=3.11,<3.15", "3.11 3.12 3.13 3.14"]
    pins = {(g.subject, g.need, g.source) for g in gates if g.kind == "pin"}
    assert ("cmake", ">=3.26.1", "pyproject.toml:4") in pins
    assert ("cmake", ">=3.26.1", "requirements/build/cpu.txt:1") in pins
    onednn = [g for g in gates if g.kind == "fetch" and g.subject == "oneDNN"]
    assert {g.need for g in onednn} == {"https://github.com/oneapi-src/oneDNN.git"}
    assert {g.override for g in onednn} == {"FETCHCONTENT_SOURCE_DIR_ONEDNN"}
    cutlass = next(g for g in gates if g.kind == "fetch" and g.subject == "cutlass")
    assert cutlass.override == "VLLM_CUTLASS_SRC_DIR"  # the tree's own switch, found by reading it
    fetch = {g.subject: g for g in gates if g.kind == "fetch"}
    assert fetch["deepgemm"].override == "DEEPGEMM_SRC_DIR"  # download only under `else()` of if(DEEPGEMM_SRC_DIR)
    assert fetch["arm_compute"].override == "ACL_ROOT_DIR"  # ... of if(DEFINED ENV{ACL_ROOT_DIR} AND ...)
    assert fetch["deepgemm"].need == "https://github.com/vllm-project/DeepGEMM.git"  # URL kept in a set() variable
    # the order CMake reads them: the x86 GCC gate (cpu_extension.cmake) before the oneDNN fetch it declares
    order = [g.source for g in gates]
    assert order.index("cmake/cpu_extension.cmake:136") < order.index("cmake/cpu_extension.cmake:382")


def test_bookworm_cpu_names_the_cmake_and_gcc_gates_fast(matrix):
    t0 = time.monotonic()
    o = pf.preflight(matrix.get("debian-bookworm-cpu"), TREE, BOOKWORM)
    assert time.monotonic() - t0 < 60
    assert (o.stage, o.status, o.category) == ("preflight", "gated", "gcc-gate")
    assert "cmake 3.25.1 < 3.26 (CMakeLists.txt:1: cmake_minimum_required(VERSION 3.26))" in o.evidence
    assert ("gcc 12.2.0 < 12.3 (cmake/cpu_extension.cmake:136: X86 backend requires gcc/g++ >= 12.3)"
            in o.evidence)
    # the order a build meets them: cmake before the GCC gate
    first_cmake = next(i for i, e in enumerate(o.evidence) if e.startswith("cmake "))
    first_gcc = next(i for i, e in enumerate(o.evidence) if e.startswith("gcc "))
    assert first_cmake < first_gcc
    assert "dead end" in o.remediation and "cmake" in o.remediation
    gates = {g["id"]: g for g in o.details["gates"]}
    assert gates["compiler:gxx@cmake/cpu_extension.cmake:136"]["fixable"] is False
    assert gates["cmake:cmake@CMakeLists.txt:1"]["fixable"] is True
    assert gates["compiler:gxx@CMakeLists.txt:25"]["status"] == "pass"  # GCC >= 11.3 holds
    assert gates["compiler:gxx@CMakeLists.txt:1695"]["status"] == "skip"  # CUDA-only gate on a CPU cell
    assert o.details["first_dead_end"] == "compiler:gxx@cmake/cpu_extension.cmake:136"


def test_trixie_cpu_passes_with_offline_fixes(matrix):
    o = pf.preflight(matrix.get("debian-trixie-cpu"), TREE, TRIXIE)
    assert o.status == "pass" and o.category == ""
    failing = {g["id"]: g for g in o.details["gates"] if g["status"] == "fail"}
    onednn = failing["fetch:oneDNN@cmake/cpu_extension.cmake:382"]
    assert onednn["fixable"] and "FETCHCONTENT_SOURCE_DIR_ONEDNN" in onednn["remediation"]
    torch = next(g for g in failing.values() if g["kind"] == "torch")
    assert torch["category"] == "torch-cuda-config" and "torch::cudart" in torch["remediation"]
    assert not any(g["kind"] in ("cmake", "compiler", "python") for g in failing.values())


def test_sid_cpu_passes(matrix):
    o = pf.preflight(matrix.get("debian-sid-cpu"), TREE, SID)
    assert o.status == "pass"
    statuses = {g["id"]: g["status"] for g in o.details["gates"]}
    assert statuses["python:python@pyproject.toml:34"] == "pass"  # 3.14.10 < 3.15
    assert statuses["cmake:cmake@CMakeLists.txt:1"] == "pass"  # cmake 4.3.4


def test_cuda_cell_reaches_the_cuda_gcc_gate_and_fetches(matrix, monkeypatch):
    import images.sources
    # torch 2.14.0's CUDA as PyPI states it (tests/integration/test_cuda_gate.py reads it from there)
    monkeypatch.setattr(images.sources, "torch_cuda_of", lambda version, python: "13.0")
    o = pf.preflight(matrix.get("debian-bookworm-cuda"), TREE, BOOKWORM)
    status = {g["id"]: g["status"] for g in o.details["gates"]}
    assert status["compiler:gxx@CMakeLists.txt:1695"] == "fail"
    assert status["compiler:gxx@cmake/cpu_extension.cmake:136"] == "skip"
    assert status["fetch:cutlass@CMakeLists.txt:526"] == "fail"
    assert any("GCC >= 13 is required to build vLLM with CUDA (found 12.2.0)." in e for e in o.evidence)


def test_python_outside_requires_python_is_a_dead_end(matrix):
    probe = {**SID, "python": "3.15.0"}
    o = pf.preflight(matrix.get("debian-sid-cpu"), TREE, probe)
    assert (o.status, o.category) == ("gated", "python-unsupported")
    assert any("3.15.0 not in >=3.11,<3.15" in e for e in o.evidence)


def test_declared_probe_without_tools_is_undecided_not_gated(matrix):
    # what the pipeline passes for a cell with no image (Fedora here): tool keys absent
    probe = {"python": "3.14", "os": "fedora-44 (declared; no image here)", "declared": True}
    o = pf.preflight(matrix.get("fedora-44-cpu"), TREE, probe)
    assert o.status == "pass"
    status = {g["id"]: g["status"] for g in o.details["gates"]}
    assert status["compiler:gxx@cmake/cpu_extension.cmake:136"] == "warn"
    assert status["python:python@pyproject.toml:34"] == "pass"
    assert o.details["warnings"]


def test_unprobed_network_is_a_warning(matrix):
    probe = {k: v for k, v in TRIXIE.items() if k != "reachable"}
    results = pf.evaluate(gt.gates_from_tree(TREE), probe, matrix.get("debian-trixie-cpu"))
    onednn = next(r for r in results if r.gate.subject == "oneDNN" and r.status != "skip")
    assert onednn.status == "warn" and "not probed" in onednn.evidence


def test_a_different_tree_gives_different_gates(tmp_path, matrix):
    (tmp_path / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.28...3.31)\n"
        "project(x LANGUAGES CXX)\n"
        "if (VLLM_TARGET_DEVICE STREQUAL \"cpu\")\n"
        "  include(${CMAKE_CURRENT_LIST_DIR}/cmake/cpu.cmake)\n"
        "  return()\n"
        "endif()\n"
        "if (CMAKE_CXX_COMPILER_VERSION VERSION_LESS 99)\n"
        "  message(FATAL_ERROR \"only reached by non-CPU targets\")\n"
        "endif()\n")
    (tmp_path / "cmake").mkdir()
    (tmp_path / "cmake" / "cpu.cmake").write_text(
        "if(CMAKE_CXX_COMPILER_ID STREQUAL \"GNU\" AND\n   CMAKE_CXX_COMPILER_VERSION VERSION_LESS \"14.1\")\n"
        "  message(FATAL_ERROR \"need \" \"GCC 14.1\") # split message\nendif()\n")
    gates = gt.gates_from_tree(tmp_path)
    assert [(g.kind, g.need, g.source) for g in gates] == [
        ("cmake", ">=3.28", "CMakeLists.txt:1"),
        ("compiler", ">=14.1", "cmake/cpu.cmake:3"),
        ("compiler", ">=99", "CMakeLists.txt:8"),
    ]
    assert gates[1].message == "need GCC 14.1"
    res = {r.gate.source: r.status for r in pf.evaluate(gates, TRIXIE, matrix.get("debian-trixie-cpu"))}
    assert res == {"CMakeLists.txt:1": "pass", "cmake/cpu.cmake:3": "pass", "CMakeLists.txt:8": "skip"}
    res = {r.gate.source: r.status for r in pf.evaluate(gates, BOOKWORM, matrix.get("debian-bookworm-cpu"))}
    assert res["cmake/cpu.cmake:3"] == "fail"


def test_older_requirements_layout_with_an_index(tmp_path, matrix):
    # vLLM before requirements/build/: requirements/build.txt and requirements/cpu-build.txt
    (tmp_path / "CMakeLists.txt").write_text("cmake_minimum_required(VERSION 3.26)\nfind_package(Torch REQUIRED)\n")
    (tmp_path / "requirements").mkdir()
    (tmp_path / "requirements" / "build.txt").write_text("cmake>=3.26\nninja\n")
    (tmp_path / "requirements" / "cpu-build.txt").write_text(
        "--extra-index-url https://download.pytorch.org/whl/cpu\ncmake>=3.26.1\ntorch==2.6.0+cpu\n")
    gates = gt.gates_from_tree(tmp_path)
    torch = next(g for g in gates if g.kind == "torch")
    assert (torch.need, torch.index, torch.source) == ("torch==2.6.0+cpu", "https://download.pytorch.org/whl/cpu",
                                                       "requirements/cpu-build.txt:3")
    probe = {**TRIXIE, "ninja": "", "reachable": {"download.pytorch.org": True}}
    res = {r.gate.id: r for r in pf.evaluate(gates, probe, matrix.get("debian-trixie-cpu"))}
    assert res["torch:torch@requirements/cpu-build.txt:3"].status == "pass"
    assert res["pin:ninja@requirements/build.txt:2"].status == "fail"  # probed "": not installed
    assert res["pin:ninja@requirements/build.txt:2"].fixable
    cuda = pf.evaluate(gates, probe, matrix.get("debian-trixie-cuda"))
    assert {r.gate.id: r.status for r in cuda}["torch:torch@requirements/cpu-build.txt:3"] == "skip"


@pytest.mark.parametrize("cond, facts, expected", [
    ('NOT (CMAKE_CXX_COMPILER_ID STREQUAL "GNU" AND CMAKE_CXX_COMPILER_VERSION VERSION_GREATER_EQUAL 12.3)',
     {"CMAKE_CXX_COMPILER_ID": "GNU", "CMAKE_CXX_COMPILER_VERSION": "12.2.0"}, True),
    ('NOT (CMAKE_CXX_COMPILER_ID STREQUAL "GNU" AND CMAKE_CXX_COMPILER_VERSION VERSION_GREATER_EQUAL 12.3)',
     {"CMAKE_CXX_COMPILER_ID": "GNU", "CMAKE_CXX_COMPILER_VERSION": "12.3"}, False),
    ('CMAKE_SYSTEM_PROCESSOR MATCHES "x86_64|amd64" OR ENABLE_X86_ISA', {"CMAKE_SYSTEM_PROCESSOR": "x86_64"}, True),
    ("ASIMD_FOUND AND NOT APPLE_SILICON_FOUND", {"ASIMD_FOUND": False}, False),
    ("UNKNOWN_THING", {}, None),
    ("UNKNOWN_THING OR ON", {}, True),
    ('${CMAKE_CUDA_COMPILER_VERSION} VERSION_GREATER_EQUAL 12.8', {"CMAKE_CUDA_COMPILER_VERSION": "12.8.1"}, True),
])
def test_condition_evaluation(cond, facts, expected):
    toks = tuple(next(cmake.commands(f"if({cond})")).args)
    assert cmake.evaluate_condition(cmake.parse_condition(toks), facts) is expected


def test_comments_are_dropped_between_and_inside_commands():
    text = ('# line comment (not a command)\n#[[ bracket comment\nfoo(x) ]]\n'
            'set(A #[[ x ) y ]] b # to the end of the line )\n  c)\nfoo(#[==[ ]] ]==] "d")\n')
    got = [(c.name, c.args, c.line) for c in cmake.commands(text)]
    assert got == [("set", (("A", False), ("b", False), ("c", False)), 4), ("foo", (("d", True),), 6)]


def test_bad_inputs_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="no CMakeLists.txt"):
        gt.gates_from_tree(tmp_path)
    bad = tmp_path / "gates.toml"
    bad.write_text('[variables]\n[tools]\n[facts]\n[[remedy]]\nkind = "cmake"\nfixable = "yes"\n'
                   'remediation = "x"\ncategory = "c"\n')
    with pytest.raises(UsageError, match=r"gates.toml: remedy\[0\].fixable: expected true or false, got 'yes'$"):
        gt.load_config(bad)
    bad.write_text("[variables\n")
    with pytest.raises(UsageError, match="not valid TOML"):
        gt.load_config(bad)


@pytest.mark.parametrize("old, new, message", [
    ('fixable = true', 'fixabel = true', r"remedy\[0\]\.fixabel: unknown key \(did you mean 'fixable'\?\)$"),
    ('kind = "cmake"', 'kind = "cmak"', r"remedy\[0\]\.kind: expected one of cmake, .*got 'cmak' \(did you mean 'cmake'\?\)$"),
    ('CMAKE_VERSION = ["cmake", "cmake"]', 'CMAKE_VERSION = ["cmake"]',
     r"variables\.CMAKE_VERSION: expected \[probe key, label\], got \['cmake'\]$"),
    ('CUDA_FOUND = false', 'CUDA_FOUND = [false]',
     r"facts\.target\.cpu\.CUDA_FOUND: expected a string, a number or true/false, got \[False\]$"),
    ('[tools]', '[toolz]', r"toolz: unknown key \(did you mean 'tools'\?\)$"),
])
def test_gates_toml_faults_name_file_key_and_expectation(tmp_path, old, new, message):
    text = gt.GATES.read_text()
    assert old in text
    bad = tmp_path / "gates.toml"
    bad.write_text(text.replace(old, new, 1))
    with pytest.raises(UsageError, match=f"^{bad}: {message}"):
        gt.load_config(bad)


@pytest.mark.parametrize("log, gate_id", [
    ("gcc-gate__vllm-0.33.0-configure-bookworm-gcc12.log", "compiler:gxx@cmake/cpu_extension.cmake:136"),
    ("cmake-too-old__vllm-0.33.0-bookworm-cmake.log", "cmake:cmake@CMakeLists.txt:1"),
])
def test_prediction_names_the_line_the_real_configure_stopped_at(log, gate_id, matrix):
    # the fixture logs are real configures of this tree on bookworm; CMake names FILE:LINE of the error
    import re
    text = (TREE.parent / "logs" / log).read_text()
    stopped = re.search(r"CMake Error at (\S+):(\d+) ", text)
    o = pf.preflight(matrix.get("debian-bookworm-cpu"), TREE, BOOKWORM)
    failing = {g["id"]: g for g in o.details["gates"] if g["status"] == "fail"}
    assert gate_id in failing
    # message(FATAL_ERROR ...) may open a line above where CMake reports it; both name the same command
    file, line = failing[gate_id]["source"].rsplit(":", 1)
    assert stopped.group(1) == file and abs(int(stopped.group(2)) - int(line)) <= 1
