// Host-side declaration of the sm90 backward runner (no device code), defined in bwd_kernel.cuh
// and instantiated one head dim per generated file (src/cuda/CMakeLists.txt).
#pragma once

#include <cuda_runtime.h>

#include "core/params.h"

namespace ioattn::cuda::sm90 {

template <class T, int kD>
Status run_bwd(const Params& p, cudaStream_t stream, void* workspace);

}  // namespace ioattn::cuda::sm90
