// Tile configurations of the sm80 forward kernel (fwd_kernel.cuh), one row per head-dim range,
// with the reason for each. Host-visible (no device code) so the backend's selector can size grids
// and describe the choice without including the kernel.
#pragma once

#include <cuda_runtime.h>

#include "core/params.h"
#include "cuda/common/tile_layout.h"

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
// `paired` (block_m 0: none) replaces both on devices whose shared memory per SM holds two of its
// CTAs (Hopper's 228 KB, not an A100's 164 KB): chosen at run time by fwd_paired (below).
struct FwdTileRow {
  int max_head_dim;  // rows apply to padded head dims <= this
  FwdTile plain, mods;
  FwdTile paired;
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
     {128, 64, 4, 2, 1, "d<=64 (softcap/ALiBi/dropout): O 64 + S 64 regs (128 keys spill); 36 KB smem"},
     {}},
    {128,
     {128, 64, 4, 2, 1, "d<=128: O 128 + S 64 regs (FA2's 128x64, 4 warps); 68 KB smem, 2 CTAs/SM"},
     {128, 64, 4, 2, 1, "d<=128: O 128 + S 64 regs (FA2's 128x64, 4 warps); 68 KB smem, 2 CTAs/SM"},
     {}},
    // d = 192, paired: the d = 256 row's paired tile (below), for the same reason (74 KB: two CTAs per
    // Hopper SM). Measured on the H200 against the 128-row tile (bench/notes-sm80.md, session 18):
    // +16-23% at seqlen 1024-8192, causal and not.
    {192,
     {128, 64, 8, 1, 1, "d<=192: O 96 + S 32 regs at 1 m-tile (FA2's 128x64, 8 warps); 102 KB smem, 1 CTA/SM"},
     {128, 64, 8, 1, 1, "d<=192: O 96 + S 32 regs at 1 m-tile (FA2's 128x64, 8 warps); 102 KB smem, 1 CTA/SM"},
     {64, 64, 4, 1, 2, "d<=192 (228 KB smem/SM): O 96 + S 32 regs; 74 KB smem, 2 CTAs/SM (as at d = 256)"}},
    // d = 256, paired: FA2's Hopper choice, 64 x 64 with 4 warps. 99 KB of shared memory, so two
    // CTAs share a Hopper SM and one's softmax and barriers run under the other's products; the
    // 128-row tile (8 warps, 132 KB) leaves one CTA per SM with nothing to overlap them. Measured on
    // the H200 (bench/notes-sm80.md, session 7): +8-12% at seqlen 1024-16k, causal and not. On an
    // A100 the paired tile would run alone on its SM with 4 warps: the 128-row tile stays there.
    {256,
     {128, 64, 8, 1, 1, "d<=256: O 128 + S 32 regs at 1 m-tile (2 would not fit); 132 KB smem, 1 CTA/SM"},
     {128, 64, 8, 1, 1, "d<=256: O 128 + S 32 regs at 1 m-tile (2 would not fit); 132 KB smem, 1 CTA/SM"},
     {64, 64, 4, 1, 2, "d<=256 (228 KB smem/SM): O 128 + S 32 regs; 99 KB smem, 2 CTAs/SM (FA2 on Hopper)"}},
};

constexpr const FwdTileRow& fwd_tile_row(int head_dim) {
  for (const FwdTileRow& r : kFwdTiles)
    if (head_dim <= r.max_head_dim) return r;
  return kFwdTiles[sizeof(kFwdTiles) / sizeof(kFwdTiles[0]) - 1];
}

constexpr FwdTile fwd_tile(int head_dim, bool mods, bool paired) {
  const FwdTileRow& r = fwd_tile_row(head_dim);
  return paired && r.paired.block_m > 0 ? r.paired : mods ? r.mods : r.plain;
}

constexpr int fwd_smem_bytes(int head_dim, bool mods, bool paired) {
  const FwdTile t = fwd_tile(head_dim, mods, paired);
  return (t.block_m + 2 * t.block_n) * smem_tile_pitch(head_dim, sm80_fwd_layout(head_dim)) * 2;
}

// Which instantiation a call runs: the one place that decides (run_fwd launches by it, the
// backend's kernel description reports its tile).
inline bool fwd_uses_mods(const Params& p) {
  return p.softcap > 0.0f || p.alibi_slopes != nullptr || p.dropout_p > 0.0f;
}
// Whether the call takes its row's paired tile: the row has one and the device's shared memory per
// SM holds two of its CTAs (plus the 1 KB per CTA the hardware reserves).
inline bool fwd_paired(int head_dim, int device) {
  if (fwd_tile_row(head_dim).paired.block_m == 0) return false;
  int per_sm = 0;
  if (cudaDeviceGetAttribute(&per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return per_sm >= 2 * (fwd_smem_bytes(head_dim, false, true) + 1024);
}

// The tile of one instantiation as integral constants, usable in device code.
template <int kHeadDim, bool kMods, bool kPaired>
struct FwdTileFor {
  static constexpr FwdTile t = fwd_tile(kHeadDim, kMods, kPaired);
  static constexpr int block_m = t.block_m, block_n = t.block_n, warps = t.warps, m_tiles = t.m_tiles,
                       min_ctas = t.min_ctas;
  static constexpr SmemLayout layout = sm80_fwd_layout(kHeadDim);  // shared tiles (tile_layout.h)
};

// Defined in fwd_kernel.cuh, instantiated per head dim in generated files (src/cuda/CMakeLists.txt).
template <class T, int kHeadDim>
Status run_fwd(const Params& p, cudaStream_t stream);

}  // namespace ioattn::cuda::sm80
