// The CPU inner loop, compiled once per vector ISA (KVX_NS names the build); cpu_api.cpp picks one
// at run time, so one wheel runs everywhere and still uses AVX2/AVX-512 where present.
#include <cmath>
#include <cstring>
#include <limits>

#include "cpu_core.h"

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

inline float dot(const float* a, const float* b, int D) {
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int d = 0; d < D; ++d) s += a[d] * b[d];
  return s;
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

template <typename T>
void run_item(Work& w, const Item& it, std::vector<float>& scratch) {
  const kvx_params& p = *w.p;
  const int D = p.head_dim, H = p.kv_heads, R = it.nrows, bs = p.block_size;
  const T* K = static_cast<const T*>(w.k);
  const T* V = static_cast<const T*>(w.v);
  const float ks = p.k_scale ? p.k_scale[it.kvh] : 1.f;
  scratch.resize(size_t(R) * D + size_t(R) * TILE + 2 * size_t(TILE) * D + 2 * R);
  float* qs = scratch.data();            // [R, D] queries prescaled by sm_scale * k_scale
  float* sc = qs + size_t(R) * D;        // [R, TILE] scores, then probabilities
  float* kb = sc + size_t(R) * TILE;     // [TILE, D] converted K rows
  float* vb = kb + size_t(TILE) * D;     // [D] converted V row
  float* slope = vb + size_t(TILE) * D;  // [R]
  float* qpos = slope + R;               // [R]
  for (int r = 0; r < R; ++r) {
    const Row& row = w.rows[it.row0 + r];
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
        const float* kr = to_float(K + ((slot0 + j0 + j) * H + it.kvh) * D, kb + size_t(j) * D, D);
        for (int r = 0; r < R; ++r) sc[r * TILE + j] = dot(qs + size_t(r) * D, kr, D);
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
        const float corr = std::exp(pa.m - mnew);
        float l = pa.l * corr;
        if (corr != 1.f) {
#pragma omp simd
          for (int d = 0; d < D; ++d) acc[d] *= corr;
        }
        for (int j = 0; j < nt; ++j) {
          s[j] = std::exp(s[j] - mnew);
          l += s[j];
        }
        pa = {mnew, l};
      }
      for (int j = 0; j < nt; ++j) {
        const float* vr = to_float(V + ((slot0 + j0 + j) * H + it.kvh) * D, vb, D);
        for (int r = 0; r < R; ++r) {
          const float pj = sc[r * TILE + j];
          float* acc = &w.acc[size_t(it.row0 + r) * D];
#pragma omp simd
          for (int d = 0; d < D; ++d) acc[d] += pj * vr[d];
        }
      }
    }
  });
}

template <typename T>
void run_all(Work& w) {
  const int n = int(w.items.size());
  const int threads = w.p->num_threads;
#pragma omp parallel num_threads(threads > 0 ? threads : omp_default_threads())
  {
    std::vector<float> scratch;
#pragma omp for schedule(dynamic, 1)
    for (int i = 0; i < n; ++i) run_item<T>(w, w.items[i], scratch);
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
