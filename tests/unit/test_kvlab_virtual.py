"""Virtual-contiguous (VMM pages): the page plan shares only whole pages whose slots match, a fork
copies its partial page, the oracle passes on the numpy model and catches broken bases and swapped
pages; the decode trace's page and block accounting adds up; the ranking states its criterion."""

from __future__ import annotations

import numpy as np

from kvlab import oracle, ranking, scenario, trace
from kvlab.layouts import LAYOUTS, broken, virtual

NAMED = scenario.named_cases()


def _case(name):
    return scenario.build(next(c for c in NAMED if c.name == name))


def test_plan_shares_whole_pages_of_a_common_prefix_only():
    built = _case("prefix-shared-4")
    bs = built.state.block_size
    m = virtual.build(built.state, page_tokens=2 * bs)
    pm, lens = m.plan.page_map, built.state.seq_lens
    shared = min(built.case.shared_prefix, min(lens)) // (2 * bs)  # whole pages inside the prefix
    assert shared >= 1
    for j in range(shared):
        assert len(set(pm[:, j])) == 1  # one physical page under every sequence
    for b, L in enumerate(lens):
        assert (pm[b] >= 0).sum() == -(-L // (2 * bs))  # exactly the pages its tokens need
    # a page is shared only where the slots it would hold are the same
    for b, j in zip(*np.nonzero(pm >= 0)):
        src = m.plan.page_src[pm[b, j]]
        t = np.arange(j * 2 * bs, min((j + 1) * 2 * bs, lens[b]))
        want = np.asarray(built.state.tables[b])[t // bs] * bs + t % bs
        assert (src[: len(t)] == want).all()


def test_fork_gets_its_own_copy_of_the_partial_page():
    built = _case("fork-cow-mid-block")
    m = virtual.build(built.state)
    parent, child = m.plan.page_map[0], m.plan.page_map[-1]
    last = -(-built.state.seq_lens[0] // m.plan.page_tokens) - 1
    assert parent[last] != child[last]


def test_oracle_passes_on_the_virtual_model_and_materialized_view_matches():
    res = oracle.run(NAMED, layouts={"virtual": LAYOUTS["virtual"]})
    assert len(res) == len(NAMED) and [r for r in res if not r.ok] == []
    built = _case("prefix-shared-4")
    m = virtual.build(built.state)
    k, _ = virtual.materialize(m, built.store)
    for b, L in enumerate(built.state.seq_lens):
        got = k[b, :L].astype(np.float64)
        assert np.array_equal(got, built.k_stored[b])  # f32 case: stored values exactly
        assert np.isnan(k[b, L:].astype(np.float32)).all()


def test_broken_virtual_layouts_are_caught():
    res = oracle.run(NAMED, layouts={"virtual-base+1": broken.BROKEN["virtual-base+1"]})
    assert all(not r.ok for r in res)
    res = oracle.run([c for c in NAMED if c.alibi or c.window], layouts={"x": broken.BROKEN["virtual-swapped"]})
    assert sum(not r.ok for r in res) >= 3


def test_trace_accounting_adds_up():
    res = trace.run(dict(trace.TRACE, steps=60, live=6, own_prompt=(100, 1500), decode=(5, 40)))
    s = trace.summary(res)
    ops = [op for step in res.ops for op in step]
    creates = sum(op[0] == "create" for op in ops)
    releases = sum(op[0] == "release" for op in ops)
    maps = sum(op[0] == "map" for op in ops)
    unmaps = sum(op[0] == "unmap" for op in ops)
    assert creates >= releases > 0 and maps >= unmaps > 0
    assert sum(st.creates for st in res.steps) == 2 * creates  # K and V pages apiece
    assert any(op[0] == "copy" for op in ops)  # forks happened and copied their partial page
    assert maps > creates  # the shared system prompt's full page is mapped again, not created
    m = s["memory"]
    assert m["paged"] <= m["tokens"] and s["saved"]["paged"] > s["saved"]["virtual"] > 0
    assert 0 <= s["lost"]["paged"] < s["lost"]["virtual"] < s["lost"]["contiguous"]


def test_ranking_states_its_criterion_and_uses_measurements_when_given():
    from kvlab import metadata
    s = trace.summary(trace.run(dict(trace.TRACE, steps=40, live=6)))
    sizes = metadata.table(contexts=(1024,))
    text = ranking.ranking(None, None, s, sizes)
    assert text.startswith("criterion:") and "memory alone" in text
    assert {line.split("|")[2].strip() for line in text.splitlines()[3:]} == set(LAYOUTS)
    measured = {"card": "test card", "layout_bandwidth": {"gpu_tbps": {n: 4.0 for n in LAYOUTS}},
                "costs": {"bookkeeping_us": {n: 10.0 for n in LAYOUTS}}}
    text = ranking.ranking(measured, None, s, sizes)
    rows = [line.split("|") for line in text.splitlines()[3:]]
    assert "test card" in text and all(r[-2].strip() != "–" for r in rows)
    # same bandwidth and bookkeeping: the plain buffer reserved at max length needs the most memory
    assert rows[-1][2].strip() == "contiguous"


class _StrictDriver:
    """Stands in for kvlab.gpu.vmm.Driver and enforces the VMM rules the CUDA driver enforces: a
    virtual address is mapped once at a time, only a mapped address is unmapped, a released page
    is mapped nowhere, copies run between mapped pages, and everything is given back at the end."""
    granule = 2 << 20

    def __init__(self):
        self.next, self.live, self.mapped, self.reserved, self.copies = 1, set(), {}, {}, 0

    def create(self, n):
        assert n == self.granule
        self.next += 1
        self.live.add(self.next)
        return self.next

    def reserve(self, n):
        base = 1 << 40 if not self.reserved else max(a + s for a, s in self.reserved.items())
        self.reserved[base] = n
        return base

    def map(self, va, n, h):
        assert h in self.live and va not in self.mapped
        assert any(a <= va and va + n <= a + s for a, s in self.reserved.items())
        self.mapped[va] = h

    def unmap(self, va, n):
        del self.mapped[va]

    def release(self, h):
        assert h in self.live and h not in self.mapped.values()
        self.live.remove(h)

    def free(self, va, n):
        assert not any(va <= a < va + n for a in self.mapped)
        del self.reserved[va]

    def call(self, name, *args):
        if name == "cuMemcpyDtoD_v2":
            dst, src, n = args
            assert dst in self.mapped and src in self.mapped and dst != src
            self.copies += 1


def test_replay_performs_the_trace_by_the_drivers_rules_with_and_without_a_page_pool():
    from kvlab.gpu import vmm
    res = trace.run(dict(trace.TRACE, steps=50, live=6, own_prompt=(100, 2500), decode=(5, 40)))
    page = res.page_tokens * trace.TOKEN_BYTES // 2
    for pool in (False, True):
        drv = _StrictDriver()
        out = vmm.replay(drv, res, page, pool=pool)
        assert out["steps"] == 50 and out["pool"] is pool
        assert drv.live == set() and drv.mapped == {} and drv.reserved == {}
        assert drv.copies == sum(op[0] == "copy" for ops in res.ops for op in ops) * 2 > 0


def test_metadata_counts_the_virtual_layouts_page_table_entries():
    from kvlab import metadata
    # 1024 tokens x 2 KiB of K (8 kv heads x 128 bf16) = one 2 MiB page for K and one for V
    assert metadata._measure(1024, False, 0)["virtual_mmu"] == 16
    assert metadata._measure(8192, False, 0)["virtual_mmu"] == 8 * 2 * 8
