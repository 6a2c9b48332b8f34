"""Shared fixtures. Docker tests use the real engine; they are skipped only when none answers
outside CI (in CI, .ci/run starts dockerd first, and a missing engine is an error)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")


@pytest.fixture(scope="session")
def docker_client():
    from containers.engine import answers, client
    if not answers():
        if os.environ.get("CI"):
            pytest.fail("CI: no Docker engine answers (.ci/run should have started dockerd)")
        pytest.skip("no Docker engine answers: run `invoke setup`")
    return client()


@pytest.fixture(scope="session")
def default_matrix():
    from model import spec
    return spec.load()
