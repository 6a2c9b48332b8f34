"""The container toolkit on the real engine: build-or-get from a template on the bookworm base,
run-once exit codes and logs, a server that becomes ready (or dies, or never answers) and is removed,
removal on an exception, and a crashed run's leftovers found by label and removed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import httpx
import pytest
from docker.errors import NotFound

from containers import images, labels, run, server
from tests.conftest import ROOT

pytestmark = [pytest.mark.docker, pytest.mark.timeout(900)]

BASE = "deploylab/base:debian-bookworm"
TEST = {"org.deploylab.test": "test_containers"}
# python3 for a real HTTP server; the CA file proves the build context carries it.
TEMPLATE = ROOT / "tests" / "fixtures" / "dockerfiles" / "toolkit-tiny.Dockerfile.j2"


def _gone(client, cid: str) -> bool:
    try:
        client.containers.get(cid)
        return False
    except NotFound:
        return True


def _ours(client) -> list:
    return client.containers.list(all=True, filters={"label": "org.deploylab.test=test_containers"})


@pytest.fixture(scope="module")
def image(docker_client, tmp_path_factory):
    if not images.exists(docker_client, BASE):
        pytest.skip(f"{BASE} missing: run `invoke bases`")
    tdir = tmp_path_factory.mktemp("templates")
    (tdir / "tiny.Dockerfile.j2").write_text(TEMPLATE.read_text())
    tag = f"deploylab/test-toolkit:{uuid.uuid4().hex[:8]}"
    log = tdir / "build.log"
    calls = []

    def prepare():  # runs only when a build is needed; what it returns joins the context
        calls.append(1)
        return {"from-prepare.txt": b"prepared\n"}

    first = images.ensure_image(docker_client, tag, "tiny.Dockerfile.j2", tdir, log, prepare=prepare,
                                context={"base_image": BASE, "greeting": "hello from the template"})
    try:
        assert first.built and first.seconds > 0 and "Successfully tagged" in log.read_text() and calls == [1]
        again = images.ensure_image(docker_client, tag, "tiny.Dockerfile.j2", tdir, log, prepare=prepare,
                                    context={"base_image": BASE, "greeting": "ignored: the tag exists"})
        assert not again.built and again.seconds == 0 and calls == [1]
        yield tag
    finally:
        docker_client.images.remove(tag, force=True)


def test_the_built_image_is_the_rendered_template(docker_client, image):
    r = run.run_once(docker_client, image, ["cat", "/greeting", "/from-prepare.txt", "/usr/local/share/deploylab-test/ca.crt"],
                     role="test", labels=TEST)
    assert r.ok and r.stdout.startswith("hello from the template\nprepared\n") and "BEGIN CERTIFICATE" in r.stdout


def test_run_once_returns_exit_code_and_both_streams_and_removes_the_container(docker_client, image, tmp_path):
    script = tmp_path / "say.sh"
    script.write_text('echo "out $1"; echo "err $1" >&2; exit 3\n')
    log = tmp_path / "logs" / "say.log"
    r = run.run_once(docker_client, image, ["sh", f"{run.SCRIPTS}/say.sh", "x"], role="test", labels=TEST,
                     ro=run.script_mount(script), log_path=log)
    assert r.exit_code == 3 and not r.ok
    assert r.stdout == "out x\n" and r.stderr == "err x\n" and set(r.log.splitlines()) == {"out x", "err x"}
    assert log.read_text() == r.log
    with pytest.raises(run.ContainerFailed, match="exited 3; log tail:"):
        r.check("say.sh")
    assert _ours(docker_client) == []


def test_run_once_network_none_by_default_and_a_rw_mount_comes_back(docker_client, image, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    r = run.run_once(docker_client, image, ["sh", "-c", "cat /sys/class/net/*/address | wc -l > /out/n; "
                                            "python3 -c 'import socket; print(socket.gethostbyname(\"pypi.org\"))'"],
                     role="test", labels=TEST, rw={"/out": out})
    assert r.exit_code != 0 and "gaierror" in r.stderr        # no network: no DNS
    assert (out / "n").read_text().strip() == "1"             # loopback only


def test_run_once_kills_at_the_timeout_and_still_removes(docker_client, image):
    t0 = time.monotonic()
    r = run.run_once(docker_client, image, ["sh", "-c", "echo started; exec sleep 300"], role="test", labels=TEST,
                     timeout_s=3)
    assert r.timed_out and r.exit_code is None and "started" in r.log
    assert time.monotonic() - t0 < 60
    assert _ours(docker_client) == []


def test_run_once_names_a_missing_image(docker_client):
    with pytest.raises(run.ContainerFailed, match="deploylab/no-such-image:0: cannot create"):
        run.run_once(docker_client, "deploylab/no-such-image:0", ["true"], role="test", labels=TEST)


def _http(image: str, **kw) -> server.Server:
    return server.Server(image, ["python3", "-m", "http.server", "8000", "--bind", "0.0.0.0"], port=8000,
                         role="test", labels=TEST, ready=server.http_ready(8000, "/"), **kw)


def test_a_server_becomes_ready_on_loopback_and_is_removed(docker_client, image, tmp_path):
    log = tmp_path / "server.log"
    with _http(image, log_path=log, timeout_s=60) as s:
        assert s.url.startswith("http://127.0.0.1:") and s.startup_s > 0
        assert httpx.get(s.url + "/greeting").text == "hello from the template\n"
        c = docker_client.containers.get(s.id)
        assert c.labels[labels.ROLE] == "test" and c.labels[labels.RUN] == labels.run_id()
        bound = c.attrs["HostConfig"]["PortBindings"]["8000/tcp"]
        assert [b["HostIp"] for b in bound] == ["127.0.0.1"]
        cid = s.id
    assert _gone(docker_client, cid) and "GET /greeting" in log.read_text()


def test_a_server_that_exits_fails_at_once_with_its_log(docker_client, image):
    t0 = time.monotonic()
    with pytest.raises(server.ServerFailed, match=r"(?s)exited before ready.*no such file here"):
        with server.Server(image, ["sh", "-c", "echo no such file here; exit 1"], port=8000, role="test",
                           labels=TEST, timeout_s=120):
            pass
    assert time.monotonic() - t0 < 30, "waited for a dead container"
    assert _ours(docker_client) == []


def test_a_server_that_never_answers_times_out_and_is_removed(docker_client, image):
    with pytest.raises(server.ServerFailed, match="not ready after 4s"):
        with server.Server(image, ["sleep", "300"], port=8000, role="test", labels=TEST, timeout_s=4):
            pass
    assert _ours(docker_client) == []


def test_an_exception_inside_the_block_still_removes_the_server(docker_client, image):
    with pytest.raises(KeyError):
        with _http(image, timeout_s=60) as s:
            cid = s.id
            raise KeyError("the caller failed")
    assert _gone(docker_client, cid)


CRASH = """
import sys, time
from containers.server import Server
s = Server(sys.argv[1], ["sleep", "600"], port=8000, role="test", labels={"org.deploylab.test": "test_containers"})
print(s.start().id, flush=True)
time.sleep(600)
"""


def test_a_crashed_runs_leftovers_are_found_by_label_and_removed(docker_client, image):
    run_id = f"test-crash-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "DEPLOYLAB_RUN_ID": run_id, "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen([sys.executable, "-c", CRASH, image], stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        left = p.stdout.readline().strip()
    finally:
        p.send_signal(signal.SIGKILL)  # a crash: no finally, no __exit__ runs
        p.wait()
    assert left and not _gone(docker_client, left)
    # A live run's container under the same label is not an orphan.
    live = docker_client.containers.run(image, ["sleep", "600"], detach=True,
                                        labels={**labels.labels("test", TEST), labels.RUN: run_id})
    try:
        name = docker_client.containers.get(left).name
        assert labels.cleanup_leftovers(docker_client, f"{labels.RUN}={run_id}", orphans_only=True) == [name]
        assert _gone(docker_client, left) and not _gone(docker_client, live.id)
        removed = labels.cleanup_leftovers(docker_client, f"{labels.RUN}={run_id}")
        assert removed == [live.name] and _gone(docker_client, live.id)
    finally:
        labels.remove_container(live)
