"""The CUDA build of kvx passes the oracle on every named case (run on the lent GPU, not in CI).

KVX_SITE may point at an unpacked wheel built with KVX_CUDA=ON (kvlab/gpu/run.sh does);
otherwise the wheel is built here with CUDA required.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="session")
def kvx_cuda(tmp_path_factory):
    from kvlab import ext
    site = os.environ.get("KVX_SITE")
    site = Path(site) if site else ext.build(tmp_path_factory.mktemp("kvx-cuda"), cuda="ON")
    kvx = ext.load(site)
    assert kvx.has_cuda(), "kvx was built without its CUDA library"
    return kvx


def test_cuda_oracle_named_cases(kvx_cuda):
    from kvlab import ext, oracle, scenario
    from kvlab.layouts import LAYOUTS
    res = oracle.run(scenario.named_cases(), ext.cuda_backend, "cuda")
    assert len(res) == len(LAYOUTS) * len(scenario.named_cases())  # virtual: pages mapped with the CUDA driver
    assert [r for r in res if not r.ok] == []


def test_vmm_pages_are_really_shared_and_the_granule_is_measured(kvx_cuda):
    import numpy as np

    from kvlab import ext
    from kvlab.gpu import vmm
    from kvlab.layouts import virtual
    drv = ext.driver()
    assert drv.granule >= 64 << 10
    row = 1024
    pt = drv.page_bytes(row) // row
    # two sequences whose first page holds the same slots: one physical page under both ranges
    plan = virtual.plan((tuple(range(3 * pt // 16)), tuple(range(pt // 16)) + (10_000,)),
                        (2 * pt + 5, pt + 3), 16, pt)
    assert plan.page_map[0, 0] == plan.page_map[1, 0] and plan.num_pages == 4
    pages = np.random.default_rng(0).integers(0, 255, (plan.num_pages, pt, row), dtype=np.uint8)
    m = vmm.Mapped.of_plan(drv, plan, pages)
    try:
        assert m.read(m.seq_ptr(1), 4096) == pages[plan.page_map[0, 0]].tobytes()[:4096]
        assert m.read(m.seq_ptr(1) + m.page_bytes, 4096) == pages[plan.page_map[1, 1]].tobytes()[:4096]
    finally:
        m.close()
    c = vmm.costs(drv, pages=8)
    assert all(c[k] > 0 for k in ("create_us", "map_access_us", "unmap_us", "release_us"))


def test_cuda_oracle_catches_broken_span_end(kvx_cuda):
    from kvlab import ext, oracle, scenario
    from kvlab.layouts import broken
    res = oracle.run(scenario.named_cases()[:8], ext.cuda_backend, "cuda", layouts={"spans-end+1": broken.SpanEndPlusOne})
    assert any(not r.ok for r in res)


@pytest.mark.parametrize("variant", ["0", "4", "8", "10", "11", "20", "22", "25", "40", "42", "45", "47", "57", "61", "62"])
def test_cuda_oracle_wide_bf16_cases(kvx_cuda, monkeypatch, variant):
    from kvlab import ext, oracle, scenario
    monkeypatch.setenv("KVX_CUDA_VARIANT", variant)  # the kernel choice of the bf16 GQA-4 d128 path
    res = oracle.run(scenario.wide_cases(), ext.cuda_backend, "cuda")
    assert [r for r in res if not r.ok] == []
