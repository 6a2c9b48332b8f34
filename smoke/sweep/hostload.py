"""What else the host did during a capacity run: its load average and the CPU time outside our stack.

A Sample is taken at a run's start and end: the 1-min load average, the host's busy CPU time from
/proc/stat (every state but idle and iowait), the CPU time of our own containers (pools and router,
from their cgroup's cpuacct.usage, else Docker's stats API), of the Docker helpers serving them
(userland port proxies, shims: helper_pids) and of this process (the replay client).
`usage(a, b)` turns two samples into what capacity.Run records: the load at both ends and the share
of the host's CPU capacity that went to work that was not ours (other agents, builds, dockerd).
`throttle` reads a container's CFS bandwidth counters, so each run also records how often its lanes'
quotas throttled them (the instrument of the lanes themselves).
No Docker in this module except the stats fallback; parsing is tested on real /proc text.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

PROC_STAT = Path("/proc/stat")
CGROUP_CPUACCT = (Path("/sys/fs/cgroup/cpuacct/docker"),                     # cgroup v1, cgroupfs driver
                  Path("/sys/fs/cgroup/cpu,cpuacct/docker"))
CGROUP_V2 = (Path("/sys/fs/cgroup/system.slice"), Path("/sys/fs/cgroup/docker"))
_IDLE = (3, 4)   # idle, iowait: the columns after "cpu" that are not busy time


def busy_seconds(stat_text: str) -> float:
    """Host busy CPU seconds since boot from /proc/stat's aggregate "cpu" line (guest time is already
    inside user/nice, so the guest columns are left out)."""
    for line in stat_text.splitlines():
        if line.startswith("cpu "):
            ticks = [int(x) for x in line.split()[1:9]]   # user nice system idle iowait irq softirq steal
            return sum(t for k, t in enumerate(ticks) if k not in _IDLE) / os.sysconf("SC_CLK_TCK")
    raise ValueError("/proc/stat: no aggregate cpu line")


def container_cpu_seconds(container_id: str, stats: Callable[[str], dict] | None = None) -> float:
    """CPU seconds a container has used: its cgroup's counter, else Docker's stats (one shot)."""
    for root in CGROUP_CPUACCT:
        f = root / container_id / "cpuacct.usage"
        if f.is_file():
            return int(f.read_text()) / 1e9
    for root in CGROUP_V2:
        for f in (root / f"docker-{container_id}.scope" / "cpu.stat", root / container_id / "cpu.stat"):
            if f.is_file():
                usage = dict(line.split() for line in f.read_text().splitlines() if line.strip())
                return int(usage["usage_usec"]) / 1e6
    if stats is None:
        return 0.0
    return int(stats(container_id)["cpu_stats"]["cpu_usage"]["total_usage"]) / 1e9


CGROUP_CPU = (Path("/sys/fs/cgroup/cpu/docker"), Path("/sys/fs/cgroup/cpu,cpuacct/docker"))   # cgroup v1


@dataclass(frozen=True)
class Throttle:
    """A container's CFS bandwidth counters (cpu.stat): periods with a quota, periods it was throttled
    in, and the time it spent throttled."""
    periods: int
    throttled: int
    throttled_s: float

    def __sub__(self, other: Throttle) -> Throttle:
        return Throttle(self.periods - other.periods, self.throttled - other.throttled,
                        self.throttled_s - other.throttled_s)

    @property
    def share(self) -> float:
        return self.throttled / self.periods if self.periods else 0.0


def parse_cpu_stat(text: str) -> Throttle:
    """cpu.stat of cgroup v1 (throttled_time, ns) or v2 (throttled_usec)."""
    d = {k: int(v) for k, v in (line.split() for line in text.splitlines() if line.strip())}
    t = d["throttled_time"] / 1e9 if "throttled_time" in d else d.get("throttled_usec", 0) / 1e6
    return Throttle(d.get("nr_periods", 0), d.get("nr_throttled", 0), t)


def throttle(container_id: str) -> Throttle | None:
    """The container's counters, None where no cgroup file is readable (then nothing is recorded)."""
    for f in (*(root / container_id / "cpu.stat" for root in CGROUP_CPU),
              *(root / f"docker-{container_id}.scope" / "cpu.stat" for root in CGROUP_V2),
              *(root / container_id / "cpu.stat" for root in CGROUP_V2)):
        if f.is_file():
            return parse_cpu_stat(f.read_text())
    return None


def helper_pids(container_ids: Iterable[str], host_ports: Iterable[int], proc: Path = Path("/proc")) -> list[int]:
    """Host processes that work for our containers: Docker's userland proxy of each published port
    (every byte the client and the scrapes exchange passes through it) and each container's shim."""
    ids, ports = set(container_ids), {str(p) for p in host_ports}
    out = []
    for d in proc.iterdir():
        if not d.name.isdigit():
            continue
        try:
            args = (d / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:          # gone meanwhile, or not ours to read
            continue
        flag = dict(zip(args, args[1:]))
        if (args[0].endswith("docker-proxy") and flag.get("-host-port") in ports) or \
                ("containerd-shim" in args[0] and flag.get("-id") in ids):
            out.append(int(d.name))
    return out


def pid_cpu_seconds(pid: int, proc: Path = Path("/proc")) -> float:
    """utime + stime of a process (0 once it is gone)."""
    try:
        fields = (proc / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")   # fields 14, 15 of stat(5)


def docker_stats(client) -> Callable[[str], dict]:
    return lambda cid: client.api.stats(cid, stream=False, one_shot=True)


@dataclass(frozen=True)
class Sample:
    t: float                 # monotonic seconds
    load1: float
    host_busy_s: float
    ours_s: float            # our containers + this process


def sample(container_ids: Iterable[str], stats: Callable[[str], dict] | None = None, pids: Iterable[int] = ()) -> Sample:
    cpu = os.times()
    ours = (cpu.user + cpu.system + sum(container_cpu_seconds(c, stats) for c in container_ids)
            + sum(pid_cpu_seconds(p) for p in pids))
    return Sample(time.monotonic(), os.getloadavg()[0], busy_seconds(PROC_STAT.read_text()), ours)


@dataclass(frozen=True)
class Usage:
    load1: tuple[float, float]
    cores: int
    foreign_cpu_share: float     # (host busy - ours) / (cores x wall), floored at 0
    ours_cpu_share: float
    wall_s: float


def usage(a: Sample, b: Sample, cores: int | None = None) -> Usage:
    cores = cores or os.cpu_count() or 1
    wall = max(b.t - a.t, 1e-9)
    host, ours = b.host_busy_s - a.host_busy_s, b.ours_s - a.ours_s
    return Usage((round(a.load1, 2), round(b.load1, 2)), cores, max(0.0, host - ours) / (cores * wall),
                 ours / (cores * wall), wall)


def cpu_model(cpuinfo_text: str) -> str:
    """/proc/cpuinfo's first "model name" ("" when there is none, as on some ARM kernels)."""
    return next((ln.split(":", 1)[1].strip() for ln in cpuinfo_text.splitlines() if ln.startswith("model name")), "")


def memory_gib(meminfo_text: str) -> float | None:
    """MemTotal from /proc/meminfo in GiB."""
    kb = next((ln.split()[1] for ln in meminfo_text.splitlines() if ln.startswith("MemTotal:")), None)
    return int(kb) / 2**20 if kb else None


def proc_text(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def describe_host() -> str:
    """The host a capacity run measured on: CPU model, usable cores, memory. SLO bounds and capacities are
    that host's (a long prefill took 2.7x as long on one 2-core VM as on another), so a plan records it and an
    earlier run's calibration is reused only on the same host."""
    mem = memory_gib(proc_text("/proc/meminfo"))
    parts = [cpu_model(proc_text("/proc/cpuinfo")) or "unknown CPU", f"{len(os.sched_getaffinity(0))} cores",
             f"{mem:.1f} GiB" if mem else ""]
    return ", ".join(p for p in parts if p)
