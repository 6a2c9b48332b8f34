"""Hybrid-prefix-shared (FlashInfer cascade / Hydragen): sequences whose tables begin with the same
physical blocks form a group; the group's shared prefix is read once for all its queries, each
sequence's suffix separately, and the two partial results are merged by log-sum-exp."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kvlab.layouts.base import State, csr, gather, runs, span_slots
from kvlab.reference import merge, partial_attention


@dataclass(frozen=True)
class Meta:
    block_size: int
    group_of_seq: np.ndarray  # int32 [B]
    prefix_len: np.ndarray    # int32 [G] shared tokens (whole blocks)
    pre_ptr: np.ndarray       # int32 [G+1] prefix spans per group
    pre_block: np.ndarray
    pre_len: np.ndarray
    suf_ptr: np.ndarray       # int32 [B+1] suffix spans per sequence (positions start at prefix_len)
    suf_block: np.ndarray
    suf_len: np.ndarray
    seq_lens: np.ndarray      # int32 [B]

    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.group_of_seq, self.prefix_len, self.pre_ptr, self.pre_block,
                                      self.pre_len, self.suf_ptr, self.suf_block, self.suf_len, self.seq_lens))


def _shared_blocks(tables, lens, members, bs) -> int:
    """Leading blocks identical in every member's table, and full for each of them."""
    if len(members) < 2:
        return 0
    n = min(min(len(tables[m]) for m in members), min(lens[m] for m in members) // bs)
    for i in range(n):
        if len({tables[m][i] for m in members}) != 1:
            return i
    return n


def build(state: State) -> Meta:
    bs, tables, lens = state.block_size, state.tables, state.seq_lens
    by_first: dict[int, list[int]] = {}
    for i, t in enumerate(tables):
        by_first.setdefault(t[0], []).append(i)
    groups = list(by_first.values())
    gos = np.zeros(len(tables), np.int32)
    pre, plen, suf = [], [], [None] * len(tables)
    for g, members in enumerate(groups):
        shared = _shared_blocks(tables, lens, members, bs)
        pre.append(runs(tables[members[0]][:shared], shared * bs, bs) if shared else [])
        plen.append(shared * bs)
        for m in members:
            gos[m] = g
            suf[m] = runs(tables[m][shared:], lens[m] - shared * bs, bs) if lens[m] > shared * bs else []
    pp, pb, pl = csr(pre)
    sp, sb, sl = csr(suf)
    return Meta(bs, gos, np.array(plen, np.int32), pp, pb, pl, sp, sb, sl, np.array(lens, np.int32))


def attend(meta: Meta, q, store, p):
    B, bs = len(meta.seq_lens), meta.block_size
    out = np.zeros(q.shape, np.float64)
    lse = np.zeros(q.shape[:2], np.float64)
    for g in range(len(meta.prefix_len)):
        members = np.flatnonzero(meta.group_of_seq == g)
        P = int(meta.prefix_len[g])
        # the shared prefix: gathered once, attended by every member's query (its own position)
        kp, vp = gather(store, span_slots(meta.pre_block, meta.pre_len, meta.pre_ptr[g], meta.pre_ptr[g + 1], bs))
        for m in members:
            L = int(meta.seq_lens[m])
            o1, l1 = partial_attention(q[m], kp, vp, np.arange(P), L - 1, p)
            ks, vs = gather(store, span_slots(meta.suf_block, meta.suf_len, meta.suf_ptr[m], meta.suf_ptr[m + 1], bs))
            o2, l2 = partial_attention(q[m], ks, vs, P + np.arange(ks.shape[0]), L - 1, p)
            out[m], lse[m] = merge(o1, l1, o2, l2)
    assert B == len(out)
    return out, lse
