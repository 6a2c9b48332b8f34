"""Virtual-contiguous through a VMM (vAttention's scheme): each sequence owns one reserved virtual
range and physical pages of a fixed granule are mapped under it as it grows. The kernel reads
(base, length) only, as for "contiguous"; unlike that layout, physical memory comes in pages (2 MiB
on an H100, `kvlab.gpu.vmm`), not in the manager's blocks: a page holds `page_tokens` consecutive
tokens of one sequence, written there. A whole page whose tokens two sequences hold in the same
physical slots (a shared prefix, a fork's common part) is mapped under both ranges, once.

Here the pages are modelled in numpy (the Python oracle backend, and the C++ backend through
`materialize`); on the GPU `kvlab.gpu.vmm` maps the same plan with the CUDA driver's VMM calls.
The model's default page is 2 blocks, so the oracle's short cases cross pages and share them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kvlab.layouts.base import State
from kvlab.reference import partial_attention

MODEL_PAGE_BLOCKS = 2  # page size of the numpy model, in blocks (the GPU uses the driver's granule)


@dataclass(frozen=True)
class Plan:
    page_tokens: int
    page_map: np.ndarray  # int32 [B, pages per sequence]: physical page under each virtual page, -1 unmapped
    page_src: np.ndarray  # int64 [P, page_tokens]: manager slot each page token holds, -1 unwritten
    owner: np.ndarray     # int32 [P, 2]: (sequence, virtual page) that writes the page (its first mapping)

    @property
    def num_pages(self) -> int:
        return len(self.page_src)


def plan(tables, seq_lens, block_size: int, page_tokens: int) -> Plan:
    """Pages for each sequence's tokens; a full page whose slots match an earlier full page is shared."""
    width = max(-(-int(L) // page_tokens) for L in seq_lens)
    page_map = np.full((len(seq_lens), width), -1, np.int32)
    srcs, owners, full = [], [], {}
    for b, (table, L) in enumerate(zip(tables, seq_lens)):
        t = np.arange(int(L))
        slots = np.asarray(table, np.int64)[t // block_size] * block_size + t % block_size
        for j in range(-(-int(L) // page_tokens)):
            chunk = slots[j * page_tokens:(j + 1) * page_tokens]
            key = chunk.tobytes() if len(chunk) == page_tokens else None
            if key is not None and key in full:
                page_map[b, j] = full[key]
                continue
            src = np.full(page_tokens, -1, np.int64)
            src[: len(chunk)] = chunk
            page_map[b, j] = len(srcs)
            if key is not None:
                full[key] = len(srcs)
            srcs.append(src), owners.append((b, j))
    return Plan(page_tokens, page_map, np.array(srcs, np.int64).reshape(-1, page_tokens),
                np.array(owners, np.int32).reshape(-1, 2))


@dataclass(frozen=True)
class Meta:
    block_size: int
    base: np.ndarray        # int32 [B] virtual token address of each sequence's token 0
    seq_lens: np.ndarray    # int32 [B]
    reserve: int            # virtual tokens reserved per sequence (whole pages)
    plan: Plan              # the MMU side: pages and their mapping
    tables: tuple           # the manager's block tables, so a backend with another granule re-plans

    def nbytes(self) -> int:
        return self.base.nbytes + self.seq_lens.nbytes

    def mmu_nbytes(self) -> int:
        """One page-table entry (8 bytes) per mapped virtual page."""
        return 8 * int((self.plan.page_map >= 0).sum())


def build(state: State, page_tokens: int | None = None) -> Meta:
    pt = page_tokens or MODEL_PAGE_BLOCKS * state.block_size
    p = plan(state.tables, state.seq_lens, state.block_size, pt)
    reserve = p.page_map.shape[1] * pt
    base = np.arange(len(state.seq_lens), dtype=np.int32) * reserve
    return Meta(state.block_size, base, np.array(state.seq_lens, np.int32), reserve, p, state.tables)


def pages(p: Plan, store, raw: bool = False):
    """Physical pages' K, V [P, page_tokens, Hkv, D]: what each page holds once its owner wrote it
    (unwritten tokens NaN, as fresh memory is poisoned here). raw: the store's dtype, else float64."""
    bs = store.shape.block_size
    src = p.page_src
    ok = src >= 0
    shape = src.shape + store.k.shape[2:]
    if raw:
        k, v = np.full(shape, np.nan, store.k.dtype), np.full(shape, np.nan, store.v.dtype)
        k[ok], v[ok] = store.k[src[ok] // bs, src[ok] % bs], store.v[src[ok] // bs, src[ok] % bs]
        return k, v
    k, v = np.full(shape, np.nan), np.full(shape, np.nan)
    k[ok] = store.dequant(store.k[src[ok] // bs, src[ok] % bs], store.k_scale)
    v[ok] = store.dequant(store.v[src[ok] // bs, src[ok] % bs], store.v_scale)
    return k, v


def translate(meta: Meta, vaddr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The MMU: virtual token address → (physical page, token in page); page -1 where unmapped."""
    pt = meta.plan.page_tokens
    per_seq = meta.plan.page_map.shape[1]
    vpage = vaddr // pt
    seq, j = vpage // per_seq, vpage % per_seq
    inside = (vaddr >= 0) & (seq < len(meta.seq_lens))
    page = np.where(inside, meta.plan.page_map[np.where(inside, seq, 0), j], -1)
    return page, vaddr % pt


def attend(meta: Meta, q, store, p):
    pk, pv = pages(meta.plan, store)
    outs, lses = [], []
    for b, L in enumerate(meta.seq_lens):
        t = np.arange(int(L))
        page, off = translate(meta, meta.base[b] + t)
        if (page < 0).any():
            raise IndexError("layout read an unmapped virtual page")
        o, lse = partial_attention(q[b], pk[page, off], pv[page, off], t, int(L) - 1, p)
        outs.append(o), lses.append(lse)
    return np.stack(outs), np.stack(lses)


def materialize(meta: Meta, store):
    """The contiguous view the mapping gives a kernel: K, V [B, reserve, Hkv, D] in the store's
    dtype, read through `translate` from each base (unmapped virtual pages read as NaN here; on the
    GPU they would fault)."""
    pk, pv = pages(meta.plan, store, raw=True)
    vaddr = meta.base[:, None].astype(np.int64) + np.arange(meta.reserve)[None, :]
    page, off = translate(meta, vaddr)
    shape = page.shape + store.k.shape[2:]
    k, v = np.full(shape, np.nan, store.k.dtype), np.full(shape, np.nan, store.v.dtype)
    ok = page >= 0
    k[ok], v[ok] = pk[page[ok], off[ok]], pv[page[ok], off[ok]]
    return k, v
