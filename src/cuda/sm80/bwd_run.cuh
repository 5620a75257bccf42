// Host-side declarations of the sm80 backward (no device code): the per-(dtype, head dim) runner
// that bwd_sm80.cu dispatches to, defined in bwd_kernel.cuh and instantiated one head dim per
// translation unit (bwd_hd<d>.cu) so that builds parallelise and IOATTN_CUDA_HEAD_DIMS prunes.
#pragma once

#include <cuda_runtime.h>

#include "core/params.h"

namespace ioattn::cuda::sm80 {

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
