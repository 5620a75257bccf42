// launch_bwd_sm80 / bwd_workspace_bytes_sm80: the dtype × head-dim switch over the instantiated
// backward runners (bwd_kernel.cuh; one translation unit per head dim, bwd_hd<d>.cu).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <string>

#include "ioattn_cuda_head_dims.h"
#include "bwd_run.cuh"
#include "launch.h"

namespace ioattn::cuda::sm80 {

// fp32 workspace: D (B·Hq·Sq floats) rounded up to 64 floats (256 bytes), then, in the atomic
// (non-deterministic) mode, the dQ accumulator (B·Hq·Sq·d_pad floats, rounded up the same way;
// the deterministic mode writes dq directly from registers), then the sm90 backward's row
// statistics (2 · B·Hq·stats_rows floats: bwd::stats_offset, bwd_run.cuh), then its work-item
// counter (bwd::kSchedBytes at bwd::sched_offset). The sm80 kernels leave the last two parts unused;
// their size, 8 bytes per query row and 16 bytes, keeps one size for both paths.
size_t bwd_workspace_bytes_sm80(const Params& p) {
  const int d = padded_head_dim(std::max(p.head_dim, p.head_dim_v));
  const size_t rows = static_cast<size_t>(p.batch) * p.heads_q * p.seqlen_q;
  if (rows == 0 || d == 0) return 0;
  return static_cast<size_t>(bwd::sched_offset(p, d)) * sizeof(float) + bwd::kSchedBytes;
}

Status launch_bwd_sm80(const Params& p, cudaStream_t stream, void* workspace) {
  const int d = padded_head_dim(std::max(p.head_dim, p.head_dim_v));
  const bool bf16 = p.dtype == DType::BF16;
  switch (d) {
#define IOATTN_BWD_CASE(D) \
  case D: return bf16 ? run_bwd<__nv_bfloat16, D>(p, stream, workspace) : run_bwd<__half, D>(p, stream, workspace);
    IOATTN_FOR_EACH_HEAD_DIM(IOATTN_BWD_CASE)
#undef IOATTN_BWD_CASE
    default:
      return Status{ErrorCode::Unsupported, "q: no backward kernel instantiated for head dim " +
                                                std::to_string(p.head_dim) + " (IOATTN_CUDA_HEAD_DIMS)"};
  }
}

}  // namespace ioattn::cuda::sm80
