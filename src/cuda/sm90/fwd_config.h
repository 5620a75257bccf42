// Tile configurations of the sm90 forward kernel (fwd_kernel.cuh), host-visible so the backend's
// selector can describe its choice without including the kernel.
//
// One CTA = 1 + consumers warpgroups: a producer (TMA loads of Q once and of K/V tiles into a ring
// of kStages buffers) and 2 or 3 consumers of 64 query rows each (block_m = 64 x consumers). Shared
// memory = q_stages x Q (block_m x d) + stages x (K (block_n x d) + V (block_n x dv)), all 16-bit, d and
// dv (head_dim_v) rounded up to 64 columns (sm90_layout_dim).
// Registers per consumer thread: S accumulator block_n / 2 floats, O accumulator dv / 2 (+ block_n / 4
// for the second set of P with overlap); 240 per consumer thread with 2 consumers, 160 with 3
// (setmaxnreg, fwd_kernel.cuh).
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <mutex>
#include <utility>
#include <numeric>
#include <vector>

#include "core/mask.h"
#include "core/params.h"

namespace ioattn::cuda::sm90 {

struct FwdTile {
  int head_dim;     // the columns the kernel computes: 32, 40, 64, 80, 96, 128, 192 or 256 (32 / 40 /
                    // 80 / 96: tiles laid out as d = 64's / 64's / 128's / 128's, TMA filling the
                    // columns past them with zeros, but the products only over the first 32 / 40 / 80
                    // / 96: S = Q K^T in 2 / 3 / 5 / 6 k-steps, O += P V with N = 32 / 40 / 80 / 96)
  int head_dim_v;   // v's and O's: head_dim, or 128 in d = 192's second row (q / k 192, v 128:
                    // DeepSeek's MLA prefill), whose P V product, O registers and V tiles are
                    // sized by it
  int block_m;      // query rows per CTA (64 per consumer warpgroup)
  int consumers;    // consumer warpgroups: 2, or 3 where a third warpgroup's products are what the
                    // tensor cores lack under each softmax (d 64, FA3's choice)
  int block_n;      // keys per K/V tile
  int stages;       // K/V tiles in flight
  int q_stages;     // Q buffers. 2: the producer loads the next tile's Q during this tile, and the
                    // epilogue stages O in this tile's Q buffer (its last S is done) and writes it
                    // with TMA bulk stores, so neither the Q load (~1.5 us) nor the O stores sit
                    // between two tiles (fwd_kernel.cuh). 1 where shared memory has no room (d 256):
                    // the Q load waits for the tile's last S, and O is staged in the last key
                    // block's K and V slots instead (2 consumers, block_n >= 64, stages >= 2).
  bool persistent;  // one CTA per multiprocessor walking the tiles (else one CTA per tile)
  bool overlap;     // softmax of block n overlaps O += P V of block n - 1 (FA3's intra-warpgroup
                    // pipelining; costs a second set of P registers)
  bool pingpong;    // the consumer warpgroups take turns issuing their products (FA3's
                    // inter-warpgroup "pingpong": a round of turns on one named barrier per
                    // warpgroup), so one's softmax runs under the others' products
  const char* why;
};

// The schedule columns were chosen by measurement (H200, bf16, B*S = 16k, H*D = 2048, forward
// TFLOP/s; bench/gpu/bench_variants.py with temporary knobs, since removed; raw:
// bench/results/variants-nvidia-h200-2026-11-22-{sm90-schedule,pingpong}.json):
//   d = 64:  persistent + overlap best of the non-pingpong schedules on all 6 shapes (356 .. 387);
//            adding pingpong: 409 / 287 / 450 / 436 (seqlen 2048 / 2048 causal / 16k / 16k causal)
//            against 346 / 264 / 377 / 368 in the same run.
//   d = 128: without pingpong one CTA per tile without overlap was best (547 / 669 non-causal at
//            2048 / 16k). With pingpong persistent without overlap: 591 / 391 / 666 / 654 against
//            460 / 341 / 587 / 559 for the old schedule in the same run (one CTA per tile with
//            pingpong: 561 / 353 / 684 / 644, + overlap 561 / 362 / 689 / 653).
//            Session 13 (bench/results/variants-nvidia-h200-2026-11-22-s13-fwd-overlap-ab.txt), adding
//            overlap to the persistent pingpong schedule: 643 / 544 / 700 / 681 against 631 / 534 / 691 /
//            676 (+1-2%), 512 / 1024 within +-1%. The same flag at d = 192 / 256: +-3% either way, not
//            taken.
//   d = 192: the d = 256 schedule (block_n 64) with 3 of its 4 column tiles: 596 / 415 / 691 / 673
//            (cuDNN 622 / 519 / 646 / 564 in the same run, session 4), where rounding up to the
//            d = 256 kernel had spent a quarter more products and bytes.
//            Session 14, 80-key blocks with overlap as at d = 256 (bench/results/variants-nvidia-h200-
//            2026-11-22-s14-fwd-d192-n80-ab.txt): 669 / 556 / 744 / 727 against 614 / 521 / 691 / 678
//            (+5-8%), 1024 591 / 425 against 560 / 429, 512 478 / 325 against 460 / 304; without the
//            overlap 666 / 551 / 737 / 714.
//   d = 256: persistent without overlap best or tied on all 6 (643 .. 749); with pingpong 624 / 452 /
//            736 / 710 against 637 / 459 / 750 / 726 without (2048 / 2048 causal / 16k / 16k causal).
//            Session 14, 80-key blocks (FA3's d = 256 tile; smem 224 of 227 KB) against 64
//            (bench/results/variants-nvidia-h200-2026-11-22-s14-fwd-d256-n80{,-ov}-ab.txt): 706 / 581 /
//            801 / 763 against 667 / 544 / 750 / 725 (+5-7%), 1024 625 against 594, 1024 causal and 512
//            -1..-4%; with overlap on top 711 / 589 / 813 / 771, 1024 636 / 451, 512 483 / 303 (second
//            run, 4 rounds: 1024 637 / 449 against 586 / 450, 512 488 / 309 against 485 / 312).
//   d = 64 with 3 consumers (block_m 192, FA3's d = 64 tile; session 8, H200, same run as 2 consumers,
//            bench/results/variants-nvidia-h200-2026-11-22-s8-fwd-d64-3wg-ab.txt): 352 / 409 / 489 / 515
//            / 567 against 323 / 373 / 414 / 432 / 451 at seqlen 512 / 1k / 2k / 4k / 16k (+9% .. +26%),
//            causal 439 / 517 against 397 / 435 at 4k / 16k, but causal 156 / 259 / 333 against 213 /
//            291 / 354 at 512 / 1k / 2k: a 192-row tile under a causal diagonal computes more masked
//            score blocks (every warpgroup takes as many turns as the tile has key blocks: about
//            1.35x the work of 128-row tiles at 512). Hence the second d = 64 row, chosen at run time
//            (fwd_tile_index below) where a mask leaves the queries short key spans. Its K/V stages
//            (session 26, bench/results/variants-nvidia-h200-2026-11-24-s26-fwd-d64-short-stages.txt):
//            2 against 3 at causal 512 / 1024 256 / 334 against 255 / 328 (5 rounds), 4 252 / 328.
inline constexpr FwdTile kFwdTiles[] = {
    {64, 64, 192, 3, 128, 3, 2, true, true, true, "S 64 + O 32 + P 32 regs of 160; 144 KB smem"},
    {64, 64, 128, 2, 128, 2, 2, true, true, true, "masked, short key spans: S 64 + O 32 regs; 96 KB smem"},
    {32, 32, 192, 3, 128, 3, 2, true, true, true, "d = 64's tiles on 32 columns: S 64 + O 16 + P 32 regs of 160; 144 KB smem"},
    {32, 32, 128, 2, 128, 2, 2, true, true, true, "masked, short key spans: S 64 + O 16 regs; 96 KB smem"},
    {40, 40, 192, 3, 128, 3, 2, true, true, true, "d = 64's tiles on 40 columns (head dims 33-40): S 64 + O 20 + P 32 regs of 160"},
    {40, 40, 128, 2, 128, 2, 2, true, true, true, "masked, short key spans: S 64 + O 20 regs; 96 KB smem"},
    {96, 96, 128, 2, 128, 2, 2, true, true, true, "d = 128's tile on 96 columns: S 64 + O 48 + P 32 regs; 192 KB smem"},
    {80, 80, 128, 2, 128, 2, 2, true, true, true, "d = 128's tile on 80 columns (head dims 65-80): S 64 + O 40 + P 32 regs"},
    {128, 128, 128, 2, 128, 2, 2, true, true, true, "S 64 + O 64 + P 32 regs; 192 KB smem"},
    {192, 192, 128, 2, 80, 2, 2, true, true, false, "S 40 + O 96 + P 20 regs; 216 KB smem"},
    {192, 128, 128, 2, 96, 2, 2, true, true, false, "v 128 (MLA): S 48 + O 64 + P 24 regs; 216 KB smem"},
    {256, 256, 128, 2, 80, 2, 1, true, true, false, "S 40 + O 128 + P 20 regs; 224 KB smem"},
    {256, 256, 128, 2, 64, 2, 1, true, true, false, "keys that 80-key blocks pad: S 32 + O 128 + P 16 regs; 192 KB smem"},
};
inline constexpr int kFwdTileCount = sizeof(kFwdTiles) / sizeof(kFwdTiles[0]);

// The sm90 head dim a call of head dim d runs with: 32, 64, 96, 128, 192 or 256 (extra columns read
// as zeros through the tensor maps), or 0 above 256: the kernels built for a listed head dim
// (src/cuda/CMakeLists.txt).
constexpr int sm90_head_dim(int d) {
  return d <= 32 ? 32 : d <= 64 ? 64 : (d <= 96 ? 96 : (d <= 128 ? 128 : (d <= 192 ? 192 : (d <= 256 ? 256 : 0))));
}
// The columns the kernels of sm90 head dim `kernel` compute for a call whose q / k and v have at most
// d_max: d = 64's include kernels over 40 columns (Stable Diffusion 1.x's U-Net at its highest
// resolution: 3 of 4 k-steps, N = 40 of 64), d = 96's over 80 (Phi-2, that U-Net's middle stages: a
// sixth fewer products), picked here for both directions (fwd_tile_index, run_bwd); the kernels live
// in their sm90 head dim's generated files (its forward rows: sm90_head_dim of their head dim).
constexpr int sm90_columns(int kernel, int d_max) {
  return kernel == 96 && d_max <= 80 ? 80 : kernel == 64 && d_max <= 40 ? 40 : kernel;
}

// The first row of columns head_dim (sm90_columns), and whether row i + 1 is another tile of it.
constexpr int fwd_first_tile(int head_dim) {
  for (int i = 0; i < kFwdTileCount; ++i)
    if (kFwdTiles[i].head_dim == head_dim) return i;
  return kFwdTileCount - 1;
}
constexpr bool fwd_has_second_tile(int head_dim) {
  const int i = fwd_first_tile(head_dim);
  return i + 1 < kFwdTileCount && kFwdTiles[i + 1].head_dim == head_dim;
}

// Keys the middle query row sees: under a causal or sliding-window mask, roughly the mean over the
// rows (DESIGN.md's mask, bottom-right aligned; varlen: of the longest sequence).
inline int64_t fwd_key_span(const Params& p) {
  const int64_t sq = p.seqlen_q, sk = p.seqlen_k;
  const int64_t diag = sq / 2 + sk - sq;  // the middle row's diagonal key
  const int64_t left = p.window_left < 0 ? diag : std::min<int64_t>(p.window_left, diag);
  const int64_t right = p.window_right < 0 ? sk - 1 - diag : std::min<int64_t>(p.window_right, sk - 1 - diag);
  return std::max<int64_t>(0, std::min<int64_t>(sk, left + right + 1));
}

// The row a call of sm90 head dim `kernel` runs with (an index into kFwdTiles): the first tile of
// the columns it computes (sm90_columns: d = 64's 40, d = 96's 80), or the second.
// d = 256: 64-key blocks where they pad the keys by 5% less than 80-key blocks do (seqlen_k 512: 512
// against 560 keys; varlen: the longest sequence), else 80.
// d = 64: 2 consumer warpgroups where a mask leaves the queries short key spans. Thresholds as
// measured (H200, d = 64, 3 against 2 consumers): causal won at seqlen 2048 (span 1024: 366-370 /
// 345) once fwd_ctas evened the pairs' round-robin (before: 333 / 354, session 8), lost at 1024
// (span 512: 269 / 285) and 512 (192 / 213; bench/results/variants-nvidia-h200-2026-11-22-s14-fwd-
// balanced-grid-ab.txt); a sliding window (window_left >= 0, no pairing of the tiles) lost at span
// 2001 (315 / 364) and won at span 4001 (428 / 400; bench/results/*-2026-11-22-s8-fwd-d64-*).
inline int fwd_tile_index(int kernel, const Params& p) {
  const int head_dim = sm90_columns(kernel, std::max(p.head_dim, p.head_dim_v));
  const int i = fwd_first_tile(head_dim);
  if (!fwd_has_second_tile(head_dim)) return i;
  if (head_dim == 192) return p.head_dim_v <= 128 ? i + 1 : i;  // (MLA's v of 128 next to q / k of 192)
  if (head_dim == 256) {
    const int64_t keys80 = (p.seqlen_k + 79) / 80 * 80, keys64 = (p.seqlen_k + 63) / 64 * 64;
    return keys64 * 20 < keys80 * 19 ? i + 1 : i;
  }
  if (p.window_left < 0 && p.window_right < 0) return i;
  const int64_t min_span = p.window_left < 0 ? 768 : 3072;
  return fwd_key_span(p) < min_span ? i + 1 : i;
}
inline FwdTile fwd_tile(int head_dim, const Params& p) { return kFwdTiles[fwd_tile_index(head_dim, p)]; }

// Whether the forward pairs its query blocks (a causal-like mask: fwd_kernel.cuh's plan_tile), and
// the tile slots per (head, batch): 2 ceil(m_blocks / 2) when paired (the odd middle block's partner
// slot left empty), else m_blocks.
IOATTN_HD bool tiles_paired(const Params& p) { return p.window_left < 0 && p.window_right >= 0; }
IOATTN_HD int tile_slots(const Params& p, int m_blocks) { return tiles_paired(p) ? 2 * ((m_blocks + 1) / 2) : m_blocks; }

// The key blocks [begin, end) query rows [m0, m_last] of a sequence visit (empty when the mask hides
// every key): plan_tile's range, and fwd_ctas' cost of a tile.
struct KeyBlocks {
  int begin, end;
};
IOATTN_HD KeyBlocks key_blocks(const WindowMask& mask, int m0, int m_last, int sk, int block_n) {
  const int key_begin = mask.first_key(m0), key_end = mask.end_key(m_last, sk);
  const int begin = key_begin / block_n;
  return {begin, key_end > key_begin ? (key_end + block_n - 1) / block_n : begin};
}

// What one CTA takes at a time: a query block, or a pair of them (tiles_paired). Varlen: of the
// longest sequence, for every sequence.
inline int64_t fwd_units(const Params& p, int block_m) {
  const int m_blocks = (p.seqlen_q + block_m - 1) / block_m;
  return int64_t(tile_slots(p, m_blocks)) / (tiles_paired(p) ? 2 : 1) * p.heads_q * p.batch;
}
// The forward's grid (run_fwd_tile): one CTA per unit; with a persistent tile one CTA per
// multiprocessor, or one fewer where that balances the CTAs' loads. CTA c takes units c, c + ctas,
// c + 2 ctas, ... (tile_of), and a head's units are its pairs in a fixed order; with ctas a
// multiple of the pairs per head, every CTA takes the same pair of every head it visits. Where the
// pairs cost different amounts (an odd count of query blocks leaves the middle one unpaired;
// 192-row tiles over 128-key blocks), some CTAs then take only the cheap ones: d = 64 causal at
// seqlen 2048 with 192-row tiles (6 pairs per head, 132 SMs) puts 1.16x the mean load on the
// busiest CTA, 1.03x with 131 CTAs (the rounds' quantization alone). So the round-robin loads are
// computed for sms and sms - 1 CTAs (key blocks per unit, fixed-length sequences; a varlen call's
// lengths are on the device), and sms - 1 is taken where its busiest CTA has at least 2% less to
// do: a model that counts key blocks only is not worth a multiprocessor for less (H200, d = 64
// causal 4096, 11 pairs per head, the model's 1.034 -> 1.031: 441 TFLOP/s with 132 CTAs, 430-436
// with 131; 2048: 345 -> 366-370, bench/results/variants-nvidia-h200-2026-11-22-s14-fwd-balanced-
// grid-ab.txt). Host cost: O(ctas x pairs) per candidate, only where the pairs' costs differ.
inline int fwd_ctas(const Params& p, const FwdTile& t, int sms) {
  const int64_t units = fwd_units(p, t.block_m);
  if (!t.persistent) return static_cast<int>(units);
  if (units <= sms) return static_cast<int>(units);
  if (!tiles_paired(p) || p.varlen || sms < 2) return sms;
  const int block_m = t.block_m, block_n = t.block_n, m_blocks = (p.seqlen_q + block_m - 1) / block_m;
  const WindowMask mask{p.window_left, p.window_right, p.seqlen_k - p.seqlen_q};
  auto blocks = [&](int m_block) {  // key blocks of query block m_block
    const int m0 = m_block * block_m;
    const KeyBlocks kb = key_blocks(mask, m0, std::min(m0 + block_m, p.seqlen_q) - 1, p.seqlen_k, block_n);
    return kb.end - kb.begin;
  };
  const int pairs = (m_blocks + 1) / 2;
  std::vector<int64_t> cost(pairs);
  bool equal = true;
  for (int j = 0; j < pairs; ++j) {
    cost[j] = blocks(m_blocks - 1 - j) + (j != m_blocks - 1 - j ? blocks(j) : 0);
    equal = equal && cost[j] == cost[0];
  }
  if (equal) return sms;
  // Unit u (pair u % pairs of its head) goes to CTA u % ctas, so CTA c's pairs are (c + k ctas) %
  // pairs, k < its unit count: periodic with period pairs / gcd(ctas, pairs), whose sum depends on
  // c % gcd only. Whole periods by that sum, the rest one by one: O(ctas x pairs).
  auto busiest = [&](int ctas) {
    const int g = std::gcd(ctas, pairs), period = pairs / g;
    std::vector<int64_t> period_sum(g, 0);
    for (int j = 0; j < pairs; ++j) period_sum[j % g] += cost[j];
    int64_t most = 0;
    for (int c = 0; c < ctas; ++c) {
      const int64_t n = units / ctas + (c < units % ctas ? 1 : 0);
      int64_t load = n / period * period_sum[c % g];
      for (int64_t k = 0, j = c % pairs; k < n % period; ++k, j = (j + ctas) % pairs) load += cost[j];
      most = std::max(most, load);
    }
    return most;
  };
  return 50 * busiest(sms - 1) <= 49 * busiest(sms) ? sms - 1 : sms;
}

// The persistent forward's last tiles, dealt one by one (fwd_tail). Under a causal-like mask the
// CTAs take whole pairs of query blocks in rounds (tile_of): with P pairs over C CTAs the last
// round gives P % C CTAs one pair more than the others, so at 512 / 1024 keys (15.5 rounds of equal
// pairs, d = 64 / 128) the busiest CTA has 3% more to do than the mean, and the kernel takes as long
// as that CTA. Instead, from the round before the last on (so that at least C pairs remain), the
// remaining pairs' tiles are dealt singly: longest first, each to the CTA with the least work so
// far (LPT: largest processing time first), which leaves the busiest CTA within a tile of the mean,
// where a tile is 1-4 key blocks at 512 keys against a pair's 5 (the model of fwd_tail: within
// 0.5-1.5% of the mean at d = 64 / 128, 512 / 1024 causal, H200's 132 CTAs). Computed on the host
// from the tiles' key blocks, so for equal-length sequences only (a varlen call's lengths are on the
// device), and passed with the launch by value (a kernel parameter: CUDA graphs capture it).
struct FwdTail {
  static constexpr int kMaxCtas = 144;             // every sm_90 part has at most 132 SMs
  static constexpr int kMaxTiles = 4 * kMaxCtas;   // the tail: fewer than 2 C pairs
  static constexpr int kNone = 1 << 29;
  int pair_rounds = kNone;  // rounds of pairs taken by tile_of first: picks 0 .. 2 pair_rounds - 1
  int first = 0;            // the tail's first tile: 2 pair_rounds ctas
  uint16_t begin[kMaxCtas + 1] = {};  // CTA c's tail tiles: first + tile[begin[c] .. begin[c + 1])
  uint16_t tile[kMaxTiles] = {};
  bool used() const { return pair_rounds != kNone; }
};

// Whether the call runs the kMods kernels (softcap or ALiBi compiled in).
inline bool fwd_mods(const Params& p) { return p.softcap > 0.0f || p.alibi_slopes != nullptr; }

// Whether a tile of `consumers` warpgroups deals (mods: the instantiation for softcap / ALiBi): not the d = 64 192-row
// tile's kMods kernel, where the deal's few instructions took ptxas from 24 to 130-146 bytes of spills
// (160 registers per consumer thread).
IOATTN_HD constexpr bool fwd_deals(int consumers, bool mods) { return !(mods && consumers == 3); }

// fwd_tail's limits: rounds of pairs (the deal's gain is at most a pair of the busiest CTA's
// rounds), pairs of query blocks per head (its cost tables; 256 covers 65k rows of 128-row tiles).
constexpr int kMaxRounds = 32, kMaxPairsPerHead = 256;

// A tile's cost in fwd_tail's deal: its key blocks plus one for what a tile costs besides them
// (its first S, which nothing overlaps, and its epilogue).
constexpr int kFwdTileOverhead = 1;

// fwd_tail's schedule for `ctas` CTAs of tile t (used() false where it does not apply: one CTA per
// tile, no causal-like mask, varlen, not fwd_deals, fewer pairs than CTAs or more than kMaxRounds
// rounds of them, more CTAs than kMaxCtas, or a deal whose busiest CTA would not have less to do than
// with the round-robin). Host cost: O(pairs) (at most kMaxRounds x kMaxCtas) for the round-robin's
// loads, O(C log C) for the deal.
inline FwdTail fwd_tail(const Params& p, const FwdTile& t, int ctas) {
  FwdTail tail;
  if (!t.persistent || !tiles_paired(p) || p.varlen || ctas < 2 || ctas > FwdTail::kMaxCtas ||
      !fwd_deals(t.consumers, fwd_mods(p)))
    return tail;
  const int m_blocks = (p.seqlen_q + t.block_m - 1) / t.block_m, per_head = (m_blocks + 1) / 2;
  const int64_t pairs = int64_t(per_head) * p.heads_q * p.batch;
  // From kMaxRounds rounds on the last round's imbalance is below 1 / kMaxRounds of the call: not
  // worth the host's O(rounds x ctas).
  if (pairs < ctas || pairs / ctas > kMaxRounds || per_head > kMaxPairsPerHead) return tail;
  const WindowMask mask{p.window_left, p.window_right, p.seqlen_k - p.seqlen_q};
  // A tile whose rows see no key still writes O = 0 and its LSE: it costs the overhead.
  auto cost = [&](int m_block) {
    const int m0 = m_block * t.block_m;
    const KeyBlocks kb = key_blocks(mask, m0, std::min(m0 + t.block_m, p.seqlen_q) - 1, p.seqlen_k, t.block_n);
    return kb.end - kb.begin + kFwdTileOverhead;
  };
  // Tile 2 u + h of pair u = (head, batch) x per_head + j: h = 0 query block m_blocks - 1 - j, h = 1
  // block j (plan_tile); cost 0 for the latter where the two are the same (an odd count's middle
  // block: plan_tile skips that slot, and the deal leaves it out).
  int half0[kMaxPairsPerHead], half1[kMaxPairsPerHead], most = 0;
  for (int j = 0; j < per_head; ++j) {
    half0[j] = cost(m_blocks - 1 - j);
    half1[j] = j != m_blocks - 1 - j ? cost(j) : 0;
    most = std::max({most, half0[j], half1[j]});  // (the counting sort's range)
  }
  const int rounds = static_cast<int>(pairs / ctas) - 1;
  const int tail_pairs = static_cast<int>(pairs - int64_t(rounds) * ctas);  // in [ctas, 2 ctas)
  // Round-robin loads: the rounds before the tail (both schedules), then the tail's pairs.
  int64_t load[FwdTail::kMaxCtas], rr[FwdTail::kMaxCtas];
  std::fill(load, load + ctas, 0);
  int j = 0;  // pair u's j = u % per_head, stepped
  for (int k = 0; k < rounds; ++k)
    for (int c = 0; c < ctas; ++c, j = j + 1 == per_head ? 0 : j + 1) load[c] += half0[j] + half1[j];
  std::copy(load, load + ctas, rr);
  const int j_tail = j;
  for (int u = 0; u < tail_pairs; ++u, j = j + 1 == per_head ? 0 : j + 1) rr[u % ctas] += half0[j] + half1[j];
  // The deal: the tail's tiles, longest first (a counting sort by cost; ties: lower tile first), each
  // to the least-loaded CTA (ties: lower index), i.e. LPT with a heap of (load, cta).
  const int count = 2 * tail_pairs;
  std::vector<int> by_cost(most + 2, 0), order(count), cta_of(count, -1);
  auto tile_cost = [&](int i) {
    const int jj = (j_tail + i / 2) % per_head;
    return i % 2 ? half1[jj] : half0[jj];
  };
  for (int i = 0; i < count; ++i) ++by_cost[most + 1 - tile_cost(i)];  // bucket 0: the costliest
  for (int b = 1; b <= most + 1; ++b) by_cost[b] += by_cost[b - 1];
  for (int i = count - 1; i >= 0; --i) order[--by_cost[most + 1 - tile_cost(i)]] = i;
  std::pair<int64_t, int> heap[FwdTail::kMaxCtas];  // min-heap of (load, cta)
  for (int c = 0; c < ctas; ++c) heap[c] = {load[c], c};
  auto later = [](const std::pair<int64_t, int>& a, const std::pair<int64_t, int>& b) { return a > b; };
  std::make_heap(heap, heap + ctas, later);
  for (const int i : order) {
    const int c = tile_cost(i);
    if (c == 0) break;  // the empty slots sort last
    std::pop_heap(heap, heap + ctas, later);
    heap[ctas - 1].first += c;
    cta_of[i] = heap[ctas - 1].second;
    std::push_heap(heap, heap + ctas, later);
  }
  int64_t busiest = 0;
  for (int c = 0; c < ctas; ++c) busiest = std::max(busiest, heap[c].first);
  // Kept only where it beats the round-robin of the same pairs (LPT can lose by a tile where the
  // rounds before it left the CTAs uneven: pairs of different costs).
  if (busiest >= *std::max_element(rr, rr + ctas)) return tail;
  // Each CTA's tiles in tile order (heads in order, as the round-robin visits them: CTAs running at
  // one time then read the same heads' K / V, which stay in L2; in the order dealt, the costliest
  // tiles of every head of the tail first, they did not at d = 256, 2048 causal).
  tail.pair_rounds = rounds;
  tail.first = 2 * rounds * ctas;
  std::fill(tail.begin, tail.begin + ctas + 1, 0);
  for (int i = 0; i < count; ++i)
    if (cta_of[i] >= 0) ++tail.begin[cta_of[i] + 1];
  for (int c = 0; c < ctas; ++c) tail.begin[c + 1] += tail.begin[c];
  uint16_t fill[FwdTail::kMaxCtas];
  std::copy(tail.begin, tail.begin + ctas, fill);
  for (int i = 0; i < count; ++i)
    if (cta_of[i] >= 0) tail.tile[fill[cta_of[i]]++] = static_cast<uint16_t>(i);
  return tail;
}

// fwd_tail through a small cache: the deal costs 10-30 us of host time per call (H200 host: a call's
// host time went from 13 to 41 us at d = 64 512 causal), where a training or serving loop asks for
// the same few shapes every step. 16 entries, the oldest replaced; a mutex, as calls may come from
// several threads.
inline FwdTail fwd_tail_cached(const Params& p, const FwdTile& t, int ctas) {
  if (!t.persistent || !tiles_paired(p) || p.varlen) return FwdTail{};  // (fwd_tail's cheap refusals)
  struct Key {
    int block_m, block_n, consumers, batch, heads, sq, sk, left, right, ctas;
    bool mods;
    bool operator==(const Key& o) const {
      return block_m == o.block_m && block_n == o.block_n && consumers == o.consumers && batch == o.batch &&
             heads == o.heads && sq == o.sq && sk == o.sk && left == o.left && right == o.right && ctas == o.ctas &&
             mods == o.mods;
    }
  };
  constexpr int kEntries = 16;
  static std::mutex mu;
  static Key keys[kEntries];
  static FwdTail tails[kEntries];
  static int filled = 0, oldest = 0;
  const Key key{t.block_m, t.block_n, t.consumers, p.batch, p.heads_q, p.seqlen_q, p.seqlen_k, p.window_left,
                p.window_right, ctas, fwd_mods(p)};
  {
    std::lock_guard<std::mutex> lock(mu);
    for (int i = 0; i < filled; ++i)
      if (keys[i] == key) return tails[i];
  }
  const FwdTail tail = fwd_tail(p, t, ctas);
  std::lock_guard<std::mutex> lock(mu);
  const int i = filled < kEntries ? filled++ : std::exchange(oldest, (oldest + 1) % kEntries);
  keys[i] = key;
  tails[i] = tail;
  return tail;
}

// Varlen calls: the persistent CTAs take their tiles from a counter instead of the round-robin.
// The sequences' lengths are on the device, so neither the host's deal (fwd_tail) nor fwd_ctas can
// even the CTAs' loads, and tile_of's round-robin over the longest sequence's query blocks gives
// each CTA a random mix of long tiles, short tiles and empty slots (past a shorter sequence's end):
// a model of the H200's 132 CTAs over 8 sequences of random lengths summing to 16k (the benchmark's
// varlen case; key blocks per tile plus 0.6 for its fixed costs, 200 draws) puts the busiest CTA at
// 1.18x the mean load under a causal mask (1.64x at worst) and 1.11x without (1.62x), and a CTA
// that takes the next tile whenever it needs one at 1.03x and 1.01x. Each CTA's first tile is
// blockIdx.x as before; from there its producer takes gridDim.x + atomicAdd(counter, 1) (the
// counter: the call's workspace, zeroed on the stream before the launch) and hands the index to the
// consumers (fwd_kernel.cuh). Not where the round-robin leaves nothing to balance (one unit per
// CTA), and not in the softcap / ALiBi (kMods) kernels: there the hand-over's registers cost ptxas
// 4 bytes of spills at d = 128 / 192 and dense softcap calls 1-3% (H200, d = 128 softcap 1024 /
// 4096, bench/notes-sm90.md, session 21); dense calls keep the round-robin and the deal.
inline bool fwd_dynamic(const Params& p, const FwdTile& t, int ctas) {
  return p.varlen && t.persistent && !fwd_mods(p) && fwd_units(p, t.block_m) > ctas;
}
// The forward's workspace: the counter, on a 128-byte line of its own (0 where no call of this shape
// takes tiles dynamically: fwd_dynamic's conditions that need no device).
inline size_t fwd_workspace_bytes(const Params& p, const FwdTile& t) {
  return p.varlen && t.persistent && !fwd_mods(p) ? 128 : 0;
}

// The columns of a row of head dim d's tiles in shared memory, forward and backward: whole 64-column
// (128-byte) swizzle atoms, as TMA writes them.
constexpr int sm90_layout_dim(int head_dim) { return (head_dim + 63) / 64 * 64; }

template <int kTile>
struct FwdTileAt {
  static_assert(kTile >= 0 && kTile < kFwdTileCount, "a row of kFwdTiles");
  static constexpr int head_dim = kFwdTiles[kTile].head_dim;
  static constexpr int head_dim_v = kFwdTiles[kTile].head_dim_v;
  static constexpr int block_m = kFwdTiles[kTile].block_m;
  static constexpr int consumers = kFwdTiles[kTile].consumers;
  static constexpr int block_n = kFwdTiles[kTile].block_n;
  static constexpr int stages = kFwdTiles[kTile].stages;
  static constexpr int q_stages = kFwdTiles[kTile].q_stages;
  static constexpr bool persistent = kFwdTiles[kTile].persistent;
  static constexpr bool overlap = kFwdTiles[kTile].overlap;
  static constexpr bool pingpong = kFwdTiles[kTile].pingpong;
};

// Defined in fwd_kernel.cuh, instantiated per head dim in generated files (src/cuda/CMakeLists.txt).
template <class T, int kD>
Status run_fwd(const Params& p, cudaStream_t stream);

}  // namespace ioattn::cuda::sm90
