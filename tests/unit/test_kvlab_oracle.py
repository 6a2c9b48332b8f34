"""The oracle: every named and randomized case passes for the five Python layouts, the pools are
poisoned where nothing was written, the scenarios really share and copy, and deliberately broken
layouts are caught."""

from __future__ import annotations

import numpy as np
import pytest

from kvlab import oracle, scenario
from kvlab.layouts import LAYOUTS, broken

NAMED = scenario.named_cases()


def test_at_least_30_named_cases_with_unique_names():
    assert len(NAMED) >= 30
    assert len({c.name for c in NAMED}) == len(NAMED)
    kinds = {c.dtype for c in NAMED} | {c.fp8_scale for c in NAMED if c.dtype == "fp8"}
    assert {"f32", "bf16", "fp8", "tensor", "head"} <= kinds
    assert any(c.kv_heads == 1 < c.q_heads for c in NAMED)          # MQA
    assert any(1 < c.kv_heads < c.q_heads for c in NAMED)           # GQA
    assert any(c.alibi for c in NAMED) and any(c.window for c in NAMED)
    assert any(c.fork for c in NAMED) and any(c.shared_prefix for c in NAMED)


def test_named_cases_pass_for_every_layout():
    res = oracle.run(NAMED)
    assert len(res) == len(NAMED) * len(LAYOUTS)
    assert [r for r in res if not r.ok] == []


def test_200_randomized_cases_pass():
    res = oracle.run(scenario.random_cases(200))
    assert len(res) == 200 * len(LAYOUTS)
    assert [(r.case, r.layout) for r in res if not r.ok] == []


def test_unwritten_slots_of_partial_blocks_are_nan():
    built = scenario.build(next(c for c in NAMED if c.name == "partial-final-blocks"))
    bs = built.case.block_size
    for table, L in zip(built.state.tables, built.state.seq_lens):
        if L % bs:
            last = table[-1]
            assert np.isnan(built.store.k[last, L % bs:].astype(np.float32)).all()
            assert not np.isnan(built.store.k[last, : L % bs].astype(np.float32)).any()


def test_scenarios_really_share_prefixes_and_copy_on_write():
    shared = scenario.build(next(c for c in NAMED if c.name == "prefix-shared-4")).state
    assert len({t[0] for t in shared.tables}) == 1 and len({t[3] for t in shared.tables}) == 1
    forked = scenario.build(next(c for c in NAMED if c.name == "fork-cow-mid-block")).state
    parent, child = forked.tables[0], forked.tables[-1]
    assert parent[0] == child[0] and parent[1] != child[1]  # the shared partial block was copied


def test_fp8_and_bf16_error_against_unquantized_stays_inside_dtype_tolerance():
    res = {r.case: r for r in oracle.run([c for c in NAMED if c.dtype != "f32"], layouts={"spans": LAYOUTS["spans"]})}
    assert {c.dtype for c in NAMED if c.name in res} == {"bf16", "fp8"}  # the loop below checks both
    for r in res.values():
        assert 0 < r.err_source <= oracle.TOLERANCES["source"][next(c.dtype for c in NAMED if c.name == r.case)]


@pytest.mark.parametrize("name", ["spans-end+1", "spans-end-1", "contiguous-base+1"])
def test_off_by_one_layouts_are_caught_on_every_case(name):
    res = oracle.run(NAMED, layouts={name: broken.BROKEN[name]})
    assert all(not r.ok for r in res), [r.case for r in res if r.ok]


def test_swapped_blocks_are_caught_where_position_matters():
    # softmax attention without positional terms is invariant to key order, so only ALiBi,
    # windowed and partial-block cases can see two swapped blocks; the oracle must see those
    res = oracle.run([c for c in NAMED if c.alibi or c.window], layouts={"paged-swapped": broken.PagedSwappedBlocks})
    caught = [r for r in res if not r.ok]
    assert len(caught) >= 5


def test_tables_render_every_case_and_a_ranking():
    res = oracle.run(NAMED[:3])
    text = oracle.table(res, {c.name for c in NAMED})
    assert all(c.name in text for c in NAMED[:3]) and "FAIL" not in text
    from kvlab import metadata, trace
    summary = trace.summary(trace.run(dict(trace.TRACE, steps=20, live=4)))
    text = oracle.ranking(res, None, summary, metadata.table(contexts=(1024,)))
    assert text.startswith("criterion:")
    assert {line.split("|")[2].strip() for line in text.splitlines()[3:]} == set(LAYOUTS)
