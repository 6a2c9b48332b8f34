// Issue 18, goal 3: can the bulk copy engine read a batch-1 K/V faster than kvx's read floor (many warps of
// 16-byte loads)? If it can, a kernel fed by it could afford its math and merge inside the goal; if not, the
// floor, not the kernels, bounds the goal. One thread per CTA issues cp.async.bulk copies of CHUNK bytes of K
// and of V (the same token range) into a ring of STAGES shared-memory slots, each completing on an mbarrier.
// Built and timed by kvlab/gpu/bulk_floor.py (nvcc -arch=sm_90 -shared).
#include <cstdint>
#include <cuda_runtime.h>

namespace {
__device__ __forceinline__ uint32_t sa(const void* p) { return static_cast<uint32_t>(__cvta_generic_to_shared(p)); }

__device__ __forceinline__ void bar_init(uint64_t* b) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(sa(b)));
  asm volatile("fence.proxy.async.shared::cta;" ::: "memory");  // the copy engine sees the initialised barrier
}

__device__ __forceinline__ void bar_expect(uint64_t* b, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(sa(b)), "r"(bytes) : "memory");
}

__device__ __forceinline__ void bulk(void* dst, const void* src, uint32_t bytes, uint64_t* b) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
               ::"r"(sa(dst)), "l"(src), "r"(bytes), "r"(sa(b)) : "memory");
}

__device__ __forceinline__ void bar_wait(uint64_t* b, uint32_t parity) {
  asm volatile(
      "{\n .reg .pred p;\n W: mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n @!p bra W;\n}\n"
      ::"r"(sa(b)), "r"(parity) : "memory");
}

// unit u = chunk u of K and chunk u of V; CTA c takes units [c n / N, (c + 1) n / N) or, interleaved, c, c + N, ..
__global__ void bulk_floor_kernel(const char* k, const char* v, long units, int chunk, int stages, int interleave,
                                  unsigned* sink) {
  extern __shared__ __align__(128) char smem[];
  __shared__ uint64_t bars[16];
  if (threadIdx.x != 0) return;
  const long N = gridDim.x, c = blockIdx.x;
  const long u0 = interleave ? c : c * units / N, u1 = interleave ? units : (c + 1) * units / N;
  const long step = interleave ? N : 1, mine = u1 > u0 ? (u1 - u0 + step - 1) / step : 0;
  for (int s = 0; s < stages; ++s) bar_init(&bars[s]);
  auto issue = [&](long j) {
    const int s = int(j % stages);
    const long u = u0 + j * step;
    char* dst = smem + size_t(s) * 2 * chunk;
    bar_expect(&bars[s], 2u * chunk);
    bulk(dst, k + u * chunk, chunk, &bars[s]);
    bulk(dst + chunk, v + u * chunk, chunk, &bars[s]);
  };
  for (long j = 0; j < stages && j < mine; ++j) issue(j);
  for (long j = 0; j < mine; ++j) {
    bar_wait(&bars[j % stages], uint32_t((j / stages) & 1));
    if (j + stages < mine) issue(j + stages);
  }
  sink[c] = mine ? *reinterpret_cast<const unsigned*>(smem) : 0u;
}
}  // namespace

extern "C" int bulk_floor(const void* k, const void* v, long bytes_each, int chunk, int stages, int ctas,
                          int interleave, unsigned* sink, void* stream) {
  if (chunk % 16 || bytes_each % chunk || stages < 1 || stages > 16) return 1;
  const int smem = 2 * chunk * stages;
  if (cudaFuncSetAttribute(bulk_floor_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem) != cudaSuccess)
    return 2;
  bulk_floor_kernel<<<ctas, 32, smem, static_cast<cudaStream_t>(stream)>>>(
      static_cast<const char*>(k), static_cast<const char*>(v), bytes_each / chunk, chunk, stages, interleave, sink);
  return cudaGetLastError() == cudaSuccess ? 0 : 3;
}
