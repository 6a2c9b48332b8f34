// The tensor-core decode kernels (bf16, head_dim 128, GQA-4): mma_kernel and mma_multi_kernel. Included
// by cuda_kernels.cu inside its anonymous namespace, after cuda_partial.cuh.

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
