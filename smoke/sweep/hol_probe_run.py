"""`invoke hol-probe`: the head-of-line probe (C4 of issue 16) on real replicas, from checks to report.

The checks and the setup are the capacity run's (capacity_run.prepare: the mix, the profiles, every
knob translated for the image, the test model); each run starts one replica of a profile's default
pool at the probe's CPUs (capacity_run.start_pools: quota, CFS period, thread binding, nginx in front)
and removes it after. Everything lands under RESULTS/RUN/hol; a rerun resumes there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from model import settings
from smoke.sweep import capacity as cap, capacity_report as rep, hol_probe as hp, hol_probe_report as report
from smoke.sweep.capacity_run import CapacityOptions, Setup, copy_raw, one_replica, prepare, start_pools
from smoke.sweep.capacity_runner import Store


def replica_cpus(rules: hp.ProbeRules, setup: Setup, engine_cpus: float) -> float:
    """probe.cpus, or "mean_lane" as capacity.toml's calibration replica has it."""
    c = rules.probe.cpus
    return cap.calibration_cpus(setup.rules, engine_cpus, setup.reference.replicas) if c == "mean_lane" else float(c)


def factory(setup: Setup, store: Store, opts: CapacityOptions, cpus: float):
    """(profile, run tag) → one started replica of the profile's default pool, its router in front."""
    @contextmanager
    def one(profile: str, tag: str) -> Iterator[object]:
        single, lane = one_replica(setup.profiles[profile], cpus, setup.cores)
        with start_pools(setup, single, lane, setup.args[profile], store.root / "logs" / tag, opts) as p:
            yield p
    return one


def run_probe(results: Path, run: str, notes_dir: Path, *, rules_name: str = "idle", model_size: str = "mid",
              image: str = "", engine_cpus: float = 1.5, report_only: bool = False,
              say: Callable[[str], None] = print) -> Path:
    repo = settings.ROOT
    path = hp.rules_file(rules_name)
    scored = hp.scored(path)
    commit = rep.score_commit(repo, scored)
    rep.check_pre_registered(repo, commit, scored)         # no run, and no report, on rules that moved
    rules = hp.load_rules(path)
    opts = CapacityOptions(profiles=tuple(rules.probe.profiles), image=image, model_size=model_size,
                           engine_cpus=engine_cpus)
    setup = prepare(opts)
    hp.probe_trace(setup.mix, rules, 1, path)             # its classes are the mix's: one line now, not after a start
    cpus = replica_cpus(rules, setup, engine_cpus)
    store = Store(results / run / "hol")
    plan = store.plan({
        "profiles": list(rules.probe.profiles), "mix_sha256": setup.mix.sha256, "engine_image": setup.image,
        "image_id": setup.client.images.get(setup.image).id, "engine": setup.engine,
        "model": f"{model_size} random-weight Llama ({setup.model_dir.name}, make_model.py)", "cpus": cpus,
        "cfs_period_us": setup.rules.lanes.cfs_period_us, "cores": ",".join(map(str, setup.cores)),
        "score_commit": commit, "rules": path.name,
        "args": {p: list(setup.args[p][setup.profiles[p].default_pool]) for p in rules.probe.profiles}})
    if not report_only:
        hp.Probe(rules, setup.rules, setup.mix, store, factory(setup, store, opts, cpus), say).run()
    entries = hp.read_entries(store)
    judged = hp.judge(entries, rules, setup.rules)
    md = report.write(report.build(judged, plan, entries), rules, entries, repo, notes_dir, scored)
    copy_raw(store.root, notes_dir / "data")
    return md
