"""Lane sizing for the capacity experiment: every profile gets the same total engine CPU, split
between its pools by the measured demand of the classes routed to each (CFS quotas, not cores).

A class's demand is its expected requests per session (the mix) x its unloaded service time on one
CPU (the calibration: TTFT + (output tokens - 1) x TPOT). A throttled slow reader's cadence is the
client's, not the engine's, so its service time uses the median TPOT of the unthrottled classes.
Within a pool the replicas share equally. A pool never gets less than `floor` CPUs; quotas are
rounded to `step` and the rounding remainder goes to the largest pool, so the total is exact.
Each replica also gets OpenMP threads = its quota rounded up (at most the host's cores), bound to
cores in turn, so two lanes of under one CPU each do not spin on the same core.
No Docker, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import median

from model.errors import UsageError
from smoke.metrics import tpot_ms
from smoke.profiles import Profile
from smoke.records import RequestRecord


def service_seconds(records: Sequence[RequestRecord], warmup: int = 0) -> dict[str, float]:
    """Per class, the median unloaded service time (s) of sequential single requests after `warmup`
    of each class: TTFT + (output tokens - 1) x TPOT, slow readers at the unthrottled TPOT."""
    by: dict[str, list[RequestRecord]] = {}
    for r in sorted(records, key=lambda r: r.sent_s):
        if r.ok and r.ttft_s is not None:
            by.setdefault(r.cls, []).append(r)
    by = {c: rs[warmup:] or rs for c, rs in by.items()}
    fast = [t for rs in by.values() for r in rs if not r.read_bytes_per_s and (t := tpot_ms(r)) is not None]
    if not fast:
        raise UsageError("calibration: no request streamed 2+ tokens unthrottled: no TPOT to size lanes by")
    common = median(fast) / 1000
    out = {}
    for cls, rs in sorted(by.items()):
        per = []
        for r in rs:
            own = tpot_ms(r)
            tp = common if r.read_bytes_per_s or own is None else own / 1000
            per.append(r.ttft_s + max((r.output_tokens or 1) - 1, 0) * tp)
        out[cls] = median(per)
    return out


@dataclass(frozen=True)
class Lane:
    pool: str
    index: int
    host: str            # the replica's alias on the profile's network (smoke.router.nginx.replica_host)
    cpus: float          # CFS quota in CPUs
    threads: str         # cores its OpenMP threads bind to, e.g. "0" or "0-1"


def pool_demand(profile: Profile, per_session: Mapping[str, float], service_s: Mapping[str, float]) -> dict[str, float]:
    """CPU-seconds per arriving session each pool must serve."""
    if missing := sorted(set(per_session) - set(service_s)):
        raise UsageError(f"calibration: no service time for class {missing[0]!r} (needed to size {profile.name}'s lanes)")
    out = {p.name: 0.0 for p in profile.pools}
    for cls, n in per_session.items():
        out[profile.pool_for(cls)] += n * service_s[cls]
    return out


def size(profile: Profile, per_session: Mapping[str, float], service_s: Mapping[str, float], total_cpus: float,
         cores: Sequence[int], floor: float = 0.25, step: float = 0.05) -> tuple[Lane, ...]:
    """Quotas for every replica of the profile, summing to total_cpus."""
    from smoke.router.nginx import replica_host
    if total_cpus > len(cores):
        raise UsageError(f"--engine-cpus: {total_cpus:g} CPUs asked, the host has {len(cores)} cores")
    demand = pool_demand(profile, per_session, service_s)
    n = len(profile.pools)
    if floor * n > total_cpus:
        raise UsageError(f"--engine-cpus: {total_cpus:g} CPUs cannot give {n} pools {floor:g} each")
    total_demand = sum(demand.values()) or 1.0
    # Pools at the floor keep it; the rest share what is left by demand (repeat: a share may fall under it).
    fixed: dict[str, float] = {}
    while True:
        free = total_cpus - sum(fixed.values())
        rest = {p: d for p, d in demand.items() if p not in fixed}
        rd = sum(rest.values()) or total_demand
        share = {p: free * d / rd if rd else free / len(rest) for p, d in rest.items()}
        low = {p for p, s in share.items() if s < floor}
        if not low:
            break
        fixed.update(dict.fromkeys(low, floor))
    pools = {**fixed, **share}
    q = {p: max(floor, round(c / step) * step) for p, c in pools.items()}
    big = max(q, key=lambda p: (q[p], p))
    q[big] = round(q[big] + total_cpus - sum(q.values()), 6)
    lanes, k = [], 0
    for p in profile.pools:
        each = round(q[p.name] / p.replicas, 4)
        for i in range(p.replicas):
            lanes.append(Lane(p.name, i, replica_host(p.name, i), each, threads_for(each, cores, k)))
            k += thread_count(each, cores)
    return tuple(lanes)


def thread_count(cpus: float, cores: Sequence[int]) -> int:
    return min(len(cores), max(1, math.ceil(cpus - 1e-9)))


def threads_for(cpus: float, cores: Sequence[int], first: int = 0) -> str:
    """The cores a replica of `cpus` binds its OpenMP threads to: its quota rounded up, from cores[first] on."""
    return _ranges(sorted(cores[(first + j) % len(cores)] for j in range(thread_count(cpus, cores))))


def _ranges(cores: Sequence[int]) -> str:
    """[0, 1, 3] → "0-1,3" (the form VLLM_CPU_OMP_THREADS_BIND takes)."""
    out, start = [], None
    for i, c in enumerate(cores):
        if start is None:
            start = c
        if i + 1 == len(cores) or cores[i + 1] != c + 1:
            out.append(str(start) if start == c else f"{start}-{c}")
            start = None
    return ",".join(out)
