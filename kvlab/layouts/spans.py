"""Compact logical spans: each sequence as runs of physically consecutive blocks, (first block,
tokens). Logical position is the running sum of span lengths; an unfragmented sequence is one span."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kvlab.layouts.base import State, csr, gather, runs, span_slots
from kvlab.reference import partial_attention


@dataclass(frozen=True)
class Meta:
    block_size: int
    span_ptr: np.ndarray    # int32 [B+1]
    span_block: np.ndarray  # int32 [S] first physical block of each span
    span_len: np.ndarray    # int32 [S] tokens in each span
    seq_lens: np.ndarray    # int32 [B]

    def nbytes(self) -> int:
        return self.span_ptr.nbytes + self.span_block.nbytes + self.span_len.nbytes + self.seq_lens.nbytes


def build(state: State) -> Meta:
    ptr, blk, ln = csr([runs(t, n, state.block_size) for t, n in zip(state.tables, state.seq_lens)])
    return Meta(state.block_size, ptr, blk, ln, np.array(state.seq_lens, np.int32))


def attend(meta: Meta, q, store, p):
    outs, lses = [], []
    for b, L in enumerate(meta.seq_lens):
        slots = span_slots(meta.span_block, meta.span_len, meta.span_ptr[b], meta.span_ptr[b + 1], meta.block_size)
        k, v = gather(store, slots)
        o, l = partial_attention(q[b], k, v, np.arange(len(slots)), int(L) - 1, p)
        outs.append(o), lses.append(l)
    return np.stack(outs), np.stack(lses)
