// Batch-1 split-KV decode (issue 18, goal 3): bf16, head_dim 128, GQA-4 rows, decode mode; included by
// cuda_kernels.cu inside its anonymous namespace (it reuses SlotCursor, mma_tile16, fold_halves,
// split_bf16, fin_out / fin_lse and the launch helpers).
//
// mma_kernel at batch 1 (H100, 8k x 1: 23 us at 47 % DRAM throughput, then the combine) spends a
// large share of a short call on CTA-wide barriers per 64-token tile and the warps' merge. Here the
// tile math is the same (mma_tile16), the shape is not:
// - a CTA takes one split (token range) of HPC consecutive (kv head, row chunk) items, one warp each,
//   so its warps together read HPC x 256 contiguous bytes of every token row;
// - each warp streams its own 16-token tiles (8.5 KB of padded K+V rows) through its own STG-deep
//   cp.async pipeline (L2::128B hint): only __syncwarp orders a stage, there is no CTA-wide barrier,
//   and each warp writes its 4 rows' partial (or, with one split, the output) itself;
// - one wave: splits = resident CTAs / CTAs per split, then b1_combine_kernel (a programmatic
//   dependent) merges the splits with every slot's read in flight at once.
// Tried before it and dropped (notes/kvlab.md, issue 18 run 5): the same shape with the math on CUDA
// cores (FMA, a 16-lane reduce-scatter per 8 tokens): +6.6 us at 8k x 1 and +22 us at 32k x 1 over
// its own copies, slower than mma_kernel everywhere but 1k.

constexpr int B1M_TT = 16, B1M_STAGE = 2 * B1M_TT * MMA_RBP;

template <int HPC, int STG>
__global__ void __launch_bounds__(32 * HPC, 1) b1_mma_kernel(Args a) {
  extern __shared__ __align__(16) float smem[];
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
  const int warp = threadIdx.x / 32, L = threadIdx.x % 32, g = L / 4, t = L % 4, hw = L / 16, part = L % 16;
  const int unit = blockIdx.z, item = blockIdx.y * HPC + warp, gy = a.p.kv_heads * a.chunks;
  if (item >= gy) return;  // no CTA-wide barrier below
  const int kvh = item / a.chunks, G = a.p.q_heads / a.p.kv_heads, head0 = kvh * G + (item % a.chunks) * MMA_R;
  int sp0 = 0, sp1 = 0;
  if (a.kind == SPANS) sp0 = a.sptr[unit], sp1 = a.sptr[unit + 1];
  const int src_len = a.seq_lens[unit], qpos = src_len - 1, W = a.p.window;
  const int lo = (W > 0 ? max(0, qpos - W + 1) : 0) & ~(B1M_TT - 1);
  const int span = max(0, src_len - lo), per = ((span + gridDim.x - 1) / gridDim.x + B1M_TT - 1) & ~(B1M_TT - 1);
  const int t0 = lo + blockIdx.x * per, t1 = min(src_len, t0 + per);
  const int nsteps = t1 > t0 ? (t1 - t0 + B1M_TT - 1) / B1M_TT : 0;

  SlotCursor<true> slots(a);
  slots.reset(unit, sp0, sp1);
  const int H = a.p.kv_heads;
  const char* K = static_cast<const char*>(a.k);
  const char* V = static_cast<const char*>(a.v);
  char* wbase = reinterpret_cast<char*>(smem) + size_t(warp) * STG * B1M_STAGE;
  auto issue = [&](int step) {  // tile `step`: this lane copies 16 bytes of K and V of rows hw, hw + 2, ..
    if (step < nsteps) {
      const int tb = t0 + step * B1M_TT;
      char* st = wbase + (step % STG) * B1M_STAGE;
      int64_t base = -1;
      if (a.kind != PAGED) {
        const int64_t s0 = slots.of(tb);
        if (a.kind == CONTIG || min(t1, tb + B1M_TT) <= slots.send) base = s0;
      }
#pragma unroll
      for (int i = 0; i < B1M_TT / 2; ++i) {
        const int r = hw + 2 * i, tok = tb + r;
        const bool ok = tok < t1;
        const int64_t slot = !ok ? 0 : base >= 0 ? base + r : slots.of(tok);
        const size_t off = ok ? size_t(slot * H + kvh) * MMA_RB + size_t(part) * 16 : 0;
        char* dk = st + r * MMA_RBP + part * 16;
        cp_async16_l2<128>(dk, K + off, ok);
        cp_async16_l2<128>(dk + B1M_TT * MMA_RBP, V + off, ok);
      }
    }
    cp_async_commit();
  };
#pragma unroll 1
  for (int i = 0; i < STG - 1; ++i) issue(i);

  // Q fragments as load_q_frags: row g < 4 the bf16 hi part of query row g, g >= 4 the lo part of row g - 4
  uint32_t qa[8][2];
  {
    const bool lo_half = g >= 4;
    const float* qr = a.q + (size_t(unit) * a.p.q_heads + head0 + (g & 3)) * MMA_D;
    const float qs = a.p.sm_scale * (a.p.k_scale ? a.p.k_scale[kvh] : 1.f) * LOG2E;
    uint32_t hi, lo2;
#pragma unroll
    for (int kc = 0; kc < 8; ++kc) {
      split_bf16(qr[kc * 16 + 2 * t] * qs, qr[kc * 16 + 2 * t + 1] * qs, hi, lo2);
      qa[kc][0] = lo_half ? lo2 : hi;
      split_bf16(qr[kc * 16 + 2 * t + 8] * qs, qr[kc * 16 + 2 * t + 9] * qs, hi, lo2);
      qa[kc][1] = lo_half ? lo2 : hi;
    }
  }
  const float my_slope = a.p.alibi ? a.p.alibi[head0 + (g & 3)] * LOG2E : 0.f;
  float acc[16][4];
#pragma unroll
  for (int n = 0; n < 16; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;
  float m_run = -INFINITY, l_run = 0.f;
  for (int step = 0; step < nsteps; ++step) {
    cp_async_wait<STG - 2>();
    __syncwarp();
    issue(step + STG - 1);
    const char* kt = wbase + (step % STG) * B1M_STAGE;
    mma_tile16(kt, kt + B1M_TT * MMA_RBP, t0 + step * B1M_TT, t1, 0, float(qpos), my_slope, W, qa, acc, m_run, l_run,
               L, t);
  }
  cp_async_wait<0>();
  fold_halves(acc);
  l_run += __shfl_xor_sync(0xffffffffu, l_run, 1);
  l_run += __shfl_xor_sync(0xffffffffu, l_run, 2);
  if (g >= MMA_R) return;  // lanes 0-15 hold rows 0-3 whole: dims n * 8 + 2t, +1
  const bool direct = a.fuse && gridDim.x == 1;
  const float vs = a.p.v_scale ? a.p.v_scale[kvh] : 1.f;
  const size_t o = size_t(unit) * a.p.q_heads + head0 + g, slot = o * a.nslots + a.slot0 + blockIdx.x;
  const bool nan = l_run != l_run;
#pragma unroll
  for (int n = 0; n < 16; ++n) {
    const int d = n * 8 + 2 * t;
    float2 y;
    if (direct) {
      y.x = fin_out(m_run == -INFINITY ? 0.f : acc[n][0], l_run, vs);
      y.y = fin_out(m_run == -INFINITY ? 0.f : acc[n][1], l_run, vs);
    } else {
      y.x = nan ? NAN : acc[n][0], y.y = nan ? NAN : acc[n][1];
    }
    *reinterpret_cast<float2*>(direct ? a.out + o * MMA_D + d : a.ws_acc + slot * MMA_D + d) = y;
  }
  if (t == 0) {
    if (direct && a.lse) a.lse[o] = fin_lse(m_run, l_run);
    if (!direct) a.ws_m[slot] = m_run, a.ws_l[slot] = l_run;
  }
}

// Merges the S split partials of row o (head_dim 128): B1C_W warps, warp w takes slots w, w + B1C_W, ..,
// a lane 4 dims; each warp's first B1_PRE slots load before the max and the weights are known, so
// (S <= B1C_W * B1_PRE) every partial's read is in flight at once, beside the m / l reads.
constexpr int B1C_W = 16, B1_PRE = 8;
__global__ void __launch_bounds__(32 * B1C_W) b1_combine_kernel(kvx_params p, int S, const float* ws_m,
                                                                const float* ws_l, const float* ws_acc, float* out,
                                                                float* lse) {
  extern __shared__ float w[];  // [S] weights 2^(m_s - M)
  __shared__ float red[B1C_W][MMA_D];
  __shared__ float rm[B1C_W], rl[B1C_W];
  __shared__ int rn[B1C_W];
  asm volatile("griddepcontrol.wait;" ::: "memory");  // the split kernel's writes are visible
  constexpr int NT = 32 * B1C_W;
  const int o = blockIdx.x, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const float* m = ws_m + size_t(o) * S;
  const float* l = ws_l + size_t(o) * S;
  const float4* acc = reinterpret_cast<const float4*>(ws_acc + size_t(o) * S * MMA_D) + lane;
  float4 x[B1_PRE];
#pragma unroll
  for (int k = 0; k < B1_PRE; ++k) {
    const int s = warp + B1C_W * k;
    x[k] = s < S ? __ldcg(acc + size_t(s) * (MMA_D / 4)) : make_float4(0.f, 0.f, 0.f, 0.f);
  }
  float M = -INFINITY;
  for (int s = threadIdx.x; s < S; s += NT) M = fmaxf(M, __ldcg(m + s));
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) M = fmaxf(M, __shfl_xor_sync(0xffffffffu, M, off));
  if (lane == 0) rm[warp] = M;
  __syncthreads();
  M = rm[0];
#pragma unroll
  for (int i = 1; i < B1C_W; ++i) M = fmaxf(M, rm[i]);
  float Ls = 0.f;
  int nan = 0;
  for (int s = threadIdx.x; s < S; s += NT) {
    const float ms = __ldcg(m + s), ls = __ldcg(l + s);
    const float ws = ms == -INFINITY ? 0.f : exp2f(ms - M);  // an empty split weighs 0
    w[s] = ws;
    nan |= isnan(ls);
    Ls += ms == -INFINITY ? 0.f : ls * ws;
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) Ls += __shfl_xor_sync(0xffffffffu, Ls, off);
  nan = __any_sync(0xffffffffu, nan);
  if (lane == 0) rl[warp] = Ls, rn[warp] = nan;
  __syncthreads();
  float4 A = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
  for (int k = 0; k < B1_PRE; ++k) {
    const int s = warp + B1C_W * k;
    const float ws = s < S ? w[s] : 0.f;
    A.x = fmaf(x[k].x, ws, A.x), A.y = fmaf(x[k].y, ws, A.y), A.z = fmaf(x[k].z, ws, A.z), A.w = fmaf(x[k].w, ws, A.w);
  }
#pragma unroll 4
  for (int s = warp + B1C_W * B1_PRE; s < S; s += B1C_W) {
    const float4 y = __ldcg(acc + size_t(s) * (MMA_D / 4));
    const float ws = w[s];
    A.x = fmaf(y.x, ws, A.x), A.y = fmaf(y.y, ws, A.y), A.z = fmaf(y.z, ws, A.z), A.w = fmaf(y.w, ws, A.w);
  }
  reinterpret_cast<float4*>(red[warp])[lane] = A;
  __syncthreads();
  if (threadIdx.x >= MMA_D) return;
  const int d = threadIdx.x;
  float L = 0.f, Ad = 0.f;
  bool anynan = false;
#pragma unroll
  for (int i = 0; i < B1C_W; ++i) L += rl[i], Ad += red[i][d], anynan |= rn[i] != 0;
  const int kvh = (o % p.q_heads) / (p.q_heads / p.kv_heads);
  const float vs = p.v_scale ? p.v_scale[kvh] : 1.f;
  const float Lt = anynan ? NAN : L;
  out[size_t(o) * MMA_D + d] = fin_out(Ad, Lt, vs);
  if (d == 0 && lse) lse[o] = fin_lse(M, Lt);
}

// Variants (KVX_CUDA_VARIANT): 0 takes this kernel where b1_applies says so, with 4 items per CTA and
// 4 stages (1 CTA/SM); 40-44 force a configuration wherever the bf16 d128 GQA-4 decode path applies
// (every layout and batch, so the oracle reaches it): (items per CTA, stages) 8/3, 4/3, 4/4, 4/5, 4/6.
struct B1 {
  const void* fn;
  int hpc, stg;
};
B1 b1_choice(int v) {
  switch (v) {
    case 40: return {reinterpret_cast<const void*>(b1_mma_kernel<8, 3>), 8, 3};
    case 41: return {reinterpret_cast<const void*>(b1_mma_kernel<4, 3>), 4, 3};
    case 43: return {reinterpret_cast<const void*>(b1_mma_kernel<4, 5>), 4, 5};
    case 44: return {reinterpret_cast<const void*>(b1_mma_kernel<4, 6>), 4, 6};
    default: return {reinterpret_cast<const void*>(b1_mma_kernel<4, 4>), 4, 4};
  }
}
Choice b1_kernel_choice(int v) {
  const B1 k = b1_choice(v);
  Choice c{k.fn, size_t(k.hpc) * k.stg * B1M_STAGE};
  c.threads = 32 * k.hpc, c.hpc = k.hpc;
  return c;
}

// Where it takes a decode call: bf16, head_dim 128, GQA-4 rows; by default for spans and contiguous (the
// virtual layout; a hybrid call with nothing shared runs as spans) at batch 1 below 16k context. H100, the
// bench's method, 3 repetitions (notes/kvlab_gpu/i18_b1_sweep_run5a.txt): 8k x 1 26.8-26.9 us against
// 29.6-30.0 for mma_kernel + combine, 1k x 1 12.7-12.8 against 13.2-13.3, but 32k x 1 69.8-70.5 against
// 68.7-68.8 (one earlier call: 66.0 against 67.3); at batch 2 and 8 it read up to 3 % slower at 8k-32k.
bool b1_applies(const Args& a, long items) {
  (void)items;
  const kvx_params& p = a.p;
  const int v = fast_variant();
  const bool fast = p.kv_dtype == KVX_BF16 && p.head_dim == 128 && (p.q_heads / p.kv_heads) % 4 == 0;
  if (!fast || a.mode != DECODE) return false;
  if (v >= 40 && v <= 44) return true;
  return v == 0 && a.kind != PAGED && p.num_seqs == 1 && p.max_seq_len < 16384;
}

int run_b1(Args a, long items, float* out, float* lse) {
  const kvx_params& p = a.p;
  const int v = fast_variant();
  const Choice c = b1_kernel_choice(v);
  // one wave: as many splits as the resident CTAs allow, each at least two 16-token tiles
  const int units = p.num_seqs, gy = int(items / units), ctas = units * ((gy + c.hpc - 1) / c.hpc);
  const long resident = long(resident_per_sm(c)) * num_sms();
  const int cap = std::max(1, (p.max_seq_len + 2 * B1M_TT - 1) / (2 * B1M_TT));
  const int splits = p.num_splits > 0 ? p.num_splits : int(std::max(1L, std::min<long>(cap, resident / ctas)));
  const size_t NQ = size_t(units) * p.q_heads;
  float* ws = g_ws.get(NQ * splits * (p.head_dim + 2));
  if (!ws) return fail("cudaMalloc of the split workspace failed");
  a.ws_m = ws, a.ws_l = ws + NQ * splits, a.ws_acc = ws + 2 * NQ * splits;
  a.chunks = gy / p.kv_heads, a.slot0 = 0, a.nslots = splits, a.fuse = splits == 1, a.out = out, a.lse = lse;
  cudaError_t e = launch(a, c, dim3(splits, (gy + c.hpc - 1) / c.hpc, units));
  if (e == cudaSuccess && splits > 1) {  // the combine as a programmatic dependent: its launch overlaps
    cudaLaunchConfig_t cfg{};
    cfg.gridDim = dim3(unsigned(NQ)), cfg.blockDim = dim3(32 * B1C_W), cfg.dynamicSmemBytes = splits * sizeof(float);
    cfg.stream = stream_of(p);
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr, cfg.numAttrs = 1;
    e = cudaLaunchKernelEx(&cfg, b1_combine_kernel, p, splits, static_cast<const float*>(a.ws_m),
                           static_cast<const float*>(a.ws_l), static_cast<const float*>(a.ws_acc), out, lse);
  }
  return e == cudaSuccess ? 0 : fail(std::string("CUDA: ") + cudaGetErrorString(e));
}
