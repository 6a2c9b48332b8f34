// CPU entry points: turn each layout's metadata into work items (rows × kv-head range × token range),
// run them in parallel through the best vector build, then merge split partials by log-sum-exp.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "cpu_core.h"

using namespace kvx;

namespace {
thread_local std::string g_error;

int fail(const std::string& msg) {
  g_error = msg;
  return 1;
}

const char* g_isa = "generic";

RunItemsFn pick_isa() {
  const char* force = std::getenv("KVX_ISA");
  std::string f = force ? force : "";
#if defined(KVX_HAVE_AVX512)
  if ((f.empty() || f == "avx512") && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl")) {
    g_isa = "avx512";
    return kvx_avx512::run_items;
  }
#endif
#if defined(KVX_HAVE_AVX2)
  if ((f.empty() || f == "avx2" || f == "avx512") && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    g_isa = "avx2";
    return kvx_avx2::run_items;
  }
#endif
  g_isa = "generic";
  return kvx_generic::run_items;
}

RunItemsFn run_items() {
  static RunItemsFn fn = pick_isa();
  return fn;
}

int check(const kvx_params* p) {
  if (!p) return fail("params is NULL");
  if (p->num_seqs <= 0 || p->q_heads <= 0 || p->kv_heads <= 0 || p->head_dim <= 0 || p->block_size <= 0)
    return fail("num_seqs, heads, head_dim and block_size must be positive");
  if (p->q_heads % p->kv_heads) return fail("q_heads must be a multiple of kv_heads");
  if (p->kv_dtype < KVX_F32 || p->kv_dtype > KVX_FP8E4M3) return fail("kv_dtype must be 0 (f32), 1 (bf16) or 2 (fp8)");
  return 0;
}

int threads_of(const kvx_params* p) { return p->num_threads > 0 ? p->num_threads : omp_default_threads(); }

int choose_splits(const kvx_params* p, int base_items, int tokens) {
  if (p->num_splits > 0) return p->num_splits;
  // >= 4 items per thread: whole items are scheduled dynamically, so finer ones even out a thread
  // that runs slower (a busy core); the extra partials cost one merge of [rows, head_dim] each
  const int want = (4 * threads_of(p) + base_items - 1) / base_items;
  return std::max(1, std::min(want, (tokens + 255) / 256));           // but chunks of >= 256 tokens
}

// kv heads per item: as many as keep an item's fp32 accumulators within 64 KB (its prescaled
// queries take as much again; every tile sweeps both), a divisor of kv_heads so every item has the
// same rows per head. Decode (a GQA group's few rows per head: 16 KB for 32 query heads, d 128)
// keeps every head in one item, K/V read in address order. A hybrid prefix carries every member's
// rows (16 members x 32 query heads: 256 KB) and is cut by heads, which reads nothing twice and
// gives a group more items with fewer token splits, so fewer partials to merge. One head per item
// measured slower on a 2-core Zen 4 (8 members sharing 32k tokens: 44-51 vs 33-36 ms with 4 heads).
// KVX_ITEM_ACC_KB replaces the 64 (a benchmark knob: compare cuts on another host without a rebuild).
int heads_per_item(const kvx_params* p, int rows_per_head) {
  static const int64_t budget = (std::getenv("KVX_ITEM_ACC_KB") ? std::atoll(std::getenv("KVX_ITEM_ACC_KB")) : 64) << 10;
  const int64_t per_head = int64_t(rows_per_head) * p->head_dim * int64_t(sizeof(float));
  int n = int(std::clamp<int64_t>(budget / per_head, 1, p->kv_heads));
  while (p->kv_heads % n) --n;
  return n;
}

// Add items for `rows` (every kv head's, head-major, an equal count per head) over source tokens
// [lo, hi), one of `sources` such sources: token chunks, each cut into kv-head ranges (chunk-major,
// so items that run at the same time read the same tokens).
void add_items(Work& w, const Source& src, int lo, int hi, const std::vector<Row>& rows, int sources) {
  if (lo >= hi) return;
  const kvx_params* p = w.p;
  const int rh = int(rows.size()) / p->kv_heads, nh = heads_per_item(p, rh);
  const int splits = choose_splits(p, sources * (p->kv_heads / nh), hi - lo);
  const int n = hi - lo, chunk = (n + splits - 1) / splits;
  for (int a = lo; a < hi; a += chunk)
    for (int h0 = 0; h0 < p->kv_heads; h0 += nh) {
      w.items.push_back({src, a, std::min(hi, a + chunk), int32_t(w.rows.size()), nh * rh, h0, nh});
      w.rows.insert(w.rows.end(), rows.begin() + h0 * rh, rows.begin() + (h0 + nh) * rh);
    }
}

std::vector<Row> seq_rows(const kvx_params* p, int b, int qpos) {  // q heads are head-major already
  std::vector<Row> r;
  for (int h = 0; h < p->q_heads; ++h) r.push_back({b, h, qpos});
  return r;
}

int window_lo(const kvx_params* p, int qpos, int loffset) {  // first unmasked source token
  return p->window > 0 ? std::max(0, qpos - p->window + 1 - loffset) : 0;
}

int finish(Work& w, float* out, float* lse) {
  const kvx_params* p = w.p;
  // Left uninitialized: each row's item sets its partial and accumulator. Split partials add up
  // (a hybrid at 16 threads: 16k rows, 8 MB), and zeroing them and merging them on one thread took
  // 3.3 ms against 19.6 ms of kernel time over all threads (2-core box, 16 threads oversubscribed).
  w.parts.reset(new Partial[w.rows.size()]);
  w.acc.reset(new float[w.rows.size() * size_t(p->head_dim)]);
  run_items()(w);
  const int D = p->head_dim, NQ = p->num_seqs * p->q_heads;
  std::vector<std::vector<int>> by(NQ);
  for (size_t i = 0; i < w.rows.size(); ++i) by[size_t(w.rows[i].seq) * p->q_heads + w.rows[i].qhead].push_back(int(i));
#pragma omp parallel for num_threads(threads_of(p))
  for (int o = 0; o < NQ; ++o) {
    float M = -INFINITY;
    bool nan = false;
    for (int i : by[o]) {
      M = std::max(M, w.parts[i].m);
      nan |= std::isnan(w.parts[i].l);
    }
    float L = 0.f;
    float* dst = out + size_t(o) * D;
    std::fill_n(dst, D, 0.f);
    for (int i : by[o]) {
      if (w.parts[i].m == -INFINITY) continue;
      const float c = std::exp(w.parts[i].m - M);
      L += w.parts[i].l * c;
      const float* a = &w.acc[size_t(i) * D];
      for (int d = 0; d < D; ++d) dst[d] += a[d] * c;
    }
    const float vs = p->v_scale ? p->v_scale[(o % p->q_heads) / (p->q_heads / p->kv_heads)] : 1.f;
    const float inv = L > 0.f ? vs / L : 0.f;
    for (int d = 0; d < D; ++d) dst[d] = nan ? NAN : dst[d] * inv;
    if (lse) lse[o] = nan ? NAN : (L > 0.f ? M + std::log(L) : -INFINITY);
  }
  return 0;
}
}  // namespace

extern "C" {

const char* kvx_last_error(void) { return g_error.c_str(); }

const char* kvx_isa(void) {
  run_items();
  return g_isa;
}

int kvx_paged(const kvx_params* p, const float* q, const void* k, const void* v, const int32_t* block_table,
              int32_t max_blocks, const int32_t* seq_lens, float* out, float* lse) {
  if (check(p)) return 1;
  Work w{p, q, k, v, {}, {}, {}, {}};
  for (int b = 0; b < p->num_seqs; ++b) {
    const int L = seq_lens[b];
    if (L <= 0 || (L + p->block_size - 1) / p->block_size > max_blocks) return fail("seq_lens exceed the block table");
    Source s;
    s.kind = PAGED;
    s.table = block_table + size_t(b) * max_blocks;
    const int lo = window_lo(p, L - 1, 0);
    add_items(w, s, lo, L, seq_rows(p, b, L - 1), p->num_seqs);
  }
  return finish(w, out, lse);
}

int kvx_spans(const kvx_params* p, const float* q, const void* k, const void* v, const int32_t* span_ptr,
              const int32_t* span_block, const int32_t* span_len, const int32_t* seq_lens, float* out, float* lse) {
  if (check(p)) return 1;
  Work w{p, q, k, v, {}, {}, {}, {}};
  for (int b = 0; b < p->num_seqs; ++b) {
    const int L = seq_lens[b];
    if (L <= 0) return fail("seq_lens must be positive");
    Source s;
    s.kind = SPANS;
    s.sblk = span_block + span_ptr[b];
    s.slen = span_len + span_ptr[b];
    s.nspans = span_ptr[b + 1] - span_ptr[b];
    const int lo = window_lo(p, L - 1, 0);
    add_items(w, s, lo, L, seq_rows(p, b, L - 1), p->num_seqs);
  }
  return finish(w, out, lse);
}

int kvx_contiguous(const kvx_params* p, const float* q, const void* k, const void* v, int32_t stride_tokens,
                   const int32_t* seq_lens, float* out, float* lse) {
  if (check(p)) return 1;
  Work w{p, q, k, v, {}, {}, {}, {}};
  for (int b = 0; b < p->num_seqs; ++b) {
    const int L = seq_lens[b];
    if (L <= 0 || L > stride_tokens) return fail("seq_lens must be in 1..stride_tokens");
    Source s;
    s.kind = CONTIG;
    s.base = int64_t(b) * stride_tokens;
    const int lo = window_lo(p, L - 1, 0);
    add_items(w, s, lo, L, seq_rows(p, b, L - 1), p->num_seqs);
  }
  return finish(w, out, lse);
}

int kvx_hybrid(const kvx_params* p, const float* q, const void* k, const void* v, int32_t num_groups,
               const int32_t* group_of_seq, const int32_t* group_ptr, const int32_t* group_members,
               const int32_t* prefix_len, const int32_t* pre_ptr, const int32_t* pre_block, const int32_t* pre_len,
               const int32_t* suf_ptr, const int32_t* suf_block, const int32_t* suf_len, const int32_t* seq_lens,
               float* out, float* lse) {
  if (check(p)) return 1;
  Work w{p, q, k, v, {}, {}, {}, {}};
  const int G = p->q_heads / p->kv_heads;
  // shared prefixes: every member's query heads ride on one pass over the prefix's K/V
  for (int g = 0; g < num_groups; ++g) {
    const int P = prefix_len[g];
    if (P <= 0) continue;
    Source s;
    s.kind = SPANS;
    s.sblk = pre_block + pre_ptr[g];
    s.slen = pre_len + pre_ptr[g];
    s.nspans = pre_ptr[g + 1] - pre_ptr[g];
    int lo = P;
    for (int i = group_ptr[g]; i < group_ptr[g + 1]; ++i) lo = std::min(lo, window_lo(p, seq_lens[group_members[i]] - 1, 0));
    std::vector<Row> rows;  // head-major: each kv head's rows are every member's query heads on it
    for (int h = 0; h < p->kv_heads; ++h)
      for (int i = group_ptr[g]; i < group_ptr[g + 1]; ++i) {
        const int b = group_members[i];
        for (int j = 0; j < G; ++j) rows.push_back({b, h * G + j, seq_lens[b] - 1});
      }
    add_items(w, s, lo, P, rows, num_groups);
  }
  for (int b = 0; b < p->num_seqs; ++b) {
    const int L = seq_lens[b], P = prefix_len[group_of_seq[b]];
    if (L <= P) continue;
    Source s;
    s.kind = SPANS;
    s.sblk = suf_block + suf_ptr[b];
    s.slen = suf_len + suf_ptr[b];
    s.nspans = suf_ptr[b + 1] - suf_ptr[b];
    s.loffset = P;
    const int lo = window_lo(p, L - 1, P);
    add_items(w, s, lo, L - P, seq_rows(p, b, L - 1), p->num_seqs);
  }
  return finish(w, out, lse);
}

double kvx_copy_bandwidth(size_t bytes, int32_t reps, int32_t threads) {
  const int T = threads > 0 ? threads : omp_default_threads();
  // On transparent huge pages where the kernel offers them (madvise), as numpy's large arrays are
  // (it madvises them), so the baseline copies on the same page size the K/V caches are read from:
  // measured on a 2-core Zen 4 VM, 4 KiB pages copy at ~35 GB/s, huge pages at ~41 GB/s.
  const size_t huge = size_t(2) << 20, alloc = (bytes + huge - 1) / huge * huge;
  char* src = static_cast<char*>(std::aligned_alloc(huge, alloc));
  char* dst = static_cast<char*>(std::aligned_alloc(huge, alloc));
#ifdef MADV_HUGEPAGE
  if (src) madvise(src, alloc, MADV_HUGEPAGE);
  if (dst) madvise(dst, alloc, MADV_HUGEPAGE);
#endif
  if (!src || !dst) {
    std::free(src);
    std::free(dst);
    return 0.0;
  }
  auto copy = [&](bool fill) {
#pragma omp parallel num_threads(T)
    {
#ifdef _OPENMP
      const int t = omp_get_thread_num(), n = omp_get_num_threads();
#else
      const int t = 0, n = 1;
#endif
      const size_t a = bytes * t / n, b = bytes * (t + 1) / n;
      if (fill) {
        std::memset(src + a, t + 1, b - a);  // first touch by the thread that copies it later
        std::memset(dst + a, 0, b - a);
      } else {
        std::memcpy(dst + a, src + a, b - a);
      }
    }
  };
  copy(true);
  std::vector<double> ts;
  for (int r = 0; r < std::max(1, reps); ++r) {
    auto t0 = std::chrono::steady_clock::now();
    copy(false);
    ts.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::free(src);
  std::free(dst);
  std::sort(ts.begin(), ts.end());
  return 2.0 * double(bytes) / ts[ts.size() / 2];
}
}
