"""The in-container phase runner on the real engine: stamped logs, exit codes, and a container
removed from outside counting as an interruption, never as a build failure."""

from __future__ import annotations

import threading
import time

import pytest

from images.build import BuildContainer, BuildInterrupted, Workspace

pytestmark = pytest.mark.docker
IMAGE = "deploylab/base:debian-bookworm"


@pytest.fixture
def box(docker_client, tmp_path):
    ws = Workspace(tmp_path / "cell", tmp_path / "cache")
    with BuildContainer(docker_client, IMAGE, ws, {"GREETING": "hi"}, tmp_path / "logs") as bc:
        yield bc, tmp_path / "logs"


def test_phases_log_stamped_lines_and_exit_codes(box):
    bc, logs = box
    ok = bc.run("hello", 'echo "$GREETING from $(pwd)"; echo two')
    assert ok.exit_code == 0 and ok.log.splitlines() == ["hi from /src", "two"]
    text = (logs / "hello.log").read_text().splitlines()
    assert text[2].startswith("[+") and text[2].endswith("hi from /src") and text[-1].startswith("# exit 0")
    bad = bc.run("fails", "echo oops >&2; exit 3", attempt=2)
    assert bad.exit_code == 3 and bad.phase == "fails.2" and "oops" in bad.log


def test_a_container_removed_from_outside_is_an_interruption(box, docker_client):
    bc, _ = box
    killer = threading.Timer(2.0, lambda: docker_client.containers.get(bc.container.id).remove(force=True))
    killer.start()
    t0 = time.monotonic()
    with pytest.raises(BuildInterrupted):
        bc.run("long", "sleep 60")
    assert time.monotonic() - t0 < 30


def test_a_memory_limit_leaves_no_swap_to_page_into(docker_client, tmp_path):
    # Over build_mem_gib the OOM killer must end the compile; with swap open to it, a host that has
    # swap pages it for many minutes instead. What the container's own cgroup says, not Docker's config.
    ws = Workspace(tmp_path / "cell", tmp_path / "cache")
    with BuildContainer(docker_client, IMAGE, ws, {}, tmp_path / "logs", mem_gib=0.6) as bc:
        if docker_client.info().get("CgroupVersion") == "1":
            got = bc.run("cg", "cat /sys/fs/cgroup/memory/memory.{limit_in_bytes,memsw.limit_in_bytes,swappiness}")
            limit, memsw, swappiness = (int(x) for x in got.log.split())
            assert (memsw, swappiness) == (limit, 0), got.log
        else:
            got = bc.run("cg", "cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/memory.swap.max")
            limit, swap = (int(x) for x in got.log.split())
            assert swap == 0, got.log
    assert abs(limit - 0.6 * 2**30) < 2**20, got.log  # the kernel rounds to its page size
