// launch_fwd_sm80: the dtype x head-dim switch over the instantiated forward kernels. The kernels
// themselves are compiled one head dim per generated file (src/cuda/CMakeLists.txt) so the build
// parallelises and IOATTN_CUDA_HEAD_DIMS prunes them.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <string>

#include "ioattn_cuda_head_dims.h"
#include "fwd_config.h"
#include "launch.h"

namespace ioattn::cuda::sm80 {

Status launch_fwd_sm80(const Params& p, cudaStream_t stream) {
  const int d = padded_head_dim(std::max(p.head_dim, p.head_dim_v));
  const bool bf16 = p.dtype == DType::BF16;
  switch (d) {
#define IOATTN_FWD_CASE(D) \
  case D: return bf16 ? run_fwd<__nv_bfloat16, D>(p, stream) : run_fwd<__half, D>(p, stream);
    IOATTN_FOR_EACH_HEAD_DIM(IOATTN_FWD_CASE)
#undef IOATTN_FWD_CASE
    default:
      return Status{ErrorCode::Unsupported, "q: no forward kernel instantiated for head dim " +
                                                std::to_string(p.head_dim) + " (IOATTN_CUDA_HEAD_DIMS)"};
  }
}

}  // namespace ioattn::cuda::sm80
