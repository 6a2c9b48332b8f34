// Batch-1 split-KV decode with few splits and no combine kernel (issue 18, goal 3, session 9); included by
// cuda_kernels.cu after cuda_b1.cuh (it reuses b1_mma_kernel's tile copies and math, merge_groups,
// put_merged, last_to_arrive, combine_row).
//
// b1_mma_kernel (4 kv heads per CTA, one warp each) makes 66 splits at 8k x 1 and merges them in a second
// kernel; a merge of many splits cost 5-7 us in session 8's diagnostics. Here a CTA takes ONE (kv head, row
// chunk) item with NW warps, each warp its own cp.async pipeline over the CTA's 16-token tiles dealt
// round-robin (the warps read one contiguous front of the head); the NW warp partials merge in shared
// memory once at the end, so a (sequence, kv head) needs only resident CTAs / items splits (16 at batch 1
// on 132 SMs). The splits then merge without a second launch:
// - CL = 0: each CTA writes its partial, the last CTA to arrive (an arrival counter) merges them;
// - CL = 1: the splits of an item form one thread-block cluster (<= 16 CTAs); each CTA keeps its merged
//   partial in shared memory and, after a cluster barrier, merges a slice of the output from every CTA's
//   shared memory (DSMEM): no global round trip, no atomics.
// (cooperative_groups.h: included at the top of cuda_kernels.cu, outside its anonymous namespace)

constexpr int B1F_ROWS = MMA_R * MMA_D;  // one item's partial: 4 rows x 128 dims

// DIAG (diagnostics with wrong output, variants 49, 52-56): 1 the copies and waits only, no tile math; 2
// also no merge (nothing written); 3 also no metadata (token t read at slot t, the length taken from the
// host hint); 4 also no copies (an empty kernel with the same launch shape and shared memory).
// The last CTA's merge of row o's S <= 16 split partials (one warp, 4 dims a lane): every m, l and partial
// is loaded before any is used, so the merge waits for one L2 round trip (combine_row waits for three).
__device__ __forceinline__ void combine_row16(const Args& a, size_t o, float vs, int lane) {
  const int S = a.nslots;
  const float ms = lane < S ? __ldcg(a.ws_m + o * S + lane) : -INFINITY;
  const float ls = lane < S ? __ldcg(a.ws_l + o * S + lane) : 0.f;
  const float4* acc = reinterpret_cast<const float4*>(a.ws_acc + o * S * MMA_D) + lane;
  float4 x[16];
#pragma unroll
  for (int s = 0; s < 16; ++s) x[s] = s < S ? __ldcg(acc + size_t(s) * (MMA_D / 4)) : make_float4(0.f, 0.f, 0.f, 0.f);
  float M = ms;
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) M = fmaxf(M, __shfl_xor_sync(0xffffffffu, M, off));
  const float w = ms == -INFINITY ? 0.f : exp2f(ms - M);  // an empty split weighs 0
  float Ls = ms == -INFINITY ? 0.f : ls * w;
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) Ls += __shfl_xor_sync(0xffffffffu, Ls, off);
  const bool nan = __any_sync(0xffffffffu, isnan(ls));
  float4 A = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
  for (int s = 0; s < 16; ++s) {
    const float ws = __shfl_sync(0xffffffffu, w, s);
    A.x = fmaf(x[s].x, ws, A.x), A.y = fmaf(x[s].y, ws, A.y), A.z = fmaf(x[s].z, ws, A.z), A.w = fmaf(x[s].w, ws, A.w);
  }
  const float Lt = nan ? NAN : Ls;
  reinterpret_cast<float4*>(a.out + o * MMA_D)[lane] =
      make_float4(fin_out(A.x, Lt, vs), fin_out(A.y, Lt, vs), fin_out(A.z, Lt, vs), fin_out(A.w, Lt, vs));
  if (lane == 0 && a.lse) a.lse[o] = fin_lse(M, Lt);
}

// PF (variants 61-63) aims at the merge chain's latency, not its work (session 9: the split merge costs ~4.5 us
// at 1k, 8k and 32k alike, so a chain of dependent round trips). Bit 1: at its start a CTA asks L2 for every
// line its end touches: the arrival counter (an atomic read-modify-write that misses L2 after the bench's
// flush, so a DRAM round trip on the last CTA's path), its partial's slots and the item's output rows.
// Bit 2: thread 0 alone fences and takes the ticket after the CTA barrier (the pattern of cooperative
// groups' grid sync: the barrier orders the CTA's stores before its cumulative fence), and fences again
// when it is the last, so the loads that follow the next barrier see every split's partial.
__device__ __forceinline__ void prefetch_l2(const void* p) { asm volatile("prefetch.global.L2 [%0];" ::"l"(p)); }
__device__ __forceinline__ void b1f_prefetch_tail(const Args& a, size_t o0) {
  const int i = threadIdx.x, S = a.nslots, s = blockIdx.x;
  if (i < 16) prefetch_l2(a.ws_acc + ((o0 + i / 4) * S + s) * MMA_D + (i % 4) * 32);  // 4 rows x 512 B
  else if (i < 32) prefetch_l2(a.out + o0 * MMA_D + (i - 16) * 32);  // the item's 4 output rows, 2 KB
  else if (i < 36) prefetch_l2(a.ws_m + (o0 + i - 32) * S + s);
  else if (i < 40) prefetch_l2(a.ws_l + (o0 + i - 36) * S + s);
  else if (i == 40) prefetch_l2(a.counters + size_t(blockIdx.z) * gridDim.y + blockIdx.y);
  else if (i == 41 && a.lse) prefetch_l2(a.lse + o0);
}
__device__ __forceinline__ bool last_to_arrive_t0(const Args& a) {
  __shared__ int s_last;
  __syncthreads();
  if (threadIdx.x == 0) {
    int* c = a.counters + (size_t(blockIdx.z) * gridDim.y + blockIdx.y);
    __threadfence();
    const int prev = atomicAdd(c, 1);
    s_last = prev == int(gridDim.x) - 1;
    if (s_last) atomicExch(c, 0), __threadfence();
  }
  __syncthreads();
  return s_last;
}

// MRG 1: the last CTA merges with combine_row16 (S <= 16), 0: with combine_row. L2B: the copies' L2 prefetch size.
template <int NW, int STG, int CL, int DIAG = 0, int MRG = 0, int L2B = 128, int PF = 0>
__global__ void __launch_bounds__(32 * NW, 1) b1f_kernel(Args a) {
  extern __shared__ __align__(16) float smem[];
  const int warp = threadIdx.x / 32, L = threadIdx.x % 32, g = L / 4, t = L % 4, hw = L / 16, part = L % 16;
  const int unit = blockIdx.z, item = blockIdx.y;
  const int kvh = item / a.chunks, G = a.p.q_heads / a.p.kv_heads, head0 = kvh * G + (item % a.chunks) * MMA_R;
  int sp0 = 0, sp1 = 0;
  if (a.kind == SPANS && DIAG < 3) sp0 = a.sptr[unit], sp1 = a.sptr[unit + 1];
  const int src_len = DIAG >= 3 ? a.p.max_seq_len : a.seq_lens[unit], qpos = src_len - 1, W = a.p.window;
  const int lo = (W > 0 ? max(0, qpos - W + 1) : 0) & ~(B1M_TT - 1);
  const int span = max(0, src_len - lo), per = ((span + gridDim.x - 1) / gridDim.x + B1M_TT - 1) & ~(B1M_TT - 1);
  const int t0 = lo + blockIdx.x * per, t1 = min(src_len, t0 + per);
  const int ntiles = t1 > t0 ? (t1 - t0 + B1M_TT - 1) / B1M_TT : 0;
  const int nsteps = DIAG >= 4 ? 0 : ntiles > warp ? (ntiles - warp + NW - 1) / NW : 0;  // tiles warp, warp + NW, ..

  SlotCursor<true> slots(a);
  if (DIAG < 3) slots.reset(unit, sp0, sp1);
  const int H = a.p.kv_heads;
  const char* K = static_cast<const char*>(a.k);
  const char* V = static_cast<const char*>(a.v);
  char* wbase = reinterpret_cast<char*>(smem) + size_t(warp) * STG * B1M_STAGE;
  float* s_acc = reinterpret_cast<float*>(reinterpret_cast<char*>(smem) + size_t(NW) * STG * B1M_STAGE);
  float* s_m = s_acc + NW * B1F_ROWS;  // [NW][4]
  float* s_l = s_m + NW * MMA_R;
  float* c_acc = s_l + NW * MMA_R;     // the CTA's merged partial (CL = 1): [4][128], then m[4], l[4]
  float* c_m = c_acc + B1F_ROWS;
  float* c_l = c_m + MMA_R;
  auto tile_of = [&](int step) { return t0 + (warp + step * NW) * B1M_TT; };
  auto issue = [&](int step) {  // as b1_mma_kernel: this lane copies 16 bytes of K and V of rows hw, hw + 2, ..
    if (step < nsteps) {
      const int tb = tile_of(step);
      char* st = wbase + (step % STG) * B1M_STAGE;
      int64_t base = -1;
      if (DIAG >= 3) {
        base = tb;
      } else if (a.kind != PAGED) {
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
        cp_async16_l2<L2B>(dk, K + off, ok);
        cp_async16_l2<L2B>(dk + B1M_TT * MMA_RBP, V + off, ok);
      }
    }
    cp_async_commit();
  };
#pragma unroll 1
  for (int i = 0; i < STG - 1; ++i) issue(i);
  if constexpr ((PF & 1) && CL == 0 && DIAG < 2) {
    if (gridDim.x > 1) b1f_prefetch_tail(a, size_t(unit) * a.p.q_heads + head0);
  }

  uint32_t qa[8][2];  // as b1_mma_kernel: rows 0-3 the bf16 hi parts of the query rows, rows 4-7 the lo parts
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
    if constexpr (DIAG) {
      acc[0][0] += float(kt[L]), m_run = 0.f, l_run = 1.f;
    } else {
      mma_tile16(kt, kt + B1M_TT * MMA_RBP, tile_of(step), t1, 0, float(qpos), my_slope, W, qa, acc, m_run, l_run, L, t);
    }
  }
  cp_async_wait<0>();
  if constexpr (DIAG >= 2) {
    if (acc[0][0] == 12345.f) a.out[0] = m_run;  // keeps the waits' smem reads alive
    return;
  }
  fold_halves(acc);
  stash_warp_rows(s_acc, s_m, s_l, acc, m_run, l_run, warp, g, t);
  __syncthreads();
  const float vs = a.p.v_scale ? a.p.v_scale[kvh] : 1.f;
  const size_t o0 = size_t(unit) * a.p.q_heads + head0;
  if constexpr (CL == 0) {
    const bool direct = gridDim.x == 1;
    for (int idx = threadIdx.x; idx < B1F_ROWS; idx += 32 * NW) {
      const int r = idx / MMA_D, d = idx % MMA_D;
      put_merged(a, merge_groups(s_acc, s_m, s_l, NW, MMA_R, MMA_D, r, d), o0 + r, d, MMA_D, direct, blockIdx.x, vs);
    }
    if (direct || !((PF & 2) ? last_to_arrive_t0(a) : last_to_arrive(a))) return;
    if (warp >= MMA_R) return;
    if (MRG == 1 && a.nslots <= 16) combine_row16(a, o0 + warp, vs, L);
    else combine_row(a, o0 + warp, vs, L, s_acc + warp * a.nslots);  // s_acc is free by now
  } else {
    namespace cg = cooperative_groups;
    cg::cluster_group cluster = cg::this_cluster();
    for (int idx = threadIdx.x; idx < B1F_ROWS; idx += 32 * NW) {
      const int r = idx / MMA_D, d = idx % MMA_D;
      const Merged x = merge_groups(s_acc, s_m, s_l, NW, MMA_R, MMA_D, r, d);
      c_acc[idx] = x.A;
      if (d == 0) c_m[r] = x.M, c_l[r] = x.nan ? NAN : x.L;
    }
    cluster.sync();  // every CTA's partial is in its shared memory
    const int S = int(cluster.num_blocks()), rank = int(cluster.block_rank());
    const int chunk = (B1F_ROWS + S - 1) / S;
    for (int idx = rank * chunk + int(threadIdx.x); idx < min(B1F_ROWS, (rank + 1) * chunk); idx += 32 * NW) {
      const int r = idx / MMA_D, d = idx % MMA_D;
      float M = -INFINITY;
      for (int s = 0; s < S; ++s) M = fmaxf(M, *cluster.map_shared_rank(c_m + r, s));
      float Ls = 0.f, A = 0.f;
      bool nan = false;
      for (int s = 0; s < S; ++s) {
        const float ms = *cluster.map_shared_rank(c_m + r, s), ls = *cluster.map_shared_rank(c_l + r, s);
        nan |= isnan(ls);
        if (ms == -INFINITY) continue;  // an empty split weighs 0
        const float w = exp2f(ms - M);
        Ls += ls * w, A += *cluster.map_shared_rank(c_acc + idx, s) * w;
      }
      const float Lt = nan ? NAN : Ls;
      a.out[(o0 + r) * MMA_D + d] = fin_out(M == -INFINITY ? 0.f : A, Lt, vs);
      if (d == 0 && a.lse) a.lse[o0 + r] = fin_lse(M, Lt);
    }
    cluster.sync();  // no CTA leaves while another still reads its shared memory
  }
}

// Variants: 45 / 46: last-CTA merge with (warps, stages) 4/6 and 8/3; 47 / 48: the same shapes with the
// cluster merge (one cluster of all an item's splits, at most 16); 50 / 51: 45 with 3 / 4 stages;
// diagnostics (DIAG above): 49 (1), 52 (2), 53 (3), 55 (4) on 45's shape, 54 (3), 56 (4) with 2 stages;
// 57 / 58: 45 / 51 with the one-round-trip merge (combine_row16), 59: 49 with it; 60: 57 with an L2::256B
// prefetch hint on the copies (a head's token row is 256 aligned bytes); 61: 57 with the merge chain's lines
// asked of L2 at the start (PF 1), 62: 61 with thread 0's arrival too (PF 3), 63: 59 (diagnostic) with both.
// Forced wherever the bf16 d128 GQA-4 decode path applies (every layout and batch, so the oracle reaches them).
// Where it takes a decode call (bf16, head_dim 128, GQA-4 rows): by default (variant 45's shape) for spans and
// contiguous (so virtual, and hybrid with nothing shared) at batch 1 from 16k context, where it read faster
// than mma_kernel + combine in every repetition (H100, the bench's method, 3 repetitions in each of three calls,
// notes/kvlab_gpu/i18s9_b1f_sweep_*.txt: 32k x 1 64.4-66.5 us against 66.4-67.3, 16k x 1 41.5-42.0 against
// 42.5-43.6); at 8k x 1 it was no faster than b1_mma_kernel (26.9-27.4 against 26.5-27.1). Variant 57 (the
// one-round-trip merge) read ~1 us faster still at 16k / 32k (run 6) but is not the default: no device time
// was left for the run a default change needs (notes/kvlab.md).
bool b1f_applies(const Args& a) {
  const kvx_params& p = a.p;
  const int v = fast_variant();
  const bool fast = a.mode == DECODE && p.kv_dtype == KVX_BF16 && p.head_dim == 128 && (p.q_heads / p.kv_heads) % 4 == 0;
  if (!fast) return false;
  if (v >= 45 && v <= 63) return true;
  return v == 0 && a.kind != PAGED && p.num_seqs == 1 && p.max_seq_len >= 16384;
}

// The largest cluster size <= want of which `need` clusters fit on the GPU at once (else the largest that
// fits at all: more clusters run in waves); 0 if none fits. Asked once per kernel and size.
int cluster_size(const void* fn, cudaLaunchConfig_t cfg, int want, long need, int* cache) {
  int best = 0;
  for (int s = want; s >= 1; --s) {
    if (!cache[s]) {
      cudaLaunchAttribute at[1];
      at[0].id = cudaLaunchAttributeClusterDimension;
      at[0].val.clusterDim.x = unsigned(s), at[0].val.clusterDim.y = 1, at[0].val.clusterDim.z = 1;
      cfg.attrs = at, cfg.numAttrs = 1, cfg.gridDim = dim3(unsigned(s), 1, 1);
      int n = 0;
      if (cudaOccupancyMaxActiveClusters(&n, fn, &cfg) != cudaSuccess) n = 0, cudaGetLastError();
      cache[s] = n + 1;  // 0 = not asked yet
    }
    const int n = cache[s] - 1;
    if (n >= need) return s;
    if (n > 0 && !best) best = s;
  }
  return best;
}

template <int NW, int STG, int CL, int DIAG = 0, int MRG = 0, int L2B = 128, int PF = 0>
int run_b1f_t(Args a, long items, float* out, float* lse) {
  const kvx_params& p = a.p;
  const auto fn = b1f_kernel<NW, STG, CL, DIAG, MRG, L2B, PF>;
  const size_t smem = size_t(NW) * STG * B1M_STAGE + (size_t(NW) * (B1F_ROWS + 2 * MMA_R) + B1F_ROWS + 2 * MMA_R) * 4;
  Choice c{reinterpret_cast<const void*>(fn), smem};
  c.threads = 32 * NW;
  const int units = p.num_seqs, gy = int(items / units);
  const long resident = long(resident_per_sm(c)) * num_sms();
  const int cap = std::max(1, (p.max_seq_len + 2 * B1M_TT - 1) / (2 * B1M_TT));
  int splits = p.num_splits > 0 ? p.num_splits : int(std::max(1L, std::min<long>(cap, resident / (long(units) * gy))));
  if (CL) splits = std::min(splits, 16);
  const size_t NQ = size_t(units) * p.q_heads;
  a.chunks = gy / p.kv_heads, a.slot0 = 0, a.nslots = splits, a.out = out, a.lse = lse;
  if (!CL && splits > 1) {
    // combine_row keeps one weight per split in the (then free) warp-partial area: NW x 512 floats
    if (splits > B1F_ROWS) return fail("b1f: too many splits for the last-CTA merge");
    float* ws = g_ws.get(NQ * splits * (p.head_dim + 2));
    if (!ws) return fail("cudaMalloc of the split workspace failed");
    a.ws_m = ws, a.ws_l = ws + NQ * splits, a.ws_acc = ws + 2 * NQ * splits;
    a.counters = g_cnt.get(size_t(units) * gy, stream_of(p));
    if (!a.counters) return fail("cudaMalloc of the split counters failed");
  }
  cudaFuncSetAttribute(c.fn, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(unsigned(splits), unsigned(gy), unsigned(units)), cfg.blockDim = dim3(32 * NW);
  cfg.dynamicSmemBytes = smem, cfg.stream = stream_of(p);
  cudaLaunchAttribute attr[1];
  if (CL) {
    static int cache[17] = {};
    cudaFuncSetAttribute(c.fn, cudaFuncAttributeNonPortableClusterSizeAllowed, 1);
    splits = cluster_size(c.fn, cfg, splits, long(units) * gy, cache);
    if (splits < 1) return fail("b1f: no thread-block cluster of this kernel fits on the GPU");
    a.nslots = splits, cfg.gridDim.x = unsigned(splits);
    attr[0].id = cudaLaunchAttributeClusterDimension;
    attr[0].val.clusterDim.x = unsigned(splits), attr[0].val.clusterDim.y = 1, attr[0].val.clusterDim.z = 1;
    cfg.attrs = attr, cfg.numAttrs = 1;
  }
  if (std::getenv("KVX_B1F_LOG")) {  // benchmarks: which split count / cluster size a shape got, once per kernel
    static bool said = false;
    if (!said) said = true, std::fprintf(stderr, "b1f<%d,%d,%d,%d>: %d splits x %d items x %d units\n", NW, STG, CL, DIAG, splits, gy, units);
  }
  cudaError_t e = cudaLaunchKernelEx(&cfg, fn, a);
  if (e == cudaSuccess) e = cudaGetLastError();
  return e == cudaSuccess ? 0 : fail(std::string("CUDA (b1f): ") + cudaGetErrorString(e));
}

int run_b1f(Args a, long items, float* out, float* lse) {
  switch (fast_variant()) {
    case 46: return run_b1f_t<8, 3, 0>(a, items, out, lse);
    case 47: return run_b1f_t<4, 6, 1>(a, items, out, lse);
    case 48: return run_b1f_t<8, 3, 1>(a, items, out, lse);
    case 49: return run_b1f_t<4, 6, 0, 1>(a, items, out, lse);
    case 50: return run_b1f_t<4, 3, 0>(a, items, out, lse);
    case 51: return run_b1f_t<4, 4, 0>(a, items, out, lse);
    case 52: return run_b1f_t<4, 6, 0, 2>(a, items, out, lse);
    case 53: return run_b1f_t<4, 6, 0, 3>(a, items, out, lse);
    case 54: return run_b1f_t<4, 2, 0, 3>(a, items, out, lse);
    case 55: return run_b1f_t<4, 6, 0, 4>(a, items, out, lse);
    case 56: return run_b1f_t<4, 2, 0, 4>(a, items, out, lse);
    case 57: return run_b1f_t<4, 6, 0, 0, 1>(a, items, out, lse);
    case 58: return run_b1f_t<4, 4, 0, 0, 1>(a, items, out, lse);
    case 59: return run_b1f_t<4, 6, 0, 1, 1>(a, items, out, lse);
    case 60: return run_b1f_t<4, 6, 0, 0, 1, 256>(a, items, out, lse);
    case 61: return run_b1f_t<4, 6, 0, 0, 1, 128, 1>(a, items, out, lse);
    case 62: return run_b1f_t<4, 6, 0, 0, 1, 128, 3>(a, items, out, lse);
    case 63: return run_b1f_t<4, 6, 0, 1, 1, 128, 3>(a, items, out, lse);
    default: return run_b1f_t<4, 6, 0>(a, items, out, lse);
  }
}
