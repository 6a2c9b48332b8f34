"""`invoke matrix` with serving engines in its spec ends with the adapter matrix, and `invoke notes`
writes it beside the distro notes: the real CLI, real llama.cpp (Debian sid's llama-server) serving
the project's test model, TGI unavailable here. Budget: ~2 min (llama.cpp image built once by the
conform tests; Fedora ends base-unavailable at once).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = [pytest.mark.docker, pytest.mark.server, pytest.mark.timeout(1200)]

SPEC = """
[matrix]
distros = ["fedora-44"]
targets = ["cpu"]
serving_engines = ["llama.cpp", "tgi", "vllm"]
"""


def test_a_matrix_run_produces_the_adapter_matrix_in_the_notes(tmp_path):
    spec = tmp_path / "m.toml"
    spec.write_text(SPEC)
    env = {**os.environ, "DEPLOYLAB_RESULTS": str(tmp_path / "results")}

    def invoke(*args):
        return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=1100)
    run = invoke("matrix", "--spec", str(spec), "--run", "a")
    out = run.stdout + run.stderr  # the console writes to stderr
    assert run.returncode == 0, out
    assert "llama.cpp: conform fail contract" in out, out
    assert "tgi: conform engine-unavailable" in out and "vllm: no row" in out
    notes = invoke("notes", "--run", "a", "--out", str(tmp_path / "notes"))
    assert notes.returncode == 0, notes.stdout + notes.stderr
    rows = {r["engine"]: r for r in json.loads((tmp_path / "notes" / "adapters.json").read_text())}
    assert set(rows) == {"llama.cpp", "tgi"}
    assert rows["llama.cpp"]["required_failed"] == ["stream-usage", "unknown-model"]
    assert rows["llama.cpp"]["smoke"]["requests"] > 0 and rows["llama.cpp"]["smoke"]["http_5xx"] == 0
    md = (tmp_path / "notes" / "adapters.md").read_text()
    assert "| tgi | | engine-unavailable:" in md and "## Contract checks" in md
    assert (tmp_path / "notes" / "fedora-44.md").is_file() and not list((tmp_path / "notes").glob("engine-*"))


def test_an_unknown_serving_engine_is_one_line(tmp_path):
    spec = tmp_path / "m.toml"
    spec.write_text(SPEC.replace('"tgi"', '"tgj"'))
    p = subprocess.run([sys.executable, "-m", "invoke", "matrix", "--spec", str(spec), "--run", "b"], cwd=ROOT,
                       env={**os.environ, "DEPLOYLAB_RESULTS": str(tmp_path / "results")}, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode != 0 and "Traceback" not in p.stdout + p.stderr
    assert f"{spec}: matrix.serving_engines: unknown engine 'tgj' (did you mean 'tgi'?)" in p.stdout + p.stderr
