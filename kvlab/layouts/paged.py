"""Paged: a per-sequence block table, vLLM-style; the reference layout. Token t lives in slot
table[t // block_size] * block_size + t % block_size."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kvlab.layouts.base import State, gather
from kvlab.reference import partial_attention


@dataclass(frozen=True)
class Meta:
    block_size: int
    block_table: np.ndarray  # int32 [B, max_blocks], -1 padded
    seq_lens: np.ndarray     # int32 [B]

    def nbytes(self) -> int:
        # what a kernel must read: each sequence's own blocks plus its length
        used = sum(-(-int(n) // self.block_size) for n in self.seq_lens)
        return 4 * used + self.seq_lens.nbytes


def build(state: State) -> Meta:
    width = max(len(t) for t in state.tables)
    bt = np.full((len(state.tables), width), -1, np.int32)
    for i, t in enumerate(state.tables):
        bt[i, : len(t)] = t
    return Meta(state.block_size, bt, np.array(state.seq_lens, np.int32))


def attend(meta: Meta, q, store, p):
    outs, lses = [], []
    for b, L in enumerate(meta.seq_lens):
        t = np.arange(int(L))
        slots = meta.block_table[b, t // meta.block_size].astype(np.int64) * meta.block_size + t % meta.block_size
        k, v = gather(store, slots)
        o, l = partial_attention(q[b], k, v, t, int(L) - 1, p)
        outs.append(o), lses.append(l)
    return np.stack(outs), np.stack(lses)
