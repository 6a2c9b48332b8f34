"""What each layout makes a kernel read, in bytes per sequence, from real manager state.

Two allocations per context length: a fresh pool (each sequence's blocks come out of the free
queue consecutively) and a fragmenting workload (WORKLOAD: random admissions and frees shuffle the
LRU free queue first, then the measured sequences are allocated). The per-token block table
(vLLM's slot mapping: one int32 per token) and the per-block table are the paged baselines.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import numpy as np

from kvlab.blocks import BlockManager
from kvlab.layouts import LAYOUTS, snapshot

CONTEXTS = (1024, 8192, 32768)
VMM_GRANULE, VMM_ROW = 2 << 20, 8 * 128 * 2  # H100/H200 granule; K (or V) bytes per token, bf16 8 x 128
BLOCK_SIZE = 16
# Churn that fragments the free queue: the pool holds pool_factor × what the measured group needs;
# churn sequences of 1 token .. context/2 are admitted and freed until `cycles` pools' worth of
# blocks have passed through the queue; then every churn sequence leaves and the group arrives.
WORKLOAD = dict(pool_factor=1.5, cycles=3, free_prob=0.55, seeds=(1, 2, 3, 4, 5), group=8)


@dataclass(frozen=True)
class SizeRow:
    context: int
    allocation: str         # "fresh" or "fragmented"
    per_token: float        # bytes/seq
    per_block: float
    spans: float
    contiguous: float       # kernel-visible (base, length)
    contiguous_mmu: float   # page-table entries behind it
    hybrid: float           # group of WORKLOAD['group'] sequences sharing half the context
    num_spans: float        # spans per sequence (median over seeds when fragmented)
    virtual_mmu: float = 0  # virtual-contiguous: kernel reads `contiguous`; PTEs of its VMM pages

    @property
    def token_over_spans(self) -> float:
        return self.per_token / self.spans


def _churn(mgr: BlockManager, rng, L: int, w=WORKLOAD) -> None:
    live, moved, r = [], 0, 0
    while moved < w["cycles"] * len(mgr.pool.blocks):
        n = int(rng.integers(1, L // 2 + 1))
        if mgr.pool.num_free * BLOCK_SIZE > n + BLOCK_SIZE:
            mgr.allocate(f"c{r}", [int(x) for x in rng.integers(0, 1 << 30, n)])
            live.append(f"c{r}")
            moved += -(-n // BLOCK_SIZE)
        if live and (rng.random() < w["free_prob"] or mgr.pool.num_free * BLOCK_SIZE <= n + BLOCK_SIZE):
            mgr.free(live.pop(int(rng.integers(0, len(live)))))
        r += 1
    for sid in live:  # every churn sequence leaves: the pool is free but its queue is shuffled
        mgr.free(sid)


def _measure(L: int, fragmented: bool, seed: int) -> dict:
    g = WORKLOAD["group"]
    need = -(-L // BLOCK_SIZE)
    mgr = BlockManager(int(need * g * WORKLOAD["pool_factor"]), BLOCK_SIZE, enable_caching=False)
    rng = np.random.default_rng(seed)
    if fragmented:
        _churn(mgr, rng, L)
    prefix = [int(x) for x in rng.integers(0, 1 << 30, L // 2)]
    ids = [f"s{i}" for i in range(g)]
    # spans/paged/contiguous: the group as independent sequences (no caching, no sharing)
    for sid in ids:
        mgr.allocate(sid, [int(x) for x in rng.integers(0, 1 << 30, L)])
    alone = LAYOUTS["spans"].build(snapshot(mgr, ids))
    metas = {n: mod.build(snapshot(mgr, ids)) for n, mod in LAYOUTS.items()}
    # hybrid: the same group sharing its first half through the prefix cache
    shared = BlockManager(int(need * g * WORKLOAD["pool_factor"]), BLOCK_SIZE)
    if fragmented:
        _churn(shared, np.random.default_rng(seed), L)
    for sid in ids:
        shared.allocate(sid, prefix + [int(x) for x in rng.integers(0, 1 << 30, L - L // 2)])
    hybrid = LAYOUTS["hybrid"].build(snapshot(shared, ids))
    return {
        "per_token": 4 * L + 4,
        "per_block": 4 * need + 4,
        "spans": alone.nbytes() / g,
        "num_spans": len(alone.span_block) / g,
        "contiguous": metas["contiguous"].nbytes() / g,
        "contiguous_mmu": metas["contiguous"].mmu_nbytes() / g,
        "hybrid": hybrid.nbytes() / g,
        "virtual_mmu": 8 * 2 * -(-L * VMM_ROW // VMM_GRANULE),  # a K and a V page table entry per page
    }


def table(contexts=CONTEXTS) -> list[SizeRow]:
    rows = []
    for L in contexts:
        for fragmented in (False, True):
            seeds = WORKLOAD["seeds"] if fragmented else (0,)
            ms = [_measure(L, fragmented, s) for s in seeds]
            med = {k: statistics.median(m[k] for m in ms) for k in ms[0]}
            rows.append(SizeRow(L, "fragmented" if fragmented else "fresh", med["per_token"], med["per_block"],
                                med["spans"], med["contiguous"], med["contiguous_mmu"], med["hybrid"],
                                med["num_spans"], med["virtual_mmu"]))
    return rows


def render(rows: list[SizeRow]) -> str:
    lines = [f"metadata bytes per sequence (block {BLOCK_SIZE}; fragmented = median of {len(WORKLOAD['seeds'])} "
             f"churned pools; hybrid = {WORKLOAD['group']} sequences sharing half the context)",
             f"{'context':>7} {'allocation':>10} {'per-token':>10} {'per-block':>10} {'spans':>7} {'#spans':>7} "
             f"{'contig':>7} {'(+MMU)':>8} {'virt MMU':>8} {'hybrid':>7} {'token/spans':>11}"]
    for r in rows:
        lines.append(f"{r.context:>7} {r.allocation:>10} {r.per_token:>10.0f} {r.per_block:>10.0f} {r.spans:>7.0f} "
                     f"{r.num_spans:>7.1f} {r.contiguous:>7.0f} {r.contiguous_mmu:>8.0f} {r.virtual_mmu:>8.0f} {r.hybrid:>7.0f} "
                     f"{r.token_over_spans:>10.0f}x")
    return "\n".join(lines)
