// wide_kernel (several kv heads per CTA), mma16_kernel (the hybrid prefix pass) and combine_kernel (the
// split merge). Included by cuda_kernels.cu inside its anonymous namespace, after cuda_mma.cuh.

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
