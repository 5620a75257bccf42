// Host side of the GPU decode path (forward_kvcache; declared in src/core/backends.h):
// select_kvcache() answers "can it run?" and "which kernel, how many splits?", the launcher runs
// append -> (with splits: zero the arrival counters) -> attend, whose last block per group merges
// the splits, on the caller's stream with the caller's workspace (no allocation, no host
// synchronisation). Device-resident index tensors are checked during validation:
// forward_kvcache's by check_kvcache_indices() in backend.cu, forward_paged's by
// check_paged_indices() here. The kernels are in decode_kernels.cuh.
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <initializer_list>
#include <sstream>
#include <string>
#include <vector>

#include "core/backends.h"
#include "core/checks.h"
#include "host_util.h"
#include "core/softmax_state.h"
#include "core/validate_kvcache.h"
#include "decode_kernels.cuh"

namespace ioattn::cuda {
namespace {


int padded_dim(int d) { return d <= 64 ? 64 : (d <= 128 ? 128 : 256); }

// Per padded head dim: the block's packed rows, keys per block tile, pipeline stages and shared
// memory (the attend kernel's K/V stages: ~96 KiB, so sm90's 227 KiB hold two blocks, sm80's 164
// KiB one; on devices whose blocks may use less (sm_86 / sm_89: 99 KiB) the fewer-stage variant).
struct Config {
  int kd, block_m, block_n, stages;  // stages: 0 = the default depth, else decode::kFewStages<kd>
  size_t smem;
};
template <int kD, int kStagesT>
Config config_of() {
  using C = decode::Tile<kD, kStagesT>;
  return {kD, C::kM, C::kN, kStagesT, C::kSmemBytes};
}
template <int kD>
Config config_fit(size_t smem_optin) {
  const bool fits = smem_optin == 0 || decode::Tile<kD>::kSmemBytes <= smem_optin;  // 0: unknown, try the default
  return fits ? config_of<kD, 0>() : config_of<kD, decode::kFewStages<kD>>();
}
Config config_for(int kd, size_t smem_optin) {
  switch (kd) {
    case 64: return config_fit<64>(smem_optin);
    case 128: return config_fit<128>(smem_optin);
    default: return config_fit<256>(smem_optin);
  }
}

struct DeviceLimits {
  int cc_major = 0;
  int sms = 0;
  size_t smem_per_sm = 0;
  size_t smem_optin = 0;  // the most dynamic shared memory one block may opt in to
};
DeviceLimits limits(int device) {
  DeviceLimits l;
  int v = 0;
  if (cudaDeviceGetAttribute(&v, cudaDevAttrComputeCapabilityMajor, device) == cudaSuccess) l.cc_major = v;
  if (cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, device) == cudaSuccess) l.sms = v;
  if (cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device) == cudaSuccess)
    l.smem_per_sm = static_cast<size_t>(v);
  if (cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) == cudaSuccess)
    l.smem_optin = static_cast<size_t>(v);
  cudaGetLastError();
  return l;
}

int64_t m_blocks(const Params& p, const Config& c) {
  return (static_cast<int64_t>(p.seqlen_q) * p.group + c.block_m - 1) / c.block_m;
}
dim3 attend_grid(const Params& p, const Config& c, int splits) {
  return dim3(static_cast<unsigned>(splits), static_cast<unsigned>(p.heads_k * m_blocks(p, c)), static_cast<unsigned>(p.batch));
}

// Splits from the shape. Measured on the H200 (bench/notes-decode.md): with two attend blocks
// resident per SM the kernel streams at the copy bandwidth, so the time is set by the SM with the
// most K/V tiles to read; an SM with two blocks reads them at the same rate as with one wave of
// more. So: the most splits whose (batch x kv heads x row blocks x non-empty splits) blocks still
// fit in one wave of resident blocks (SMs x blocks per SM by shared memory): every SM then holds
// up to two blocks of equal length. (flash-attn 2's rule, the smallest split count within 85% of
// the best wave efficiency, left most SMs with one block and a few with two: at batch 1 and 128k
// keys it chose 29 splits, 232 blocks on 132 SMs, and ran at 76% of copy.) Work that fills the
// wave on its own is not split. The key tiles are those of the cache capacity (the per-sequence
// lengths are on the device; the capacity bounds them). Capped at kMaxSplits (the merge's LSEs
// per lane) and at the key tiles.
int splits_for(const Params& p, const Config& c, const DeviceLimits& l) {
  const int key_tiles = std::max(1, (p.seqlen_k + c.block_n - 1) / c.block_n);
  constexpr int kMaxSplits = decode::kMaxSplits;
  if (p.num_splits > 0) return std::min({p.num_splits, key_tiles, kMaxSplits});
  const int per_sm = l.smem_per_sm > 0 ? std::max<int>(1, static_cast<int>(l.smem_per_sm / (c.smem + 1024))) : 1;
  const long long slots = static_cast<long long>(std::max(1, l.sms)) * per_sm;
  const long long work = static_cast<long long>(p.batch) * p.heads_k * m_blocks(p, c);
  for (int s = std::min(kMaxSplits, key_tiles); s > 1; --s) {
    const int per_split = (key_tiles + s - 1) / s;
    const int nonempty = (key_tiles + per_split - 1) / per_split;  // the attend kernel's real splits
    if (work * nonempty <= slots) return nonempty;  // the same tiles per split, no empty splits
  }
  return 1;
}

// The workspace with splits > 1: [arrival counters | partial LSEs | partial outputs], each part
// 16-byte aligned. The counters (one per attend group: batch x kv heads x row blocks) come first
// and are the only part zeroed per call; the partials are written before they are read.
size_t align16(size_t x) { return (x + 15) / 16 * 16; }
int64_t groups(const Params& p, const Config& c) { return static_cast<int64_t>(p.batch) * p.heads_k * m_blocks(p, c); }
size_t arrival_bytes(const Params& p, const Config& c) { return align16(sizeof(unsigned) * groups(p, c)); }
size_t partial_lse_bytes(const Params& p, int splits) {
  return align16(sizeof(float) * splits * static_cast<size_t>(p.batch) * p.heads_q * p.seqlen_q);
}
size_t workspace_for(const Params& p, const Config& c, int splits, bool cluster) {
  if (splits <= 1 || cluster) return 0;
  return arrival_bytes(p, c) + partial_lse_bytes(p, splits) +
         sizeof(float) * splits * static_cast<size_t>(p.batch) * p.heads_q * p.seqlen_q * p.head_dim_v;
}

// The cluster-merge kernel (decode::cluster_merge): its launch configuration (cluster dims
// (splits, 1, 1): one cluster per group), its attributes (more than 48 KiB of dynamic shared
// memory; clusters of more than 8 blocks), and how many clusters of `splits` of its blocks can be
// resident at once (cudaOccupancyMaxActiveClusters: a cluster's blocks must share one GPC; 0: none).
template <class C>
cudaLaunchConfig_t cluster_config(int splits, const dim3& grid, cudaStream_t stream, cudaLaunchAttribute* attr) {
  attr->id = cudaLaunchAttributeClusterDimension;
  attr->val.clusterDim.x = static_cast<unsigned>(splits);
  attr->val.clusterDim.y = 1;
  attr->val.clusterDim.z = 1;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = dim3(C::kThreads);
  cfg.dynamicSmemBytes = C::kSmemBytes;
  cfg.stream = stream;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  return cfg;
}

template <class T, int kD>
cudaError_t cluster_kernel_setup(int splits) {
  auto* kernel = decode::attend_kernel<T, kD, 0, true>;
  cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(decode::Tile<kD>::kSmemBytes));
  if (e == cudaSuccess)
    e = cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, cudaSharedmemCarveoutMaxShared);
  if (e == cudaSuccess && splits > 8) e = cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1);
  return e;
}

template <class T, int kD>
int cluster_capacity(int splits, const dim3& grid) {
  cudaLaunchAttribute attr;
  const cudaLaunchConfig_t cfg = cluster_config<decode::Tile<kD>>(splits, grid, nullptr, &attr);
  int clusters = 0;
  if (cluster_kernel_setup<T, kD>(splits) != cudaSuccess ||
      cudaOccupancyMaxActiveClusters(&clusters, decode::attend_kernel<T, kD, 0, true>, &cfg) != cudaSuccess)
    clusters = 0;
  cudaGetLastError();  // "cannot tell" counts as "none": the global merge runs
  return clusters;
}

template <class T, int kD>
cudaError_t launch_attend_cluster(const Params& p, int splits, const dim3& grid, cudaStream_t stream) {
  if (cudaError_t e = cluster_kernel_setup<T, kD>(splits); e != cudaSuccess) return e;
  cudaLaunchAttribute attr;
  const cudaLaunchConfig_t cfg = cluster_config<decode::Tile<kD>>(splits, grid, stream, &attr);
  const auto divs = decode::AttendDivs::make(p, (p.seqlen_q * p.group + decode::Tile<kD>::kM - 1) / decode::Tile<kD>::kM,
                                             splits);  // row blocks per kv head, as attend_grid's m_blocks
  return cudaLaunchKernelEx(&cfg, decode::attend_kernel<T, kD, 0, true>, p, splits, divs, static_cast<float*>(nullptr),
                            static_cast<float*>(nullptr), static_cast<unsigned*>(nullptr));
}

template <class T, int kD, int kStagesT>
cudaError_t launch_attend(const Params& p, int splits, float* part_o, float* part_lse, unsigned* arrivals,
                          cudaStream_t stream) {
  using C = decode::Tile<kD, kStagesT>;
  // Opt in to more than 48 KiB of dynamic shared memory (a function attribute, not a stream
  // operation: legal during capture).
  cudaError_t e = cudaFuncSetAttribute(decode::attend_kernel<T, kD, kStagesT>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(C::kSmemBytes));
  if (e == cudaSuccess)
    e = cudaFuncSetAttribute(decode::attend_kernel<T, kD, kStagesT>, cudaFuncAttributePreferredSharedMemoryCarveout,
                             cudaSharedmemCarveoutMaxShared);
  if (e != cudaSuccess) return e;
  const int row_blocks = (p.seqlen_q * p.group + C::kM - 1) / C::kM;
  const dim3 grid(splits, static_cast<unsigned>(p.heads_k * row_blocks), p.batch);
  decode::attend_kernel<T, kD, kStagesT><<<grid, C::kThreads, C::kSmemBytes, stream>>>(
      p, splits, decode::AttendDivs::make(p, row_blocks, splits), part_o, part_lse, arrivals);
  return cudaGetLastError();
}

template <class T>
cudaError_t launch_all(const Params& p, const Config& c, int splits, bool cluster, cudaStream_t stream) {
  if (p.seqlen_new > 0 && p.batch > 0) {
    decode::append_kernel<T><<<dim3(p.batch * p.seqlen_new, p.heads_k), 128, 0, stream>>>(p);
    if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  }
  if (p.batch == 0 || p.seqlen_q == 0) return cudaSuccess;
  if (cluster) {  // the split merge inside the cluster: no workspace, no counters to zero
    const dim3 grid = attend_grid(p, c, splits);
    switch (c.kd) {
      case 64: return launch_attend_cluster<T, 64>(p, splits, grid, stream);
      case 128: return launch_attend_cluster<T, 128>(p, splits, grid, stream);
      default: return launch_attend_cluster<T, 256>(p, splits, grid, stream);
    }
  }
  unsigned* arrivals = nullptr;
  float *part_lse = nullptr, *part_o = nullptr;
  if (splits > 1) {
    char* ws = static_cast<char*>(p.workspace);
    arrivals = reinterpret_cast<unsigned*>(ws);
    part_lse = reinterpret_cast<float*>(ws + arrival_bytes(p, c));
    part_o = reinterpret_cast<float*>(ws + arrival_bytes(p, c) + partial_lse_bytes(p, splits));
    // The workspace arrives uninitialised (torch.empty), so the counters are zeroed on the stream
    // every call: a memset node under capture, no host synchronisation. The merging block does not
    // reset its counter afterwards: with this memset it would be a second, redundant write, and
    // the memset alone also recovers from a call that was aborted midway.
    if (cudaError_t e = cudaMemsetAsync(arrivals, 0, arrival_bytes(p, c), stream); e != cudaSuccess) return e;
  }
  const bool few = c.stages != 0;
  switch (c.kd) {
    case 64:
      return few ? launch_attend<T, 64, decode::kFewStages<64>>(p, splits, part_o, part_lse, arrivals, stream)
                 : launch_attend<T, 64, 0>(p, splits, part_o, part_lse, arrivals, stream);
    case 128:
      return few ? launch_attend<T, 128, decode::kFewStages<128>>(p, splits, part_o, part_lse, arrivals, stream)
                 : launch_attend<T, 128, 0>(p, splits, part_o, part_lse, arrivals, stream);
    default:
      return few ? launch_attend<T, 256, decode::kFewStages<256>>(p, splits, part_o, part_lse, arrivals, stream)
                 : launch_attend<T, 256, 0>(p, splits, part_o, part_lse, arrivals, stream);
  }
}

Status check_cache_alignment(const char* name, const void* ptr, int64_t outer, int64_t row, int64_t head,
                             const Params& p) {
  if (reinterpret_cast<uintptr_t>(ptr) % 16 != 0)
    return make_error(ErrorCode::Misaligned, name, ": the GPU decode kernels copy 16-byte chunks and need a 16-byte aligned "
               "pointer, got offset ", reinterpret_cast<uintptr_t>(ptr) % 16);
  const std::pair<const char*, int64_t> strides[] = {{p.page_size ? "page" : "batch", p.cache_batch > 1 ? outer : 0},
                                                     {"row", row}, {"head", p.heads_k > 1 ? head : 0}};
  for (auto [dim, s] : strides)
    if (s % 8 != 0)
      return make_error(ErrorCode::Misaligned, name, ": the GPU decode kernels need a ", dim,
                 " stride that is a multiple of 8 elements (16 bytes), got ", s);
  return Status::Ok();
}

// What a call runs: the validated shape's tile configuration (by padded head dim and the
// device's shared memory per block) and split count.
struct Plan {
  Config c;
  int splits = 1;
  bool cluster = false;  // the split merge in a thread-block cluster (decode::cluster_merge)
};

// Whether a call with `splits` splits merges them in a cluster: sm_90 code in this build and an sm_90
// device, 2..16 splits (the largest cluster), the default tiles (the fewer-stage ones are for
// devices without clusters), and every group's cluster resident at once. The last condition is
// measured, not cosmetic: a cluster's blocks must share one GPC, so fewer clusters fit than
// splits_for's block count assumes; at batch 8 x 8 kv heads (64 groups of 4 splits) the clustered
// launch took a second wave and ran 15-25% slower than the global merge (H200, session 6), while
// at batch 1 (8 groups) it saved ~0.9 us per call.
// IOATTN_DECODE_CLUSTER=0 in the environment turns it off (to compare the two merges).
bool use_cluster_merge(const Params& p, const Config& c, int splits, const DeviceLimits& l) {
#ifdef IOATTN_HAVE_SM90
  const char* env = std::getenv("IOATTN_DECODE_CLUSTER");
  if (env != nullptr && std::string(env) == "0") return false;
  if (splits < 2 || splits > decode::kMaxClusterSplits || c.stages != 0 || l.cc_major != 9) return false;
  // The driver's answer depends on the kernel, the cluster size and the device, not on the call:
  // asked once per (device, dtype, head dim, splits) and kept (every call plans twice: workspace
  // size and launch). Kept as clusters + 1; 0: not asked yet.
  static std::atomic<int> known[16][2][3][decode::kMaxClusterSplits + 1];
  const bool f16 = p.dtype == DType::F16;
  const int kdi = c.kd == 64 ? 0 : (c.kd == 128 ? 1 : 2);
  std::atomic<int>* slot = p.device_index >= 0 && p.device_index < 16 ? &known[p.device_index][f16][kdi][splits] : nullptr;
  int clusters = slot ? slot->load(std::memory_order_relaxed) - 1 : -1;
  if (clusters < 0) {
    const dim3 grid = attend_grid(p, c, splits);
    DeviceGuard guard(p.device_index);  // the attributes and the occupancy query are the current device's
    if (!guard.status().ok()) return false;
    switch (c.kd) {
      case 64: clusters = f16 ? cluster_capacity<__half, 64>(splits, grid) : cluster_capacity<__nv_bfloat16, 64>(splits, grid); break;
      case 128: clusters = f16 ? cluster_capacity<__half, 128>(splits, grid) : cluster_capacity<__nv_bfloat16, 128>(splits, grid); break;
      default: clusters = f16 ? cluster_capacity<__half, 256>(splits, grid) : cluster_capacity<__nv_bfloat16, 256>(splits, grid); break;
    }
    if (slot) slot->store(clusters + 1, std::memory_order_relaxed);
  }
  return clusters > 0 && groups(p, c) <= clusters;
#else
  (void)p, (void)c, (void)splits, (void)l;
  return false;
#endif
}

Status plan_kvcache(const Params& p, Plan* out) {
  if (p.device != DeviceType::CUDA) return make_error(ErrorCode::DeviceMismatch, "q: the CUDA backend got tensors on the CPU");
  if (p.dtype == DType::F32) return make_error(ErrorCode::Unsupported, "q: fp32 is CPU-only; use fp16/bf16 on CUDA");
  if (p.dtype != DType::F16 && p.dtype != DType::BF16)
    return make_error(ErrorCode::InvalidDType, "q: expected fp16 or bf16 on CUDA, got ", dtype_name(p.dtype));
  for (auto [name, d] : {std::pair<const char*, int>{"q", p.head_dim}, {"v_cache", p.head_dim_v}})
    if (d % 8 != 0 || d > 256)
      return make_error(ErrorCode::Unsupported, name, ": head_dim ", d,
                 " is not supported by the CUDA decode kernels (multiples of 8 up to 256); the CPU backend takes any size");
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess) {
    cudaGetLastError();
    devices = 0;
  }
  if (p.device_index < 0 || p.device_index >= devices)
    return make_error(ErrorCode::DeviceMismatch, "q: device cuda:", p.device_index, " does not exist (", devices, " CUDA devices)");
  if (Status s = check_cache_alignment("k_cache", p.k, p.k_batch_stride, p.k_row_stride, p.k_head_stride, p); !s.ok())
    return s;
  if (Status s = check_cache_alignment("v_cache", p.v, p.v_batch_stride, p.v_row_stride, p.v_head_stride, p); !s.ok())
    return s;
  const DeviceLimits l = limits(p.device_index);
  const Config c = config_for(padded_dim(std::max(p.head_dim, p.head_dim_v)), l.smem_optin);
  if (p.batch > 65535) return make_error(ErrorCode::Unsupported, "q: batch ", p.batch, " exceeds the decode kernels' 65535");
  if (static_cast<int64_t>(p.heads_k) * m_blocks(p, c) > 65535)
    return make_error(ErrorCode::Unsupported, "q: heads_k x ceil(seqlen_q x group / ", c.block_m, ") = ",
               static_cast<int64_t>(p.heads_k) * m_blocks(p, c), " exceeds the decode kernels' 65535 row blocks");
  if (static_cast<int64_t>(p.batch) * p.seqlen_new > 2147483647LL)
    return make_error(ErrorCode::Unsupported, "k_new: batch x seqlen_new exceeds 2^31 - 1");
  out->c = c;
  out->splits = splits_for(p, c, l);
  out->cluster = use_cluster_merge(p, c, out->splits, l);
  // Few groups over many splits (batch 1-2): where the heuristic spreads the keys over more splits
  // than a cluster takes (merged through global memory), 8 splits merged in a cluster are faster
  // while each keeps at most 1024 keys. H200 sweep (session 6, batch 1, 32 / 8 heads, d 128;
  // bench/results/decode-profile-*-s6-split-sweep.txt): kernel time 2k keys 11.6 -> 10.3 us, 4k
  // 14.4 -> 13.1, 8k 19.4 -> 19.0, but 16k 29.1 -> 30.3 (2048 keys per split: too few blocks
  // streaming); batch 2 x 4k 18.8 -> 17.9. Contiguous caches only: paged ones lost (batch 1 x 8k,
  // page 16: 23.6 -> 28.6 us per call, page 256: 23.4 -> 23.8).
  constexpr int kClusterSplits = 8, kClusterKeys = 1024;
  if (p.num_splits <= 0 && p.page_size == 0 && out->splits > decode::kMaxClusterSplits &&
      p.seqlen_k <= static_cast<int64_t>(kClusterSplits) * kClusterKeys && use_cluster_merge(p, c, kClusterSplits, l)) {
    out->splits = kClusterSplits;
    out->cluster = true;
  }
  return Status::Ok();
}

}  // namespace

Status select_kvcache(const Params& p, std::string* kernel_name, int* splits_out) {
  Plan plan;
  IOATTN_TRY(plan_kvcache(p, &plan));
  const Config& c = plan.c;
  const int splits = plan.splits;
  if (splits_out) *splits_out = splits;
  if (kernel_name) {
    std::ostringstream os;
    os << "decode split-KV (mma.sync, per-warp cp.async pipeline), " << dtype_name(p.dtype) << ", head dim " << c.kd << ", tile "
       << c.block_m << " packed rows x " << c.block_n << " keys, " << splits
       << (splits == 1 ? " split" : plan.cluster ? " splits, merged in a thread-block cluster" : " splits, merged by the last block")
       << (p.page_size ? ", paged" : ", contiguous") << (p.num_splits > 0 ? " (num_splits given)" : " (heuristic)")
       << (c.stages != 0 ? ", fewer stages (small shared memory)" : "");
    *kernel_name = os.str();
  }
  return Status::Ok();
}

size_t kvcache_workspace_size(const Params& p) {
  Plan plan;
  if (!plan_kvcache(p, &plan).ok()) return 0;
  return workspace_for(p, plan.c, plan.splits, plan.cluster);
}

Status forward_kvcache(const Params& p) {
  Plan plan;
  IOATTN_TRY(plan_kvcache(p, &plan));
  const int splits = plan.splits;
  const size_t need = workspace_for(p, plan.c, splits, plan.cluster);
  if (need > 0 && (p.workspace == nullptr || p.workspace_bytes < need))
    return make_error(ErrorCode::WorkspaceTooSmall, "workspace: forward_kvcache needs ", need,
               " bytes of device memory (forward_kvcache_workspace_size) for ", splits, " splits, got ",
               p.workspace ? p.workspace_bytes : 0);
  if (need > 0 && reinterpret_cast<uintptr_t>(p.workspace) % 16 != 0)
    return make_error(ErrorCode::Misaligned, "workspace: the GPU decode kernels store 16-byte vectors of partial results "
               "and need a 16-byte aligned workspace, got offset ", reinterpret_cast<uintptr_t>(p.workspace) % 16);
  DeviceGuard guard(p.device_index);
  IOATTN_TRY(guard.status());
  const cudaStream_t stream = static_cast<cudaStream_t>(p.stream);
  const cudaError_t e = p.dtype == DType::F16 ? launch_all<__half>(p, plan.c, splits, plan.cluster, stream)
                                              : launch_all<__nv_bfloat16>(p, plan.c, splits, plan.cluster, stream);
  if (e != cudaSuccess) return cuda_error("forward_kvcache: launching the decode kernels", e);
  return Status::Ok();
}

// forward_paged's device-resident indices (cu_seqlens_q / _k and the block table), as backend.cu
// does for forward_kvcache: outside stream capture they are copied to the host on the caller's
// stream and checked there (the one host synchronisation of the call); under capture the kernels'
// clamping (src/core/kvcache.h) is the guard.
Status check_paged_indices(const Params& p, int max_seqlen_k) {
  DeviceGuard guard(p.device_index);
  IOATTN_TRY(guard.status());
  const cudaStream_t stream = static_cast<cudaStream_t>(p.stream);
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  cudaError_t e = cudaStreamIsCapturing(stream, &capture);
  if (e == cudaErrorStreamCaptureImplicit) {  // legacy stream while another stream captures globally
    cudaGetLastError();
    return Status::Ok();
  }
  if (e != cudaSuccess) return cuda_error("paged indices: querying the stream's capture state", e);
  if (capture != cudaStreamCaptureStatusNone) return Status::Ok();
  const size_t n = static_cast<size_t>(p.batch);
  std::vector<int32_t> cu_q(n + 1), cu_k(n + 1), table(n * static_cast<size_t>(p.max_pages));
  e = cudaMemcpyAsync(cu_q.data(), p.cu_seqlens_q, cu_q.size() * sizeof(int32_t), cudaMemcpyDeviceToHost, stream);
  if (e == cudaSuccess)
    e = cudaMemcpyAsync(cu_k.data(), p.cu_seqlens_k, cu_k.size() * sizeof(int32_t), cudaMemcpyDeviceToHost, stream);
  for (size_t b = 0; b < n && p.max_pages > 0 && e == cudaSuccess; ++b)  // rows may be strided
    e = cudaMemcpyAsync(table.data() + b * p.max_pages, p.block_table + b * p.block_table_batch_stride,
                        sizeof(int32_t) * p.max_pages, cudaMemcpyDeviceToHost, stream);
  if (e == cudaSuccess) e = cudaStreamSynchronize(stream);
  if (e != cudaSuccess) return cuda_error("paged indices: copying the indices to the host", e);
  Params host = p;
  host.cu_seqlens_q = cu_q.data();
  host.cu_seqlens_k = cu_k.data();
  host.block_table = table.data();
  host.block_table_batch_stride = p.max_pages;
  return check_paged_indices_host(host, max_seqlen_k);
}

}  // namespace ioattn::cuda
