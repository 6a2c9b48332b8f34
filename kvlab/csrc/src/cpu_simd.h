// The vector path of cpu_kernels.cpp (AVX-512 / AVX2+FMA builds; it defines KVX_SIMD). Not a standalone
// header: cpu_kernels.cpp includes it once, inside its namespaces, compiled once per ISA (CMakeLists.txt).

#if (defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)) || (defined(__AVX2__) && defined(__FMA__))
#define KVX_SIMD 1

// The vectorized path (AVX-512: tiles of 16 tokens, AVX2: 8). Per tile, for every kv head and
// group of <= 4 query rows of that head (the GQA group):
//  - QK: each row's dot product accumulates W lanes wide (no reduction per dot); a row's W
//    per-token lane vectors are then summed by one transpose-and-add tree into a single vector of
//    W scores (~3 shuffle/add ops per score instead of a full horizontal sum each);
//  - softmax on those score vectors (vector exp, one max per row per tile);
//  - PV with a block of accumulators (rows x CV vectors) held in registers across the tile.
// bf16 -> f32 is a shift or an and (exact), fp8 e4m3 the same bit trick as the scalar path.
// Single thread, K/V in L3, bf16, Hq 32 / Hkv 8 / d 128 on a Zen 4: 415 -> 109 cycles per token
// and kv head (the scalar loop above vs this; the 64 FMAs alone take 64).
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
struct Simd {
  using V = __m512;
  using M = __mmask16;
  static constexpr int W = 16;  // lanes = tokens per tile
  static constexpr int CV = 4;  // vectors per PV register block (4 rows x 4 = 16 accumulators)
  static constexpr int TJ = 4;  // tokens per QK step (4 rows x 4 = 16 accumulators)
  static constexpr int G = 4;   // token groups per tile (W / TJ)
  static V zero() { return _mm512_setzero_ps(); }
  static V set1(float x) { return _mm512_set1_ps(x); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static V sub(V a, V b) { return _mm512_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V max(V a, V b) { return _mm512_max_ps(a, b); }  // NaN in b wins (vmaxps returns src2)
  static V min(V a, V b) { return _mm512_min_ps(a, b); }
  static M lt(V a, V b) { return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ); }
  static M le(V a, V b) { return _mm512_cmp_ps_mask(a, b, _CMP_LE_OQ); }
  static M isnan(V a) { return _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q); }
  static V select(M m, V t, V f) { return _mm512_mask_blend_ps(m, f, t); }
  static V iota() { return _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15); }
  static V exp2i(V r) {  // 2^r for integral r in [-126, 127]
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(r), _mm512_set1_epi32(127)), 23));
  }
  static float hsum(V v) { return _mm512_reduce_add_ps(v); }
  static float first(V v) { return _mm512_cvtss_f32(v); }
  static M eq(V a, V b) { return _mm512_cmp_ps_mask(a, b, _CMP_EQ_OQ); }
  static V allmax(V x) {  // every lane = max of the lanes, without leaving the vector unit
    x = max(x, _mm512_shuffle_f32x4(x, x, 0x4E));
    x = max(x, _mm512_shuffle_f32x4(x, x, 0xB1));
    x = max(x, _mm512_permute_ps(x, 0x4E));
    return max(x, _mm512_permute_ps(x, 0xB1));
  }
  static V cvt(const float* s) { return load(s); }
  static V cvt(const uint16_t* s) {
    const __m512i x = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(x, 16));
  }
  static void cvt2(const uint16_t* s, V& even, V& odd) {  // 2W bf16 -> even and odd elements
    const __m512i x = _mm512_loadu_si512(s);
    even = _mm512_castsi512_ps(_mm512_slli_epi32(x, 16));
    odd = _mm512_castsi512_ps(_mm512_and_si512(x, _mm512_set1_epi32(int(0xffff0000u))));
  }
  static V cvt(const uint8_t* s) {
    const __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s)));
    const __m512i mag = _mm512_and_si512(b, _mm512_set1_epi32(0x7f));
    const __m512i bits = _mm512_or_si512(_mm512_slli_epi32(_mm512_and_si512(b, _mm512_set1_epi32(0x80)), 24),
                                         _mm512_slli_epi32(mag, 20));
    const V f = mul(_mm512_castsi512_ps(bits), set1(0x1p120f));
    return select(_mm512_cmpeq_epi32_mask(mag, _mm512_set1_epi32(0x7f)), set1(std::numeric_limits<float>::quiet_NaN()), f);
  }
  // Scores of a tile come out of a transpose-and-add tree over the 16 tokens' lane vectors (45
  // shuffle/add ops for 16 sums). Its first two levels only combine tokens g, g+4, g+8, g+12 (a
  // group), so they run in registers right after a group's QK (fold); the last two combine the 4
  // groups (finish) into lane j = the sum of token j.
  static V fold(const V* a) {  // a[t]: token g + 4t
    const V w0 = add(_mm512_shuffle_f32x4(a[0], a[1], 0x44), _mm512_shuffle_f32x4(a[0], a[1], 0xEE));
    const V w1 = add(_mm512_shuffle_f32x4(a[2], a[3], 0x44), _mm512_shuffle_f32x4(a[2], a[3], 0xEE));
    // quarter k: 4 partial sums of token g + 4k
    return add(_mm512_shuffle_f32x4(w0, w1, 0x88), _mm512_shuffle_f32x4(w0, w1, 0xDD));
  }
  static V finish(const float* x) {  // x: the 4 groups' folded vectors
    const V x0 = load(x), x1 = load(x + 16), x2 = load(x + 32), x3 = load(x + 48);
    const V y0 = add(_mm512_unpacklo_ps(x0, x1), _mm512_unpackhi_ps(x0, x1));
    const V y1 = add(_mm512_unpacklo_ps(x2, x3), _mm512_unpackhi_ps(x2, x3));
    const __m512d a = _mm512_castps_pd(y0), c = _mm512_castps_pd(y1);
    return add(_mm512_castpd_ps(_mm512_unpacklo_pd(a, c)), _mm512_castpd_ps(_mm512_unpackhi_pd(a, c)));
  }
};
#else
struct Simd {
  using V = __m256;
  using M = __m256;
  static constexpr int W = 8;
  static constexpr int CV = 2;  // 16 ymm registers: 4 rows x 2 accumulators + V + broadcasts
  static constexpr int TJ = 2;
  static constexpr int G = 4;
  static V zero() { return _mm256_setzero_ps(); }
  static V set1(float x) { return _mm256_set1_ps(x); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V sub(V a, V b) { return _mm256_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V max(V a, V b) { return _mm256_max_ps(a, b); }
  static V min(V a, V b) { return _mm256_min_ps(a, b); }
  static M lt(V a, V b) { return _mm256_cmp_ps(a, b, _CMP_LT_OQ); }
  static M le(V a, V b) { return _mm256_cmp_ps(a, b, _CMP_LE_OQ); }
  static M isnan(V a) { return _mm256_cmp_ps(a, a, _CMP_UNORD_Q); }
  static V select(M m, V t, V f) { return _mm256_blendv_ps(f, t, m); }
  static V iota() { return _mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7); }
  static V exp2i(V r) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(r), _mm256_set1_epi32(127)), 23));
  }
  static float first(V v) { return _mm256_cvtss_f32(v); }
  static M eq(V a, V b) { return _mm256_cmp_ps(a, b, _CMP_EQ_OQ); }
  static V allmax(V x) {
    x = max(x, _mm256_permute2f128_ps(x, x, 1));
    x = max(x, _mm256_permute_ps(x, 0x4E));
    return max(x, _mm256_permute_ps(x, 0xB1));
  }
  static float hsum(V v) {
    __m128 m = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_add_ps(m, _mm_movehl_ps(m, m));
    return _mm_cvtss_f32(_mm_add_ss(m, _mm_movehdup_ps(m)));
  }
  static V cvt(const float* s) { return load(s); }
  static V cvt(const uint16_t* s) {
    const __m256i x = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(x, 16));
  }
  static void cvt2(const uint16_t* s, V& even, V& odd) {
    const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s));
    even = _mm256_castsi256_ps(_mm256_slli_epi32(x, 16));
    odd = _mm256_castsi256_ps(_mm256_and_si256(x, _mm256_set1_epi32(int(0xffff0000u))));
  }
  static V cvt(const uint8_t* s) {
    const __m256i b = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(s)));
    const __m256i mag = _mm256_and_si256(b, _mm256_set1_epi32(0x7f));
    const __m256i bits = _mm256_or_si256(_mm256_slli_epi32(_mm256_and_si256(b, _mm256_set1_epi32(0x80)), 24),
                                         _mm256_slli_epi32(mag, 20));
    const V f = mul(_mm256_castsi256_ps(bits), set1(0x1p120f));
    const V nan = _mm256_castsi256_ps(_mm256_cmpeq_epi32(mag, _mm256_set1_epi32(0x7f)));
    return select(nan, set1(std::numeric_limits<float>::quiet_NaN()), f);
  }
  static V fold(const V* a) {  // a[t]: token g + 4t; half k: 4 partial sums of token g + 4k
    return add(_mm256_permute2f128_ps(a[0], a[1], 0x20), _mm256_permute2f128_ps(a[0], a[1], 0x31));
  }
  static V finish(const float* x) {  // lane j = the sum of token j
    const V x0 = load(x), x1 = load(x + 8), x2 = load(x + 16), x3 = load(x + 24);
    const V y0 = add(_mm256_unpacklo_ps(x0, x1), _mm256_unpackhi_ps(x0, x1));
    const V y1 = add(_mm256_unpacklo_ps(x2, x3), _mm256_unpackhi_ps(x2, x3));
    const __m256d a = _mm256_castps_pd(y0), c = _mm256_castps_pd(y1);
    return add(_mm256_castpd_ps(_mm256_unpacklo_pd(a, c)), _mm256_castpd_ps(_mm256_unpackhi_pd(a, c)));
  }
};
#endif

using V = Simd::V;
constexpr int W = Simd::W;

// fast_exp, lane-wise (same fit); NaN stays NaN (max/min keep their second operand's NaN).
inline V vexp(V x) {
  const V xc = Simd::min(Simd::set1(88.f), Simd::max(Simd::set1(-87.f), x));
  const V t = Simd::mul(xc, Simd::set1(1.44269504088896341f));
  const V r = Simd::sub(Simd::add(t, Simd::set1(12582912.f)), Simd::set1(12582912.f));
  const V f = Simd::sub(t, r);
  V p = Simd::set1(1.546531857457012e-4f);
  p = Simd::fma(p, f, Simd::set1(1.3395285932347178e-3f));
  p = Simd::fma(p, f, Simd::set1(9.618040174245834e-3f));
  p = Simd::fma(p, f, Simd::set1(5.550340563058853e-2f));
  p = Simd::fma(p, f, Simd::set1(2.4022650718688965e-1f));
  p = Simd::fma(p, f, Simd::set1(6.931471824645996e-1f));
  p = Simd::fma(p, f, Simd::set1(1.f));
  const V res = Simd::mul(p, Simd::exp2i(r));
  return Simd::select(Simd::lt(x, Simd::set1(-87.f)), Simd::zero(), res);
}

// A permuted (PAIR) row holds, per block of 2W dims, the even dims, then the odd ones.
inline void permute_row(const float* src, float* dst, int D, float s1, float s2) {
  for (int b = 0; b < D; b += 2 * W)
    for (int i = 0; i < W; ++i) {
      dst[b + i] = src[b + 2 * i] * s1 * s2;
      dst[b + W + i] = src[b + 2 * i + 1] * s1 * s2;
    }
}

inline void unpermute_row(float* a, int D, float* tmp) {
  for (int b = 0; b < D; b += 2 * W) {
    std::copy_n(a + b, 2 * W, tmp);
    for (int i = 0; i < W; ++i) {
      a[b + 2 * i] = tmp[i];
      a[b + 2 * i + 1] = tmp[W + i];
    }
  }
}

struct Tile {  // up to W physically consecutive tokens
  int64_t slot;
  int t0, n;
};

struct Ctx {  // one item's state for the vector path
  const kvx_params* p;
  int D, ND;            // head_dim, head_dim / W
  size_t stride;        // elements between consecutive tokens of one kv head (kv_heads * D)
  const float* qs;      // [R, D] prescaled queries (PAIR: permuted)
  float* sc;            // [R, W] scores of the current tile, then its probabilities
  float* mv;            // [Rp] running max m per row (Rp: R rounded up to W, padding rows dead)
  float* tm;            // [Rp] this tile's max per row
  float* cv;            // [Rp] this tile's rescale of the accumulator per row
  float* lv;            // [R, W] running sum l, lane-wise (summed once at the end)
  float* red;           // [4, G, W] folded lane vectors of the current rows' token groups
  const float* slope;
  const float* qpos;
  float* acc;           // this item's accumulators [R, D] (PAIR: permuted)
};

// Vectors v and v+1 of a row (storage order). PAIR (bf16): one load and one op per vector: the
// even and odd elements of 2W values, so q and the accumulators are kept in that permuted order
// (even dims, then odd dims, per block of 2W; undone once per item at the end).
template <bool PAIR, typename T>
inline void load2(const T* s, V& a, V& b) {
  if constexpr (PAIR) {
    Simd::cvt2(s, a, b);
  } else {
    a = Simd::cvt(s);
    b = Simd::cvt(s + W);
  }
}

// Rows [j0, n) of the next tile's K (or V) rows of one kv head, every line, into L2 (T1). Measured
// on a 2-core Zen 4 at 8k x 8, 2 threads: no prefetch 14 GB/s, into L1 (T0) 14 GB/s (a tile's K
// alone is 32 KB, the size of L1, so it evicts the rows in use), into L2 21-23 GB/s; one or two
// lines per row instead of all four: 16 GB/s; two tiles ahead: no better. Spread over the steps
// (a share of K rows before each QK token group, a V row with each PV token) rather than one burst
// per head: +10-20 % in DRAM, and -8 % time with K/V in L3.
template <typename T>
inline int row_lines(int D) {  // 64-byte cache lines of one K or V row
  return int((size_t(D) * sizeof(T) + 63) / 64);
}
template <typename T>
inline void prefetch_rows(const T* p, size_t stride, int j0, int n, int nlines) {
  for (int j = j0; j < n; ++j)
    for (int l = 0; l < nlines; ++l) _mm_prefetch(reinterpret_cast<const char*>(p + j * stride) + 64 * l, _MM_HINT_T1);
}

// QK of rows [r0, r0+NR) x the TJ tokens of group g (tokens g, g+G, g+2G, ...; the first TV of them
// exist), folded by the first levels of the transpose-and-add tree in registers -> c.red. TJ tokens
// per step so that each q load feeds TJ FMAs (one token per step: the q loads bound the loop).
template <bool PAIR, int NR, int TV, typename T>
inline void qk_group(const Ctx& c, int r0, int g, const T* Kt) {
  constexpr int TJ = Simd::TJ, G = Simd::G;
  V a[NR][TJ];
  for (int r = 0; r < NR; ++r)
    for (int t = 0; t < TJ; ++t) a[r][t] = Simd::zero();
  const T* kg = Kt + g * c.stride;
  const float* q0 = c.qs + size_t(r0) * c.D;
  if constexpr (PAIR) {
    for (int v = 0; v < c.ND; v += 2) {
      V x0[TV], x1[TV];
      for (int t = 0; t < TV; ++t) load2<PAIR>(kg + t * G * c.stride + v * W, x0[t], x1[t]);
      for (int r = 0; r < NR; ++r) {
        const V qa = Simd::load(q0 + size_t(r) * c.D + v * W), qb = Simd::load(q0 + size_t(r) * c.D + v * W + W);
        for (int t = 0; t < TV; ++t) a[r][t] = Simd::fma(qb, x1[t], Simd::fma(qa, x0[t], a[r][t]));
      }
    }
  } else {
    for (int v = 0; v < c.ND; ++v) {
      V x[TV];
      for (int t = 0; t < TV; ++t) x[t] = Simd::cvt(kg + t * G * c.stride + v * W);
      for (int r = 0; r < NR; ++r) {
        const V qa = Simd::load(q0 + size_t(r) * c.D + v * W);
        for (int t = 0; t < TV; ++t) a[r][t] = Simd::fma(qa, x[t], a[r][t]);
      }
    }
  }
  for (int r = 0; r < NR; ++r) Simd::store(c.red + (r * G + g) * W, Simd::fold(a[r]));
}

// Scores of rows [r0, r0+NR) (one kv head) for a tile of nt <= W tokens -> c.sc.
template <bool PAIR, int NR, typename T>
inline void qk_rows(const Ctx& c, int r0, int nt, const T* Kt, const T* pf, int pn) {
  constexpr int TJ = Simd::TJ, G = Simd::G;
  const int nl = row_lines<T>(c.D);
  for (int g = 0; g < G; ++g) {
    if (pf) prefetch_rows(pf, c.stride, pn * g / G, pn * (g + 1) / G, nl);  // a share per group
    const int tv = nt > g ? (nt - g + G - 1) / G : 0;  // tokens of group g inside the tile
    if (tv >= TJ) {
      qk_group<PAIR, NR, TJ>(c, r0, g, Kt);
    } else if (tv == 0) {
      for (int r = 0; r < NR; ++r) Simd::store(c.red + (r * G + g) * W, Simd::zero());
    } else if constexpr (TJ > 1) {
      if (tv == 1) qk_group<PAIR, NR, 1>(c, r0, g, Kt);
      if constexpr (TJ > 2) {
        if (tv == 2) qk_group<PAIR, NR, 2>(c, r0, g, Kt);
        if (tv == 3) qk_group<PAIR, NR, 3>(c, r0, g, Kt);
      }
    }
  }
  for (int r = 0; r < NR; ++r) Simd::store(c.sc + (r0 + r) * W, Simd::finish(c.red + r * G * W));
}

// Online softmax of all R rows over the tile, in vectors: per row the masks and the max; then the
// new running max and the accumulator rescale W rows at a time (one exp per W rows, not per row);
// then per row the probabilities and the lane-wise running sum.
inline void softmax_tile(const Ctx& c, int R, int nt, float pos0) {
  const V ninf = Simd::set1(-INFINITY);
  const V lane = Simd::iota();
  const int window = c.p->window;
  const auto beyond = Simd::le(Simd::set1(float(nt)), lane);  // lanes >= nt hold no token
  for (int row = 0; row < R; ++row) {
    V s = Simd::load(c.sc + row * W);
    if (c.p->alibi || window > 0) {
      const V rel = Simd::sub(Simd::add(Simd::set1(pos0), lane), Simd::set1(c.qpos[row]));  // <= 0
      s = Simd::fma(Simd::set1(c.slope[row]), rel, s);
      if (window > 0) s = Simd::select(Simd::le(rel, Simd::set1(float(-window))), ninf, s);
    }
    s = Simd::select(beyond, ninf, s);
    Simd::store(c.sc + row * W, s);
    c.tm[row] = Simd::first(Simd::allmax(Simd::select(Simd::isnan(s), ninf, s)));  // NaN never wins
  }
  for (int r = 0; r < R; r += W) {
    const V tmax = Simd::load(c.tm + r), mold = Simd::load(c.mv + r), mnew = Simd::max(tmax, mold);
    // a row whose keys in this tile are all masked keeps its state (rescale 1)
    Simd::store(c.cv + r, Simd::select(Simd::eq(tmax, ninf), Simd::set1(1.f), vexp(Simd::sub(mold, mnew))));
    Simd::store(c.mv + r, mnew);
  }
  for (int row = 0; row < R; ++row) {
    const V s = Simd::load(c.sc + row * W);
    const V e = c.tm[row] == -INFINITY ? Simd::select(Simd::isnan(s), s, Simd::zero())  // p = 0, NaN stays
                                       : vexp(Simd::sub(s, Simd::set1(c.mv[row])));
    Simd::store(c.sc + row * W, e);
    Simd::store(c.lv + row * W, Simd::fma(Simd::load(c.lv + row * W), Simd::set1(c.cv[row]), e));
  }
}

// acc[rows r0.., dims d0..d0+CV*W) = acc * corr + sum_j p_j V_j, the block in registers.
template <bool PAIR, int NR, int CV, typename T>
inline void pv_block(const Ctx& c, int r0, int d0, int nt, const T* Vt, const T* pf = nullptr, int pn = 0) {
  V a[NR][CV];
  bool rescale = false;  // once the running max settles, a tile rarely moves it: skip the multiply
  for (int r = 0; r < NR; ++r) rescale |= c.cv[r0 + r] != 1.f;
  for (int r = 0; r < NR; ++r) {
    const V cr = Simd::set1(c.cv[r0 + r]);
    for (int v = 0; v < CV; ++v) {
      a[r][v] = Simd::load(c.acc + size_t(r0 + r) * c.D + d0 + v * W);
      if (rescale) a[r][v] = Simd::mul(a[r][v], cr);
    }
  }
  const int nl = row_lines<T>(c.D);
  for (int j = 0; j < nt; ++j) {
    if (pf && j < pn) prefetch_rows(pf, c.stride, j, j + 1, nl);  // the next tile's row j
    const T* vj = Vt + j * c.stride + d0;
    if constexpr (CV % 2 == 0) {
      for (int v = 0; v < CV; v += 2) {
        V x0, x1;
        load2<PAIR>(vj + v * W, x0, x1);
        for (int r = 0; r < NR; ++r) {
          const V pj = Simd::set1(c.sc[(r0 + r) * W + j]);
          a[r][v] = Simd::fma(pj, x0, a[r][v]);
          a[r][v + 1] = Simd::fma(pj, x1, a[r][v + 1]);
        }
      }
    } else {
      static_assert(!PAIR || CV % 2 == 0, "pairs come two vectors at a time");
      for (int v = 0; v < CV; ++v) {
        const V x = Simd::cvt(vj + v * W);
        for (int r = 0; r < NR; ++r) a[r][v] = Simd::fma(Simd::set1(c.sc[(r0 + r) * W + j]), x, a[r][v]);
      }
    }
  }
  for (int r = 0; r < NR; ++r)
    for (int v = 0; v < CV; ++v) Simd::store(c.acc + size_t(r0 + r) * c.D + d0 + v * W, a[r][v]);
}

template <bool PAIR, int NR, typename T>
inline void pv_rows(const Ctx& c, int r0, int nt, const T* Vt, const T* pf, int pn) {
  const int nl = row_lines<T>(c.D);
  int d0 = 0;
  for (; d0 + Simd::CV * W <= c.D; d0 += Simd::CV * W) {
    pv_block<PAIR, NR, Simd::CV>(c, r0, d0, nt, Vt, d0 == 0 ? pf : nullptr, pn);
    if (d0 == 0 && pf && nt < pn) prefetch_rows(pf, c.stride, nt, pn, nl);
  }
  if (pf && c.D < Simd::CV * W) prefetch_rows(pf, c.stride, 0, pn, nl);  // no full block ran
  if constexpr (PAIR) {
    for (; d0 < c.D; d0 += 2 * W) pv_block<PAIR, NR, 2>(c, r0, d0, nt, Vt);
  } else {
    for (; d0 < c.D; d0 += W) pv_block<PAIR, NR, 1>(c, r0, d0, nt, Vt);
  }
}

// Rows of each kv head go through in groups of <= 4 (4 x CV accumulators stay in registers).
#define KVX_ROW_GROUPS(CALL)                          \
  for (int r0 = h * RH; r0 < (h + 1) * RH; r0 += 4) { \
    switch ((h + 1) * RH - r0) {                      \
      case 1: CALL(1); break;                         \
      case 2: CALL(2); break;                         \
      case 3: CALL(3); break;                         \
      default: CALL(4); break;                        \
    }                                                 \
  }

// A tile (<= W tokens) goes through three phases: QK for every kv head (K read in address
// order, head by head), the softmax of every row (independent rows, so the out-of-order core
// overlaps their latency chains instead of stalling between a head's QK and its PV), then PV
// for every kv head (V alike). Each phase prefetches its rows of the next tile, spread over its
// steps.
template <bool PAIR, typename T>
void run_item_simd(Work& w, const Item& it, std::vector<float>& scratch) {
  const kvx_params& p = *w.p;
  const int D = p.head_dim, H = p.kv_heads, NH = it.nh, R = it.nrows, RH = R / NH, bs = p.block_size;
  const T* K = static_cast<const T*>(w.k) + size_t(it.h0) * D;  // item-local heads, as in run_item
  const T* Vp = static_cast<const T*>(w.v) + size_t(it.h0) * D;
  const size_t Rp = size_t(R + W - 1) / W * W;
  scratch.resize(size_t(R) * D + 2 * size_t(R) * W + 3 * Rp + size_t(4) * W * W + 2 * size_t(R));
  Ctx c;
  c.p = &p;
  c.D = D;
  c.ND = D / W;
  c.stride = size_t(H) * D;
  float* qs = scratch.data();
  c.qs = qs;
  c.sc = qs + size_t(R) * D;
  c.lv = c.sc + size_t(R) * W;
  c.mv = c.lv + size_t(R) * W;
  c.tm = c.mv + Rp;
  c.cv = c.tm + Rp;
  c.red = c.cv + Rp;
  std::fill_n(c.mv, Rp, -INFINITY);
  std::fill_n(c.tm, Rp, -INFINITY);
  float* slope = c.red + size_t(4) * W * W;
  float* qpos = slope + R;
  c.slope = slope;
  c.qpos = qpos;
  c.acc = &w.acc[size_t(it.row0) * D];
  for (int r = 0; r < R; ++r) {
    const Row& row = w.rows[it.row0 + r];
    const float ks = p.k_scale ? p.k_scale[it.h0 + r / RH] : 1.f;
    const float* qr = w.q + (size_t(row.seq) * p.q_heads + row.qhead) * D;
    if constexpr (PAIR) {
      permute_row(qr, qs + size_t(r) * D, D, p.sm_scale, ks);
    } else {
      for (int d = 0; d < D; ++d) qs[size_t(r) * D + d] = qr[d] * p.sm_scale * ks;
    }
    slope[r] = p.alibi ? p.alibi[row.qhead] : 0.f;
    qpos[r] = float(row.qpos);
    std::fill_n(c.lv + size_t(r) * W, W, 0.f);
    std::fill_n(c.acc + size_t(r) * D, D, 0.f);
  }
  // The tiles first (one metadata lookup per run, as before), so each tile can prefetch the next
  // one's K/V rows, wherever the layout put them, while it computes.
  static thread_local std::vector<Tile> tiles;
  tiles.clear();
  for_runs(it.src, bs, it.lo, it.hi, [&](int64_t slot0, int t0, int n) {
    for (int j0 = 0; j0 < n; j0 += W) tiles.push_back({slot0 + j0, t0 + j0, n - j0 < W ? n - j0 : W});
  });
  for (size_t ti = 0; ti < tiles.size(); ++ti) {
    const Tile& tl = tiles[ti];
    const Tile* nx = ti + 1 < tiles.size() ? &tiles[ti + 1] : nullptr;
    const size_t base = size_t(tl.slot) * c.stride, nbase = nx ? size_t(nx->slot) * c.stride : 0;
    const int pn = nx ? nx->n : 0;
    for (int h = 0; h < NH; ++h) {
      const T* Kt = K + base + size_t(h) * D;
      const T* pf = nx ? K + nbase + size_t(h) * D : nullptr;
#define KVX_QK(N) qk_rows<PAIR, N>(c, r0, tl.n, Kt, r0 == h * RH ? pf : nullptr, pn)
      KVX_ROW_GROUPS(KVX_QK)
#undef KVX_QK
    }
    const float pos0 = float(it.src.loffset + tl.t0);
    softmax_tile(c, R, tl.n, pos0);
    for (int h = 0; h < NH; ++h) {
      const T* Vt = Vp + base + size_t(h) * D;
      const T* pf = nx ? Vp + nbase + size_t(h) * D : nullptr;
#define KVX_PV(N) pv_rows<PAIR, N>(c, r0, tl.n, Vt, r0 == h * RH ? pf : nullptr, pn)
      KVX_ROW_GROUPS(KVX_PV)
#undef KVX_PV
    }
  }
  for (int r = 0; r < R; ++r)
    w.parts[it.row0 + r] = {c.mv[r], Simd::hsum(Simd::load(c.lv + size_t(r) * W))};
  if constexpr (PAIR) {  // accumulators back to dim order
    for (int r = 0; r < R; ++r) unpermute_row(c.acc + size_t(r) * D, D, c.red);
  }
}
#undef KVX_ROW_GROUPS
#endif
