// The CPU inner loop, compiled once per vector ISA (KVX_NS names the build); cpu_api.cpp picks one
// at run time, so one wheel runs everywhere and still uses AVX2/AVX-512 where present.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "cpu_core.h"

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#ifndef KVX_NS
#define KVX_NS kvx_generic
#endif

namespace KVX_NS {
using namespace kvx;

namespace {
constexpr int TILE = 16;

inline float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Each converter returns a float view of one K or V row (D elements).
inline const float* to_float(const float* s, float*, int) { return s; }

inline const float* to_float(const uint16_t* s, float* buf, int D) {  // bf16 = high half of f32
#pragma omp simd
  for (int d = 0; d < D; ++d) buf[d] = bits_to_float(uint32_t(s[d]) << 16);
  return buf;
}

inline const float* to_float(const uint8_t* s, float* buf, int D) {
  // e4m3fn: shifting its 7 magnitude bits into f32's exponent/mantissa and scaling by 2^120
  // rebiases the exponent (7 → 127) and turns e4m3 subnormals into f32 subnormals of the right
  // value; 0x7f/0xff are NaN (the poison a layout must never read).
#pragma omp simd
  for (int d = 0; d < D; ++d) {
    uint32_t b = s[d];
    float f = bits_to_float(((b & 0x80u) << 24) | ((b & 0x7fu) << 20)) * 0x1p120f;
    buf[d] = (b & 0x7fu) == 0x7fu ? std::numeric_limits<float>::quiet_NaN() : f;
  }
  return buf;
}

// e^x to ~1e-7 relative, in a form the compiler vectorizes (libm's expf is a scalar call, and
// decode attention needs one per query head per token). exp(-inf) = 0; NaN stays NaN.
inline float fast_exp(float x) {
  const float xc = x < -87.f ? -87.f : (x > 88.f ? 88.f : x);
  const float t = xc * 1.44269504088896341f;
  const float r = (t + 12582912.f) - 12582912.f;  // round to nearest (1.5 * 2^23 trick)
  const float f = t - r;                           // [-0.5, 0.5]
  float p = 1.546531857457012e-4f;                 // 2^f, Chebyshev fit, degree 6
  p = p * f + 1.3395285932347178e-3f;
  p = p * f + 9.618040174245834e-3f;
  p = p * f + 5.550340563058853e-2f;
  p = p * f + 2.4022650718688965e-1f;
  p = p * f + 6.931471824645996e-1f;
  p = p * f + 1.f;
  const float res = p * bits_to_float(uint32_t(int32_t(r) + 127) << 23);
  return x < -87.f ? 0.f : res;
}

// Dot product with 16 independent partial sums and a tree at the end: an `omp simd reduction`
// here compiled (GCC 12) to a chain of 16 dependent scalar adds per dot, which bounded the kernel.
inline float dot(const float* a, const float* b, int D) {
  float p[16] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  int d = 0;
  for (; d + 16 <= D; d += 16) {
#pragma omp simd
    for (int i = 0; i < 16; ++i) p[i] += a[d + i] * b[d + i];
  }
  for (int i = 0; d < D; ++d, ++i) p[i] += a[d] * b[d];
#pragma omp simd
  for (int i = 0; i < 8; ++i) p[i] += p[i + 8];
#pragma omp simd
  for (int i = 0; i < 4; ++i) p[i] += p[i + 4];
  return (p[0] + p[2]) + (p[1] + p[3]);
}

// Iterate the physically contiguous runs covering source tokens [lo, hi): fn(slot0, t0, n).
template <class F>
inline void for_runs(const Source& s, int bs, int lo, int hi, F&& fn) {
  if (lo >= hi) return;
  if (s.kind == CONTIG) {
    fn(s.base + lo, lo, hi - lo);
  } else if (s.kind == PAGED) {
    for (int t = lo; t < hi;) {
      int off = t % bs, n = bs - off < hi - t ? bs - off : hi - t;
      fn(int64_t(s.table[t / bs]) * bs + off, t, n);
      t += n;
    }
  } else {
    int start = 0;
    for (int i = 0; i < s.nspans && start < hi; ++i) {
      int len = s.slen[i], a = lo > start ? lo : start, b = hi < start + len ? hi : start + len;
      if (a < b) fn(int64_t(s.sblk[i]) * bs + (a - start), a, b - a);
      start += len;
    }
  }
}

// One item: kv heads [h0, h0+nh) of one source over a token range (all heads in decode, so K and V
// stream through memory in address order: [token][kv head][dim]); rows are ordered head-major,
// rows_per_head per kv head. K and V below point at head h0, so item-local head h is at
// (slot * H + h) * D.
template <typename T>
void run_item(Work& w, const Item& it, std::vector<float>& scratch) {
  const kvx_params& p = *w.p;
  const int D = p.head_dim, H = p.kv_heads, NH = it.nh, R = it.nrows, RH = R / NH, bs = p.block_size;
  const T* K = static_cast<const T*>(w.k) + size_t(it.h0) * D;
  const T* V = static_cast<const T*>(w.v) + size_t(it.h0) * D;
  scratch.resize(size_t(R) * D + size_t(R) * TILE + size_t(NH > TILE ? NH : TILE) * D + 2 * R);
  float* qs = scratch.data();            // [R, D] queries prescaled by sm_scale * k_scale
  float* sc = qs + size_t(R) * D;        // [R, TILE] scores, then probabilities
  float* cb = sc + size_t(R) * TILE;     // [max(NH, TILE), D] K rows of a token / V rows of a tile
  float* slope = cb + size_t(NH > TILE ? NH : TILE) * D;  // [R]
  float* qpos = slope + R;               // [R]
  for (int r = 0; r < R; ++r) {
    const Row& row = w.rows[it.row0 + r];
    const float ks = p.k_scale ? p.k_scale[it.h0 + r / RH] : 1.f;
    const float* qr = w.q + (size_t(row.seq) * p.q_heads + row.qhead) * D;
    for (int d = 0; d < D; ++d) qs[size_t(r) * D + d] = qr[d] * p.sm_scale * ks;
    slope[r] = p.alibi ? p.alibi[row.qhead] : 0.f;
    qpos[r] = float(row.qpos);
    w.parts[it.row0 + r] = {-INFINITY, 0.f};
    std::fill_n(&w.acc[size_t(it.row0 + r) * D], D, 0.f);
  }
  const float ninf = -INFINITY;
  for_runs(it.src, bs, it.lo, it.hi, [&](int64_t slot0, int t0, int n) {
    for (int j0 = 0; j0 < n; j0 += TILE) {
      const int nt = n - j0 < TILE ? n - j0 : TILE;
      for (int j = 0; j < nt; ++j) {
        const T* krow = K + (slot0 + j0 + j) * H * D;
        for (int h = 0; h < NH; ++h) {
          const float* kr = to_float(krow + size_t(h) * D, cb + size_t(h) * D, D);
          for (int r = h * RH; r < (h + 1) * RH; ++r) sc[r * TILE + j] = dot(qs + size_t(r) * D, kr, D);
        }
      }
      const float pos0 = float(it.src.loffset + t0 + j0);
      for (int r = 0; r < R; ++r) {
        float* s = sc + r * TILE;
        float tmax = ninf;
        for (int j = 0; j < nt; ++j) {
          const float rel = pos0 + j - qpos[r];  // <= 0
          float x = s[j] + slope[r] * rel;
          if (p.window > 0 && rel <= -p.window) x = ninf;
          s[j] = x;
          tmax = x > tmax ? x : tmax;  // NaN never wins here, but poisons exp() below
        }
        Partial& pa = w.parts[it.row0 + r];
        float* acc = &w.acc[size_t(it.row0 + r) * D];
        if (tmax == ninf) {  // every key of this tile masked for this row
          for (int j = 0; j < nt; ++j) s[j] = std::isnan(s[j]) ? s[j] : 0.f;
          continue;
        }
        const float mnew = tmax > pa.m ? tmax : pa.m;
        const float corr = fast_exp(pa.m - mnew);
        float l = 0.f;
        if (corr != 1.f) {
#pragma omp simd
          for (int d = 0; d < D; ++d) acc[d] *= corr;
        }
#pragma omp simd reduction(+ : l)
        for (int j = 0; j < nt; ++j) {
          s[j] = fast_exp(s[j] - mnew);
          l += s[j];
        }
        pa = {mnew, pa.l * corr + l};
      }
      if (D % 16 == 0) {
        // PV, head by head: the tile's V rows as float (converted once, or read in place for
        // f32), then each 16-dim slice of an accumulator stays in registers across the tile's
        // tokens (a per-token read-modify-write of acc chained every token through memory)
        float* vb = sc + size_t(R) * TILE;  // reuses the converted-K buffer: [TILE, D]
        for (int h = 0; h < NH; ++h) {
          const float* vt;
          size_t vstride;
          if constexpr (sizeof(T) == 4) {
            vt = reinterpret_cast<const float*>(V) + ((slot0 + j0) * H + h) * D;
            vstride = size_t(H) * D;
          } else {
            for (int j = 0; j < nt; ++j) to_float(V + ((slot0 + j0 + j) * H + h) * D, vb + size_t(j) * D, D);
            vt = vb;
            vstride = D;
          }
          for (int r = h * RH; r < (h + 1) * RH; ++r) {
            const float* pr = sc + r * TILE;
            float* acc = &w.acc[size_t(it.row0 + r) * D];
            for (int d0 = 0; d0 < D; d0 += 16) {
              float av[16];
#pragma omp simd
              for (int i = 0; i < 16; ++i) av[i] = acc[d0 + i];
              for (int j = 0; j < nt; ++j) {
                const float pj = pr[j];
                const float* vj = vt + j * vstride + d0;
#pragma omp simd
                for (int i = 0; i < 16; ++i) av[i] += pj * vj[i];
              }
#pragma omp simd
              for (int i = 0; i < 16; ++i) acc[d0 + i] = av[i];
            }
          }
        }
        continue;
      }
      for (int j = 0; j < nt; ++j) {
        const T* vrow = V + (slot0 + j0 + j) * H * D;
        for (int h = 0; h < NH; ++h) {
          const float* vr = to_float(vrow + size_t(h) * D, cb + size_t(h) * D, D);
          for (int r = h * RH; r < (h + 1) * RH; ++r) {
            const float pj = sc[r * TILE + j];
            float* acc = &w.acc[size_t(it.row0 + r) * D];
#pragma omp simd
            for (int d = 0; d < D; ++d) acc[d] += pj * vr[d];
          }
        }
      }
    }
  });
}


#include "cpu_simd.h"  // the vector path, where the ISA has one

template <typename T>
void run_all(Work& w) {
  const int n = int(w.items.size());
  const int threads = w.p->num_threads;
#pragma omp parallel num_threads(threads > 0 ? threads : omp_default_threads())
  {
    std::vector<float> scratch;
#pragma omp for schedule(dynamic, 1)
    for (int i = 0; i < n; ++i) {
#ifdef KVX_SIMD
      if constexpr (sizeof(T) == 2) {
        if (w.p->head_dim % (2 * W) == 0) {
          run_item_simd<true, T>(w, w.items[i], scratch);
          continue;
        }
      }
      if (w.p->head_dim % W == 0) {
        run_item_simd<false, T>(w, w.items[i], scratch);
        continue;
      }
#endif
      run_item<T>(w, w.items[i], scratch);
    }
  }
}
}  // namespace

void run_items(Work& w) {
  switch (w.p->kv_dtype) {
    case KVX_F32: run_all<float>(w); break;
    case KVX_BF16: run_all<uint16_t>(w); break;
    default: run_all<uint8_t>(w); break;
  }
}
}  // namespace KVX_NS
