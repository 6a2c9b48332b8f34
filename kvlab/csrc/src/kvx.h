/* kvx: decode attention over a KV cache addressed by a paged block table, compact spans, a
 * contiguous range, or a shared prefix + per-sequence suffixes (log-sum-exp merge).
 * A plain C ABI (loaded with ctypes), so the library is independent of the Python version and
 * the CUDA build takes device pointers from any framework. Same entry points on CPU (kvx_*) and
 * GPU (kvx_cuda_*). Semantics are kvlab/reference.py's; all int arrays are int32. */
#ifndef KVX_H
#define KVX_H
#include <stddef.h>
#include <stdint.h>
#ifdef __cplusplus
extern "C" {
#endif

enum { KVX_F32 = 0, KVX_BF16 = 1, KVX_FP8E4M3 = 2 };

typedef struct {
  int32_t num_seqs, q_heads, kv_heads, head_dim, block_size;
  int32_t kv_dtype;      /* KVX_F32 / KVX_BF16 (raw uint16) / KVX_FP8E4M3 (raw uint8) */
  int32_t window;        /* 0: none; else keys with qpos - pos >= window are masked */
  int32_t num_threads;   /* CPU threads, 0 = OpenMP default; ignored on GPU */
  int32_t num_splits;    /* split-KV chunks per sequence, 0 = choose */
  int32_t max_seq_len;   /* host-side hints the GPU launch needs (metadata lives on the device); */
  int32_t max_group;     /* the CPU ignores them. max_group: most sequences in one hybrid group */
  float sm_scale;
  const float* alibi;    /* [q_heads] slopes or NULL */
  const float* k_scale;  /* [kv_heads] dequant scales or NULL (= 1) */
  const float* v_scale;
  void* stream;          /* CUDA: the cudaStream_t to launch on (NULL = default stream); CPU ignores */
  int32_t max_prefix_len; /* host-side hint for hybrid: the longest shared prefix of any group; 0 (nothing
                             shared) runs the suffixes as spans in one pass; -1 = unknown. CPU ignores it */
} kvx_params;

/* Cache K, V: [num_blocks, block_size, kv_heads, head_dim]. q, out: float32 [num_seqs, q_heads,
 * head_dim]; lse: float32 [num_seqs, q_heads] or NULL. Return 0, or nonzero with kvx_last_error(). */
int kvx_paged(const kvx_params* p, const float* q, const void* k, const void* v,
              const int32_t* block_table, int32_t max_blocks, const int32_t* seq_lens, float* out, float* lse);
int kvx_spans(const kvx_params* p, const float* q, const void* k, const void* v, const int32_t* span_ptr,
              const int32_t* span_block, const int32_t* span_len, const int32_t* seq_lens, float* out, float* lse);
/* K, V: [num_seqs, stride_tokens, kv_heads, head_dim]: sequence b's token t at b*stride_tokens + t. */
int kvx_contiguous(const kvx_params* p, const float* q, const void* k, const void* v, int32_t stride_tokens,
                   const int32_t* seq_lens, float* out, float* lse);
int kvx_hybrid(const kvx_params* p, const float* q, const void* k, const void* v, int32_t num_groups,
               const int32_t* group_of_seq, const int32_t* group_ptr, const int32_t* group_members, const int32_t* prefix_len, const int32_t* pre_ptr,
               const int32_t* pre_block, const int32_t* pre_len, const int32_t* suf_ptr, const int32_t* suf_block,
               const int32_t* suf_len, const int32_t* seq_lens, float* out, float* lse);
/* Measured copy bandwidth (bytes read + written per second), median of reps, across threads. */
double kvx_copy_bandwidth(size_t bytes, int32_t reps, int32_t threads);
const char* kvx_last_error(void);
const char* kvx_isa(void);  /* which vector build the dispatcher picked */

int kvx_cuda_paged(const kvx_params* p, const float* q, const void* k, const void* v,
                   const int32_t* block_table, int32_t max_blocks, const int32_t* seq_lens, float* out, float* lse);
int kvx_cuda_spans(const kvx_params* p, const float* q, const void* k, const void* v, const int32_t* span_ptr,
                   const int32_t* span_block, const int32_t* span_len, const int32_t* seq_lens, float* out, float* lse);
int kvx_cuda_contiguous(const kvx_params* p, const float* q, const void* k, const void* v, int32_t stride_tokens,
                        const int32_t* seq_lens, float* out, float* lse);
int kvx_cuda_hybrid(const kvx_params* p, const float* q, const void* k, const void* v, int32_t num_groups,
                    const int32_t* group_of_seq, const int32_t* group_ptr, const int32_t* group_members, const int32_t* prefix_len, const int32_t* pre_ptr,
                    const int32_t* pre_block, const int32_t* pre_len, const int32_t* suf_ptr, const int32_t* suf_block,
                    const int32_t* suf_len, const int32_t* seq_lens, float* out, float* lse);
const char* kvx_cuda_last_error(void);
/* A reference, not attention: read a_bytes at a and b_bytes at b once (16-byte loads; sizes multiples of
 * 16) with ctas_per_sm (1-8) x SMs CTAs of 256 threads, one word per CTA to sink; l2_hint: ask L2 for
 * whole 256-byte lines. What a kernel that only reads the same K/V once takes. */
int kvx_cuda_read_floor(const void* a, size_t a_bytes, const void* b, size_t b_bytes, unsigned* sink, void* stream,
                        int32_t ctas_per_sm, int32_t l2_hint);

#ifdef __cplusplus
}
#endif
#endif
