// Host-side helpers of the CUDA backends (backend.cu, decode/decode.cu): CUDA errors as named
// Status values, and the device guard every entry point holds.
#pragma once

#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>

#include "core/checks.h"

namespace ioattn::cuda {

inline Status cuda_error(const char* what, cudaError_t e) {
  return make_error(ErrorCode::BackendError, what, ": ", cudaGetErrorString(e));
}

// Makes `device` current for the duration of a call and restores the caller's device.
// cudaGetDevice / cudaSetDevice are host-side and legal during stream capture.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    status_ = cudaGetDevice(&previous_);
    if (status_ == cudaSuccess && previous_ != device) status_ = cudaSetDevice(device);
    switched_ = status_ == cudaSuccess && previous_ != device;
  }
  ~DeviceGuard() {
    if (switched_) cudaSetDevice(previous_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;
  Status status() const { return status_ == cudaSuccess ? Status::Ok() : cuda_error("selecting the device", status_); }

 private:
  int previous_ = 0;
  bool switched_ = false;
  cudaError_t status_;
};

// Raises `kernel`'s dynamic shared-memory limit to `bytes` (needed above 48 KB) on the current
// device. The opt-in is per function and device, so it is made once per device: `configured` is
// the caller's per-kernel bitmask of devices already done (a function-local static).
inline cudaError_t allow_dynamic_smem(const void* kernel, int bytes, std::atomic<uint64_t>& configured) {
  int device = 0;
  cudaError_t e = cudaGetDevice(&device);
  const uint64_t bit = device < 64 ? uint64_t(1) << device : 0;
  if (e == cudaSuccess && !(configured.load(std::memory_order_acquire) & bit)) {
    e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
    if (e == cudaSuccess) configured.fetch_or(bit, std::memory_order_release);
  }
  return e;
}

}  // namespace ioattn::cuda
