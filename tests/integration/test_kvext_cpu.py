"""The C++ extension, built as a wheel exactly as the build stage does (`pip wheel kvlab/csrc`),
passes the same oracle as the Python layouts and refuses metadata that points outside the pool."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from kvlab import ext, oracle, scenario
from kvlab.layouts import LAYOUTS, broken

NAMED = scenario.named_cases()


@pytest.fixture(scope="session")
def kvx(tmp_path_factory):
    site = ext.build(tmp_path_factory.mktemp("kvx"), cuda="OFF")
    return ext.load(site)


def test_wheel_is_python_version_independent(kvx):
    assert kvx.__file__ and kvx.isa() in {"generic", "avx2", "avx512"}
    assert kvx.copy_bandwidth(16 << 20, 3) > 0


def test_named_and_random_cases_pass_on_the_extension(kvx):
    cases = NAMED + scenario.random_cases(200)
    res = oracle.run(cases, ext.cpu_backend, "ext")
    assert len(res) == len(cases) * len(LAYOUTS)
    assert [(r.case, r.layout) for r in res if not r.ok] == []


def test_generic_vector_build_passes_too(kvx):
    # the ISA is chosen once per process: check the portable build in a fresh one
    site = os.path.dirname(os.path.dirname(kvx.__file__))
    code = ("import sys; sys.path.insert(0, %r); import kvx; assert kvx.isa() == 'generic'\n"
            "from kvlab import ext, oracle, scenario\n"
            "res = oracle.run(scenario.named_cases(), ext.cpu_backend, 'ext')\n"
            "assert all(r.ok for r in res), [r.case for r in res if not r.ok]\n") % site
    env = dict(os.environ, KVX_ISA="generic")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


@pytest.mark.parametrize("name", ["spans-end+1", "spans-end-1", "contiguous-base+1"])
def test_broken_layouts_are_caught_on_the_extension(kvx, name):
    res = oracle.run(NAMED, ext.cpu_backend, "ext", layouts={name: broken.BROKEN[name]})
    assert all(not r.ok for r in res), [r.case for r in res if r.ok]


def test_split_kv_merge_matches_one_pass(kvx):
    built = scenario.build(next(c for c in NAMED if c.name == "gqa-32-8-d128"))
    meta = LAYOUTS["spans"].build(built.state)
    args = dict(kv_dtype="f32", sm_scale=built.case.params().scale)
    arrays = {"span_ptr": meta.span_ptr, "span_block": meta.span_block, "span_len": meta.span_len,
              "seq_lens": meta.seq_lens}
    one, l1 = kvx.attend("spans", built.q, built.store.k, built.store.v, arrays, splits=1, threads=1, **args)
    many, l7 = kvx.attend("spans", built.q, built.store.k, built.store.v, arrays, splits=7, threads=2, **args)
    assert np.abs(one - many).max() < 1e-5 and np.abs(l1 - l7).max() < 1e-5


def _hybrid_vs_spans(kvx, kv_dtype):
    """Max |hybrid - spans| (outputs and lse) where hybrid cuts a prefix item into kv-head ranges: 16
    members x 4 query heads per kv head x d 128 = 32 KB of accumulators per kv head, so 2 heads of 8
    per item; the second, 3-member group keeps all 8 in one. Per-head scales and ALiBi check that a
    range reads its own heads' K/V, scales and slopes."""
    import ml_dtypes
    rng = np.random.default_rng(3)
    Hq, H, D, bs = 32, 8, 128, 16
    groups = [(16, 300), (3, 100)]  # (members, prefix tokens)
    raw = {"bf16": ml_dtypes.bfloat16, "fp8": ml_dtypes.float8_e4m3fn}[kv_dtype]
    blocks, lens, spans, hyb = 0, [], [], {k: [] for k in ("pre_block", "pre_len", "suf_block", "suf_len", "gos")}
    for g, (members, P) in enumerate(groups):
        pre, blocks = blocks, blocks + (P + bs - 1) // bs
        hyb["pre_block"].append(pre), hyb["pre_len"].append(P)
        for _ in range(members):
            own = int(rng.integers(1, 80))
            spans.append([(pre, P), (blocks, own)])
            hyb["suf_block"].append(blocks), hyb["suf_len"].append(own), hyb["gos"].append(g)
            lens.append(P + own)
            blocks += (own + bs - 1) // bs
    B, i32 = len(lens), (lambda x: np.array(x, np.int32))  # noqa: E731
    k, v = (rng.standard_normal((blocks, bs, H, D)).astype(raw).view(ext.RAW[kv_dtype]) for _ in range(2))
    q = rng.standard_normal((B, Hq, D)).astype(np.float32)
    sizes = [m for m, _ in groups]
    metas = {
        "spans": {"span_ptr": i32([2 * b for b in range(B + 1)]), "span_block": i32([blk for s in spans for blk, _ in s]),
                  "span_len": i32([n for s in spans for _, n in s]), "seq_lens": i32(lens)},
        "hybrid": {"group_of_seq": i32(hyb["gos"]), "group_ptr": i32(np.cumsum([0] + sizes)),
                   "group_members": i32(range(B)), "prefix_len": i32(hyb["pre_len"]), "pre_ptr": i32(range(len(groups) + 1)),
                   "pre_block": i32(hyb["pre_block"]), "pre_len": i32(hyb["pre_len"]), "suf_ptr": i32(range(B + 1)),
                   "suf_block": i32(hyb["suf_block"]), "suf_len": i32(hyb["suf_len"]), "seq_lens": i32(lens)},
    }
    kw = dict(kv_dtype=kv_dtype, sm_scale=D ** -0.5, threads=2, alibi=-rng.uniform(0, 0.05, Hq),
              k_scale=rng.uniform(0.5, 2, H), v_scale=rng.uniform(0.5, 2, H))
    (o1, l1), (o2, l2) = (kvx.attend(name, q, k, v, meta, **kw) for name, meta in metas.items())
    return max(np.abs(o1 - o2).max(), np.abs(l1 - l2).max())


@pytest.mark.parametrize("kv_dtype", ["bf16", "fp8"])
def test_hybrid_prefix_split_by_kv_heads_matches_spans(kvx, kv_dtype):
    assert _hybrid_vs_spans(kvx, kv_dtype) < 2e-5


@pytest.mark.parametrize("isa", ["avx2", "generic"])
def test_hybrid_prefix_split_by_kv_heads_on_the_other_builds(kvx, isa):
    site = os.path.dirname(os.path.dirname(kvx.__file__))
    code = ("import sys; sys.path.insert(0, %r); import kvx\n"
            "from tests.integration.test_kvext_cpu import _hybrid_vs_spans\n"
            "print(kvx.isa(), max(_hybrid_vs_spans(kvx, t) for t in ('bf16', 'fp8')))\n") % site
    r = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, KVX_ISA=isa), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    got, err = r.stdout.split()
    if got != isa:
        pytest.skip(f"this CPU has no {isa}")
    assert float(err) < 2e-5


def test_metadata_outside_the_pool_is_refused(kvx):
    built = scenario.build(NAMED[0])
    meta = LAYOUTS["paged"].build(built.state)
    bad = meta.block_table.copy()
    bad[0, 0] = built.store.k.shape[0]
    with pytest.raises(ValueError, match="outside the pool"):
        kvx.attend("paged", built.q, built.store.k, built.store.v, {"block_table": bad, "seq_lens": meta.seq_lens},
                   kv_dtype="f32", sm_scale=0.25)
