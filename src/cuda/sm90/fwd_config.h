// Tile configurations of the sm90 forward kernel (fwd_kernel.cuh), host-visible so the backend's
// selector can describe its choice without including the kernel.
//
// One CTA = 3 warpgroups: a producer (TMA loads of Q once and of K/V tiles into a ring of kStages
// buffers) and two consumers of 64 query rows each (block_m = 128). Shared memory = Q (128 x d)
// + kStages x (K + V) (block_n x d each), all 16-bit: d = 64: 80 KB; 128: 160 KB; 256: 192 KB.
// Registers per consumer thread: S accumulator block_n / 2 floats, O accumulator d / 2.
#pragma once

#include <cuda_runtime.h>

#include "core/params.h"

namespace ioattn::cuda::sm90 {

struct FwdTile {
  int head_dim;  // the kernel's (padded) head dim: 64, 128 or 256
  int block_m;   // query rows per CTA (2 consumer warpgroups x 64)
  int block_n;   // keys per K/V tile
  int stages;    // K/V tiles in flight
  const char* why;
};

inline constexpr FwdTile kFwdTiles[] = {
    {64, 128, 128, 2, "S 64 + O 32 regs"},
    {128, 128, 128, 2, "S 64 + O 64 regs; 160 KB smem"},
    {256, 128, 64, 2, "S 32 + O 128 regs; 192 KB smem"},
};

// The sm90 head dim a call of head dim d runs with: 64, 128 or 256 (extra columns read as zeros
// through the tensor maps), or 0 above 256.
constexpr int sm90_head_dim(int d) { return d <= 64 ? 64 : (d <= 128 ? 128 : (d <= 256 ? 256 : 0)); }

constexpr FwdTile fwd_tile(int head_dim) {
  for (const FwdTile& t : kFwdTiles)
    if (head_dim <= t.head_dim) return t;
  return kFwdTiles[2];
}

template <int kD>
struct FwdTileFor {
  static constexpr int block_m = fwd_tile(kD).block_m;
  static constexpr int block_n = fwd_tile(kD).block_n;
  static constexpr int stages = fwd_tile(kD).stages;
};

// Defined in fwd_kernel.cuh, instantiated per head dim in generated files (src/cuda/CMakeLists.txt).
template <class T, int kD>
Status run_fwd(const Params& p, cudaStream_t stream);

}  // namespace ioattn::cuda::sm90
