#include "checks.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace ioattn {
namespace {

const char* device_name(DeviceType d) { return d == DeviceType::CPU ? "cpu" : "cuda"; }

// Byte range [lo, hi) a view touches (strides are non-negative, checked before).
void byte_range(const TensorView& t, uintptr_t* lo, uintptr_t* hi) {
  uintptr_t last = 0;
  bool empty = false;
  for (int i = 0; i < t.ndim; ++i) {
    if (t.shape[i] == 0) empty = true;
    else last += static_cast<uintptr_t>(t.shape[i] - 1) * static_cast<uintptr_t>(t.stride[i]);
  }
  *lo = reinterpret_cast<uintptr_t>(t.data);
  *hi = empty ? *lo : *lo + (last + 1) * dtype_size(t.dtype);
}

// An output view must not write one element twice: sorted by stride, each stride reaches past the
// extent of the dimensions below it.
bool self_overlapping(const TensorView& t) {
  std::vector<std::pair<int64_t, int64_t>> dims;  // (stride, size)
  for (int i = 0; i < t.ndim; ++i)
    if (t.shape[i] > 1) dims.emplace_back(t.stride[i], t.shape[i]);
  std::sort(dims.begin(), dims.end());
  int64_t extent = 1;
  for (auto [s, n] : dims) {
    if (s < extent) return true;
    extent = s * (n - 1) + extent;
  }
  return false;
}

}  // namespace

std::string shape_str(const TensorView& t) {
  std::ostringstream os;
  os << "(";
  for (int i = 0; i < t.ndim; ++i) os << (i ? ", " : "") << t.shape[i];
  os << ")";
  return os.str();
}

bool overlaps(const TensorView& a, const TensorView& b) {
  if (!a.defined() || !b.defined()) return false;
  uintptr_t alo, ahi, blo, bhi;
  byte_range(a, &alo, &ahi);
  byte_range(b, &blo, &bhi);
  return alo < bhi && blo < ahi;
}

Status check_disjoint(std::initializer_list<NamedView> outputs, std::initializer_list<NamedView> inputs) {
  for (auto o = outputs.begin(); o != outputs.end(); ++o) {
    for (const NamedView& in : inputs)
      if (overlaps(*o->second, *in.second))
        return make_error(ErrorCode::InvalidStride, o->first, ": must not overlap ", in.first);
    for (auto earlier = outputs.begin(); earlier != o; ++earlier)
      if (overlaps(*o->second, *earlier->second))
        return make_error(ErrorCode::InvalidStride, o->first, ": must not overlap ", earlier->first);
  }
  return Status::Ok();
}

Status check_query(const TensorView& q) {
  if (!q.defined()) return make_error(ErrorCode::InvalidShape, "q: expected a tensor, got none (null data)");
  if (q.dtype != DType::F16 && q.dtype != DType::BF16 && q.dtype != DType::F32)
    return make_error(ErrorCode::InvalidDType, "q: expected dtype fp16, bf16 or fp32, got ", dtype_name(q.dtype));
  if (q.device != DeviceType::CPU && q.device != DeviceType::CUDA)
    return make_error(ErrorCode::DeviceMismatch, "q: unknown device type ", static_cast<int>(q.device));
  return Status::Ok();
}

Status check_heads(int64_t head_dim, int64_t head_dim_v, int64_t heads_q, int64_t heads_k, const char* k,
                   const char* v) {
  if (head_dim <= 0) return make_error(ErrorCode::InvalidShape, "q: expected head_dim > 0, got ", head_dim);
  if (head_dim_v <= 0) return make_error(ErrorCode::InvalidShape, v, ": expected head_dim > 0, got ", head_dim_v);
  if (heads_q <= 0) return make_error(ErrorCode::InvalidShape, "q: expected heads > 0, got ", heads_q);
  if (heads_k <= 0) return make_error(ErrorCode::InvalidShape, k, ": expected heads > 0, got ", heads_k);
  if (heads_q % heads_k != 0)
    return make_error(ErrorCode::InvalidShape, k, ": expected heads dividing q's heads ", heads_q, " (GQA/MQA), got ",
                      heads_k);
  return Status::Ok();
}

void row_strides(const TensorView& t, int64_t* batch, int64_t* row, int64_t* head) {
  const bool packed = t.ndim == 3;
  *batch = packed ? 0 : t.stride[0];
  *row = t.stride[packed ? 0 : 1];
  *head = t.stride[packed ? 1 : 2];
}

void fill_problem(const TensorView& q, int64_t batch, int64_t heads_q, int64_t heads_k, int64_t head_dim,
                  int64_t head_dim_v, Params* p) {
  p->dtype = q.dtype;
  p->device = q.device;
  p->device_index = q.device_index;
  p->batch = static_cast<int>(batch);
  p->heads_q = static_cast<int>(heads_q);
  p->heads_k = static_cast<int>(heads_k);
  p->head_dim = static_cast<int>(head_dim);
  p->head_dim_v = static_cast<int>(head_dim_v);
  p->group = static_cast<int>(heads_q / heads_k);
}

Status check_tensor(const char* name, const TensorView& t, int ndim, DType dtype, const TensorView& like,
                    bool output) {
  if (!t.defined()) return make_error(ErrorCode::InvalidShape, name, ": expected a tensor, got none (null data)");
  if (t.ndim != ndim)
    return make_error(ErrorCode::InvalidShape, name, ": expected ", ndim, " dimensions, got ", t.ndim, " ",
                      shape_str(t));
  if (t.dtype != dtype)
    return make_error(ErrorCode::InvalidDType, name, ": expected dtype ", dtype_name(dtype), ", got ",
                      dtype_name(t.dtype));
  if (t.device != like.device || t.device_index != like.device_index)
    return make_error(ErrorCode::DeviceMismatch, name, ": expected device ", device_name(like.device), ":",
                      like.device_index, " like q, got ", device_name(t.device), ":", t.device_index);
  for (int i = 0; i < t.ndim; ++i) {
    if (t.shape[i] < 0) return make_error(ErrorCode::InvalidShape, name, ": negative size in dimension ", i);
    if (t.stride[i] < 0) return make_error(ErrorCode::InvalidStride, name, ": negative stride in dimension ", i);
    if (t.shape[i] > std::numeric_limits<int32_t>::max())
      return make_error(ErrorCode::InvalidShape, name, ": size ", t.shape[i], " exceeds the supported 2^31 - 1");
  }
  if (t.shape[t.ndim - 1] > 1 && t.stride[t.ndim - 1] != 1)
    return make_error(ErrorCode::InvalidStride, name,
                      ": expected a contiguous last dimension (stride 1), got stride ", t.stride[t.ndim - 1]);
  if (output && self_overlapping(t))
    return make_error(ErrorCode::InvalidStride, name, ": output strides make elements overlap");
  return Status::Ok();
}

Status expect_dim(const char* name, const TensorView& t, int dim, int64_t want, const char* what, const char* like) {
  if (t.shape[dim] != want)
    return make_error(ErrorCode::InvalidShape, name, ": expected ", what, " ", want, " like ", like, ", got ",
                      t.shape[dim], " (shape ", shape_str(t), ")");
  return Status::Ok();
}

Status check_scores(const ScoreArgs& a, int64_t batch, int64_t heads_q, const TensorView& q) {
  if (std::isinf(a.softmax_scale)) return make_error(ErrorCode::InvalidValue, "softmax_scale: expected a finite value");
  if (a.window_left < -1)
    return make_error(ErrorCode::InvalidValue, "window_left: expected >= -1, got ", a.window_left);
  if (a.window_right < -1)
    return make_error(ErrorCode::InvalidValue, "window_right: expected >= -1, got ", a.window_right);
  if (a.causal && a.window_right > 0)
    return make_error(ErrorCode::InvalidValue, "window_right: causal allows no key right of the diagonal, got ",
                      a.window_right);
  if (!(a.softcap >= 0.0f) || std::isinf(a.softcap))
    return make_error(ErrorCode::InvalidValue, "softcap: expected a finite value >= 0, got ", a.softcap);
  if (a.alibi_slopes.defined()) {
    const TensorView& s = a.alibi_slopes;
    if (s.ndim != 1 && s.ndim != 2)
      return make_error(ErrorCode::InvalidShape, "alibi_slopes: expected shape (heads_q) or (batch, heads_q), got ",
                        shape_str(s));
    IOATTN_TRY(check_tensor("alibi_slopes", s, s.ndim, DType::F32, q, false));
    IOATTN_TRY(expect_dim("alibi_slopes", s, s.ndim - 1, heads_q, "heads", "q"));
    if (s.ndim == 2) IOATTN_TRY(expect_dim("alibi_slopes", s, 0, batch, "batch", "q"));
  }
  return Status::Ok();
}

void fill_scores(const ScoreArgs& a, int64_t head_dim, Params* p) {
  p->scale = (a.softmax_scale > 0.0f) ? a.softmax_scale : 1.0f / std::sqrt(static_cast<float>(head_dim));
  p->scale_log2 = p->scale * 1.4426950408889634f;  // log2(e)
  p->softcap = a.softcap;
  p->window_left = a.window_left;
  p->window_right = a.causal ? 0 : a.window_right;
  p->causal = p->window_left < 0 && p->window_right == 0;
  p->alibi_slopes = static_cast<const float*>(a.alibi_slopes.data);
  p->alibi_batch_stride = (a.alibi_slopes.defined() && a.alibi_slopes.ndim == 2) ? a.alibi_slopes.stride[0] : 0;
}

}  // namespace ioattn
