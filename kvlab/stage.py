"""The oracle as a smoke stage: every named + randomized case against the kvx extension that the
build stage compiled and the runtime image installed, run inside that image.

The repo's kvlab package (pure Python + numpy/ml_dtypes) is mounted read-only; the compiled
extension is the image's own, so this checks what the cell's toolchain produced.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from matrix.results import ResultsStore, StageOutcome

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


def run_oracle_stage(cell, image: str, store: ResultsStore, client) -> StageOutcome:
    t0, started = time.monotonic(), time.time()
    out_dir = store.artifact_dir(cell.id, "oracle")
    container = client.containers.run(
        image, ["python", "-c", SCRIPT], detach=True, network_mode="none", labels={"org.deploylab.role": "oracle"},
        volumes={str(ROOT / "kvlab"): {"bind": "/deploylab-src/kvlab", "mode": "ro"},
                 str(ROOT / "matrix"): {"bind": "/deploylab-src/matrix", "mode": "ro"}})
    try:
        code = container.wait(timeout=1800).get("StatusCode", -1)
        log = container.logs().decode(errors="replace")
    finally:
        container.remove(force=True)
    (out_dir / "oracle.log").write_text(log)
    summary = next((json.loads(line.split(" ", 1)[1]) for line in reversed(log.splitlines())
                    if line.startswith("ORACLE-SUMMARY ")), None)
    arts = {"log": str(out_dir / "oracle.log")}
    if summary is None or code != 0:
        tail = [ln for ln in log.splitlines() if ln.strip()][-5:]
        return StageOutcome(cell.id, "oracle", "fail", category="oracle-crashed", evidence=tuple(tail),
                            remediation="the oracle did not finish in the runtime image: see oracle.log",
                            started=started, seconds=time.monotonic() - t0, artifacts=arts)
    ok = summary["failed"] == 0
    ev = (f"{summary['checks'] - summary['failed']}/{summary['checks']} case×layout checks pass "
          f"({summary['named']} named + {summary['random']} randomized cases) on the image's kvx extension",
          *summary["first_failures"])
    return StageOutcome(cell.id, "oracle", "pass" if ok else "fail", category="" if ok else "oracle-mismatch",
                        evidence=ev, started=started, seconds=time.monotonic() - t0, artifacts=arts,
                        details=summary)
