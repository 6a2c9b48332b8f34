// CUDA decode attention with the CPU library's entry points (kvx_cuda_*), flash-decoding style:
// each CTA takes (a split of the KV length) × (one kv head) × (up to RMAX query rows sharing it),
// so batch 1 with a long context still fills the GPU; a second kernel merges the splits by
// log-sum-exp (the bf16 tensor-core decode path writes a single split's output itself, and at
// large batch streams several items per CTA: mma_multi_kernel, wide_kernel). A hybrid call runs the
// shared prefix once per group (all members' rows in one CTA), the suffixes per sequence, and
// merges both in the same combine kernel.
//
// Threads: TPT = head_dim / 8 lanes own one token (8 elements each, one 8/16/32-byte load), a CTA
// of 128 threads streams 128 / TPT tokens at a time; head_dim must be 8 × a power of two (<= 256).
#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "kvx.h"

namespace {

thread_local std::string g_err;

// the device code, one translation unit in this order (each file says what it holds)
#include "cuda_common.cuh"
#include "cuda_partial.cuh"
#include "cuda_mma.cuh"
#include "cuda_wide.cuh"

// A grow-only workspace: decode calls are many and small, cudaMalloc per call would dominate.
struct Workspace {
  float* ptr = nullptr;
  size_t n = 0;
  float* get(size_t need) {
    if (need > n) {
      if (ptr) cudaFree(ptr);
      ptr = nullptr;
      if (cudaMalloc(&ptr, need * sizeof(float)) != cudaSuccess) return n = 0, nullptr;
      n = need;
    }
    return ptr;
  }
} g_ws;

// Arrival counters of the fused split combine: zeroed once when grown, then each launch's last CTA
// of a row group resets its own (so a captured graph replays with them at zero).
struct Counters {
  int* ptr = nullptr;
  size_t n = 0;
  int* get(size_t need, cudaStream_t s) {
    if (need > n) {
      if (ptr) cudaFree(ptr);
      ptr = nullptr;
      if (cudaMalloc(&ptr, need * sizeof(int)) != cudaSuccess ||
          cudaMemsetAsync(ptr, 0, need * sizeof(int), s) != cudaSuccess)
        return n = 0, nullptr;
      n = need;
    }
    return ptr;
  }
} g_cnt;

cudaStream_t stream_of(const kvx_params& p) { return static_cast<cudaStream_t>(p.stream); }

int fail(const std::string& msg) {
  g_err = msg;
  return 1;
}

int num_sms() {
  static int n = 0;
  if (!n) {
    int dev = 0;
    cudaGetDevice(&dev);
    cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev);
    if (n <= 0) n = 100;
  }
  return n;
}

int fast_variant() {
  const char* e = std::getenv("KVX_CUDA_VARIANT");
  return e ? std::atoi(e) : 0;
}

// The kernel a launch uses and its dynamic shared memory: one place decides, so the split plan can
// ask the occupancy calculator about the very kernel that will run.
struct Choice {
  const void* fn;
  size_t smem;
  int threads = THREADS;
  int hpc = 1;        // kv heads per CTA (grid.y = kv_heads / hpc x row chunks)
  bool multi = false;  // decode, one split, more CTAs than fit at once: mma_multi_kernel instead
  int fuse = 0;  // decode: 0 combine_kernel merges the splits; 1 a single split writes the output
                // itself (else combine_kernel); 2 also several splits merge in the last CTA
  bool pdl = false;  // combine_kernel is launched as a programmatic dependent of the split kernel
};

template <typename T, int RMAX, bool FAST, int STG = STAGES, int MINB = (RMAX <= 4 ? 4 : 2)>
Choice choice_t(int D) {
  const int NG = THREADS / (D / 8);
  const size_t merge = (size_t(NG) * RMAX * D + 2 * NG * RMAX) * sizeof(float);
  const size_t stages = size_t(STG) * 2 * U * NG * D * sizeof(T);
  return {reinterpret_cast<const void*>(partial_kernel<T, RMAX, FAST, STG, MINB>), merge > stages ? merge : stages};
}

template <int STG, int MINB = 1, int L2B = 128>
Choice choice_mma(int fuse = 1) {
  Choice c{reinterpret_cast<const void*>(mma_kernel<STG, MINB, L2B>), size_t(STG) * 2 * MMA_TT * MMA_RBP};
  c.fuse = fuse;
  return c;
}

Choice choice_mma_pdl() {  // as choice_mma<3>(1), the combine kernel launched as a programmatic dependent
  Choice c{reinterpret_cast<const void*>(mma_kernel<3, 1, 128, true>), size_t(3) * 2 * MMA_TT * MMA_RBP};
  c.fuse = 1, c.pdl = true;
  return c;
}

template <int HPC, int STG = 3>
Choice choice_wide(const kvx_params& p) {
  if (p.kv_heads % HPC) return choice_mma<3>();
  Choice c{reinterpret_cast<const void*>(wide_kernel<HPC, STG>), size_t(STG) * 2 * HPC * WT * MMA_RBP};
  c.threads = 32 * HPC, c.hpc = HPC, c.fuse = 2;
  return c;
}

// Variants (KVX_CUDA_VARIANT, for benchmarks) of the GQA-4 head_dim-128 path. Tensor cores: 0 the
// default: 25 (= 11 with the combine kernel launched as a programmatic dependent), and where one split
// per item gives more CTAs than fit at once, mma_multi_kernel (several items per CTA); one kv head per CTA, 3-stage pipeline (mma_kernel) with 8: combine_kernel always
// (v11), 11: a single split writes the output itself, 4: several splits also merge in their last
// CTA; 12: as 11 with an L2::256B prefetch hint on the K/V copies instead of L2::128B, 13: with none
// (the kernel before v26); 9 / 10: 4 / 8 kv heads per CTA
// (wide_kernel), merging in the last CTA; 5: 2 stages and 3 CTAs/SM, 6: 4 stages. CUDA cores: 7
// (the default for f32/fp8), 1-3 other trade-offs.
int resident_per_sm(const Choice& c);

template <typename T>
Choice choice_fast(const kvx_params& p, int units) {
  const int v = fast_variant();
  const int D = p.head_dim;
  if constexpr (sizeof(T) == 2) {
    if (v == 0) {
      // mma_kernel; where it splits, combine_kernel follows as a programmatic dependent (PDL: its launch
      // overlaps the split kernel; H100 batch 1, bench's method: 8k 28.8 -> 28.0 us, 1k 14.3 -> 13.1)
      Choice c = choice_mma_pdl();
      c.multi = true;
      // long contexts with (sequence, kv head) items for two or more waves: 8 kv heads per CTA, whose
      // one table lookup per 32 KB block held the paged layout steady there (v12-v16: 4.10-4.19
      // TB/s at 32k x 64 where one head per CTA read 3.6-4.2 from run to run)
      const long items = long(units) * p.kv_heads * ((p.q_heads / p.kv_heads) / MMA_R);
      if (p.kv_heads % 8 == 0 && p.max_seq_len >= 16384 && items > long(resident_per_sm(c)) * num_sms())
        return choice_wide<8>(p);
      return c;
    }
    if (v == 4) return choice_mma<3>(2);
    if (v == 8) return choice_mma<3>(0);
    if (v == 11) return choice_mma<3>(1);
    if (v == 12) return choice_mma<3, 1, 256>(1);
    if (v == 13) return choice_mma<3, 1, 0>(1);
    if (v == 25) return choice_mma_pdl();
    if (v == 9) return choice_wide<4>(p);
    if (v == 10) return choice_wide<8>(p);
    if (v == 5) return choice_mma<2, 3>();
    if (v == 6) return choice_mma<4>();
  }
  (void)units;
  switch (v) {
    case 1: return choice_t<T, 4, true, 2, 6>(D);
    case 2: return choice_t<T, 4, true, 4, 4>(D);
    case 3: return choice_t<T, 4, true, 3, 5>(D);
    default: return choice_t<T, 4, true, 3, 4>(D);
  }
}

template <typename T>
Choice choice_r(const kvx_params& p, int rmax, int units) {
  const bool fast = p.head_dim == 128 && (p.q_heads / p.kv_heads) % 4 == 0;  // every CTA gets 4 rows
  switch (rmax) {
    case 1: return choice_t<T, 1, false>(p.head_dim);
    case 2: return choice_t<T, 2, false>(p.head_dim);
    case 4: return fast ? choice_fast<T>(p, units) : choice_t<T, 4, false>(p.head_dim);
    default: return choice_t<T, 8, false>(p.head_dim);
  }
}

template <int STG>
Choice choice_mma16() {
  return {reinterpret_cast<const void*>(mma16_kernel<STG>), size_t(STG) * 2 * MMA_TT * MMA_RBP + 2 * 16 * MMA_RBP};
}

// The 16-row tensor-core prefix pass applies where the GQA-4 d128 bf16 tensor-core path does.
bool rows16_ok(const kvx_params& p) {
  const int v = fast_variant();
  return p.kv_dtype == KVX_BF16 && p.head_dim == 128 && (p.q_heads / p.kv_heads) % 4 == 0 &&
         (v == 0 || (v >= 4 && v <= 6) || v >= 8);
}

Choice choose(const kvx_params& p, int rmax, int units) {
  if (rmax == 16) return choice_mma16<2>();
  switch (p.kv_dtype) {
    case KVX_F32: return choice_r<float>(p, rmax, units);
    case KVX_BF16: return choice_r<uint16_t>(p, rmax, units);
    default: return choice_r<uint8_t>(p, rmax, units);
  }
}

int resident_per_sm(const Choice& c) {
  if (c.smem > 48 * 1024) cudaFuncSetAttribute(c.fn, cudaFuncAttributeMaxDynamicSharedMemorySize, int(c.smem));
  int n = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, c.fn, c.threads, c.smem) != cudaSuccess || n < 1) n = 1;
  return n;
}

cudaError_t launch(const Args& a, const Choice& c, dim3 grid) {
  if (c.smem > 48 * 1024) cudaFuncSetAttribute(c.fn, cudaFuncAttributeMaxDynamicSharedMemorySize, int(c.smem));
  void* args[] = {const_cast<Args*>(&a)};
  const cudaError_t e = cudaLaunchKernel(c.fn, grid, dim3(c.threads), args, c.smem, stream_of(a.p));
  return e != cudaSuccess ? e : cudaGetLastError();
}

struct Plan {
  int rmax, chunks, splits;
  Choice c;
  int gy(int kv_heads) const { return (kv_heads / c.hpc) * chunks; }  // row groups per unit
};

Plan plan(const kvx_params* p, int units, int rows_per_unit, int max_len, bool rows16 = false) {
  Plan pl;
  const int rows = rows_per_unit < 8 ? rows_per_unit : 8;
  pl.rmax = rows16 && rows_per_unit > 4 ? 16 : rows <= 1 ? 1 : rows <= 2 ? 2 : rows <= 4 ? 4 : 8;
  pl.chunks = (rows_per_unit + pl.rmax - 1) / pl.rmax;
  pl.c = choose(*p, pl.rmax, units);
  const long ctas = long(units) * (p->kv_heads / pl.c.hpc) * pl.chunks;
  if (p->num_splits > 0) return pl.splits = p->num_splits, pl;
  // split the KV length across CTAs (flash-decoding): the largest power-of-two split count whose
  // CTAs fit in one wave of what the GPU holds at once, splits of >= 64 tokens. Filling whole waves
  // instead (v19: up to two) took 33 splits at batch 2 x 8k and cost 25 % there, 11 % at 32k
  // (H200, notes/kvlab_gpu/v19_split_sweep_b1-8.txt)
  const long resident = long(resident_per_sm(pl.c)) * num_sms();
  const int cap = std::max(1, (max_len + 63) / 64);
  pl.splits = 1;
  while (pl.splits * 2 <= cap && ctas * pl.splits * 2 <= resident) pl.splits *= 2;
  return pl;
}

int check(const kvx_params* p) {
  if (!p) return fail("params is NULL");
  if (p->num_seqs <= 0 || p->q_heads <= 0 || p->kv_heads <= 0 || p->block_size <= 0 || p->q_heads % p->kv_heads)
    return fail("bad sizes: num_seqs, heads, block_size positive; q_heads a multiple of kv_heads");
  const int tpt = p->head_dim / 8;
  if (p->head_dim % 8 || tpt < 1 || tpt > 32 || (tpt & (tpt - 1)))
    return fail("CUDA kernels need head_dim = 8 x a power of two, at most 256");
  if (p->max_seq_len <= 0) return fail("hints: max_seq_len must be given (a host-side bound)");
  return 0;
}

Args base_args(const kvx_params* p, const float* q, const void* k, const void* v, int kind, int mode) {
  Args a{};
  a.p = *p;
  a.q = q, a.k = k, a.v = v, a.kind = kind, a.mode = mode;
  return a;
}

#include "cuda_split1.cuh"
#include "cuda_b1.cuh"
#include "cuda_b1f.cuh"

int run_decode(Args a, int units, float* out, float* lse) {
  const kvx_params& p = a.p;
  const long items = long(units) * p.kv_heads * ((p.q_heads / p.kv_heads + MMA_R - 1) / MMA_R);
  if (b1f_applies(a)) return run_b1f(a, items, out, lse);
  if (b1_applies(a, items)) return run_b1(a, items, out, lse);
  if (split1_applies(p, items)) return run_split1(a, items, out, lse);
  const Plan pl = plan(&p, units, p.q_heads / p.kv_heads, p.max_seq_len);
  const size_t NQ = size_t(p.num_seqs) * p.q_heads;
  float* ws = g_ws.get(NQ * pl.splits * (p.head_dim + 2));
  if (!ws) return fail("cudaMalloc of the split workspace failed");
  a.ws_m = ws, a.ws_l = ws + NQ * pl.splits, a.ws_acc = ws + 2 * NQ * pl.splits;
  a.chunks = pl.chunks, a.slot0 = 0, a.nslots = pl.splits;
  // the last-CTA merge keeps one weight per split in shared memory: far more than any plan makes
  a.fuse = (pl.c.fuse == 2 && pl.splits <= 4096) || (pl.c.fuse >= 1 && pl.splits == 1);
  a.out = out, a.lse = lse;
  if (a.fuse && pl.splits > 1) {
    a.counters = g_cnt.get(size_t(units) * pl.gy(p.kv_heads), stream_of(p));
    if (!a.counters) return fail("cudaMalloc of the split counters failed");
  }
  dim3 grid(pl.splits, pl.gy(p.kv_heads), units);
  Choice c = pl.c;
  if (c.multi && a.fuse && pl.splits == 1) {
    // more (unit, kv head) items than resident CTAs: each CTA streams ipc of them back to back
    const Choice cm{reinterpret_cast<const void*>(mma_multi_kernel<3>),
                    size_t(3) * 2 * MMA_TT * MMA_RBP + (MMA_WARPS * MMA_R * MMA_D + 2 * MMA_WARPS * MMA_R) * sizeof(float)};
    const long resident = long(resident_per_sm(cm)) * num_sms(), items = long(units) * grid.y;
    if (items > resident) {
      const long ipc = (items + resident - 1) / resident;
      grid.z = unsigned((units + ipc - 1) / ipc);
      c = cm;
    }
  }
  cudaError_t e = launch(a, c, grid);
  if (e == cudaSuccess && !a.fuse && c.pdl) {
    cudaLaunchConfig_t cfg{};
    cfg.gridDim = dim3(unsigned(NQ)), cfg.blockDim = dim3(128), cfg.dynamicSmemBytes = pl.splits * sizeof(float);
    cfg.stream = stream_of(p);
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr, cfg.numAttrs = 1;
    e = cudaLaunchKernelEx(&cfg, combine_kernel, p, pl.splits, static_cast<const float*>(a.ws_m),
                           static_cast<const float*>(a.ws_l), static_cast<const float*>(a.ws_acc), out, lse);
  } else if (e == cudaSuccess && !a.fuse) {
    combine_kernel<<<unsigned(NQ), 128, pl.splits * sizeof(float), stream_of(p)>>>(p, pl.splits, a.ws_m, a.ws_l, a.ws_acc, out, lse);
    e = cudaGetLastError();
  }
  return e == cudaSuccess ? 0 : fail(std::string("CUDA: ") + cudaGetErrorString(e));
}

}  // namespace

extern "C" {

const char* kvx_cuda_last_error(void) { return g_err.c_str(); }

int kvx_cuda_read_floor(const void* a, size_t a_bytes, const void* b, size_t b_bytes, unsigned* sink, void* stream,
                        int32_t ctas_per_sm, int32_t l2_hint) {
  if (a_bytes % 16 || b_bytes % 16) return fail("read_floor: sizes must be multiples of 16 bytes");
  if (ctas_per_sm < 1 || ctas_per_sm > 8) return fail("read_floor: 1 to 8 CTAs per SM");
  const auto fn = l2_hint ? read_floor_kernel<true> : read_floor_kernel<false>;
  fn<<<ctas_per_sm * num_sms(), 256, 0, static_cast<cudaStream_t>(stream)>>>(
      static_cast<const uint4*>(a), a_bytes / 16, static_cast<const uint4*>(b), b_bytes / 16, sink);
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? 0 : fail(std::string("CUDA: ") + cudaGetErrorString(e));
}

int kvx_cuda_paged(const kvx_params* p, const float* q, const void* k, const void* v, const int32_t* block_table,
                   int32_t max_blocks, const int32_t* seq_lens, float* out, float* lse) {
  if (check(p)) return 1;
  Args a = base_args(p, q, k, v, PAGED, DECODE);
  a.table = block_table, a.max_blocks = max_blocks, a.seq_lens = seq_lens;
  return run_decode(a, p->num_seqs, out, lse);
}

int kvx_cuda_spans(const kvx_params* p, const float* q, const void* k, const void* v, const int32_t* span_ptr,
                   const int32_t* span_block, const int32_t* span_len, const int32_t* seq_lens, float* out, float* lse) {
  if (check(p)) return 1;
  Args a = base_args(p, q, k, v, SPANS, DECODE);
  a.sptr = span_ptr, a.sblk = span_block, a.slen = span_len, a.seq_lens = seq_lens;
  return run_decode(a, p->num_seqs, out, lse);
}

int kvx_cuda_contiguous(const kvx_params* p, const float* q, const void* k, const void* v, int32_t stride_tokens,
                        const int32_t* seq_lens, float* out, float* lse) {
  if (check(p)) return 1;
  Args a = base_args(p, q, k, v, CONTIG, DECODE);
  a.stride = stride_tokens, a.seq_lens = seq_lens;
  return run_decode(a, p->num_seqs, out, lse);
}

int kvx_cuda_hybrid(const kvx_params* p, const float* q, const void* k, const void* v, int32_t num_groups,
                    const int32_t* group_of_seq, const int32_t* group_ptr, const int32_t* group_members,
                    const int32_t* prefix_len, const int32_t* pre_ptr, const int32_t* pre_block, const int32_t* pre_len,
                    const int32_t* suf_ptr, const int32_t* suf_block, const int32_t* suf_len, const int32_t* seq_lens,
                    float* out, float* lse) {
  if (check(p)) return 1;
  if (p->max_group <= 0) return fail("hints: max_group must be given for hybrid");
  if (p->max_prefix_len == 0) {
    // nothing shared (the host says so): every suffix starts at token 0 and is the whole sequence, so
    // the call is a spans call over the suffix spans; no empty prefix pass, no prefix partials to merge
    Args a = base_args(p, q, k, v, SPANS, DECODE);
    a.sptr = suf_ptr, a.sblk = suf_block, a.slen = suf_len, a.seq_lens = seq_lens;
    return run_decode(a, p->num_seqs, out, lse);
  }
  const int G = p->q_heads / p->kv_heads;
  Args a = base_args(p, q, k, v, SPANS, PREFIX);
  a.seq_lens = seq_lens, a.group_of_seq = group_of_seq, a.group_ptr = group_ptr, a.group_members = group_members;
  a.prefix_len = prefix_len;
  const Plan pp = plan(p, num_groups, p->max_group * G, p->max_seq_len, rows16_ok(*p));
  const Plan ps = plan(p, p->num_seqs, G, p->max_seq_len);
  const int nslots = pp.splits + ps.splits;
  const size_t NQ = size_t(p->num_seqs) * p->q_heads;
  float* ws = g_ws.get(NQ * nslots * (p->head_dim + 2));
  if (!ws) return fail("cudaMalloc of the split workspace failed");
  a.ws_m = ws, a.ws_l = ws + NQ * nslots, a.ws_acc = ws + 2 * NQ * nslots, a.nslots = nslots;
  // prefix pass: one CTA row-chunk holds several sequences' query heads over the same K/V
  a.sptr = pre_ptr, a.sblk = pre_block, a.slen = pre_len, a.chunks = pp.chunks, a.slot0 = 0;
  cudaError_t e = launch(a, pp.c, dim3(pp.splits, pp.gy(p->kv_heads), num_groups));
  if (e == cudaSuccess) {
    a.mode = SUFFIX, a.sptr = suf_ptr, a.sblk = suf_block, a.slen = suf_len, a.chunks = ps.chunks, a.slot0 = pp.splits;
    e = launch(a, ps.c, dim3(ps.splits, ps.gy(p->kv_heads), p->num_seqs));
  }
  if (e == cudaSuccess) {
    combine_kernel<<<unsigned(NQ), 128, nslots * sizeof(float), stream_of(*p)>>>(*p, nslots, a.ws_m, a.ws_l, a.ws_acc, out, lse);
    e = cudaGetLastError();
  }
  return e == cudaSuccess ? 0 : fail(std::string("CUDA: ") + cudaGetErrorString(e));
}
}
