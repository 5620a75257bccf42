// ioattn._C: the nanobind module between Python and the C++ API (include/ioattn/ioattn.h).
//
// It knows nothing of PyTorch. Every tensor arrives as a plain tuple
//     (data_ptr: int, dtype: int, shape: tuple[int], stride: tuple[int], device_type: int, device_index: int)
// built by python/ioattn/_backend.py from a torch.Tensor (strides in elements, dtype codes of
// ioattn::DType, device codes of ioattn::DeviceType), or None for an absent optional tensor. The CUDA
// stream and the workspace are integers (a cudaStream_t and a device pointer), so this module never
// allocates, never synchronises and can run under CUDA-graph capture.
//
// A failed Status becomes a Python exception whose class follows the error code:
//   InvalidShape, InvalidValue, InvalidIndex -> ValueError
//   InvalidDType                             -> TypeError
//   Unsupported                              -> NotImplementedError (a RuntimeError)
//   everything else                          -> RuntimeError
// The message is the library's ("k: expected head_dim 128 like q, got 64") with the code appended.
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>

#include <cstdint>
#include <string>

#include "ioattn/ioattn.h"

namespace nb = nanobind;

namespace {

// A tuple from Python -> TensorView. Malformed tuples are a bug of the Python layer, not of the
// user, but they still raise instead of crashing.
ioattn::TensorView to_view(const char* name, nb::handle h) {
  ioattn::TensorView t;
  if (h.is_none()) return t;
  if (!nb::isinstance<nb::tuple>(h) || nb::len(h) != 6)
    throw nb::type_error((std::string(name) + ": expected a tensor descriptor tuple of 6 items").c_str());
  nb::tuple tup = nb::borrow<nb::tuple>(h);
  const uintptr_t ptr = nb::cast<uintptr_t>(tup[0]);
  const int dtype = nb::cast<int>(tup[1]);
  nb::tuple shape = nb::cast<nb::tuple>(tup[2]);
  nb::tuple stride = nb::cast<nb::tuple>(tup[3]);
  const int device = nb::cast<int>(tup[4]);
  const int device_index = nb::cast<int>(tup[5]);
  const size_t nd = nb::len(shape);
  if (nd == 0 || nd > static_cast<size_t>(ioattn::TensorView::kMaxDims) || nb::len(stride) != nd)
    throw nb::value_error((std::string(name) + ": expected 1 to 4 dimensions, got " + std::to_string(nd)).c_str());
  if (dtype < 0 || dtype > static_cast<int>(ioattn::DType::I32))
    throw nb::type_error((std::string(name) + ": unknown dtype code " + std::to_string(dtype)).c_str());
  if (device < 0 || device > static_cast<int>(ioattn::DeviceType::CUDA))
    throw nb::value_error((std::string(name) + ": unknown device code " + std::to_string(device)).c_str());
  t.data = reinterpret_cast<void*>(ptr);
  t.dtype = static_cast<ioattn::DType>(dtype);
  t.ndim = static_cast<int>(nd);
  for (size_t i = 0; i < nd; ++i) {
    t.shape[i] = nb::cast<int64_t>(shape[i]);
    t.stride[i] = nb::cast<int64_t>(stride[i]);
  }
  t.device = static_cast<ioattn::DeviceType>(device);
  t.device_index = device_index;
  // An empty tensor may have a null data pointer; the library reads "null" as "absent", and the
  // shape checks must still see the tensor. No element of an empty tensor is ever touched, so any
  // non-null address serves.
  if (t.data == nullptr) {
    static char empty_tensor_stand_in alignas(16)[16];
    t.data = empty_tensor_stand_in;
  }
  return t;
}

[[noreturn]] void raise_status(const ioattn::Status& s) {
  const std::string msg = s.message + " [ioattn " + ioattn::error_code_name(s.code) + "]";
  switch (s.code) {
    case ioattn::ErrorCode::InvalidShape:
    case ioattn::ErrorCode::InvalidValue:
    case ioattn::ErrorCode::InvalidIndex:
      throw nb::value_error(msg.c_str());
    case ioattn::ErrorCode::InvalidDType:
      throw nb::type_error(msg.c_str());
    case ioattn::ErrorCode::Unsupported:
      PyErr_SetString(PyExc_NotImplementedError, msg.c_str());
      throw nb::python_error();
    default:
      throw std::runtime_error(msg);
  }
}

void check(const ioattn::Status& s) {
  if (!s.ok()) raise_status(s);
}

// The Args fields that are not tensors of the problem, gathered in the order Python passes them.
ioattn::Args make_args(nb::handle cu_seqlens_q, nb::handle cu_seqlens_k, int max_seqlen_q, int max_seqlen_k,
                       nb::handle alibi_slopes, float softmax_scale, bool causal, int window_left,
                       int window_right, float softcap, float dropout_p, uint64_t seed, uint64_t offset,
                       bool deterministic, uintptr_t stream, uintptr_t workspace, size_t workspace_bytes) {
  ioattn::Args a;
  a.cu_seqlens_q = to_view("cu_seqlens_q", cu_seqlens_q);
  a.cu_seqlens_k = to_view("cu_seqlens_k", cu_seqlens_k);
  a.max_seqlen_q = max_seqlen_q;
  a.max_seqlen_k = max_seqlen_k;
  a.alibi_slopes = to_view("alibi_slopes", alibi_slopes);
  a.softmax_scale = softmax_scale;
  a.causal = causal;
  a.window_left = window_left;
  a.window_right = window_right;
  a.softcap = softcap;
  a.dropout_p = dropout_p;
  a.seed = seed;
  a.offset = offset;
  a.deterministic = deterministic;
  a.stream = reinterpret_cast<void*>(stream);
  a.workspace = reinterpret_cast<void*>(workspace);
  a.workspace_bytes = workspace_bytes;
  return a;
}

#define IOATTN_ARGS_PARAMS                                                                                   \
  nb::handle cu_seqlens_q, nb::handle cu_seqlens_k, int max_seqlen_q, int max_seqlen_k,                    \
      nb::handle alibi_slopes, float softmax_scale, bool causal, int window_left, int window_right,         \
      float softcap, float dropout_p, uint64_t seed, uint64_t offset, bool deterministic, uintptr_t stream, \
      uintptr_t workspace, size_t workspace_bytes
#define IOATTN_ARGS_FORWARD                                                                              \
  cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, alibi_slopes, softmax_scale, causal,         \
      window_left, window_right, softcap, dropout_p, seed, offset, deterministic, stream, workspace,      \
      workspace_bytes
#define IOATTN_ARGS_NAMES                                                                                  \
  nb::arg("cu_seqlens_q").none(), nb::arg("cu_seqlens_k").none(), nb::arg("max_seqlen_q"),               \
      nb::arg("max_seqlen_k"), nb::arg("alibi_slopes").none(), nb::arg("softmax_scale"), nb::arg("causal"), \
      nb::arg("window_left"), nb::arg("window_right"), nb::arg("softcap"), nb::arg("dropout_p"),          \
      nb::arg("seed"), nb::arg("offset"), nb::arg("deterministic"), nb::arg("stream"), nb::arg("workspace"), \
      nb::arg("workspace_bytes")

void forward(nb::handle q, nb::handle k, nb::handle v, nb::handle out, nb::handle lse, IOATTN_ARGS_PARAMS) {
  const ioattn::TensorView tq = to_view("q", q), tk = to_view("k", k), tv = to_view("v", v);
  const ioattn::TensorView tout = to_view("out", out), tlse = to_view("lse", lse);
  const ioattn::Args a = make_args(IOATTN_ARGS_FORWARD);
  ioattn::Status s;
  {
    // The CPU backend computes for as long as the problem takes; other Python threads may run.
    nb::gil_scoped_release release;
    s = ioattn::forward(tq, tk, tv, tout, tlse, a);
  }
  check(s);
}

void backward(nb::handle q, nb::handle k, nb::handle v, nb::handle out, nb::handle dout, nb::handle lse,
              nb::handle dq, nb::handle dk, nb::handle dv, IOATTN_ARGS_PARAMS) {
  const ioattn::TensorView tq = to_view("q", q), tk = to_view("k", k), tv = to_view("v", v);
  const ioattn::TensorView tout = to_view("out", out), tdout = to_view("dout", dout), tlse = to_view("lse", lse);
  const ioattn::TensorView tdq = to_view("dq", dq), tdk = to_view("dk", dk), tdv = to_view("dv", dv);
  const ioattn::Args a = make_args(IOATTN_ARGS_FORWARD);
  ioattn::Status s;
  {
    nb::gil_scoped_release release;
    s = ioattn::backward(tq, tk, tv, tout, tdout, tlse, tdq, tdk, tdv, a);
  }
  check(s);
}

size_t workspace_size(bool is_backward, nb::handle q, nb::handle k, nb::handle v, IOATTN_ARGS_PARAMS) {
  const ioattn::TensorView tq = to_view("q", q), tk = to_view("k", k), tv = to_view("v", v);
  const ioattn::Args a = make_args(IOATTN_ARGS_FORWARD);
  size_t bytes = 0;
  check(is_backward ? ioattn::backward_workspace_size(tq, tk, tv, a, &bytes)
                    : ioattn::forward_workspace_size(tq, tk, tv, a, &bytes));
  return bytes;
}

std::string describe_forward_choice(nb::handle q, nb::handle k, nb::handle v, IOATTN_ARGS_PARAMS) {
  const ioattn::TensorView tq = to_view("q", q), tk = to_view("k", k), tv = to_view("v", v);
  return ioattn::describe_forward_choice(tq, tk, tv, make_args(IOATTN_ARGS_FORWARD));
}

// ---- decoding over a KV cache --------------------------------------------------------------------

#define IOATTN_KV_PARAMS                                                                                   \
  nb::handle k_new, nb::handle v_new, nb::handle rotary_cos, nb::handle rotary_sin, bool rotary_interleaved, \
      nb::handle cache_seqlens, int cache_seqlen, nb::handle cache_batch_idx, nb::handle cache_leftpad,        \
      nb::handle block_table, nb::handle alibi_slopes, float softmax_scale, bool causal, int window_left,     \
      int window_right, float softcap, int num_splits, uintptr_t stream, uintptr_t workspace,                 \
      size_t workspace_bytes
#define IOATTN_KV_FORWARD                                                                                 \
  k_new, v_new, rotary_cos, rotary_sin, rotary_interleaved, cache_seqlens, cache_seqlen, cache_batch_idx,  \
      cache_leftpad, block_table, alibi_slopes, softmax_scale, causal, window_left, window_right, softcap,   \
      num_splits, stream, workspace, workspace_bytes
#define IOATTN_KV_NAMES                                                                                      \
  nb::arg("k_new").none(), nb::arg("v_new").none(), nb::arg("rotary_cos").none(), nb::arg("rotary_sin").none(), \
      nb::arg("rotary_interleaved"), nb::arg("cache_seqlens").none(), nb::arg("cache_seqlen"),                \
      nb::arg("cache_batch_idx").none(), nb::arg("cache_leftpad").none(), nb::arg("block_table").none(),      \
      nb::arg("alibi_slopes").none(), nb::arg("softmax_scale"), nb::arg("causal"), nb::arg("window_left"),    \
      nb::arg("window_right"), nb::arg("softcap"), nb::arg("num_splits"), nb::arg("stream"),                  \
      nb::arg("workspace"), nb::arg("workspace_bytes")

ioattn::KVCacheArgs make_kv_args(IOATTN_KV_PARAMS) {
  ioattn::KVCacheArgs a;
  a.k_new = to_view("k", k_new);
  a.v_new = to_view("v", v_new);
  a.rotary_cos = to_view("rotary_cos", rotary_cos);
  a.rotary_sin = to_view("rotary_sin", rotary_sin);
  a.rotary_interleaved = rotary_interleaved;
  a.cache_seqlens = to_view("cache_seqlens", cache_seqlens);
  a.cache_seqlen = cache_seqlen;
  a.cache_batch_idx = to_view("cache_batch_idx", cache_batch_idx);
  a.cache_leftpad = to_view("cache_leftpad", cache_leftpad);
  a.block_table = to_view("block_table", block_table);
  a.alibi_slopes = to_view("alibi_slopes", alibi_slopes);
  a.softmax_scale = softmax_scale;
  a.causal = causal;
  a.window_left = window_left;
  a.window_right = window_right;
  a.softcap = softcap;
  a.num_splits = num_splits;
  a.stream = reinterpret_cast<void*>(stream);
  a.workspace = reinterpret_cast<void*>(workspace);
  a.workspace_bytes = workspace_bytes;
  return a;
}

void forward_kvcache(nb::handle q, nb::handle k_cache, nb::handle v_cache, nb::handle out, nb::handle lse,
                     IOATTN_KV_PARAMS) {
  const ioattn::TensorView tq = to_view("q", q), tk = to_view("k_cache", k_cache), tv = to_view("v_cache", v_cache);
  const ioattn::TensorView tout = to_view("out", out), tlse = to_view("lse", lse);
  const ioattn::KVCacheArgs a = make_kv_args(IOATTN_KV_FORWARD);
  ioattn::Status s;
  {
    nb::gil_scoped_release release;
    s = ioattn::forward_kvcache(tq, tk, tv, tout, tlse, a);
  }
  check(s);
}

size_t kvcache_workspace_size(nb::handle q, nb::handle k_cache, nb::handle v_cache, IOATTN_KV_PARAMS) {
  const ioattn::TensorView tq = to_view("q", q), tk = to_view("k_cache", k_cache), tv = to_view("v_cache", v_cache);
  size_t bytes = 0;
  check(ioattn::forward_kvcache_workspace_size(tq, tk, tv, make_kv_args(IOATTN_KV_FORWARD), &bytes));
  return bytes;
}

std::string describe_kvcache_choice(nb::handle q, nb::handle k_cache, nb::handle v_cache, IOATTN_KV_PARAMS) {
  const ioattn::TensorView tq = to_view("q", q), tk = to_view("k_cache", k_cache), tv = to_view("v_cache", v_cache);
  return ioattn::describe_kvcache_choice(tq, tk, tv, make_kv_args(IOATTN_KV_FORWARD));
}

// ---- paged prefill: varlen queries over a paged cache (flash_attn_varlen_func with block_table) --

void forward_paged(nb::handle q, nb::handle k_cache, nb::handle v_cache, nb::handle block_table, nb::handle out,
                   nb::handle lse, IOATTN_ARGS_PARAMS) {
  const ioattn::TensorView tq = to_view("q", q), tk = to_view("k_cache", k_cache), tv = to_view("v_cache", v_cache);
  const ioattn::TensorView tbt = to_view("block_table", block_table);
  const ioattn::TensorView tout = to_view("out", out), tlse = to_view("lse", lse);
  const ioattn::Args a = make_args(IOATTN_ARGS_FORWARD);
  ioattn::Status s;
  {
    nb::gil_scoped_release release;
    s = ioattn::forward_paged(tq, tk, tv, tbt, tout, tlse, a);
  }
  check(s);
}

size_t paged_workspace_size(nb::handle q, nb::handle k_cache, nb::handle v_cache, nb::handle block_table,
                            IOATTN_ARGS_PARAMS) {
  const ioattn::TensorView tq = to_view("q", q), tk = to_view("k_cache", k_cache), tv = to_view("v_cache", v_cache);
  size_t bytes = 0;
  check(ioattn::forward_paged_workspace_size(tq, tk, tv, to_view("block_table", block_table),
                                             make_args(IOATTN_ARGS_FORWARD), &bytes));
  return bytes;
}

nb::dict build_info() {
  const ioattn::BuildInfo b = ioattn::build_info();
  nb::dict d;
  d["version"] = b.version;
  d["cuda_compiled"] = b.cuda_compiled;
  d["cuda_device_count"] = b.cuda_device_count;
  d["cpu_features"] = b.cpu_features;
  d["cuda_devices"] = b.cuda_devices;
  return d;
}

}  // namespace

NB_MODULE(_C, m) {
  m.doc() = "ioattn C++ core (raw pointers, shapes and strides; no framework types). "
            "Use the functions of the `ioattn` package instead.";
  m.def("forward", &forward, nb::arg("q"), nb::arg("k"), nb::arg("v"), nb::arg("out"), nb::arg("lse").none(),
        IOATTN_ARGS_NAMES, "Forward pass into caller-allocated out and lse.");
  m.def("backward", &backward, nb::arg("q"), nb::arg("k"), nb::arg("v"), nb::arg("out"), nb::arg("dout"),
        nb::arg("lse"), nb::arg("dq"), nb::arg("dk"), nb::arg("dv"), IOATTN_ARGS_NAMES,
        "Backward pass into caller-allocated dq, dk and dv.");
  m.def("workspace_size", &workspace_size, nb::arg("backward"), nb::arg("q"), nb::arg("k"), nb::arg("v"),
        IOATTN_ARGS_NAMES, "Device scratch bytes the call needs in `workspace` (0 on the CPU).");
  m.def("describe_forward_choice", &describe_forward_choice, nb::arg("q"), nb::arg("k"), nb::arg("v"),
        IOATTN_ARGS_NAMES, "Which backend and kernel would serve this forward call, and why.");
  m.def("forward_kvcache", &forward_kvcache, nb::arg("q"), nb::arg("k_cache"), nb::arg("v_cache"), nb::arg("out"),
        nb::arg("lse").none(), IOATTN_KV_NAMES,
        "Decoding over a (contiguous or paged) KV cache; appends k_new/v_new to the cache in place.");
  m.def("kvcache_workspace_size", &kvcache_workspace_size, nb::arg("q"), nb::arg("k_cache"), nb::arg("v_cache"),
        IOATTN_KV_NAMES, "Device scratch bytes forward_kvcache needs (0 on the CPU).");
  m.def("describe_kvcache_choice", &describe_kvcache_choice, nb::arg("q"), nb::arg("k_cache"), nb::arg("v_cache"),
        IOATTN_KV_NAMES, "The number of key splits and kernel forward_kvcache would use.");
  m.def("forward_paged", &forward_paged, nb::arg("q"), nb::arg("k_cache"), nb::arg("v_cache"), nb::arg("block_table"),
        nb::arg("out"), nb::arg("lse").none(), IOATTN_ARGS_NAMES,
        "Varlen queries over a paged KV cache (keys of sequence b through block_table[b]).");
  m.def("paged_workspace_size", &paged_workspace_size, nb::arg("q"), nb::arg("k_cache"), nb::arg("v_cache"),
        nb::arg("block_table"), IOATTN_ARGS_NAMES, "Device scratch bytes forward_paged needs (0 on the CPU).");
  m.def("build_info", &build_info, "Backends compiled in and devices found.");
  m.def("cpu_peak_scratch_bytes", &ioattn::cpu_peak_scratch_bytes);
  m.def("reset_cpu_peak_scratch_bytes", &ioattn::reset_cpu_peak_scratch_bytes);
  m.attr("DTYPE_F32") = static_cast<int>(ioattn::DType::F32);
  m.attr("DTYPE_F16") = static_cast<int>(ioattn::DType::F16);
  m.attr("DTYPE_BF16") = static_cast<int>(ioattn::DType::BF16);
  m.attr("DTYPE_I32") = static_cast<int>(ioattn::DType::I32);
  m.attr("DEVICE_CPU") = static_cast<int>(ioattn::DeviceType::CPU);
  m.attr("DEVICE_CUDA") = static_cast<int>(ioattn::DeviceType::CUDA);
}
