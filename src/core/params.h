// The one parameter struct that flows from validation (src/core/validate.cpp) to every backend.
// Plain data: raw pointers, 64-bit element strides, sizes and derived scalars, filled once on the
// host and passed by value to GPU kernels. Nothing here owns memory.
#pragma once

#include <cstdint>

#include "ioattn/ioattn.h"

namespace ioattn {

struct Params {
  DType dtype;            // of q, k, v, out, dout, dq, dk, dv
  DeviceType device;
  int device_index;

  // Problem sizes. In varlen mode `batch` is the number of sequences and seqlen_q/k are the
  // maxima (args.max_seqlen_*); the per-sequence lengths come from cu_seqlens_*.
  int batch, heads_q, heads_k, head_dim, head_dim_v;
  int seqlen_q, seqlen_k;
  int group;              // heads_q / heads_k: query head h reads kv head h / group
  bool varlen;
  const int32_t* cu_seqlens_q;  // (batch + 1) or nullptr (dense)
  const int32_t* cu_seqlens_k;
  // Varlen: rows of q and of k/v (q.shape[0], k.shape[0]); GPU kernels clamp every index read from
  // cu_seqlens to these, since under stream capture the prefix sums cannot be checked on the host.
  int total_q, total_k;

  // Tensors. Strides in elements; the last dimension is contiguous (stride 1). In varlen mode the
  // batch stride is 0 and the row index is cu_seqlens[b] + i.
  const void* q; int64_t q_batch_stride, q_row_stride, q_head_stride;
  const void* k; int64_t k_batch_stride, k_row_stride, k_head_stride;
  const void* v; int64_t v_batch_stride, v_row_stride, v_head_stride;
  void* out;     int64_t o_batch_stride, o_row_stride, o_head_stride;
  // LSE fp32: dense (B, Hq, Sq) / varlen (Hq, Tq), contiguous. nullptr in forward = not wanted.
  float* lse;    int64_t lse_batch_stride, lse_head_stride;  // lse row stride is 1

  // Backward only (nullptr in forward).
  const void* dout; int64_t do_batch_stride, do_row_stride, do_head_stride;
  void* dq;         int64_t dq_batch_stride, dq_row_stride, dq_head_stride;
  void* dk;         int64_t dk_batch_stride, dk_row_stride, dk_head_stride;
  void* dv;         int64_t dv_batch_stride, dv_row_stride, dv_head_stride;

  // Scores.
  float scale;            // softmax scale
  float scale_log2;       // scale * log2(e), for exp2-based softmax (without softcap)
  float softcap;          // 0 = off
  // Masks, bottom-right aligned: key j is visible to query i iff
  //   (window_left < 0 || j >= i + Sk - Sq - window_left) && (window_right < 0 || j <= i + Sk - Sq + window_right)
  // with Sq, Sk the lengths of the sequence at hand. causal has been folded into window_right = 0.
  int window_left, window_right;
  bool causal;            // informational: window_left < 0 && window_right == 0
  const float* alibi_slopes; int64_t alibi_batch_stride;  // (B, Hq) or (Hq) with batch stride 0

  // Dropout.
  float dropout_p;        // 0 = off
  float rp_dropout;       // 1 / (1 - p)
  uint32_t dropout_threshold;  // keep iff philox word >= threshold (threshold = floor(p * 2^32))
  uint64_t seed, offset;

  bool deterministic;
  void* stream;
  void* workspace; size_t workspace_bytes;
  // ---- KV cache (forward_kvcache, src/core/validate_kvcache.cpp); zero / nullptr otherwise ----
  // The cache is q/k/v's k and v above (k_batch_stride = the stride between cache rows or pages);
  // seqlen_k is the cache capacity. The per-sequence visible key count is
  // cache_seqlens[b] + seqlen_new - cache_leftpad[b]. Index tensors may be device-resident and
  // unchecked (stream capture): device code clamps every index read from them.
  bool kvcache;
  void* k_cache; void* v_cache;          // the same memory as k, v: written by the append
  const int32_t* cache_seqlens;          // (batch) or nullptr: then cache_seqlen for all
  int cache_seqlen;
  const int32_t* cache_batch_idx;        // (batch) or nullptr (identity); contiguous caches only
  const int32_t* cache_leftpad;          // (batch) or nullptr (0)
  int cache_batch;                       // contiguous: k_cache.shape[0]; paged: num_pages
  // Paged cache: logical page n of sequence b is block_table[b * block_table_batch_stride + n].
  const int32_t* block_table; int64_t block_table_batch_stride;
  int page_size, max_pages;              // page_size = 0: contiguous cache
  // New keys / values appended at [cache_seqlens[b], + seqlen_new) before attention.
  const void* k_new; int64_t knew_batch_stride, knew_row_stride, knew_head_stride;
  const void* v_new; int64_t vnew_batch_stride, vnew_row_stride, vnew_head_stride;
  int seqlen_new;
  // Rotary: cos/sin (rotary_seqlen, rotary_dim / 2), dtype of q, row stride rotary_row_stride.
  const void* rotary_cos; const void* rotary_sin; int64_t rotary_row_stride;
  int rotary_dim, rotary_seqlen;         // rotary_dim = 0: off
  bool rotary_interleaved;
  int num_splits;                        // requested key splits; 0 = heuristic
};


}  // namespace ioattn
