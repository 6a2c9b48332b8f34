"""Deliberately wrong layouts, for tests that prove the oracle catches a kernel writer's usual
slips. Each breaks only its metadata and reuses the honest layout's attend (KIND), so the same
breakage reaches the Python layouts and the compiled kernels alike."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from kvlab.layouts import contiguous, paged, spans, virtual


class SpanEndPlusOne:
    """Each sequence's last span ends one token late, and the length the layout derives from its
    spans with it: the kernel reads one slot past the sequence (poisoned, or another's K/V)."""
    KIND = "spans"
    attend = staticmethod(spans.attend)

    @staticmethod
    def build(state):
        m = spans.build(state)
        ln = m.span_len.copy()
        ln[m.span_ptr[1:] - 1] += 1
        return replace(m, span_len=ln, seq_lens=m.seq_lens + 1)


class SpanEndMinusOne:
    """Each sequence's last span drops its final token (the query's own key goes missing)."""
    KIND = "spans"
    attend = staticmethod(spans.attend)

    @staticmethod
    def build(state):
        m = spans.build(state)
        ln = m.span_len.copy()
        ln[m.span_ptr[1:] - 1] -= 1
        return replace(m, span_len=ln)


class PagedSwappedBlocks:
    """The first two entries of every block table swapped (logical order lost)."""
    KIND = "paged"
    attend = staticmethod(paged.attend)

    @staticmethod
    def build(state):
        m = paged.build(state)
        bt = m.block_table.copy()
        if bt.shape[1] < 2:
            return m
        two = m.seq_lens > m.block_size
        bt[two, 0], bt[two, 1] = m.block_table[two, 1], m.block_table[two, 0]
        return replace(m, block_table=bt)


def _one_token_late(m):
    """A contiguous-style layout's metadata with every base one token late."""
    return replace(m, base=(m.base + 1).astype(np.int32))


class ContiguousBaseShift:
    """Every virtual base one token late."""
    KIND = "contiguous"
    attend = staticmethod(contiguous.attend)
    materialize = staticmethod(contiguous.materialize)

    @staticmethod
    def build(state):
        return _one_token_late(contiguous.build(state))


class VirtualBaseShift:
    """Every virtual base one token late (reads past the sequence: unwritten or unmapped)."""
    KIND = "virtual"
    attend = staticmethod(virtual.attend)

    @staticmethod
    def build(state):
        return _one_token_late(virtual.build(state))


class VirtualSwappedPages:
    """The first two mapped pages of every sequence swapped (logical order lost, as paged-swapped)."""
    KIND = "virtual"
    attend = staticmethod(virtual.attend)

    @staticmethod
    def build(state):
        m = virtual.build(state)
        pm = m.plan.page_map.copy()
        if pm.shape[1] < 2:
            return m
        two = (pm[:, :2] >= 0).all(axis=1)
        pm[two, 0], pm[two, 1] = m.plan.page_map[two, 1], m.plan.page_map[two, 0]
        return replace(m, plan=replace(m.plan, page_map=pm))


BROKEN = {"spans-end+1": SpanEndPlusOne, "spans-end-1": SpanEndMinusOne, "paged-swapped": PagedSwappedBlocks,
          "contiguous-base+1": ContiguousBaseShift,
          "virtual-base+1": VirtualBaseShift, "virtual-swapped": VirtualSwappedPages}
