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


def wide_cases():
    """bf16 head_dim-128 GQA cases with 4+ kv heads: the named and random cases have none with 8 kv
    heads, so these reach the tensor-core kernels that take several kv heads per CTA (wide_kernel),
    long sequences (many splits: the fused combine), block sizes that break the per-tile lookup, and
    batches with more items than resident CTAs (mma_multi_kernel)."""
    from kvlab.scenario import Case
    base = dict(q_heads=32, kv_heads=8, head_dim=128, block_size=16, dtype="bf16", fp8_scale="tensor", alibi=False,
                window=0, lens=(301, 77), shared_prefix=0, decode_steps=0, fork=(), churn=0, warm_prefix=False,
                salted=False)
    specs = [
        ("wide-h8-d128", {"lens": (301, 77, 1025)}),
        ("wide-h8-bs8-alibi-window", {"block_size": 8, "alibi": True, "window": 70, "lens": (200, 33, 129)}),
        ("wide-h8-bs32-prefix-fork", {"block_size": 32, "shared_prefix": 64, "lens": (90, 100, 77), "fork": (2, 11)}),
        ("wide-h8-long-churn", {"lens": (3000, 1), "churn": 10}),
        ("wide-h8-g8-window", {"q_heads": 64, "window": 33, "lens": (500, 17)}),
        ("wide-h16-alibi", {"q_heads": 64, "kv_heads": 16, "alibi": True, "lens": (260, 40)}),
        ("wide-h4-bs4", {"q_heads": 16, "kv_heads": 4, "block_size": 4, "lens": (700, 5)}),
        ("wide-h8-batch-decode", {"lens": (64, 100, 150, 200, 250, 300, 33, 17, 90, 128, 129, 255),
                                  "decode_steps": 3, "window": 200}),
        # sequences of <= 64 tokens: one split, so the paged first-tile lookup is speculated
        ("short-h8-bs16", {"lens": (64, 17, 33, 50, 1)}),
        ("short-h8-bs32-fork", {"block_size": 32, "lens": (40, 47, 20), "fork": (0, 6)}),
        # more (sequence, kv head) items than the H200 holds CTAs (264): several items per CTA
        ("multi-h8-batch40-churn", {"lens": tuple(17 + 23 * i % 290 for i in range(40)), "churn": 10}),
        ("multi-h8-batch36-bs8-alibi-window", {"block_size": 8, "alibi": True, "window": 50, "decode_steps": 2,
                                               "lens": tuple(5 + 37 * i % 200 for i in range(36))}),
    ]
    return [Case(name=name, **{**base, **kw}, seed=5000 + i) for i, (name, kw) in enumerate(specs)]


@pytest.mark.parametrize("variant", ["0", "4", "8", "10", "11"])
def test_cuda_oracle_wide_bf16_cases(kvx_cuda, monkeypatch, variant):
    from kvlab import ext, oracle
    monkeypatch.setenv("KVX_CUDA_VARIANT", variant)  # the kernel choice of the bf16 GQA-4 d128 path
    res = oracle.run(wide_cases(), ext.cuda_backend, "cuda")
    assert [r for r in res if not r.ok] == []
