"""Which layout to profile first, ranked by a stated criterion from measurements.

CRITERION: decode tokens per second per GiB of KV memory on the decode trace (kvlab.trace), on the
GPU. Tokens/s = live sequences / step time, step time = the K/V bytes the layout's kernel reads per
step ÷ its measured graph-mode bandwidth (batch 32 × 8k, the GPU run's bench) + its measured
bookkeeping per step (metadata upload; for virtual also the trace's VMM page operations, replayed
with the driver). Memory = the layout's physical KV bytes at the trace's peak: loss to granularity
counted (blocks of 16 tokens, 2 MiB VMM pages, a plain buffer reserved at max length), prefix
sharing subtracted. Hybrid's kernel reads a shared block once per 4 sequences (its 16-row CTA
chunks), spans and paged once per sequence; hybrid's bandwidth is taken as spans' (the same tiles
where nothing is shared). Without a GPU run's results the ranking falls back to memory alone, and
says so.
"""

from __future__ import annotations

import json
from pathlib import Path

from kvlab import metadata, trace

RESULTS = Path(__file__).resolve().parents[1] / "notes" / "kvlab_gpu" / "results.json"
ORDER = ("paged", "spans", "hybrid", "contiguous", "virtual")
BLOCK_POOL = {"paged", "spans", "hybrid"}  # layouts over the manager's block pool
HYBRID_READS = 1 / 4                      # a shared block is read once per 4 sequences


def load(path: Path = RESULTS) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def facts(summary: dict, sizes: list, measured: dict | None) -> dict:
    """Per layout: every column of the ranking table (None where not measured)."""
    mem, lost, saved = summary["memory"], summary["lost"], summary["saved"]
    tokens = summary["mean"]["tokens"] * trace.TOKEN_BYTES
    shared_frac = saved["paged"] / mem["tokens"] if mem["tokens"] else 0.0
    gpu = (measured or {}).get("layout_bandwidth", {}).get("gpu_tbps", {})
    cpu = (measured or {}).get("layout_bandwidth", {}).get("cpu_gbps", {})
    book = (measured or {}).get("costs", {}).get("bookkeeping_us", {})
    out = {}
    for n in ORDER:
        pool = "paged" if n in BLOCK_POOL else n
        meta = {}
        for r in sizes:
            kind = {"paged": r.per_block, "spans": r.spans, "hybrid": r.hybrid, "contiguous": r.contiguous,
                    "virtual": r.contiguous}[n]
            meta[(r.context, r.allocation)] = kind
        read = tokens * (1 - shared_frac * (1 - HYBRID_READS)) if n == "hybrid" else tokens
        bw = gpu.get("spans" if n == "hybrid" else n)
        step_us = read / (bw * 1e12) * 1e6 + book[n] if bw and n in book else None
        gib = (mem[pool] if n != "contiguous" else mem["contiguous"]) / 2 ** 30
        out[n] = {"meta": meta, "memory_gib": gib, "lost": lost[pool] / mem[pool], "saved": saved[pool] / mem["tokens"],
                  "gpu_tbps": bw, "cpu_gbps": cpu.get("spans" if n == "hybrid" else n),
                  "bookkeeping_us": book.get(n), "step_us": step_us,
                  "mmu_32k": next((r.virtual_mmu for r in sizes if r.context == 32768), 0) if n == "virtual" else 0,
                  "score": summary["mean"]["live"] * 1e6 / step_us / gib if step_us else None}
    return out


def render(f: dict, measured: dict | None, oracle_pass: dict | None = None) -> str:
    scored = all(x["score"] for x in f.values())
    # ties: fewer metadata bytes at the longest context, fragmented
    meta = lambda n: f[n]["meta"][(max(c for c, _ in f[n]["meta"]), "fragmented")]  # noqa: E731
    key = (lambda n: (-f[n]["score"], meta(n))) if scored else (lambda n: (round(f[n]["memory_gib"], 3), meta(n)))
    src = (f"measured: {measured.get('card', '?')}, {RESULTS.name} of the latest GPU run"
           if measured else "no GPU run's results: ranked by memory alone")
    lines = ["criterion: decode tokens/s per GiB of KV memory on the decode trace (GPU): tokens/s = live "
             "sequences / (K/V bytes read per step ÷ measured bandwidth + measured bookkeeping per step); "
             "memory = physical KV bytes at the trace's peak (granularity loss in, prefix sharing out); "
             f"ties: fewer metadata bytes at the longest context [{src}]",
             "| rank | layout | oracle | meta B/seq 1k / 8k / 32k fresh (fragmented) | lost to granularity | "
             "saved by sharing | KV GiB at peak | GPU TB/s 8k×32 | CPU GB/s 8k×8 | bookkeeping µs/step | "
             "step µs | tokens/s per GiB |",
             "|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    fmt = lambda x, spec: "–" if x is None else format(x, spec)  # noqa: E731
    for i, n in enumerate(sorted(f, key=key), 1):
        x = f[n]
        m = x["meta"]
        meta = " / ".join(f"{m[(c, 'fresh')]:.0f} ({m[(c, 'fragmented')]:.0f})" for c in dict.fromkeys(c for c, _ in m))
        if n == "virtual":
            meta += f" + {x['mmu_32k']:.0f} B of PTEs at 32k"
        ok = "–" if not oracle_pass or n not in oracle_pass else f"{oracle_pass[n][0]}/{oracle_pass[n][1]}"
        lines.append(f"| {i} | {n} | {ok} | {meta} | {x['lost']:.1%} | {x['saved']:.1%} | {x['memory_gib']:.2f} | "
                     f"{fmt(x['gpu_tbps'], '.2f')} | {fmt(x['cpu_gbps'], '.1f')} | {fmt(x['bookkeeping_us'], '.1f')} | "
                     f"{fmt(x['step_us'], '.0f')} | {fmt(x['score'], ',.0f')} |")
    pool = (measured or {}).get("costs", {}).get("virtual_replay_pool")
    v = f["virtual"]
    if pool and v["step_us"]:
        book = v["bookkeeping_us"] - measured["costs"]["virtual_replay"]["mean_us"] + pool["mean_us"]
        step = v["step_us"] - v["bookkeeping_us"] + book
        score = v["score"] * v["step_us"] / step
        place = 1 + sum(f[n]["score"] > score for n in f if n != "virtual")
        lines.append(f"virtual with a page pool (pages created before and released after the trace, as vAttention "
                     f"keeps one): bookkeeping {book:.1f} µs/step, step {step:.0f} µs, {score:,.0f} tokens/s per GiB "
                     f"(rank {place})")
    return "\n".join(lines)


def ranking(measured: dict | None = None, oracle_pass: dict | None = None, summary: dict | None = None,
            sizes: list | None = None) -> str:
    """The ranking table from a fresh trace and metadata table plus a GPU run's measurements."""
    summary = summary or trace.summary(trace.run())
    sizes = sizes if sizes is not None else metadata.table()
    return render(facts(summary, sizes, measured), measured, oracle_pass)


def passes(results) -> dict:
    """Oracle results → {layout: (passed, total)}."""
    out: dict = {}
    for r in results:
        ok, n = out.get(r.layout, (0, 0))
        out[r.layout] = (ok + r.ok, n + 1)
    return out
