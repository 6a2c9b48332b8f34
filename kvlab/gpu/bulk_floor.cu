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

// The same bytes by plain 16-byte loads, UNROLL independent loads in flight per thread, each CTA streaming
// its own contiguous range of K then V: does kvx's floor need 64 warps per SM, or only as many bytes in flight?
template <int UNROLL>
__global__ void ld_floor_kernel(const uint4* k, const uint4* v, long n16, unsigned* sink) {
  const long N = gridDim.x, c = blockIdx.x, lo = c * n16 / N, hi = (c + 1) * n16 / N;
  unsigned x = 0;
  for (int part = 0; part < 2; ++part) {
    const uint4* p = part ? v : k;
    long i = lo + threadIdx.x;
    for (; i + long(UNROLL - 1) * blockDim.x < hi; i += long(UNROLL) * blockDim.x) {
      uint4 r[UNROLL];
#pragma unroll
      for (int u = 0; u < UNROLL; ++u) r[u] = __ldcs(p + i + long(u) * blockDim.x);
#pragma unroll
      for (int u = 0; u < UNROLL; ++u) x ^= r[u].x ^ r[u].w;
    }
    for (; i < hi; i += blockDim.x) x ^= __ldcs(p + i).y;
  }
  if (x == 0x9e3779b9u) sink[c] = x;  // keeps the loads; almost never stores
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

extern "C" int ld_floor(const void* k, const void* v, long bytes_each, int ctas, int threads, int unroll, unsigned* sink,
                        void* stream) {
  if (bytes_each % 16) return 1;
  const auto st = static_cast<cudaStream_t>(stream);
  const auto K = static_cast<const uint4*>(k), V = static_cast<const uint4*>(v);
  const long n = bytes_each / 16;
  switch (unroll) {
    case 4: ld_floor_kernel<4><<<ctas, threads, 0, st>>>(K, V, n, sink); break;
    case 8: ld_floor_kernel<8><<<ctas, threads, 0, st>>>(K, V, n, sink); break;
    case 16: ld_floor_kernel<16><<<ctas, threads, 0, st>>>(K, V, n, sink); break;
    case 32: ld_floor_kernel<32><<<ctas, threads, 0, st>>>(K, V, n, sink); break;
    default: return 1;
  }
  return cudaGetLastError() == cudaSuccess ? 0 : 3;
}

// resident CTAs per SM of ld_floor_kernel<unroll> at this block size (the name of a shape states what ran)
extern "C" int ld_floor_resident(int threads, int unroll) {
  int n = 0;
  const void* f = unroll == 4    ? reinterpret_cast<const void*>(ld_floor_kernel<4>)
                  : unroll == 8  ? reinterpret_cast<const void*>(ld_floor_kernel<8>)
                  : unroll == 16 ? reinterpret_cast<const void*>(ld_floor_kernel<16>)
                                 : reinterpret_cast<const void*>(ld_floor_kernel<32>);
  return cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, f, threads, 0) == cudaSuccess ? n : -1;
}
