// The tracked allocator behind ioattn::cpu_peak_scratch_bytes().
#include "cpu/scratch.h"

#include <atomic>
#include <cstdlib>

#include "ioattn/ioattn.h"

namespace ioattn {
namespace {
constexpr size_t kAlign = 64;
std::atomic<size_t> g_current{0};
std::atomic<size_t> g_peak{0};
}  // namespace

namespace cpu {

void* scratch_alloc(size_t bytes) {
  if (bytes == 0) return nullptr;
  const size_t rounded = (bytes + kAlign - 1) / kAlign * kAlign;
  void* ptr = std::aligned_alloc(kAlign, rounded);
  if (!ptr) return nullptr;
  const size_t now = g_current.fetch_add(bytes) + bytes;
  size_t peak = g_peak.load();
  while (now > peak && !g_peak.compare_exchange_weak(peak, now)) {
  }
  return ptr;
}

void scratch_free(void* ptr, size_t bytes) {
  if (!ptr) return;
  std::free(ptr);
  g_current.fetch_sub(bytes);
}

}  // namespace cpu

size_t cpu_peak_scratch_bytes() { return g_peak.load(); }

// Restarts the peak from what is allocated now (zero between calls).
void reset_cpu_peak_scratch_bytes() { g_peak.store(g_current.load()); }

}  // namespace ioattn
