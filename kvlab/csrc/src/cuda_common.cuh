// Shared by every CUDA decode kernel: constants, the copy helpers, the call's arguments (Args), a CTA's
// query rows, the slot cursor over the layouts' metadata and the log-sum-exp merge. Included by
// cuda_kernels.cu inside its anonymous namespace, in the order below (one translation unit).

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
