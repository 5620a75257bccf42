// ioattn::cuda — the host side of the CUDA backend (declared in src/core/backends.h).
//
// Layers of src/cuda, top to bottom:
//   backend.cu   (this file) select(): the one selector answering "can it run?" and "which kernel?";
//                device guard, alignment and head-dim limits, workspace sizes, the varlen
//                prefix-sum check, then the launcher call.
//   sm80/        launch.h: launchers per architecture family; fwd_* (forward) and bwd_* (backward)
//                kernels on mma.sync / ldmatrix / cp.async.
//   common/      device helpers both directions share: mma and tile loads, score transforms
//                (scale, softcap, ALiBi, masks, dropout), online softmax, varlen bounds.
// Validation of everything device-independent already happened (src/core/validate.cpp).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <initializer_list>
#include <sstream>
#include <string>
#include <vector>

#include "core/backends.h"
#include "core/checks.h"
#include "host_util.h"
#include "core/validate.h"
#include "core/validate_kvcache.h"
#include "ioattn_cuda_head_dims.h"
#include "sm80/bwd_run.cuh"
#include "sm80/fwd_config.h"
#include "sm80/launch.h"
#ifdef IOATTN_HAVE_SM90
#include "sm90/bwd_run.h"
#include "sm90/fwd_config.h"
#include "sm90/launch.h"
#endif

namespace ioattn {
namespace cuda {

namespace sm80 {
int padded_head_dim(int d) {
#define IOATTN_PAD_CASE(D) \
  if (d <= D) return D;
  IOATTN_FOR_EACH_HEAD_DIM(IOATTN_PAD_CASE)  // ascending
#undef IOATTN_PAD_CASE
  return 0;
}
}  // namespace sm80

namespace {

std::string instantiated_head_dims() {
  std::string s;
#define IOATTN_LIST_CASE(D) s += (s.empty() ? "" : ", ") + std::to_string(D);
  IOATTN_FOR_EACH_HEAD_DIM(IOATTN_LIST_CASE)
#undef IOATTN_LIST_CASE
  return s;
}


// The kernels read and write whole 16-byte chunks (8 fp16/bf16 elements): base pointers must be
// 16-byte aligned and every stride that is used (its dimension has more than one entry) a multiple
// of 8 elements.
struct StrideUse {
  const char* dim;
  int64_t stride;
  bool used;
};
Status check_alignment(const char* name, const void* ptr, std::initializer_list<StrideUse> strides) {
  if (reinterpret_cast<uintptr_t>(ptr) % 16 != 0)
    return make_error(ErrorCode::Misaligned, name, ": the GPU kernels need a 16-byte aligned pointer, got ", ptr,
               " (offset ", reinterpret_cast<uintptr_t>(ptr) % 16, " bytes)");
  for (const StrideUse& s : strides)
    if (s.used && s.stride % 8 != 0)
      return make_error(ErrorCode::Misaligned, name, ": the GPU kernels need a ", s.dim,
                 " stride that is a multiple of 8 elements (16 bytes), got ", s.stride);
  return Status::Ok();
}

Status check_head_dim(const char* name, int d) {
  if (d % 8 != 0 || d > 256)
    return make_error(ErrorCode::Unsupported, name, ": head_dim ", d,
               " is not supported on CUDA (multiples of 8 up to 256); the CPU backend takes any size");
  return Status::Ok();
}

Status check_device_index(const Params& p) {
  const int devices = device_count();
  if (p.device_index < 0 || p.device_index >= devices)
    return make_error(ErrorCode::DeviceMismatch, "q: device cuda:", p.device_index, " does not exist (", devices,
               " CUDA devices)");
  return Status::Ok();
}

#ifdef IOATTN_HAVE_SM90
// Whether the Hopper forward (sm90/) serves this call: a compute-capability 9.0 device, a build
// with sm_90a kernels for the head dim, no dropout (the sm80 kernel has it), and keys to read (TMA
// tensor maps have no empty dims, and the driver must accept the maps). IOATTN_SM90=0 in the
// environment turns it off (to compare the two paths, or to rule the sm90 kernels out when chasing
// a problem).
// What both directions need: not turned off, rows on both sides, a compute-capability 9.0 device.
bool sm90_eligible(const Params& p) {
  const char* env = std::getenv("IOATTN_SM90");
  if (env != nullptr && std::string(env) == "0") return false;
  if ((p.varlen ? p.total_k : p.seqlen_k) == 0 || (p.varlen ? p.total_q : p.seqlen_q) == 0) return false;
  int major = 0;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, p.device_index) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return major == 9;
}

bool use_sm90_forward(const Params& p) {
  if (p.dropout_p > 0.0f || sm90::forward_head_dim(std::max(p.head_dim, p.head_dim_v)) == 0) return false;
  return sm90_eligible(p) && sm90::forward_describable(p);
}

// Whether the Hopper backward (sm90/bwd_kernel.cuh) serves this call: as for the forward (no
// dropout: the sm80 kernels have its Philox mask), and an sm90 backward built for the call's sm80 head dim (the sm90
// kernel of the next head dim among 64, 128, 192, 256, with the sm80 workspace layout, and in the
// deterministic mode the dQ accumulator and order counters past it: workspace_size). Both modes.
// The default on compute capability 9.0 since it passed every GPU test and compute-sanitizer's
// racecheck on the H200 (bench/notes-sm90.md); IOATTN_SM90_BWD=0 turns the backward alone back to
// the sm80 kernels (IOATTN_SM90=0 turns off both directions).
bool use_sm90_backward(const Params& p) {
  const char* env = std::getenv("IOATTN_SM90_BWD");
  if (env != nullptr && std::string(env) == "0") return false;
  if (p.dropout_p > 0.0f) return false;
  const int acc = sm80::padded_head_dim(std::max(p.head_dim, p.head_dim_v));
  if (sm90::backward_head_dim(acc) == 0) return false;
  return sm90_eligible(p) && sm90::backward_describable(p, acc);
}
#endif  // IOATTN_HAVE_SM90

}  // namespace

// select() with the forward path it chose (sm90 or not) for forward() to follow.
static Status select_path(const Params& p, bool backward, std::string* kernel_name, bool* sm90_forward) {
  *sm90_forward = false;
  if (p.device != DeviceType::CUDA)
    return make_error(ErrorCode::DeviceMismatch, "q: the CUDA backend got tensors on the CPU");
  if (p.dtype == DType::F32)
    return make_error(ErrorCode::Unsupported, "q: fp32 is CPU-only; use fp16/bf16 on CUDA");
  if (p.dtype != DType::F16 && p.dtype != DType::BF16)
    return make_error(ErrorCode::InvalidDType, "q: expected fp16 or bf16 on CUDA, got ", dtype_name(p.dtype));
  if (Status s = check_head_dim("q", p.head_dim); !s.ok()) return s;
  if (Status s = check_head_dim("v", p.head_dim_v); !s.ok()) return s;
  const int d = sm80::padded_head_dim(std::max(p.head_dim, p.head_dim_v));
  if (d == 0)
    return make_error(ErrorCode::Unsupported, "q: head_dim ", std::max(p.head_dim, p.head_dim_v),
               " needs a kernel this build did not instantiate (IOATTN_CUDA_HEAD_DIMS = ",
               instantiated_head_dims(), ")");
  if (Status s = check_device_index(p); !s.ok()) return s;

  const bool batched = !p.varlen && p.batch > 1;
  const bool q_rows = p.varlen ? p.total_q > 1 : p.seqlen_q > 1;
  const bool k_rows = p.varlen ? p.total_k > 1 : p.seqlen_k > 1;
  const bool q_heads = p.heads_q > 1, k_heads = p.heads_k > 1;
  auto q_like = [&](const char* name, const void* ptr, int64_t bs, int64_t rs, int64_t hs) {
    return check_alignment(name, ptr, {{"batch", bs, batched}, {"row", rs, q_rows}, {"head", hs, q_heads}});
  };
  auto k_like = [&](const char* name, const void* ptr, int64_t bs, int64_t rs, int64_t hs) {
    return check_alignment(name, ptr, {{"batch", bs, batched}, {"row", rs, k_rows}, {"head", hs, k_heads}});
  };
  if (Status s = q_like("q", p.q, p.q_batch_stride, p.q_row_stride, p.q_head_stride); !s.ok()) return s;
  if (Status s = k_like("k", p.k, p.k_batch_stride, p.k_row_stride, p.k_head_stride); !s.ok()) return s;
  if (Status s = k_like("v", p.v, p.v_batch_stride, p.v_row_stride, p.v_head_stride); !s.ok()) return s;
  if (Status s = q_like("out", p.out, p.o_batch_stride, p.o_row_stride, p.o_head_stride); !s.ok()) return s;
  if (backward) {
    if (Status s = q_like("dout", p.dout, p.do_batch_stride, p.do_row_stride, p.do_head_stride); !s.ok()) return s;
    if (Status s = q_like("dq", p.dq, p.dq_batch_stride, p.dq_row_stride, p.dq_head_stride); !s.ok()) return s;
    if (Status s = k_like("dk", p.dk, p.dk_batch_stride, p.dk_row_stride, p.dk_head_stride); !s.ok()) return s;
    if (Status s = k_like("dv", p.dv, p.dv_batch_stride, p.dv_row_stride, p.dv_head_stride); !s.ok()) return s;
  }

  // Grid limits: every kernel puts its row/key blocks in grid.x (2^31 - 1), heads in grid.y and
  // batch in grid.z (65535 each).
  if (p.batch > 65535)
    return make_error(ErrorCode::Unsupported, "q: batch ", p.batch, " exceeds the CUDA kernels' 65535");
  if (p.heads_q > 65535)
    return make_error(ErrorCode::Unsupported, "q: heads ", p.heads_q, " exceed the CUDA kernels' 65535");

  std::ostringstream name;
#ifdef IOATTN_HAVE_SM90
  if (!backward && use_sm90_forward(p)) {
    *sm90_forward = true;
    const sm90::FwdTile tile = sm90::fwd_tile(sm90::forward_head_dim(std::max(p.head_dim, p.head_dim_v)), p);
    name << "sm90 forward (TMA + wgmma, warp-specialised), " << dtype_name(p.dtype) << ", head dim " << tile.head_dim;
    if (tile.head_dim_v != tile.head_dim) name << " (v " << tile.head_dim_v << ")";
    if (tile.head_dim != std::max(p.head_dim, p.head_dim_v))
      name << " (zero-padded from " << std::max(p.head_dim, p.head_dim_v) << ")";
    name << ", tile " << tile.block_m << "x" << tile.block_n << ", " << tile.stages << " stages, " << tile.consumers
         << " consumer warpgroups";
    int sms = 0;  // the grid run_fwd_tile launches (described only: a call's path needs no name)
    if (kernel_name && cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, p.device_index) != cudaSuccess)
      cudaGetLastError();
    if (sms > 0) {
      const int ctas = sm90::fwd_ctas(p, tile, sms);
      name << ", " << ctas << (tile.persistent ? " persistent CTAs" : " CTAs");
      const sm90::FwdTail tail = sm90::fwd_tail_cached(p, tile, ctas);
      if (tail.used()) name << ", the last " << tail.begin[ctas] << " tiles dealt by cost";
      if (sm90::fwd_dynamic(p, tile, ctas)) name << ", tiles taken from a counter (varlen)";
    }
    if (kernel_name) *kernel_name = name.str();
    return Status::Ok();
  }
#endif
  name << "sm80 " << (backward ? "backward" : "forward") << " (mma.sync), " << dtype_name(p.dtype) << ", head dim "
       << d;
  if (d != std::max(p.head_dim, p.head_dim_v)) name << " (zero-padded from " << std::max(p.head_dim, p.head_dim_v) << ")";
  if (!backward) {
    // The tile of the instantiation run_fwd will launch (plain or softcap/ALiBi/dropout: at d = 64
    // their key tiles differ).
    const sm80::FwdTile tile = sm80::fwd_tile(d, sm80::fwd_uses_mods(p), sm80::fwd_paired(d, p.device_index));
    name << ", tile " << tile.block_m << "x" << tile.block_n << ", " << tile.warps << " warps x " << tile.m_tiles
         << " m-tiles";
  } else {
#ifndef IOATTN_HAVE_SM80_BWD
    return make_error(ErrorCode::Unsupported, "backward: this build has no CUDA backward kernels (src/cuda/sm80/bwd_*.cu)");
#endif
#ifdef IOATTN_HAVE_SM90
    if (use_sm90_backward(p)) {
      std::ostringstream n90;
      const int k = sm90::sm90_columns(sm90::backward_head_dim(d), std::max(p.head_dim, p.head_dim_v));
      n90 << "sm90 backward (TMA + wgmma, warp-specialised), " << dtype_name(p.dtype) << ", head dim " << k;
      if (k != std::max(p.head_dim, p.head_dim_v)) n90 << " (zero-padded from " << std::max(p.head_dim, p.head_dim_v) << ")";
      n90 << ", " << sm90::bwd_block_n(k) << " keys x " << sm90::bwd_block_m(k) << " queries per step";
      n90 << ", persistent (dynamic item scheduler)";
      if (p.softcap > 0.0f || p.alibi_slopes != nullptr) n90 << ", softcap / ALiBi";
      if (p.deterministic) n90 << ", deterministic (dQ parts added in key-block order)";
      if (kernel_name) *kernel_name = n90.str();
      return Status::Ok();
    }
#endif
    if (p.deterministic) name << ", deterministic";
  }
  if (kernel_name) *kernel_name = name.str();
  return Status::Ok();
}

Status select(const Params& p, bool backward, std::string* kernel_name) {
  bool sm90_forward = false;
  return select_path(p, backward, kernel_name, &sm90_forward);
}

namespace {
// The forward's scratch: the sm90 forward's tile counter for varlen calls (fwd_dynamic); none
// otherwise. sm90_forward: select_path's choice.
size_t forward_workspace_bytes([[maybe_unused]] const Params& p, [[maybe_unused]] bool sm90_forward) {
#ifdef IOATTN_HAVE_SM90
  if (sm90_forward)
    return sm90::fwd_workspace_bytes(p, sm90::fwd_tile(sm90::forward_head_dim(std::max(p.head_dim, p.head_dim_v)), p));
#endif
  return 0;
}
}  // namespace

size_t workspace_size(const Params& p, bool backward) {
#ifdef IOATTN_HAVE_SM80_BWD
#ifdef IOATTN_HAVE_SM90
  // The sm90 backward's deterministic mode needs its accumulator and order counters past the
  // common layout (sm80/bwd_run.cuh, det_order_offset).
  if (backward && p.deterministic && sm80::bwd_workspace_bytes_sm80(p) > 0 && use_sm90_backward(p)) {
    const int acc = sm80::padded_head_dim(std::max(p.head_dim, p.head_dim_v));
    const int64_t ints = sm80::bwd::det_order_offset(p, acc) + sm80::bwd::det_order_count(p);
    return static_cast<size_t>((ints + 3) / 4 * 4) * sizeof(float);
  }
#endif
  if (backward) return sm80::bwd_workspace_bytes_sm80(p);
#endif
  if (backward) return 0;
  bool sm90_forward = false;
  if (!select_path(p, false, nullptr, &sm90_forward).ok()) return 0;
  return forward_workspace_bytes(p, sm90_forward);
}

Status forward(const Params& p) {
  bool sm90_forward = false;
  if (Status s = select_path(p, false, nullptr, &sm90_forward); !s.ok()) return s;
  const size_t need = forward_workspace_bytes(p, sm90_forward);
  if (need > 0 && (p.workspace == nullptr || p.workspace_bytes < need))
    return make_error(ErrorCode::WorkspaceTooSmall, "workspace: this forward needs ", need,
                      " bytes of device memory (forward_workspace_size), got ", p.workspace ? p.workspace_bytes : 0);
  DeviceGuard guard(p.device_index);
  if (Status s = guard.status(); !s.ok()) return s;
#ifdef IOATTN_HAVE_SM90
  if (sm90_forward) return sm90::launch_fwd_sm90(p, static_cast<cudaStream_t>(p.stream));
#endif
  return sm80::launch_fwd_sm80(p, static_cast<cudaStream_t>(p.stream));
}

Status backward(const Params& p) {
  if (Status s = select(p, true, nullptr); !s.ok()) return s;
#ifdef IOATTN_HAVE_SM80_BWD
  const size_t need = workspace_size(p, true);
  if (need > 0 && (p.workspace == nullptr || p.workspace_bytes < need))
    return make_error(ErrorCode::WorkspaceTooSmall, "workspace: backward needs ", need,
               " bytes of device memory (backward_workspace_size), got ", p.workspace ? p.workspace_bytes : 0);
  DeviceGuard guard(p.device_index);
  if (Status s = guard.status(); !s.ok()) return s;
#ifdef IOATTN_HAVE_SM90
  // The sm80 backward's workspace layout, and in the deterministic mode the part past it (workspace_size above).
  if (use_sm90_backward(p))
    return sm90::launch_bwd_sm90(p, sm80::padded_head_dim(std::max(p.head_dim, p.head_dim_v)),
                                 static_cast<cudaStream_t>(p.stream), p.workspace);
#endif
  return sm80::launch_bwd_sm80(p, static_cast<cudaStream_t>(p.stream), p.workspace);
#else
  return Status{ErrorCode::Unsupported, "backward: not built"};  // unreachable: select() said so
#endif
}

namespace {

// Whether work queued on `stream` now would run only at graph replay (stream capture). A legacy
// stream queried while another stream captures in global mode reports cudaErrorStreamCaptureImplicit:
// that counts as capturing too (a synchronous copy there would invalidate the capture).
Status is_capturing(cudaStream_t stream, bool* capturing) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  const cudaError_t e = cudaStreamIsCapturing(stream, &status);
  if (e == cudaErrorStreamCaptureImplicit) {
    cudaGetLastError();
    *capturing = true;
    return Status::Ok();
  }
  if (e != cudaSuccess) return cuda_error("querying the stream's capture state", e);
  *capturing = status != cudaStreamCaptureStatusNone;
  return Status::Ok();
}

// Device int32 arrays -> host vectors on the caller's stream, then one stream synchronisation.
struct HostCopy {
  const int32_t** param;  // the Params field to redirect to the host copy
  size_t count;
  std::vector<int32_t> data;
};
Status copy_to_host(std::vector<HostCopy>& copies, cudaStream_t stream, const char* what) {
  cudaError_t e = cudaSuccess;
  for (HostCopy& c : copies) {
    if (*c.param == nullptr || c.count == 0) continue;
    c.data.resize(c.count);
    e = cudaMemcpyAsync(c.data.data(), *c.param, c.count * sizeof(int32_t), cudaMemcpyDeviceToHost, stream);
    if (e != cudaSuccess) break;
  }
  if (e == cudaSuccess) e = cudaStreamSynchronize(stream);
  if (e != cudaSuccess) return make_error(ErrorCode::BackendError, what, ": copying the indices to the host: ", cudaGetErrorString(e));
  for (HostCopy& c : copies)
    if (!c.data.empty()) *c.param = c.data.data();
  return Status::Ok();
}

}  // namespace

// Device-resident index tensors (varlen cu_seqlens; the KV cache's cache_seqlens, cache_batch_idx,
// cache_leftpad and block_table). Outside stream capture they are copied to the host on the
// caller's stream (cudaMemcpyAsync + cudaStreamSynchronize: the one host synchronisation of such a
// call) and checked by the same host checks as CPU tensors (src/core/validate*.cpp). While the
// stream is being captured that copy is impossible (it would run only at replay), so the check is
// skipped and the kernels' clamping is the guard: every index read from these tensors is clamped
// into the tensors' bounds (src/cuda/common/seq.cuh), so malformed indices give wrong values for
// the sequences concerned, never an out-of-bounds access. Callers who capture should validate
// their indices once outside the graph.
Status check_cu_seqlens(const Params& p, int total_q, int total_k) {
  if (Status s = check_device_index(p); !s.ok()) return s;
  DeviceGuard guard(p.device_index);
  if (Status s = guard.status(); !s.ok()) return s;
  const cudaStream_t stream = static_cast<cudaStream_t>(p.stream);
  bool capturing = false;
  if (Status s = is_capturing(stream, &capturing); !s.ok() || capturing) return s;
  Params host = p;
  const size_t n = static_cast<size_t>(p.batch) + 1;
  std::vector<HostCopy> copies = {{&host.cu_seqlens_q, n, {}}, {&host.cu_seqlens_k, n, {}}};
  if (Status s = copy_to_host(copies, stream, "cu_seqlens"); !s.ok()) return s;
  return check_cu_seqlens_host(host, total_q, total_k);
}

Status check_kvcache_indices(const Params& p) {
  if (Status s = check_device_index(p); !s.ok()) return s;
  DeviceGuard guard(p.device_index);
  if (Status s = guard.status(); !s.ok()) return s;
  const cudaStream_t stream = static_cast<cudaStream_t>(p.stream);
  bool capturing = false;
  if (Status s = is_capturing(stream, &capturing); !s.ok() || capturing) return s;
  Params host = p;
  const size_t batch = static_cast<size_t>(p.batch);
  // The block table is read row by row: (batch - 1) * row stride + max_pages entries.
  const size_t table = batch == 0 ? 0 : (batch - 1) * static_cast<size_t>(p.block_table_batch_stride) + p.max_pages;
  std::vector<HostCopy> copies = {{&host.cache_seqlens, batch, {}},
                                  {&host.cache_batch_idx, batch, {}},
                                  {&host.cache_leftpad, batch, {}},
                                  {&host.block_table, table, {}}};
  if (Status s = copy_to_host(copies, stream, "kv cache"); !s.ok()) return s;
  return check_kvcache_indices_host(host);
}

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // no driver / no device: not an error for a build that also serves the CPU
    return 0;
  }
  return n;
}

std::string devices() {
  std::ostringstream os;
  const int n = device_count();
  for (int i = 0; i < n; ++i) {
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, i) != cudaSuccess) continue;
    char mem[32];
    std::snprintf(mem, sizeof(mem), "%.1f GiB", prop.totalGlobalMem / 1073741824.0);
    os << "cuda:" << i << " " << prop.name << " (sm_" << prop.major << prop.minor << ", " << prop.multiProcessorCount
       << " SMs, " << mem << ")\n";
  }
  return os.str();
}

}  // namespace cuda
}  // namespace ioattn
