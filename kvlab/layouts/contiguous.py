"""Virtual-contiguous (vAttention's idea): each sequence is one contiguous range of a virtual
address space; the kernel reads (base, length) only. Physical blocks are mapped under the virtual
pages by a page table that belongs to the MMU, not to the kernel: here `page_table` emulates that
translation, and `materialize` is what the mapping would show the kernel (used by the extension)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kvlab.layouts.base import State, gather
from kvlab.reference import partial_attention


@dataclass(frozen=True)
class Meta:
    block_size: int
    base: np.ndarray        # int32 [B] virtual token address of each sequence's token 0
    seq_lens: np.ndarray    # int32 [B]
    page_table: np.ndarray  # int32 [virtual pages] → physical block (-1 unmapped); MMU-side
    reserve: int            # virtual tokens reserved per sequence

    def nbytes(self) -> int:
        return self.base.nbytes + self.seq_lens.nbytes

    def mmu_nbytes(self) -> int:
        """Page-table entries backing the mapped pages (8 bytes each, like a PTE)."""
        return 8 * int((self.page_table >= 0).sum())


def build(state: State) -> Meta:
    bs = state.block_size
    pages = max(len(t) for t in state.tables)
    pt = np.full(pages * len(state.tables), -1, np.int32)
    for i, t in enumerate(state.tables):
        pt[i * pages: i * pages + len(t)] = t
    base = np.arange(len(state.tables), dtype=np.int32) * pages * bs
    return Meta(bs, base, np.array(state.seq_lens, np.int32), pt, pages * bs)


def translate(meta: Meta, vaddr: np.ndarray) -> np.ndarray:
    """The MMU: virtual token address → physical slot."""
    phys = meta.page_table[vaddr // meta.block_size].astype(np.int64)
    return np.where(phys >= 0, phys * meta.block_size + vaddr % meta.block_size, -1)


def attend(meta: Meta, q, store, p):
    outs, lses = [], []
    for b, L in enumerate(meta.seq_lens):
        t = np.arange(int(L))
        k, v = gather(store, translate(meta, meta.base[b] + t))
        o, l = partial_attention(q[b], k, v, t, int(L) - 1, p)
        outs.append(o), lses.append(l)
    return np.stack(outs), np.stack(lses)


def materialize(meta: Meta, store):
    """The contiguous view the mapping gives the kernel: K, V [B, reserve, Hkv, D] in the store's
    dtype (unmapped or unwritten slots stay NaN, as the poisoned pool would show them)."""
    B = len(meta.seq_lens)
    vaddr = meta.base[:, None].astype(np.int64) + np.arange(meta.reserve)[None, :]
    slots = translate(meta, vaddr)
    bs = meta.block_size
    shape = (B, meta.reserve) + store.k.shape[2:]
    k = np.full(shape, np.nan, store.k.dtype)
    v = np.full(shape, np.nan, store.v.dtype)
    ok = slots >= 0
    k[ok] = store.k[slots[ok] // bs, slots[ok] % bs]
    v[ok] = store.v[slots[ok] // bs, slots[ok] % bs]
    return k, v
