"""A profile's pools for the capacity runner: replicas with CFS quotas (smoke.sweep.lanes), nginx in
front, and one measured replay at a time against them.

Replicas are the sweep's engine containers (smoke.server.engine_server) on a user-defined network,
each with its lane's quota over every host core and its OpenMP threads bound to the lane's cores;
everything is labelled (org.deploylab.role=sweep) and removed on the way out, whatever happened.
`Pools.replay` measures one run: each replica's /metrics before and after (the server's own TTFT
histogram), the host's load and foreign CPU around it (smoke.sweep.hostload), and nginx's access
log lines of the run, which name the replica behind every request id (replay's X-Request-Id).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from containers.run import SCRIPTS, script_mount
from smoke import replay
from smoke.profiles import Placement, Profile
from smoke.records import RequestRecord
from smoke.router import nginx
from smoke.sweep import hostload, scrape
from smoke.sweep.lanes import Lane
from smoke.sweep.pools import LABEL, ROLE, sweep_network
from smoke.workload import Trace

TTFT = "vllm:time_to_first_token_seconds"
# C7's "same image without the tcmalloc preload": a wrapper the serve command is passed to (a resource
# file, mounted alone).
NO_TCMALLOC_SCRIPT = Path(__file__).parents[1] / "resources" / "no_tcmalloc.sh"
NO_TCMALLOC = ("bash", f"{SCRIPTS}/{NO_TCMALLOC_SCRIPT.name}")


@dataclass(frozen=True)
class Measured:
    """One replay against a profile's pools, with what was measured around it."""
    records: list[RequestRecord]
    usage: hostload.Usage
    server_ttft_mean_ms: float            # the replicas' TTFT histograms, delta over the run (NaN: none)
    replica_of: dict[str, str]            # trace request id → replica host, from the router's log
    router_lines: list[str]
    throttle: dict[str, hostload.Throttle] = field(default_factory=dict)  # replica host → its CFS counters over the run (where readable)


def replica_map(lines: Sequence[str], ip_host: Mapping[str, str], prefix: str) -> dict[str, str]:
    """trace id → replica host from nginx's JSON access lines whose request_id carries `prefix`."""
    out = {}
    for line in lines:
        try:
            d = json.loads(line)
        except ValueError:
            continue
        rid, up = str(d.get("request_id") or ""), str(d.get("upstream") or "")
        if rid.startswith(prefix) and up:
            # A retried upstream lists several ("a:8000, b:8000"): the last one answered.
            ip = up.split(",")[-1].strip().rsplit(":", 1)[0]
            out[rid[len(prefix):]] = ip_host.get(ip, ip)
    return out


def server_ttft_mean_ms(before: Mapping[str, Mapping[str, float]], after: Mapping[str, Mapping[str, float]]) -> float:
    """Mean server-side TTFT over every replica: sum of histogram-sum deltas / sum of count deltas."""
    s = sum(after[h].get(f"{TTFT}_sum", 0.0) - before[h].get(f"{TTFT}_sum", 0.0) for h in after)
    n = sum(after[h].get(f"{TTFT}_count", 0.0) - before[h].get(f"{TTFT}_count", 0.0) for h in after)
    return 1000 * s / n if n > 0 else float("nan")


@dataclass
class Pools:
    profile: str
    router: nginx.Router
    urls: dict[str, str]                 # replica host → http://127.0.0.1:PORT
    ip_host: dict[str, str]
    container_ids: list[str]
    stats: object
    startup_s: float
    opts: replay.ReplayOptions
    tcmalloc: dict[str, bool]            # replica host → libtcmalloc mapped into its server process
    replica_ids: dict[str, str]          # replica host → container id

    def replay(self, trace: Trace, records_path: Path, tag: str) -> Measured:
        from dataclasses import replace

        from smoke.server import MODEL_NAME
        before = {h: scrape.fetch(u) for h, u in self.urls.items()}
        seen = len(self.router.log_lines())
        ports = [int(u.rsplit(":", 1)[1]) for u in (self.router.url, *self.urls.values())]
        pids = hostload.helper_pids(self.container_ids, ports)
        a = hostload.sample(self.container_ids, self.stats, pids)
        t0 = {h: hostload.throttle(c) for h, c in self.replica_ids.items()}
        recs = replay.run(trace, self.router.url, MODEL_NAME, records_path, replace(self.opts, request_id_prefix=tag))
        b = hostload.sample(self.container_ids, self.stats, pids)
        t1 = {h: hostload.throttle(c) for h, c in self.replica_ids.items()}
        after = {h: scrape.fetch(u) for h, u in self.urls.items()}
        lines = self.router.log_lines()[seen:]
        return Measured(recs, hostload.usage(a, b), server_ttft_mean_ms(before, after),
                        replica_map(lines, self.ip_host, tag), lines,
                        {h: t1[h] - t0[h] for h in t0 if t0[h] is not None and t1[h] is not None})


@contextmanager
def open_pools(client, image: str, model_dir: Path, profile: Profile, lanes: Sequence[Lane],
               args: Mapping[str, Sequence[str]], log_dir: Path, *, env: Mapping[str, str] | None = None,
               startup_timeout_s: float = 600.0, opts: replay.ReplayOptions = replay.ReplayOptions(),
               cores: Sequence[int] = (), no_tcmalloc: bool = False, cfs_period_us: int = 100_000) -> Iterator[Pools]:
    """Start the profile's replicas (quota'd lanes) and its router; yield Pools; remove all after."""
    from smoke.server import engine_server
    labels = {LABEL: ROLE, "org.deploylab.capacity-profile": profile.name}
    log_dir.mkdir(parents=True, exist_ok=True)
    cpuset = ",".join(map(str, cores)) if cores else None
    t0 = time.monotonic()
    with sweep_network(labels) as net, ExitStack() as stack:
        started = []
        for lane in lanes:
            # No quota while starting: start-up is Python imports in three processes (~60 s at one CPU), and
            # the lane's quota applies from readiness on, before anything is measured.
            srv = engine_server(image, model_dir, tuple(args[lane.pool]), role=ROLE, cpus=cpuset,
                                env={"VLLM_CPU_OMP_THREADS_BIND": lane.threads, **(env or {})}, network=net,
                                aliases=(lane.host,), labels=labels, log_path=log_dir / f"{lane.host}.log",
                                name=f"{lane.host} ({lane.cpus:g} CPUs)", wrap=NO_TCMALLOC if no_tcmalloc else (),
                                ro=script_mount(NO_TCMALLOC_SCRIPT) if no_tcmalloc else {})
            stack.callback(srv.stop)
            started.append((lane, srv.start()))
        for _, srv in started:
            srv.wait(max(10.0, startup_timeout_s - (time.monotonic() - t0)))
        for lane, srv in started:
            srv.limit_cpus(lane.cpus, cfs_period_us)
        ids = [srv.id for _, srv in started]
        ip_host = {client.containers.get(srv.id).attrs["NetworkSettings"]["Networks"][net.name]["IPAddress"]: lane.host
                   for lane, srv in started}
        conf = log_dir / "nginx.conf"
        conf.write_text(nginx.render(profile, [Placement(x.pool, x.index, x.threads, True) for x in lanes]))
        with nginx.nginx_router(conf, net, labels) as router:
            ids.append(router.server.id)
            yield Pools(profile.name, router, {lane.host: srv.url for lane, srv in started}, ip_host, ids,
                        hostload.docker_stats(client), time.monotonic() - t0, opts,
                        {lane.host: tcmalloc_mapped(client, srv.id) for lane, srv in started},
                        {lane.host: srv.id for lane, srv in started})
            (log_dir / "router-access.jsonl").write_text("".join(x + "\n" for x in router.log_lines()))


def tcmalloc_mapped(client, container_id: str) -> bool:
    """Whether the server process (PID 1 after the entrypoint's exec) has libtcmalloc mapped."""
    res = client.containers.get(container_id).exec_run(["grep", "-c", "tcmalloc", "/proc/1/maps"])
    return res.exit_code == 0 and int(res.output.decode().strip() or 0) > 0
