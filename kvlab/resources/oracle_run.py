"""Container-side: every named + N randomized oracle case against the kvx extension importable here.

    python oracle_run.py N_RANDOM        (kvlab/ mounted at /deploylab-src/kvlab, read-only)
The last line is `ORACLE-SUMMARY {json}`, which kvlab/stage.py reads.
"""
import json
import sys

sys.path.insert(0, "/deploylab-src")
from kvlab import ext, oracle as orc, scenario  # noqa: E402

n_random = int(sys.argv[1])
kvx = ext.load(None)
named = scenario.named_cases()
results = orc.run(named + scenario.random_cases(n_random), ext.cpu_backend, "ext")
print(orc.table(results, {x.name for x in named}))
failed = [r for r in results if not r.ok]
print("ORACLE-SUMMARY " + json.dumps({"checks": len(results), "failed": len(failed), "named": len(named),
      "random": n_random, "first_failures": [f"{r.case} / {r.layout}" for r in failed[:5]],
      "kvx": getattr(kvx, "__file__", "")}))
