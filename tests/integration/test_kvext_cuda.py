"""The CUDA build of kvx passes the oracle on every named case (run on the lent GPU, not in CI).

KVX_SITE may point at an unpacked wheel built with KVX_CUDA=ON (notes/kvlab_gpu_run.sh does);
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
    res = oracle.run(scenario.named_cases(), ext.cuda_backend, "cuda")
    assert len(res) == 4 * len(scenario.named_cases())
    assert [r for r in res if not r.ok] == []


def test_cuda_oracle_catches_broken_span_end(kvx_cuda):
    from kvlab import ext, oracle, scenario
    from kvlab.layouts import broken
    res = oracle.run(scenario.named_cases()[:8], ext.cuda_backend, "cuda", layouts={"spans-end+1": broken.SpanEndPlusOne})
    assert any(not r.ok for r in res)
