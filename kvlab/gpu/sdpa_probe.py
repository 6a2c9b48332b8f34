"""The three SDPA calls profiled in notes/kvlab_gpu/sdpa_ncu.txt (run under ncu on the GPU machine):
    ncu --section SpeedOfLight --section Occupancy --section LaunchStats python3 -m kvlab.gpu.sdpa_probe"""
import torch
import torch.nn.functional as F

for B, L in ((32, 8192), (32, 1024), (1, 8192)):
    ks = torch.randn(B, 8, L, 128, device="cuda", dtype=torch.bfloat16)
    vs = torch.randn_like(ks)
    qs = torch.randn(B, 32, 1, 128, device="cuda", dtype=torch.bfloat16)
    F.scaled_dot_product_attention(qs, ks, vs, scale=128 ** -0.5, enable_gqa=True)
    torch.cuda.synchronize()
