// The shared-memory tile layout rule (tile.cuh), host and device: which tiles are XOR-swizzled and
// their row pitch, so that host code sizing shared memory (sm80/fwd_config.h) agrees with the kernels.
#pragma once

#include "core/hostdevice.h"

namespace ioattn::cuda {

// Only widths of whole 128-byte groups can be swizzled (tile.cuh); `want` is the kernel's choice.
constexpr bool smem_tile_swizzled(int cols, bool want) { return want && cols % 64 == 0; }
constexpr int smem_tile_pitch(int cols, bool want) { return smem_tile_swizzled(cols, want) ? cols : cols + 8; }

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

// Which sm80 kernels swizzle (measured on the H200 against the padded layout, session 15,
// bench/notes-sm80.md): the forward at every head dim (d = 256 +10-12%, d = 128 +2-4%, d = 64 +6-10%)
// and the backward above d = 128 (d = 256 +2-3%; d = 64 / 128 -6-7%: the dkdv kernels spill
// 48-152 bytes more with the swizzle's addresses). The rest keep 16 bytes of padding per row.
constexpr bool sm80_fwd_swizzled(int head_dim) { return head_dim > 0; }
constexpr bool sm80_bwd_swizzled(int head_dim) { return head_dim > 128; }

}  // namespace ioattn::cuda
