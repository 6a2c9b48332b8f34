"""The oracle as a smoke stage: every named + randomized case against the kvx extension that the
build stage compiled, run inside the cell's own images.

Where the runtime image exists the oracle runs there, on the extension it installed. Where vLLM did
not build (bookworm's GCC gate) the extension still did: the oracle then runs in the toolchain image
on the wheel the build stage wrote, with numpy and ml_dtypes installed from pip first.
The repo's kvlab package (pure Python + numpy/ml_dtypes) is mounted read-only.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from model.results import ResultsStore, StageOutcome
from model.stage import Timed

ROOT = Path(__file__).resolve().parent.parent
RANDOM_CASES = 200

SCRIPT = f"""
import json, sys
sys.path.insert(0, "/deploylab-src")
from kvlab import ext, oracle as orc, scenario
kvx = ext.load(None)
named = scenario.named_cases()
results = orc.run(named + scenario.random_cases({RANDOM_CASES}), ext.cpu_backend, "ext")
print(orc.table(results, {{x.name for x in named}}))
failed = [r for r in results if not r.ok]
print("ORACLE-SUMMARY " + json.dumps({{"checks": len(results), "failed": len(failed), "named": len(named),
      "random": {RANDOM_CASES}, "first_failures": [f"{{r.case}} / {{r.layout}}" for r in failed[:5]],
      "kvx": getattr(kvx, "__file__", "")}}))
"""

# In the toolchain image: a throwaway venv with the cell's wheel (no vLLM there to share one with).
TOOLCHAIN_PREP = """set -e
python -m venv /tmp/oracle-venv
/tmp/oracle-venv/bin/pip install -q --cache-dir /cache/pip --no-deps /wheels/kvlab_kvx-*.whl
/tmp/oracle-venv/bin/pip install -q --cache-dir /cache/pip numpy ml_dtypes
exec /tmp/oracle-venv/bin/python -c "$ORACLE_SCRIPT"
"""


def run_oracle_stage(cell, image: str, store: ResultsStore, client, wheels: Path | None = None,
                     pip_cache: Path | None = None) -> StageOutcome:
    """`wheels` set: run in `image` (a toolchain image) on the wheel in that folder; else on `image`'s own."""
    t0, started = time.monotonic(), time.time()
    out_dir = store.artifact_dir(cell.id, "oracle")
    vols = {str(ROOT / "kvlab"): {"bind": "/deploylab-src/kvlab", "mode": "ro"},
            str(ROOT / "matrix"): {"bind": "/deploylab-src/matrix", "mode": "ro"}}
    if wheels is None:
        cmd, env, net = ["python", "-c", SCRIPT], {}, "none"
    else:
        vols[str(wheels)] = {"bind": "/wheels", "mode": "ro"}
        if pip_cache is not None:
            vols[str(pip_cache)] = {"bind": "/cache/pip", "mode": "rw"}
        cmd, env, net = ["bash", "-c", TOOLCHAIN_PREP], {"ORACLE_SCRIPT": SCRIPT}, "bridge"
    container = client.containers.run(image, cmd, detach=True, network_mode=net, environment=env,
                                      labels={"org.deploylab.role": "oracle"}, volumes=vols)
    try:
        code = container.wait(timeout=1800).get("StatusCode", -1)
        log = container.logs().decode(errors="replace")
    finally:
        container.remove(force=True)
    (out_dir / "oracle.log").write_text(log)
    summary = next((json.loads(line.split(" ", 1)[1]) for line in reversed(log.splitlines())
                    if line.startswith("ORACLE-SUMMARY ")), None)
    arts = {"log": str(out_dir / "oracle.log")}
    where = "the runtime image" if wheels is None else "the toolchain image (no runtime image: vLLM did not build)"
    if summary is None or code != 0:
        tail = [ln for ln in log.splitlines() if ln.strip()][-5:]
        return StageOutcome(cell.id, "oracle", "fail", category="oracle-crashed", evidence=tuple(tail),
                            remediation=f"the oracle did not finish in {where}: see oracle.log",
                            started=started, seconds=time.monotonic() - t0, artifacts=arts)
    ok = summary["failed"] == 0
    ev = (f"{summary['checks'] - summary['failed']}/{summary['checks']} case×layout checks pass "
          f"({summary['named']} named + {summary['random']} randomized cases) on the cell's kvx extension, in {where}",
          *summary["first_failures"])
    return StageOutcome(cell.id, "oracle", "pass" if ok else "fail", category="" if ok else "oracle-mismatch",
                        evidence=ev, started=started, seconds=time.monotonic() - t0, artifacts=arts,
                        details={**summary, "image": image})


def run(ctx, cell) -> StageOutcome:
    """The oracle stage: in the runtime image where it exists, else in the toolchain image on the wheel
    the build stage wrote (vLLM gated, kvx built), else skipped naming why."""
    rt = ctx.store.get(cell.id, "runtime")
    if rt is not None and rt.status == "pass":
        return run_oracle_stage(cell=cell, image=cell.runtime_tag, store=ctx.store, client=ctx.client)
    build = ctx.store.get(cell.id, "build")
    kv = (build.details if build else {}).get("kvlab") or {}
    if kv.get("status") != "pass":
        return Timed(cell, "oracle").done(
            "skipped", category="upstream-kvlab",
            evidence=(f"build: the kvx extension {kv.get('status', 'was not built')}"
                      + (f" ({kv['category']})" if kv.get("category") else ""), *kv.get("evidence", [])[:2]))
    return run_oracle_stage(cell=cell, image=cell.toolchain_tag, store=ctx.store, client=ctx.client,
                            wheels=ctx.cell_dir(cell) / "wheels", pip_cache=ctx.cache / "pip")
