// Host tensors for the tests: owned storage in any dtype with a chosen memory layout, so every case
// can run on contiguous BSHD, head-major (BHSD, PyTorch SDPA's layout) or padded strides with the
// same logical values. The storage gaps of strided layouts are poisoned too, which lets a test see
// a write outside the view.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include "ioattn/ioattn.h"

namespace ioattn::test {

enum class Layout {
  Contiguous,  // row-major in the logical order (BSHD / THD)
  HeadMajor,   // the sequence and head dimensions swapped in memory: BHSD / HTD
  Padded,      // row-major with a gap after every dimension but the last (odd sizes: 3, 5, 7)
};
const char* layout_name(Layout l);

class HostTensor {
 public:
  HostTensor() = default;
  HostTensor(DType dtype, std::vector<int64_t> shape, Layout layout = Layout::Contiguous);

  TensorView view() const;
  DType dtype() const { return dtype_; }
  const std::vector<int64_t>& shape() const { return shape_; }
  int64_t numel() const;
  void* data() { return storage_.data(); }

  // Element e of the logical row-major order, read / written through the layout.
  int64_t offset(int64_t e) const;
  double get(int64_t e) const;
  void set(int64_t e, double x);  // rounded to the dtype (nearest even)

  void fill_normal(std::mt19937_64& rng, double sigma = 1.0);
  // Every byte of the storage (view and gaps) set to a NaN pattern.
  void poison();
  // Logical values as doubles (row-major order, the layout of ioattn::ref::Result arrays).
  std::vector<double> values() const;
  // Elements of the view that are NaN (i.e. still poisoned: never written).
  int64_t count_nan() const;
  // Whether every storage element outside the view still holds the poison pattern.
  bool gaps_poisoned() const;
  const std::vector<uint8_t>& bytes() const { return storage_; }

 private:
  DType dtype_ = DType::F32;
  std::vector<int64_t> shape_, stride_;
  std::vector<uint8_t> storage_;
  int64_t elements_ = 0;  // storage size in elements
};

// The poison bit pattern of one element of `dtype` (a quiet NaN with a payload).
uint32_t poison_bits(DType dtype);

}  // namespace ioattn::test
