"""Float64 reference decode attention on plain contiguous K/V, plus the log-sum-exp merge.

Semantics every layout and kernel must match (one query per sequence at position L-1):
  score[h, t] = scale * q[h]·k[t, h // group] + alibi[h] * (t - (L-1))
  keys with t <= (L-1) - window are masked when window > 0
  out[h] = softmax_t(score[h]) @ v[:, h // group];  lse[h] = log Σ_t exp(score[h, t])
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class AttnParams:
    q_heads: int
    kv_heads: int
    head_dim: int
    scale: float
    window: int = 0                      # 0: attend to everything
    alibi: tuple[float, ...] | None = None  # one slope per query head

    @property
    def group(self) -> int:
        return self.q_heads // self.kv_heads


def alibi_slopes(q_heads: int) -> tuple[float, ...]:
    """The ALiBi paper's geometric slopes (for a power-of-two head count, interpolated otherwise)."""
    n = 2 ** int(np.floor(np.log2(q_heads)))
    base = [2 ** (-8 * (i + 1) / n) for i in range(n)]
    extra = [2 ** (-4 * (2 * i + 1) / n) for i in range(q_heads - n)]
    return tuple(base + extra)


def partial_attention(q, k, v, pos, qpos, p: AttnParams):
    """q [H, D]; k, v [T, Hkv, D] float64 at logical positions pos [T]; qpos scalar or [H].

    Returns (out [H, D], lse [H]); a row with every key masked gives out 0 and lse -inf.
    """
    q = np.asarray(q, np.float64)
    kh = np.repeat(np.asarray(k, np.float64), p.group, axis=1)  # [T, H, D]
    vh = np.repeat(np.asarray(v, np.float64), p.group, axis=1)
    s = p.scale * np.einsum("hd,thd->ht", q, kh)
    rel = pos[None, :] - np.broadcast_to(np.asarray(qpos), (p.q_heads,))[:, None]  # <= 0
    if p.alibi is not None:
        s = s + np.asarray(p.alibi, np.float64)[:, None] * rel
    if p.window > 0:
        s = np.where(rel > -p.window, s, -np.inf)
    if s.shape[1] == 0:
        return np.zeros_like(q), np.full(p.q_heads, -np.inf)
    m = s.max(axis=1)
    safe = np.where(np.isfinite(m), m, 0.0)
    e = np.exp(s - safe[:, None])
    tot = e.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.einsum("ht,thd->hd", e, vh) / np.where(tot > 0, tot, 1.0)[:, None]
        lse = np.where(tot > 0, safe + np.log(tot), -np.inf)
    return out, lse


def reference_decode(q, k, v, p: AttnParams):
    """q [H, D]; k, v [L, Hkv, D] contiguous float64. The oracle's ground truth."""
    L = k.shape[0]
    return partial_attention(q, k, v, np.arange(L), L - 1, p)


def merge(o1, l1, o2, l2):
    """Log-sum-exp merge of two partial attentions over disjoint key sets (cascade / Hydragen)."""
    m = np.maximum(l1, l2)
    safe = np.where(np.isfinite(m), m, 0.0)
    w1, w2 = np.exp(l1 - safe), np.exp(l2 - safe)
    tot = w1 + w2
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (o1 * w1[..., None] + o2 * w2[..., None]) / np.where(tot > 0, tot, 1.0)[..., None]
        lse = np.where(tot > 0, safe + np.log(tot), -np.inf)
    return out, lse
