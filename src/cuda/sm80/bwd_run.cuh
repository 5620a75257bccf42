// Host-side declarations of the sm80 backward (no device code): the per-(dtype, head dim) runner
// that bwd_sm80.cu dispatches to, defined in bwd_kernel.cuh and instantiated one head dim per
// translation unit (bwd_hd<d>.cu) so that builds parallelise and IOATTN_CUDA_HEAD_DIMS prunes.
#pragma once

#include <cuda_runtime.h>

#include "core/params.h"

namespace ioattn::cuda::sm80 {

namespace bwd {
// Workspace layout (fp32; sizes: bwd_workspace_bytes_sm80): D (B·Hq·Sq floats, row_index in
// bwd_kernel.cuh) at offset 0, rounded up to 64 floats (256 bytes); then, in the atomic mode, the
// dQ accumulator (B·Hq·Sq rows of the accumulator's head dim).
__host__ __device__ __forceinline__ int64_t dq_accum_offset(const Params& p) {
  return (static_cast<int64_t>(p.batch) * p.heads_q * p.seqlen_q + 63) / 64 * 64;
}
// The sm90 backward's row statistics, after the accumulator (or after D in the deterministic mode):
// two planes of B·Hq·stats_rows floats, LSE·log2(e) then D, per (batch, head) rows [0, stats_rows)
// with stats_rows = seqlen_q rounded up to 128 (the sm90 kernel's largest query step), so that
// every step's rows are one contiguous, 16-byte aligned run its producer copies with TMA. Rows past
// a sequence hold +inf (LSE: P = 0 there) and 0 (D). Written by bwd_preprocess when asked.
__host__ __device__ __forceinline__ int stats_rows(const Params& p) { return (p.seqlen_q + 127) / 128 * 128; }
__host__ __device__ __forceinline__ int64_t stats_plane(const Params& p) {
  return static_cast<int64_t>(p.batch) * p.heads_q * stats_rows(p);
}
__host__ __device__ __forceinline__ int64_t stats_offset(const Params& p, int acc_head_dim) {
  const int64_t rows = static_cast<int64_t>(p.batch) * p.heads_q * p.seqlen_q;
  return dq_accum_offset(p) + (p.deterministic ? 0 : (rows * acc_head_dim + 63) / 64 * 64);
}
// The sm90 backward's work-item counter, after the row statistics (256-byte aligned: every part
// before it is a multiple of 64 floats): one int that its CTAs take item indices from with atomicAdd
// (sm90/bwd_kernel.cuh), zeroed by bwd_preprocess before each launch. kSchedBytes keep the workspace
// a multiple of 16 bytes.
__host__ __device__ __forceinline__ int64_t sched_offset(const Params& p, int acc_head_dim) {
  return stats_offset(p, acc_head_dim) + 2 * stats_plane(p);
}
constexpr int kSchedBytes = 16;
// The sm90 backward's deterministic mode, past the common layout (its size: backend.cu's
// workspace_size adds it only where that kernel serves the call, so the sm80 path's deterministic
// mode keeps its smaller workspace): the dQ accumulator (as the atomic mode's, which the
// deterministic layout above lacks) at a 256-byte boundary after the counter, then the dQ order's
// counters, one int per (batch, query head, 64-row block, consumer warpgroup, chain): how many key
// blocks of the chain have added their part to those rows (sm90/bwd_kernel.cuh's writers), zeroed by
// bwd_preprocess.
// The parts are added in det_chains(p) chains, each into an accumulator of its own (planes of
// det_plane_rows rows, one after the other), in a fixed order within each chain; bwd_convert_dq sums
// the planes in plane order. A key block of rank r (its place in the order of adding) belongs to
// chain r % det_chains(p). Why: without a mask's right bound the items that start together (the
// first wave of CTAs, then the few that CTAs freed at about the same time take) are neighbouring
// key blocks of one head, and in one chain each of them waits for the previous one's part of every
// query block, a serial chain of reduce-add round trips (sm90/bwd_kernel.cuh's order protocol); in
// two chains neighbours add independently. Measured (H200, session 25, deterministic backward
// TFLOP/s against one chain): non-causal +1-10% with 2 chains (d = 64 / 128 / 256 at 2048 and 8192),
// 4 chains -5..+10%; under a causal mask, whose parts become ready in the order of adding anyway
// (decreasing key blocks), 2 chains -2..-10% and 4 chains -21..-39% (each plane is zeroed and
// summed: memory traffic a causal call's halved work does not hide), so causal / window calls keep one.
__host__ __device__ __forceinline__ int det_chains(const Params& p) { return p.window_right >= 0 ? 1 : 2; }
__host__ __device__ __forceinline__ int64_t det_plane_rows(const Params& p) {
  return (static_cast<int64_t>(p.batch) * p.heads_q * p.seqlen_q + 7) / 8 * 8;  // a multiple of 64 floats per plane
}
__host__ __device__ __forceinline__ int64_t det_accum_offset(const Params& p, int acc_head_dim) {
  return sched_offset(p, acc_head_dim) + 64;
}
__host__ __device__ __forceinline__ int64_t det_order_offset(const Params& p, int acc_head_dim) {
  return det_accum_offset(p, acc_head_dim) + det_chains(p) * det_plane_rows(p) * acc_head_dim;
}
__host__ __device__ __forceinline__ int det_row_blocks(const Params& p) { return (p.seqlen_q + 63) / 64; }
// One counter per (batch, query head, 64-row block, consumer warpgroup, chain), in that order.
__host__ __device__ __forceinline__ int64_t det_order_count(const Params& p) {
  return static_cast<int64_t>(p.batch) * p.heads_q * det_row_blocks(p) * 2 * det_chains(p);
}
}  // namespace bwd

// Launches preprocess, dkdv and (deterministic) dq or (atomic) convert on `stream`.
template <class T, int kHeadDim>
Status run_bwd(const Params& p, cudaStream_t stream, void* workspace);

}  // namespace ioattn::cuda::sm80

// Each bwd_hd<d>.cu expands IOATTN_FOR_EACH_HEAD_DIM (the generated list) with
// IOATTN_BWD_INSTANTIATE, which maps every head dim to IOATTN_BWD_ONLY_<d>: empty for all but the
// one that file redefines, so a file instantiates its head dim exactly when the list holds it.
#define IOATTN_BWD_INSTANTIATE(D) IOATTN_BWD_ONLY_##D
#define IOATTN_BWD_ONLY_32
#define IOATTN_BWD_ONLY_64
#define IOATTN_BWD_ONLY_96
#define IOATTN_BWD_ONLY_128
#define IOATTN_BWD_ONLY_160
#define IOATTN_BWD_ONLY_192
#define IOATTN_BWD_ONLY_224
#define IOATTN_BWD_ONLY_256
#define IOATTN_BWD_RUNNERS(D)                                                              \
  template Status run_bwd<__half, D>(const Params&, cudaStream_t, void*);                 \
  template Status run_bwd<__nv_bfloat16, D>(const Params&, cudaStream_t, void*);
