"""Physical KV storage beside the manager: K and V of shape [num_blocks, block_size, kv_heads, head_dim].

Stored as float32, bfloat16 or float8_e4m3fn (ml_dtypes); fp8 carries per-kv-head scales (a
per-tensor scale is the same value repeated). Every slot starts as NaN, and a block is re-poisoned
whenever the manager hands it out, so a layout that reads a slot nothing wrote returns NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np

from kvlab.blocks import CopyOp

DTYPES = {"f32": np.dtype(np.float32), "bf16": np.dtype(ml_dtypes.bfloat16), "fp8": np.dtype(ml_dtypes.float8_e4m3fn)}
FP8_MAX = 448.0


@dataclass(frozen=True)
class KVShape:
    num_blocks: int
    block_size: int
    kv_heads: int
    head_dim: int


class KVStore:
    def __init__(self, shape: KVShape, dtype: str, k_scale=None, v_scale=None):
        self.shape, self.dtype = shape, dtype
        dims = (shape.num_blocks, shape.block_size, shape.kv_heads, shape.head_dim)
        self.k = np.full(dims, np.nan, dtype=DTYPES[dtype])
        self.v = np.full(dims, np.nan, dtype=DTYPES[dtype])
        ones = np.ones(shape.kv_heads, np.float32)
        self.k_scale = ones if k_scale is None else np.asarray(k_scale, np.float32).reshape(-1) * ones
        self.v_scale = ones if v_scale is None else np.asarray(v_scale, np.float32).reshape(-1) * ones

    def poison(self, block_ids) -> None:
        self.k[list(block_ids)] = np.nan
        self.v[list(block_ids)] = np.nan

    def write(self, slot: int, k: np.ndarray, v: np.ndarray) -> None:
        """k, v: [kv_heads, head_dim] in float; quantized here with the store's scales."""
        b, o = divmod(slot, self.shape.block_size)
        self.k[b, o] = (k / self.k_scale[:, None]).astype(self.k.dtype)
        self.v[b, o] = (v / self.v_scale[:, None]).astype(self.v.dtype)

    def copy(self, op: CopyOp) -> None:
        self.k[op.dst] = self.k[op.src]
        self.v[op.dst] = self.v[op.src]

    def dequant(self, kv: np.ndarray, scale: np.ndarray) -> np.ndarray:
        """float64 values the kernel should see: stored value × scale of its kv head."""
        return kv.astype(np.float64) * scale.astype(np.float64)[:, None]

    def stored(self, k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Round-trip float K/V [..., kv_heads, head_dim] through this store's dtype and scales."""
        kq = (k / self.k_scale[:, None]).astype(self.k.dtype).astype(np.float64) * self.k_scale[:, None]
        vq = (v / self.v_scale[:, None]).astype(self.v.dtype).astype(np.float64) * self.v_scale[:, None]
        return kq, vq


def fp8_scales(x: np.ndarray, per_head: bool) -> np.ndarray:
    """Calibrate e4m3 scales from values [..., kv_heads, head_dim]: amax / 448, per head or per tensor."""
    heads = x.shape[-2]
    if per_head:
        amax = np.abs(x.reshape(-1, heads, x.shape[-1])).max(axis=(0, 2))
    else:
        amax = np.full(heads, np.abs(x).max())
    return np.maximum(amax, 1e-12).astype(np.float32) / FP8_MAX
