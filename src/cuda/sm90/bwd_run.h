// Host-side declaration of the sm90 backward runner (no device code), defined in bwd_kernel.cuh
// and instantiated one head dim per generated file (src/cuda/CMakeLists.txt).
#pragma once

#include <cuda_runtime.h>

#include "core/params.h"

namespace ioattn::cuda::sm90 {

// Query rows per step of the backward kernel at (padded) head dim d: 128 at d = 32 / 64, else 64
// (d = 32 / 96: d = 64's / 128's tiles)
// (why: BwdShape in bwd_kernel.cuh).
constexpr int bwd_block_m(int d) { return d <= 64 ? 128 : 64; }
// Keys per work item (a key block): 128 (64 per consumer warpgroup), or 64 at d = 192 and 256 (shared
// by both warpgroups, which split the head dim; BwdShape).
constexpr int bwd_block_n(int d) { return d >= 192 ? 64 : 128; }

// kD: the kernel's head dim; kAccD: the sm80 head dim of the call (its dQ accumulator's row width,
// and the sm80 preprocess / convert / deterministic dQ kernels it runs), kAccD <= kD (or 96 with the
// kD = 80 kernel, which run_bwd<T, 96, ...> takes for head dims <= 80 itself).
// kDV: v's head dim in the kernel (kD, or 128 where run_bwd<T, 192, ...> takes MLA's v of 128 itself).
template <class T, int kD, int kAccD, int kDV = kD>
Status run_bwd(const Params& p, cudaStream_t stream, void* workspace);

}  // namespace ioattn::cuda::sm90
