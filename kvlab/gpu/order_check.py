"""Batch-1 timing against what ran just before it: the bench times each graph replay right after an
eager call of the same candidate (same K/V), with only L2 flushed between; this times spans and SDPA
at batch 1 with and without that neighbour, and with an 8 GiB flush, to see how much the neighbour
is worth. python3 -m kvlab.gpu.order_check SITE"""

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from kvlab import ext
from kvlab.gpu.bench import BS, D, HKV, HQ, graphed, timed_set


def main():
    kvx = ext.load(Path(sys.argv[1]))
    dev = torch.device("cuda")
    flush = torch.empty(256 << 20, dtype=torch.uint8, device=dev)
    big = torch.empty(8 << 30, dtype=torch.uint8, device=dev)
    for L in (8192, 32768):
        n = L // BS
        k = torch.randn(n, BS, HKV, D, device=dev).to(torch.bfloat16)
        v = torch.randn_like(k)
        q = torch.randn(1, HQ, D, device=dev)
        lens = torch.full((1,), L, dtype=torch.int32, device=dev)
        meta = {"span_ptr": torch.arange(2, dtype=torch.int32, device=dev),
                "span_block": torch.zeros(1, dtype=torch.int32, device=dev), "span_len": lens.clone(), "seq_lens": lens}
        ks = k.view(1, L, HKV, D).transpose(1, 2).contiguous()
        vs = v.view(1, L, HKV, D).transpose(1, 2).contiguous()
        qs = q.to(torch.bfloat16).unsqueeze(2)
        out = torch.empty(1, HQ, D, device=dev)

        def sp():
            kvx.attend("spans", q, k.view(torch.int16), v.view(torch.int16), meta, kv_dtype="bf16", sm_scale=D ** -0.5,
                       device="cuda", hints={"max_seq_len": L}, out=out)

        def sd():
            return F.scaled_dot_product_attention(qs, ks, vs, scale=D ** -0.5, enable_gqa=True)
        # the same kernel on other, tiny K/V (one 64-token split): warms the kernel's code, not the data
        k2, v2 = torch.randn(4, BS, HKV, D, device=dev).to(torch.bfloat16), torch.randn(4, BS, HKV, D, device=dev).to(torch.bfloat16)
        l2 = torch.full((1,), 64, dtype=torch.int32, device=dev)
        meta2 = {"span_ptr": meta["span_ptr"], "span_block": meta["span_block"], "span_len": l2.clone(), "seq_lens": l2}
        out2 = torch.empty(1, HQ, D, device=dev)

        def other():
            kvx.attend("spans", q, k2.view(torch.int16), v2.view(torch.int16), meta2, kv_dtype="bf16",
                       sm_scale=D ** -0.5, device="cuda", hints={"max_seq_len": L}, out=out2)
        sp()
        other()
        torch.cuda.synchronize()
        g_sp, g_sd, g_other = graphed(sp), graphed(sd), graphed(other)
        tiny = torch.zeros(1, device=dev)
        pad = graphed(lambda: tiny.add_(1.0))
        sets = {"1 sdpa, pad, spans": ({"sdpa": g_sd, "_p": pad, "spans": g_sp}, flush),
                "2 sdpa, pad, spans eager, spans": ({"sdpa": g_sd, "_p": pad, "_e": sp, "spans": g_sp}, flush),
                "3 sdpa eager, sdpa, pad, spans eager, spans": ({"_f": sd, "sdpa": g_sd, "_p": pad, "_e": sp, "spans": g_sp},
                                                                flush),
                "4 as 1, 8 GiB flush": ({"sdpa": g_sd, "_p": pad, "spans": g_sp}, big),
                "5 as 3, 8 GiB flush": ({"_f": sd, "sdpa": g_sd, "_p": pad, "_e": sp, "spans": g_sp}, big),
                "6 sdpa, pad, same kernel on tiny other K/V (graph), spans": (
                    {"sdpa": g_sd, "_p": pad, "_o": g_other, "spans": g_sp}, flush),
                "7 sdpa, pad, spans graph twice": ({"sdpa": g_sd, "_p": pad, "_s": g_sp, "spans": g_sp}, flush)}
        for name, (cands, fl) in sets.items():
            t = timed_set(cands, fl, reps=30)
            print(f"L={L} [{name}]: sdpa {t['sdpa'] * 1e6:.1f} us, spans {t['spans'] * 1e6:.1f} us, "
                  f"spans/SDPA {t['sdpa'] / t['spans']:.2f}", flush=True)


if __name__ == "__main__":
    main()
