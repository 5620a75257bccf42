// Tracked scratch memory of the CPU backend. Every temporary the backend allocates (per-thread tile
// buffers, fp32 gradient accumulators, the backward's D = rowsum(dO * O)) comes from here, so
// `ioattn::cpu_peak_scratch_bytes()` reports the true peak extra memory of a call (what `ioattn run`
// prints, and what shows the O(N) claim of DESIGN.md §4).
#pragma once

#include <cstddef>
#include <type_traits>

namespace ioattn {
namespace cpu {

// 64-byte aligned (one cache line, one AVX-512 vector) and counted; nullptr on failure.
void* scratch_alloc(size_t bytes);
void scratch_free(void* ptr, size_t bytes);

// An owning array of trivial T (fp32 tiles, task tables) from the tracked allocator. Move-only;
// the contents start uninitialised. ok() is false when the allocation failed.
template <class T>
class Scratch {
  static_assert(std::is_trivial<T>::value, "scratch holds plain data");

 public:
  Scratch() = default;
  explicit Scratch(size_t count)
      : data_(static_cast<T*>(scratch_alloc(count * sizeof(T)))), count_(count) {}
  ~Scratch() { scratch_free(data_, count_ * sizeof(T)); }
  Scratch(Scratch&& o) noexcept : data_(o.data_), count_(o.count_) { o.data_ = nullptr; o.count_ = 0; }
  Scratch& operator=(Scratch&& o) noexcept {
    if (this != &o) {
      scratch_free(data_, count_ * sizeof(T));
      data_ = o.data_; count_ = o.count_;
      o.data_ = nullptr; o.count_ = 0;
    }
    return *this;
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;

  T* get() const { return data_; }
  bool ok() const { return data_ != nullptr || count_ == 0; }

 private:
  T* data_ = nullptr;
  size_t count_ = 0;
};

}  // namespace cpu
}  // namespace ioattn
