// The public entry points: validate (src/core/validate.cpp), then dispatch to the backend of the
// tensors' device. Dispatch is here and only here.
#include <cmath>
#include <string>

#include "backends.h"
#include "validate.h"
#include "validate_kvcache.h"

namespace ioattn {

const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "fp32";
    case DType::F16: return "fp16";
    case DType::BF16: return "bf16";
    case DType::I32: return "int32";
  }
  return "unknown";
}

size_t dtype_size(DType t) {
  switch (t) {
    case DType::F32: return 4;
    case DType::F16: return 2;
    case DType::BF16: return 2;
    case DType::I32: return 4;
  }
  return 0;
}

const char* error_code_name(ErrorCode c) {
  switch (c) {
    case ErrorCode::Ok: return "Ok";
    case ErrorCode::InvalidShape: return "InvalidShape";
    case ErrorCode::InvalidDType: return "InvalidDType";
    case ErrorCode::InvalidStride: return "InvalidStride";
    case ErrorCode::Misaligned: return "Misaligned";
    case ErrorCode::DeviceMismatch: return "DeviceMismatch";
    case ErrorCode::InvalidValue: return "InvalidValue";
    case ErrorCode::InvalidIndex: return "InvalidIndex";
    case ErrorCode::Unsupported: return "Unsupported";
    case ErrorCode::WorkspaceTooSmall: return "WorkspaceTooSmall";
    case ErrorCode::BackendError: return "BackendError";
  }
  return "Unknown";
}

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int i = 0; i < ndim; ++i) n *= shape[i];
  return n;
}

bool TensorView::is_contiguous() const {
  // An empty tensor is contiguous whatever its strides (as in PyTorch, whose empty tensors carry
  // strides computed with max(size, 1), e.g. (2, 1, 1) for shape (1, 2, 0)).
  if (numel() == 0) return true;
  int64_t expect = 1;
  for (int i = ndim - 1; i >= 0; --i) {
    if (shape[i] != 1 && stride[i] != expect) return false;
    expect *= shape[i];
  }
  return true;
}

TensorView TensorView::contiguous(void* data, DType dtype, std::initializer_list<int64_t> shape,
                                  DeviceType device, int device_index) {
  TensorView t;
  t.data = data;
  t.dtype = dtype;
  t.ndim = static_cast<int>(shape.size());
  int i = 0;
  for (int64_t s : shape) t.shape[i++] = s;
  int64_t st = 1;
  for (int d = t.ndim - 1; d >= 0; --d) {
    t.stride[d] = st;
    st *= t.shape[d];
  }
  t.device = device;
  t.device_index = device_index;
  return t;
}

namespace {

[[maybe_unused]] Status no_cuda() {
  return Status{ErrorCode::Unsupported, "q: tensors are on a CUDA device but ioattn was built without CUDA "
                                        "(IOATTN_WITH_CUDA=OFF)"};
}

Inputs make_inputs(const TensorView& q, const TensorView& k, const TensorView& v, const Args& args) {
  Inputs in;
  in.q = q; in.k = k; in.v = v; in.args = args;
  return in;
}

// The workspace queries and describe_* validate like the call itself, with a stand-in output:
// contiguous, shaped like q with v's last dimension, pointing at a static byte that is never read or
// written (the queries only need shapes, dtypes and devices).
TensorView stand_in_output(const TensorView& q, const TensorView& v) {
  static char stand_in alignas(16)[16];
  TensorView out = q;
  out.data = stand_in;
  if (q.ndim >= 1 && q.ndim <= TensorView::kMaxDims && v.ndim >= 1 && v.ndim <= TensorView::kMaxDims) {
    out.shape[q.ndim - 1] = v.shape[v.ndim - 1];
    int64_t st = 1;
    for (int d = q.ndim - 1; d >= 0; --d) {
      out.stride[d] = st;
      st *= out.shape[d] > 0 ? out.shape[d] : 1;
    }
  }
  return out;
}

Status validate_for_query(const TensorView& q, const TensorView& k, const TensorView& v, const Args& args,
                          Params* p) {
  Inputs in = make_inputs(q, k, v, args);
  in.out = stand_in_output(q, v);
  return validate(in, false, p);
}

// Dispatch: the tensors' device picks the backend. This is the only place that decides.
template <class CpuFn, class CudaFn>
Status on_backend(const Params& p, CpuFn&& on_cpu, CudaFn&& on_cuda) {
  if (p.device == DeviceType::CPU) return on_cpu();
#ifdef IOATTN_WITH_CUDA
  return on_cuda();
#else
  (void)on_cuda;
  return no_cuda();
#endif
}

}  // namespace

Status check_cu_seqlens_device(const Params& p, int total_q, int total_k) {
#ifdef IOATTN_WITH_CUDA
  return cuda::check_cu_seqlens(p, total_q, total_k);
#else
  (void)p; (void)total_q; (void)total_k;
  return no_cuda();
#endif
}

Status forward(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& out,
               const TensorView& lse, const Args& args) {
  Inputs in = make_inputs(q, k, v, args);
  in.out = out;
  in.lse = lse;
  Params p;
  Status s = validate(in, false, &p);
  if (!s.ok()) return s;
  return on_backend(p, [&] { return cpu::forward(p); }, [&] { return cuda::forward(p); });
}

Status backward(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& out,
                const TensorView& dout, const TensorView& lse, const TensorView& dq, const TensorView& dk,
                const TensorView& dv, const Args& args) {
  Inputs in = make_inputs(q, k, v, args);
  in.out = out;
  in.lse = lse;
  in.dout = dout;
  in.dq = dq;
  in.dk = dk;
  in.dv = dv;
  Params p;
  Status s = validate(in, true, &p);
  if (!s.ok()) return s;
  return on_backend(p, [&] { return cpu::backward(p); }, [&] { return cuda::backward(p); });
}

static Status workspace_size(const TensorView& q, const TensorView& k, const TensorView& v, const Args& args,
                             bool backward, size_t* bytes) {
  *bytes = 0;
  Params p;
  Status s = validate_for_query(q, k, v, args, &p);
  if (!s.ok()) return s;
  return on_backend(p, [] { return Status::Ok(); }, [&] {
    std::string name;
    Status sel = cuda::select(p, backward, &name);
    if (sel.ok()) *bytes = cuda::workspace_size(p, backward);
    return sel;
  });
}

Status forward_workspace_size(const TensorView& q, const TensorView& k, const TensorView& v, const Args& args,
                              size_t* bytes) {
  return workspace_size(q, k, v, args, false, bytes);
}

Status backward_workspace_size(const TensorView& q, const TensorView& k, const TensorView& v, const Args& args,
                               size_t* bytes) {
  return workspace_size(q, k, v, args, true, bytes);
}

std::string describe_forward_choice(const TensorView& q, const TensorView& k, const TensorView& v,
                                    const Args& args) {
  Params p;
  Status s = validate_for_query(q, k, v, args, &p);
  if (!s.ok()) return std::string("none: ") + s.message;
  if (p.device == DeviceType::CPU) return "cpu: tiled online-softmax (" + cpu::features() + ")";
#ifdef IOATTN_WITH_CUDA
  std::string name;
  s = cuda::select(p, false, &name);
  return s.ok() ? "cuda: " + name : "none: " + s.message;
#else
  return "none: built without CUDA";
#endif
}

BuildInfo build_info() {
  BuildInfo b;
  b.version = "0.1.0";
  b.cpu_features = cpu::features();
#ifdef IOATTN_WITH_CUDA
  b.cuda_compiled = true;
#ifdef IOATTN_HAVE_SM90
  b.cuda_sm90_kernels = true;
#endif
  b.cuda_device_count = cuda::device_count();
  b.cuda_devices = cuda::devices();
#endif
  return b;
}

// ---- Decoding over a KV cache (forward_kvcache) ---------------------------------------------------

namespace {
Status validate_kvcache_for_query(const TensorView& q, const TensorView& k_cache, const TensorView& v_cache,
                                  const KVCacheArgs& args, Params* p) {
  return validate_kvcache(KVCacheInputs{q, k_cache, v_cache, stand_in_output(q, v_cache), TensorView{}, args}, p);
}

Status kvcache_workspace(const Params& p, size_t* bytes) {
  return on_backend(p, [] { return Status::Ok(); }, [&] {
    Status sel = cuda::select_kvcache(p, nullptr, nullptr);
    if (sel.ok()) *bytes = cuda::kvcache_workspace_size(p);
    return sel;
  });
}
}  // namespace

Status forward_kvcache(const TensorView& q, const TensorView& k_cache, const TensorView& v_cache,
                       const TensorView& out, const TensorView& lse, const KVCacheArgs& args) {
  Params p;
  Status s = validate_kvcache(KVCacheInputs{q, k_cache, v_cache, out, lse, args}, &p);
  if (!s.ok()) return s;
  return on_backend(p, [&] { return cpu::forward_kvcache(p); }, [&] { return cuda::forward_kvcache(p); });
}

Status forward_kvcache_workspace_size(const TensorView& q, const TensorView& k_cache, const TensorView& v_cache,
                                      const KVCacheArgs& args, size_t* bytes) {
  *bytes = 0;
  Params p;
  Status s = validate_kvcache_for_query(q, k_cache, v_cache, args, &p);
  if (!s.ok()) return s;
  return kvcache_workspace(p, bytes);
}

std::string describe_kvcache_choice(const TensorView& q, const TensorView& k_cache, const TensorView& v_cache,
                                    const KVCacheArgs& args) {
  Params p;
  Status s = validate_kvcache_for_query(q, k_cache, v_cache, args, &p);
  if (!s.ok()) return std::string("none: ") + s.message;
  if (p.device == DeviceType::CPU) return "cpu: split-KV decode (" + cpu::features() + ")";
#ifdef IOATTN_WITH_CUDA
  std::string name;
  s = cuda::select_kvcache(p, &name, nullptr);
  return s.ok() ? "cuda: " + name : "none: " + s.message;
#else
  return "none: built without CUDA";
#endif
}

// ---- Paged prefill (forward_paged): the decode path with varlen queries -----------------------

Status forward_paged(const TensorView& q, const TensorView& k_cache, const TensorView& v_cache,
                     const TensorView& block_table, const TensorView& out, const TensorView& lse, const Args& args) {
  Params p;
  Status s = validate_paged(PagedInputs{q, k_cache, v_cache, block_table, out, lse, args}, &p);
  if (!s.ok()) return s;
  return on_backend(p, [&] { return cpu::forward_kvcache(p); }, [&] { return cuda::forward_kvcache(p); });
}

Status forward_paged_workspace_size(const TensorView& q, const TensorView& k_cache, const TensorView& v_cache,
                                    const TensorView& block_table, const Args& args, size_t* bytes) {
  *bytes = 0;
  PagedInputs in{q, k_cache, v_cache, block_table, stand_in_output(q, v_cache), TensorView{}, args};
  Params p;
  Status s = validate_paged(in, &p);
  if (!s.ok()) return s;
  return kvcache_workspace(p, bytes);
}

}  // namespace ioattn
