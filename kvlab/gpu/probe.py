"""One decode call per shape for `ncu` to profile (kvlab/gpu/run.sh with NCU=1 runs it under ncu).
    python3 -m kvlab.gpu.probe SITE [BxL,BxL...]   (default 64x8192,1x8192)"""
import sys
from pathlib import Path

import torch

from kvlab import ext

kvx = ext.load(Path(sys.argv[1]))

HQ, HKV, D, BS = 32, 8, 128, 16
SHAPES = sys.argv[2] if len(sys.argv) > 2 else "64x8192,1x8192"
for B, L in (tuple(map(int, x.split("x"))) for x in SHAPES.split(",")):
    nblk = L // BS
    k = torch.randn(B * nblk, BS, HKV, D, device="cuda").to(torch.bfloat16).view(torch.int16)
    v = torch.randn(B * nblk, BS, HKV, D, device="cuda").to(torch.bfloat16).view(torch.int16)
    q = torch.randn(B, HQ, D, device="cuda")
    lens = torch.full((B,), L, dtype=torch.int32, device="cuda")
    table = torch.arange(B * nblk, dtype=torch.int32, device="cuda").reshape(B, nblk)
    meta = {"span_ptr": torch.arange(B + 1, dtype=torch.int32, device="cuda"), "span_block": table[:, 0].contiguous(),
            "span_len": lens.clone(), "seq_lens": lens}
    kvx.attend("spans", q, k, v, meta, kv_dtype="bf16", sm_scale=D ** -0.5, device="cuda", hints={"max_seq_len": L})
    torch.cuda.synchronize()
