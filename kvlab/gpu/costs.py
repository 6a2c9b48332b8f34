"""Bookkeeping per decode step on the GPU, measured: VMM calls per page, the decode trace's page
operations replayed with the driver (kvlab.trace, kvlab.gpu.vmm.replay), and each layout's metadata
upload per step (pinned host → device, then a synchronize, as an engine does before a step)."""

from __future__ import annotations

import statistics
import time

import torch

from kvlab import trace
from kvlab.gpu import vmm


def upload_us(nbytes: int, reps: int = 200) -> float:
    host = torch.empty(max(4, int(nbytes)), dtype=torch.uint8).pin_memory()
    dev = torch.empty_like(host, device="cuda")
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        dev.copy_(host, non_blocking=True)
        torch.cuda.synchronize()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e6


def metadata_bytes(mean: dict) -> dict:
    """A step's metadata arrays per layout, from the trace's mean step (int32 entries)."""
    B = round(mean["live"])
    spans = 4 * (B + 1) + 8 * mean["spans"] + 4 * B
    return {"paged": 4 * mean["table_entries"] + 4 * B, "spans": spans,
            "hybrid": spans + 16 * B,  # + group_of_seq, group_members, prefix_len, group_ptr: one int each
            "contiguous": 4 * B, "virtual": 4 * B}


def measure(drv: vmm.Driver, log=print) -> dict:
    out = {"vmm_per_page": vmm.costs(drv)}
    log(f"VMM per page ({drv.granule >> 20} MiB): " + ", ".join(
        f"{k} {v:.1f}" for k, v in out["vmm_per_page"].items() if k.endswith("_us")) + " (µs, host, ctypes included)")
    res = trace.run()
    summ = trace.summary(res)
    out["trace"] = summ
    rp = vmm.replay(drv, res, page_bytes=res.page_tokens * trace.TOKEN_BYTES // 2)
    out["virtual_replay"] = rp
    out["virtual_replay_pool"] = rpp = vmm.replay(drv, res, page_bytes=res.page_tokens * trace.TOKEN_BYTES // 2,
                                                  pool=True)
    for name, r in (("pages created on demand", rp), ("page pool: map/unmap/copy only", rpp)):
        log(f"trace ({summ['steps']} steps, ~{summ['mean']['live']:.0f} live), {name}: VMM ops per step "
            f"{r['mean_us']:.1f} µs mean ({r['mean_after_first_us']:.1f} after step 0), {r['median_us']:.1f} median, "
            f"{r['p99_us']:.0f} p99, {r['max_us']:.0f} max")
    sizes = metadata_bytes(summ["mean"])
    up = {n: upload_us(b) for n, b in sizes.items()}
    out["sync_only_us"] = upload_us(4)
    out["upload_bytes"] = sizes
    out["upload_us"] = up
    out["bookkeeping_us"] = {n: up[n] + (rp["mean_us"] if n == "virtual" else 0.0) for n in up}
    log("metadata upload per step (µs): " + ", ".join(f"{n} {up[n]:.1f} ({sizes[n]:.0f} B)" for n in up)
        + f"; a 4-byte copy + sync alone {out['sync_only_us']:.1f}")
    return out
