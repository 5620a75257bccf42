// The shared-memory tile layout rule (tile.cuh), host and device: which tiles are XOR-swizzled and
// their row pitch, so that host code sizing shared memory (sm80/fwd_config.h) agrees with the kernels.
#pragma once

namespace ioattn::cuda {

// Only widths of whole 128-byte groups can be swizzled (tile.cuh); `want` is the kernel's choice.
constexpr bool smem_tile_swizzled(int cols, bool want) { return want && cols % 64 == 0; }
constexpr int smem_tile_pitch(int cols, bool want) { return smem_tile_swizzled(cols, want) ? cols : cols + 8; }

// Which sm80 kernels swizzle (measured on the H200 against the padded layout, session 15,
// bench/notes-sm80.md): the forward at every head dim (d = 256 +10-12%, d = 128 +2-4%, d = 64 +6-10%)
// and the backward above d = 128 (d = 256 +2-3%; d = 64 / 128 -6-7%: the dkdv kernels spill
// 48-152 bytes more with the swizzle's addresses). The rest keep 16 bytes of padding per row.
constexpr bool sm80_fwd_swizzled(int head_dim) { return head_dim > 0; }
constexpr bool sm80_bwd_swizzled(int head_dim) { return head_dim > 128; }

}  // namespace ioattn::cuda
