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
          run: str, spec: str | None, results: Path) -> int:
    from model.results import ResultsStore
    from smoke.stage import run_smoke
    if bool(cell) == bool(url):
        raise UsageError("smoke: give exactly one of --cell ID or --url URL")
    if url and not url.startswith(("http://127.0.0.1", "http://localhost", "http://[::1]")):
        # Load stays on this machine: replaying a mix against someone else's server is not a smoke test.
        raise UsageError(f"--url: expected a loopback address (http://127.0.0.1:PORT), got {url!r}")
    target: object = url
    if cell:
        from model import spec as specmod
        target = specmod.load(spec).get(cell)
    store = ResultsStore(results, run)
    o = run_smoke(target, store, image=image or None, mix=mix, seed=seed, duration_s=duration or None,
                  rate_rps=rate or None, trace_path=Path(trace) if trace else None, progress=True)
    print(f"smoke {o.cell}: {o.status} ({o.seconds:.0f} s)")
    for line in o.evidence:
        print("  " + line)
    for k, v in o.artifacts.items():
        print(f"  {k}: {v}")
    return 0 if o.status == "pass" else 1
