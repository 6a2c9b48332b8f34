"""Preflight: predict, in seconds, where a cell's build would stop. The gates an engine's source tree
declares (images.gates) are evaluated against the toolchain probe of the cell's container
(images.toolchain.probe, plus images.probe's reachability); what a failing gate means and whether
it can be worked around lives in gates.toml. Reads files and a probe record, never Docker.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.markers import InvalidMarker, Marker
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from images.cmake import REF, evaluate_condition, show, version_operands
from images.gates import Gate, GatesConfig, Remedy, gates_from_tree, load_config, resource_gates
from model.details import GateRecord, PreflightDetails
from model.errors import UsageError
from model.results import StageOutcome
from model.stage import Timed

STATUSES = ("pass", "fail", "warn", "skip")


@dataclass(frozen=True)
class GateResult:
    gate: Gate
    status: str  # pass | fail | warn (cannot be decided from the probe) | skip (not reached)
    found: str
    fixable: bool
    category: str
    remediation: str
    evidence: str

    def record(self) -> GateRecord:
        g = self.gate
        return GateRecord(id=g.id, kind=g.kind, subject=g.subject, need=g.need, found=self.found, status=self.status,
                          fixable=self.fixable, category=self.category, source=g.source, message=g.message,
                          when=[show(c) for c in g.when], override=g.override, remediation=self.remediation,
                          evidence=self.evidence)


# --- evaluation -----------------------------------------------------------------------------

def facts_for(cell: Any, probe: Mapping[str, Any], config: GatesConfig) -> dict[str, Any]:
    facts: dict[str, Any] = dict(config.facts.model_extra or {})
    arch = str(probe.get("arch") or "x86_64")  # the probe has no arch key yet: this lab is x86_64
    facts.update(config.facts.arch.get(arch, {"CMAKE_SYSTEM_PROCESSOR": arch}))
    facts.update(config.facts.target.get(getattr(cell, "target", "cpu"), {}))
    return facts


def _remedy(gate: Gate, cell: Any, config: GatesConfig) -> Remedy:
    cid = getattr(cell, "id", "")
    for r in config.remedy:
        if r.kind != gate.kind:
            continue
        if r.subject is not None and not fnmatch.fnmatchcase(gate.subject, r.subject):
            continue
        if r.cells is not None and not any(fnmatch.fnmatchcase(cid, p) for p in r.cells):
            continue
        return r
    return Remedy.model_construct(kind=gate.kind, fixable=False, category="",
                                  remediation=f"no remedy in gates.toml for a {gate.kind} gate")


class _Blank(dict):
    def __missing__(self, key: str) -> str:
        return f"<{key}>"


def _short(need: str) -> str:
    return need[2:] if need.startswith(">=") and "," not in need else need


def _check(gate: Gate, probe: Mapping[str, Any], cell: Any, facts: Mapping[str, Any]) -> tuple[str, str, str]:
    """(status, found, why) of one gate that is reached."""
    reachable = probe.get("reachable") or {}
    if gate.kind in ("cmake", "compiler", "pin"):
        if gate.subject not in probe:
            return "warn", "", f"{gate.subject} not probed"  # e.g. a declared probe with no image
        found = str(probe.get(gate.subject) or "")
        if not found:
            return "fail", "", f"{gate.label} not found"
        if gate.fires is not None:
            fired = evaluate_condition(gate.fires, {**facts, **{v: found for v in version_operands(gate.fires)}})
            if fired is None:
                return "warn", found, "guard cannot be decided from the probe"
            return ("fail" if fired else "pass"), found, f"{found} {'<' if fired else '>='} {_short(gate.need)}"
        if not gate.need:
            return "pass", found, "present"
        ok = _satisfies(found, gate.need)
        if not ok and _short(gate.need) != gate.need:
            return "fail", found, f"{found} < {_short(gate.need)}"
        return ("pass" if ok else "fail"), found, f"{found} {'satisfies' if ok else 'does not satisfy'} {gate.need}"
    if gate.kind == "python":
        if "python" not in probe:
            return "warn", "", "python not probed"
        found = str(probe.get("python") or "")
        if not found:
            return "fail", "", "python3 not found"
        if re.fullmatch(r"[\d. ]+", gate.need):  # a list of supported X.Y versions
            xy = ".".join(found.split(".")[:2])
            ok = xy in gate.need.split()
            return ("pass" if ok else "fail"), found, f"{xy} {'in' if ok else 'not in'} {gate.need}"
        ok = _satisfies(found, gate.need)
        return ("pass" if ok else "fail"), found, f"{found} {'in' if ok else 'not in'} {gate.need}"
    if gate.kind in ("fetch", "torch"):
        host = gate.host
        ok = reachable.get(host)
        if ok is None:
            return "warn", "", f"needs {host}; reachability not probed"
        return ("pass" if ok else "fail"), ("reachable" if ok else "unreachable"), f"{host} {'reachable' if ok else 'unreachable'}"
    if gate.kind in ("disk", "memory"):
        key = "disk_free_gb" if gate.kind == "disk" else "mem_gib"
        val = probe.get(key)
        if val in (None, ""):
            return "warn", "", f"{key} not probed"
        ok = float(val) >= float(gate.need)
        return ("pass" if ok else "fail"), f"{float(val):g}", f"{float(val):g} {'>=' if ok else '<'} {gate.need}"
    return "warn", "", f"unknown gate kind {gate.kind}"


def _marker_holds(marker: str, probe: Mapping[str, Any], facts: Mapping[str, Any]) -> bool:
    py = str(probe.get("python") or "3")
    env = {"platform_machine": str(facts.get("CMAKE_SYSTEM_PROCESSOR", "x86_64")), "platform_system": "Linux",
           "sys_platform": "linux", "os_name": "posix", "python_full_version": py,
           "python_version": ".".join(py.split(".")[:2]), "implementation_name": "cpython",
           "platform_python_implementation": "CPython", "implementation_version": py}
    try:
        return Marker(marker).evaluate(env)
    except InvalidMarker:
        return True


def _satisfies(found: str, need: str) -> bool:
    try:
        return SpecifierSet(need).contains(Version(found), prereleases=True)
    except (InvalidSpecifier, InvalidVersion):
        return False


def evaluate(gates: list[Gate], probe: Mapping[str, Any], cell: Any,
             config: GatesConfig | None = None) -> list[GateResult]:
    cfg = config if config is not None else load_config()
    facts = facts_for(cell, probe, cfg)
    suite = getattr(getattr(cell, "distro", None), "suite", "")
    results = []
    for gate in gates:
        reached = all(evaluate_condition(c, facts) is not False for c in gate.when)
        if reached and gate.marker:
            reached = _marker_holds(gate.marker, probe, facts)
        if reached and gate.fires is not None:
            # a guard that is false whatever the version (e.g. a CUDA-only GCC gate on a CPU cell)
            reached = evaluate_condition(gate.fires, facts) is not False
        if not reached:
            results.append(GateResult(gate, "skip", "", True, "", "", ""))
            continue
        status, found, why = _check(gate, probe, cell, facts)
        rem = _remedy(gate, cell, cfg)
        fixable = rem.fixable
        if gate.kind == "fetch" and not gate.override:
            fixable = False  # nothing in the tree lets us point it at a local copy
        values = _Blank(need=_short(gate.need), spec=gate.need, found=found or "none", subject=gate.subject, label=gate.label,
                        override=gate.override, url=gate.need if gate.kind == "fetch" else gate.index,
                        host=gate.host, suite=suite or "the distro's")
        remediation = rem.remediation.format_map(values) if status != "pass" else ""
        evidence = ""
        if status in ("fail", "warn"):
            message = REF.sub(lambda m: found if m.group(2) in cfg.variables and found else m.group(0), gate.message)
            evidence = f"{gate.label} {why} ({gate.source}: {message})"
        results.append(GateResult(gate, status, found, fixable, rem.category, remediation, evidence))
    return results


def cuda_gates(cell: Any, src: Path, probe: Mapping[str, Any]) -> list[GateResult]:
    """CUDA cells: the image's nvcc against the CUDA that the pinned torch from PyPI was built for
    (read from the wheel's METADATA over the network). Kernels built with one CUDA major and
    loaded beside a torch of another fail; the image records its toolkit for exactly this check."""
    req = Path(src) / "requirements" / "build" / "cuda.txt"
    if getattr(cell, "target", "") != "cuda" or not req.is_file():
        return []
    pin = next(((n, m.group(1)) for n, line in enumerate(req.read_text().splitlines(), 1)
                if (m := re.match(r"\s*torch\s*==\s*([0-9][\w.]*)\s*(;|$)", line))), None)
    if pin is None:
        return []
    from images.sources import torch_cuda_of
    line, version = pin
    nvcc = str(probe.get("nvcc") or "")
    python = str(probe.get("python") or getattr(getattr(cell, "distro", None), "python", ""))
    try:
        torch_cuda = torch_cuda_of(version, python)
    except UsageError as exc:
        torch_cuda, lookup_error = "", str(exc)
    else:
        lookup_error = ""
    gate = Gate("cuda", "nvcc", f"{torch_cuda or '?'}.x", f"torch=={version} from PyPI is built for CUDA "
                f"{torch_cuda or '?'}", f"requirements/build/cuda.txt:{line}", label="nvcc")
    major = lambda v: v.split(".")[0]  # noqa: E731
    if lookup_error:
        status, why = "warn", lookup_error
    elif not nvcc and probe.get("declared"):
        status, why = "warn", "not probed (no image)"
    elif not nvcc:
        status, why = "fail", "no nvcc in the image"
    elif not torch_cuda:
        status, why = "pass", f"torch=={version} is a CPU-only wheel"
    elif major(nvcc) != major(torch_cuda):
        status, why = "fail", f"{nvcc} vs torch's CUDA {torch_cuda}: different CUDA majors"
    else:
        status, why = ("pass" if nvcc.split(".")[:2] == torch_cuda.split(".")[:2] else "warn"), f"{nvcc} vs {torch_cuda}"
    remediation = "" if status == "pass" else (
        f"a CUDA {torch_cuda} toolkit (NVIDIA's repository or image: knobs.cuda = \"nvidia-repo\" and "
        f"knobs.cuda_version = \"{torch_cuda}.x\", where reachable) or a torch built for CUDA {major(nvcc) if nvcc else '?'}")
    evidence = "" if status == "pass" else f"nvcc {why} ({gate.source}: {gate.message})"
    return [GateResult(gate, status, nvcc, False, "cuda-version-mismatch", remediation, evidence)]


def preflight(cell: Any, src: Path, probe: Mapping[str, Any], config: GatesConfig | None = None) -> StageOutcome:
    """Predict the build's outcome for one cell: "gated" when a gate with no workaround fails."""
    t = Timed(getattr(cell, "id", str(cell)), "preflight")
    cfg = config if config is not None else load_config()
    gates = [*resource_gates(cell), *gates_from_tree(Path(src), cfg)]
    results = [*evaluate(gates, probe, cell, cfg), *cuda_gates(cell, Path(src), probe)]
    failing = [r for r in results if r.status == "fail"]
    dead = [r for r in failing if not r.fixable]
    status = "gated" if dead else "pass"
    category = dead[0].category if dead else ""
    remediation = " | ".join(dict.fromkeys(r.remediation for r in failing if r.remediation))
    versions = {k: str(v) for k, v in probe.items() if k != "reachable"}
    counts = {s: sum(r.status == s for r in results) for s in STATUSES}
    return t.done(
        status, category=category, evidence=tuple(r.evidence for r in failing), remediation=remediation,
        versions=versions,
        details=PreflightDetails(source=str(src), gates=[r.record() for r in results], counts=counts,
                                 first_dead_end=dead[0].gate.id if dead else "",
                                 warnings=[r.evidence for r in results if r.status == "warn"]).to_json(),
    )

