"""The block manager keeps vLLM's semantics: chained hashes, refcounts, LRU free queue with lazy
eviction, all-or-nothing allocation, copy-on-write, guarded prefix-cache reset."""

from __future__ import annotations

import pytest

from kvlab.blocks import BlockManager, CopyOp, NoFreeBlocks, hash_block

BS = 4


def toks(n, start=0):
    return list(range(start, start + n))


def state(mgr):
    return (mgr.refcounts(), list(mgr.pool.free_queue), {h: sorted(b) for h, b in mgr.pool.cached.items()},
            {s: mgr.table(s) for s in mgr.seqs})


def test_hash_chains_parent_and_extra_keys():
    a = hash_block(None, (1, 2, 3, 4))
    assert hash_block(a, (5, 6, 7, 8)) != hash_block(None, (5, 6, 7, 8))
    assert hash_block(None, (1, 2, 3, 4), ("lora-a",)) != a


def test_salt_enters_first_block_only_and_separates_caches():
    mgr = BlockManager(16, BS)
    mgr.allocate("a", toks(9), salt="tenant-1")
    mgr.allocate("b", toks(9), salt="tenant-2")
    assert not set(mgr.table("a")) & set(mgr.table("b"))
    mgr.allocate("c", toks(9), salt="tenant-1")
    assert mgr.table("c")[:2] == mgr.table("a")[:2]
    # the salt is an extra key of block 0 only: block 1's hash chains from a salted parent
    seq = mgr.seqs["a"]
    assert mgr._block_extra(seq, 0) == ("tenant-1",) and mgr._block_extra(seq, 1) == ()


def test_hit_increments_refcount_and_leaves_free_queue():
    mgr = BlockManager(8, BS)
    mgr.allocate("a", toks(9))
    a = mgr.table("a")
    mgr.free("a")
    assert mgr.refcounts()[a[0]] == 0 and a[0] in mgr.pool.free_queue
    alloc = mgr.allocate("b", toks(9))  # lazy eviction: freed but still cached
    assert alloc.num_cached_tokens == 8 and mgr.table("b")[:2] == a[:2]
    assert a[0] not in mgr.pool.free_queue and mgr.refcounts()[a[0]] == 1


def test_last_token_is_never_a_hit():
    mgr = BlockManager(8, BS)
    mgr.allocate("a", toks(8))
    alloc = mgr.allocate("b", toks(8))
    assert alloc.num_cached_tokens == 4  # the second full block must be recomputed for its logits


def test_free_returns_blocks_to_tail_in_reverse_and_eviction_is_lru():
    mgr = BlockManager(6, BS)
    mgr.allocate("a", toks(12))
    a = mgr.table("a")
    mgr.free("a")
    assert list(mgr.pool.free_queue)[-3:] == a[::-1]
    mgr.allocate("x", toks(12, 100))  # three new blocks: the untouched ones first, then a's tail
    assert mgr.table("x") == [3, 4, 5]
    mgr.allocate("y", toks(4, 200))
    assert mgr.table("y") == [a[2]]  # least recently freed: a's last block (its prefix stays cached)
    assert mgr.pool.blocks[a[0]].block_hash is not None


def test_failed_allocation_changes_nothing():
    mgr = BlockManager(5, BS)
    mgr.allocate("a", toks(9))
    mgr.free("a")
    mgr.allocate("b", toks(5, 50))
    before = state(mgr)
    with pytest.raises(NoFreeBlocks):
        mgr.allocate("c", toks(9) + toks(12, 300))  # hits a's prefix, then runs out
    assert state(mgr) == before and "c" not in mgr.seqs


def test_identical_blocks_are_not_deduplicated():
    mgr = BlockManager(8, BS)
    mgr.allocate("a", toks(5))
    mgr.allocate("b", toks(5))
    for t in range(5, 8):
        mgr.append("a", t)
        mgr.append("b", t)
    ha, hb = mgr.seqs["a"].hashes[1], mgr.seqs["b"].hashes[1]
    assert ha == hb and mgr.table("a")[1] != mgr.table("b")[1]
    assert len(mgr.pool.cached[ha]) == 2


def test_copy_on_write_after_fork():
    mgr = BlockManager(8, BS)
    mgr.allocate("p", toks(6))
    mgr.fork("p", "c")
    shared = mgr.table("p")[1]
    assert mgr.refcounts()[shared] == 2
    slot, copy = mgr.append("p", 99)
    assert copy == CopyOp(shared, mgr.table("p")[1]) and mgr.table("c")[1] == shared
    assert mgr.refcounts()[shared] == 1 and slot // BS == mgr.table("p")[1]
    slot, copy = mgr.append("c", 7)  # the child now owns the original alone: no copy
    assert copy is None and slot == shared * BS + 2


def test_fork_at_block_edge_needs_no_copy():
    mgr = BlockManager(8, BS)
    mgr.allocate("p", toks(8))
    mgr.fork("p", "c")
    assert mgr.append("p", 1)[1] is None and mgr.append("c", 2)[1] is None


def test_reset_prefix_cache_refuses_while_in_use():
    mgr = BlockManager(4, BS)
    mgr.allocate("a", toks(5))
    assert mgr.reset_prefix_cache() is False and mgr.pool.cached
    mgr.free("a")
    assert mgr.reset_prefix_cache() is True and not mgr.pool.cached
    assert mgr.allocate("b", toks(5)).num_cached_tokens == 0
