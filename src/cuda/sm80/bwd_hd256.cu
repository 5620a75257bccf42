// The sm80 backward kernels for head dim 256 (both dtypes), compiled only when
// IOATTN_CUDA_HEAD_DIMS lists 256 (see bwd_run.cuh).
#include "ioattn_cuda_head_dims.h"
#include "cuda/sm80/bwd_kernel.cuh"

namespace ioattn::cuda::sm80 {
#undef IOATTN_BWD_ONLY_256
#define IOATTN_BWD_ONLY_256 IOATTN_BWD_RUNNERS(256)
IOATTN_FOR_EACH_HEAD_DIM(IOATTN_BWD_INSTANTIATE)
}  // namespace ioattn::cuda::sm80
