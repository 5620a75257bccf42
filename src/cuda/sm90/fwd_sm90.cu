// launch_fwd_sm90 / launch_bwd_sm90: the dtype x head-dim switches over the instantiated sm90
// kernels (one generated file per head dim and direction, src/cuda/CMakeLists.txt).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <string>

#include "fwd_config.h"
#include "ioattn_cuda_sm90_head_dims.h"
#include "bwd_run.h"
#include "launch.h"
#include "tma.h"

namespace ioattn::cuda::sm90 {

// The forward kernel a call of head dim d runs: the smallest built one of 64, 96, 128, 192 and 256
// that holds d (the list is ascending; 0 above 256: the call takes the sm80 path).
int forward_head_dim(int d) {
#define IOATTN_SM90_CASE(D) \
  if (d <= D) return D;
  IOATTN_FOR_EACH_SM90_HEAD_DIM(IOATTN_SM90_CASE)
#undef IOATTN_SM90_CASE
  return 0;
}

bool forward_describable(const Params& p) {
  const int d = forward_head_dim(std::max(p.head_dim, p.head_dim_v));
  CUtensorMap tq, tk, tv;
  return d != 0 && encode_qkv_maps(p, fwd_tile(d, p), &tq, &tk, &tv);
}

Status launch_fwd_sm90(const Params& p, cudaStream_t stream) {
  const int d = forward_head_dim(std::max(p.head_dim, p.head_dim_v));
  const bool bf16 = p.dtype == DType::BF16;
  switch (d) {
#define IOATTN_SM90_FWD_CASE(D) \
  case D: return bf16 ? run_fwd<__nv_bfloat16, D>(p, stream) : run_fwd<__half, D>(p, stream);
    IOATTN_FOR_EACH_SM90_HEAD_DIM(IOATTN_SM90_FWD_CASE)
#undef IOATTN_SM90_FWD_CASE
    default:
      return Status{ErrorCode::Unsupported, "q: no sm90 forward kernel for head dim " + std::to_string(p.head_dim)};
  }
}

int backward_head_dim(int acc) {
#define IOATTN_SM90_BWD_CASE(D) \
  if (acc == D) return sm90_head_dim(D);
  IOATTN_FOR_EACH_SM90_BWD_HEAD_DIM(IOATTN_SM90_BWD_CASE)
#undef IOATTN_SM90_BWD_CASE
  return 0;
}

bool backward_describable(const Params& p, int acc) {
  const int d = backward_head_dim(acc);
  if (d == 0) return false;
  const CUtensorMapDataType type = map_type(p);
  const int batch = p.varlen ? 1 : p.batch;
  const int64_t rows_q = p.varlen ? p.total_q : p.seqlen_q, rows_k = p.varlen ? p.total_k : p.seqlen_k;
  const int bn = bwd_block_n(d), bm = bwd_block_m(d);
  CUtensorMap m;
  return encode_tensor_map(&m, {p.k, p.head_dim, rows_k, p.heads_k, batch, p.k_row_stride, p.k_head_stride, p.k_batch_stride},
                           bn, type) &&
         encode_tensor_map(&m, {p.v, p.head_dim_v, rows_k, p.heads_k, batch, p.v_row_stride, p.v_head_stride, p.v_batch_stride},
                           bn, type) &&
         encode_tensor_map(&m, {p.q, p.head_dim, rows_q, p.heads_q, batch, p.q_row_stride, p.q_head_stride, p.q_batch_stride},
                           bm, type) &&
         encode_tensor_map(&m, {p.dout, p.head_dim_v, rows_q, p.heads_q, batch, p.do_row_stride, p.do_head_stride,
                                p.do_batch_stride},
                           bm, type);
}

Status launch_bwd_sm90(const Params& p, int acc, cudaStream_t stream, void* workspace) {
  [[maybe_unused]] const bool bf16 = p.dtype == DType::BF16;  // unused when no backward head dim is built
  switch (acc) {
#define IOATTN_SM90_BWD_LAUNCH(D)                                                      \
  case D:                                                                              \
    return bf16 ? run_bwd<__nv_bfloat16, sm90_head_dim(D), D>(p, stream, workspace) \
                : run_bwd<__half, sm90_head_dim(D), D>(p, stream, workspace);
    IOATTN_FOR_EACH_SM90_BWD_HEAD_DIM(IOATTN_SM90_BWD_LAUNCH)
#undef IOATTN_SM90_BWD_LAUNCH
    default:
      return Status{ErrorCode::Unsupported, "q: no sm90 backward kernel for head dim " + std::to_string(p.head_dim)};
  }
}

}  // namespace ioattn::cuda::sm90
