// Device mirrors of the tests' host tensors: the whole storage (view and poisoned gaps) is copied,
// so after a call the host side sees exactly what the GPU wrote, including writes outside a view.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "common/attention_case.h"
#include "common/host_tensor.h"

namespace ioattn::test {

class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(const HostTensor& h);
  ~DeviceBuffer();
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  // The host tensor's view, pointing at device memory (undefined if the host tensor was empty).
  const TensorView& view() const { return view_; }
  // Device storage -> host storage (same size).
  void copy_to(HostTensor& h) const;
  std::vector<uint8_t> bytes() const;

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
  TensorView view_;
};

// Device scratch of at least `bytes` (nothing when 0).
class DeviceScratch {
 public:
  explicit DeviceScratch(size_t bytes);
  ~DeviceScratch();
  DeviceScratch(const DeviceScratch&) = delete;
  DeviceScratch& operator=(const DeviceScratch&) = delete;
  void* get() const { return ptr_; }

 private:
  void* ptr_ = nullptr;
};

// A case's inputs on the device, with Args pointing at the device copies of cu_seqlens and the
// ALiBi slopes, and at the forward's workspace (forward_workspace_size's bytes: the sm90 forward's
// tile counter for varlen calls), poisoned with 0xA5 bytes so that a call which uses it without
// zeroing it first shows. (The backward tests put their own workspace in args.)
struct DeviceInputs {
  explicit DeviceInputs(const CaseInputs& in);
  DeviceBuffer q, k, v, dout, cu_q, cu_k, slopes;
  Args args;
  size_t fwd_workspace_bytes = 0;
  std::unique_ptr<DeviceScratch> fwd_workspace;
};

}  // namespace ioattn::test
