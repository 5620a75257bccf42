// The interface between the CUDA backend (src/cuda/backend.cu) and the sm90 kernels (Hopper: TMA,
// wgmma, warp specialisation; built for sm_90a only, into the object library ioattn_sm90). The
// backend calls these only on a compute-capability 9.0 device, after select() accepted the Params
// under the sm80 launcher's assumptions (src/cuda/sm80/launch.h: 16-byte aligned bases, strides
// in multiples of 8 elements, head dims multiples of 8 up to 256), and without dropout.
#pragma once

#include <cuda_runtime.h>

#include "core/params.h"

namespace ioattn::cuda::sm90 {

// The sm90 head dim serving a call of head dim d (64, 128, 192 or 256), or 0 if this build has no
// sm90 kernel for it.
int forward_head_dim(int d);

// Whether TMA can describe this call's q, k, v (the driver accepts their tensor maps). select()
// asks, so that describe_forward_choice names the kernel that really runs.
bool forward_describable(const Params& p);

// Forward, same contract as sm80::launch_fwd_sm80. Returns Unsupported (writing nothing) when the
// driver cannot describe the tensors to TMA; the backend then runs the sm80 kernel.
Status launch_fwd_sm90(const Params& p, cudaStream_t stream);

// Backward. `acc` is the call's sm80 head dim (sm80::padded_head_dim: the width of the workspace's
// dQ accumulator rows, which both backward paths share). The sm90 kernel's head dim for it (64, 128,
// 192 or 256: columns past the call's head dim read as zeros and are not written), or 0 when this
// build has no sm90 backward for it (then the sm80 backward serves the call; so does dropout:
// backend.cu).
int backward_head_dim(int acc);

// Whether TMA can describe this backward call's q, k, v, dout.
bool backward_describable(const Params& p, int acc);

// Backward, same contract and workspace (layout and size) as sm80::launch_bwd_sm80, both modes.
Status launch_bwd_sm90(const Params& p, int acc, cudaStream_t stream, void* workspace);

}  // namespace ioattn::cuda::sm90
