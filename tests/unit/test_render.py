"""Rendering: one Dockerfile per cell from shared partials, hadolint-clean, CUDA fallback recorded."""

from __future__ import annotations

import json
import jinja2
import pytest

from images import render
from model import spec


@pytest.fixture(scope="module")
def rendered(tmp_path_factory, default_matrix):
    out = tmp_path_factory.mktemp("dockerfiles")
    return out, render.write_all(default_matrix.cells, out)


def test_eight_dockerfiles_and_a_manifest(rendered, default_matrix):
    out, done = rendered
    assert len(done) == len(default_matrix.cells) >= 8
    manifest = json.loads((out / "manifest.json").read_text())
    assert {m["cell"] for m in manifest} == {c.id for c in default_matrix.cells}
    for m in manifest:
        assert (out / m["dockerfile"]).is_file()


def test_families_get_their_package_managers(rendered):
    _, done = rendered
    by = {r.cell: r.dockerfile for r in done}
    deb, fed = by["debian-trixie-cpu"], by["fedora-44-cpu"]
    assert "apt-get install -y --no-install-recommends" in deb and "libnuma-dev" in deb
    assert "libtcmalloc-minimal4" in deb and "python3-venv" in deb
    assert "dnf install" in fed and "numactl-devel" in fed and "gperftools-libs" in fed
    assert "python3.14-devel" in fed and "gcc-c++" in fed
    assert "Check-Valid-Until" in by["debian-sid-cpu"] and "Check-Valid-Until" not in deb


def test_shared_partials_are_included_not_copied(rendered):
    _, done = rendered
    for r in done:
        assert "COPY deploylab-ca.crt /usr/local/share/deploylab/ca.crt" in r.dockerfile
        assert r.dockerfile.count("python -m pip install --no-cache-dir --upgrade pip") == 1
    templates = [p.read_text() for p in render.TEMPLATES.glob("*.Dockerfile.j2")]
    assert all("deploylab-ca.crt" not in t for t in templates), "CA handling belongs in partials/ca.j2"


def test_cuda_without_registry_falls_back_to_the_distros_toolkit(default_matrix):
    cell = default_matrix.get("debian-trixie-cuda")
    assert render.resolve_cuda_source(cell, registry_ok=False, probe_network=False) == "distro"
    assert render.resolve_cuda_source(cell, registry_ok=True) == "nvidia-image"
    r = render.render_cell(cell, "distro")
    assert "nvidia-cuda-toolkit" in r.dockerfile and "VLLM_TARGET_DEVICE=cuda" in r.dockerfile
    img = render.render_cell(cell, "nvidia-image")
    assert img.base_image.startswith("nvidia/cuda:12.8.1-devel")
    repo = render.render_cell(cell, "nvidia-repo")
    assert "developer.download.nvidia.com/compute/cuda/repos/debian13" in repo.dockerfile
    assert "cuda-toolkit-12-8" in repo.dockerfile


def test_knobs_reach_the_dockerfile(tmp_path):
    p = tmp_path / "m.toml"
    p.write_text('[matrix]\ndistros = ["debian-trixie"]\n[knobs]\nnumactl = false\ntcmalloc = false\nmax_jobs = 3\n'
                 'extra_packages = ["libopenblas-dev"]\n')
    r = render.render_cell(spec.load(p).cells[0])
    assert "libnuma-dev" not in r.dockerfile and "libtcmalloc" not in r.dockerfile
    assert "MAX_JOBS=3" in r.dockerfile and "libopenblas-dev" in r.dockerfile


def test_templates_are_strict():
    env = render._env()
    with pytest.raises(jinja2.UndefinedError):
        env.get_template("partials/header.j2").render()
