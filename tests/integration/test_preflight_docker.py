"""Preflight against a real container on the real engine: the bookworm CPU cell names the CMake and GCC
gates in under 60 s. Probes with images.toolchain.probe on deploylab/toolchain:debian-bookworm-cpu; where
that image is not built yet, probes a throwaway deploylab/base:debian-bookworm container with Debian's
gcc/g++/cmake apt-installed (the same probe script)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]
TREE = ROOT / "tests" / "fixtures" / "vllm-0.33.0"
CELL = "debian-bookworm-cpu"


@pytest.fixture(scope="module")
def client(docker_client):
    return docker_client  # tests/conftest.py: the real engine (an error in CI when none answers)


def _has(client, tag: str) -> bool:
    try:
        client.images.get(tag)
        return True
    except Exception:
        return False


def probe_bookworm(client) -> tuple[dict, str]:
    from images import toolchain
    tag = f"deploylab/toolchain:{CELL}"
    if _has(client, tag):
        return toolchain.probe(client, tag), tag
    base = "deploylab/base:debian-bookworm"
    if not _has(client, base):
        pytest.skip(f"neither {tag} nor {base} is built (invoke bases / invoke build)")
    script = ("apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
              "--no-install-recommends gcc g++ cmake python3 >/dev/null 2>&1; " + toolchain.PROBE.read_text())
    raw = client.containers.run(base, ["bash", "-c", script], remove=True, stdout=True, stderr=False,
                                mem_limit="1g")
    return toolchain.parse_probe(raw.decode(errors="replace")), base


def test_bookworm_cpu_gates_on_a_real_container(client):
    from images import gates as gt, preflight as pf
    from images.probe import probe_reachability
    from model import spec
    cell = spec.load(None).get(CELL)
    probe, image = probe_bookworm(client)
    assert probe["cmake"].startswith("3.25.") and probe["gxx"].startswith("12.2."), (image, probe)
    t0 = time.monotonic()
    gates = gt.gates_from_tree(TREE)
    probe["reachable"] = probe_reachability(client, image, gt.hosts_of(gates))
    assert set(probe["reachable"]) >= {"github.com"} and all(isinstance(v, bool) for v in probe["reachable"].values())
    o = pf.preflight(cell, TREE, probe)
    assert time.monotonic() - t0 < 60
    assert (o.status, o.category) == ("gated", "gcc-gate")
    assert any(e.startswith(f"cmake {probe['cmake']} < 3.26 (CMakeLists.txt:1:") for e in o.evidence)
    assert (f"gcc {probe['gxx']} < 12.3 (cmake/cpu_extension.cmake:136: X86 backend requires gcc/g++ >= 12.3)"
            in o.evidence)


def test_invoke_preflight_cli(client):
    if not _has(client, f"deploylab/toolchain:{CELL}"):
        pytest.skip(f"deploylab/toolchain:{CELL} not built yet (invoke build --cell {CELL})")
    t0 = time.monotonic()
    out = subprocess.run([str(Path(sys.executable).with_name("invoke")), "preflight", "--cell", CELL], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert time.monotonic() - t0 < 60
    assert f"{CELL}: preflight predicts gated (gcc-gate)" in out.stdout
    assert "< 3.26 (CMakeLists.txt:1" in out.stdout and "< 12.3 (cmake/cpu_extension.cmake:136" in out.stdout
