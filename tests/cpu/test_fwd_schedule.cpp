// The sm90 forward's deal of its last tiles (src/cuda/sm90/fwd_config.h, fwd_tail), on the host:
// with the kernel's pick order (tile_of's rounds of pairs, then each CTA's dealt tiles: fwd_kernel.cuh's
// pick_tile) every tile whose rows see a key is taken exactly once, the deal is used only where it
// applies, and it leaves the busiest CTA with less work than the round-robin of pairs, and within
// one tile of the mean (the LPT bound). Costs here are recomputed from the causal mask by
// hand, not with the schedule's own helpers.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "cuda/sm90/fwd_config.h"

namespace {

using ioattn::Params;
using ioattn::cuda::sm90::FwdTail;
using ioattn::cuda::sm90::FwdTile;
using ioattn::cuda::sm90::fwd_dynamic;
using ioattn::cuda::sm90::fwd_workspace_bytes;
using ioattn::cuda::sm90::fwd_tail;
using ioattn::cuda::sm90::fwd_tail_cached;
using ioattn::cuda::sm90::kFwdTileCount;
using ioattn::cuda::sm90::kFwdTileOverhead;
using ioattn::cuda::sm90::kFwdTiles;

Params causal_params(int batch, int heads, int sq, int sk) {
  Params p{};
  p.batch = batch;
  p.heads_q = p.heads_k = heads;
  p.seqlen_q = sq;
  p.seqlen_k = sk;
  p.window_left = -1;
  p.window_right = 0;
  p.causal = true;
  return p;
}

// Key blocks (plus the tile overhead) of tile t under a bottom-right causal mask: the overhead alone
// for a tile whose rows see no key (it still writes O = 0 and the LSE), 0 for the empty partner
// slot of an odd middle block (no rows).
int tile_cost(const Params& p, const FwdTile& tile, int64_t t) {
  const int m_blocks = (p.seqlen_q + tile.block_m - 1) / tile.block_m, per_head = (m_blocks + 1) / 2;
  const int j = static_cast<int>((t / 2) % per_head);
  const int m_block = t % 2 ? j : m_blocks - 1 - j;
  if (t % 2 && j == m_blocks - 1 - j) return 0;
  const int last_row = std::min((m_block + 1) * tile.block_m, p.seqlen_q) - 1;
  const int last_key = std::min(last_row + p.seqlen_k - p.seqlen_q, p.seqlen_k - 1);  // row i sees keys <= i + sk - sq
  if (last_key < 0) return kFwdTileOverhead;
  return last_key / tile.block_n + 1 + kFwdTileOverhead;
}

TEST(FwdTail, EveryTileOnceAndTheBusiestCtaWithinOneTileOfTheMean) {
  struct Shape { int batch, heads, sq, sk; };
  const Shape shapes[] = {{32, 32, 512, 512}, {16, 32, 1024, 1024}, {8, 16, 2048, 2048}, {32, 16, 512, 512},
                          {5, 16, 3000, 3000}, {4, 32, 1000, 1000}, {16, 8, 1024, 1024}, {8, 16, 1024, 512},
                          {8, 16, 700, 1500}, {2, 80, 600, 400}, {1, 64, 16384, 16384}, {1, 32, 65536, 65536}};
  int used = 0;
  for (int ti = 0; ti < kFwdTileCount; ++ti) {
    const FwdTile& tile = kFwdTiles[ti];
    for (const Shape& s : shapes) {
      for (int ctas : {132, 131, 114, 78}) {
        const Params p = causal_params(s.batch, s.heads, s.sq, s.sk);
        const int m_blocks = (s.sq + tile.block_m - 1) / tile.block_m;
        const int64_t pairs = int64_t((m_blocks + 1) / 2) * s.heads * s.batch, tiles = 2 * pairs;
        const FwdTail tail = fwd_tail(p, tile, ctas);
        SCOPED_TRACE(::testing::Message() << "tile " << tile.block_m << "x" << tile.block_n << " d " << tile.head_dim
                                          << ", " << s.batch << " x " << s.heads << " heads, sq " << s.sq << " sk " << s.sk
                                          << ", " << ctas << " CTAs");
        if (pairs < ctas) {
          ASSERT_FALSE(tail.used());
        }
        if (!tail.used()) continue;  // (also where the deal would not beat the round-robin)
        ++used;
        ASSERT_EQ(tail.first, 2 * int64_t(tail.pair_rounds) * ctas);
        ASSERT_EQ(tail.pair_rounds, pairs / ctas - 1);
        // The kernel's picks: rounds of pairs (pair k ctas + c, both tiles), then the CTA's deal.
        std::vector<int> taken(tiles, 0);
        std::vector<int64_t> load(ctas, 0), round_robin(ctas, 0);
        for (int c = 0; c < ctas; ++c) {
          for (int k = 0; k < tail.pair_rounds; ++k)
            for (int h = 0; h < 2; ++h) {
              const int64_t t = 2 * (int64_t(k) * ctas + c) + h;
              ++taken[t];
              load[c] += tile_cost(p, tile, t);
            }
          ASSERT_LE(tail.begin[c], tail.begin[c + 1]);
          for (int i = tail.begin[c]; i < tail.begin[c + 1]; ++i) {
            const int64_t t = tail.first + tail.tile[i];
            ASSERT_LT(t, tiles);
            ++taken[t];
            load[c] += tile_cost(p, tile, t);
          }
        }
        int max_cost = 0;
        int64_t total = 0;
        for (int64_t t = 0; t < tiles; ++t) {
          const int c = tile_cost(p, tile, t);
          // Every tile with rows exactly once; the empty partner slots at most once (the kernel
          // skips them: the rounds visit them, the deal leaves them out).
          if (c > 0) ASSERT_EQ(taken[t], 1) << "tile " << t;
          else ASSERT_LE(taken[t], 1) << "tile " << t;
          round_robin[(t / 2) % ctas] += c;
          max_cost = std::max(max_cost, c);
          total += c;
        }
        const int64_t busiest = *std::max_element(load.begin(), load.end());
        EXPECT_LT(busiest, *std::max_element(round_robin.begin(), round_robin.end()));
        // LPT: the last tile dealt to the busiest CTA went to the least-loaded CTA at the time.
        // (Where the rounds before the deal already left the CTAs uneven, that CTA may be over.)
        const int64_t before_deal = [&] {
          int64_t most = 0;
          for (int c = 0; c < ctas; ++c) {
            int64_t l = 0;
            for (int k = 0; k < tail.pair_rounds; ++k) l += tile_cost(p, tile, 2 * (int64_t(k) * ctas + c)) +
                                                           tile_cost(p, tile, 2 * (int64_t(k) * ctas + c) + 1);
            most = std::max(most, l);
          }
          return most;
        }();
        EXPECT_LE(busiest, std::max(before_deal, total / ctas + max_cost));
      }
    }
  }
  EXPECT_GT(used, 100);  // the shapes above mostly have enough pairs
}

TEST(FwdTail, NotWhereItDoesNotApply) {
  const FwdTile& tile = kFwdTiles[0];
  Params p = causal_params(32, 32, 512, 512);
  ASSERT_TRUE(fwd_tail(p, tile, 132).used());
  EXPECT_FALSE(fwd_tail(p, tile, FwdTail::kMaxCtas + 1).used());  // more CTAs than the table holds
  Params window = p;
  window.window_left = 100;  // a sliding window: no pairs (every query block costs about the same)
  window.causal = false;
  EXPECT_FALSE(fwd_tail(window, tile, 132).used());
  Params varlen = p;
  varlen.varlen = true;  // lengths on the device
  EXPECT_FALSE(fwd_tail(varlen, tile, 132).used());
  Params few = causal_params(1, 4, 512, 512);  // 4 heads x 2 pairs: fewer than the CTAs
  EXPECT_FALSE(fwd_tail(few, tile, 132).used());
  Params softcap = p;
  softcap.softcap = 30.0f;  // fwd_deals: not the 3-consumer tile's softcap / ALiBi kernel (its registers)
  ASSERT_EQ(tile.consumers, 3);
  EXPECT_FALSE(fwd_tail(softcap, tile, 132).used());
  EXPECT_TRUE(fwd_tail(softcap, kFwdTiles[1], 132).used());
  FwdTile one_per_tile = tile;
  one_per_tile.persistent = false;
  EXPECT_FALSE(fwd_tail(p, one_per_tile, 132).used());
}

// The cache returns what fwd_tail computes, for more shapes than it holds (entries replaced).
TEST(FwdTail, CachedEqualsComputed) {
  for (int round = 0; round < 2; ++round)
    for (int heads = 20; heads < 60; ++heads) {
      const Params p = causal_params(8, heads, 512, 512);
      const FwdTail a = fwd_tail(p, kFwdTiles[1], 132), b = fwd_tail_cached(p, kFwdTiles[1], 132);
      ASSERT_EQ(a.used(), b.used());
      if (!a.used()) continue;
      EXPECT_EQ(a.pair_rounds, b.pair_rounds);
      EXPECT_EQ(a.first, b.first);
      EXPECT_TRUE(std::equal(a.begin, a.begin + 133, b.begin)) << heads;
      EXPECT_TRUE(std::equal(a.tile, a.tile + a.begin[132], b.tile)) << heads;
    }
}

// Varlen calls take their tiles from a counter in the workspace (fwd_dynamic), where the round-robin
// has more units than CTAs to balance, without softcap / ALiBi; the workspace is asked for whenever a
// call of that shape could (the size query has no device). Dense calls keep the round-robin.
TEST(FwdDynamic, VarlenOnlyWithMoreUnitsThanCtasWithoutScoreMods) {
  Params p = causal_params(8, 32, 4000, 4000);  // varlen: the longest sequence's rows
  p.varlen = true;
  const FwdTile& two = kFwdTiles[1];  // 2 consumer warpgroups (fwd_deals in both instantiations)
  EXPECT_TRUE(fwd_dynamic(p, two, 132));
  EXPECT_GT(fwd_workspace_bytes(p, two), 0u);
  Params dense = p;
  dense.varlen = false;
  EXPECT_FALSE(fwd_dynamic(dense, two, 132));
  EXPECT_EQ(fwd_workspace_bytes(dense, two), 0u);
  Params few = p;  // 1 sequence x 4 heads x 16 pairs of 128-row tiles = 64 units on 64 CTAs
  few.batch = 1;
  few.heads_q = few.heads_k = 4;
  EXPECT_FALSE(fwd_dynamic(few, two, 64));
  EXPECT_TRUE(fwd_dynamic(few, two, 63));
  EXPECT_GT(fwd_workspace_bytes(few, two), 0u);
  Params softcap = p;
  softcap.softcap = 30.0f;  // not in the softcap / ALiBi kernels (their registers)
  EXPECT_FALSE(fwd_dynamic(softcap, two, 132));
  EXPECT_EQ(fwd_workspace_bytes(softcap, two), 0u);
  EXPECT_TRUE(fwd_dynamic(p, kFwdTiles[0], 132));  // the 3-consumer tile's plain kernel
  EXPECT_GT(fwd_workspace_bytes(p, kFwdTiles[0]), 0u);
  FwdTile one_per_tile = two;
  one_per_tile.persistent = false;
  EXPECT_FALSE(fwd_dynamic(p, one_per_tile, 132));
  EXPECT_EQ(fwd_workspace_bytes(p, one_per_tile), 0u);
}

}  // namespace
