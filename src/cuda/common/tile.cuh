// Shared-memory tiles of 16-bit elements and the warp-level fragment loads from them.
//
// Layout: row-major. ldmatrix reads 8 rows x 16 bytes at one column, and a warp's cp.async writes
// whole 128-byte global lines; both are conflict-free when the 8 rows' chunks fall in distinct
// 16-byte bank groups and a 128-byte line stays in one 128-byte row segment.
// - Swizzled (where the kernel asks for it, tile_layout.h): rows of a multiple of 64 columns (128
//   bytes; head dims 64, 128, 192, 256 and the key blocks) are unpadded, and their 16-byte chunks are
//   XOR-swizzled by row % 8 within each 128-byte group: chunk c of row r is stored at chunk
//   c ^ (r % 8). Any 8 consecutive rows from a multiple of 8 then put one logical chunk in 8
//   distinct bank groups, and a line is a permutation of one segment.
// - Padded: other widths (multiples of 32: head dims 96, 160, 224), and the kernels that keep this
//   layout, pad each row by 8 elements (16 bytes): 8 rows then land at 8 distinct 16-byte offsets
//   modulo 128 bytes (conflict-free ldmatrix), but a 128-byte line spans two segments. That was the
//   only layout until session 15, when ncu counted twice the ideal shared-memory wavefronts on every
//   cp.async of the sm80 kernels (the d = 256 forward's shared memory was then ~88% busy;
//   bench/notes-sm80.md).
#pragma once

#include <cstdint>

#include "mma.cuh"
#include "tile_layout.h"

namespace ioattn::cuda {

// kLayout: the kernel's choice (tile_layout.h); a swizzle is taken where kCols allows it.
template <int kRows_, int kCols_, SmemLayout kLayout>
struct SmemTile {
  static constexpr int kRows = kRows_;
  static constexpr int kCols = kCols_;
  static constexpr bool kSwizzled = smem_tile_swizzled(kCols, kLayout);
  static constexpr int kPitch = smem_tile_pitch(kCols, kLayout);  // elements
  static constexpr int kElems = kRows * kPitch;
  static constexpr int kBytes = kElems * 2;
  static_assert(kCols % 32 == 0, "conflict-free ldmatrix needs kCols % 32 == 0 (see above)");
  static_assert(kRows % 16 == 0, "tiles are read in 16-row mma steps");
  // Element offset of (row, col). Within a 16-byte chunk (8 elements) the order is kept, so col may
  // be any column (e.g. the 4-byte stores of mma fragments at col = 8 n + 2 t).
  __device__ __forceinline__ static int offset(int row, int col) {
    return smem_tile_offset(row, col, kPitch, kSwizzled);
  }
  // Shared-memory address of (row, c0 + cl) for ldmatrix: c0 a multiple of 16 (a constant in the
  // unrolled loops), cl 0 or 8 (the lane's half). Swizzled, chunk (c0 + cl) / 8 ^ (row % 8) is
  // (c0 / 8) ^ z with z = (cl / 8) ^ (row % 8), and because rows start 128-byte aligned its address
  // is (row start + 16 z) XOR the constant 2 (c0 % 64), plus 2 (c0 - c0 % 64): per thread one base
  // per row, per fragment one XOR with a constant and an immediate offset (tile_layout.h's three
  // parts). (offset() written out instead left the compiler one live register per fragment column:
  // 144-264 bytes of spills.) kSwizzledOpaque issues the XOR as an opaque instruction next to its
  // ldmatrix: left to the optimiser, the XOR-ed bases are hoisted out of the main loop and kept live,
  // 3 per operand (the d = 64 forward then spilled 48 bytes and lost 7%; opaque it spills 24 and gains
  // 6-10% over the padded layout). kSwizzled leaves it to the optimiser in the equal form of
  // frag_swizzled_addr (tile_layout.h), one IADD3 per address with a hoisted lane part: the sm80
  // backward at d = 192 / 256 +1-2% against the three-part form (the d = 256 dK / dV kernel's SASS:
  // 75 fewer IMAD / LOP3, 26 more IADD3, of 2864; H200, session 18, bench/notes-sm80.md). In the
  // forward it spilled 160-236 bytes (opaque: 20-100) and was not timed.
  __device__ __forceinline__ static uint32_t frag_addr(const void* smem, int row, int c0, int cl) {
    const uint32_t row_addr = smem_addr(smem) + 2 * row * kPitch;
    if constexpr (kLayout == SmemLayout::kSwizzledOpaque && kSwizzled) {
      uint32_t x = row_addr + frag_lane_bytes(row, cl);
      if ((c0 & 63) != 0) asm volatile("xor.b32 %0, %0, %1;" : "+r"(x) : "r"(frag_xor(c0)));
      return x + frag_add(c0);
    } else if constexpr (kSwizzled) {
      return frag_swizzled_addr(row_addr, row, c0, cl);
    } else {
      return row_addr + 2 * (c0 + cl);
    }
  }
};

// The 16-byte chunks of a row that load_tile_async's fast path gives one pass of the threads: the
// whole row where kThreads is a multiple of its chunks (head dims 64, 128, 256), else the largest
// divisor of the row's chunks that kThreads is a multiple of (d = 192: 8 of 24 chunks, three 64-column
// groups; d = 96 / 160 / 224: 4; at least 1). Within a swizzled tile a group of 8 is one 128-byte
// swizzle span, so the swizzle stays a function of the row alone.
template <int kChunksPerRow, int kThreads>
__host__ __device__ constexpr int load_group_chunks() {
  for (int g = kChunksPerRow; g > 0; --g)
    if (kChunksPerRow % g == 0 && kThreads % g == 0) return g;
  return 1;
}

// Copy rows [0, rows_valid) x columns [0, cols_valid) of a global tile (row stride in elements,
// columns contiguous) into the shared tile with cp.async; everything else in the tile becomes zero.
// cols_valid is a multiple of 8 (the head dim; checked by select()). Call with all kThreads threads.
template <class Tile, int kThreads, class T>
__device__ __forceinline__ void load_tile_async(T* smem, const T* gmem, int64_t row_stride, int rows_valid,
                                                int cols_valid, int tid) {
  constexpr int kChunksPerRow = Tile::kCols / 8;
  constexpr int kChunks = Tile::kRows * kChunksPerRow;
  constexpr int kGroupChunks = load_group_chunks<kChunksPerRow, kThreads>();
  constexpr int kGroups = kChunksPerRow / kGroupChunks;
  if constexpr ((Tile::kRows * kGroupChunks) % kThreads == 0 && (!Tile::kSwizzled || kGroupChunks % 8 == 0)) {
    // The row's chunks in kGroups groups of kGroupChunks (one group: the whole row). In group g, chunk
    // tid + i * kThreads is row tid / kGroupChunks + i * kRowStep, column g * 8 kGroupChunks +
    // (tid % kGroupChunks) * 8 for every i: the column, its test and the start addresses are computed
    // once per group, and each chunk costs a pointer step, a compare with a constant and the cp.async.
    // Every chunk once; rows past rows_valid and columns past cols_valid are zero-filled. (Before the
    // groups, d = 192 took a general loop, whose division per chunk left the sm80 forward at 0.72x of
    // flash-attn 2 there.)
    constexpr int kRowStep = kThreads / kGroupChunks;
    constexpr int kPasses = Tile::kRows / kRowStep;
    const int row0 = tid / kGroupChunks;
#pragma unroll
    for (int g = 0; g < kGroups; ++g) {
      const int col = g * kGroupChunks * 8 + (tid % kGroupChunks) * 8;
      const int rows_left = col < cols_valid ? rows_valid - row0 : 0;  // chunk i valid iff i * kRowStep < it
      const T* src = gmem + row0 * row_stride + col;  // stepped past the tile's rows, never read there
      int64_t src_step = kRowStep * row_stride;
      // The step is opaque to the optimiser: otherwise it hoists every chunk's 64-bit offset out of the
      // caller's main loop and keeps them live (16 per tile at d = 256: 52 bytes of spills in the d =
      // 256 forward). Rolled instead, the loop cost 16 instructions and a branch per chunk; ncu on the
      // H200 (session 15) counted a third of the d = 256 forward's instructions there.
      asm volatile("" : "+l"(src_step));
      // Row passes kRowStep apart: the swizzle (row % 8) is the same in every pass when kRowStep is a
      // multiple of 8 and alternates by XOR 4 when it is 4 mod 8; otherwise offset() per pass.
      const int dst0 = Tile::offset(row0, col);
#pragma unroll
      for (int i = 0; i < kPasses; ++i) {
        const bool valid = i * kRowStep < rows_left;
        int dst;
        if constexpr (!Tile::kSwizzled || kRowStep % 8 == 0)
          dst = dst0 + i * kRowStep * Tile::kPitch;
        else if constexpr (kRowStep % 8 == 4)
          dst = (i % 2 == 0 ? dst0 : dst0 ^ 32) + i * kRowStep * Tile::kPitch;  // chunk ^ 4 = element ^ 32
        else
          dst = Tile::offset(row0 + i * kRowStep, col);
        cp_async_16(smem + dst, src, valid);
        src += src_step;
      }
    }
  } else {
    // Every tile of the kernels takes the path above (a rolled loop with a division per chunk here
    // cost the d = 192 forward 15-17%); a new tile shape that does not is a compile error, not a
    // silent slow path.
    static_assert(kChunks < 0, "load_tile_async: no column grouping of this tile fits the thread count");
  }
}

// A fragment (16x16) of rows [r0, r0+16) x columns [c0, c0+16) of a row-major tile.
template <class Tile, class T>
__device__ __forceinline__ void load_a_frag(uint32_t (&a)[4], const T* smem, int r0, int c0, int lane) {
  ldmatrix_x4(a, Tile::frag_addr(smem, r0 + lane % 16, c0, (lane / 16) * 8));
}

// B fragments of two adjacent 8-wide n tiles [n0, n0+16) for k in [k0, k0+16), from a tile stored
// n-major ([n][k], e.g. K for S = Q K^T): b[0], b[1] for n tile n0; b[2], b[3] for n0 + 8.
template <class Tile, class T>
__device__ __forceinline__ void load_b_frags_nk(uint32_t (&b)[4], const T* smem, int n0, int k0, int lane) {
  ldmatrix_x4(b, Tile::frag_addr(smem, n0 + (lane / 16) * 8 + lane % 8, k0, ((lane / 8) % 2) * 8));
}

// The same from a tile stored k-major ([k][n], e.g. V for O = P V), through ldmatrix.trans.
template <class Tile, class T>
__device__ __forceinline__ void load_b_frags_kn(uint32_t (&b)[4], const T* smem, int k0, int n0, int lane) {
  ldmatrix_x4_trans(b, Tile::frag_addr(smem, k0 + ((lane / 8) % 2) * 8 + lane % 8, n0, (lane / 16) * 8));
}

}  // namespace ioattn::cuda
