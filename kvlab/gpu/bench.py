"""GPU check of the kvx CUDA extension, in one device call: oracle (every named + 200 random cases,
five layouts, virtual-contiguous mapped with CUDA VMM), decode-attention bandwidth against torch
SDPA on contiguous K/V (same card), the VMM and block-table costs of a decode trace, the CPU kernels
on the same host, and the layout ranking from all of it (results.json, ranking.md).

Run from the repo root after building the wheel with KVX_CUDA=ON and unpacking it into SITE:
    python3 -m kvlab.gpu.bench --site /tmp/kvx-site --out $OUT      (kvlab/gpu/run.sh does both)
Bytes counted: K and V of every token read once (bf16), the floor for decode attention.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
import traceback
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

HQ, HKV, D, BS = 32, 8, 128, 16
CONTEXTS = (1024, 8192, 32768)
BATCHES = (1, 8, 32, 64)
# KVX_CUDA_VARIANT of the bf16 GQA-4 d128 path (0, the default: 11, with mma_multi_kernel where one
# split per item gives more CTAs than fit at once, or 10 there at 16k+ context): 8: one kv head per
# CTA + separate combine kernel (v11);
# 11: the same CTAs, one split writes the output itself (else the combine kernel); 4: also several
# splits merge in their last CTA (fused combine); 5: as 11 with 2 stages, 3 CTAs/SM; 12: as 11 with
# an L2::256B prefetch hint on the copies instead of L2::128B; 13: as 11 with no hint (before v26);
# 9 / 10: wide_kernel, 4 / 8 kv heads per CTA (contiguous 1 / 2 KB per token), fused combine;
# 20 / 22: split1_kernel (small-batch split-KV: one wave of CTAs, tiles dealt round-robin to the splits,
# fused last-CTA merge) with 5 stages at 1 CTA/SM / 3 stages at 2 CTAs/SM; 25: as 11 with the combine
# kernel launched as a programmatic dependent (PDL), at batch 1 the default before b1_mma_kernel;
# 40-44: b1_mma_kernel (the batch-1 default for spans / contiguous: one warp per kv head with its own
# cp.async pipeline, 4 kv heads per CTA, 4 stages = 42) forced at every batch and layout
VARIANTS = (13, 11, 4, 10)
ORACLE_VARIANTS = (4, 5, 8, 9, 10, 11, 12, 13)  # the full oracle runs on the default, then again on each of these


def log(*a):
    print(*a, flush=True)


def oracle(out_dir: Path, variants=ORACLE_VARIANTS) -> dict:
    from kvlab import ext, oracle as orc, scenario
    named = scenario.named_cases()
    cases = named + scenario.random_cases(200)
    extra = scenario.wide_cases()
    out = {}
    for var in (0,) + tuple(variants):  # 0: the default kernel choice
        os.environ["KVX_CUDA_VARIANT"] = str(var)
        t0 = time.time()
        res = orc.run(cases, ext.cuda_backend, "cuda")
        res_x = orc.run(extra, ext.cuda_backend, "cuda")
        bad = [r for r in res if not r.ok]
        bad_x = [r for r in res_x if not r.ok]
        if var == 0:
            text = orc.table(res + res_x, {c.name for c in named + extra})
            (out_dir / "oracle_cuda.txt").write_text(f"# {torch.cuda.get_device_name(0)}, "
                                                     f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n{text}\n")
            log(text)
            out["per_layout"] = {n: {"passed": sum(r.ok for r in res + res_x if r.layout == n),
                                     "total": sum(1 for r in res + res_x if r.layout == n)}
                                 for n in dict.fromkeys(r.layout for r in res)}
        log(f"oracle cuda (variant {var}): {len(res) - len(bad)}/{len(res)} case×layout pass "
            f"({len(named)} named + 200 random × {len(res) // len(cases)} layouts); wide bf16 cases {len(res_x) - len(bad_x)}/{len(res_x)}; "
            f"max err {max(r.err_stored for r in res + res_x):.1e}; {time.time() - t0:.1f}s")
        for r in (bad + bad_x)[:10]:
            log("  FAIL", r)
        out[str(var)] = {"total": len(res), "failed": len(bad), "extra_total": len(res_x), "extra_failed": len(bad_x),
                         "failures": [r.__dict__ for r in (bad + bad_x)[:20]],
                         "max_err_stored": max(r.err_stored for r in res + res_x)}
    os.environ.pop("KVX_CUDA_VARIANT", None)
    return out


def graphed(fn):
    """Capture fn in a CUDA graph (as a serving engine runs decode), so host overhead drops out."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
        fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return g.replay


def timed(fn, flush, reps=20):
    fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        flush.zero_()  # evict L2 so every rep reads K/V from HBM
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        ts.append(a.elapsed_time(b) / 1e3)
    return statistics.median(ts)


def timed_set(fns: dict, flush, reps=20) -> dict:
    """timed() for several callables, interleaved: each rep runs every one once (L2 flushed before each)."""
    for f in fns.values():
        f()
    torch.cuda.synchronize()
    ts = {key: [] for key in fns}
    for _ in range(reps):
        for key, f in fns.items():
            flush.zero_()
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            f()
            b.record()
            torch.cuda.synchronize()
            ts[key].append(a.elapsed_time(b) / 1e3)
    return {key: statistics.median(v) for key, v in ts.items() if not key.startswith("_")}


def eager_loop(fns, n=48):
    """Back-to-back eager calls, host overhead included (no flush between them: each call's K/V is a
    different copy, rotated, so the set exceeds L2). Seconds per call."""
    for f in fns:
        f()
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for i in range(n):
        fns[i % len(fns)]()
    b.record()
    torch.cuda.synchronize()
    return a.elapsed_time(b) / 1e3 / n


def copy_bandwidth() -> float:
    n = 2 << 30
    src = torch.empty(n, dtype=torch.uint8, device="cuda").random_()
    dst = torch.empty_like(src)
    dst.copy_(src)
    torch.cuda.synchronize()
    ts = []
    for _ in range(10):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        dst.copy_(src)
        b.record()
        torch.cuda.synchronize()
        ts.append(a.elapsed_time(b) / 1e3)
    del src, dst
    return 2 * n / statistics.median(ts)


def bench(out_dir: Path, variants=VARIANTS) -> dict:
    import kvx

    from kvlab import ext
    from kvlab.gpu import vmm
    drv = ext.driver()
    dev = torch.device("cuda")
    flush = torch.empty(256 << 20, dtype=torch.uint8, device=dev)
    copy_bw = copy_bandwidth()
    log(f"device-to-device copy: {copy_bw / 1e12:.2f} TB/s (read + write)")
    # the timing floor: one trivial kernel in a graph, timed the same way (events around a replay)
    tiny = torch.zeros(1, device=dev)
    floor_s = timed(graphed(lambda: tiny.add_(1.0)), flush)
    floor_eager_s = timed(lambda: tiny.add_(1.0), flush)
    log(f"timing floor (one trivial kernel): graph {floor_s * 1e6:.1f} us, eager {floor_eager_s * 1e6:.1f} us")
    scale = D ** -0.5
    rows = []
    for L in CONTEXTS:
        for B in BATCHES:
            g = torch.Generator(device=dev).manual_seed(L * 100 + B)
            nblk = -(-L // BS)
            # one pool; sequence b owns blocks [b*nblk, (b+1)*nblk): physically consecutive
            k = torch.randn(B * nblk, BS, HKV, D, device=dev, generator=g).to(torch.bfloat16)
            v = torch.randn(B * nblk, BS, HKV, D, device=dev, generator=g).to(torch.bfloat16)
            q = torch.randn(B, HQ, D, device=dev, generator=g)
            lens = torch.full((B,), L, dtype=torch.int32, device=dev)
            table = torch.arange(B * nblk, dtype=torch.int32, device=dev).reshape(B, nblk)
            shuffled = torch.randperm(B * nblk, device=dev, generator=g).to(torch.int32).reshape(B, nblk)
            metas = {
                "paged": {"block_table": table, "seq_lens": lens},
                "paged-shuffled": {"block_table": shuffled, "seq_lens": lens},
                "spans": {"span_ptr": torch.arange(B + 1, dtype=torch.int32, device=dev),
                          "span_block": table[:, 0].contiguous(), "span_len": lens.clone(), "seq_lens": lens},
                "contiguous": {"seq_lens": lens},
            }
            kc, vc = k.view(B, nblk * BS, HKV, D)[:, :L], v.view(B, nblk * BS, HKV, D)[:, :L]
            ks, vs = kc.transpose(1, 2).contiguous(), vc.transpose(1, 2).contiguous()  # SDPA's [B, Hkv, L, D]
            qs = q.to(torch.bfloat16).unsqueeze(2)
            nbytes = 2 * B * L * HKV * D * 2
            res = {"context": L, "batch": B, "bytes": nbytes}
            sdpa = lambda: F.scaled_dot_product_attention(qs, ks, vs, scale=scale, enable_gqa=True)  # noqa: E731
            ref = sdpa().squeeze(2).float()
            hints = {"max_seq_len": L}

            def kvx_fn(layout, kk, vv, meta):
                out = torch.empty(B, HQ, D, device=dev)
                lse = torch.empty(B, HQ, device=dev)
                return (lambda: kvx.attend(layout, q, kk.view(torch.int16), vv.view(torch.int16), meta, kv_dtype="bf16",
                                           sm_scale=scale, device="cuda", hints=hints, out=out, lse=lse)), out

            def err(fn, out):
                fn()
                torch.cuda.synchronize()
                return float(((out - ref).norm() / ref.norm()).item())

            # every candidate is captured first, then all are timed interleaved (rep by rep), so a
            # drift of the card's clocks during the run weighs on SDPA and kvx alike. kvx's split
            # workspace grows on demand and a graph keeps its address: one eager call of every
            # variant first, so no capture below sees it move
            kc2, vc2 = kc.contiguous(), vc.contiguous()
            for var in tuple(variants) + (0,):
                os.environ["KVX_CUDA_VARIANT"] = str(var)
                for layout in ("spans", "paged"):
                    kvx_fn(layout, k, v, metas[layout])[0]()
            os.environ.pop("KVX_CUDA_VARIANT", None)
            torch.cuda.synchronize()
            # whatever was timed right after SDPA's graph replay read ~6 µs slow in a trial run
            # (v15), kvx or not: a trivial kernel takes that place and is not reported
            tiny = torch.zeros(1, device=dev)
            cands = {"sdpa_eager": sdpa, "sdpa": graphed(sdpa), "_pad": graphed(lambda: tiny.add_(1.0))}
            # virtual-contiguous for real: the same K/V copied into VMM pages mapped under one
            # reserved range per sequence; the contiguous kernel reads it, no block table
            t0 = time.perf_counter()
            kvm, vvm = vmm.filled(drv, kc2), vmm.filled(drv, vc2)
            res["virtual_setup_s"] = time.perf_counter() - t0
            res["virtual_pages"] = 2 * len(kvm.handles)
            inputs = {"contiguous": ("contiguous", kc2, vc2), "virtual": ("contiguous", kvm, vvm)}
            for name, meta in {**metas, "virtual": {"seq_lens": lens}}.items():
                layout, kk, vv = inputs.get(name, (name.split("-")[0], k, v))
                fn, out = kvx_fn(layout, kk, vv, meta)
                cands[f"{name}_eager"], cands[name] = fn, graphed(fn)
                if name != "paged-shuffled":  # a shuffled table reads other blocks: not the reference's K/V
                    res[f"{name}_err"] = err(fn, out)
            # variants of the spans and paged kernels (KVX_CUDA_VARIANT): see VARIANTS
            for var in variants:
                os.environ["KVX_CUDA_VARIANT"] = str(var)
                for layout in ("spans", "paged"):
                    fn, out = kvx_fn(layout, k, v, metas[layout])
                    cands[f"{layout}-v{var}"] = graphed(fn)
                    res[f"{layout}-v{var}_err"] = err(fn, out)
            os.environ.pop("KVX_CUDA_VARIANT", None)
            for key, t in timed_set(cands, flush).items():
                res[key + "_s"] = t
            del cands, kc2, vc2
            torch.cuda.synchronize()
            kvm.close(), vvm.close()
            if B == 1:  # eager back-to-back, host included: 4 copies of K/V rotated (more than L2 holds)
                copies = [(k.clone(), v.clone()) for _ in range(4)]
                scopies = [(ks.clone(), vs.clone()) for _ in range(4)]
                res["sdpa_loop_s"] = eager_loop([
                    (lambda a=a, b=b: F.scaled_dot_product_attention(qs, a, b, scale=scale, enable_gqa=True)) for a, b in scopies])
                for layout in ("spans", "paged"):
                    out = torch.empty(B, HQ, D, device=dev)
                    lse = torch.empty(B, HQ, device=dev)
                    res[f"{layout}_loop_s"] = eager_loop([
                        (lambda a=a, b=b: kvx.attend(layout, q, a.view(torch.int16), b.view(torch.int16), metas[layout],
                                                     kv_dtype="bf16", sm_scale=scale, device="cuda", hints=hints,
                                                     out=out, lse=lse)) for a, b in copies])
                del copies, scopies
            for key in [x for x in res if x.endswith("_s")]:
                res[key[:-2] + "_tbps"] = nbytes / res[key] / 1e12
            rows.append(res)
            log(f"L={L:>6} B={B:>3}  sdpa {res['sdpa_tbps']:.2f}  contig {res['contiguous_tbps']:.2f}  "
                f"paged {res['paged_tbps']:.2f}  spans {res['spans_tbps']:.2f}  virtual {res['virtual_tbps']:.2f}  "
                f"paged-shuf {res['paged-shuffled_tbps']:.2f} TB/s (graphs)  eager: sdpa {res['sdpa_eager_tbps']:.2f} "
                f"spans {res['spans_eager_tbps']:.2f}  err(spans) {res['spans_err']:.1e}")
            del k, v, q, kc, vc, ks, vs, qs, table, shuffled, metas
            torch.cuda.empty_cache()
    return {"copy_Bps": copy_bw, "floor_s": floor_s, "floor_eager_s": floor_eager_s, "rows": rows,
            "variants": list(variants)}


def hybrid_bench() -> list[dict]:
    """B sequences share a prefix (the same physical blocks) and own 512 tokens each: spans read
    the prefix once per sequence, hybrid once per CTA row-chunk (16 query rows = 4 sequences)."""
    import kvx
    dev = torch.device("cuda")
    flush = torch.empty(256 << 20, dtype=torch.uint8, device=dev)
    scale, own, out_rows = D ** -0.5, 512, []
    for L, B in ((8192, 32), (32768, 32), (32768, 8)):
        P = L - own
        pb, sb = P // BS, own // BS
        nblk = pb + B * sb
        g = torch.Generator(device=dev).manual_seed(L + B)
        k = torch.randn(nblk, BS, HKV, D, device=dev, generator=g).to(torch.bfloat16).view(torch.int16)
        v = torch.randn(nblk, BS, HKV, D, device=dev, generator=g).to(torch.bfloat16).view(torch.int16)
        q = torch.randn(B, HQ, D, device=dev, generator=g)
        i32 = lambda x: torch.tensor(x, dtype=torch.int32, device=dev)  # noqa: E731
        lens = i32([L] * B)
        suf_first = [pb + b * sb for b in range(B)]
        spans = {"span_ptr": i32([2 * b for b in range(B + 1)]),
                 "span_block": i32([x for b in range(B) for x in (0, suf_first[b])]),
                 "span_len": i32([x for b in range(B) for x in (P, own)]), "seq_lens": lens}
        hybrid = {"group_of_seq": i32([0] * B), "group_ptr": i32([0, B]), "group_members": i32(list(range(B))),
                  "prefix_len": i32([P]), "pre_ptr": i32([0, 1]), "pre_block": i32([0]), "pre_len": i32([P]),
                  "suf_ptr": i32(list(range(B + 1))), "suf_block": i32(suf_first), "suf_len": i32([own] * B),
                  "seq_lens": lens}
        res = {"context": L, "batch": B, "shared_prefix": P}
        outs = {}
        for name, meta in (("spans", spans), ("hybrid", hybrid)):
            out = torch.empty(B, HQ, D, device=dev)
            lse = torch.empty(B, HQ, device=dev)
            fn = lambda: kvx.attend(name, q, k, v, meta, kv_dtype="bf16", sm_scale=scale, device="cuda",  # noqa: E731
                                    hints={"max_seq_len": L, "max_group": B}, out=out, lse=lse)
            res[f"{name}_us"] = timed(graphed(fn), flush) * 1e6
            fn()
            torch.cuda.synchronize()
            outs[name] = out.clone()
        res["rel_diff"] = float(((outs["hybrid"] - outs["spans"]).norm() / outs["spans"].norm()).item())
        res["speedup"] = res["spans_us"] / res["hybrid_us"]
        out_rows.append(res)
        log(f"hybrid L={L} B={B} shared {P}: spans {res['spans_us']:.0f} us, hybrid {res['hybrid_us']:.0f} us "
            f"({res['speedup']:.2f}x), |hybrid-spans|/|spans| {res['rel_diff']:.1e}")
        del k, v
        torch.cuda.empty_cache()
    return out_rows


def hybrid_unshared_bench(shapes=((8192, 1), (32768, 1), (8192, 32), (32768, 32))) -> list[dict]:
    """Hybrid where nothing is shared: each sequence its own group (metadata from kvlab's hybrid
    layout on a fresh pool), spans on the same blocks; graph replays timed interleaved with SDPA, each
    right after an eager call of itself (as bench())."""
    import kvx

    from kvlab import ext
    from kvlab.layouts import LAYOUTS, State
    dev = torch.device("cuda")
    flush = torch.empty(256 << 20, dtype=torch.uint8, device=dev)
    scale, rows = D ** -0.5, []
    for L, B in shapes:
        nblk = -(-L // BS)
        g = torch.Generator(device=dev).manual_seed(L + 7 * B)
        k = torch.randn(B * nblk, BS, HKV, D, device=dev, generator=g).to(torch.bfloat16)
        v = torch.randn(B * nblk, BS, HKV, D, device=dev, generator=g).to(torch.bfloat16)
        q = torch.randn(B, HQ, D, device=dev, generator=g)
        state = State(BS, tuple(tuple(range(b * nblk, (b + 1) * nblk)) for b in range(B)), (L,) * B)
        cands, outs = {}, {}
        ks = k.view(B, nblk * BS, HKV, D)[:, :L].transpose(1, 2).contiguous()
        vs = v.view(B, nblk * BS, HKV, D)[:, :L].transpose(1, 2).contiguous()
        qs = q.to(torch.bfloat16).unsqueeze(2)
        sdpa = lambda: F.scaled_dot_product_attention(qs, ks, vs, scale=scale, enable_gqa=True)  # noqa: E731
        cands["_e-sdpa"], cands["sdpa"] = sdpa, graphed(sdpa)
        tiny = torch.zeros(1, device=dev)
        cands["_pad"] = graphed(lambda: tiny.add_(1.0))
        fns = {}
        for name in ("spans", "hybrid"):
            meta = LAYOUTS[name].build(state)
            arrays = {key: torch.from_numpy(np.ascontiguousarray(a, np.int32)).to(dev)
                      for key, a in ext._meta_arrays(name, meta).items()}
            out = torch.empty(B, HQ, D, device=dev)
            lse = torch.empty(B, HQ, device=dev)
            fns[name] = (lambda name=name, arrays=arrays, out=out, lse=lse, meta=meta: kvx.attend(
                name, q, k.view(torch.int16), v.view(torch.int16), arrays, kv_dtype="bf16", sm_scale=scale,
                device="cuda", hints=ext._hints(meta), out=out, lse=lse))
            fns[name]()  # every eager call before any capture: kvx's split workspace grows on demand
            outs[name] = out
        torch.cuda.synchronize()
        # each graph replay right after an eager call of itself, as bench() times every layout and SDPA
        # (without it kvx's batch-1 replay reads ~4 us slower, SDPA's does not: notes/kvlab.md)
        for name, fn in fns.items():
            cands[f"_e-{name}"], cands[name] = fn, graphed(fn)
        t = timed_set(cands, flush, reps=30)
        res = {"context": L, "batch": B, **{f"{n}_us": t[n] * 1e6 for n in ("sdpa", "spans", "hybrid")},
               "rel_diff": float(((outs["hybrid"] - outs["spans"]).norm() / outs["spans"].norm()).item())}
        res["hybrid_over_spans"] = t["spans"] / t["hybrid"]
        rows.append(res)
        log(f"nothing shared, L={L} B={B}: sdpa {res['sdpa_us']:.1f} us, spans {res['spans_us']:.1f} us, "
            f"hybrid {res['hybrid_us']:.1f} us (hybrid speed / spans {res['hybrid_over_spans']:.3f}; "
            f"spans/SDPA {t['sdpa'] / t['spans']:.2f}), |hybrid-spans|/|spans| {res['rel_diff']:.1e}")
        del k, v, ks, vs, cands
        torch.cuda.empty_cache()
    return rows


def report(b: dict, card: str) -> str:
    cb = b["copy_Bps"]
    lines = [f"card: {card}; device-to-device copy {cb / 1e12:.2f} TB/s; Hq={HQ} Hkv={HKV} d={D} bf16, "
             f"block {BS}; TB/s = K+V bytes / median time of a CUDA-graph replay (L2 flushed per rep); "
             f"timing floor (one trivial kernel, same method): graph {b['floor_s'] * 1e6:.1f} us, "
             f"eager {b['floor_eager_s'] * 1e6:.1f} us",
             "| context | batch | SDPA TB/s | contiguous | virtual (VMM) | paged | spans | paged (shuffled blocks) | "
             "spans/SDPA | paged/SDPA | virtual/SDPA | spans/copy |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in b["rows"]:
        lines.append(f"| {r['context']} | {r['batch']} | {r['sdpa_tbps']:.2f} | {r['contiguous_tbps']:.2f} | "
                     f"{r['virtual_tbps']:.2f} | {r['paged_tbps']:.2f} | {r['spans_tbps']:.2f} | "
                     f"{r['paged-shuffled_tbps']:.2f} | {r['spans_tbps'] / r['sdpa_tbps']:.2f} | "
                     f"{r['paged_tbps'] / r['sdpa_tbps']:.2f} | {r['virtual_tbps'] / r['sdpa_tbps']:.2f} | "
                     f"{r['spans_tbps'] * 1e12 / cb:.0%} |")
    lines += ["", "Eager (one call between L2 flushes: the flush kernel hides the host's launch cost) vs graph, "
              "µs and ratio to SDPA in the same mode; loop = eager back-to-back calls, host included "
              "(batch 1: 4 K/V copies rotated so L2 cannot hold them)",
              "| context | batch | SDPA eager µs | SDPA graph µs | spans eager µs | spans graph µs | paged eager µs | "
              "paged graph µs | spans/SDPA eager | spans/SDPA graph | paged/SDPA eager | paged/SDPA graph | "
              "SDPA loop µs | spans loop µs | paged loop µs |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in b["rows"]:
        loop = (f"{r['sdpa_loop_s'] * 1e6:.1f} | {r['spans_loop_s'] * 1e6:.1f} | {r['paged_loop_s'] * 1e6:.1f}"
                if "sdpa_loop_s" in r else "– | – | –")
        lines.append(f"| {r['context']} | {r['batch']} | {r['sdpa_eager_s'] * 1e6:.1f} | {r['sdpa_s'] * 1e6:.1f} | "
                     f"{r['spans_eager_s'] * 1e6:.1f} | {r['spans_s'] * 1e6:.1f} | {r['paged_eager_s'] * 1e6:.1f} | "
                     f"{r['paged_s'] * 1e6:.1f} | {r['sdpa_eager_s'] / r['spans_eager_s']:.2f} | "
                     f"{r['sdpa_s'] / r['spans_s']:.2f} | {r['sdpa_eager_s'] / r['paged_eager_s']:.2f} | "
                     f"{r['sdpa_s'] / r['paged_s']:.2f} | {loop} |")
    variants = b.get("variants", VARIANTS)
    if variants:
        lines.append("")
        lines.append("kernel variants (KVX_CUDA_VARIANT), TB/s spans / paged (graph): "
                 "default = v25 (v11 + PDL combine), at batch 1 below 16k context for spans/contiguous "
                 "b1_mma_kernel (v42), and where the items exceed the resident CTAs several items per CTA "
                 "(16k+ context: v10); "
                 "v8 = one kv head per CTA + combine kernel (v11); v11 = same CTAs, one split writes the output "
                 "itself; v4 = same, several splits merge in their last CTA; v5 = v11 with 2 stages, 3 CTAs/SM; "
                 "v12 = v11 with an L2::256B prefetch hint instead of L2::128B; v13 = v11 with no hint (before v26); "
                 "v9 / v10 = 4 / 8 kv heads per CTA (wide_kernel), fused combine; v20 / v22 = split1_kernel "
                 "(one wave of CTAs, tiles round-robin to the splits, fused last-CTA merge), 5 stages 1 CTA/SM / "
                 "3 stages 2 CTAs/SM, at every batch; v40-v44 = b1_mma_kernel (batch-1 default for spans/contiguous: "
                 "a warp per kv head, its own pipeline) forced at every batch and layout; "
                 "v25 = v11 with the combine kernel launched as a "
                 "programmatic dependent (PDL)")
        lines.append("| context | batch | " + " | ".join(f"v{v} spans | v{v} paged" for v in variants) + " |")
        lines.append("|---:|---:|" + "---:|" * (2 * len(variants)))
        for r in b["rows"]:
            lines.append(f"| {r['context']} | {r['batch']} | " + " | ".join(
                f"{r[f'spans-v{v}_tbps']:.2f} | {r[f'paged-v{v}_tbps']:.2f}" for v in variants) + " |")
    errs = [r[key] for r in b["rows"] for key in r if key.endswith("_err")]
    lines.append(f"(relative error of every kvx output vs SDPA's bf16 output: max {max(errs):.1e})")
    big = [r for r in b["rows"] if r["batch"] >= 32]
    one = [r for r in b["rows"] if r["batch"] == 1 and r["context"] >= 8192]
    lines.append("")
    lines.append(f"batch>=32: spans/SDPA min {min(r['spans_tbps'] / r['sdpa_tbps'] for r in big):.2f}, "
                 f"paged/SDPA min {min(r['paged_tbps'] / r['sdpa_tbps'] for r in big):.2f} (goal >= 0.90); "
                 f"batch 1, 8k+ (graph): spans/SDPA min {min(r['spans_tbps'] / r['sdpa_tbps'] for r in one):.2f}, "
                 f"paged/SDPA min {min(r['paged_tbps'] / r['sdpa_tbps'] for r in one):.2f}; (eager): spans/SDPA min "
                 f"{min(r['sdpa_eager_s'] / r['spans_eager_s'] for r in one):.2f}, paged/SDPA min "
                 f"{min(r['sdpa_eager_s'] / r['paged_eager_s'] for r in one):.2f} (goal >= 2)")
    return "\n".join(lines)


def cpu_bench(log) -> dict:
    """The CPU kernels on this host, 8k × 8 (and 1k / 32k × 8), for the ranking's CPU column; virtual
    on a CPU would be an mmap'd range read by the contiguous kernel, so it takes contiguous' figure."""
    import kvx

    from kvlab import bench as kvbench
    rows = kvbench.run(kvx, reps=5, out=log, batches=(8,))
    got = {r.layout: r.gbps for r in rows if r.context == 8192 and r.batch == 8}
    got["virtual"] = got.get("contiguous")
    return {"rows": [r.__dict__ for r in rows], "gbps_8k_x8": got}


def ratios(b: dict) -> list[dict]:
    """Per context and batch, each layout's graph-mode speed as a ratio to SDPA's (time_sdpa / time)."""
    return [{"context": r["context"], "batch": r["batch"], "sdpa_us": r["sdpa_s"] * 1e6,
             **{f"{n}/sdpa": r["sdpa_s"] / r[f"{n}_s"] for n in ("spans", "paged", "contiguous", "virtual")}}
            for r in b["rows"]]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--site", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--skip-oracle", action="store_true")
    ap.add_argument("--only-hybrid-unshared", action="store_true",
                    help="only time hybrid against spans with nothing shared (writes hybrid_unshared.json)")
    ap.add_argument("--variants", default=",".join(map(str, VARIANTS)),
                    help="kernel variants timed beside the default (comma-separated, empty for none)")
    ap.add_argument("--oracle-variants", default=",".join(map(str, ORACLE_VARIANTS)),
                    help="kernel variants the oracle runs again on (comma-separated, empty for none)")
    args = ap.parse_args()
    ints = lambda x: tuple(int(v) for v in x.split(",") if v)  # noqa: E731
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    from kvlab import ext, ranking
    from kvlab.gpu import costs
    ext.load(Path(args.site))
    card = torch.cuda.get_device_name(0)
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem",
                          "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
    log(f"card: {card} | {smi} | torch {torch.__version__}")
    result = {"card": card, "nvidia_smi": smi, "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    if args.only_hybrid_unshared:
        result["hybrid_unshared"] = hybrid_unshared_bench()
        (out_dir / "hybrid_unshared.json").write_text(json.dumps(result, indent=1))
        return
    steps = [("oracle", lambda: oracle(out_dir, ints(args.oracle_variants))) if not args.skip_oracle else None,
             ("costs", lambda: costs.measure(ext.driver(), log)),
             ("hybrid", hybrid_bench),
             ("bench", lambda: bench(out_dir, ints(args.variants))),
             ("cpu", lambda: cpu_bench(log))]
    for name, fn in filter(None, steps):
        try:
            result[name] = fn()
        except Exception:
            result[name + "_error"] = traceback.format_exc()
            log(result[name + "_error"])
    text = ""
    if "bench" in result:
        text = report(result["bench"], card)
        result["ratios_graph"] = ratios(result["bench"])
        r8 = next(r for r in result["bench"]["rows"] if r["context"] == 8192 and r["batch"] == 32)
        result["layout_bandwidth"] = {"gpu_tbps": {n: r8[f"{n}_tbps"] for n in ("paged", "spans", "contiguous", "virtual")},
                                      "cpu_gbps": result.get("cpu", {}).get("gbps_8k_x8", {})}
        (out_dir / "bench.md").write_text(text + "\n")
    per = result.get("oracle", {}).get("per_layout")
    table = ranking.ranking(result, {n: (v["passed"], v["total"]) for n, v in per.items()} if per else None,
                            result.get("costs", {}).get("trace"))
    result["ranking"] = table
    (out_dir / "ranking.md").write_text(table + "\n")
    (out_dir / "results.json").write_text(json.dumps(result, indent=1, default=str))
    log(text)
    log(table)


if __name__ == "__main__":
    main()
