// Shared-memory tiles of 16-bit elements and the warp-level fragment loads from them.
//
// Layout: row-major, each row padded by 8 elements (16 bytes). ldmatrix reads 8 rows x 16 bytes at
// one column; with a row pitch of 2*kCols + 16 bytes and kCols a multiple of 32 (every head dim we
// instantiate and every key-block width), the 8 rows land at 8 distinct 16-byte offsets modulo
// 128 bytes, i.e. in distinct bank groups: conflict-free, without an XOR swizzle. The cost is
// 16 bytes per row (1.5-6% of a tile).
#pragma once

#include <cstdint>

#include "mma.cuh"

namespace ioattn::cuda {

template <int kRows_, int kCols_>
struct SmemTile {
  static constexpr int kRows = kRows_;
  static constexpr int kCols = kCols_;
  static constexpr int kPitch = kCols + 8;  // elements
  static constexpr int kElems = kRows * kPitch;
  static constexpr int kBytes = kElems * 2;
  static_assert(kCols % 32 == 0, "conflict-free ldmatrix needs kCols % 32 == 0 (see above)");
  static_assert(kRows % 16 == 0, "tiles are read in 16-row mma steps");
};

// Copy rows [0, rows_valid) x columns [0, cols_valid) of a global tile (row stride in elements,
// columns contiguous) into the shared tile with cp.async; everything else in the tile becomes zero.
// cols_valid is a multiple of 8 (the head dim; checked by select()). Call with all kThreads threads.
template <class Tile, int kThreads, class T>
__device__ __forceinline__ void load_tile_async(T* smem, const T* gmem, int64_t row_stride, int rows_valid,
                                                int cols_valid, int tid) {
  constexpr int kChunksPerRow = Tile::kCols / 8;
  constexpr int kChunks = Tile::kRows * kChunksPerRow;
  if constexpr (kThreads % kChunksPerRow == 0 && kChunks % kThreads == 0) {
    // Chunk c = tid + i * kThreads is row tid / kChunksPerRow + i * kRowStep, column
    // (tid % kChunksPerRow) * 8 for every i: the column, its test and the start addresses are
    // computed once, and each chunk costs a pointer step, a compare with a constant and the cp.async.
    // Same chunks, same order, same zero-fill as the general loop.
    constexpr int kRowStep = kThreads / kChunksPerRow;
    const int row0 = tid / kChunksPerRow;
    const int col = (tid % kChunksPerRow) * 8;
    const int rows_left = col < cols_valid ? rows_valid - row0 : 0;  // chunk i valid iff i * kRowStep < it
    const T* src = gmem + row0 * row_stride + col;  // stepped past the tile's rows, never read there
    int64_t src_step = kRowStep * row_stride;
    // The step is opaque to the optimiser: otherwise it hoists every chunk's 64-bit offset out of the
    // caller's main loop and keeps them live (16 per tile at d = 256: 52 bytes of spills in the d = 256
    // forward). Rolled instead, the loop cost 16 instructions and a branch per chunk; ncu on the H200
    // (session 15) counted a third of the d = 256 forward's instructions there.
    asm volatile("" : "+l"(src_step));
    T* dst = smem + row0 * Tile::kPitch + col;
#pragma unroll
    for (int i = 0; i < kChunks / kThreads; ++i) {
      const bool valid = i * kRowStep < rows_left;
      cp_async_16(dst + i * (kRowStep * Tile::kPitch), src, valid);
      src += src_step;
    }
  } else {
#pragma unroll 1
    for (int c = tid; c < kChunks; c += kThreads) {
      const int row = c / kChunksPerRow;
      const int col = (c % kChunksPerRow) * 8;
      const bool valid = row < rows_valid && col < cols_valid;
      // An invalid chunk reads nothing; the pointer only has to be a legal operand.
      const T* src = valid ? gmem + row * row_stride + col : gmem;
      cp_async_16(smem + row * Tile::kPitch + col, src, valid);
    }
  }
}

// A fragment (16x16) of rows [r0, r0+16) x columns [c0, c0+16) of a row-major tile.
template <class Tile, class T>
__device__ __forceinline__ void load_a_frag(uint32_t (&a)[4], const T* smem, int r0, int c0, int lane) {
  ldmatrix_x4(a, smem + (r0 + (lane % 16)) * Tile::kPitch + c0 + (lane / 16) * 8);
}

// B fragments of two adjacent 8-wide n tiles [n0, n0+16) for k in [k0, k0+16), from a tile stored
// n-major ([n][k], e.g. K for S = Q K^T): b[0], b[1] for n tile n0; b[2], b[3] for n0 + 8.
template <class Tile, class T>
__device__ __forceinline__ void load_b_frags_nk(uint32_t (&b)[4], const T* smem, int n0, int k0, int lane) {
  ldmatrix_x4(b, smem + (n0 + (lane / 16) * 8 + lane % 8) * Tile::kPitch + k0 + ((lane / 8) % 2) * 8);
}

// The same from a tile stored k-major ([k][n], e.g. V for O = P V), through ldmatrix.trans.
template <class Tile, class T>
__device__ __forceinline__ void load_b_frags_kn(uint32_t (&b)[4], const T* smem, int k0, int n0, int lane) {
  ldmatrix_x4_trans(b, smem + (k0 + ((lane / 8) % 2) * 8 + lane % 8) * Tile::kPitch + n0 + (lane / 16) * 8);
}

}  // namespace ioattn::cuda
