"""Unit tests neither shell out nor open a network connection (those are integration tests): both are
refused here, so a test that starts doing either fails at once, naming what it did. pytest.fail, not
an exception: code under test that catches Exception (the pipeline records a crash) cannot hide it."""

from __future__ import annotations

import socket
import subprocess

import pytest


@pytest.fixture(autouse=True)
def no_processes_no_network(monkeypatch):
    def no_process(*args, **kw):
        pytest.fail(f"a unit test started a process ({args[0] if args else kw.get('args')!r}): "
                    "that belongs in tests/integration", pytrace=False)

    real_connect = socket.socket.connect

    def no_network(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            pytest.fail(f"a unit test opened a network connection to {address!r}: "
                        "that belongs in tests/integration (or use httpx.MockTransport)", pytrace=False)
        return real_connect(self, address)

    monkeypatch.setattr(subprocess, "Popen", no_process)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket.socket, "connect_ex", no_network)


@pytest.fixture
def hadolint_ok(monkeypatch):
    """The render stage without running hadolint (a process): its verdict on the rendered Dockerfile,
    'clean'. hadolint itself runs on every rendered Dockerfile in tests/integration/test_cli.py."""
    from images import render
    monkeypatch.setattr(render, "lint", lambda dockerfile: (True, ""))
