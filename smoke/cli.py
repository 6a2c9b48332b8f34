"""What the smoke tasks of tasks.py call: one function per task, printing what a user reads."""

from __future__ import annotations

from pathlib import Path

from model.errors import UsageError


def workload(mix: str, seed: int, out: str) -> Path:
    from smoke import mix as mixmod, workload as wl
    m = mixmod.load(mix)
    trace = wl.generate(m, seed)
    path = wl.write(trace, Path(out))
    counts = ", ".join(f"{k} {v}" for k, v in trace.header["classes"].items())
    print(f"{path}: {len(trace.requests)} requests from {m.name} (seed {seed}; sessions: {counts})")
    return path


def smoke(cell: str, url: str, image: str, mix: str, seed: int, duration: float, rate: float, trace: str,
          run: str, spec: str | None, results: Path, api_key_env: str = "") -> int:
    from model.results import ResultsStore
    from smoke.stage import run_smoke
    if bool(cell) == bool(url):
        raise UsageError("smoke: give exactly one of --cell ID or --url URL")
    if url and not url.startswith(("http://", "https://")):
        raise UsageError(f"--url: expected an http:// or https:// URL, got {url!r}")
    target: object = url
    if cell:
        from model import spec as specmod
        target = specmod.load(spec).get(cell)
    store = ResultsStore(results, run)
    o = run_smoke(target, store, image=image or None, mix=mix, seed=seed, duration_s=duration or None,
                  rate_rps=rate or None, trace_path=Path(trace) if trace else None, progress=True,
                  api_key_env=api_key_env)
    print(f"smoke {o.cell}: {o.status} ({o.seconds:.0f} s)")
    for line in o.evidence:
        print("  " + line)
    for k, v in o.artifacts.items():
        print(f"  {k}: {v}")
    return 0 if o.status == "pass" else 1


def conform(engine: str, url: str, cell: str, api_key_env: str, model: str, extensions: list[str], run: str,
            results: Path) -> int:
    """The contract check by check, one line each; 0 when every required check passed."""
    from model.results import ResultsStore
    from smoke.conform_run import conform_engine, conform_url
    if bool(engine) == bool(url):
        raise UsageError("conform: give exactly one of --engine NAME or --url URL")
    if engine and (api_key_env or model or extensions):
        raise UsageError("conform --engine: --api-key-env, --model and --extension apply to --url only")
    store = ResultsStore(results, run)

    def show(r) -> None:
        print(r.line(), flush=True)
    if engine:
        o = conform_engine(engine, store, cell=cell, on_result=show)
    else:
        o = conform_url(url, store, api_key_env=api_key_env, model=model, extensions=tuple(extensions), on_result=show)
    if o.status == "engine-unavailable":  # never a pass: nothing was checked, and why
        print(f"conform {o.cell}: engine-unavailable: {o.evidence[0]}")
        return 2
    if o.status != "pass" and o.category != "contract":  # the check lines are already printed
        for line in o.evidence:
            print("  " + line)
    print(f"conform {o.cell}: {o.status} ({o.seconds:.0f} s)" + (f": {o.remediation}" if o.remediation else ""))
    return 0 if o.status == "pass" else 1
