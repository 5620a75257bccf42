// The interface between the CUDA backend (src/cuda/backend.cu: selection, checks, streams) and the
// sm80 kernels (mma.sync / ldmatrix / cp.async; they also run on sm_90). The backend calls these
// only after select() accepted the Params, so launchers may assume:
//   - dtype is F16 or BF16; head_dim and head_dim_v are multiples of 8 and <= 256, and
//     padded_head_dim(max(head_dim, head_dim_v)) is an instantiated head dim (IOATTN_CUDA_HEAD_DIMS);
//   - every tensor base pointer is 16-byte aligned and every batch/row/head stride is a multiple
//     of 8 elements, so each 8-element chunk of a row is one aligned 16-byte access;
//   - the current device is p.device_index; batch <= 65535 and the query-block count <= 65535
//     (grid y/z limits);
//   - varlen cu_seqlens may be unchecked (stream capture skips the host check): kernels clamp every
//     sequence start/end to [0, total_q] / [0, total_k] and every length to max_seqlen, so no index
//     leaves the tensors whatever the prefix sums hold.
// Launchers never synchronise the host and never allocate; they return BackendError naming the
// CUDA error if a launch fails.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

#include "core/params.h"

namespace ioattn::cuda::sm80 {

// The instantiated head dim a call of head dim d runs with (the smallest instantiated >= d; the
// extra columns are zero-filled in shared memory), or 0 when none is instantiated.
int padded_head_dim(int d);

// Forward: writes p.out (input dtype) and, when p.lse != nullptr, p.lse (fp32, natural log;
// -inf for rows that see no key). Needs no workspace.
Status launch_fwd_sm80(const Params& p, cudaStream_t stream);

// Backward: writes p.dq, p.dk, p.dv from p.q, p.k, p.v, p.out, p.dout, p.lse.
// `workspace` holds at least bwd_workspace_bytes_sm80(p) bytes of device memory (nullptr allowed
// when that is 0). Deterministic mode (p.deterministic) must give bitwise-identical results.
Status launch_bwd_sm80(const Params& p, cudaStream_t stream, void* workspace);
size_t bwd_workspace_bytes_sm80(const Params& p);

}  // namespace ioattn::cuda::sm80
