// The host device of `ioattn run`: malloc'd memory (64-byte aligned, the widest vector the CPU
// backend loads) and a steady clock around the call, which runs synchronously.
#include <chrono>
#include <cstdlib>
#include <cstring>

#include "device.h"

namespace ioattn_tool {
namespace {

class CpuDevice final : public Device {
 public:
  ioattn::DeviceType type() const override { return ioattn::DeviceType::CPU; }
  int index() const override { return 0; }
  std::string name() const override { return "cpu"; }

  void* alloc(size_t bytes) override {
    constexpr size_t kAlign = 64;
    void* p = std::aligned_alloc(kAlign, (bytes + kAlign - 1) / kAlign * kAlign);
    if (!p) throw RuntimeFailure("out of host memory allocating " + std::to_string(bytes) + " bytes");
    return p;
  }
  void release(void* p) noexcept override { std::free(p); }
  void to_device(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
  void to_host(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
  void fill_bytes(void* dst, unsigned char byte, size_t bytes) override { std::memset(dst, byte, bytes); }

  double time_ms(const std::function<void()>& fn) override {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    const auto t1 = std::chrono::steady_clock::now();
    return std::chrono::duration<double, std::milli>(t1 - t0).count();
  }
};

}  // namespace

std::unique_ptr<Device> make_cpu_device() { return std::make_unique<CpuDevice>(); }

#ifndef IOATTN_WITH_CUDA
bool cuda_runtime_compiled() { return false; }
std::unique_ptr<Device> make_cuda_device(int) {
  throw UsageError("--device cuda: this build has no CUDA (configure with -DIOATTN_WITH_CUDA=ON where nvcc is "
                   "installed)");
}
#endif

}  // namespace ioattn_tool
