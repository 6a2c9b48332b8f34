"""The compiled extension (kvlab/csrc, package `kvx`) as oracle backends, plus its build helper.

`cpu_backend` and `cuda_backend` have the oracle's backend signature, so the C++ and CUDA kernels
see exactly the cases, metadata, poisoned pools and tolerances the Python layouts see. The
virtual-contiguous layout reaches the kernel as the contiguous view its mapping would present
(`contiguous.materialize`), since a kernel behind an MMU reads (base, length) only.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

from kvlab.layouts import contiguous

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
    if name == "contiguous":
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
    else:
        k, v = store.k, store.v
    raw = RAW[store.dtype]
    return np.ascontiguousarray(k.view(raw)), np.ascontiguousarray(v.view(raw))


def _hints(meta) -> dict:
    hints = {"max_seq_len": int(meta.seq_lens.max())}
    if hasattr(meta, "group_of_seq"):
        hints["max_group"] = int(np.bincount(meta.group_of_seq).max())
    return hints


def _kwargs(store, p):
    return dict(kv_dtype=store.dtype, sm_scale=float(p.scale), window=int(p.window),
                alibi=None if p.alibi is None else np.array(p.alibi, np.float32),
                k_scale=store.k_scale, v_scale=store.v_scale)


def cpu_backend(name, meta, q, store, p, threads: int = 0):
    kvx = load()
    k, v = _inputs(name, meta, store)
    arrays = {key: np.ascontiguousarray(a, np.int32) for key, a in _meta_arrays(name, meta).items()}
    out, lse = kvx.attend(name, np.ascontiguousarray(q, np.float32), k, v, arrays, threads=threads,
                          **_kwargs(store, p))
    return out.astype(np.float64), lse.astype(np.float64)


def cuda_backend(name, meta, q, store, p):
    import torch
    kvx = load()
    dev = torch.device("cuda")
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(dev)  # noqa: E731
    k, v = _inputs(name, meta, store)
    arrays = {key: t(np.asarray(a, np.int32)) for key, a in _meta_arrays(name, meta).items()}
    kw = _kwargs(store, p)
    kw.update({key: None if kw[key] is None else t(np.asarray(kw[key], np.float32))
               for key in ("alibi", "k_scale", "v_scale")})
    out, lse = kvx.attend(name, t(np.asarray(q, np.float32)), t(k), t(v), arrays, device="cuda",
                          hints=_hints(meta), **kw)
    torch.cuda.synchronize()
    return out.double().cpu().numpy(), lse.double().cpu().numpy()
