// The general decode kernel (any head_dim 8 x 2^k <= 256, any dtype, CUDA cores). Included by
// cuda_kernels.cu inside its anonymous namespace, after cuda_common.cuh.

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
