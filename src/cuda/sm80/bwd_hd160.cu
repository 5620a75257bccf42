// The sm80 backward kernels for head dim 160 (both dtypes), compiled only when
// IOATTN_CUDA_HEAD_DIMS lists 160 (see bwd_run.cuh).
#include "ioattn_cuda_head_dims.h"
#include "cuda/sm80/bwd_kernel.cuh"

namespace ioattn::cuda::sm80 {
#undef IOATTN_BWD_ONLY_160
#define IOATTN_BWD_ONLY_160 IOATTN_BWD_RUNNERS(160)
IOATTN_FOR_EACH_HEAD_DIM(IOATTN_BWD_INSTANTIATE)
}  // namespace ioattn::cuda::sm80
