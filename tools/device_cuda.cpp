// The CUDA device of `ioattn run`, through the CUDA runtime API only (plain C++, compiled by g++ and
// linked against CUDA::cudart). Timing uses events on the legacy default stream, which is where
// ioattn launches when Args::stream is null, so the events bracket exactly the library's kernels.
#include <cuda_runtime_api.h>

#include "device.h"

namespace ioattn_tool {
namespace {

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess)
    throw RuntimeFailure(std::string("CUDA runtime: ") + what + ": " + cudaGetErrorName(e) + ": " +
                         cudaGetErrorString(e));
}

class CudaDevice final : public Device {
 public:
  explicit CudaDevice(int index) : index_(index) {
    check(cudaSetDevice(index), "cudaSetDevice");
    cudaDeviceProp prop{};
    check(cudaGetDeviceProperties(&prop, index), "cudaGetDeviceProperties");
    name_ = "cuda:" + std::to_string(index) + " " + prop.name;
    check(cudaEventCreate(&start_), "cudaEventCreate");
    check(cudaEventCreate(&stop_), "cudaEventCreate");
  }
  ~CudaDevice() override {
    if (flush_) cudaFree(flush_);
    cudaEventDestroy(start_);
    cudaEventDestroy(stop_);
  }

  ioattn::DeviceType type() const override { return ioattn::DeviceType::CUDA; }
  int index() const override { return index_; }
  std::string name() const override { return name_; }

  void* alloc(size_t bytes) override {
    void* p = nullptr;
    check(cudaMalloc(&p, bytes), ("cudaMalloc of " + std::to_string(bytes) + " bytes").c_str());
    return p;
  }
  void release(void* p) noexcept override { cudaFree(p); }
  void to_device(void* dst, const void* src, size_t bytes) override {
    check(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice), "cudaMemcpy host to device");
  }
  void to_host(void* dst, const void* src, size_t bytes) override {
    check(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy device to host");
  }
  void fill_bytes(void* dst, unsigned char byte, size_t bytes) override {
    check(cudaMemset(dst, byte, bytes), "cudaMemset");
    check(cudaDeviceSynchronize(), "cudaMemset");
  }

  double time_ms(const std::function<void()>& fn) override {
    if (!flush_) flush_ = alloc(kFlushBytes);
    check(cudaMemsetAsync(flush_, 0, kFlushBytes, nullptr), "cudaMemsetAsync (L2 flush)");
    check(cudaEventRecord(start_, nullptr), "cudaEventRecord");
    fn();
    check(cudaEventRecord(stop_, nullptr), "cudaEventRecord");
    check(cudaEventSynchronize(stop_), "kernel execution");
    float ms = 0.0f;
    check(cudaEventElapsedTime(&ms, start_, stop_), "cudaEventElapsedTime");
    return ms;
  }

 private:
  int index_;
  std::string name_;
  cudaEvent_t start_ = nullptr, stop_ = nullptr;
  // time_ms's L2 flush: twice the L2 of any current GPU (50-60 MB on H100 / H200), the size
  // triton's do_bench clears. Allocated on the first timed call, outside the timed region.
  static constexpr size_t kFlushBytes = size_t(256) << 20;
  void* flush_ = nullptr;
};

}  // namespace

bool cuda_runtime_compiled() { return true; }

std::unique_ptr<Device> make_cuda_device(int index) {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0)
    throw UsageError("--device cuda: no CUDA device found");
  if (index < 0 || index >= count)
    throw UsageError("--device cuda:" + std::to_string(index) + ": only " + std::to_string(count) +
                     " CUDA device(s) found");
  return std::make_unique<CudaDevice>(index);
}

}  // namespace ioattn_tool
