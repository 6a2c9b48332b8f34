"""Batch-1 read floors on the GPU (issue 18, goal 3): the bulk copy engine (kvlab/gpu/bulk_floor.cu) in several
shapes next to kvx's read floor (warps of 16-byte loads), kvx's batch-1 default and SDPA on the same K/V, graph
replays timed as kvlab.gpu.sweep --eager-neighbour times them (each right after an eager call of itself, L2 flushed).
    python3 -m kvlab.gpu.bulk_floor --site /tmp/kvx-site [--contexts 8192,32768] [--reps 30]"""
from __future__ import annotations

import argparse
import ctypes
import subprocess
from pathlib import Path

import torch
import torch.nn.functional as F

from kvlab import ext
from kvlab.gpu.bench import BS, D, HKV, HQ, graphed, timed_set

# (CTAs per SM, chunk KiB, stages, interleaved): shared memory per CTA = 2 x chunk x stages
SHAPES = ((1, 4, 12, 0), (1, 8, 6, 0), (1, 8, 12, 0), (1, 16, 3, 0), (1, 16, 6, 0), (1, 32, 3, 0),
          (2, 8, 6, 0), (2, 16, 3, 0), (1, 16, 6, 1), (2, 8, 6, 1), (4, 8, 3, 0), (1, 64, 1, 0))
# plain loads, each CTA a contiguous range: (CTAs per SM, threads, loads in flight per thread)
LD_SHAPES = ((8, 256, 8), (4, 256, 8), (4, 256, 16), (2, 256, 16), (2, 256, 32), (2, 512, 16), (1, 1024, 16),
             (8, 256, 4))


def build(out: Path) -> ctypes.CDLL:
    src = Path(__file__).with_name("bulk_floor.cu")
    subprocess.run(["nvcc", "-O3", "-arch=sm_90", "-shared", "-Xcompiler", "-fPIC", "-o", str(out), str(src)], check=True)
    lib = ctypes.CDLL(str(out))
    lib.bulk_floor.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_long] + [ctypes.c_int] * 4 + \
        [ctypes.c_void_p, ctypes.c_void_p]
    lib.ld_floor.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_long] + [ctypes.c_int] * 3 + \
        [ctypes.c_void_p, ctypes.c_void_p]
    return lib


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--site", required=True)
    ap.add_argument("--contexts", default="8192,32768")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--no-bulk", action="store_true", help="leave out the bulk copy shapes")
    args = ap.parse_args()
    kvx = ext.load(Path(args.site))
    lib, kvxlib = build(Path("/tmp/bulk_floor.so")), kvx.library("cuda")
    dev = torch.device("cuda")
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    flush = torch.empty(256 << 20, dtype=torch.uint8, device=dev)
    sink = torch.zeros(8 * sms, dtype=torch.int32, device=dev)
    stream = lambda: ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)  # noqa: E731
    print(f"# {torch.cuda.get_device_name(0)}, {sms} SMs", flush=True)
    for L in map(int, args.contexts.split(",")):
        nblk = -(-L // BS)
        k = torch.randn(nblk, BS, HKV, D, device=dev).to(torch.bfloat16)
        v = torch.randn(nblk, BS, HKV, D, device=dev).to(torch.bfloat16)
        q = torch.randn(1, HQ, D, device=dev)
        lens = torch.full((1,), L, dtype=torch.int32, device=dev)
        meta = {"span_ptr": torch.arange(2, dtype=torch.int32, device=dev),
                "span_block": torch.zeros(1, dtype=torch.int32, device=dev), "span_len": lens.clone(), "seq_lens": lens}
        ks, vs = (x.view(1, nblk * BS, HKV, D)[:, :L].transpose(1, 2).contiguous() for x in (k, v))
        qs = q.to(torch.bfloat16).unsqueeze(2)
        each = k.numel() * 2
        out = torch.empty(1, HQ, D, device=dev)
        eager = {
            "sdpa": lambda: F.scaled_dot_product_attention(qs, ks, vs, scale=D ** -0.5, enable_gqa=True),
            "kvx-v0": lambda: kvx.attend("spans", q, k.view(torch.int16), v.view(torch.int16), meta, kv_dtype="bf16",
                                         sm_scale=D ** -0.5, device="cuda", hints={"max_seq_len": L}, out=out),
            "read-floor-8cta": lambda: kvxlib.kvx_cuda_read_floor(
                ctypes.c_void_p(k.data_ptr()), ctypes.c_size_t(each), ctypes.c_void_p(v.data_ptr()),
                ctypes.c_size_t(each), ctypes.c_void_p(sink.data_ptr()), stream(), ctypes.c_int32(8), ctypes.c_int32(0)),
        }
        for cps, kib, stg, il in () if args.no_bulk else SHAPES:
            eager[f"bulk-{cps}cta-{kib}k-x{stg}{'-il' if il else ''}"] = (
                lambda cps=cps, kib=kib, stg=stg, il=il: lib.bulk_floor(
                    k.data_ptr(), v.data_ptr(), each, kib << 10, stg, cps * sms, il, sink.data_ptr(), stream()))
        for cps, thr, unroll in LD_SHAPES:
            res = lib.ld_floor_resident(thr, unroll)   # fewer than cps: the grid runs in more than one wave
            eager[f"ld-{cps}cta-{thr}t-u{unroll}" + (f"-res{res}" if res < cps else "")] = (
                lambda cps=cps, thr=thr, unroll=unroll: lib.ld_floor(
                    k.data_ptr(), v.data_ptr(), each, cps * sms, thr, unroll, sink.data_ptr(), stream()))
        for name, f in list(eager.items()):
            if isinstance(rc := f(), int) and rc:
                print(f"  {name}: not run (rc {rc})", flush=True)
                del eager[name]
        torch.cuda.synchronize()
        cands = {}
        for name, f in eager.items():
            cands[f"_e-{name}"], cands[name] = f, graphed(f)
        t = timed_set(cands, flush, reps=args.reps)
        base, nbytes = t["sdpa"], 2 * each
        print(f"L={L} B=1: sdpa {base * 1e6:.1f} us ({nbytes / base / 1e12:.2f} TB/s)", flush=True)
        for key, s in t.items():
            if key != "sdpa":
                print(f"  {key:>22}: {s * 1e6:7.1f} us {nbytes / s / 1e12:5.2f} TB/s  x{base / s:.2f} of sdpa", flush=True)
        del k, v, ks, vs, cands, eager
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
