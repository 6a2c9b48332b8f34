"""A KV cache block manager with vLLM's (v1) ownership semantics, written from its documented behaviour.

- A pool of fixed-size blocks; each sequence owns an append-only block table.
- Only full blocks are hashed: H(parent_hash, tokens, extra_keys). A cache salt enters the first
  block's extra keys only, so two salts never share anything while later blocks chain from there.
- A cache hit increments the refcount and, if the block was free, takes it out of the free queue.
- Freed blocks go to the tail of an LRU free queue (a sequence's blocks in reverse order, so its tail
  is evicted before its prefix); a cached block keeps its hash until it is reallocated (lazy eviction).
- Identical blocks are not deduplicated after the fact: two blocks may carry one hash.
- A failed allocation raises and leaves every refcount, table and queue as it was.
- Writing into a shared partial block (after a fork) copies it first (copy-on-write).
- Resetting the prefix cache refuses while any block is in use.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field


class NoFreeBlocks(Exception):
    """Not enough free blocks; the manager's state is unchanged."""


@dataclass
class Block:
    block_id: int
    ref_cnt: int = 0
    block_hash: bytes | None = None


@dataclass(frozen=True)
class CopyOp:
    """Copy physical block src into dst (the KV storage performs it)."""
    src: int
    dst: int


@dataclass(frozen=True)
class Allocation:
    """What allocate() did: blocks reused from the cache, and the token slots the caller must write."""
    num_cached_tokens: int
    new_slots: tuple[int, ...]


def hash_block(parent: bytes | None, tokens: tuple[int, ...], extra_keys: tuple = ()) -> bytes:
    """Chained block hash; repr of ints/strs/tuples is canonical enough for a lab."""
    h = hashlib.sha256()
    h.update(parent or b"\0" * 32)
    h.update(repr((tuple(tokens), tuple(extra_keys))).encode())
    return h.digest()


class BlockPool:
    """Blocks, the LRU free queue and the hash → blocks map."""

    def __init__(self, num_blocks: int, block_size: int):
        if num_blocks <= 0 or block_size <= 0:
            raise ValueError("num_blocks and block_size must be positive")
        self.block_size = block_size
        self.blocks = [Block(i) for i in range(num_blocks)]
        # OrderedDict as an O(1) doubly linked list: front = least recently freed = evicted first.
        self.free_queue: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self.cached: dict[bytes, dict[int, Block]] = {}

    @property
    def num_free(self) -> int:
        return len(self.free_queue)

    def lookup(self, block_hash: bytes) -> Block | None:
        hit = self.cached.get(block_hash)
        return next(iter(hit.values())) if hit else None

    def take(self, n: int) -> list[Block]:
        if n > self.num_free:
            raise NoFreeBlocks(f"need {n} blocks, {self.num_free} free")
        out = []
        for _ in range(n):
            bid, _ = self.free_queue.popitem(last=False)
            blk = self.blocks[bid]
            self._evict(blk)
            blk.ref_cnt = 1
            out.append(blk)
        return out

    def _evict(self, blk: Block) -> None:
        if blk.block_hash is None:
            return
        bucket = self.cached[blk.block_hash]
        del bucket[blk.block_id]
        if not bucket:
            del self.cached[blk.block_hash]
        blk.block_hash = None

    def touch(self, blocks: list[Block]) -> None:
        for blk in blocks:
            if blk.ref_cnt == 0:
                del self.free_queue[blk.block_id]
            blk.ref_cnt += 1

    def release(self, blocks: list[Block]) -> None:
        """Decrement in the given order; blocks reaching zero join the queue's tail in that order."""
        for blk in blocks:
            if blk.ref_cnt <= 0:
                raise AssertionError(f"double free of block {blk.block_id}")
            blk.ref_cnt -= 1
            if blk.ref_cnt == 0:
                self.free_queue[blk.block_id] = None

    def cache(self, blk: Block, block_hash: bytes) -> None:
        blk.block_hash = block_hash
        self.cached.setdefault(block_hash, {})[blk.block_id] = blk

    def reset_prefix_cache(self) -> bool:
        if self.num_free != len(self.blocks):
            return False
        for blk in self.blocks:
            blk.block_hash = None
        self.cached.clear()
        return True


@dataclass
class Sequence:
    seq_id: str
    tokens: list[int]
    extra_keys: tuple
    salt: str | None
    table: list[Block] = field(default_factory=list)
    hashes: list[bytes] = field(default_factory=list)  # of its full blocks, in order


class BlockManager:
    """Sequences over a BlockPool. Token slot = block_id * block_size + offset."""

    def __init__(self, num_blocks: int, block_size: int, enable_caching: bool = True):
        self.pool = BlockPool(num_blocks, block_size)
        self.block_size = block_size
        self.enable_caching = enable_caching
        self.seqs: dict[str, Sequence] = {}

    # --- queries ---------------------------------------------------------------------------
    def table(self, seq_id: str) -> list[int]:
        return [b.block_id for b in self.seqs[seq_id].table]

    def seq_len(self, seq_id: str) -> int:
        return len(self.seqs[seq_id].tokens)

    def refcounts(self) -> list[int]:
        return [b.ref_cnt for b in self.pool.blocks]

    def _block_extra(self, seq: Sequence, index: int) -> tuple:
        return ((seq.salt,) if index == 0 and seq.salt is not None else ()) + seq.extra_keys

    def _hashes_for(self, seq: Sequence, upto_blocks: int) -> list[bytes]:
        bs, out = self.block_size, list(seq.hashes[:upto_blocks])
        for i in range(len(out), upto_blocks):
            parent = out[-1] if out else None
            out.append(hash_block(parent, tuple(seq.tokens[i * bs:(i + 1) * bs]), self._block_extra(seq, i)))
        return out

    # --- operations --------------------------------------------------------------------------
    def allocate(self, seq_id: str, tokens: list[int], extra_keys: tuple = (), salt: str | None = None) -> Allocation:
        """Admit a prompt: reuse the longest cached chain of full blocks, allocate the rest."""
        if seq_id in self.seqs:
            raise ValueError(f"sequence {seq_id!r} already allocated")
        if not tokens:
            raise ValueError("a sequence needs at least one token")
        seq = Sequence(seq_id, list(tokens), tuple(extra_keys), salt)
        bs = self.block_size
        hits: list[Block] = []
        if self.enable_caching:
            # The last token is always recomputed (it produces the next logits), as in vLLM.
            for h in self._hashes_for(seq, (len(tokens) - 1) // bs):
                blk = self.pool.lookup(h)
                if blk is None:
                    break
                hits.append(blk)
        need = -(-len(tokens) // bs) - len(hits)
        free_hits = sum(1 for b in hits if b.ref_cnt == 0)
        if need > self.pool.num_free - free_hits:
            raise NoFreeBlocks(f"{seq_id}: need {need} new blocks, {self.pool.num_free - free_hits} free")
        self.pool.touch(hits)
        new = self.pool.take(need)
        seq.table = hits + new
        seq.hashes = self._hashes_for(seq, len(hits)) if hits else []
        self.seqs[seq_id] = seq
        self._cache_full_blocks(seq)
        start = len(hits) * bs
        return Allocation(start, tuple(self._slot(seq, t) for t in range(start, len(tokens))))

    def append(self, seq_id: str, token: int) -> tuple[int, CopyOp | None]:
        """Add one decoded token; returns its slot and a copy the storage must do first (CoW)."""
        seq = self.seqs[seq_id]
        bs, pos = self.block_size, len(seq.tokens)
        copy = None
        if pos % bs == 0:
            seq.table.append(self.pool.take(1)[0])
        else:
            last = seq.table[-1]
            if last.ref_cnt > 1:  # shared partial block: copy before writing
                fresh = self.pool.take(1)[0]
                self.pool.release([last])
                seq.table[-1] = fresh
                copy = CopyOp(last.block_id, fresh.block_id)
        seq.tokens.append(token)
        self._cache_full_blocks(seq)
        return self._slot(seq, pos), copy

    def fork(self, parent_id: str, child_id: str) -> None:
        """The child shares every block of the parent, the partial last one included."""
        if child_id in self.seqs:
            raise ValueError(f"sequence {child_id!r} already allocated")
        p = self.seqs[parent_id]
        self.pool.touch(p.table)
        self.seqs[child_id] = Sequence(child_id, list(p.tokens), p.extra_keys, p.salt, list(p.table), list(p.hashes))

    def free(self, seq_id: str) -> None:
        seq = self.seqs.pop(seq_id)
        self.pool.release(list(reversed(seq.table)))

    def reset_prefix_cache(self) -> bool:
        return self.pool.reset_prefix_cache()

    # --- helpers -------------------------------------------------------------------------------
    def _slot(self, seq: Sequence, t: int) -> int:
        return seq.table[t // self.block_size].block_id * self.block_size + t % self.block_size

    def _cache_full_blocks(self, seq: Sequence) -> None:
        full = len(seq.tokens) // self.block_size
        if not self.enable_caching or full <= len(seq.hashes):
            return
        hashes = self._hashes_for(seq, full)
        for i in range(len(seq.hashes), full):
            blk = seq.table[i]
            if blk.block_hash is None:  # a hit block already carries this hash
                self.pool.cache(blk, hashes[i])
        seq.hashes = hashes
