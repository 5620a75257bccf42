// The shared-memory tile layout rule (tile.cuh), host and device: which tiles are XOR-swizzled and
// their row pitch, so that host code sizing shared memory (sm80/fwd_config.h) agrees with the kernels.
#pragma once

#include <cstdint>

#include "core/hostdevice.h"

namespace ioattn::cuda {

// A kernel's choice of layout for its shared tiles (tile.cuh): rows padded by 16 bytes, or XOR-swizzled
// with frag_addr's XOR left to the optimiser (kSwizzled) or issued as an opaque instruction next to each
// ldmatrix (kSwizzledOpaque, which keeps the XOR-ed bases from being hoisted and kept live).
enum class SmemLayout { kPadded, kSwizzled, kSwizzledOpaque };

// Only widths of whole 128-byte groups can be swizzled; other widths keep the padding.
constexpr bool smem_tile_swizzled(int cols, SmemLayout layout) { return layout != SmemLayout::kPadded && cols % 64 == 0; }
constexpr int smem_tile_pitch(int cols, SmemLayout layout) { return smem_tile_swizzled(cols, layout) ? cols : cols + 8; }

// Element offset of (row, col) in a tile of row pitch `pitch` (elements): swizzled, the 16-byte chunk
// col / 8 is stored at chunk (col / 8) ^ (row % 8); the order within a chunk is kept.
IOATTN_HD int smem_tile_offset(int row, int col, int pitch, bool swizzled) {
  return swizzled ? row * pitch + (((col >> 3) ^ (row & 7)) << 3) + (col & 7) : row * pitch + col;
}

// The swizzled ldmatrix address of (row, c0 + cl), c0 a multiple of 16 and cl 0 or 8, in parts
// (tile.cuh's frag_addr): the row's start (2 row pitch bytes) + the lane's part, then XOR frag_xor(c0),
// then + frag_add(c0). tests/cpu/test_tile_layout.cpp checks that this equals 2 smem_tile_offset for every
// row and column; it needs the row starts' bits 4-6 clear (rows start 128-byte aligned when swizzled).
IOATTN_HD int frag_lane_bytes(int row, int cl) { return 16 * (((cl >> 3) ^ row) & 7); }
IOATTN_HD int frag_xor(int c0) { return 2 * (c0 & 63); }
IOATTN_HD int frag_add(int c0) { return 2 * (c0 & ~63); }
// The same address in kSwizzled's form: with the row start's bits 4-6 clear, (row start + lane part) ^
// xor = row start + (lane part ^ xor), whose bracket is loop-invariant, so each ldmatrix address is one
// add of the row start, a register and an immediate (IADD3).
IOATTN_HD uint32_t frag_swizzled_addr(uint32_t row_start, int row, int c0, int cl) {
  return row_start + (frag_lane_bytes(row, cl) ^ frag_xor(c0)) + frag_add(c0);
}

// The sm80 kernels' layouts, as measured on the H200 against the padded layout (session 15,
// bench/notes-sm80.md): the forward swizzled with the opaque XOR at every head dim (d = 256 +10-12%,
// d = 128 +2-4%, d = 64 +6-10%; with the XOR left to the optimiser d = 64 spilled and lost 7%, d = 128 /
// 256 the same either way); the backward swizzled above d = 128 with the XOR left to the optimiser
// (d = 256 +2-3%; the opaque XOR spills 56 bytes there instead of 32 and was not timed), padded at
// d <= 128 (swizzled -6-7%: the dkdv kernels spill 48-152 bytes more).
constexpr SmemLayout sm80_fwd_layout(int) { return SmemLayout::kSwizzledOpaque; }
constexpr SmemLayout sm80_bwd_layout(int head_dim) {
  return head_dim > 128 ? SmemLayout::kSwizzled : SmemLayout::kPadded;
}

}  // namespace ioattn::cuda
