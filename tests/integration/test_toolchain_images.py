"""Toolchain images built from the rendered Dockerfiles on the real engine, through the pipeline's
own stages, with the versions the containers really have."""

from __future__ import annotations

import pytest

from matrix import pipeline
from model.results import ResultsStore

pytestmark = pytest.mark.docker

EXPECTED_GCC = {"debian-bookworm-cpu": "12.2.", "debian-trixie-cpu": "14.", "debian-sid-cpu": "16."}


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, docker_client):
    tmp = tmp_path_factory.mktemp("results")
    c = pipeline.Context(store=ResultsStore(tmp, "tc"), work=tmp / "work")
    c._client = docker_client
    return c


@pytest.mark.parametrize("cell_id", sorted(EXPECTED_GCC))
def test_toolchain_image_records_real_versions(ctx, default_matrix, cell_id):
    cell = default_matrix.get(cell_id)
    for stage in ("render", "base", "toolchain"):
        out = pipeline.run_stage(ctx, cell, stage)
        assert out.status == "pass", (stage, out.evidence)
    probe = out.details["probe"]
    assert probe["gcc"].startswith(EXPECTED_GCC[cell_id]), probe
    assert probe["python"].startswith(cell.distro.python), probe
    assert probe["numa_header"] == "yes" and "libtcmalloc_minimal.so.4" in probe["tcmalloc"]
    assert probe["cmake"] and probe["glibc"] and probe["disk_free_gb"] > 0 and probe["mem_gib"] > 0
    assert out.versions["gcc"] == probe["gcc"]


def test_fedora_cell_ends_base_unavailable_and_skips_its_toolchain(ctx, default_matrix):
    cell = default_matrix.get("fedora-44-cpu")
    assert pipeline.run_stage(ctx, cell, "render").status == "pass"
    base = pipeline.run_stage(ctx, cell, "base")
    if base.status == "pass":
        pytest.skip("a registry answered here: Fedora was pulled")
    assert base.status == "base-unavailable"
    tc = pipeline.run_stage(ctx, cell, "toolchain")
    assert tc.status == "skipped" and tc.category == "upstream-base"
