"""The head-of-line probe on real parts: its report through the pre-registration guard (git), and one
run of a one-replica profile on the real engine (the tiny test model) behind the real nginx router,
with the probe's quota, its pairs and its records."""

from __future__ import annotations

import json
import math
from contextlib import contextmanager

import pytest

from model.errors import UsageError
from smoke.sweep import capacity as cap, capacity_report as rep, capacity_runner as cr, hol_probe as hp
from smoke.sweep import hol_probe_report as report, hol_probe_run as hrun
from tests.conftest import ROOT
from tests.integration.test_capacity_guard import git
from tests.unit.test_hol_probe import FAST, MIX, RULES, A, B, HolPools

CAPPED = """
[pools.main]
replicas = 2
[pools.main.knobs]
token_budget = 2048
max_sequences = 32
long_prefill_threshold = 256
queue_limit_requests = 32
[routing]
default = "main"
"""


@pytest.mark.server
def test_one_probe_run_on_the_real_engine(docker_client, tmp_path):
    from smoke.sweep import capacity_run as run
    src = tmp_path / "capped.toml"
    src.write_text(CAPPED)
    rules = cap.load_rules()
    rules = rules.model_copy(update={"equal_load": rules.equal_load.model_copy(update={"reference": "capped"})})
    probe = hp.load_rules()
    probe = probe.model_copy(update={"probe": probe.probe.model_copy(update={
        "profiles": ["capped", "capped"], "trials": 3, "warmup_trials": 1, "period_s": 3.0, "min_during": 1})})
    opts = run.CapacityOptions(profiles=(str(src),), mix="default", model_size="tiny", engine_cpus=2.0,
                               request_timeout_s=60.0, startup_timeout_s=420.0)
    setup = run.prepare(opts, rules)
    cpus = hrun.replica_cpus(probe, setup, 2.0)
    assert cpus == 1.0                               # mean_lane: 2 engine CPUs over the reference's 2 replicas
    store = cr.Store(tmp_path / "hol")
    factory = hrun.factory(setup, store, opts, cpus)
    seen = {}

    @contextmanager
    def watched(profile, tag):      # while the replica is up: its quota as Docker holds it
        with factory(profile, tag) as p:
            hc = docker_client.containers.get(p.container_ids[0]).attrs["HostConfig"]
            seen["quota"] = (hc["CpuQuota"] / hc["CpuPeriod"], len(p.container_ids))
            yield p

    e = hp.Probe(probe, rules, setup.mix, store, watched, say=print).one("capped", 1)
    assert seen["quota"] == (1.0, 2)                 # one replica at the probe's CPUs, and its router
    assert e["measured"] == 2 and e["failed"] == 0
    recs = cr.read_xz_records(store.root / e["dir"] / "records.jsonl.xz")
    assert sorted(r.id for r in recs) == sorted(f"p{i:02d}-{k}" for i in range(3) for k in ("long", "short"))
    assert all(r.ok and r.ttft_s > 0 for r in recs)
    ps = hp.pairs(recs, probe)
    assert e["counted"] == sum(p.during for p in ps)
    if e["counted"]:
        assert e["short_ttft_p50_ms"] > 0 and e["long_ttft_p50_ms"] > 0
    assert math.isfinite(e["server_ttft_mean_ms"]) and len(e["load1"]) == 2 and e["throttle"]["main-0"]["periods"] > 0
    assert not docker_client.containers.list(all=True, filters={"label": "org.deploylab.capacity-profile"})


def test_the_report_is_generated_from_the_runs_and_refuses_rules_that_moved(tmp_path):
    repo = tmp_path / "repo"
    for f in hp.SCORED:
        (repo / f).parent.mkdir(parents=True, exist_ok=True)
        (repo / f).write_bytes((ROOT / f).read_bytes())
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "rules")
    commit = rep.score_commit(repo, hp.SCORED)
    hp.Probe(RULES, FAST, MIX, cr.Store(tmp_path / "hol"), HolPools({A}), say=lambda s: None).run()
    es = cr.Store(tmp_path / "hol").entries()
    plan = {"cpus": 0.75, "cfs_period_us": 10000, "engine": "vllm 0.33.0", "engine_image": "img", "model": "m",
            "cores": "0,1", "score_commit": commit, "args": {A: ["--a"], B: ["--b"]}}
    r = report.build(hp.judge(es, RULES, FAST), plan, es)
    md = report.write(r, RULES, es, repo, tmp_path / "out").read_text()
    assert f"**Verdict: {cap.REPRODUCED}.**" in md and commit[:12] in md
    assert md.count(f"| {A} | ") == 4 and "`--b`" in md          # a figure row and three runs; the arguments
    out = json.loads((tmp_path / "out" / "hol.json").read_text())
    assert out["profiles"][A]["short_ttft_p50_ms"]["runs"] == 3 and out["verdict"] == cap.REPRODUCED
    assert out["profiles"][A]["short_ttft_p50_ms"]["mean"] == pytest.approx(80.0)
    toml = repo / "smoke/sweep/hol_probe.toml"
    toml.write_text(toml.read_text().replace("min_during = 15", "min_during = 5"))
    with pytest.raises(UsageError, match="differ from score_commit"):
        report.write(r, RULES, es, repo, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
