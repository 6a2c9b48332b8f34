"""The engine and base images on the real Docker engine (no registry: debootstrap + import)."""

from __future__ import annotations

import pytest

from containers import engine
from images import bases
from model import spec

pytestmark = pytest.mark.docker


def test_setup_finds_the_running_engine(docker_client):
    assert engine.answers()
    assert engine.ensure_engine() == "engine already answering"


def test_debootstrap_makes_a_real_importable_base(docker_client):
    """A fresh debootstrap of bookworm into a test tag: apt config written, image runs."""
    distro = spec.load().get("debian-bookworm-cpu").distro
    tag = "deploylab/base:test-debootstrap-bookworm"
    try:
        bases.debootstrap(docker_client, distro, tag)
        out = docker_client.containers.run(
            tag, ["bash", "-c", "cat /etc/debian_version; cat /etc/apt/sources.list"], remove=True).decode()
        assert out.splitlines()[0].startswith("12.")
        assert "deb-src" in out and "bookworm main contrib non-free" in out
    finally:
        docker_client.images.remove(tag, force=True)


@pytest.mark.parametrize("cell_id, version_prefix", [
    ("debian-bookworm-cpu", "12."), ("debian-trixie-cpu", "13."), ("debian-sid-cpu", ("trixie/sid", "forky/sid"))])
def test_debian_bases_exist_after_invoke_bases(docker_client, cell_id, version_prefix):
    distro = spec.load().get(cell_id).distro
    r = bases.ensure_base(docker_client, distro)
    assert r.available and r.how in ("cached", "debootstrap", "pulled")
    out = docker_client.containers.run(r.tag, ["cat", "/etc/debian_version"], remove=True).decode().strip()
    assert out.startswith(version_prefix)


def test_sid_base_ignores_expired_release_files(docker_client):
    distro = spec.load().get("debian-sid-cpu").distro
    r = bases.ensure_base(docker_client, distro)
    out = docker_client.containers.run(r.tag, ["cat", "/etc/apt/apt.conf.d/90deploylab"], remove=True).decode()
    assert 'Acquire::Check-Valid-Until "false";' in out


def test_fedora_base_is_unavailable_with_a_reason_not_a_crash(docker_client):
    distro = spec.load().get("fedora-44-cpu").distro
    r = bases.ensure_base(docker_client, distro)
    if r.available:
        pytest.skip("a registry answered here: Fedora was pulled")
    assert r.how == "unavailable"
    assert "registry.fedoraproject.org/fedora:44" in r.reason and "cannot be bootstrapped" in r.reason
