// Tile configurations of the sm80 forward kernel (fwd_kernel.cuh), one row per head-dim range,
// with the reason for each. Host-visible (no device code) so the backend's selector can size grids
// and describe the choice without including the kernel.
#pragma once

#include <cuda_runtime.h>

#include "core/params.h"

namespace ioattn::cuda::sm80 {

struct FwdTile {
  int block_m;       // query rows per CTA = 16 * m_tiles * warps
  int block_n;       // keys per streamed K/V tile
  int warps;
  int m_tiles;       // 16-row mma tiles per warp: each K/V fragment loaded from shared memory feeds
                     // m_tiles MMAs, so 2 halves the shared-memory traffic per MMA (FA2's layout)
  int min_ctas;      // __launch_bounds__ minimum CTAs per SM (the register cap: 65536 / (threads x this))
  const char* why;
};

// One row per head-dim range, a tile for each of the kernel's two instantiations: `plain` for calls
// without softcap, ALiBi and dropout (kMods = false, the common case), `mods` for calls with any of
// them (kMods = true: their per-element code and state need registers the plain kernel does not).
struct FwdTileRow {
  int max_head_dim;  // rows apply to padded head dims <= this
  FwdTile plain, mods;
};

// Shared memory = Q (block_m x d) + K + V (block_n x d each), rows padded by 16 bytes (tile.cuh).
// Registers per thread: O accumulator m_tiles * d/2 floats, S accumulator m_tiles * block_n/2.
// Measured (H200, bf16, 16k tokens, 2048/d heads, seqlen 16384, non-causal; bench/results/
// gpu-nvidia-h200-2026-11-22-run2.json), all with 64-key tiles: d=64 264 TFLOP/s, d=128 330,
// d=256 263 (SDPA flash-attn 2: 310, 355, 325). ptxas numbers per instantiation: bench/notes-sm80.md.
inline constexpr FwdTileRow kFwdTiles[] = {
    // d = 64, plain: FA2's d64 tile (128 x 128, 4 warps). Against 64 keys: half the barriers, softmax
    // row reductions (shuffles), O rescale votes and cp.async set-ups per key, and S = Q K^T loads
    // 2 Q + 8 K fragments per 32 MMAs instead of 2 + 4 per 16 (ldmatrix/mma 0.375 -> 0.3125).
    // O 64 + S 128 accumulator registers: 253 registers, no spill (ptxas, sm_80 and sm_90a) thanks to
    // the plain kernel's interval mask and epilogue re-read (fwd_kernel.cuh); 54 KB smem, 2 CTAs/SM as
    // before. Measured on the H200 against the 128 x 64 tile: 280 vs 244 TFLOP/s at seqlen 2048,
    // 299 vs 264 at 16k (bench/notes-sm80.md, session 5).
    {64,
     {128, 128, 4, 2, 1, "d<=64: FA2's 128x128; O 64 + S 128 regs, 54 KB smem, 2 CTAs/SM"},
     // With softcap / ALiBi / dropout, 128 keys spill 360 B (ptxas, sm_90a); 64 keys spill nothing.
     {128, 64, 4, 2, 1, "d<=64 (softcap/ALiBi/dropout): O 64 + S 64 regs (128 keys spill); 36 KB smem"}},
    {128,
     {128, 64, 4, 2, 1, "d<=128: O 128 + S 64 regs (FA2's 128x64, 4 warps); 68 KB smem, 2 CTAs/SM"},
     {128, 64, 4, 2, 1, "d<=128: O 128 + S 64 regs (FA2's 128x64, 4 warps); 68 KB smem, 2 CTAs/SM"}},
    {192,
     {128, 64, 8, 1, 1, "d<=192: O 96 + S 32 regs at 1 m-tile (FA2's 128x64, 8 warps); 102 KB smem"},
     {128, 64, 8, 1, 1, "d<=192: O 96 + S 32 regs at 1 m-tile (FA2's 128x64, 8 warps); 102 KB smem"}},
    // d = 256: FA2's Hopper choice, 64 x 64 with 4 warps: 99 KB of shared memory, so two CTAs share
    // an SM (228 KB) and one's softmax and barriers run under the other's products. The 128-row tile
    // (8 warps, 132 KB) left one CTA per SM with nothing to overlap its barriers. On an A100 (164 KB
    // per SM) the 64-row tile runs one CTA per SM as well.
    {256,
     {64, 64, 4, 1, 2, "d<=256: O 128 + S 32 regs at 1 m-tile; 99 KB smem, 2 CTAs/SM (FA2 on Hopper)"},
     {64, 64, 4, 1, 2, "d<=256: O 128 + S 32 regs at 1 m-tile; 99 KB smem, 2 CTAs/SM (FA2 on Hopper)"}},
};

constexpr FwdTile fwd_tile(int head_dim, bool mods) {
  for (const FwdTileRow& r : kFwdTiles)
    if (head_dim <= r.max_head_dim) return mods ? r.mods : r.plain;
  const FwdTileRow& last = kFwdTiles[sizeof(kFwdTiles) / sizeof(kFwdTiles[0]) - 1];
  return mods ? last.mods : last.plain;
}

// Which instantiation a call runs: the one place that decides (run_fwd launches by it, the
// backend's kernel description reports its tile).
inline bool fwd_uses_mods(const Params& p) {
  return p.softcap > 0.0f || p.alibi_slopes != nullptr || p.dropout_p > 0.0f;
}

// The tile of one instantiation as integral constants, usable in device code.
template <int kHeadDim, bool kMods>
struct FwdTileFor {
  static constexpr int block_m = fwd_tile(kHeadDim, kMods).block_m;
  static constexpr int block_n = fwd_tile(kHeadDim, kMods).block_n;
  static constexpr int warps = fwd_tile(kHeadDim, kMods).warps;
  static constexpr int m_tiles = fwd_tile(kHeadDim, kMods).m_tiles;
  static constexpr int min_ctas = fwd_tile(kHeadDim, kMods).min_ctas;
};

constexpr int fwd_smem_bytes(int head_dim, bool mods) {
  const FwdTile t = fwd_tile(head_dim, mods);
  return (t.block_m + 2 * t.block_n) * (head_dim + 8) * 2;
}

// Defined in fwd_kernel.cuh, instantiated per head dim in generated files (src/cuda/CMakeLists.txt).
template <class T, int kHeadDim>
Status run_fwd(const Params& p, cudaStream_t stream);

}  // namespace ioattn::cuda::sm80
