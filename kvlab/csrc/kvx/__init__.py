"""kvx: decode attention over a KV cache through four layouts, on CPU (C++/OpenMP) or GPU (CUDA).

    out, lse = kvx.attend("spans", q, k, v, meta, kv_dtype="bf16", sm_scale=0.088)

q: float32 [B, Hq, D]; k, v: the cache [num_blocks, block_size, Hkv, D] (for "contiguous":
[B, stride, Hkv, D]) holding float32, bf16 (2-byte) or fp8 e4m3 (1-byte) values; meta: int32
arrays named as in kvx.h (see LAYOUT_KEYS). On device="cuda" every array is a torch CUDA tensor and
`hints` carries max_seq_len (and max_group for "hybrid"), which the launch needs on the host.
Semantics: kvlab/reference.py. The library is a C ABI loaded with ctypes (no Python ABI in it).
"""

from __future__ import annotations

import ctypes
from pathlib import Path

HERE = Path(__file__).resolve().parent
DTYPES = {"f32": 0, "bf16": 1, "fp8": 2}
ITEMSIZE = {"f32": 4, "bf16": 2, "fp8": 1}
LAYOUT_KEYS = {
    "paged": ("block_table", "seq_lens"),
    "spans": ("span_ptr", "span_block", "span_len", "seq_lens"),
    "contiguous": ("seq_lens",),
    "hybrid": ("group_of_seq", "group_ptr", "group_members", "prefix_len", "pre_ptr", "pre_block", "pre_len",
               "suf_ptr", "suf_block", "suf_len", "seq_lens"),
}


class Params(ctypes.Structure):
    _fields_ = [(n, ctypes.c_int32) for n in ("num_seqs", "q_heads", "kv_heads", "head_dim", "block_size", "kv_dtype",
                                               "window", "num_threads", "num_splits", "max_seq_len", "max_group")] + [
        ("sm_scale", ctypes.c_float), ("alibi", ctypes.c_void_p), ("k_scale", ctypes.c_void_p), ("v_scale", ctypes.c_void_p),
        ("stream", ctypes.c_void_p), ("max_prefix_len", ctypes.c_int32)]


_libs: dict[str, ctypes.CDLL] = {}


def library(device: str = "cpu") -> ctypes.CDLL:
    name = {"cpu": "libkvx.so", "cuda": "libkvx_cuda.so"}[device]
    if device not in _libs:
        path = HERE / name
        if not path.exists():
            raise RuntimeError(f"kvx: {name} was not built (CUDA needs nvcc at build time)" if device == "cuda"
                               else f"kvx: {path} missing; build the wheel with `pip wheel kvlab/csrc`")
        lib = ctypes.CDLL(str(path))
        if device == "cpu":
            lib.kvx_copy_bandwidth.restype = ctypes.c_double
            lib.kvx_copy_bandwidth.argtypes = [ctypes.c_size_t, ctypes.c_int32, ctypes.c_int32]
            lib.kvx_isa.restype = ctypes.c_char_p
            lib.kvx_last_error.restype = ctypes.c_char_p
        else:
            lib.kvx_cuda_last_error.restype = ctypes.c_char_p
        _libs[device] = lib
    return _libs[device]


def has_cuda() -> bool:
    return (HERE / "libkvx_cuda.so").exists()


def isa() -> str:
    return library("cpu").kvx_isa().decode()


def copy_bandwidth(nbytes: int = 1 << 30, reps: int = 5, threads: int = 0) -> float:
    """Bytes read + written per second by a parallel memcpy (the CPU's practical ceiling)."""
    return library("cpu").kvx_copy_bandwidth(nbytes, reps, threads)


def _ptr(a, device):
    if a is None:
        return None
    if device == "cuda":
        return ctypes.c_void_p(a.data_ptr())
    return ctypes.c_void_p(a.ctypes.data)


def _check_cpu(layout, q, k, v, meta, kv_dtype):
    import numpy as np  # imported here: `import kvx; kvx.isa()` works in an image without numpy
    B, Hq, D = q.shape
    if q.dtype != np.float32 or not q.flags.c_contiguous:
        raise ValueError("q must be C-contiguous float32 [B, Hq, D]")
    for name, a in (("k", k), ("v", v)):
        if a.ndim != 4 or a.itemsize != ITEMSIZE[kv_dtype] or not a.flags.c_contiguous or a.shape[-1] != D:
            raise ValueError(f"{name} must be C-contiguous [.., .., Hkv, {D}] of {kv_dtype}")
    for key in LAYOUT_KEYS[layout]:
        a = meta[key]
        if a.dtype != np.int32 or not a.flags.c_contiguous:
            raise ValueError(f"meta[{key!r}] must be C-contiguous int32")
    nb, bs = k.shape[0], k.shape[1]
    lens = meta["seq_lens"]
    if len(lens) != B or (lens <= 0).any():
        raise ValueError("seq_lens must hold one positive length per query")
    # bounds: the kernels trust the metadata, so a bad one is refused here, not read out of bounds
    if layout == "paged":
        bt = meta["block_table"]
        used = np.arange(bt.shape[1])[None, :] < -(-lens[:, None] // bs)
        if bt.shape[0] != B or (bt[used] < 0).any() or (bt[used] >= nb).any() or (-(-lens // bs) > bt.shape[1]).any():
            raise ValueError("block_table addresses blocks outside the pool")
    elif layout in ("spans", "hybrid"):
        for pre in (("span",) if layout == "spans" else ("pre", "suf")):
            blk, ln = meta[f"{pre}_block"], meta[f"{pre}_len"]
            if len(blk) and ((blk < 0).any() or (ln < 0).any() or ((blk.astype(np.int64) * bs + ln) > nb * bs).any()):
                raise ValueError(f"{pre} spans address slots outside the pool")
    elif layout == "contiguous":
        if k.shape[0] != B or (lens > k.shape[1]).any():
            raise ValueError("contiguous K/V must be [B, stride >= seq_len, Hkv, D]")


def attend(layout: str, q, k, v, meta: dict, *, kv_dtype: str, sm_scale: float, window: int = 0, alibi=None,
           k_scale=None, v_scale=None, threads: int = 0, splits: int = 0, device: str = "cpu", hints=None,
           out=None, lse=None):
    if layout not in LAYOUT_KEYS:
        raise ValueError(f"unknown layout {layout!r}; one of {sorted(LAYOUT_KEYS)}")
    if kv_dtype not in DTYPES:
        raise ValueError(f"unknown kv_dtype {kv_dtype!r}; one of {sorted(DTYPES)}")
    B, Hq, D = q.shape
    Hkv = k.shape[2]
    hints = hints or {}
    if device == "cpu":
        import numpy as np
        _check_cpu(layout, q, k, v, meta, kv_dtype)
        out = np.empty((B, Hq, D), np.float32) if out is None else out
        lse = np.empty((B, Hq), np.float32) if lse is None else lse
        f32 = lambda a: None if a is None else np.ascontiguousarray(a, np.float32)  # noqa: E731
        alibi, k_scale, v_scale = f32(alibi), f32(k_scale), f32(v_scale)
        stream = None
    else:
        import torch
        stream = ctypes.c_void_p(torch.cuda.current_stream(q.device).cuda_stream)  # graphs capture it
        out = torch.empty((B, Hq, D), dtype=torch.float32, device=q.device) if out is None else out
        lse = torch.empty((B, Hq), dtype=torch.float32, device=q.device) if lse is None else lse
    p = Params(B, Hq, Hkv, D, k.shape[1], DTYPES[kv_dtype], window, threads, splits,
               int(hints.get("max_seq_len", 0)), int(hints.get("max_group", 0)), sm_scale,
               _ptr(alibi, device), _ptr(k_scale, device), _ptr(v_scale, device), stream,
               int(hints.get("max_prefix_len", -1)))
    lib = library(device)
    prefix = "kvx_" if device == "cpu" else "kvx_cuda_"
    ptr = lambda a: _ptr(a, device)  # noqa: E731
    common = (ctypes.byref(p), ptr(q), ptr(k), ptr(v))
    m = meta
    if layout == "paged":
        args = (ptr(m["block_table"]), ctypes.c_int32(m["block_table"].shape[1]), ptr(m["seq_lens"]))
    elif layout == "spans":
        args = (ptr(m["span_ptr"]), ptr(m["span_block"]), ptr(m["span_len"]), ptr(m["seq_lens"]))
    elif layout == "contiguous":
        args = (ctypes.c_int32(k.shape[1]), ptr(m["seq_lens"]))
    else:
        args = (ctypes.c_int32(len(m["prefix_len"])),) + tuple(ptr(m[key]) for key in LAYOUT_KEYS["hybrid"])
    rc = getattr(lib, prefix + layout)(*common, *args, ptr(out), ptr(lse))
    if rc != 0:
        err = lib.kvx_last_error() if device == "cpu" else lib.kvx_cuda_last_error()
        raise RuntimeError(f"kvx {device} {layout}: {err.decode()}")
    return out, lse
