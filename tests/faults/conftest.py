"""Fixtures the fault tests share: a lab (results store + work dir of its own) for `invoke matrix`
over the tiny engine (tests/fixtures/tiny-engine); each module names its spec (`lab_spec`)."""

from __future__ import annotations

import pytest

from tests.faults.tiny import make_lab


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory):
    """pip's cache across the session's builds (the kvlab phase's build deps), as a machine keeps it."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def lab(tmp_path, shared_cache, lab_spec):
    return make_lab(tmp_path, shared_cache, lab_spec)
