#include "host_tensor.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <stdexcept>

#include "core/half.h"

namespace ioattn::test {

const char* layout_name(Layout l) {
  switch (l) {
    case Layout::Contiguous: return "contiguous";
    case Layout::HeadMajor: return "headmajor";
    case Layout::Padded: return "padded";
  }
  return "?";
}

uint32_t poison_bits(DType dtype) {
  switch (dtype) {
    case DType::F32: return 0x7FC0DEADu;
    case DType::F16: return 0x7E5Au;
    case DType::BF16: return 0x7FDAu;
    case DType::I32: return 0x7FC0DEADu;  // any pattern; int tensors are inputs only
  }
  return 0;
}

HostTensor::HostTensor(DType dtype, std::vector<int64_t> shape, Layout layout)
    : dtype_(dtype), shape_(std::move(shape)), stride_(shape_.size(), 1) {
  const int nd = static_cast<int>(shape_.size());
  if (nd < 1 || nd > TensorView::kMaxDims) throw std::invalid_argument("HostTensor: rank 1..4");
  // Physical order of the dimensions, outermost first.
  std::vector<int> order(nd);
  std::iota(order.begin(), order.end(), 0);
  if (layout == Layout::HeadMajor && nd >= 3) std::swap(order[nd - 3], order[nd - 2]);
  // Padded: each dimension's stride reaches past the one inside it by an odd gap (3, 5, 7 elements).
  static const int64_t kPad[] = {3, 5, 7};
  int64_t st = 1;
  for (int p = nd - 1; p >= 0; --p) {
    const int dim = order[p];
    stride_[dim] = st;
    st *= std::max<int64_t>(shape_[dim], 1);
    if (layout == Layout::Padded) st += kPad[(nd - 1 - p) % 3];
  }
  int64_t last = 0;
  bool empty = false;
  for (int i = 0; i < nd; ++i) {
    if (shape_[i] == 0) empty = true;
    else last += (shape_[i] - 1) * stride_[i];
  }
  elements_ = empty ? 1 : last + 1;  // never a null pointer, even for empty tensors
  storage_.assign(static_cast<size_t>(elements_) * dtype_size(dtype_), 0);
}

TensorView HostTensor::view() const {
  TensorView t;
  t.data = const_cast<uint8_t*>(storage_.data());
  t.dtype = dtype_;
  t.ndim = static_cast<int>(shape_.size());
  for (int i = 0; i < t.ndim; ++i) {
    t.shape[i] = shape_[i];
    t.stride[i] = stride_[i];
  }
  return t;
}

int64_t HostTensor::numel() const {
  int64_t n = 1;
  for (int64_t s : shape_) n *= s;
  return n;
}

int64_t HostTensor::offset(int64_t e) const {
  int64_t off = 0;
  for (int i = static_cast<int>(shape_.size()) - 1; i >= 0; --i) {
    off += (e % shape_[i]) * stride_[i];
    e /= shape_[i];
  }
  return off;
}

double HostTensor::get(int64_t e) const {
  const int64_t o = offset(e);
  switch (dtype_) {
    case DType::F32: { float f; std::memcpy(&f, &storage_[o * 4], 4); return f; }
    case DType::F16: { uint16_t h; std::memcpy(&h, &storage_[o * 2], 2); return fp16_to_float(h); }
    case DType::BF16: { uint16_t h; std::memcpy(&h, &storage_[o * 2], 2); return bf16_to_float(h); }
    case DType::I32: { int32_t i; std::memcpy(&i, &storage_[o * 4], 4); return i; }
  }
  return NAN;
}

void HostTensor::set(int64_t e, double x) {
  const int64_t o = offset(e);
  switch (dtype_) {
    case DType::F32: { const float f = static_cast<float>(x); std::memcpy(&storage_[o * 4], &f, 4); break; }
    case DType::F16: { const uint16_t h = float_to_fp16(static_cast<float>(x)); std::memcpy(&storage_[o * 2], &h, 2); break; }
    case DType::BF16: { const uint16_t h = float_to_bf16(static_cast<float>(x)); std::memcpy(&storage_[o * 2], &h, 2); break; }
    case DType::I32: { const int32_t i = static_cast<int32_t>(x); std::memcpy(&storage_[o * 4], &i, 4); break; }
  }
}

void HostTensor::fill_normal(std::mt19937_64& rng, double sigma) {
  std::normal_distribution<double> dist(0.0, sigma);
  const int64_t n = numel();
  for (int64_t e = 0; e < n; ++e) set(e, dist(rng));
}

void HostTensor::poison() {
  const uint32_t bits = poison_bits(dtype_);
  const size_t es = dtype_size(dtype_);
  for (int64_t o = 0; o < elements_; ++o) std::memcpy(&storage_[o * es], &bits, es);
}

std::vector<double> HostTensor::values() const {
  std::vector<double> v(numel());
  for (int64_t e = 0; e < static_cast<int64_t>(v.size()); ++e) v[e] = get(e);
  return v;
}

int64_t HostTensor::count_nan() const {
  int64_t n = 0;
  for (int64_t e = 0, m = numel(); e < m; ++e) n += std::isnan(get(e)) ? 1 : 0;
  return n;
}

bool HostTensor::gaps_poisoned() const {
  std::vector<char> in_view(elements_, 0);
  for (int64_t e = 0, m = numel(); e < m; ++e) in_view[offset(e)] = 1;
  const uint32_t bits = poison_bits(dtype_);
  const size_t es = dtype_size(dtype_);
  for (int64_t o = 0; o < elements_; ++o)
    if (!in_view[o] && std::memcmp(&storage_[o * es], &bits, es) != 0) return false;
  return true;
}

}  // namespace ioattn::test
