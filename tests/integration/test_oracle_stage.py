"""The oracle as a stage inside a built image: the kvx extension compiled by a cell's toolchain
(bookworm's GCC 12) and installed in an image, checked case by case by the oracle in that image."""

from __future__ import annotations

import pytest

from containers.build import build_image
from containers.run import run_once
from kvlab.stage import run_oracle_stage
from model import settings
from model.results import ResultsStore
from tests.conftest import ROOT

pytestmark = pytest.mark.docker

DOCKERFILE = ROOT / "tests" / "fixtures" / "dockerfiles" / "oracle-kvx.Dockerfile"


@pytest.fixture(scope="module")
def image(docker_client, default_matrix, tmp_path_factory):
    from matrix import pipeline
    ctx = pipeline.Context(store=ResultsStore(tmp_path_factory.mktemp("r"), "o"), work=settings.work())
    ctx._client = docker_client
    cell = default_matrix.get("debian-bookworm-cpu")
    for stage in ("render", "base", "toolchain"):
        assert pipeline.run_stage(ctx, cell, stage).status == "pass"
    tag = "deploylab/test-oracle:bookworm"
    build_image(docker_client, DOCKERFILE.read_text(), tag, tmp_path_factory.mktemp("log") / "build.log",
                files={"csrc": ROOT / "kvlab" / "csrc"})
    yield tag
    docker_client.images.remove(tag, force=True)


def test_oracle_passes_every_case_in_the_built_image(image, docker_client, default_matrix, tmp_path):
    store = ResultsStore(tmp_path, "o")
    out = run_oracle_stage(default_matrix.get("debian-bookworm-cpu"), image, store, docker_client)
    assert out.status == "pass", out.evidence
    assert out.details["failed"] == 0 and out.details["named"] >= 30 and out.details["random"] >= 200
    assert "/site-packages/kvx" in out.details["kvx"], "the image's own extension, not the mounted source"


def test_oracle_runs_in_the_toolchain_image_on_the_cells_own_wheel(image, docker_client, default_matrix, tmp_path):
    """No runtime image (vLLM gated): the wheel the toolchain built is what the oracle checks."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    run_once(docker_client, "deploylab/toolchain:debian-bookworm-cpu",
             ["bash", "-c", "cp -r /kvlab-ro /tmp/kvlab && python -m pip wheel -q --no-deps /tmp/kvlab -w /out"],
             role="test", ro={"/kvlab-ro": ROOT / "kvlab" / "csrc"}, rw={"/out": wheels}, network="bridge",
             timeout_s=900).check("pip wheel of kvlab/csrc")
    assert [p.name for p in wheels.glob("kvlab_kvx-*.whl")]
    store = ResultsStore(tmp_path, "o")
    out = run_oracle_stage(default_matrix.get("debian-bookworm-cpu"), "deploylab/toolchain:debian-bookworm-cpu",
                           store, docker_client, wheels=wheels, pip_cache=settings.work() / "cache" / "pip")
    assert out.status == "pass", out.evidence
    assert out.details["failed"] == 0 and "toolchain image" in out.evidence[0]
    assert "/tmp/oracle-venv/" in out.details["kvx"], "the cell's wheel, not the mounted source"
