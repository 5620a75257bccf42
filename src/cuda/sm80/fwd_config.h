// Tile configurations of the sm80 forward kernel (fwd_kernel.cuh), one row per head-dim range,
// with the reason for each. Host-visible (no device code) so the backend's selector can size grids
// and describe the choice without including the kernel.
#pragma once

#include <cuda_runtime.h>

#include "core/params.h"

namespace ioattn::cuda::sm80 {

struct FwdTile {
  int max_head_dim;  // rows apply to padded head dims <= this
  int block_m;       // query rows per CTA = 16 * m_tiles * warps
  int block_n;       // keys per streamed K/V tile
  int warps;
  int m_tiles;       // 16-row mma tiles per warp: each K/V fragment loaded from shared memory feeds
                     // m_tiles MMAs, so 2 halves the shared-memory traffic per MMA (FA2's layout)
  const char* why;
};

// Shared memory = Q (block_m x d) + K + V (block_n x d each), rows padded by 16 bytes (tile.cuh).
// Registers per thread: O accumulator m_tiles * d/2 floats, S accumulator m_tiles * block_n/2.
// Measured (H200, bf16, 16k tokens, 2048/d heads, seqlen 16384, non-causal; bench/results/
// gpu-nvidia-h200-2026-11-22.json): d=64 226 TFLOP/s, d=128 295, d=256 244 (SDPA flash-attn 2:
// 311, 352, 325). ptxas (sm_90a): d=64 218 regs, no spills; d=128 255 regs, 24-byte spill (120 with
// softcap/ALiBi/dropout compiled in); d=256 246 regs, no spills.
inline constexpr FwdTile kFwdTiles[] = {
    {64, 128, 64, 4, 2, "d<=64: O 64 + S 64 regs (128 keys spilled ~200 B); 36 KB smem, 2 CTAs/SM"},
    {128, 128, 64, 4, 2, "d<=128: O 128 + S 64 regs (FA2's 128x64, 4 warps); 68 KB smem, 2 CTAs/SM"},
    {256, 128, 64, 8, 1, "d<=256: O 128 + S 32 regs at 1 m-tile (2 would not fit); 132 KB smem, 1 CTA/SM"},
};

constexpr FwdTile fwd_tile(int head_dim) {
  for (const FwdTile& t : kFwdTiles)
    if (head_dim <= t.max_head_dim) return t;
  return kFwdTiles[sizeof(kFwdTiles) / sizeof(kFwdTiles[0]) - 1];
}

// The row of one head dim as integral constants, usable in device code.
template <int kHeadDim>
struct FwdTileFor {
  static constexpr int block_m = fwd_tile(kHeadDim).block_m;
  static constexpr int block_n = fwd_tile(kHeadDim).block_n;
  static constexpr int warps = fwd_tile(kHeadDim).warps;
  static constexpr int m_tiles = fwd_tile(kHeadDim).m_tiles;
};

constexpr int fwd_smem_bytes(int head_dim) {
  const FwdTile t = fwd_tile(head_dim);
  return (t.block_m + 2 * t.block_n) * (head_dim + 8) * 2;
}

// Defined in fwd_kernel.cuh, instantiated per head dim in generated files (src/cuda/CMakeLists.txt).
template <class T, int kHeadDim>
Status run_fwd(const Params& p, cudaStream_t stream);

}  // namespace ioattn::cuda::sm80
