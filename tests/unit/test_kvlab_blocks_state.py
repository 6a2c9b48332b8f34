"""Hypothesis state machine over the block manager: random admissions (small vocabulary, so prefix
hits and evictions are frequent), decode appends, forks, frees, failed allocations and resets,
checked after every step against an independent model of the pool."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from kvlab.blocks import BlockManager, NoFreeBlocks

BS, NBLOCKS = 4, 12


class ManagerMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.mgr = BlockManager(NBLOCKS, BS)
        self.content = np.full(NBLOCKS * BS, -1, np.int64)  # what each slot holds (the "KV")
        self.model: dict[str, list[int]] = {}                # tokens each live sequence must read back
        self.free_order = list(range(NBLOCKS))               # expected LRU free queue
        self.n = 0

    def _new_id(self):
        self.n += 1
        return f"s{self.n}"

    def _snapshot(self):
        m = self.mgr
        return (m.refcounts(), list(m.pool.free_queue), {h: sorted(b) for h, b in m.pool.cached.items()},
                {s: m.table(s) for s in m.seqs}, [b.block_hash for b in m.pool.blocks])

    @rule(tokens=st.lists(st.integers(0, 2), min_size=1, max_size=6 * BS), salt=st.sampled_from([None, "x"]))
    def allocate(self, tokens, salt):
        sid = self._new_id()
        before = self._snapshot()
        try:
            alloc = self.mgr.allocate(sid, tokens, salt=salt)
        except NoFreeBlocks:
            assert self._snapshot() == before, "a failed allocation changed the manager"
            return
        table = self.mgr.table(sid)
        hits = table[: alloc.num_cached_tokens // BS]
        new = table[len(hits):]
        self.free_order = [b for b in self.free_order if b not in hits]
        assert self.free_order[: len(new)] == new, "new blocks must come from the queue's front"
        self.free_order = self.free_order[len(new):]
        for t, slot in zip(range(alloc.num_cached_tokens, len(tokens)), alloc.new_slots):
            self.content[slot] = tokens[t]
        self.model[sid] = list(tokens)

    @precondition(lambda self: self.model)
    @rule(data=st.data(), token=st.integers(0, 2))
    def append(self, data, token):
        sid = data.draw(st.sampled_from(sorted(self.model)))
        before = self._snapshot()
        head = self.free_order[0] if self.free_order else None
        try:
            slot, copy = self.mgr.append(sid, token)
        except NoFreeBlocks:
            assert self._snapshot() == before
            return
        if copy is not None or len(self.model[sid]) % BS == 0:
            assert self.mgr.table(sid)[-1] == head
            self.free_order.pop(0)
        if copy is not None:
            self.content[copy.dst * BS:(copy.dst + 1) * BS] = self.content[copy.src * BS:(copy.src + 1) * BS]
        self.content[slot] = token
        self.model[sid].append(token)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def fork(self, data):
        parent = data.draw(st.sampled_from(sorted(self.model)))
        child = self._new_id()
        self.mgr.fork(parent, child)
        self.model[child] = list(self.model[parent])

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def free(self, data):
        sid = data.draw(st.sampled_from(sorted(self.model)))
        table = self.mgr.table(sid)
        refs = self.mgr.refcounts()
        self.mgr.free(sid)
        del self.model[sid]
        self.free_order += [b for b in reversed(table) if refs[b] == 1]

    @rule()
    def reset(self):
        in_use = any(r > 0 for r in self.mgr.refcounts())
        assert self.mgr.reset_prefix_cache() is (not in_use)

    @invariant()
    def refcounts_match_tables(self):
        expect = [0] * NBLOCKS
        for sid in self.model:
            for b in self.mgr.table(sid):
                expect[b] += 1
        assert self.mgr.refcounts() == expect

    @invariant()
    def no_leak_no_double_free(self):
        free = list(self.mgr.pool.free_queue)
        assert len(free) == len(set(free))
        assert set(free) == {b for b, r in enumerate(self.mgr.refcounts()) if r == 0}

    @invariant()
    def lru_order(self):
        assert list(self.mgr.pool.free_queue) == self.free_order

    @invariant()
    def every_sequence_reads_its_own_tokens(self):  # prefix hits and copy-on-write isolation
        for sid, tokens in self.model.items():
            table = self.mgr.table(sid)
            slots = [table[t // BS] * BS + t % BS for t in range(len(tokens))]
            assert self.content[slots].tolist() == tokens, sid

    @invariant()
    def cache_map_consistent(self):
        for h, bucket in self.mgr.pool.cached.items():
            assert bucket and all(b.block_hash == h for b in bucket.values())
        hashed = [b for b in self.mgr.pool.blocks if b.block_hash is not None]
        assert sum(len(v) for v in self.mgr.pool.cached.values()) == len(hashed)


ManagerMachine.TestCase.settings = settings(max_examples=120, stateful_step_count=40, deadline=None,
                                            suppress_health_check=[HealthCheck.too_slow])
TestManagerMachine = ManagerMachine.TestCase
