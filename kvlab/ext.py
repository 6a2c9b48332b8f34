"""The compiled extension (kvlab/csrc, package `kvx`) as oracle backends, plus its build helper.

`cpu_backend` and `cuda_backend` have the oracle's backend signature, so the C++ and CUDA kernels
see exactly the cases, metadata, poisoned pools and tolerances the Python layouts see. The
"contiguous" layout reaches the kernel as the contiguous view its mapping would present
(`contiguous.materialize`), since a kernel behind an MMU reads (base, length) only; "virtual" does
so on the CPU too (`virtual.materialize`), and on the GPU for real: its pages are created and mapped
with the CUDA driver's VMM calls (`kvlab.gpu.vmm`) and the contiguous kernel reads the mapped range.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

from kvlab.layouts import contiguous, virtual

try:
    from model.errors import UsageError
except ImportError:  # in an oracle container only kvlab/ is mounted; there the message is what counts
    UsageError = RuntimeError

CSRC = Path(__file__).resolve().parent / "csrc"
RAW = {"f32": np.float32, "bf16": np.int16, "fp8": np.uint8}  # same bytes, types torch and ctypes take


def build(dest: Path, cuda: str = "OFF", quiet: bool = True) -> Path:
    """`pip wheel kvlab/csrc` into dest, unpacked to dest/site (a ctypes package needs no install)."""
    import os
    dest.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, KVX_CUDA=cuda)
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", str(CSRC), "-w", str(dest)]
    r = subprocess.run(cmd, env=env, capture_output=quiet, text=True)
    if r.returncode != 0:
        tail = (r.stderr or r.stdout or "")[-2000:] if quiet else ""
        raise UsageError(f"building the kvx wheel failed (pip wheel kvlab/csrc): {tail.strip().splitlines()[-1:]}")
    wheel = max(dest.glob("kvlab_kvx-*.whl"), key=lambda p: p.stat().st_mtime)
    site = dest / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    return site


def load(site: Path | None = None):
    if site is not None and str(site) not in sys.path:
        sys.path.insert(0, str(site))
    try:
        import kvx
    except ImportError as exc:
        raise UsageError(f"the kvx extension is not importable ({exc}); build it with `invoke oracle --backend ext`") from None
    return kvx


def _meta_arrays(name, meta) -> dict:
    if name == "paged":
        return {"block_table": meta.block_table, "seq_lens": meta.seq_lens}
    if name == "spans":
        return {"span_ptr": meta.span_ptr, "span_block": meta.span_block, "span_len": meta.span_len,
                "seq_lens": meta.seq_lens}
    if name in ("contiguous", "virtual"):
        return {"seq_lens": meta.seq_lens}
    order = np.argsort(meta.group_of_seq, kind="stable").astype(np.int32)
    gptr = np.zeros(len(meta.prefix_len) + 1, np.int32)
    gptr[1:] = np.cumsum(np.bincount(meta.group_of_seq, minlength=len(meta.prefix_len)))
    return {"group_of_seq": meta.group_of_seq, "group_ptr": gptr, "group_members": order,
            "prefix_len": meta.prefix_len, "pre_ptr": meta.pre_ptr, "pre_block": meta.pre_block,
            "pre_len": meta.pre_len, "suf_ptr": meta.suf_ptr, "suf_block": meta.suf_block,
            "suf_len": meta.suf_len, "seq_lens": meta.seq_lens}


def _inputs(name, meta, store):
    if name == "contiguous":
        k, v = contiguous.materialize(meta, store)
    elif name == "virtual":
        k, v = virtual.materialize(meta, store)
    else:
        k, v = store.k, store.v
    raw = RAW[store.dtype]
    return np.ascontiguousarray(k.view(raw)), np.ascontiguousarray(v.view(raw))


def _hints(meta) -> dict:
    hints = {"max_seq_len": int(meta.seq_lens.max())}
    if hasattr(meta, "group_of_seq"):
        hints["max_group"] = int(np.bincount(meta.group_of_seq).max())
        hints["max_prefix_len"] = int(meta.prefix_len.max()) if len(meta.prefix_len) else 0
    return hints


def _kwargs(store, p):
    return dict(kv_dtype=store.dtype, sm_scale=float(p.scale), window=int(p.window),
                alibi=None if p.alibi is None else np.array(p.alibi, np.float32),
                k_scale=store.k_scale, v_scale=store.v_scale)


def cpu_backend(name, meta, q, store, p, threads: int = 0):
    kvx = load()
    k, v = _inputs(name, meta, store)
    arrays = {key: np.ascontiguousarray(a, np.int32) for key, a in _meta_arrays(name, meta).items()}
    out, lse = kvx.attend(_kernel(name), np.ascontiguousarray(q, np.float32), k, v, arrays, threads=threads,
                          **_kwargs(store, p))
    return out.astype(np.float64), lse.astype(np.float64)


def _kernel(name):
    return "contiguous" if name == "virtual" else name


def _vmm_inputs(meta, store):
    """K and V of a virtual-contiguous Meta mapped for real with the driver's granule: the plan is
    redone at page = lcm(granule, token row) from the manager's tables, pages created, mapped,
    written. Returns two kvlab.gpu.vmm.Mapped (close() them)."""
    from kvlab.gpu import vmm
    if (np.asarray(meta.base) != np.arange(len(meta.seq_lens)) * meta.reserve).any():
        raise ValueError("virtual: every base must start its sequence's own reserved range")
    drv = driver()
    row = store.k[0, 0].nbytes
    pt = drv.page_bytes(row) // row
    plan = virtual.plan(meta.tables, meta.seq_lens, meta.block_size, pt)
    pk, pv = virtual.pages(plan, store, raw=True)
    raw = RAW[store.dtype]
    k = vmm.Mapped.of_plan(drv, plan, pk.view(raw))
    try:
        v = vmm.Mapped.of_plan(drv, plan, pv.view(raw))
    except Exception:
        k.close()
        raise
    return k, v


_DRIVER = []


def driver():
    """The process's one kvlab.gpu.vmm.Driver (the CUDA driver through ctypes)."""
    if not _DRIVER:
        from kvlab.gpu import vmm
        _DRIVER.append(vmm.Driver())
    return _DRIVER[0]


def cuda_backend(name, meta, q, store, p):
    import torch
    kvx = load()
    dev = torch.device("cuda")
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(dev)  # noqa: E731
    if name == "virtual":
        torch.cuda.init()
        k, v = _vmm_inputs(meta, store)
        try:
            return _cuda_call(kvx, "contiguous", meta, q, store, p, k, v, t)
        finally:
            k.close(), v.close()
    k, v = _inputs(name, meta, store)
    return _cuda_call(kvx, name, meta, q, store, p, t(k), t(v), t)


def _cuda_call(kvx, name, meta, q, store, p, k, v, t):
    import torch
    arrays = {key: t(np.asarray(a, np.int32)) for key, a in _meta_arrays(name, meta).items()}
    kw = _kwargs(store, p)
    kw.update({key: None if kw[key] is None else t(np.asarray(kw[key], np.float32))
               for key in ("alibi", "k_scale", "v_scale")})
    out, lse = kvx.attend(name, t(np.asarray(q, np.float32)), k, v, arrays, device="cuda",
                          hints=_hints(meta), **kw)
    torch.cuda.synchronize()
    return out.double().cpu().numpy(), lse.double().cpu().numpy()
