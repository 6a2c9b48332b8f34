// Work description shared by the CPU entry points and the per-ISA kernel builds.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "kvx.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace kvx {

#ifdef _OPENMP
inline int omp_default_threads() { return omp_get_max_threads(); }
#else
inline int omp_default_threads() { return 1; }
#endif

// Where a run of source tokens lives. Source-relative token t of a sequence is found by:
//   PAGED:  slot = table[t / bs] * bs + t % bs      (one lookup per block)
//   SPANS:  walk (span_block, span_len) runs         (one lookup per physically contiguous run)
//   CONTIG: slot = base + t
enum SourceKind { PAGED = 0, SPANS = 1, CONTIG = 2 };

struct Source {
  int kind = CONTIG;
  const int32_t* table = nullptr;
  const int32_t* sblk = nullptr;
  const int32_t* slen = nullptr;
  int32_t nspans = 0;
  int64_t base = 0;
  int32_t loffset = 0;  // logical position of source token 0 (a hybrid suffix starts after the prefix)
};

struct Row {      // one query head of one sequence
  int32_t seq, qhead, qpos;
};

struct Item {     // rows of kv heads [h0, h0+nh) (head-major, equal count per head), over source tokens [lo, hi)
  Source src;
  int32_t lo, hi;
  int32_t row0, nrows;  // rows[row0 .. row0+nrows), partials at the same indices
  int32_t h0, nh;
};

struct Partial {  // unnormalized: out = acc / l, lse = m + log l
  float m, l;
};

struct Work {
  const kvx_params* p;
  const float* q;
  const void* k;
  const void* v;
  std::vector<Item> items;
  std::vector<Row> rows;
  std::unique_ptr<Partial[]> parts;  // one per row entry
  std::unique_ptr<float[]> acc;      // [rows.size(), head_dim]
};

using RunItemsFn = void (*)(Work&);

}  // namespace kvx

namespace kvx_generic { void run_items(kvx::Work&); }
namespace kvx_avx2 { void run_items(kvx::Work&); }
namespace kvx_avx512 { void run_items(kvx::Work&); }
