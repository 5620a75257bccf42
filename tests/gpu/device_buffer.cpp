#include "device_buffer.h"

#include <stdexcept>
#include <string>

namespace ioattn::test {
namespace {
void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}
}  // namespace

DeviceBuffer::DeviceBuffer(const HostTensor& h) : bytes_(h.bytes().size()) {
  view_ = h.view();
  if (!view_.defined() || bytes_ == 0) {
    view_ = TensorView{};
    return;
  }
  check(cudaMalloc(&ptr_, bytes_), "cudaMalloc");
  check(cudaMemcpy(ptr_, h.bytes().data(), bytes_, cudaMemcpyHostToDevice), "cudaMemcpy H2D");
  const auto offset = static_cast<const uint8_t*>(view_.data) - h.bytes().data();
  view_.data = static_cast<uint8_t*>(ptr_) + offset;
  view_.device = DeviceType::CUDA;
  view_.device_index = 0;
}

DeviceBuffer::~DeviceBuffer() {
  if (ptr_) cudaFree(ptr_);
}

void DeviceBuffer::copy_to(HostTensor& h) const {
  if (ptr_) check(cudaMemcpy(h.data(), ptr_, bytes_, cudaMemcpyDeviceToHost), "cudaMemcpy D2H");
}

std::vector<uint8_t> DeviceBuffer::bytes() const {
  std::vector<uint8_t> b(bytes_);
  if (ptr_) check(cudaMemcpy(b.data(), ptr_, bytes_, cudaMemcpyDeviceToHost), "cudaMemcpy D2H");
  return b;
}

DeviceInputs::DeviceInputs(const CaseInputs& in)
    : q(in.q), k(in.k), v(in.v), dout(in.dout), cu_q(in.cu_q), cu_k(in.cu_k), slopes(in.slopes), args(in.args) {
  if (in.args.cu_seqlens_q.defined()) {
    args.cu_seqlens_q = cu_q.view();
    args.cu_seqlens_k = cu_k.view();
  }
  if (in.args.alibi_slopes.defined()) args.alibi_slopes = slopes.view();
  // (A call that fails validation gets no workspace: its test expects the error anyway.)
  if (forward_workspace_size(q.view(), k.view(), v.view(), args, &fwd_workspace_bytes).ok() && fwd_workspace_bytes > 0) {
    fwd_workspace = std::make_unique<DeviceScratch>(fwd_workspace_bytes);
    check(cudaMemset(fwd_workspace->get(), 0xA5, fwd_workspace_bytes), "cudaMemset workspace");
    args.workspace = fwd_workspace->get();
    args.workspace_bytes = fwd_workspace_bytes;
  }
}

DeviceScratch::DeviceScratch(size_t bytes) {
  if (bytes > 0) check(cudaMalloc(&ptr_, bytes), "cudaMalloc workspace");
}
DeviceScratch::~DeviceScratch() {
  if (ptr_) cudaFree(ptr_);
}

}  // namespace ioattn::test
