// Small-batch split-KV decode (issue 18, goal 3): bf16, head_dim 128, GQA-4 rows per CTA, included by
// cuda_kernels.cu inside its anonymous namespace (it reuses issue_tile, mma_tile16 and the merges).
//
// At batch 1 the tensor-core decode path left the DRAM idle half of its kernel time (ncu, H100, 8k x 1:
// 23 us at 47 % DRAM throughput, then a 6 us combine kernel): each CTA's startup (metadata chain,
// first-tile latency) and its epilogue, then a second launch, were a large share of a short call.
// This kernel changes the shape of the work, not the tile math:
// - one wave of CTAs sized by the occupancy calculator (splits = resident CTAs / items, not a power of
//   two), each with a deeper pipeline (STG - 1 tiles in flight) so fewer, longer-lived CTAs keep the
//   same bytes in flight;
// - IL: the 64-token tiles of a (sequence, kv head) are dealt round-robin to its splits (tile j to split
//   j mod S) instead of in contiguous ranges, so at any moment the whole GPU reads one narrow front of
//   the K/V (a few 2 MiB pages, as a copy kernel does) rather than S fronts one split apart;
// - the split merge is fused: each CTA publishes its partial and the last to arrive of a row group
//   merges them (last_to_arrive + combine_row), so there is no second kernel launch.
// DIAG (benchmarks only, wrong output): 1 copies without the math, 2 the math without the copies.
// Outcome on the H100 (notes/kvlab.md, issue 18): no faster than mma_kernel + combine_kernel at batch
// 1-2 (one CTA per SM was the worst form), so it stays opt-in (KVX_CUDA_VARIANT 20-24).

template <int STG, bool IL, int DIAG = 0>
__global__ void __launch_bounds__(THREADS, 1) split1_kernel(Args a) {
  extern __shared__ __align__(16) float smem[];
  constexpr int TT = MMA_TT, stage_bytes = 2 * TT * MMA_RBP;
  const int warp = threadIdx.x / 32, L = threadIdx.x % 32, g = L / 4, t = L % 4;
  const int unit = blockIdx.z, kvh = blockIdx.y / a.chunks, chunk = blockIdx.y % a.chunks;
  // independent metadata loads together: the span CSR offsets beside the length (unit_rows)
  int sp0 = 0, sp1 = 0;
  if (a.kind == SPANS) sp0 = a.sptr[unit], sp1 = a.sptr[unit + 1];
  Rows rows;
  int src_len, loffset;
  unit_rows(a, unit, kvh, chunk, MMA_R, rows, src_len, loffset);
  if (rows.n == 0) return;
  // the keys any row of this CTA can see start at lo (sliding window); tiles of TT tokens from there
  int lo = src_len;
  for (int r = 0; r < rows.n; ++r)
    lo = min(lo, a.p.window > 0 ? max(0, rows.qpos[r] - a.p.window + 1 - loffset) : 0);
  const int ntile = src_len > lo ? (src_len - lo + TT - 1) / TT : 0, S = gridDim.x, s = blockIdx.x;
  int first, stride, nsteps;
  if constexpr (IL) {
    first = s, stride = S, nsteps = ntile > s ? (ntile - 1 - s) / S + 1 : 0;
  } else {
    const int per = (ntile + S - 1) / S;
    first = s * per, stride = 1, nsteps = max(0, min(per, ntile - first));
  }

  SlotCursor<true> slots(a);
  slots.reset(unit, sp0, sp1);
  char* stage_base = reinterpret_cast<char*>(smem);
  auto issue = [&](int step) {  // tile `step` of this CTA into its stage, or an empty group
    if (DIAG != 2 && step < nsteps)
      issue_tile(a, slots, stage_base + (step % STG) * stage_bytes, lo + (first + step * stride) * TT, src_len, kvh, -1);
    cp_async_commit();
  };
#pragma unroll
  for (int i = 0; i < STG - 1; ++i) issue(i);

  uint32_t qa[8][2];
  load_q_frags(a, rows, kvh, g, t, qa);
  const bool rreal = (g & 3) < rows.n;
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
    if (DIAG == 1) continue;
    const char* kt = stage_base + (step % STG) * stage_bytes + warp * 16 * MMA_RBP;  // this warp's 16 tokens
    mma_tile16(kt, kt + TT * MMA_RBP, lo + (first + step * stride) * TT + warp * 16, src_len, loffset, my_qp,
               my_slope, a.p.window, qa, acc, m_run, l_run, L, t);
  }
  cp_async_wait<0>();
  fold_halves(acc);
  __syncthreads();
  // merge the warps (token groups) in shared memory, as mma_kernel does
  constexpr int NG = MMA_WARPS, D = MMA_D, RMAX = MMA_R;
  float* s_acc = smem;
  float* s_m = s_acc + NG * RMAX * D;
  float* s_l = s_m + NG * RMAX;
  stash_warp_rows(s_acc, s_m, s_l, acc, m_run, l_run, warp, g, t);
  __syncthreads();
  const bool direct = S == 1;  // one split holds the whole row: the output itself
  const float vs = a.p.v_scale ? a.p.v_scale[kvh] : 1.f;
  for (int idx = threadIdx.x; idx < rows.n * D; idx += THREADS) {
    const int r = idx / D, d = idx % D;
    put_merged(a, merge_groups(s_acc, s_m, s_l, NG, RMAX, D, r, d), size_t(rows.seq[r]) * a.p.q_heads + rows.head[r],
               d, D, direct, a.slot0 + s, vs);
  }
  if (direct || !last_to_arrive(a)) return;
  if (warp < rows.n) combine_row(a, size_t(rows.seq[warp]) * a.p.q_heads + rows.head[warp], vs, L, smem + warp * a.nslots);
}

// Variants (KVX_CUDA_VARIANT) of this kernel: 20 (the default where it applies) and the rest for A/B.
struct Split1 {
  const void* fn;
  int stages;
};
Split1 split1_choice(int v) {
  switch (v) {
    case 21: return {reinterpret_cast<const void*>(split1_kernel<5, false>), 5};  // contiguous split ranges
    case 22: return {reinterpret_cast<const void*>(split1_kernel<3, true>), 3};   // 3 stages, 2 CTAs/SM
    case 23: return {reinterpret_cast<const void*>(split1_kernel<5, true, 1>), 5};  // copies only
    case 24: return {reinterpret_cast<const void*>(split1_kernel<5, true, 2>), 5};  // math only
    default: return {reinterpret_cast<const void*>(split1_kernel<5, true>), 5};
  }
}

// Where this kernel takes a decode call: only when a variant 20-24 asks for it, wherever the bf16 d128
// GQA-4 tensor-core path applies (so the oracle reaches it). It is not the default: on the H100 it read
// no faster than mma_kernel + combine_kernel at batch 1-2 (notes/kvlab.md, "split1").
bool split1_applies(const kvx_params& p, long items) {
  (void)items;
  const int v = fast_variant();
  const bool fast = p.kv_dtype == KVX_BF16 && p.head_dim == 128 && (p.q_heads / p.kv_heads) % 4 == 0;
  return fast && v >= 20 && v <= 24;
}

int run_split1(Args a, long items, float* out, float* lse) {
  const kvx_params& p = a.p;
  const int v = fast_variant();
  const Split1 k = split1_choice(v);
  Choice c{k.fn, size_t(k.stages) * 2 * MMA_TT * MMA_RBP};
  // one wave: as many splits per item as the resident CTAs allow, each at least one 64-token tile
  const long resident = long(resident_per_sm(c)) * num_sms();
  const int cap = std::max(1, (p.max_seq_len + MMA_TT - 1) / MMA_TT);
  const int splits = p.num_splits > 0 ? p.num_splits : int(std::max(1L, std::min<long>(cap, resident / items)));
  const int units = p.num_seqs, gy = int(items / units);
  const size_t NQ = size_t(units) * p.q_heads;
  float* ws = g_ws.get(NQ * splits * (p.head_dim + 2));
  if (!ws) return fail("cudaMalloc of the split workspace failed");
  a.ws_m = ws, a.ws_l = ws + NQ * splits, a.ws_acc = ws + 2 * NQ * splits;
  a.chunks = gy / p.kv_heads, a.slot0 = 0, a.nslots = splits, a.fuse = 2, a.out = out, a.lse = lse;
  if (splits > 1) {
    a.counters = g_cnt.get(size_t(units) * gy, stream_of(p));
    if (!a.counters) return fail("cudaMalloc of the split counters failed");
  }
  const cudaError_t e = launch(a, c, dim3(splits, gy, units));
  return e == cudaSuccess ? 0 : fail(std::string("CUDA: ") + cudaGetErrorString(e));
}

// ---- the read floor: what one kernel that only reads the same bytes takes ---------------------------
// A reference for the batch-1 goal, not attention: every byte of two buffers (K and V) read once with
// 16-byte loads, 8 independent loads in flight per thread, a grid of some CTAs per SM; each CTA writes
// one word (so the loads are not dead code). Timed like the kernels, it shows what a kernel that does
// nothing but read K/V once takes on this card under the bench's method. HINT: the loads ask L2 to
// fetch whole 256-byte lines (ld.global.nc.L2::256B) instead of streaming loads (ld.global.cs).
template <bool HINT>
__device__ __forceinline__ uint4 load16(const uint4* p) {
  if constexpr (HINT) {
    uint4 r;
    asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p));
    return r;
  } else {
    return __ldcs(p);
  }
}
template <bool HINT>
__global__ void __launch_bounds__(256) read_floor_kernel(const uint4* a, size_t na, const uint4* b, size_t nb,
                                                         unsigned* sink) {
  constexpr int UNROLL = 8;
  const size_t tid = size_t(blockIdx.x) * blockDim.x + threadIdx.x, stride = size_t(gridDim.x) * blockDim.x;
  unsigned x = 0;
  for (int part = 0; part < 2; ++part) {
    const uint4* p = part ? b : a;
    const size_t n = part ? nb : na;
    size_t i = tid;
    for (; i + (UNROLL - 1) * stride < n; i += UNROLL * stride) {
      uint4 r[UNROLL];
#pragma unroll
      for (int u = 0; u < UNROLL; ++u) r[u] = load16<HINT>(p + i + u * stride);
#pragma unroll
      for (int u = 0; u < UNROLL; ++u) x ^= r[u].x ^ r[u].y ^ r[u].z ^ r[u].w;
    }
    for (; i < n; i += stride) {
      const uint4 r = load16<HINT>(p + i);
      x ^= r.x ^ r.y ^ r.z ^ r.w;
    }
  }
  x = __reduce_xor_sync(0xffffffffu, x);
  if (threadIdx.x == 0) sink[blockIdx.x] = x;
}
