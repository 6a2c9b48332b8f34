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


def test_metadata_outside_the_pool_is_refused(kvx):
    built = scenario.build(NAMED[0])
    meta = LAYOUTS["paged"].build(built.state)
    bad = meta.block_table.copy()
    bad[0, 0] = built.store.k.shape[0]
    with pytest.raises(ValueError, match="outside the pool"):
        kvx.attend("paged", built.q, built.store.k, built.store.v, {"block_table": bad, "seq_lens": meta.seq_lens},
                   kv_dtype="f32", sm_scale=0.25)
