// launch_fwd_sm90: the dtype x head-dim switch over the instantiated sm90 forward kernels (one
// generated file per head dim, src/cuda/CMakeLists.txt).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <string>

#include "fwd_config.h"
#include "ioattn_cuda_sm90_head_dims.h"
#include "launch.h"
#include "tma.h"

namespace ioattn::cuda::sm90 {

int forward_head_dim(int d) {
  const int k = sm90_head_dim(d);
#define IOATTN_SM90_CASE(D) \
  if (k == D) return D;
  IOATTN_FOR_EACH_SM90_HEAD_DIM(IOATTN_SM90_CASE)
#undef IOATTN_SM90_CASE
  return 0;
}

bool forward_describable(const Params& p) {
  CUtensorMap tq, tk, tv;
  return encode_qkv_maps(p, forward_head_dim(std::max(p.head_dim, p.head_dim_v)), &tq, &tk, &tv);
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

}  // namespace ioattn::cuda::sm90
