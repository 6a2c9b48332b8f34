"""A decode trace with growth, forks and frees, run through the block manager, and what each layout
pays for it: memory (granularity loss, prefix-sharing savings) and bookkeeping per step (block-table
bytes to upload, VMM pages to create, map, copy, unmap and release).

The workload (TRACE): requests share a system prompt (the prefix cache hits it), own a prompt of
their own, decode a while and leave; some fork after their prompt (parallel sampling); new ones
arrive as old ones finish, so the live batch stays near `live`. Virtual-contiguous is replayed on
the same manager state: a sequence's pages are created as it grows, a full page whose slots an
existing page already holds is mapped again instead (shared), a fork maps its parent's full pages
and copies the partial one, a freed sequence unmaps its pages and a page with no mapping left is
released. `kvlab.gpu.vmm.replay` performs these VMM operations on a GPU and times them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from kvlab.blocks import BlockManager

# bf16, 8 kv heads x 128: 2 KiB of K and 2 KiB of V per token; 2 MiB VMM granule (H100/H200)
TOKEN_BYTES = 2 * 8 * 128 * 2
GRANULE = 2 << 20
TRACE = dict(steps=600, live=32, block_size=16, system_prompt=1536, own_prompt=(256, 4096),
             decode=(64, 512), fork_prob=0.25, max_len=32768, seed=11)


@dataclass
class Step:
    live: int = 0
    tokens: int = 0           # sum of live sequences' lengths
    new_blocks: int = 0       # blocks the manager handed out this step (incl. copy-on-write targets)
    table_entries: int = 0    # block-table entries of the live batch (a per-block table upload)
    spans: int = 0            # runs of physically consecutive blocks (the spans layout's entries)
    creates: int = 0          # VMM physical pages created (K and V counted apiece)
    maps: int = 0             # VMM mappings made (incl. shared pages mapped again)
    copies: int = 0           # partial pages copied for a fork
    unmaps: int = 0
    releases: int = 0


@dataclass
class Memory:
    """Bytes at the trace's peak step, K and V together."""
    tokens: int = 0           # what the live sequences hold (each counted once per sequence)
    paged: int = 0            # unique blocks in use x block bytes
    paged_unique_tokens: int = 0
    virtual: int = 0          # physical pages x page bytes (K and V)
    virtual_unique_tokens: int = 0
    contiguous: int = 0       # a plain buffer reserved at max_len per live sequence


@dataclass
class Result:
    steps: list[Step] = field(default_factory=list)
    peak: Memory = field(default_factory=Memory)
    page_tokens: int = 0
    ops: list = field(default_factory=list)  # VMM operations per step, for the GPU replay


def _runs(table, length, bs):
    n = -(-length // bs)
    t = np.asarray(table[:n])
    return 1 + int((np.diff(t) != 1).sum()) if n else 0


class _Pages:
    """Virtual-contiguous replayed on manager state: pages per sequence, refcounts, the registry of
    full pages by the slots they hold. Operations are (op, page id, ...) tuples for the replay."""

    def __init__(self, page_tokens: int, bs: int):
        self.pt, self.bs = page_tokens, bs
        self.of: dict[str, list[int]] = {}
        self.rc: dict[int, int] = {}
        self.key_of: dict[int, bytes] = {}
        self.full: dict[bytes, int] = {}
        self.next = 0

    def _slots(self, table, lo, hi):
        t = np.arange(lo, hi)
        return (np.asarray(table, np.int64)[t // self.bs] * self.bs + t % self.bs).tobytes()

    def _new(self, ops, st, sid, j):
        pid, self.next = self.next, self.next + 1
        self.rc[pid] = 1
        ops.append(("create", pid)), ops.append(("map", pid, sid, j))
        st.creates += 2
        st.maps += 2
        return pid

    def grow(self, sid, table, length, ops, st):
        pages = self.of.setdefault(sid, [])
        for j, pid in enumerate(pages):  # register pages that filled up since
            if pid not in self.key_of and length >= (j + 1) * self.pt:
                key = self._slots(table, j * self.pt, (j + 1) * self.pt)
                self.full.setdefault(key, pid)
                self.key_of[pid] = key
        for j in range(len(pages), -(-length // self.pt)):
            key = self._slots(table, j * self.pt, (j + 1) * self.pt) if length >= (j + 1) * self.pt else None
            if key is not None and key in self.full:
                pid = self.full[key]
                self.rc[pid] += 1
                ops.append(("map", pid, sid, j))
                st.maps += 2
            else:
                pid = self._new(ops, st, sid, j)
                if key is not None:
                    self.full[key], self.key_of[pid] = pid, key
            pages.append(pid)

    def fork(self, parent, child, length, ops, st):
        pages = []
        for j, pid in enumerate(self.of[parent]):
            if length >= (j + 1) * self.pt:
                self.rc[pid] += 1
                ops.append(("map", pid, child, j))
                st.maps += 2
                pages.append(pid)
            else:  # the partial page: the child gets a copy (copy-on-write at page granularity)
                new = self._new(ops, st, child, j)
                ops.append(("copy", pid, new))
                st.copies += 2
                pages.append(new)
        self.of[child] = pages

    def free(self, sid, ops, st):
        for j, pid in enumerate(self.of.pop(sid)):
            ops.append(("unmap", pid, sid, j))
            st.unmaps += 2
            self.rc[pid] -= 1
            if self.rc[pid] == 0:
                del self.rc[pid]
                key = self.key_of.pop(pid, None)
                if key is not None and self.full.get(key) == pid:
                    del self.full[key]
                ops.append(("release", pid))
                st.releases += 2


def run(cfg: dict = TRACE, token_bytes: int = TOKEN_BYTES, granule: int = GRANULE) -> Result:
    rng = np.random.default_rng(cfg["seed"])
    bs = cfg["block_size"]
    half = token_bytes // 2                       # K or V alone: each has its own pages
    pt = granule // half if granule % half == 0 else None
    if pt is None:
        raise ValueError(f"trace: granule {granule} is not a whole number of {half}-byte token rows")
    mgr = BlockManager(cfg["live"] * 3 * cfg["max_len"] // bs, bs)
    vm = _Pages(pt, bs)
    system = [int(x) for x in rng.integers(0, 1 << 30, cfg["system_prompt"])]
    left: dict[str, int] = {}
    tokens: dict[str, list[int]] = {}
    res, n = Result(page_tokens=pt), 0
    for _ in range(cfg["steps"]):
        st, ops = Step(), []
        before = mgr.pool.num_free
        while len(left) < cfg["live"]:  # admissions
            sid = f"r{n}"
            n += 1
            own = int(rng.integers(*cfg["own_prompt"]))
            tokens[sid] = system + [int(x) for x in rng.integers(0, 1 << 30, own)]
            mgr.allocate(sid, tokens[sid])
            left[sid] = int(rng.integers(*cfg["decode"]))
            vm.grow(sid, mgr.table(sid), mgr.seq_len(sid), ops, st)
            if rng.random() < cfg["fork_prob"]:
                mgr.fork(sid, sid + "f")
                tokens[sid + "f"] = list(tokens[sid])
                left[sid + "f"] = int(rng.integers(*cfg["decode"]))
                vm.fork(sid, sid + "f", mgr.seq_len(sid), ops, st)
        for sid in list(left):  # one decode token each
            tok = int(rng.integers(0, 1 << 30))
            mgr.append(sid, tok)
            tokens[sid].append(tok)
            vm.grow(sid, mgr.table(sid), mgr.seq_len(sid), ops, st)
        st.new_blocks = max(0, before - mgr.pool.num_free)
        st.live = len(left)
        st.tokens = sum(mgr.seq_len(s) for s in left)
        st.table_entries = sum(-(-mgr.seq_len(s) // bs) for s in left)
        st.spans = sum(_runs(mgr.table(s), mgr.seq_len(s), bs) for s in left)
        _peak(res, mgr, vm, left, bs, pt, token_bytes, cfg["max_len"])
        for sid in list(left):  # finished sequences leave after this step
            left[sid] -= 1
            if left[sid] <= 0:
                del left[sid], tokens[sid]
                mgr.free(sid)
                vm.free(sid, ops, st)
        res.steps.append(st)
        res.ops.append(ops)
    return res


def _peak(res, mgr, vm, live, bs, pt, token_bytes, max_len):
    blocks = {b for s in live for b in mgr.table(s)}
    tokens = sum(mgr.seq_len(s) for s in live)
    if 2 * bs * len(blocks) * (token_bytes // 2) < res.peak.paged:
        return
    slots = set()
    for s in live:
        t = np.arange(mgr.seq_len(s))
        slots.update((np.asarray(mgr.table(s))[t // bs] * bs + t % bs).tolist())
    pages = {p for s in live for p in vm.of[s]}
    res.peak = Memory(
        tokens=tokens * token_bytes,
        paged=len(blocks) * bs * token_bytes, paged_unique_tokens=len(slots) * token_bytes,
        virtual=len(pages) * pt * token_bytes, virtual_unique_tokens=_page_tokens(vm, live, mgr) * token_bytes,
        contiguous=len(live) * max_len * token_bytes)


def _page_tokens(vm, live, mgr):
    """Tokens written into physical pages (a shared page counted once)."""
    seen, n = set(), 0
    for s in live:
        for j, pid in enumerate(vm.of[s]):
            if pid not in seen:
                seen.add(pid)
                n += min(vm.pt, mgr.seq_len(s) - j * vm.pt)
    return n


def summary(res: Result) -> dict:
    """Per-step means and the peak memory split into loss to granularity and sharing savings."""
    S = len(res.steps)
    mean = {k: sum(getattr(s, k) for s in res.steps) / S for k in Step.__dataclass_fields__}
    m = res.peak
    lost = {"paged": m.paged - m.paged_unique_tokens, "virtual": m.virtual - m.virtual_unique_tokens,
            "contiguous": m.contiguous - m.tokens}
    saved = {"paged": m.tokens - m.paged_unique_tokens, "virtual": m.tokens - m.virtual_unique_tokens,
             "contiguous": 0}
    return {"steps": S, "page_tokens": res.page_tokens, "mean": mean,
            "memory": {"tokens": m.tokens, "paged": m.paged, "virtual": m.virtual, "contiguous": m.contiguous},
            "lost": lost, "saved": saved}
