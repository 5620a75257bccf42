// Validation of forward_kvcache. The tensor checks mirror validate.cpp's for forward() (same
// messages), plus the cache's own: layout (contiguous or paged), capacity, index tensors, rotary
// tables, and aliasing between the cache (written by the append) and everything else.
#include "validate_kvcache.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>
#include <vector>

#include "backends.h"
#include "checks.h"
#include "validate.h"

namespace ioattn {
namespace {

Status check_index_vector(const char* name, const TensorView& t, int64_t batch, const TensorView& q) {
  IOATTN_TRY(check_tensor(name, t, 1, DType::I32, q, false));
  return expect_dim(name, t, 0, batch, "batch", "q");
}

Status check_paged(const TensorView& kc, const TensorView& block_table, int64_t B, const TensorView& q,
                   int64_t* capacity) {
  IOATTN_TRY(check_tensor("block_table", block_table, 2, DType::I32, q, false));
  IOATTN_TRY(expect_dim("block_table", block_table, 0, B, "batch", "q"));
  const int64_t page_size = kc.shape[1];
  if (page_size <= 0 || page_size % 16 != 0)
    return make_error(ErrorCode::InvalidShape, "k_cache: a paged cache needs a page size (dimension 1) that is a positive "
               "multiple of 16, got ", page_size);
  if (kc.shape[0] <= 0) return make_error(ErrorCode::InvalidShape, "k_cache: a paged cache needs at least one page");
  *capacity = page_size * block_table.shape[1];
  if (*capacity > std::numeric_limits<int32_t>::max())
    return make_error(ErrorCode::InvalidShape, "block_table: capacity ", *capacity, " exceeds 2^31 - 1");
  return Status::Ok();
}

}  // namespace

Status validate_kvcache(const KVCacheInputs& in, Params* p_out) {
  const TensorView &q = in.q, &kc = in.k_cache, &vc = in.v_cache, &out = in.out, &lse = in.lse;
  const KVCacheArgs& a = in.args;
  IOATTN_TRY(check_query(q));
  IOATTN_TRY(check_tensor("q", q, 4, q.dtype, q, false));
  IOATTN_TRY(check_tensor("k_cache", kc, 4, q.dtype, q, false));
  IOATTN_TRY(check_tensor("v_cache", vc, 4, q.dtype, q, false));
  const int64_t B = q.shape[0], Sq = q.shape[1], Hq = q.shape[2], D = q.shape[3];
  const int64_t Hk = kc.shape[2], Dv = vc.shape[3];
  IOATTN_TRY(check_heads(D, Dv, Hq, Hk, "k_cache", "v_cache"));
  IOATTN_TRY(expect_dim("k_cache", kc, 3, D, "head_dim", "q"));
  for (int i = 0; i < 3; ++i) IOATTN_TRY(expect_dim("v_cache", vc, i, kc.shape[i], "size", "k_cache"));

  // Cache layout and capacity.
  const bool paged = a.block_table.defined();
  int64_t capacity = kc.shape[1], page_size = 0, max_pages = 0;
  if (paged) {
    IOATTN_TRY(check_paged(kc, a.block_table, B, q, &capacity));
    page_size = kc.shape[1];
    max_pages = a.block_table.shape[1];
    if (a.cache_batch_idx.defined())
      return make_error(ErrorCode::InvalidValue, "cache_batch_idx: not supported with a paged cache (block_table maps "
                 "sequences to pages)");
    if (a.cache_leftpad.defined())
      return make_error(ErrorCode::InvalidValue, "cache_leftpad: not supported with a paged cache");
  } else if (!a.cache_batch_idx.defined() && kc.shape[0] < B) {
    return make_error(ErrorCode::InvalidShape, "k_cache: expected at least batch ", B, " cache rows like q, got ",
               kc.shape[0], " (or pass cache_batch_idx)");
  }
  if (capacity > std::numeric_limits<int32_t>::max())
    return make_error(ErrorCode::InvalidShape, "block_table: capacity ", capacity, " exceeds 2^31 - 1");

  // New keys / values.
  const bool append = a.k_new.defined() || a.v_new.defined();
  int64_t Snew = 0;
  if (append) {
    if (!a.k_new.defined() || !a.v_new.defined())
      return make_error(ErrorCode::InvalidShape, a.k_new.defined() ? "v_new" : "k_new", ": k_new and v_new come together");
    IOATTN_TRY(check_tensor("k_new", a.k_new, 4, q.dtype, q, false));
    IOATTN_TRY(check_tensor("v_new", a.v_new, 4, q.dtype, q, false));
    Snew = a.k_new.shape[1];
    IOATTN_TRY(expect_dim("k_new", a.k_new, 0, B, "batch", "q"));
    IOATTN_TRY(expect_dim("k_new", a.k_new, 2, Hk, "heads", "k_cache"));
    IOATTN_TRY(expect_dim("k_new", a.k_new, 3, D, "head_dim", "q"));
    IOATTN_TRY(expect_dim("v_new", a.v_new, 0, B, "batch", "q"));
    IOATTN_TRY(expect_dim("v_new", a.v_new, 1, Snew, "seqlen", "k_new"));
    IOATTN_TRY(expect_dim("v_new", a.v_new, 2, Hk, "heads", "k_cache"));
    IOATTN_TRY(expect_dim("v_new", a.v_new, 3, Dv, "head_dim", "v_cache"));
    if (Snew > capacity)
      return make_error(ErrorCode::InvalidShape, "k_new: ", Snew, " new rows exceed the cache capacity ", capacity);
  }

  // Per-sequence index tensors.
  if (a.cache_seqlens.defined()) IOATTN_TRY(check_index_vector("cache_seqlens", a.cache_seqlens, B, q));
  else if (a.cache_seqlen < 0)
    return make_error(ErrorCode::InvalidValue, "cache_seqlen: expected >= 0, got ", a.cache_seqlen);
  if (a.cache_batch_idx.defined()) IOATTN_TRY(check_index_vector("cache_batch_idx", a.cache_batch_idx, B, q));
  if (a.cache_leftpad.defined()) IOATTN_TRY(check_index_vector("cache_leftpad", a.cache_leftpad, B, q));

  // Rotary tables.
  int64_t rotary_dim = 0, rotary_seqlen = 0;
  if (a.rotary_cos.defined() || a.rotary_sin.defined()) {
    if (!a.rotary_cos.defined() || !a.rotary_sin.defined())
      return make_error(ErrorCode::InvalidShape, a.rotary_cos.defined() ? "rotary_sin" : "rotary_cos",
                 ": rotary_cos and rotary_sin come together");
    IOATTN_TRY(check_tensor("rotary_cos", a.rotary_cos, 2, q.dtype, q, false));
    IOATTN_TRY(check_tensor("rotary_sin", a.rotary_sin, 2, q.dtype, q, false));
    for (int i = 0; i < 2; ++i) IOATTN_TRY(expect_dim("rotary_sin", a.rotary_sin, i, a.rotary_cos.shape[i], "size", "rotary_cos"));
    if (a.rotary_cos.stride[0] != a.rotary_sin.stride[0])
      return make_error(ErrorCode::InvalidStride, "rotary_sin: expected the row stride of rotary_cos (", a.rotary_cos.stride[0],
                 "), got ", a.rotary_sin.stride[0]);
    rotary_dim = 2 * a.rotary_cos.shape[1];
    rotary_seqlen = a.rotary_cos.shape[0];
    if (rotary_dim <= 0 || rotary_dim > D)
      return make_error(ErrorCode::InvalidShape, "rotary_cos: expected rotary_dim / 2 in [1, head_dim / 2 = ", D / 2, "], got ",
                 a.rotary_cos.shape[1]);
    if (rotary_seqlen < capacity)
      return make_error(ErrorCode::InvalidShape, "rotary_cos: expected at least ", capacity,
                 " rows (the cache capacity), got ", rotary_seqlen);
  }

  // Outputs.
  IOATTN_TRY(check_tensor("out", out, 4, q.dtype, q, true));
  for (int i = 0; i < 3; ++i) IOATTN_TRY(expect_dim("out", out, i, q.shape[i], "size", "q"));
  IOATTN_TRY(expect_dim("out", out, 3, Dv, "head_dim", "v_cache"));
  if (lse.defined()) {
    IOATTN_TRY(check_tensor("lse", lse, 3, DType::F32, q, true));
    IOATTN_TRY(expect_dim("lse", lse, 0, B, "batch", "q"));
    IOATTN_TRY(expect_dim("lse", lse, 1, Hq, "heads", "q"));
    IOATTN_TRY(expect_dim("lse", lse, 2, Sq, "seqlen_q", "q"));
    if (!lse.is_contiguous()) return make_error(ErrorCode::InvalidStride, "lse: expected a contiguous tensor");
  }
  // Aliasing: outputs never overlap inputs; with an append the caches are outputs too.
  IOATTN_TRY(check_disjoint({{"out", &out}, {"lse", &lse}}, {{"q", &q},
                                                                {"k_cache", &kc},
                                                                {"v_cache", &vc},
                                                                {"k_new", &a.k_new},
                                                                {"v_new", &a.v_new}}));
  if (append)  // the append writes the caches while it reads these
    IOATTN_TRY(check_disjoint({{"k_cache", &kc}, {"v_cache", &vc}}, {{"q", &q},
                                                                     {"k_new", &a.k_new},
                                                                     {"v_new", &a.v_new},
                                                                     {"rotary_cos", &a.rotary_cos},
                                                                     {"rotary_sin", &a.rotary_sin}}));


  const ScoreArgs score{a.softmax_scale, a.causal, a.window_left, a.window_right, a.softcap, a.alibi_slopes};
  IOATTN_TRY(check_scores(score, B, Hq, q));
  if (a.num_splits < 0) return make_error(ErrorCode::InvalidValue, "num_splits: expected >= 0 (0 = heuristic), got ", a.num_splits);

  Params p{};
  fill_problem(q, B, Hq, Hk, D, Dv, &p);
  p.seqlen_q = static_cast<int>(Sq);
  p.seqlen_k = static_cast<int>(capacity);
  p.q = q.data; row_strides(q, &p.q_batch_stride, &p.q_row_stride, &p.q_head_stride);
  p.k = kc.data; row_strides(kc, &p.k_batch_stride, &p.k_row_stride, &p.k_head_stride);
  p.v = vc.data; row_strides(vc, &p.v_batch_stride, &p.v_row_stride, &p.v_head_stride);
  p.out = out.data; row_strides(out, &p.o_batch_stride, &p.o_row_stride, &p.o_head_stride);
  p.lse = static_cast<float*>(lse.data);
  p.lse_batch_stride = Hq * Sq;
  p.lse_head_stride = Sq;
  fill_scores(score, D, &p);
  p.rp_dropout = 1.0f;  // no dropout in decoding
  fill_launch(a.stream, a.workspace, a.workspace_bytes, &p);

  p.kvcache = true;
  p.k_cache = kc.data;
  p.v_cache = vc.data;
  p.cache_seqlens = static_cast<const int32_t*>(a.cache_seqlens.data);
  p.cache_seqlen = a.cache_seqlen;
  p.cache_batch_idx = static_cast<const int32_t*>(a.cache_batch_idx.data);
  p.cache_leftpad = static_cast<const int32_t*>(a.cache_leftpad.data);
  p.cache_batch = static_cast<int>(kc.shape[0]);
  p.block_table = static_cast<const int32_t*>(a.block_table.data);
  p.block_table_batch_stride = paged ? a.block_table.stride[0] : 0;
  p.page_size = static_cast<int>(page_size);
  p.max_pages = static_cast<int>(max_pages);
  if (append) {
    p.k_new = a.k_new.data;
    p.knew_batch_stride = a.k_new.stride[0]; p.knew_row_stride = a.k_new.stride[1]; p.knew_head_stride = a.k_new.stride[2];
    p.v_new = a.v_new.data;
    p.vnew_batch_stride = a.v_new.stride[0]; p.vnew_row_stride = a.v_new.stride[1]; p.vnew_head_stride = a.v_new.stride[2];
  }
  p.seqlen_new = static_cast<int>(Snew);
  if (rotary_dim > 0) {
    p.rotary_cos = a.rotary_cos.data;
    p.rotary_sin = a.rotary_sin.data;
    p.rotary_row_stride = a.rotary_cos.stride[0];
    p.rotary_dim = static_cast<int>(rotary_dim);
    p.rotary_seqlen = static_cast<int>(rotary_seqlen);
    p.rotary_interleaved = a.rotary_interleaved;
  }
  p.num_splits = a.num_splits;

  const bool has_index_tensors = p.cache_seqlens || p.cache_batch_idx || p.cache_leftpad || p.block_table;
  if (q.device == DeviceType::CPU || !has_index_tensors) {
    IOATTN_TRY(check_kvcache_indices_host(p));
  } else {
#ifdef IOATTN_WITH_CUDA
    IOATTN_TRY(cuda::check_kvcache_indices(p));
#else
    return make_error(ErrorCode::Unsupported, "q: tensors are on a CUDA device but ioattn was built without CUDA");
#endif
  }
  *p_out = p;
  return Status::Ok();
}

Status check_kvcache_indices_host(const Params& p) {
  const int64_t capacity = p.seqlen_k;
  std::vector<int> writer;  // contiguous cache row -> sequence appending to it (-1: none)
  if (p.seqlen_new > 0 && p.page_size == 0) writer.assign(p.cache_batch, -1);
  for (int b = 0; b < p.batch; ++b) {
    const int64_t len = p.varlen ? static_cast<int64_t>(p.cu_seqlens_k[b + 1]) - p.cu_seqlens_k[b]
                                 : (p.cache_seqlens ? p.cache_seqlens[b] : p.cache_seqlen);
    const char* len_name = p.varlen ? "cu_seqlens_k" : (p.cache_seqlens ? "cache_seqlens" : "cache_seqlen");
    if (len < 0) return make_error(ErrorCode::InvalidIndex, len_name, ": sequence ", b, " has length ", len, ", expected >= 0");
    if (len + p.seqlen_new > capacity)
      return make_error(ErrorCode::InvalidIndex, len_name, ": sequence ", b, " has ", len, " cached + ", p.seqlen_new,
                 " new keys, more than the cache capacity ", capacity,
                 p.page_size ? " (pages per sequence x page size)" : " (k_cache dimension 1)");
    if (p.cache_leftpad) {
      const int64_t pad = p.cache_leftpad[b];
      if (pad < 0 || pad > len)
        return make_error(ErrorCode::InvalidIndex, "cache_leftpad: sequence ", b, " has leftpad ", pad,
                   ", expected in [0, cache_seqlens = ", len, "]");
    }
    int row = b;
    if (p.cache_batch_idx) {
      row = p.cache_batch_idx[b];
      if (row < 0 || row >= p.cache_batch)
        return make_error(ErrorCode::InvalidIndex, "cache_batch_idx: sequence ", b, " maps to cache row ", row,
                   ", expected in [0, ", p.cache_batch, ")");
    }
    if (!writer.empty()) {
      if (writer[row] >= 0)
        return make_error(ErrorCode::InvalidIndex, "cache_batch_idx: sequences ", writer[row], " and ", b,
                   " both append to cache row ", row);
      writer[row] = b;
    }
    if (p.page_size > 0) {
      // Only the pages the sequence touches (positions [0, len + seqlen_new)) must be valid: callers
      // pad the rest of a block-table row with anything.
      const int64_t used = (len + p.seqlen_new + p.page_size - 1) / p.page_size;
      for (int64_t n = 0; n < used; ++n) {
        const int32_t page = p.block_table[b * p.block_table_batch_stride + n];
        if (page < 0 || page >= p.cache_batch)
          return make_error(ErrorCode::InvalidIndex, "block_table: entry (", b, ", ", n, ") is page ", page,
                     ", expected in [0, num_pages = ", p.cache_batch, ")");
      }
    }
  }
  return Status::Ok();
}

Status validate_paged(const PagedInputs& in, Params* p_out) {
  const TensorView &q = in.q, &kc = in.k_cache, &vc = in.v_cache, &out = in.out, &lse = in.lse;
  const Args& a = in.args;
  IOATTN_TRY(check_query(q));
  IOATTN_TRY(check_tensor("q", q, 3, q.dtype, q, false));
  IOATTN_TRY(check_tensor("k_cache", kc, 4, q.dtype, q, false));
  IOATTN_TRY(check_tensor("v_cache", vc, 4, q.dtype, q, false));
  const int64_t Tq = q.shape[0], Hq = q.shape[1], D = q.shape[2], Hk = kc.shape[2], Dv = vc.shape[3];
  IOATTN_TRY(check_heads(D, Dv, Hq, Hk, "k_cache", "v_cache"));
  IOATTN_TRY(expect_dim("k_cache", kc, 3, D, "head_dim", "q"));
  for (int i = 0; i < 3; ++i) IOATTN_TRY(expect_dim("v_cache", vc, i, kc.shape[i], "size", "k_cache"));
  if (!a.cu_seqlens_q.defined() || !a.cu_seqlens_k.defined())
    return make_error(ErrorCode::InvalidShape, a.cu_seqlens_q.defined() ? "cu_seqlens_k" : "cu_seqlens_q",
               ": paged prefill is varlen: it needs cu_seqlens_q and cu_seqlens_k");
  IOATTN_TRY(check_tensor("cu_seqlens_q", a.cu_seqlens_q, 1, DType::I32, q, false));
  IOATTN_TRY(check_tensor("cu_seqlens_k", a.cu_seqlens_k, 1, DType::I32, q, false));
  if (a.cu_seqlens_q.shape[0] < 1) return make_error(ErrorCode::InvalidShape, "cu_seqlens_q: expected batch + 1 >= 1 entries, got 0");
  IOATTN_TRY(expect_dim("cu_seqlens_k", a.cu_seqlens_k, 0, a.cu_seqlens_q.shape[0], "entries", "cu_seqlens_q"));
  const int64_t B = a.cu_seqlens_q.shape[0] - 1;
  if (a.max_seqlen_q < 0) return make_error(ErrorCode::InvalidValue, "max_seqlen_q: expected >= 0, got ", a.max_seqlen_q);
  if (a.max_seqlen_k < 0) return make_error(ErrorCode::InvalidValue, "max_seqlen_k: expected >= 0, got ", a.max_seqlen_k);
  int64_t capacity = 0;
  IOATTN_TRY(check_paged(kc, in.block_table, B, q, &capacity));
  if (a.dropout_p != 0.0f)
    return make_error(ErrorCode::Unsupported, "dropout_p: not supported with a paged cache (inference path), got ", a.dropout_p);

  IOATTN_TRY(check_tensor("out", out, 3, q.dtype, q, true));
  for (int i = 0; i < 2; ++i) IOATTN_TRY(expect_dim("out", out, i, q.shape[i], "size", "q"));
  IOATTN_TRY(expect_dim("out", out, 2, Dv, "head_dim", "v_cache"));
  if (lse.defined()) {
    IOATTN_TRY(check_tensor("lse", lse, 2, DType::F32, q, true));
    IOATTN_TRY(expect_dim("lse", lse, 0, Hq, "heads", "q"));
    IOATTN_TRY(expect_dim("lse", lse, 1, Tq, "total_q", "q"));
    if (!lse.is_contiguous()) return make_error(ErrorCode::InvalidStride, "lse: expected a contiguous tensor");
  }
  IOATTN_TRY(check_disjoint({{"out", &out}, {"lse", &lse}}, {{"q", &q}, {"k_cache", &kc}, {"v_cache", &vc}}));
  const ScoreArgs score{a.softmax_scale, a.causal, a.window_left, a.window_right, a.softcap, a.alibi_slopes};
  IOATTN_TRY(check_scores(score, B, Hq, q));

  Params p{};
  fill_problem(q, B, Hq, Hk, D, Dv, &p);
  p.varlen = true;
  p.seqlen_q = a.max_seqlen_q;
  p.seqlen_k = static_cast<int>(capacity);
  p.cu_seqlens_q = static_cast<const int32_t*>(a.cu_seqlens_q.data);
  p.cu_seqlens_k = static_cast<const int32_t*>(a.cu_seqlens_k.data);
  p.total_q = static_cast<int>(Tq);
  p.total_k = std::numeric_limits<int32_t>::max();  // keys are not packed: no row bound from k
  p.q = q.data; row_strides(q, &p.q_batch_stride, &p.q_row_stride, &p.q_head_stride);
  p.k = kc.data; row_strides(kc, &p.k_batch_stride, &p.k_row_stride, &p.k_head_stride);
  p.v = vc.data; row_strides(vc, &p.v_batch_stride, &p.v_row_stride, &p.v_head_stride);
  p.out = out.data; row_strides(out, &p.o_batch_stride, &p.o_row_stride, &p.o_head_stride);
  p.lse = static_cast<float*>(lse.data);
  p.lse_batch_stride = 0;
  p.lse_head_stride = Tq;
  fill_scores(score, D, &p);
  p.rp_dropout = 1.0f;  // no dropout in decoding
  fill_launch(a.stream, a.workspace, a.workspace_bytes, &p);
  p.kvcache = true;
  p.cache_batch = static_cast<int>(kc.shape[0]);
  p.block_table = static_cast<const int32_t*>(in.block_table.data);
  p.block_table_batch_stride = in.block_table.stride[0];
  p.page_size = static_cast<int>(kc.shape[1]);
  p.max_pages = static_cast<int>(in.block_table.shape[1]);

  if (q.device == DeviceType::CPU) {
    IOATTN_TRY(check_paged_indices_host(p, a.max_seqlen_k));
  } else {
#ifdef IOATTN_WITH_CUDA
    IOATTN_TRY(cuda::check_paged_indices(p, a.max_seqlen_k));
#else
    return make_error(ErrorCode::Unsupported, "q: tensors are on a CUDA device but ioattn was built without CUDA");
#endif
  }
  *p_out = p;
  return Status::Ok();
}

Status check_paged_indices_host(const Params& p, int max_seqlen_k) {
  // Prefix sums against max_seqlen_q / max_seqlen_k (the kernels' p.seqlen_k is the capacity),
  // then the key counts against the capacity and the pages they use.
  Params bounds = p;
  bounds.seqlen_k = max_seqlen_k;
  IOATTN_TRY(check_cu_seqlens_host(bounds, p.total_q, p.total_k));
  return check_kvcache_indices_host(p);
}

}  // namespace ioattn
