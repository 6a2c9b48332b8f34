"""The oracle as a smoke stage: every named + randomized case against the kvx extension that the
build stage compiled, run inside the cell's own images.

Where the runtime image exists the oracle runs there, on the extension it installed. Where vLLM did
not build (bookworm's GCC gate) the extension still did: the oracle then runs in the toolchain image
on the wheel the build stage wrote, with numpy and ml_dtypes installed from pip first.
Mounted read-only: the container-side scripts (kvlab/resources/) and the kvlab package (pure Python +
numpy/ml_dtypes), nothing else of the repository.
"""

from __future__ import annotations

import json
from pathlib import Path

from containers.run import SCRIPTS, run_once, script_mount
from kvlab import inputs
from model.details import BuildDetails, OracleDetails
from model.results import ResultsStore, StageOutcome
from model.stage import Timed

ROOT = Path(__file__).resolve().parent.parent
RANDOM_CASES = 200
RESOURCES = Path(__file__).resolve().parent / "resources"
ORACLE = RESOURCES / "oracle_run.py"
TOOLCHAIN_PREP = RESOURCES / "oracle_toolchain.sh"   # a throwaway venv with the cell's wheel, then ORACLE


def run_oracle_stage(cell, image: str, store: ResultsStore, client, wheels: Path | None = None,
                     pip_cache: Path | None = None) -> StageOutcome:
    """`wheels` set: run in `image` (a toolchain image) on the wheel in that folder; else on `image`'s own."""
    t = Timed(cell, "oracle")
    inputs.check()  # a typo in cases.toml or tolerances.toml: one line here, not a traceback in the container
    out_dir = store.artifact_dir(cell.id, "oracle")
    ro = {"/deploylab-src/kvlab": ROOT / "kvlab", **script_mount(ORACLE)}
    rw = {}
    if wheels is None:
        cmd, net = ["python", f"{SCRIPTS}/{ORACLE.name}", str(RANDOM_CASES)], "none"
    else:
        ro.update({"/wheels": wheels, **script_mount(TOOLCHAIN_PREP)})
        if pip_cache is not None:
            rw["/cache/pip"] = pip_cache
        cmd, net = ["bash", f"{SCRIPTS}/{TOOLCHAIN_PREP.name}", str(RANDOM_CASES)], "bridge"
    ran = run_once(client, image, cmd, role="oracle", ro=ro, rw=rw, network=net, timeout_s=1800)
    code, log = ran.exit_code, ran.log
    (out_dir / "oracle.log").write_text(log)
    summary = next((json.loads(line.split(" ", 1)[1]) for line in reversed(log.splitlines())
                    if line.startswith("ORACLE-SUMMARY ")), None)
    arts = {"log": str(out_dir / "oracle.log")}
    where = "the runtime image" if wheels is None else "the toolchain image (no runtime image: vLLM did not build)"
    if summary is None or code != 0:
        tail = [ln for ln in log.splitlines() if ln.strip()][-5:]
        return t.done("fail", category="oracle-crashed", evidence=tuple(tail),
                      remediation=f"the oracle did not finish in {where}: see oracle.log", artifacts=arts)
    s = OracleDetails(**summary, image=image)
    ok = s.failed == 0
    ev = (f"{s.checks - s.failed}/{s.checks} case×layout checks pass "
          f"({s.named} named + {s.random} randomized cases) on the cell's kvx extension, in {where}",
          *s.first_failures)
    return t.done("pass" if ok else "fail", category="" if ok else "oracle-mismatch", evidence=ev,
                  artifacts=arts, details=s.to_json())


def run(ctx, cell) -> StageOutcome:
    """The oracle stage: in the runtime image where it exists, else in the toolchain image on the wheel
    the build stage wrote (vLLM gated, kvx built), else skipped naming why."""
    rt = ctx.store.get(cell.id, "runtime")
    if rt is not None and rt.status == "pass":
        return run_oracle_stage(cell=cell, image=cell.runtime_tag, store=ctx.store, client=ctx.client)
    build = ctx.store.get(cell.id, "build")
    kv = BuildDetails.from_outcome(build).kvlab if build else None
    if kv is None or kv.status != "pass":
        return Timed(cell, "oracle").done(
            "skipped", category="upstream-kvlab",
            evidence=(f"build: the kvx extension {kv.status if kv else 'was not built'}"
                      + (f" ({kv.category})" if kv and kv.category else ""), *(kv.evidence[:2] if kv else ())))
    return run_oracle_stage(cell=cell, image=cell.toolchain_tag, store=ctx.store, client=ctx.client,
                            wheels=ctx.cell_dir(cell) / "wheels", pip_cache=ctx.cache / "pip")
