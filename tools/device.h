// Where `ioattn run` keeps its tensors and how it times a call.
//
// The CPU device is host memory and a steady clock. The CUDA device (device_cuda.cpp, compiled only
// when the build has CUDA) uses the CUDA runtime: cudaMalloc, cudaMemcpy, and events recorded on the
// legacy default stream, the stream ioattn runs on when Args::stream is null. Keeping the runtime
// behind this interface keeps every CUDA call in one small file that g++ compiles.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <string>

#include "errors.h"
#include "ioattn/ioattn.h"

namespace ioattn_tool {

class Device {
 public:
  virtual ~Device() = default;
  virtual ioattn::DeviceType type() const = 0;
  virtual int index() const = 0;
  virtual std::string name() const = 0;  // e.g. "cpu" or "cuda:0 NVIDIA H100 80GB HBM3"
  // All of these throw RuntimeFailure on error.
  virtual void* alloc(size_t bytes) = 0;
  virtual void release(void* p) noexcept = 0;
  virtual void to_device(void* dst, const void* src, size_t bytes) = 0;
  virtual void to_host(void* dst, const void* src, size_t bytes) = 0;
  virtual void fill_bytes(void* dst, unsigned char byte, size_t bytes) = 0;
  // Runs fn once and returns the milliseconds it took on this device, after it has finished.
  // CUDA: as triton.testing.do_bench times the PyTorch peers (bench/gpu/bench_attn.py), each call
  // starts behind a 256 MiB memset on the same stream (an L2 flush), so the call reads its inputs
  // from device memory as theirs do. (Its host work overlaps the memset; on the H200 the timing
  // without the flush measured the same: bench/notes-sm90.md, session 20.)
  virtual double time_ms(const std::function<void()>& fn) = 0;
};

// Device memory that frees itself. alloc(0) gives an empty buffer (null data).
class Buffer {
 public:
  Buffer() = default;
  Buffer(Device* dev, size_t bytes) : dev_(dev), bytes_(bytes), data_(bytes ? dev->alloc(bytes) : nullptr) {}
  Buffer(Buffer&& o) noexcept : dev_(o.dev_), bytes_(o.bytes_), data_(o.data_) { o.data_ = nullptr; }
  Buffer& operator=(Buffer&& o) noexcept {
    if (this != &o) {
      reset();
      dev_ = o.dev_; bytes_ = o.bytes_; data_ = o.data_;
      o.data_ = nullptr;
    }
    return *this;
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer() { reset(); }

  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }

 private:
  void reset() noexcept {
    if (data_) dev_->release(data_);
    data_ = nullptr;
  }
  Device* dev_ = nullptr;
  size_t bytes_ = 0;
  void* data_ = nullptr;
};

std::unique_ptr<Device> make_cpu_device();

// True when this program was built with the CUDA runtime (the library's IOATTN_WITH_CUDA).
bool cuda_runtime_compiled();
// Throws UsageError when CUDA is not compiled in or the index names no device.
std::unique_ptr<Device> make_cuda_device(int index);

}  // namespace ioattn_tool
