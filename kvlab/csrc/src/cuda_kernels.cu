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
constexpr int THREADS = 128;
constexpr float LOG2E = 1.4426950408889634f;
constexpr int U = 4;       // tokens per lane group per step
constexpr int STAGES = 3;  // cp.async pipeline depth

__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
  const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(valid ? 16 : 0));
}
// The same with an L2 prefetch-size hint: L2 fetches the whole B-byte line of which this is a piece.
// The bf16 d128 kernels copy whole 256-byte rows, so 128 fetches nothing they do not read, and it
// took the copies alone from 0.92-0.93 to 0.95 of SDPA at 8k/32k x 32 (notes/kvlab.md, v26);
// cuDNN's SDPA kernel issues its copies with the same hint (LDGSTS.LTC128B).
template <int B>
__device__ __forceinline__ void cp_async16_l2(void* dst, const void* src, bool valid) {
  const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  static_assert(B == 128 || B == 256, "L2 prefetch size");
  if constexpr (B == 128)
    asm volatile("cp.async.cg.shared.global.L2::128B [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(valid ? 16 : 0));
  else
    asm volatile("cp.async.cg.shared.global.L2::256B [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(valid ? 16 : 0));
}
template <int B>
__device__ __forceinline__ void cp_async16_hint(void* dst, const void* src, bool valid) {
  if constexpr (B == 0) cp_async16(dst, src, valid);
  else cp_async16_l2<B>(dst, src, valid);
}
__device__ __forceinline__ void cp_async8(void* dst, const void* src, bool valid) {
  const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;\n" ::"r"(d), "l"(src), "r"(valid ? 8 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

// 2^x in one MUFU op (ex2.approx: ~2 ulp); 2^-inf = 0 and NaN stays NaN, as the merge needs.
__device__ __forceinline__ float ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

enum Kind { PAGED = 0, SPANS = 1, CONTIG = 2 };
enum Mode { DECODE = 0, PREFIX = 1, SUFFIX = 2 };

struct Args {
  kvx_params p;
  const float* q;
  const void* k;
  const void* v;
  int kind, mode;
  const int32_t* table;
  int32_t max_blocks, stride;
  const int32_t* sptr;  // spans CSR per unit (sequence, or group for PREFIX)
  const int32_t* sblk;
  const int32_t* slen;
  const int32_t* seq_lens;
  const int32_t* group_of_seq;
  const int32_t* group_ptr;
  const int32_t* group_members;
  const int32_t* prefix_len;
  int chunks;       // row chunks per (unit, kv head)
  int slot0, nslots;  // this launch writes partial slots [slot0, slot0 + gridDim.x) of nslots
  float* ws_m;
  float* ws_l;
  float* ws_acc;
  int fuse;        // tensor-core decode: one split writes out/lse itself, several merge in the last CTA
  int* counters;   // per (unit, blockIdx.y): arrivals of that row group's splits (zero between launches)
  float* out;
  float* lse;
};

__device__ __forceinline__ void load8(const float* p, float (&x)[8]) {
  const float4 a = reinterpret_cast<const float4*>(p)[0], b = reinterpret_cast<const float4*>(p)[1];
  x[0] = a.x; x[1] = a.y; x[2] = a.z; x[3] = a.w; x[4] = b.x; x[5] = b.y; x[6] = b.z; x[7] = b.w;
}

__device__ __forceinline__ void load8(const uint16_t* p, float (&x)[8]) {  // bf16: high half of f32
  const uint4 u = *reinterpret_cast<const uint4*>(p);
  const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    x[2 * i] = __uint_as_float(w[i] << 16);
    x[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
  }
}

__device__ __forceinline__ void load8(const uint8_t* p, float (&x)[8]) {  // e4m3fn, as on the CPU
  const uint2 u = *reinterpret_cast<const uint2*>(p);
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const uint32_t b = ((i < 4 ? u.x : u.y) >> (8 * (i & 3))) & 0xffu;
    const float f = __uint_as_float(((b & 0x80u) << 24) | ((b & 0x7fu) << 20)) * 0x1p120f;
    x[i] = (b & 0x7fu) == 0x7fu ? __int_as_float(0x7fc00000) : f;
  }
}

// Reduce-scatter 16 partial sums over the 16 lanes of a group in 15 shuffles (instead of 16 x 4):
// afterwards lane i of the group holds, in v[0], the full sum of value i.
__device__ __forceinline__ void butterfly16(float (&v)[16], int lane) {
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const int half = 8 >> k;
    const bool upper = lane & half;
#pragma unroll
    for (int i = 0; i < half; ++i) {
      const float send = upper ? v[i] : v[i + half];
      const float keep = upper ? v[i + half] : v[i];
      v[i] = keep + __shfl_xor_sync(0xffffffffu, send, half);
    }
  }
}

struct Rows {
  int n;
  int seq[16], head[16], qpos[16];
};

__device__ __forceinline__ void unit_rows(const Args& a, int unit, int kvh, int chunk, int rmax, Rows& r, int& src_len,
                                          int& loffset) {
  const int G = a.p.q_heads / a.p.kv_heads;
  r.n = 0;
  if (a.mode == PREFIX) {
    const int m0 = a.group_ptr[unit], nm = a.group_ptr[unit + 1] - m0;
    src_len = a.prefix_len[unit];
    loffset = 0;
    for (int i = 0; i < rmax; ++i) {
      const int idx = chunk * rmax + i;
      if (idx >= nm * G) break;
      const int b = a.group_members[m0 + idx / G];
      r.seq[r.n] = b, r.head[r.n] = kvh * G + idx % G, r.qpos[r.n] = a.seq_lens[b] - 1, ++r.n;
    }
  } else {
    const int L = a.seq_lens[unit];
    loffset = a.mode == SUFFIX ? a.prefix_len[a.group_of_seq[unit]] : 0;
    src_len = L - loffset;
    for (int i = 0; i < rmax; ++i) {
      const int idx = chunk * rmax + i;
      if (idx >= G) break;
      r.seq[r.n] = unit, r.head[r.n] = kvh * G + idx, r.qpos[r.n] = L - 1, ++r.n;
    }
  }
}

// Where one unit's (sequence's, or PREFIX group's) tokens live in the pool: of(t) is token t's slot
// through the unit's contiguous row, paged block-table row, or spans. The spans cursor only moves
// forward, so each thread asks for its tokens in non-decreasing order (tiles are issued in order);
// `send` (the current span's end token) tells whether a tile lies in one physically contiguous run.
// reset() points it at a unit (the tensor-core kernels load the span CSR offsets early and pass
// them in). CUR: keep the current span's first block in a register, loaded alongside its length
// (the tensor-core kernels), or read it at each lookup (partial_kernel, mma16_kernel: fewer live
// registers where those are short).
template <bool CUR>
struct SlotCursor {
  const Args& a;
  int bs, bs_shift, unit;
  int si, sstart, send, nsp, cur;  // spans: current span, its first token, its end, count, its first block
  const int32_t* sblk;             // SPANS: the unit's spans (first block, length in tokens)
  const int32_t* slen;
  const int32_t* table;            // PAGED: the unit's block-table row

  __device__ __forceinline__ explicit SlotCursor(const Args& args) : a(args) {
    bs = a.p.block_size, bs_shift = (bs & (bs - 1)) ? -1 : __ffs(bs) - 1;
    table = sblk = slen = nullptr;
    si = 0, sstart = 0, send = 0, nsp = 0, cur = 0;
  }
  __device__ __forceinline__ void reset(int u, int sp0, int sp1) {  // sp0, sp1: a.sptr[u], a.sptr[u + 1]
    begin(u);
    if (a.kind == SPANS) begin_spans(sp0, sp1);
  }
  __device__ __forceinline__ void reset(int u) {
    begin(u);
    if (a.kind == SPANS) begin_spans(a.sptr[u], a.sptr[u + 1]);
  }
  __device__ __forceinline__ void reset_spans(int u) {  // whatever a.kind says (the hybrid prefix)
    begin(u);
    begin_spans(a.sptr[u], a.sptr[u + 1]);
  }
  __device__ __forceinline__ void begin(int u) {
    unit = u;
    table = a.table + size_t(u) * a.max_blocks;
    si = 0, sstart = 0, send = 0, nsp = 0, cur = 0;
  }
  __device__ __forceinline__ void begin_spans(int sp0, int sp1) {
    sblk = a.sblk + sp0, slen = a.slen + sp0, nsp = sp1 - sp0;
    if constexpr (CUR) {
      if (nsp) send = slen[0], cur = sblk[0];  // two independent loads
    } else {
      send = nsp ? slen[0] : 0;
    }
  }
  __device__ __forceinline__ int64_t spans(int tok) {
    if constexpr (CUR) {
      while (tok >= send && si + 1 < nsp) sstart = send, ++si, send += slen[si], cur = sblk[si];
      return int64_t(cur) * bs + (tok - sstart);
    } else {
      while (tok >= send && si + 1 < nsp) sstart = send, ++si, send += slen[si];
      return int64_t(sblk[si]) * bs + (tok - sstart);
    }
  }
  __device__ __forceinline__ int64_t of(int tok) {
    if (a.kind == CONTIG) return int64_t(unit) * a.stride + tok;
    if (a.kind == PAGED)  // block sizes are powers of two in practice: shift, not divide
      return bs_shift >= 0 ? int64_t(table[tok >> bs_shift]) * bs + (tok & (bs - 1))
                           : int64_t(table[tok / bs]) * bs + tok % bs;
    return spans(tok);
  }
};

// The NG thread groups' (warps') partials of row r, dim d in shared memory (RMAX rows per group),
// merged by log-sum-exp: max M, total weight L and accumulator A, both scaled to M; nan: a group's
// weight was NaN (the poison propagates).
struct Merged {
  float M, L, A;
  bool nan;
};
__device__ __forceinline__ Merged merge_groups(const float* s_acc, const float* s_m, const float* s_l, int NG, int RMAX,
                                               int D, int r, int d) {
  Merged x{-INFINITY, 0.f, 0.f, false};
  for (int g = 0; g < NG; ++g) x.M = fmaxf(x.M, s_m[g * RMAX + r]);
  for (int g = 0; g < NG; ++g) {
    const float mg = s_m[g * RMAX + r], lg = s_l[g * RMAX + r];
    x.nan |= isnan(lg);
    if (mg == -INFINITY) continue;
    const float c = exp2f(mg - x.M);
    x.L += lg * c;
    x.A += s_acc[(size_t(g) * RMAX + r) * D + d] * c;
  }
  return x;
}

// Final output of one row, as combine_kernel writes it (NaN poison kept, empty rows 0 / -inf).
__device__ __forceinline__ float fin_out(float A, float L, float vs) {
  return L > 0.f ? A * vs / L : (isnan(L) ? NAN : 0.f);
}
__device__ __forceinline__ float fin_lse(float M, float L) {
  return L > 0.f ? (M + log2f(L)) / LOG2E : (isnan(L) ? NAN : -INFINITY);
}

// Where a merged (row o, dim d) value goes: the final output when the CTA saw the whole row (direct;
// L is 0 when the row saw no key, M = -inf), else its split's partial in slot `slot` of the
// workspace for the combine (NaN poison kept in both).
__device__ __forceinline__ void put_merged(const Args& a, const Merged& x, size_t o, int d, int D, bool direct, int slot,
                                           float vs) {
  if (direct) {
    const float Lt = x.nan ? NAN : x.L;
    a.out[o * D + d] = fin_out(x.M == -INFINITY ? 0.f : x.A, Lt, vs);
    if (d == 0 && a.lse) a.lse[o] = fin_lse(x.M, Lt);
  } else {
    a.ws_acc[(o * a.nslots + slot) * D + d] = x.nan ? NAN : x.A;
    if (d == 0) a.ws_m[o * a.nslots + slot] = x.M, a.ws_l[o * a.nslots + slot] = x.nan ? NAN : x.L;
  }
}

// This CTA's tokens [t0, t1) of its unit: from the earliest key any of its rows sees (window), cut
// into gridDim.x splits; ALIGN > 1 starts the range and each split on an ALIGN-token boundary.
template <int ALIGN = 1>
__device__ __forceinline__ void split_range(const Args& a, const Rows& rows, int src_len, int loffset, int& t0,
                                            int& t1) {
  int lo = src_len;
  for (int r = 0; r < rows.n; ++r)
    lo = min(lo, a.p.window > 0 ? max(0, rows.qpos[r] - a.p.window + 1 - loffset) : 0);
  lo &= ~(ALIGN - 1);
  const int span = max(0, src_len - lo), per = ((span + gridDim.x - 1) / gridDim.x + ALIGN - 1) & ~(ALIGN - 1);
  t0 = lo + blockIdx.x * per, t1 = min(src_len, t0 + per);
}

// STG: cp.async pipeline depth; MINB: CTAs per SM the register budget must allow.
template <typename T, int RMAX, bool FAST, int STG = STAGES, int MINB = (RMAX <= 4 ? 4 : 2)>
__global__ void __launch_bounds__(THREADS, MINB) partial_kernel(Args a) {
  extern __shared__ __align__(16) float smem[];
  const int D = a.p.head_dim, TPT = D / 8, NG = THREADS / TPT, H = a.p.kv_heads;
  const int gi = threadIdx.x / TPT, lane = threadIdx.x % TPT;
  const int unit = blockIdx.z, kvh = blockIdx.y / a.chunks, chunk = blockIdx.y % a.chunks;
  Rows rows;
  int src_len, loffset;
  unit_rows(a, unit, kvh, chunk, RMAX, rows, src_len, loffset);
  if (rows.n == 0) return;

  int t0, t1;
  split_range(a, rows, src_len, loffset, t0, t1);

  const float kscale = a.p.k_scale ? a.p.k_scale[kvh] : 1.f;
  float q[RMAX][8], acc[RMAX][8], m[RMAX], l[RMAX], slope[RMAX], qp[RMAX];
#pragma unroll
  for (int r = 0; r < RMAX; ++r) {
    m[r] = -INFINITY, l[r] = 0.f, slope[r] = 0.f, qp[r] = 0.f;
#pragma unroll
    for (int e = 0; e < 8; ++e) acc[r][e] = 0.f, q[r][e] = 0.f;
    if (r < rows.n) {
      const float* qr = a.q + (size_t(rows.seq[r]) * a.p.q_heads + rows.head[r]) * D + lane * 8;
#pragma unroll
      for (int e = 0; e < 8; ++e) q[r][e] = qr[e] * a.p.sm_scale * kscale * LOG2E;  // scores in log2 units
      slope[r] = a.p.alibi ? a.p.alibi[rows.head[r]] * LOG2E : 0.f;
      qp[r] = float(rows.qpos[r]);  // registers: the hot loop must not index the Rows struct
    }
  }

  // Fast path (head_dim 128, four query rows per kv head: GQA-4): the 16 lanes of a token group
  // reduce-scatter the 16 (row, token) scores, so each lane owns one score's softmax and the
  // probabilities come back by broadcast. Uniform per CTA.
  constexpr bool fast = FAST && RMAX * U == 16;  // host picks FAST only for head_dim 128, G % 4 == 0
  const int my_r = lane / U, my_u = lane % U, gbase = (threadIdx.x & 31) & 16;
  float my_qp = 0.f, my_slope = 0.f, my_l = 0.f;
#pragma unroll
  for (int r = 0; r < RMAX; ++r)
    if (my_r == r) my_qp = qp[r], my_slope = slope[r];

  const T* K = static_cast<const T*>(a.k);
  const T* V = static_cast<const T*>(a.v);
  SlotCursor<false> slots(a);  // a cursor per thread; its tokens only move forward
  slots.reset(unit);
  // Loads go through a STAGES-deep cp.async pipeline into shared memory: the copy engine keeps
  // (STAGES-1) tiles of K and V in flight per CTA while the lanes compute on the oldest one.
  // A tile is the TT = U × NG tokens the CTA consumes per step; rows of RB bytes, copied in CB-byte
  // chunks (tokens past the range are zero-filled and masked).
  const int RB = D * int(sizeof(T)), CB = RB % 16 == 0 ? 16 : 8, CPR = RB / CB, TT = U * NG;
  const int cpr_shift = __ffs(CPR) - 1;
  char* stage_base = reinterpret_cast<char*>(smem);
  const int stage_bytes = 2 * TT * RB;
  const int nsteps = t1 > t0 ? (t1 - t0 + TT - 1) / TT : 0;
  auto issue = [&](int step) {
    if (step < nsteps) {
      char* st = stage_base + (step % STG) * stage_bytes;
      const int tb = t0 + step * TT;
      for (int c = threadIdx.x; c < TT * CPR; c += THREADS) {
        const int j = c >> cpr_shift, part = c & (CPR - 1), t = tb + j;  // CPR is a power of two
        const bool ok = t < t1;
        const int64_t slot = ok ? slots.of(t) : 0;
        const size_t off = size_t(slot * H + kvh) * D * sizeof(T) + size_t(part) * CB;
        char* dk = st + j * RB + part * CB;
        if (CB == 16) {
          cp_async16(dk, reinterpret_cast<const char*>(K) + (ok ? off : 0), ok);
          cp_async16(dk + TT * RB, reinterpret_cast<const char*>(V) + (ok ? off : 0), ok);
        } else {
          cp_async8(dk, reinterpret_cast<const char*>(K) + (ok ? off : 0), ok);
          cp_async8(dk + TT * RB, reinterpret_cast<const char*>(V) + (ok ? off : 0), ok);
        }
      }
    }
    cp_async_commit();  // an empty group past the end keeps the wait counts uniform
  };
#pragma unroll
  for (int i = 0; i < STG - 1; ++i) issue(i);
  for (int step = 0; step < nsteps; ++step) {
    cp_async_wait<STG - 2>();
    __syncthreads();             // tile `step` landed for everyone; tile step-1 is free to refill
    issue(step + STG - 1);
    const char* st = stage_base + (step % STG) * stage_bytes;
    const int tb = t0 + step * TT;
    if constexpr (fast) {
      {
        // one K row (then one V row) live at a time: fewer registers, more CTAs per SM
        float sv[16];
#pragma unroll
        for (int u = 0; u < U; ++u) {
          float kf[8];
          load8(reinterpret_cast<const T*>(st + (u * NG + gi) * RB) + lane * 8, kf);
#pragma unroll
          for (int r = 0; r < RMAX; ++r) {
            float x = 0.f;
#pragma unroll
            for (int e = 0; e < 8; ++e) x = fmaf(q[r][e], kf[e], x);
            sv[r * U + u] = x;
          }
        }
        butterfly16(sv, lane);
        const float rel = float(loffset + tb + my_u * NG + gi) - my_qp;
        const bool masked = tb + my_u * NG + gi >= t1 || (a.p.window > 0 && rel <= -float(a.p.window));
        const float sc = masked ? -INFINITY : fmaf(my_slope, rel, sv[0]);
        float tmax = fmaxf(sc, __shfl_xor_sync(0xffffffffu, sc, 1));  // the row's 4 tokens: lanes r*4..r*4+3
        tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, 2));
        float my_mx = -INFINITY, my_corr = 1.f;
#pragma unroll
        for (int r = 0; r < RMAX; ++r) {
          const float mx = fmaxf(m[r], __shfl_sync(0xffffffffu, tmax, gbase + r * U));
          const float corr = mx == -INFINITY ? 1.f : ex2(m[r] - mx);
          m[r] = mx;
#pragma unroll
          for (int e = 0; e < 8; ++e) acc[r][e] *= corr;
          if (my_r == r) my_mx = mx, my_corr = corr;
        }
        const float pe = my_mx == -INFINITY ? (sc != sc ? sc : 0.f) : ex2(sc - my_mx);  // NaN poison survives
        my_l = my_l * my_corr + pe;
#pragma unroll
        for (int u = 0; u < U; ++u) {
          float vf[8];
          load8(reinterpret_cast<const T*>(st + TT * RB + (u * NG + gi) * RB) + lane * 8, vf);
#pragma unroll
          for (int r = 0; r < RMAX; ++r) {
            const float pv = __shfl_sync(0xffffffffu, pe, gbase + r * U + u);
#pragma unroll
            for (int e = 0; e < 8; ++e) acc[r][e] = fmaf(pv, vf[e], acc[r][e]);
          }
        }
      }
    } else {
    float kf[U][8], vf[U][8];
    bool ok[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int j = u * NG + gi;
      ok[u] = tb + j < t1;
      load8(reinterpret_cast<const T*>(st + j * RB) + lane * 8, kf[u]);
      load8(reinterpret_cast<const T*>(st + TT * RB + j * RB) + lane * 8, vf[u]);
    }
#pragma unroll
    for (int r = 0; r < RMAX; ++r) {
      if (r >= rows.n) break;
      float s[U];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        s[u] = 0.f;
#pragma unroll
        for (int e = 0; e < 8; ++e) s[u] = fmaf(q[r][e], kf[u][e], s[u]);
      }
      for (int off = TPT / 2; off > 0; off >>= 1) {
#pragma unroll
        for (int u = 0; u < U; ++u) s[u] += __shfl_xor_sync(0xffffffffu, s[u], off);
      }
      float mx = m[r];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const float rel = float(loffset + tb + u * NG + gi) - qp[r];
        const bool masked = !ok[u] || (a.p.window > 0 && rel <= -float(a.p.window));
        s[u] = masked ? -INFINITY : fmaf(slope[r], rel, s[u]);
        mx = fmaxf(mx, s[u]);
      }
      if (mx == -INFINITY) continue;  // nothing unmasked yet for this row
      const float corr = ex2(m[r] - mx);
      float lsum = l[r] * corr;
#pragma unroll
      for (int e = 0; e < 8; ++e) acc[r][e] *= corr;
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const float pe = ex2(s[u] - mx);
        lsum += pe;
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[r][e] = fmaf(pe, vf[u][e], acc[r][e]);
      }
      l[r] = lsum;
      m[r] = mx;
    }
    }
  }
  cp_async_wait<0>();
  __syncthreads();  // the stage buffers are reused for the merge below
  if constexpr (fast) {  // each lane summed one row's probabilities over its tokens: total them per row
    my_l += __shfl_xor_sync(0xffffffffu, my_l, 1);
    my_l += __shfl_xor_sync(0xffffffffu, my_l, 2);
#pragma unroll
    for (int r = 0; r < RMAX; ++r) l[r] = __shfl_sync(0xffffffffu, my_l, gbase + r * U);
  }

  // merge the NG token groups of this CTA, then write one partial per row
  float* s_acc = smem;                          // [NG][RMAX][D]
  float* s_m = s_acc + size_t(NG) * RMAX * D;   // [NG][RMAX]
  float* s_l = s_m + NG * RMAX;
#pragma unroll
  for (int r = 0; r < RMAX; ++r) {
#pragma unroll
    for (int e = 0; e < 8; ++e) s_acc[(size_t(gi) * RMAX + r) * D + lane * 8 + e] = acc[r][e];
    if (lane == 0) s_m[gi * RMAX + r] = m[r], s_l[gi * RMAX + r] = l[r];
  }
  __syncthreads();
  const int slot = a.slot0 + blockIdx.x;
  for (int idx = threadIdx.x; idx < rows.n * D; idx += THREADS) {
    const int r = idx / D, d = idx % D;
    put_merged(a, merge_groups(s_acc, s_m, s_l, NG, RMAX, D, r, d), size_t(rows.seq[r]) * a.p.q_heads + rows.head[r],
               d, D, false, slot, 1.f);
  }
}

// ---- tensor-core path: bf16 K/V, head_dim 128, four query rows per CTA (GQA-4) -----------------
// S = Q K^T and O += P V on mma.sync m16n8k16 (bf16 in, f32 accumulate). Q and P are split into
// bf16 hi + lo parts, so results keep ~16 mantissa bits: the oracle's float32 tolerance holds; the
// hi parts fill A-operand rows 0..3 and the lo parts rows 4..7 (rows 8..15 are zero), so one MMA
// covers both (mma_tile16). Each warp owns 16 tokens of a 64-token tile that a STG-deep cp.async
// pipeline streams into padded shared rows.
__device__ __forceinline__ uint32_t pack_bf16(float lo_k, float hi_k) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo_k, hi_k);
  return *reinterpret_cast<uint32_t*>(&v);
}
__device__ __forceinline__ void split_bf16(float a, float b, uint32_t& hi, uint32_t& lo) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
  const float2 hf = __bfloat1622float2(h);
  hi = *reinterpret_cast<const uint32_t*>(&h);
  lo = pack_bf16(a - hf.x, b - hf.y);
}
__device__ __forceinline__ void mma16816(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                         uint32_t b0, uint32_t b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
               "{%0,%1,%2,%3};\n"
               : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
               : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const void* p) {
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t (&r)[4], const void* p) {
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
}

constexpr int MMA_D = 128, MMA_R = 4, MMA_WARPS = 4, MMA_TT = 16 * MMA_WARPS;
constexpr int MMA_RB = MMA_D * 2, MMA_RBP = MMA_RB + 16;  // padded rows: conflict-free ldmatrix

// One warp, one 16-token tile: S = Q K^T for its 4 query rows, online softmax, O += P V.
// kt / vt: the tile's 16 K and V rows in shared memory, MMA_RBP bytes apart.
// The A operand's rows 0-3 carry the bf16 hi parts of the 4 query rows (Q, then P) and rows 4-7
// their lo parts, so one MMA does what a hi and a lo MMA did (half the tensor-core work); lane L
// (row g) and lane L ^ 16 (row g ^ 4) then add their halves and run identical softmax math.
__device__ __forceinline__ void mma_tile16(const char* kt, const char* vt, int tw, int t1, int loffset, float my_qp,
                                           float my_slope, int window, const uint32_t (&qa)[8][2],
                                           float (&acc)[16][4], float& m_run, float& l_run, int L, int t) {
  // S (rows = query rows, cols = 16 tokens as two n-tiles of 8)
  // two accumulators per n-tile (even / odd k-chunks): independent MMA chains of 4, not 8
  float sc[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
  float sc2[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
#pragma unroll
  for (int kp = 0; kp < 4; ++kp)  // 32 dims per ldmatrix.x4: two k-chunks
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
      uint32_t b[4];
      ldsm_x4(b, kt + (nt * 8 + L % 8) * MMA_RBP + (kp * 32 + (L / 8) * 8) * 2);
      mma16816(sc[nt], qa[2 * kp][0], 0u, qa[2 * kp][1], 0u, b[0], b[1]);
      mma16816(sc2[nt], qa[2 * kp + 1][0], 0u, qa[2 * kp + 1][1], 0u, b[2], b[3]);
    }
#pragma unroll
  for (int nt = 0; nt < 2; ++nt) {
    sc[nt][0] += sc2[nt][0], sc[nt][1] += sc2[nt][1];
    sc[nt][0] += __shfl_xor_sync(0xffffffffu, sc[nt][0], 16);  // hi + lo (commutative: both lanes agree)
    sc[nt][1] += __shfl_xor_sync(0xffffffffu, sc[nt][1], 16);
  }
  // online softmax on row g: this lane holds tokens nt*8 + 2t + {0,1}
  float mx = -INFINITY;
#pragma unroll
  for (int nt = 0; nt < 2; ++nt)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int tok = tw + nt * 8 + 2 * t + e;
      const float rel = float(loffset + tok) - my_qp;
      const bool masked = tok >= t1 || (window > 0 && rel <= -float(window));
      sc[nt][e] = masked ? -INFINITY : fmaf(my_slope, rel, sc[nt][e]);
      mx = fmaxf(mx, sc[nt][e]);
    }
  mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
  mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
  const float mnew = fmaxf(m_run, mx);
  const float corr = mnew == -INFINITY ? 1.f : ex2(m_run - mnew);
  float p[2][2];
#pragma unroll
  for (int nt = 0; nt < 2; ++nt)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const float x = sc[nt][e];
      p[nt][e] = mnew == -INFINITY ? (x != x ? x : 0.f) : ex2(x - mnew);  // NaN poison survives
    }
  l_run = l_run * corr + p[0][0] + p[0][1] + p[1][0] + p[1][1];
  m_run = mnew;
  // A fragment of P (k = tokens 2t,2t+1 and 2t+8,2t+9): hi parts in rows 0-3, lo parts in rows 4-7
  const bool lo_half = L >= 16;
  uint32_t pa0, pa1, hi, lo;
  split_bf16(p[0][0], p[0][1], hi, lo);
  pa0 = lo_half ? lo : hi;
  split_bf16(p[1][0], p[1][1], hi, lo);
  pa1 = lo_half ? lo : hi;
#pragma unroll
  for (int np = 0; np < 8; ++np) {  // 16 dims per ldmatrix.x4.trans: two n-tiles of V
    uint32_t b[4];
    ldsm_x4_t(b, vt + ((L / 8) % 2 * 8 + L % 8) * MMA_RBP + (np * 16 + (L / 16) * 8) * 2);
#pragma unroll
    for (int h2 = 0; h2 < 2; ++h2) {
      float (&c)[4] = acc[np * 2 + h2];
      c[0] *= corr, c[1] *= corr;
      mma16816(c, pa0, 0u, pa1, 0u, b[2 * h2], b[2 * h2 + 1]);
    }
  }
}

// The cp.async copies of one MMA_TT-token tile [tb, min(tb + MMA_TT, t1)) of kv head kvh into stage
// st (K rows, then V rows MMA_TT * MMA_RBP further), for mma_kernel and mma_multi_kernel. Spans /
// contiguous: when the whole tile sits in one physically contiguous run, the slot of token tb + j
// is base + j (one lookup per tile). Otherwise each thread copies 8 consecutive tokens (16 bytes of
// each row): one lookup for the 8 when they share a block (the paged layout's per-block table
// read), per token only where a block or span ends inside them. spec: this thread's first table
// entry when the caller loaded it early (paged, first tile, power-of-two blocks >= 8), else -1.
// (A version with one lookup and a 64-bit add per token, 36 % fewer instructions, was no faster
// and cost paged 2-3 %: notes/kvlab.md, v20-v22.)
template <int L2B = 128>
__device__ __forceinline__ void issue_tile(const Args& a, SlotCursor<true>& slots, char* st, int tb, int t1, int kvh,
                                           int spec) {
  constexpr int CPR = MMA_RB / 16;
  const int H = a.p.kv_heads, bs = slots.bs, bs_shift = slots.bs_shift;
  const char* K = static_cast<const char*>(a.k);
  const char* V = static_cast<const char*>(a.v);
  int64_t base = -1;
  if (a.kind != PAGED) {
    const int64_t s0 = slots.of(tb);
    if (a.kind == CONTIG || min(t1, tb + MMA_TT) <= slots.send) base = s0;
  }
  const int part = threadIdx.x % CPR, j0 = (threadIdx.x / CPR) * 8;
  int64_t run = -1, run2 = -1;
  int n1 = 8;  // tokens of the 8 in the first run; the rest continue in run2 (paged, bs >= 8)
  if (base < 0 && tb + j0 < t1) {
    const int first = tb + j0;
    const int64_t s0 = spec >= 0 ? int64_t(spec) * bs + (first & (bs - 1)) : slots.of(first);
    if (a.kind == PAGED && bs >= 8) {
      n1 = min(8, bs - (bs_shift >= 0 ? (first & (bs - 1)) : first % bs));
      run = s0;
      if (n1 < 8 && first + n1 < t1) run2 = slots.of(first + n1);
    } else if (a.kind == SPANS && first + 8 <= slots.send) {
      run = s0;
    }
  }
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const int j = j0 + i, tok = tb + j;
    const bool ok = tok < t1;
    const int64_t slot = !ok ? 0
                         : base >= 0 ? base + j
                         : run >= 0  ? (i < n1 ? run + i : run2 + (i - n1))
                                     : slots.of(tok);
    const size_t off = ok ? size_t(slot * H + kvh) * MMA_RB + size_t(part) * 16 : 0;
    char* dk = st + j * MMA_RBP + part * 16;
    cp_async16_hint<L2B>(dk, K + off, ok);
    cp_async16_hint<L2B>(dk + MMA_TT * MMA_RBP, V + off, ok);
  }
}

// After the last tile: rows g and g ^ 4 of the accumulator hold the hi and lo parts of one row.
__device__ __forceinline__ void fold_halves(float (&acc)[16][4]) {
#pragma unroll
  for (int n = 0; n < 16; ++n) {
    acc[n][0] += __shfl_xor_sync(0xffffffffu, acc[n][0], 16);
    acc[n][1] += __shfl_xor_sync(0xffffffffu, acc[n][1], 16);
  }
}

// Each warp's rows for the cross-warp merge (merge_groups): l summed over the quad sharing a row,
// then acc, m and l into s_acc [MMA_WARPS][MMA_R][MMA_D], s_m and s_l [MMA_WARPS][MMA_R]. Every lane
// must call it (the shuffles); the caller syncs before (smem may alias the K/V stages) and after.
__device__ __forceinline__ void stash_warp_rows(float* s_acc, float* s_m, float* s_l, const float (&acc)[16][4],
                                                float m_run, float& l_run, int warp, int g, int t) {
  l_run += __shfl_xor_sync(0xffffffffu, l_run, 1);
  l_run += __shfl_xor_sync(0xffffffffu, l_run, 2);
  if (g >= MMA_R) return;
#pragma unroll
  for (int n = 0; n < 16; ++n) {
    s_acc[(warp * MMA_R + g) * MMA_D + n * 8 + 2 * t] = acc[n][0];
    s_acc[(warp * MMA_R + g) * MMA_D + n * 8 + 2 * t + 1] = acc[n][1];
  }
  if (t == 0) s_m[warp * MMA_R + g] = m_run, s_l[warp * MMA_R + g] = l_run;
}

// Q fragments (A operand) of this lane: row g < 4 the bf16 hi part of query row g, row g >= 4 the
// lo part of query row g - 4 (rows 8..15 are zero); query rows past rows.n are zero.
__device__ __forceinline__ void load_q_frags(const Args& a, const Rows& rows, int kvh, int g, int t,
                                             uint32_t (&qa)[8][2]) {
  const int r = g & 3;
  const bool real = r < rows.n, lo_half = g >= 4;
  const float kscale = a.p.k_scale ? a.p.k_scale[kvh] : 1.f;
  const float* qr = a.q + (size_t(rows.seq[real ? r : 0]) * a.p.q_heads + rows.head[real ? r : 0]) * MMA_D;
  const float qs = real ? a.p.sm_scale * kscale * LOG2E : 0.f;
  uint32_t hi, lo;
#pragma unroll
  for (int kc = 0; kc < 8; ++kc) {
    split_bf16(qr[kc * 16 + 2 * t] * qs, qr[kc * 16 + 2 * t + 1] * qs, hi, lo);
    qa[kc][0] = lo_half ? lo : hi;
    split_bf16(qr[kc * 16 + 2 * t + 8] * qs, qr[kc * 16 + 2 * t + 9] * qs, hi, lo);
    qa[kc][1] = lo_half ? lo : hi;
  }
}

// Fused split combine: each CTA publishes its partial, then takes a ticket; the last of the
// gridDim.x splits of this (unit, blockIdx.y) merges them, so no second kernel launch is needed.
// The counter resets itself for the next launch (graph replays included).
__device__ __forceinline__ bool last_to_arrive(const Args& a) {
  __shared__ int s_last;
  __threadfence();  // this CTA's partial is visible device-wide before its ticket
  __syncthreads();
  if (threadIdx.x == 0) {
    int* c = a.counters + (size_t(blockIdx.z) * gridDim.y + blockIdx.y);
    const int prev = atomicAdd(c, 1);
    s_last = prev == int(gridDim.x) - 1;
    if (s_last) atomicExch(c, 0);
  }
  __syncthreads();
  return s_last;
}

// One warp merges the nslots partials of row o (head_dim 128: 4 dims a lane): max and weights with
// the slots spread over the lanes, then a branch-free pass over the slots whose loads are all
// independent (L2 reads, not the possibly stale L1). wsm: nslots floats of shared memory.
__device__ __forceinline__ void combine_row(const Args& a, size_t o, float vs, int lane, float* wsm) {
  const int S = a.nslots;
  const float* m = a.ws_m + o * S;
  const float* l = a.ws_l + o * S;
  float M = -INFINITY;
  for (int s = lane; s < S; s += 32) M = fmaxf(M, __ldcg(m + s));
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) M = fmaxf(M, __shfl_xor_sync(0xffffffffu, M, off));
  float Ls = 0.f;
  bool nan = false;
  for (int s = lane; s < S; s += 32) {
    const float ms = __ldcg(m + s), ls = __ldcg(l + s);
    const float w = ms == -INFINITY ? 0.f : exp2f(ms - M);  // an empty split weighs 0
    wsm[s] = w;
    nan |= isnan(ls);
    Ls += ms == -INFINITY ? 0.f : ls * w;
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) Ls += __shfl_xor_sync(0xffffffffu, Ls, off);
  nan = __any_sync(0xffffffffu, nan);
  __syncwarp();
  const float4* acc = reinterpret_cast<const float4*>(a.ws_acc + o * S * MMA_D) + lane;
  float4 A = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll 8
  for (int s = 0; s < S; ++s) {
    const float4 x = __ldcg(acc + size_t(s) * (MMA_D / 4));
    const float w = wsm[s];
    A.x = fmaf(x.x, w, A.x), A.y = fmaf(x.y, w, A.y), A.z = fmaf(x.z, w, A.z), A.w = fmaf(x.w, w, A.w);
  }
  __syncwarp();
  const float Lt = nan ? NAN : Ls;
  reinterpret_cast<float4*>(a.out + o * MMA_D)[lane] =
      make_float4(fin_out(A.x, Lt, vs), fin_out(A.y, Lt, vs), fin_out(A.z, Lt, vs), fin_out(A.w, Lt, vs));
  if (lane == 0 && a.lse) a.lse[o] = fin_lse(M, Lt);
}

// L2B: the copies' L2 prefetch size (0: none, as before v26). PDL: let the combine kernel, launched as a
// programmatic dependent, be scheduled now (it waits in griddepcontrol.wait until this grid is done), so
// its launch and start overlap this kernel instead of following it (variant 25).
template <int STG, int MINB = 1, int L2B = 128, bool PDL = false>
__global__ void __launch_bounds__(THREADS, MINB) mma_kernel(Args a) {
  extern __shared__ __align__(16) float smem[];
  if constexpr (PDL) asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
  const int warp = threadIdx.x / 32, L = threadIdx.x % 32, g = L / 4, t = L % 4;
  const int unit = blockIdx.z, kvh = blockIdx.y / a.chunks, chunk = blockIdx.y % a.chunks;
  // the span CSR offsets do not depend on the lengths: load them alongside, not after
  int sp0 = 0, sp1 = 0;
  if (a.kind == SPANS) sp0 = a.sptr[unit], sp1 = a.sptr[unit + 1];
  // paged, one split, no window: the first tile starts at token 0 whatever the length, so this
  // thread's first table entry (its 8 tokens sit in one block) loads alongside the length too
  int spec_e = -1;
  if (a.kind == PAGED && gridDim.x == 1 && a.p.window <= 0 && a.mode == DECODE) {
    const int bsz = a.p.block_size, first = (threadIdx.x / (MMA_RB / 16)) * 8;
    if (bsz >= 8 && (bsz & (bsz - 1)) == 0 && first / bsz < a.max_blocks)
      spec_e = a.table[size_t(unit) * a.max_blocks + first / bsz];
  }
  Rows rows;
  int src_len, loffset;
  unit_rows(a, unit, kvh, chunk, MMA_R, rows, src_len, loffset);
  if (rows.n == 0) return;
  int t0, t1;
  split_range(a, rows, src_len, loffset, t0, t1);

  SlotCursor<true> slots(a);
  slots.reset(unit, sp0, sp1);
  char* stage_base = reinterpret_cast<char*>(smem);
  constexpr int stage_bytes = 2 * MMA_TT * MMA_RBP;
  const int nsteps = t1 > t0 ? (t1 - t0 + MMA_TT - 1) / MMA_TT : 0;
  auto issue = [&](int step) {
    if (step < nsteps) {
      const int tb = t0 + step * MMA_TT;
      issue_tile<L2B>(a, slots, stage_base + (step % STG) * stage_bytes, tb, t1, kvh, tb == 0 ? spec_e : -1);
    }
    cp_async_commit();
  };
  // K/V loads first: Q's global loads then overlap the first tiles' latency instead of preceding it
#pragma unroll
  for (int i = 0; i < STG - 1; ++i) issue(i);

  uint32_t qa[8][2];
  load_q_frags(a, rows, kvh, g, t, qa);
  const bool rreal = (g & 3) < rows.n;  // both halves of a row mask and scale alike
  const float my_qp = rreal ? float(rows.qpos[g & 3]) : 0.f;
  const float my_slope = rreal && a.p.alibi ? a.p.alibi[rows.head[g & 3]] * LOG2E : 0.f;
  float acc[16][4];
#pragma unroll
  for (int n = 0; n < 16; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;
  float m_run = -INFINITY, l_run = 0.f;

  for (int step = 0; step < nsteps; ++step) {
    cp_async_wait<STG - 2>();
    __syncthreads();
    issue(step + STG - 1);
    const char* kt = stage_base + (step % STG) * stage_bytes + warp * 16 * MMA_RBP;  // this warp's 16 tokens
    mma_tile16(kt, kt + MMA_TT * MMA_RBP, t0 + step * MMA_TT + warp * 16, t1, loffset, my_qp, my_slope,
               a.p.window, qa, acc, m_run, l_run, L, t);
  }
  cp_async_wait<0>();
  fold_halves(acc);
  __syncthreads();
  // merge the warps (token groups), then one partial per row, as partial_kernel does
  constexpr int NG = MMA_WARPS, D = MMA_D, RMAX = MMA_R;
  float* s_acc = smem;
  float* s_m = s_acc + NG * RMAX * D;
  float* s_l = s_m + NG * RMAX;
  stash_warp_rows(s_acc, s_m, s_l, acc, m_run, l_run, warp, g, t);
  __syncthreads();
  // one split: the CTA holds the whole row, so it writes the output itself (no combine)
  const bool direct = a.fuse && gridDim.x == 1;
  const float vs = a.p.v_scale ? a.p.v_scale[kvh] : 1.f;
  const int slot = a.slot0 + blockIdx.x;
  for (int idx = threadIdx.x; idx < rows.n * D; idx += THREADS) {
    const int r = idx / D, d = idx % D;
    put_merged(a, merge_groups(s_acc, s_m, s_l, NG, RMAX, D, r, d), size_t(rows.seq[r]) * a.p.q_heads + rows.head[r],
               d, D, direct, slot, vs);
  }
  if (direct || !a.fuse) return;
  if (!last_to_arrive(a)) return;
  if (warp < rows.n) combine_row(a, size_t(rows.seq[warp]) * a.p.q_heads + rows.head[warp], vs, L, smem + warp * a.nslots);
}

// ---- several (unit, kv head) items per CTA, one after another ----------------------------------
// When one split per item already makes more CTAs than the GPU holds at once (large batch), each
// CTA takes items u, u + gridDim.z, ... of its kv head through one cp.async pipeline: the next
// item's first tiles load while this one's last tiles compute, so there is no CTA start (metadata
// chain, first-tile latency) and no wave boundary between them. Decode, one split, direct output;
// the warps' merge buffer lies past the stages, which stay in flight across items.
template <int STG>
__global__ void __launch_bounds__(THREADS, 1) mma_multi_kernel(Args a) {
  extern __shared__ __align__(16) float smem[];
  constexpr int stage_bytes = 2 * MMA_TT * MMA_RBP, CPR = MMA_RB / 16, NG = MMA_WARPS, D = MMA_D, RMAX = MMA_R;
  const int H = a.p.kv_heads, G = a.p.q_heads / H, warp = threadIdx.x / 32, L = threadIdx.x % 32, g = L / 4, t = L % 4;
  const int kvh = blockIdx.y / a.chunks, chunk = blockIdx.y % a.chunks;
  const int nrows = min(RMAX, G - chunk * RMAX);
  const int nitems = (a.p.num_seqs - int(blockIdx.z) + int(gridDim.z) - 1) / int(gridDim.z);
  if (nitems <= 0 || nrows <= 0) return;
  auto unit_of = [&](int i) { return int(blockIdx.z) + i * int(gridDim.z); };
  SlotCursor<true> slots(a);  // the issuing item's
  const int bs_shift = slots.bs_shift, W = a.p.window;
  char* stage_base = reinterpret_cast<char*>(smem);
  float* s_acc = reinterpret_cast<float*>(stage_base + STG * stage_bytes);  // [NG][RMAX][D]
  float* s_m = s_acc + NG * RMAX * D;                                        // [NG][RMAX]
  float* s_l = s_m + NG * RMAX;

  // issue side: the item whose tiles are being requested, and the next item's metadata (prefetched)
  int i_item = 0, i_step = 0, i_t1 = 0, i_t0 = 0, i_nsteps = 0, issued = 0;
  int n_len = 0, n_sp0 = 0, n_sp1 = 0;
  int spec_e = -1;  // as in mma_kernel: item 0's first table entry, loaded alongside its length
  auto fetch_meta = [&](int unit, int& len, int& sp0, int& sp1) {
    len = a.seq_lens[unit];
    if (a.kind == SPANS) sp0 = a.sptr[unit], sp1 = a.sptr[unit + 1];
  };
  auto begin_issue = [&](int unit, int len, int sp0, int sp1) {
    i_step = 0;
    i_t0 = W > 0 ? max(0, len - W) : 0, i_t1 = len;  // decode: the query sits at len - 1
    i_nsteps = (i_t1 - i_t0 + MMA_TT - 1) / MMA_TT;
    slots.reset(unit, sp0, sp1);
  };
  auto issue_next = [&]() {  // the next tile in (item, tile) order, or an empty group past the end
    if (i_step == i_nsteps && i_item + 1 < nitems) {
      ++i_item;
      begin_issue(unit_of(i_item), n_len, n_sp0, n_sp1);
      if (i_item + 1 < nitems) fetch_meta(unit_of(i_item + 1), n_len, n_sp0, n_sp1);
    }
    if (i_step < i_nsteps) {
      const int tb = i_t0 + i_step * MMA_TT;
      issue_tile(a, slots, stage_base + (issued % STG) * stage_bytes, tb, i_t1, kvh,
                 i_item == 0 && tb == 0 ? spec_e : -1);
      ++i_step;
    }
    ++issued;
    cp_async_commit();
  };

  if (a.kind == PAGED && W <= 0 && bs_shift >= 3 && ((threadIdx.x / CPR) * 8 >> bs_shift) < a.max_blocks)
    spec_e = a.table[size_t(unit_of(0)) * a.max_blocks + ((threadIdx.x / CPR) * 8 >> bs_shift)];
  {
    int len0, sp0 = 0, sp1 = 0;
    fetch_meta(unit_of(0), len0, sp0, sp1);
    begin_issue(unit_of(0), len0, sp0, sp1);
  }
  if (nitems > 1) fetch_meta(unit_of(1), n_len, n_sp0, n_sp1);
#pragma unroll
  for (int i = 0; i < STG - 1; ++i) issue_next();

  // compute side: this lane's row rr (hi half in rows 0-3, lo half in rows 4-7, as mma_kernel)
  const int rr = g & 3;
  const bool rreal = rr < nrows, lo_half = g >= 4;
  const int head = kvh * G + chunk * RMAX + (rreal ? rr : 0);
  const float kscale = a.p.k_scale ? a.p.k_scale[kvh] : 1.f;
  const float qs = rreal ? a.p.sm_scale * kscale * LOG2E : 0.f;
  const float my_slope = rreal && a.p.alibi ? a.p.alibi[head] * LOG2E : 0.f;
  const float vs = a.p.v_scale ? a.p.v_scale[kvh] : 1.f;
  float qn[32];  // the next item's Q (raw), loaded an item ahead
  int n_clen = 0;
  auto fetch_q = [&](int unit) {
    const float* qr = a.q + (size_t(unit) * a.p.q_heads + head) * D;
#pragma unroll
    for (int kc = 0; kc < 8; ++kc) {
      qn[kc * 4 + 0] = qr[kc * 16 + 2 * t], qn[kc * 4 + 1] = qr[kc * 16 + 2 * t + 1];
      qn[kc * 4 + 2] = qr[kc * 16 + 2 * t + 8], qn[kc * 4 + 3] = qr[kc * 16 + 2 * t + 9];
    }
    n_clen = a.seq_lens[unit];
  };
  uint32_t qa[8][2];
  float acc[16][4];
  float m_run = -INFINITY, l_run = 0.f, c_qp = 0.f;
  int c_item = 0, c_unit = 0, c_step = 0, c_nsteps = 0, c_t0 = 0, c_t1 = 0;
  auto begin_compute = [&](int item) {
    c_item = item, c_unit = unit_of(item), c_step = 0;
    const int len = n_clen;
    c_t0 = W > 0 ? max(0, len - W) : 0, c_t1 = len, c_qp = float(len - 1);
    c_nsteps = (c_t1 - c_t0 + MMA_TT - 1) / MMA_TT;
    uint32_t hi, lo;
#pragma unroll
    for (int kc = 0; kc < 8; ++kc) {
      split_bf16(qn[kc * 4] * qs, qn[kc * 4 + 1] * qs, hi, lo);
      qa[kc][0] = lo_half ? lo : hi;
      split_bf16(qn[kc * 4 + 2] * qs, qn[kc * 4 + 3] * qs, hi, lo);
      qa[kc][1] = lo_half ? lo : hi;
    }
#pragma unroll
    for (int n = 0; n < 16; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;
    m_run = -INFINITY, l_run = 0.f;
    if (item + 1 < nitems) fetch_q(unit_of(item + 1));
  };
  fetch_q(unit_of(0));
  begin_compute(0);

  for (int gs = 0;; ++gs) {
    cp_async_wait<STG - 2>();
    __syncthreads();
    issue_next();
    const char* kt = stage_base + (gs % STG) * stage_bytes + warp * 16 * MMA_RBP;
    mma_tile16(kt, kt + MMA_TT * MMA_RBP, c_t0 + c_step * MMA_TT + warp * 16, c_t1, 0, c_qp, my_slope, W, qa, acc,
               m_run, l_run, L, t);
    if (++c_step < c_nsteps) continue;
    // this item is done: merge the warps' token groups and write its rows
    fold_halves(acc);
    l_run += __shfl_xor_sync(0xffffffffu, l_run, 1);
    l_run += __shfl_xor_sync(0xffffffffu, l_run, 2);
    if (g < RMAX) {
#pragma unroll
      for (int n = 0; n < 16; ++n) {
        s_acc[(warp * RMAX + g) * D + n * 8 + 2 * t] = acc[n][0];
        s_acc[(warp * RMAX + g) * D + n * 8 + 2 * t + 1] = acc[n][1];
      }
      if (t == 0) s_m[warp * RMAX + g] = m_run, s_l[warp * RMAX + g] = l_run;
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < nrows * D; idx += THREADS) {
      const int r = idx / D, d = idx % D;
      put_merged(a, merge_groups(s_acc, s_m, s_l, NG, RMAX, D, r, d),
                 size_t(c_unit) * a.p.q_heads + kvh * G + chunk * RMAX + r, d, D, true, 0, vs);
    }
    if (c_item + 1 == nitems) break;
    // the next item's merge writes come after at least one more barrier at the loop head
    begin_compute(c_item + 1);
  }
  cp_async_wait<0>();
}

// ---- wide tensor-core path: HPC kv heads per CTA, one warp each, 16-token tiles ----------------
// vLLM's cache is [blocks, block_size, Hkv, d]: a token's kv heads sit next to each other, so a CTA
// that takes HPC heads of a token range reads HPC x 256 contiguous bytes per token (a whole 32 KB
// block of 16 tokens when HPC = Hkv = 8) with one table / span lookup per tile, instead of 256-byte
// pieces at a 2 KB stride. Each warp sees every token of the tile for its own head, so the warps
// need no merge at the end.
constexpr int WT = 16;  // tokens per tile: one m16n8k16 k-step of P V

template <int HPC, int STG>
__global__ void __launch_bounds__(32 * HPC, 1) wide_kernel(Args a) {
  extern __shared__ __align__(16) float smem[];
  const int H = a.p.kv_heads, warp = threadIdx.x / 32, L = threadIdx.x % 32, g = L / 4, t = L % 4;
  const int unit = blockIdx.z, hg = blockIdx.y / a.chunks, chunk = blockIdx.y % a.chunks;
  const int kvh = hg * HPC + warp;
  int sp0 = 0, sp1 = 0;
  if (a.kind == SPANS) sp0 = a.sptr[unit], sp1 = a.sptr[unit + 1];
  Rows rows;
  int src_len, loffset;
  unit_rows(a, unit, kvh, chunk, MMA_R, rows, src_len, loffset);  // rows.n and qpos: the same for every warp
  if (rows.n == 0) return;
  int t0, t1;  // tiles start on 16-token boundaries (one paged block); tokens below the window stay masked
  split_range<WT>(a, rows, src_len, loffset, t0, t1);

  const uint16_t* K = static_cast<const uint16_t*>(a.k);
  const uint16_t* V = static_cast<const uint16_t*>(a.v);
  SlotCursor<true> slots(a);
  slots.reset(unit, sp0, sp1);
  const int bs = slots.bs, bs_shift = slots.bs_shift;
  // stage: K then V, each [HPC heads][16 tokens][MMA_RBP]; a thread copies 16 bytes (part) of one
  // head's row for 8 of the 16 tokens (j = 2i + tsub): consecutive threads, consecutive addresses
  constexpr int KB = HPC * WT * MMA_RBP, stage_bytes = 2 * KB;
  char* stage_base = reinterpret_cast<char*>(smem);
  const int nsteps = t1 > t0 ? (t1 - t0 + WT - 1) / WT : 0;
  const int part = threadIdx.x % 16, hh = (threadIdx.x / 16) % HPC, tsub = threadIdx.x / (16 * HPC);
  const size_t head_off = size_t(hg * HPC + hh) * MMA_RB + size_t(part) * 16;
  auto issue = [&](int step) {
    if (step < nsteps) {
      char* st = stage_base + (step % STG) * stage_bytes;
      const int tb = t0 + step * WT;
      int64_t base = -1;  // the tile's 16 tokens in consecutive slots: one lookup (uniform per CTA)
      if (a.kind == CONTIG) base = int64_t(unit) * a.stride + tb;
      else if (a.kind == PAGED) { if (bs_shift >= 0 && (tb & (bs - 1)) + WT <= bs) base = slots.of(tb); }
      else { const int64_t s0 = slots.of(tb); if (min(t1, tb + WT) <= slots.send) base = s0; }
#pragma unroll
      for (int i = 0; i < WT / 2; ++i) {
        const int j = 2 * i + tsub, tok = tb + j;
        const bool ok = tok < t1;
        const int64_t slot = !ok ? 0 : base >= 0 ? base + j : slots.of(tok);
        const size_t off = ok ? size_t(slot) * H * MMA_RB + head_off : 0;
        char* dk = st + (hh * WT + j) * MMA_RBP + part * 16;
        cp_async16_l2<128>(dk, reinterpret_cast<const char*>(K) + off, ok);
        cp_async16_l2<128>(dk + KB, reinterpret_cast<const char*>(V) + off, ok);
      }
    }
    cp_async_commit();
  };
#pragma unroll
  for (int i = 0; i < STG - 1; ++i) issue(i);

  uint32_t qa[8][2];
  load_q_frags(a, rows, kvh, g, t, qa);
  const bool real = g < rows.n;  // lanes that hold a finished row at the end (g < 4)
  const bool rreal = (g & 3) < rows.n;  // both halves of a row mask and scale alike
  const float my_qp = rreal ? float(rows.qpos[g & 3]) : 0.f;
  const float my_slope = rreal && a.p.alibi ? a.p.alibi[rows.head[g & 3]] * LOG2E : 0.f;
  float acc[16][4];
#pragma unroll
  for (int n = 0; n < 16; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;
  float m_run = -INFINITY, l_run = 0.f;

  for (int step = 0; step < nsteps; ++step) {
    cp_async_wait<STG - 2>();
    __syncthreads();
    issue(step + STG - 1);
    const char* kt = stage_base + (step % STG) * stage_bytes + warp * WT * MMA_RBP;  // this warp's head
    mma_tile16(kt, kt + KB, t0 + step * WT, t1, loffset, my_qp, my_slope, a.p.window, qa, acc, m_run, l_run, L, t);
  }
  cp_async_wait<0>();
  fold_halves(acc);
  l_run += __shfl_xor_sync(0xffffffffu, l_run, 1);
  l_run += __shfl_xor_sync(0xffffffffu, l_run, 2);
  const size_t o = real ? size_t(rows.seq[g]) * a.p.q_heads + rows.head[g] : 0;
  const float vs = a.p.v_scale ? a.p.v_scale[kvh] : 1.f;
  if (a.fuse && gridDim.x == 1) {  // one split: write the output directly
    if (real) {
      const float Lt = isnan(l_run) ? NAN : (m_run == -INFINITY ? 0.f : l_run);
      const float w = m_run == -INFINITY ? 0.f : 1.f;
      float* dst = a.out + o * MMA_D + 2 * t;
#pragma unroll
      for (int n = 0; n < 16; ++n)
        *reinterpret_cast<float2*>(dst + n * 8) = make_float2(fin_out(acc[n][0] * w, Lt, vs), fin_out(acc[n][1] * w, Lt, vs));
      if (t == 0 && a.lse) a.lse[o] = fin_lse(m_run, Lt);
    }
    return;
  }
  const int slot = a.slot0 + blockIdx.x;
  if (real) {
    const bool nan = isnan(l_run);
    float* dst = a.ws_acc + (o * a.nslots + slot) * MMA_D + 2 * t;
#pragma unroll
    for (int n = 0; n < 16; ++n)
      *reinterpret_cast<float2*>(dst + n * 8) = nan ? make_float2(NAN, NAN) : make_float2(acc[n][0], acc[n][1]);
    if (t == 0) a.ws_m[o * a.nslots + slot] = m_run, a.ws_l[o * a.nslots + slot] = l_run;
  }
  if (!a.fuse) return;
  if (!last_to_arrive(a)) return;
  for (int r = 0; r < rows.n; ++r)
    combine_row(a, size_t(rows.seq[r]) * a.p.q_heads + rows.head[r], vs, L, smem + warp * a.nslots);
}

// The prefix pass of a hybrid call with up to 16 query rows per CTA (four sequences' GQA-4 heads):
// every A-operand row is real, and the shared prefix is read once per four members instead of once
// per member. Q (hi, lo) lives in shared memory and reaches the MMAs through ldmatrix.
template <int STG>
__global__ void __launch_bounds__(THREADS) mma16_kernel(Args a) {
  extern __shared__ __align__(16) float smem[];
  const int H = a.p.kv_heads, warp = threadIdx.x / 32, L = threadIdx.x % 32, g = L / 4, t = L % 4;
  const int unit = blockIdx.z, kvh = blockIdx.y / a.chunks, chunk = blockIdx.y % a.chunks;
  Rows rows;
  int src_len, loffset;
  unit_rows(a, unit, kvh, chunk, 16, rows, src_len, loffset);
  if (rows.n == 0) return;
  int t0, t1;
  split_range(a, rows, src_len, loffset, t0, t1);

  constexpr int stage_bytes = 2 * MMA_TT * MMA_RBP, CPR = MMA_RB / 16;
  char* stage_base = reinterpret_cast<char*>(smem);
  char* qsm = stage_base + STG * stage_bytes;  // [hi, lo][16 rows][MMA_RBP]
  const float kscale = a.p.k_scale ? a.p.k_scale[kvh] : 1.f;
  const float qs = a.p.sm_scale * kscale * LOG2E;
  for (int idx = threadIdx.x; idx < 16 * MMA_D / 2; idx += THREADS) {
    const int r = idx / (MMA_D / 2), d = (idx % (MMA_D / 2)) * 2;
    float x0 = 0.f, x1 = 0.f;
    if (r < rows.n) {
      const float* qr = a.q + (size_t(rows.seq[r]) * a.p.q_heads + rows.head[r]) * MMA_D;
      x0 = qr[d] * qs, x1 = qr[d + 1] * qs;
    }
    uint32_t hi, lo2;
    split_bf16(x0, x1, hi, lo2);
    *reinterpret_cast<uint32_t*>(qsm + r * MMA_RBP + d * 2) = hi;
    *reinterpret_cast<uint32_t*>(qsm + 16 * MMA_RBP + r * MMA_RBP + d * 2) = lo2;
  }
  // this lane's two rows: g and g + 8
  const bool real0 = g < rows.n, real1 = g + 8 < rows.n;
  const float qp0 = real0 ? float(rows.qpos[g]) : 0.f, qp1 = real1 ? float(rows.qpos[g + 8]) : 0.f;
  const float sl0 = real0 && a.p.alibi ? a.p.alibi[rows.head[g]] * LOG2E : 0.f;
  const float sl1 = real1 && a.p.alibi ? a.p.alibi[rows.head[g + 8]] * LOG2E : 0.f;
  float acc[16][4];
#pragma unroll
  for (int n = 0; n < 16; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;
  float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;

  const uint16_t* K = static_cast<const uint16_t*>(a.k);
  const uint16_t* V = static_cast<const uint16_t*>(a.v);
  SlotCursor<false> slots(a);  // the prefix is always spans
  slots.reset_spans(unit);
  const int nsteps = t1 > t0 ? (t1 - t0 + MMA_TT - 1) / MMA_TT : 0;
  auto issue = [&](int step) {
    if (step < nsteps) {
      char* st = stage_base + (step % STG) * stage_bytes;
      const int tb = t0 + step * MMA_TT;
      const int64_t s0 = slots.spans(tb);
      const int64_t base = min(t1, tb + MMA_TT) <= slots.send ? s0 : -1;
      const int part = threadIdx.x % CPR, j0 = (threadIdx.x / CPR) * 8;
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        const int j = j0 + i, tok = tb + j;
        const bool ok = tok < t1;
        const int64_t slot = !ok ? 0 : base >= 0 ? base + j : slots.spans(tok);
        const size_t off = ok ? size_t(slot * H + kvh) * MMA_RB + size_t(part) * 16 : 0;
        char* dk = st + j * MMA_RBP + part * 16;
        cp_async16_l2<128>(dk, reinterpret_cast<const char*>(K) + off, ok);
        cp_async16_l2<128>(dk + MMA_TT * MMA_RBP, reinterpret_cast<const char*>(V) + off, ok);
      }
    }
    cp_async_commit();
  };
#pragma unroll
  for (int i = 0; i < STG - 1; ++i) issue(i);
  for (int step = 0; step < nsteps; ++step) {
    cp_async_wait<STG - 2>();
    __syncthreads();  // also publishes qsm on the first step
    issue(step + STG - 1);
    const char* kt = stage_base + (step % STG) * stage_bytes + warp * 16 * MMA_RBP;
    const char* vt = kt + MMA_TT * MMA_RBP;
    const int tw = t0 + step * MMA_TT + warp * 16;
    float sc[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
    float sc2[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
#pragma unroll
    for (int kp = 0; kp < 4; ++kp) {
      uint32_t ah0[4], al0[4], ah1[4], al1[4];  // A fragments of k-chunks 2kp and 2kp+1
      const int arow = ((L / 8) & 1) * 8 + L % 8, acol = (L / 16) * 8;
      ldsm_x4(ah0, qsm + arow * MMA_RBP + (kp * 32 + acol) * 2);
      ldsm_x4(al0, qsm + 16 * MMA_RBP + arow * MMA_RBP + (kp * 32 + acol) * 2);
      ldsm_x4(ah1, qsm + arow * MMA_RBP + (kp * 32 + 16 + acol) * 2);
      ldsm_x4(al1, qsm + 16 * MMA_RBP + arow * MMA_RBP + (kp * 32 + 16 + acol) * 2);
#pragma unroll
      for (int nt = 0; nt < 2; ++nt) {
        uint32_t b[4];
        ldsm_x4(b, kt + (nt * 8 + L % 8) * MMA_RBP + (kp * 32 + (L / 8) * 8) * 2);
        mma16816(sc[nt], ah0[0], ah0[1], ah0[2], ah0[3], b[0], b[1]);
        mma16816(sc2[nt], ah1[0], ah1[1], ah1[2], ah1[3], b[2], b[3]);
        mma16816(sc[nt], al0[0], al0[1], al0[2], al0[3], b[0], b[1]);
        mma16816(sc2[nt], al1[0], al1[1], al1[2], al1[3], b[2], b[3]);
      }
    }
#pragma unroll
    for (int nt = 0; nt < 2; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) sc[nt][e] += sc2[nt][e];
    // online softmax, rows g (values e = 0, 1) and g + 8 (e = 2, 3)
    float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
    for (int nt = 0; nt < 2; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int tok = tw + nt * 8 + 2 * t + (e & 1);
        const float qp = e < 2 ? qp0 : qp1, sl = e < 2 ? sl0 : sl1;
        const float rel = float(loffset + tok) - qp;
        const bool masked = tok >= t1 || (a.p.window > 0 && rel <= -float(a.p.window));
        sc[nt][e] = masked ? -INFINITY : fmaf(sl, rel, sc[nt][e]);
        if (e < 2) mx0 = fmaxf(mx0, sc[nt][e]); else mx1 = fmaxf(mx1, sc[nt][e]);
      }
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
    const float n0 = fmaxf(m0, mx0), n1 = fmaxf(m1, mx1);
    const float c0 = n0 == -INFINITY ? 1.f : ex2(m0 - n0), c1 = n1 == -INFINITY ? 1.f : ex2(m1 - n1);
    float p[2][4];
#pragma unroll
    for (int nt = 0; nt < 2; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float x = sc[nt][e], mm = e < 2 ? n0 : n1;
        p[nt][e] = mm == -INFINITY ? (x != x ? x : 0.f) : ex2(x - mm);
      }
    l0 = l0 * c0 + p[0][0] + p[0][1] + p[1][0] + p[1][1];
    l1 = l1 * c1 + p[0][2] + p[0][3] + p[1][2] + p[1][3];
    m0 = n0, m1 = n1;
    uint32_t ph[4], pl[4];  // A fragment of P: (row g, tok 2t..), (g+8, 2t..), (g, 2t+8..), (g+8, 2t+8..)
    split_bf16(p[0][0], p[0][1], ph[0], pl[0]);
    split_bf16(p[0][2], p[0][3], ph[1], pl[1]);
    split_bf16(p[1][0], p[1][1], ph[2], pl[2]);
    split_bf16(p[1][2], p[1][3], ph[3], pl[3]);
#pragma unroll
    for (int np = 0; np < 8; ++np) {
      uint32_t b[4];
      ldsm_x4_t(b, vt + ((L / 8) % 2 * 8 + L % 8) * MMA_RBP + (np * 16 + (L / 16) * 8) * 2);
#pragma unroll
      for (int h2 = 0; h2 < 2; ++h2) {
        float (&c)[4] = acc[np * 2 + h2];
        c[0] *= c0, c[1] *= c0, c[2] *= c1, c[3] *= c1;
        mma16816(c, ph[0], ph[1], ph[2], ph[3], b[2 * h2], b[2 * h2 + 1]);
        mma16816(c, pl[0], pl[1], pl[2], pl[3], b[2 * h2], b[2 * h2 + 1]);
      }
    }
  }
  cp_async_wait<0>();
  __syncthreads();
  l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
  l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
  l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
  l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
  constexpr int NG = MMA_WARPS, D = MMA_D, RMAX = 16;
  float* s_acc = smem;
  float* s_m = s_acc + NG * RMAX * D;
  float* s_l = s_m + NG * RMAX;
#pragma unroll
  for (int n = 0; n < 16; ++n) {
    s_acc[(warp * RMAX + g) * D + n * 8 + 2 * t] = acc[n][0];
    s_acc[(warp * RMAX + g) * D + n * 8 + 2 * t + 1] = acc[n][1];
    s_acc[(warp * RMAX + g + 8) * D + n * 8 + 2 * t] = acc[n][2];
    s_acc[(warp * RMAX + g + 8) * D + n * 8 + 2 * t + 1] = acc[n][3];
  }
  if (t == 0) {
    s_m[warp * RMAX + g] = m0, s_l[warp * RMAX + g] = l0;
    s_m[warp * RMAX + g + 8] = m1, s_l[warp * RMAX + g + 8] = l1;
  }
  __syncthreads();
  const int slot = a.slot0 + blockIdx.x;
  for (int idx = threadIdx.x; idx < rows.n * D; idx += THREADS) {
    const int r = idx / D, d = idx % D;
    put_merged(a, merge_groups(s_acc, s_m, s_l, NG, RMAX, D, r, d), size_t(rows.seq[r]) * a.p.q_heads + rows.head[r],
               d, D, false, slot, 1.f);
  }
}

__global__ void combine_kernel(kvx_params p, int nslots, const float* ws_m, const float* ws_l, const float* ws_acc,
                               float* out, float* lse) {
  extern __shared__ float w[];  // [nslots] weights 2^(m_s - M), then the scalars below
  __shared__ float red[32];
  // launched as a programmatic dependent (variant 25): wait for the split kernel and its writes; a no-op
  // for an ordinary launch
  asm volatile("griddepcontrol.wait;" ::: "memory");
  const int o = blockIdx.x, D = p.head_dim;
  const int kvh = (o % p.q_heads) / (p.q_heads / p.kv_heads);
  const float vs = p.v_scale ? p.v_scale[kvh] : 1.f;
  const float* m = ws_m + size_t(o) * nslots;
  const float* l = ws_l + size_t(o) * nslots;
  // block max of m over slots
  float M = -INFINITY;
  for (int s = threadIdx.x; s < nslots; s += blockDim.x) M = fmaxf(M, m[s]);
  for (int off = 16; off > 0; off >>= 1) M = fmaxf(M, __shfl_xor_sync(0xffffffffu, M, off));
  if ((threadIdx.x & 31) == 0) red[threadIdx.x / 32] = M;
  __syncthreads();
  M = -INFINITY;
  for (int i = 0; i < int(blockDim.x / 32); ++i) M = fmaxf(M, red[i]);
  __syncthreads();
  // weights and the total l (NaN anywhere poisons the row)
  float L = 0.f;
  for (int s = threadIdx.x; s < nslots; s += blockDim.x) {
    const float ws = m[s] == -INFINITY ? 0.f : exp2f(m[s] - M);
    w[s] = ws;
    L += isnan(l[s]) ? NAN : l[s] * ws;
  }
  for (int off = 16; off > 0; off >>= 1) L += __shfl_xor_sync(0xffffffffu, L, off);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x / 32] = L;
  __syncthreads();
  L = 0.f;
  for (int i = 0; i < int(blockDim.x / 32); ++i) L += red[i];
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float A = 0.f;
    for (int s = 0; s < nslots; ++s) A = fmaf(ws_acc[(size_t(o) * nslots + s) * D + d], w[s], A);
    out[size_t(o) * D + d] = L > 0.f ? A * vs / L : (isnan(L) ? NAN : 0.f);
  }
  if (lse && threadIdx.x == 0) lse[o] = L > 0.f ? (M + log2f(L)) / LOG2E : (isnan(L) ? NAN : -INFINITY);
}

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
