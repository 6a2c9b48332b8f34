"""The manager's state as layouts see it, and helpers they share."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kvlab.blocks import BlockManager


@dataclass(frozen=True)
class State:
    block_size: int
    tables: tuple[tuple[int, ...], ...]  # physical block ids per sequence, in logical order
    seq_lens: tuple[int, ...]


def snapshot(mgr: BlockManager, seq_ids) -> State:
    return State(mgr.block_size, tuple(tuple(mgr.table(s)) for s in seq_ids), tuple(mgr.seq_len(s) for s in seq_ids))


def runs(table, length: int, block_size: int) -> list[tuple[int, int]]:
    """Maximal runs of physically consecutive blocks as (first block, tokens covered)."""
    out: list[list[int]] = []
    for i, b in enumerate(table[: -(-length // block_size)]):
        n = min(block_size, length - i * block_size)
        if out and out[-1][0] * block_size + out[-1][1] == b * block_size and out[-1][1] % block_size == 0:
            out[-1][1] += n
        else:
            out.append([b, n])
    return [(b, n) for b, n in out]


def csr(lists) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Spans per owner as CSR: ptr [n+1], first block [S], tokens [S] (int32)."""
    ptr = np.zeros(len(lists) + 1, np.int32)
    ptr[1:] = np.cumsum([len(x) for x in lists])
    flat = [s for x in lists for s in x]
    blk = np.array([b for b, _ in flat], np.int32).reshape(-1)
    ln = np.array([n for _, n in flat], np.int32).reshape(-1)
    return ptr, blk, ln


def span_slots(blk, ln, lo: int, hi: int, block_size: int) -> np.ndarray:
    """Physical slots of the spans blk[lo:hi], ln[lo:hi], concatenated in logical order."""
    parts = [np.arange(int(b) * block_size, int(b) * block_size + int(n)) for b, n in zip(blk[lo:hi], ln[lo:hi])]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def gather(store, slots: np.ndarray):
    """K/V float64 [T, Hkv, D] at physical slots (dequantized with the store's scales)."""
    bs = store.shape.block_size
    if slots.size and (slots.min() < 0 or slots.max() >= store.shape.num_blocks * bs):
        raise IndexError("layout addressed a slot outside the pool")
    b, o = slots // bs, slots % bs
    return store.dequant(store.k[b, o], store.k_scale), store.dequant(store.v[b, o], store.v_scale)
