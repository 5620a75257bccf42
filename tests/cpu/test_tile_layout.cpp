// The sm80 kernels' shared-memory tile layout (src/cuda/common/tile_layout.h, used by tile.cuh), checked
// on the host for every tile width the kernels use (multiples of 32 up to 256 columns) in both forms:
// - every row's columns map one-to-one onto the row's slots, inside the row;
// - ldmatrix reads 8 consecutive rows from a multiple of 8 at one 16-byte chunk: those 8 addresses fall
//   in 8 distinct 16-byte bank groups (no bank conflict);
// - swizzled, a warp's cp.async of one 128-byte global line (8 chunks from a multiple of 8) lands in a
//   single 128-byte segment (one shared wavefront);
// - the three-part ldmatrix address of frag_addr (row start + lane part, XOR a constant, + a constant)
//   equals 2 x the element offset for every row, c0 (multiple of 16) and lane half, and so does the
//   kSwizzled form (frag_swizzled_addr).
#include <gtest/gtest.h>

#include <set>

#include "cuda/common/tile_layout.h"

namespace {

using ioattn::cuda::SmemLayout;
using ioattn::cuda::frag_add;
using ioattn::cuda::frag_lane_bytes;
using ioattn::cuda::frag_swizzled_addr;
using ioattn::cuda::frag_xor;
using ioattn::cuda::smem_tile_offset;
using ioattn::cuda::smem_tile_pitch;
using ioattn::cuda::smem_tile_swizzled;

constexpr int kRows = 64;

SmemLayout layout_of(bool swizzle) { return swizzle ? SmemLayout::kSwizzled : SmemLayout::kPadded; }

class TileLayout : public ::testing::TestWithParam<std::tuple<int, bool>> {};

TEST_P(TileLayout, RowsAreBijective) {
  const auto [cols, swizzle] = GetParam();
  const bool swz = smem_tile_swizzled(cols, layout_of(swizzle));
  const int pitch = smem_tile_pitch(cols, layout_of(swizzle));
  for (int r = 0; r < kRows; ++r) {
    std::set<int> seen;
    for (int c = 0; c < cols; ++c) {
      const int off = smem_tile_offset(r, c, pitch, swz);
      ASSERT_GE(off, r * pitch) << "row " << r << " col " << c;
      ASSERT_LT(off, r * pitch + cols) << "row " << r << " col " << c;
      seen.insert(off);
    }
    ASSERT_EQ(static_cast<int>(seen.size()), cols) << "row " << r;
  }
}

TEST_P(TileLayout, LdmatrixRowsHitDistinctBankGroups) {
  const auto [cols, swizzle] = GetParam();
  const bool swz = smem_tile_swizzled(cols, layout_of(swizzle));
  const int pitch = smem_tile_pitch(cols, layout_of(swizzle));
  for (int r0 = 0; r0 < kRows; r0 += 8) {
    for (int c = 0; c < cols; c += 8) {
      std::set<int> groups;  // 16-byte bank group of each row's chunk, modulo 128 bytes
      for (int r = r0; r < r0 + 8; ++r) groups.insert((2 * smem_tile_offset(r, c, pitch, swz)) % 128 / 16);
      ASSERT_EQ(groups.size(), 8u) << "rows " << r0 << "..+8, col " << c << (swz ? " swizzled" : " padded");
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Widths, TileLayout,
                         ::testing::Combine(::testing::Values(32, 64, 96, 128, 160, 192, 224, 256),
                                            ::testing::Bool()),
                         [](const ::testing::TestParamInfo<std::tuple<int, bool>>& info) {
                           return "cols" + std::to_string(std::get<0>(info.param)) +
                                  (std::get<1>(info.param) ? "_swizzle" : "_padded");
                         });

// The two promises only the swizzled form makes, for every width it applies to (whole 128-byte rows).
TEST(TileLayoutSwizzled, LinesStayInOneSegment) {
  for (int cols = 64; cols <= 256; cols += 64) {
    ASSERT_TRUE(smem_tile_swizzled(cols, SmemLayout::kSwizzledOpaque)) << cols;
    const int pitch = smem_tile_pitch(cols, SmemLayout::kSwizzled);
    for (int r = 0; r < kRows; ++r) {
      for (int c0 = 0; c0 < cols; c0 += 64) {
        const int seg = 2 * smem_tile_offset(r, c0, pitch, true) / 128;
        for (int c = c0; c < c0 + 64; c += 8)
          ASSERT_EQ(2 * smem_tile_offset(r, c, pitch, true) / 128, seg) << "cols " << cols << " row " << r << " col " << c;
      }
    }
  }
}

// load_tile_async steps row passes 4 rows apart (kRowStep = 4: d = 256 with 128 threads) by toggling
// element bit 5 (chunk ^ 4) instead of recomputing the swizzle.
TEST(TileLayoutSwizzled, FourRowsApartIsChunkXorFour) {
  for (int cols = 64; cols <= 256; cols += 64) {
    const int pitch = smem_tile_pitch(cols, SmemLayout::kSwizzled);
    for (int r = 0; r + 4 < kRows; ++r)
      for (int c = 0; c < cols; c += 8)
        ASSERT_EQ(smem_tile_offset(r + 4, c, pitch, true), (smem_tile_offset(r, c, pitch, true) ^ 32) + 4 * pitch)
            << "cols " << cols << " row " << r << " col " << c;
  }
}

TEST(TileLayoutSwizzled, FragmentAddressEqualsElementOffset) {
  for (int cols = 64; cols <= 256; cols += 64) {
    const int pitch = smem_tile_pitch(cols, SmemLayout::kSwizzled);
    for (int r = 0; r < kRows; ++r) {
      for (int c0 = 0; c0 < cols; c0 += 16) {
        for (int cl : {0, 8}) {
          const int addr = ((2 * r * pitch + frag_lane_bytes(r, cl)) ^ frag_xor(c0)) + frag_add(c0);
          ASSERT_EQ(addr, 2 * smem_tile_offset(r, c0 + cl, pitch, true))
              << "cols " << cols << " row " << r << " c0 " << c0 << " cl " << cl;
          ASSERT_EQ(frag_swizzled_addr(2 * r * pitch, r, c0, cl), static_cast<uint32_t>(addr))  // kSwizzled's form
              << "cols " << cols << " row " << r << " c0 " << c0 << " cl " << cl;
        }
      }
    }
  }
}

}  // namespace
