"""Lane sizing (smoke/sweep/lanes.py), host load accounting (hostload.py) and the pools' log and
metrics readers (capacity_pools.py), no Docker."""

from __future__ import annotations

import json
import math
import os
import time

import pytest

from model.errors import UsageError
from smoke import mix as mixmod, profiles
from smoke.records import RequestRecord
from smoke.router import nginx
from smoke.sweep import capacity_plan, capacity_pools, hostload, lanes

MIX = mixmod.load("default")
PER = capacity_plan.requests_per_session(MIX)
# Unloaded service seconds per class of the kind the calibration gives (long prompts dominate).
SERVICE = {"interactive_chat": 0.4, "rag": 0.5, "agent_loop": 0.3, "long_prefill": 1.2, "batch_summary": 2.5,
           "slow_reader": 0.8}


def rec(i, cls, ttft, e2e, n, bps=0, sent=0.0):
    return RequestRecord(id=f"r{i}", cls=cls, endpoint="chat", scheduled_s=sent, sent_s=sent, end_s=sent + e2e,
                         status="ok", http_status=200, ttft_s=ttft, e2e_s=e2e, output_tokens=n, tokens_from="usage",
                         streamed_tokens=n, read_bytes_per_s=bps)


def test_service_time_is_ttft_plus_decode_and_slow_readers_decode_at_the_unthrottled_pace():
    recs = [rec(0, "chat", 0.5, 5.0, 11, sent=0),                       # warm-up: dropped
            rec(1, "chat", 0.1, 0.6, 11, sent=1), rec(2, "chat", 0.1, 0.6, 11, sent=2),   # TPOT 50 ms
            rec(3, "slow", 0.1, 10.1, 51, bps=1500, sent=3)]            # cadence 200 ms is the client's throttle
    s = lanes.service_seconds(recs, warmup=1)
    assert s["chat"] == pytest.approx(0.1 + 10 * 0.05)
    assert s["slow"] == pytest.approx(0.1 + 50 * 0.05)
    with pytest.raises(UsageError, match="no request streamed 2\\+ tokens unthrottled"):
        lanes.service_seconds([rec(9, "slow", 0.1, 1.0, 5, bps=100)])


def test_every_profile_gets_the_same_total_and_lanes_follow_demand():
    for p in profiles.load_many(None):
        ls = lanes.size(p, PER, SERVICE, 1.5, [0, 1])
        assert sum(x.cpus for x in ls) == pytest.approx(1.5), p.name
        assert len(ls) == p.replicas and all(x.cpus >= 0.25 for x in ls)
    one = lanes.size(profiles.load("balanced"), PER, SERVICE, 1.5, [0, 1])
    assert [(x.host, x.cpus, x.threads) for x in one] == [("main-0", 0.75, "0"), ("main-1", 0.75, "1")]
    ca = {x.pool: x for x in lanes.size(profiles.load("class-aware"), PER, SERVICE, 1.5, [0, 1])}
    demand = lanes.pool_demand(profiles.load("class-aware"), PER, SERVICE)
    assert ca["bulk"].cpus / ca["interactive"].cpus == pytest.approx(demand["bulk"] / demand["interactive"], rel=0.1)
    assert (ca["interactive"].threads, ca["bulk"].threads) == ("0", "1")     # under one CPU each: one core each
    big = {x.pool: x for x in lanes.size(profiles.load("class-aware"), PER, {**SERVICE, "batch_summary": 9.0}, 1.5, [0, 1])}
    assert big["bulk"].cpus > 1 and big["bulk"].threads == "0-1"               # over one CPU: two threads


def test_a_lane_below_the_floor_is_raised_to_it_and_the_others_share_the_rest():
    p = profiles.load("slow-isolation")
    tiny = {**SERVICE, "slow_reader": 0.001}
    ls = {x.pool: x.cpus for x in lanes.size(p, PER, tiny, 1.5, [0, 1])}
    assert ls == {"slow": 0.25, "main": 1.25}
    with pytest.raises(UsageError, match="--engine-cpus: 3 CPUs asked, the host has 2 cores"):
        lanes.size(p, PER, SERVICE, 3.0, [0, 1])
    with pytest.raises(UsageError, match="no service time for class 'rag'"):
        lanes.size(p, PER, {k: v for k, v in SERVICE.items() if k != "rag"}, 1.5, [0, 1])


# A line of this host's /proc/stat, captured 2026-12-06 (user nice system idle iowait irq softirq steal guest guest_nice).
STAT = "cpu  1437579 1522 285830 325044 10341 0 8065 9814 0 0\ncpu0 682964 727 136902 209690 2745 0 761 4862 0 0\n"


def test_busy_time_leaves_out_idle_and_iowait():
    hz = os.sysconf("SC_CLK_TCK")
    assert hostload.busy_seconds(STAT) == pytest.approx((1437579 + 1522 + 285830 + 0 + 8065 + 9814) / hz)
    with pytest.raises(ValueError):
        hostload.busy_seconds("intr 1 2 3\n")


# Read on session 13's host (2026-12-07): the first lines of /proc/cpuinfo's first processor and of /proc/meminfo.
CPUINFO = ("processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 167\n"
           "model name\t: Intel(R) Xeon(R) Processor\nstepping\t: 1\n")
MEMINFO = "MemTotal:       24683784 kB\nMemFree:         8650612 kB\n"


def test_the_host_is_named_by_cpu_model_cores_and_memory():
    assert hostload.cpu_model(CPUINFO) == "Intel(R) Xeon(R) Processor" and hostload.cpu_model("processor\t: 0\n") == ""
    assert hostload.memory_gib(MEMINFO) == pytest.approx(23.54, abs=0.01) and hostload.memory_gib("") is None
    here = hostload.describe_host()     # this machine's own files
    assert f"{len(os.sched_getaffinity(0))} cores" in here and "GiB" in here


# cgroup v1 cpu.stat of a 0.55-CPU class-aware lane, read on this host 2026-12-06 15:04 during run capacity-s8
# (notes/sweep/evidence/cfs-throttle-1.txt); and the v2 shape of the same counters (kernel docs' field names).
CPU_STAT_V1 = "nr_periods 11812\nnr_throttled 4796\nthrottled_time 449871253092\nnr_bursts 0\nburst_time 0\n"
CPU_STAT_V2 = "usage_usec 900\nuser_usec 600\nsystem_usec 300\nnr_periods 20\nnr_throttled 5\nthrottled_usec 250000\n"


def test_cfs_counters_parse_both_cgroup_versions_and_subtract_per_run():
    v1 = hostload.parse_cpu_stat(CPU_STAT_V1)
    assert (v1.periods, v1.throttled) == (11812, 4796) and v1.throttled_s == pytest.approx(449.871253092)
    v2 = hostload.parse_cpu_stat(CPU_STAT_V2)
    assert (v2.periods, v2.throttled, v2.throttled_s) == (20, 5, 0.25) and v2.share == 0.25
    d = v1 - hostload.Throttle(11000, 4500, 400.0)
    assert (d.periods, d.throttled) == (812, 296) and d.share == pytest.approx(296 / 812)
    assert hostload.Throttle(0, 0, 0.0).share == 0.0
    assert hostload.throttle("no-such-container") is None


def test_calibration_threads_bind_from_the_first_core():
    assert lanes.threads_for(0.75, [0, 1]) == "0"
    assert lanes.threads_for(1.5, [0, 1]) == "0-1"
    assert lanes.threads_for(0.5, [0, 1], first=1) == "1"


def test_foreign_cpu_is_host_busy_time_that_was_not_ours():
    a = hostload.Sample(0.0, 1.0, 100.0, 10.0)
    b = hostload.Sample(10.0, 1.5, 114.0, 22.0)       # host busy 14 s, ours 12 s, over 2 cores x 10 s
    u = hostload.usage(a, b, cores=2)
    assert u.load1 == (1.0, 1.5) and u.foreign_cpu_share == pytest.approx(0.1) and u.ours_cpu_share == pytest.approx(0.6)
    assert hostload.usage(a, hostload.Sample(10.0, 1.0, 110.0, 22.0), cores=2).foreign_cpu_share == 0.0


def test_a_real_sample_counts_this_process_as_ours():
    a = hostload.sample([])
    spent = lambda: sum(os.times()[:2])    # noqa: E731  the clock sample() reads (ticks), so a tick cannot be lost
    end = spent() + 0.3
    while spent() < end or time.monotonic() < a.t + 0.3:    # ticks may run ahead of the wall clock: wait for both
        pass
    b = hostload.sample([])
    u = hostload.usage(a, b)
    assert b.ours_s - a.ours_s >= 0.3 - 1e-9 and b.host_busy_s - a.host_busy_s > 0.2
    assert u.ours_cpu_share > 0 and u.wall_s >= 0.3


def test_container_cpu_falls_back_to_the_stats_api_shape():
    stats = {"cpu_stats": {"cpu_usage": {"total_usage": 2_500_000_000}}}        # Docker's /containers/ID/stats
    assert hostload.container_cpu_seconds("no-such-container-id", lambda cid: stats) == 2.5
    assert hostload.container_cpu_seconds("no-such-container-id") == 0.0


def _line(**kw) -> str:
    """An access-log line in nginx.conf.j2's `sweep` format (keys as rendered there)."""
    d = {"msec": "1.0", "class": "rag", "pool": "pool_main", "upstream": "172.18.0.3:8000", "status": "200",
         "upstream_status": "200", "request_time": "0.1", "bytes_sent": "10", "prefix_hash": "set", "request_id": ""}
    return json.dumps({**d, **kw})


def test_the_router_log_maps_each_request_id_to_its_replica():
    conf = nginx.render(profiles.load("balanced"), profiles.place(profiles.load("balanced"), [0, 1]))
    assert '"request_id":"$http_x_request_id"' in conf                        # the config logs what is read here
    ip = {"172.18.0.3": "main-0", "172.18.0.4": "main-1"}
    lines = [_line(request_id="run7-000001-rag"), _line(request_id="run7-000002-chat", upstream="172.18.0.4:8000"),
             _line(request_id="other-000003-rag"), "not json", _line(request_id="run7-000004-x", upstream="")]
    assert capacity_pools.replica_map(lines, ip, "run7-") == {"000001-rag": "main-0", "000002-chat": "main-1"}


def test_server_ttft_mean_pools_every_replica_histogram():
    t = capacity_pools.TTFT
    before = {"a": {f"{t}_sum": 1.0, f"{t}_count": 10}, "b": {}}
    after = {"a": {f"{t}_sum": 3.0, f"{t}_count": 20}, "b": {f"{t}_sum": 1.0, f"{t}_count": 10}}
    assert capacity_pools.server_ttft_mean_ms(before, after) == pytest.approx(1000 * 3.0 / 20)
    assert math.isnan(capacity_pools.server_ttft_mean_ms(before, before))  # no request in between: NaN, not 0


def test_docker_helpers_of_our_ports_and_containers_count_as_ours(tmp_path):
    # A /proc tree laid out as the kernel does (cmdline NUL-separated; stat's comm in parentheses),
    # with the argument lists of dockerd 20.10's userland proxy and containerd's shim as `ps` shows them.
    def proc(pid, args, utime=0, stime=0):
        d = tmp_path / str(pid)
        d.mkdir()
        (d / "cmdline").write_bytes("\0".join(args).encode() + b"\0")
        (d / "stat").write_text(f"{pid} (x y) S 1 1 1 0 -1 0 0 0 0 0 {utime} {stime} 0 0 20 0 1 0 0 0 0\n")
    proc(10, ["/usr/sbin/docker-proxy", "-proto", "tcp", "-host-ip", "127.0.0.1", "-host-port", "32782",
              "-container-ip", "172.17.0.2", "-container-port", "8000"], utime=30, stime=20)
    proc(11, ["/usr/sbin/docker-proxy", "-proto", "tcp", "-host-ip", "127.0.0.1", "-host-port", "40000"])
    proc(12, ["/usr/bin/containerd-shim-runc-v2", "-namespace", "moby", "-id", "abc", "-address", "/x.sock"])
    proc(13, ["python", "-host-port", "32782"])
    (tmp_path / "self").mkdir()
    assert sorted(hostload.helper_pids(["abc"], [32782], tmp_path)) == [10, 12]
    hz = os.sysconf("SC_CLK_TCK")
    assert hostload.pid_cpu_seconds(10, tmp_path) == pytest.approx(50 / hz)
    assert hostload.pid_cpu_seconds(99, tmp_path) == 0.0
    assert hostload.pid_cpu_seconds(os.getpid()) > 0            # the real /proc
