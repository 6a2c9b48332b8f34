"""The architecture as a test: import-linter's contracts in pyproject.toml (layers, forbidden imports),
and the size and no-inline-Dockerfile rules of the tree."""

from __future__ import annotations

import re
from pathlib import Path

from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("model", "containers", "images", "engines", "smoke", "kvlab", "matrix")


def test_import_contracts_kept(monkeypatch):
    monkeypatch.chdir(ROOT)
    assert lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True) == 0


def _modules():
    for pkg in PACKAGES:
        yield from (ROOT / pkg).rglob("*.py") if (ROOT / pkg).is_dir() else ()


def test_no_module_over_600_lines():
    big = {str(p.relative_to(ROOT)): n for p in _modules() if (n := len(p.read_text().splitlines())) > 600}
    assert big == {}


def test_only_the_toolkit_starts_containers_or_makes_images():
    # containers/ is the one place that starts a container, creates a network, or builds, pulls or
    # imports an image; other code asks it (run_once, start_detached, Server, ensure_image, ...).
    pattern = re.compile(r"\.containers\.(?:run|create)\(|\.images\.(?:build|pull|load)\(|\.api\.(?:build|"
                         r"create_container|import_image\w*)\(|\bfrom_env\(|\b(?:DockerContainer|Network)\(|"
                         r"\.networks\.create\(")
    outside = [p for p in [*_modules(), ROOT / "tasks.py"] if p.parts[len(ROOT.parts)] != "containers"]
    assert len(outside) > 100
    found = [f"{p.relative_to(ROOT)}: {m.group(0)}" for p in outside for m in pattern.finditer(p.read_text())]
    assert found == []
    inside = "".join(p.read_text() for p in (ROOT / "containers").glob("*.py"))
    assert len(pattern.findall(inside)) >= 6, "the pattern still finds the toolkit's own calls"


def test_no_dockerfile_text_in_python():
    # A FROM line at the start of a string or line inside a .py file: Dockerfiles live in images/templates/.
    pattern = re.compile(r'^\s*(?:[rfb]*"""|")?FROM [\w.{}/:-]+', re.MULTILINE)
    inline = [str(p.relative_to(ROOT)) for p in _modules() if pattern.search(p.read_text())]
    assert inline == []


def test_no_dockerfile_in_test_code():
    # Tests too: a Dockerfile a test builds is a file (tests/fixtures/dockerfiles/). A FROM line followed
    # by an instruction on the next real line is one; a one-line "FROM x\nRUN y" string (an input or an
    # expected render) is not.
    pattern = re.compile(r'(?:^\s*|""")FROM \S+[^\n]*\n\s*(?:RUN|COPY|ADD|ENV|ARG|WORKDIR|USER) ', re.MULTILINE)
    tests = [p for p in (ROOT / "tests").rglob("*.py") if p.name != "test_layers.py"]
    assert len(tests) > 50
    inline = [str(p.relative_to(ROOT)) for p in tests if pattern.search(p.read_text())]
    assert inline == []


def test_notes_hold_no_runnable_scripts():
    # notes/ holds evidence; the scripts that made it live in the packages (kvlab/gpu/, smoke/bench/).
    notes = list((ROOT / "notes").rglob("*"))
    assert len(notes) > 50
    assert [str(p.relative_to(ROOT)) for p in notes if p.suffix in (".py", ".sh")] == []
