"""The sweep: each profile's pools and router, the SAME trace replayed against each, then a ranking.

Order matters: everything a user can get wrong is checked before the first container starts —
the mix, every profile, every class they route, and every knob against what the engine image
itself accepts (smoke.sweep.knobs). Then, per profile: a user-defined Docker network, the replicas
(cpusets from the profile's cores), nginx with the rendered config (its port on 127.0.0.1 only),
and one replay per phase (`base`, then `scale` at rate x scale) through smoke's own replay and
reports, with /metrics scraped from every replica before and after and the router's access log
read back to count where each class went. One StageOutcome per profile lands in the results store
(cell "profile-NAME", stage "sweep"); the Markdown + PNG report is written from those.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from model import settings
from model.errors import UsageError
from model.results import ResultsStore, StageOutcome
from model.stage import Timed
from smoke import mix as mixmod, profiles as profmod, replay, workload
from smoke.router import nginx
from smoke.sweep import knobs as knobmod, score as scoremod, scrape
from smoke.sweep.pools import LABEL, ROLE

# What an engine image accepts is cached per image id: probing imports vLLM (~30-60 s on 2 cores).
CAPS_CACHE = settings.work() / "sweep"


@dataclass(frozen=True)
class SweepOptions:
    mix: str = "default"
    seed: int = 0
    rate_rps: float = 0.0            # 0: the mix's own rate
    duration_s: float = 0.0          # 0: the mix's own duration
    scale: float = 0.0               # > 1: a second phase at rate x scale against the same pools
    image: str = ""                  # "" = the smoke stage's vllm-cpu runtime image
    max_concurrency: int = 512       # open loop: high, so the load reaches the router, not a client queue
    request_timeout_s: float = 180.0
    startup_timeout_s: float = 480.0


@dataclass(frozen=True)
class Plan:
    mix: mixmod.Mix
    profiles: tuple[profmod.Profile, ...]
    caps: knobmod.EngineCaps
    args: dict[str, dict[str, tuple[str, ...]]]       # profile → pool → engine args
    placements: dict[str, tuple[profmod.Placement, ...]]
    phases: tuple[tuple[str, float], ...]             # (name, rate)
    traces: dict[str, workload.Trace]
    image: str


def host_cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def plan(names: list[str] | None, opts: SweepOptions, client, work: Path) -> Plan:
    """Load and check everything; translate every knob. Raises UsageError before anything starts."""
    from smoke.image import DEFAULT_TAG
    m = mixmod.load(opts.mix)
    if opts.rate_rps or opts.duration_s:
        m = replace(m, duration_s=opts.duration_s or m.duration_s,
                    arrival=replace(m.arrival, rate_rps=opts.rate_rps or m.arrival.rate_rps))
    if opts.scale and opts.scale <= 1:
        raise UsageError(f"--scale: expected a factor > 1 (the scale phase's rate multiplier), got {opts.scale}")
    if opts.scale and m.arrival.process == "trace":
        raise UsageError(f"{m.source}: arrival.process: a recorded trace has fixed times; --scale needs poisson or gamma")
    profs = tuple(profmod.load_many(names))
    seen = Counter(p.name for p in profs)
    if dup := [n for n, k in seen.items() if k > 1]:
        raise UsageError(f"--profiles: {dup[0]!r} given twice")
    for p in profs:
        p.check_classes(m)
    image = opts.image or DEFAULT_TAG
    images = {image} | {pool.image for p in profs for pool in p.pools if pool.image}
    if len(images) > 1:
        raise UsageError(f"profiles name several engine images ({', '.join(sorted(images))}); one engine per sweep")
    from smoke.sweep.pools import probe_engine
    if image == DEFAULT_TAG:
        from smoke.image import ensure_runtime_image
        ensure_runtime_image(client, log_path=work / "runtime-image.log")
    caps = probe_engine(client, image, CAPS_CACHE)
    args = {p.name: {pool.name: knobmod.translate(pool.knob_dict, caps, f"{p.source}: pools.{pool.name}.knobs")
                     for pool in p.pools} for p in profs}
    cpus = host_cpus()
    placements = {p.name: profmod.place(p, cpus) for p in profs}
    phases = [("base", m.arrival.rate_rps)] + ([("scale", m.arrival.rate_rps * opts.scale)] if opts.scale else [])
    traces = {}
    for name, rate in phases:
        traces[name] = workload.generate(replace(m, arrival=replace(m.arrival, rate_rps=rate)), opts.seed)
    return Plan(m, profs, caps, args, placements, tuple(phases), traces, image)


def _routing(lines: list[str], ip_host: dict[str, str]) -> dict[str, dict[str, int]]:
    """class → {replica host: requests}, from nginx's JSON access log."""
    out: dict[str, Counter] = {}
    for line in lines:
        try:
            d = json.loads(line)
        except ValueError:
            continue
        if "class" not in d:
            continue
        ip = d.get("upstream", "").split(":")[0]
        out.setdefault(d["class"] or "-", Counter())[ip_host.get(ip, d.get("upstream") or "-")] += 1
    return {k: dict(v) for k, v in sorted(out.items())}


def run_profile(p: profmod.Profile, pl: Plan, opts: SweepOptions, store: ResultsStore, client, work: Path,
                progress: bool = True, say=print) -> StageOutcome:
    from smoke.server import MODEL_NAME, ServerFailed, ensure_model
    from smoke.stage import replay_and_report
    from smoke.sweep.pools import start_replicas, sweep_network
    cell = f"profile-{p.name}"
    out = store.artifact_dir(cell, "sweep")
    t = Timed(cell, "sweep")
    labels = {LABEL: ROLE, "org.deploylab.sweep-profile": p.name}
    conf = out / "nginx.conf"
    conf.write_text(nginx.render(p, pl.placements[p.name]))
    model_dir = ensure_model(client, pl.image)
    details: dict[str, Any] = {"profile": p.name, "description": p.description, "engine": pl.caps.label,
                               "pools": {pool.name: {"replicas": pool.replicas, "cores": pool.cores,
                                                     "balance": pool.balance, "knobs": pool.knob_dict,
                                                     "args": list(pl.args[p.name][pool.name])} for pool in p.pools},
                               "placements": [asdict(x) for x in pl.placements[p.name]],
                               "routes": dict(p.routes), "default_pool": p.default_pool, "phases": {}}
    store.event("stage-start", cell=cell, stage="sweep")
    try:
        with sweep_network(labels) as net:
            say(f"[{p.name}] starting {len(pl.placements[p.name])} replica(s) on network {net.name[:8]}")
            with start_replicas(pl.image, model_dir, pl.placements[p.name], pl.args[p.name], net, labels,
                                out / "logs", opts.startup_timeout_s) as reps:
                details["replicas"] = [asdict(r) for r in reps]
                ip_host = {}
                for r in reps:
                    nets = client.containers.get(r.container_id).attrs["NetworkSettings"]["Networks"]
                    ip_host[nets[net.name]["IPAddress"]] = r.host
                say(f"[{p.name}] replicas ready in {max(r.startup_s for r in reps):.0f}s; starting nginx")
                with nginx.nginx_router(conf, net, labels) as router:
                    seen = 0
                    for phase, rate in pl.phases:
                        trace = pl.traces[phase]
                        pdir = out / phase
                        before = {r.host: scrape.fetch(r.url, pdir / "metrics" / f"{r.host}.before.prom") for r in reps}
                        load_before = os.getloadavg()
                        meta = {"target": f"{p.name} ({phase})", "profile": p.name, "phase": phase,
                                "mix": pl.mix.name, "seed": opts.seed, "rate_rps": rate,
                                "requests": len(trace.requests), "router": router.url, "engine": pl.caps.label}
                        say(f"[{p.name}] {phase}: replaying {len(trace.requests)} requests at {rate:g} sessions/s")
                        ropts = replay.ReplayOptions(max_concurrency=opts.max_concurrency,
                                                     request_timeout_s=opts.request_timeout_s)
                        verdict, summary, arts = replay_and_report(trace, router.url, MODEL_NAME, pl.mix, pdir,
                                                                   meta, progress, ropts)
                        after = {r.host: scrape.fetch(r.url, pdir / "metrics" / f"{r.host}.after.prom") for r in reps}
                        lines = router.log_lines()
                        recs = _read_records(Path(arts["records"]))
                        details["phases"][phase] = {
                            "rate_rps": rate, "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
                            "verdict": verdict.line(), "passed": verdict.passed,
                            "failures": list(verdict.failures),
                            "admission": scoremod.admission(recs),
                            "short_during_long": scoremod.short_during_long(recs),
                            "routing": _routing(lines[seen:], ip_host),
                            "pool_metrics": {h: scrape.key_figures(scrape.delta(before[h], after[h])) for h in before},
                            "summary": str(Path(arts["summary"])), "artifacts": arts}
                        (pdir / "router-access.jsonl").write_text("".join(ln + "\n" for ln in lines[seen:]))
                        seen = len(lines)
                        say(f"[{p.name}] {phase}: {verdict.line()[:160]}")
    except ServerFailed as exc:
        tail = [ln for ln in str(exc).splitlines() if ln.strip()][-8:]
        return store.write(t.done("fail", category="server-start", evidence=tuple(tail),
                                  remediation=f"see {out / 'logs'}", details=details))
    (out / "profile.json").write_text(json.dumps(details, indent=2, sort_keys=True, default=str) + "\n")
    ok = all(ph["passed"] for ph in details["phases"].values())
    ev = tuple(f"{ph}: {d['verdict'][:300]}" for ph, d in details["phases"].items())
    return store.write(t.done("pass" if ok else "fail", category="" if ok else "slo", evidence=ev,
                                    versions={"engine": pl.caps.label, "image": pl.image, "router": nginx.ROUTER_TAG},
                                    artifacts={"profile": str(out / "profile.json"), "nginx_conf": str(conf)},
                                    details=details))


def _read_records(path: Path):
    from smoke.records import read
    return read(path)


def run_sweep(names: list[str] | None, opts: SweepOptions, results: Path, run: str, notes_dir: Path,
              progress: bool = True, say=print, report_only: bool = False) -> Path:
    """Plan, check, run every profile, write the report. report_only: rewrite the report from the
    outcomes stored by an earlier run with the same options (starts no pool)."""
    from containers.engine import client as docker_client
    from smoke.sweep import report
    client = docker_client(timeout=3600)
    work = results / run / "sweep-work"
    work.mkdir(parents=True, exist_ok=True)
    pl = plan(names, opts, client, work)       # stops here, before any container, on a bad knob
    store = ResultsStore(results, run)
    machine_file = store.path / "sweep-machine.json"
    if report_only:
        outs = [store.get(f"profile-{p.name}", "sweep") for p in pl.profiles]
        if not machine_file.is_file() or None in outs:
            raise UsageError(f"{store.path}: no stored sweep for these profiles; run `invoke sweep` without --report-only")
        return report.write(notes_dir, pl, opts, outs, json.loads(machine_file.read_text()), store)
    nginx.ensure_image(client, work / "router-image.log")
    for p in pl.profiles:                      # the real nginx -t on every config before the first pool
        ok, log = nginx.config_test(client, nginx.render(p, pl.placements[p.name]),
                                    [nginx.replica_host(x.pool, x.index) for x in pl.placements[p.name]],
                                    work / "nginx-t" / p.name)
        if not ok:
            raise UsageError(f"{p.source}: rendered nginx config fails nginx -t: {log.strip().splitlines()[-1]}")
    for name, trace in pl.traces.items():
        workload.write(trace, store.path / "sweep-traces" / f"{name}.jsonl")
    machine = report.describe_machine(client)
    machine_file.write_text(json.dumps(machine, indent=1))
    outcomes = []
    for p in pl.profiles:
        outcomes.append(run_profile(p, pl, opts, store, client, work, progress, say))
    return report.write(notes_dir, pl, opts, outcomes, machine, store)
