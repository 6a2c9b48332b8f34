"""Turn a case (data) into real manager state: prompts, prefix hits, decode appends, forks with
copy-on-write, churn, and a KV store holding each token's K/V where the manager put it.

K/V of a token is a pure function of the tokens up to it, so a prefix-cache hit that points at the
wrong block, or a missing copy-on-write, changes values and the oracle sees it.
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from kvlab.blocks import BlockManager
from kvlab.layouts import State, snapshot
from kvlab.reference import AttnParams, alibi_slopes
from kvlab.storage import KVShape, KVStore, fp8_scales

CASES_FILE = Path(__file__).with_name("cases.toml")


@dataclass(frozen=True)
class Case:
    name: str
    q_heads: int
    kv_heads: int
    head_dim: int
    block_size: int
    dtype: str
    fp8_scale: str
    alibi: bool
    window: int
    lens: tuple[int, ...]
    shared_prefix: int
    decode_steps: int
    fork: tuple[int, ...]
    churn: int
    warm_prefix: bool
    salted: bool
    seed: int = 0

    def params(self) -> AttnParams:
        return AttnParams(self.q_heads, self.kv_heads, self.head_dim, 1.0 / np.sqrt(self.head_dim),
                          self.window, alibi_slopes(self.q_heads) if self.alibi else None)


@dataclass(frozen=True)
class Built:
    case: Case
    state: State
    store: KVStore
    q: np.ndarray          # float32 [B, Hq, D]
    k_src: list            # per sequence float64 [L, Hkv, D], unquantized
    v_src: list
    k_stored: list         # per sequence float64 [L, Hkv, D], as the cache holds them
    v_stored: list


def named_cases(path: Path = CASES_FILE) -> list[Case]:
    data = tomllib.loads(path.read_text())
    base = data["defaults"]
    names = {f.name for f in fields(Case)}
    out = []
    for i, raw in enumerate(data["case"]):
        unknown = set(raw) - names
        if unknown:
            raise ValueError(f"case {raw.get('name')}: unknown keys {sorted(unknown)}")
        merged = {**base, **raw, "seed": 1000 + i}
        merged["lens"] = tuple(merged["lens"])
        merged["fork"] = tuple(merged["fork"])
        out.append(Case(**merged))
    return out


def random_cases(n: int, seed: int = 7) -> list[Case]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        kvh = int(rng.choice([1, 2, 4]))
        qh = kvh * int(rng.choice([1, 2, 4]))
        bs = int(rng.choice([1, 4, 8, 16, 32]))
        nseq = int(rng.integers(1, 6))
        shared = int(rng.choice([0, 0, bs, 3 * bs + 1, 40]))
        lens = tuple(int(x) for x in shared + 1 + rng.integers(0, 120, nseq))
        fork = (int(rng.integers(0, nseq)), int(rng.integers(1, 2 * bs + 2))) if rng.random() < 0.3 else ()
        dtype = str(rng.choice(["f32", "f32", "bf16", "fp8"]))
        out.append(Case(
            name=f"random-{i:03d}", q_heads=qh, kv_heads=kvh, head_dim=int(rng.choice([8, 16, 32, 64])),
            block_size=bs, dtype=dtype, fp8_scale=str(rng.choice(["tensor", "head"])),
            alibi=bool(rng.random() < 0.3), window=int(rng.choice([0, 0, 0, 1, 7, 33, 200])),
            lens=lens, shared_prefix=shared, decode_steps=int(rng.choice([0, 0, 3, 17])),
            fork=fork, churn=int(rng.choice([0, 0, 10, 40])), warm_prefix=bool(rng.random() < 0.2),
            salted=bool(rng.random() < 0.1), seed=seed * 100_000 + i))
    return out


def wide_cases():
    """bf16 head_dim-128 GQA cases with 4+ kv heads: the named and random cases have none with 8 kv
    heads, so these reach the tensor-core kernels that take several kv heads per CTA (wide_kernel),
    long sequences (many splits: the fused combine), block sizes that break the per-tile lookup, and
    batches with more items than resident CTAs (mma_multi_kernel)."""
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


class _Content:
    """K/V per token as a function of the token chain (cached by chain key)."""

    def __init__(self, kv_heads: int, head_dim: int, seed: int):
        self.shape, self.seed, self.memo = (2, kv_heads, head_dim), seed, {}

    def of(self, tokens: list[int]) -> tuple[np.ndarray, np.ndarray]:
        key, ks, vs = hashlib.sha256(str(self.seed).encode()).digest(), [], []
        for t in tokens:
            key = hashlib.sha256(key + int(t).to_bytes(8, "little", signed=True)).digest()
            if key not in self.memo:
                self.memo[key] = np.random.default_rng(int.from_bytes(key[:8], "little")).standard_normal(self.shape)
            kv = self.memo[key]
            ks.append(kv[0]), vs.append(kv[1])
        return np.array(ks), np.array(vs)


def _plan_tokens(case: Case, rng) -> tuple[list[list[int]], list[int]]:
    """Final token lists of the batch (forked children last) and each prompt length."""
    prefix = [int(x) for x in rng.integers(0, 50_000, case.shared_prefix)]
    toks, prompts = [], []
    for L in case.lens:
        prompt_len = max(1, L - case.decode_steps)
        body = (prefix + [int(x) for x in rng.integers(50_000, 100_000, max(0, L - len(prefix)))])[:L]
        toks.append(body), prompts.append(prompt_len)
    if case.fork:
        parent, extra = case.fork
        toks.append(toks[parent] + [int(x) for x in rng.integers(0, 100_000, extra)])
        toks[parent] = toks[parent] + [int(x) for x in rng.integers(0, 100_000, extra)]
    return toks, prompts


def build(case: Case) -> Built:
    rng = np.random.default_rng(case.seed)
    bs = case.block_size
    toks, prompts = _plan_tokens(case, rng)
    content = _Content(case.kv_heads, case.head_dim, case.seed)
    kv = [content.of(t) for t in toks]
    k_all = np.concatenate([k for k, _ in kv])
    v_all = np.concatenate([v for _, v in kv])
    per_head = case.fp8_scale == "head"
    ks, vs = (fp8_scales(k_all, per_head), fp8_scales(v_all, per_head)) if case.dtype == "fp8" else (None, None)

    need = sum(-(-len(t) // bs) + 2 for t in toks) + case.churn * 4 + 8
    mgr = BlockManager(need * 2, bs)
    store = KVStore(KVShape(need * 2, bs, case.kv_heads, case.head_dim), case.dtype, ks, vs)

    def admit(sid, tokens, salt=None):
        alloc = mgr.allocate(sid, tokens, salt=salt)
        store.poison(mgr.table(sid)[alloc.num_cached_tokens // bs:])  # reused blocks hold stale K/V
        k, v = content.of(tokens)
        for pos, slot in zip(range(alloc.num_cached_tokens, len(tokens)), alloc.new_slots):
            store.write(slot, k[pos], v[pos])

    def extend(sid, tokens):
        start = mgr.seq_len(sid)
        k, v = content.of(tokens)
        for pos in range(start, len(tokens)):
            if pos % bs == 0 or mgr.seqs[sid].table[-1].ref_cnt > 1:
                # a fresh block (new or copy-on-write target) is re-poisoned before use
                slot, copy = _append_poisoned(mgr, store, sid, tokens[pos])
            else:
                slot, copy = mgr.append(sid, tokens[pos])
            store.write(slot, k[pos], v[pos])

    _churn(mgr, case, rng)
    if case.warm_prefix and case.shared_prefix:
        admit("warm", toks[0][: case.shared_prefix + 1])
        mgr.free("warm")
    ids = [f"s{i}" for i in range(len(case.lens))]
    for i, sid in enumerate(ids):
        admit(sid, toks[i][: prompts[i]], salt=f"salt{i}" if case.salted else None)
        extend(sid, toks[i][: case.lens[i]])
    if case.fork:
        parent, _ = case.fork
        mgr.fork(ids[parent], "fork")
        extend(ids[parent], toks[parent])
        extend("fork", toks[-1])
        ids.append("fork")

    want = list(case.lens) + ([case.lens[case.fork[0]] + case.fork[1]] if case.fork else [])
    if case.fork:
        want[case.fork[0]] = want[-1]
    assert [mgr.seq_len(s) for s in ids] == want, f"{case.name}: scenario built the wrong lengths"
    q = rng.standard_normal((len(ids), case.q_heads, case.head_dim)).astype(np.float32)
    k_src = [content.of(toks[i])[0] for i in range(len(ids))]
    v_src = [content.of(toks[i])[1] for i in range(len(ids))]
    stored = [store.stored(k, v) for k, v in zip(k_src, v_src)]
    return Built(case, snapshot(mgr, ids), store, q, k_src, v_src, [s[0] for s in stored], [s[1] for s in stored])


def _append_poisoned(mgr, store, sid, token):
    before = set(mgr.table(sid))
    slot, copy = mgr.append(sid, token)
    fresh = set(mgr.table(sid)) - before
    store.poison(sorted(fresh))
    if copy is not None:
        store.copy(copy)
    return slot, copy


def _churn(mgr: BlockManager, case: Case, rng) -> None:
    """Random short-lived sequences: leaves a shuffled free queue and some live blockers."""
    live = []
    for r in range(case.churn):
        sid = f"churn{r}"
        n = int(rng.integers(1, 3 * case.block_size + 2))
        if mgr.pool.num_free * case.block_size > n + 8 * case.block_size:
            mgr.allocate(sid, [int(x) for x in rng.integers(200_000, 300_000, n)])
            live.append(sid)
        if live and rng.random() < 0.6:
            mgr.free(live.pop(int(rng.integers(0, len(live)))))
