// The sm90 forward kernel (Hopper: TMA + wgmma, warp-specialised), and its launcher
// run_fwd<T, D>.
//
// Work tiles are (query block of block_m rows, query head, batch), ordered by plan_tile (under a
// causal mask in pairs of equal total cost); per head dim (fwd_config.h) either one CTA per
// multiprocessor walks them (persistent: tile_of's rounds, the last pairs' tiles dealt singly by the
// host's fwd_tail, pick_tile), or one CTA per tile (pair) is launched. A CTA has
// 1 + kConsumers warpgroups (kConsumers = 2, or 3 at d = 64: fwd_config.h):
//   producer   warpgroup 0 gives its registers back (setmaxnreg) and one thread issues the TMA
//              copies: each tile's Q once (into a ring of q_stages buffers: with 2, during the
//              previous tile), then K_n and V_n for each key block into a ring of kStages buffers
//              that runs on across tiles.
//              "full" mbarriers complete when a copy's bytes land, "empty" ones when all
//              4 x kConsumers consumer warps are done reading a buffer.
//   consumers  warpgroups 1 .. kConsumers, 64 query rows each, with 240 registers per thread (160
//              with 3 consumers: FwdWarps). Per key block n (after the first), with kOverlap
//              FA3's intra-warpgroup pipelining (without it, both products are waited for before
//              the softmax):
//                issue S_n = Q K_n^T        (wgmma, A and B from shared memory)
//                issue O += P_{n-1} V_{n-1} (wgmma, P from registers: the fp32 accumulator layout
//                                            is the 16-bit A-operand layout, as on sm80)
//                wait S_n; release K_n; scores -> log2 units / mask / online softmax -> P_n (the
//                common/ helpers: the accumulator fragments have mma.sync's layout), while the
//                tensor cores run the PV product
//                wait PV; release V_{n-1}; rescale O by the new row maxima
//              The consumer warpgroups also run out of step, so one's softmax overlaps the others'
//              products; with kPingpong (FA3's inter-warpgroup scheduling) they take strict turns
//              (0, 1, [2,] 0, ...) issuing the two products of a step, on one named barrier per
//              warpgroup (turn_wait below).
//   epilogue   O / l -> input dtype. Each warpgroup writes its 64 rows into a staging region of
//              shared memory (swizzled as TMA reads it) and one thread stores them with TMA bulk
//              copies; the region is released to the producer only once those copies have read it,
//              which the warpgroup checks after issuing the next tile's first S (by then long done).
//              The region: with q_stages = 2 the warpgroup's rows of the tile's Q buffer (its last S
//              is done); with q_stages = 1 (d = 256: no room for a second Q buffer) the last key
//              block's K slot (warpgroup 0) or V slot (warpgroup 1), once both warpgroups are past
//              their last S and P V (a named barrier between them). Without staging (an empty tile,
//              a varlen block that ends inside the warpgroup's rows, or no tensor map for O)
//              straight from registers to global memory. LSE in fp32 from registers.
// Dropout is not served here (backend.cu sends it to the sm80 kernel).
#pragma once

#include <cuda/ptx>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdint>
#include <string>

#include "cuda/common/fastdiv.h"
#include "cuda/common/mma.cuh"
#include "cuda/host_util.h"
#include "cuda/common/seq.cuh"
#include "cuda/common/softmax.cuh"
#include "fwd_config.h"
#include "tma.h"
#include "wgmma.cuh"

namespace ioattn::cuda::sm90 {

namespace ptx = ::cuda::ptx;

// The warpgroups of tile kTile (a row of fwd_config.h's kFwdTiles): the producer and kConsumers consumers, and the register
// split (setmaxnreg, multiples of 8): the producer's one TMA thread needs few, the consumers share
// the rest of the 64K: 128 x 24 + 256 x 240 = 64512 with 2 consumers, 128 x 24 + 384 x 160 = 64512
// with 3.
template <int kTile>
struct FwdWarps {
  static constexpr int kConsumers = FwdTileAt<kTile>::consumers;
  static_assert(kConsumers == 2 || kConsumers == 3, "the sm90 forward has 2 or 3 consumer warpgroups");
  static_assert(FwdTileAt<kTile>::block_m == 64 * kConsumers, "64 query rows per consumer warpgroup");
  static constexpr int kThreads = 128 * (1 + kConsumers);
  static constexpr int kConsumerWarps = 4 * kConsumers;
  static constexpr int kProducerRegs = 24;
  static constexpr int kConsumerRegs = (65536 / 128 - kProducerRegs) / kConsumers / 8 * 8;
  static_assert(kConsumerRegs <= 256 && 128 * (kProducerRegs + kConsumers * kConsumerRegs) <= 65536,
                "setmaxnreg");
};

// Byte offsets in the (1024-byte aligned) dynamic shared memory.
template <int kTile>
struct FwdSmem {
  static constexpr int kD = sm90_layout_dim(FwdTileAt<kTile>::head_dim);  // columns laid out
  static constexpr int kBM = FwdTileAt<kTile>::block_m, kBN = FwdTileAt<kTile>::block_n;
  static constexpr int kStages = FwdTileAt<kTile>::stages;
  static constexpr int kQStages = FwdTileAt<kTile>::q_stages;
  static constexpr int kDV = sm90_layout_dim(FwdTileAt<kTile>::head_dim_v);  // v's and O's columns laid out
  static constexpr int kChunks = kD / 64;  // 64-column tiles per row of Q and K (wgmma.cuh)
  static constexpr int kVChunks = kDV / 64;  // of V and O
  static constexpr int kQBytes = kBM * kD * 2;
  static constexpr int kKBytes = kBN * kD * 2;
  static constexpr int kVBytes = kBN * kDV * 2;
  static constexpr int kQ = 0;
  static constexpr int kK = kQ + kQStages * kQBytes;
  static constexpr int kV = kK + kStages * kKBytes;
  static constexpr int kBar = kV + kStages * kVBytes;
  // The dynamic schedule's hand-over ring (fwd_kernel's protocol): kHandRing tile indices, each
  // with a full and an empty mbarrier.
  static constexpr int kHandRing = 4;
  // q_full[], q_empty[], k_full[], v_full[], k_empty[], v_empty[], hand_full[], hand_empty[]
  static constexpr int kBars = 2 * kQStages + 4 * kStages + 2 * kHandRing;
  static constexpr int kHand = kBar + 8 * kBars;  // int[kHandRing]
  static constexpr int kBytes = kHand + 4 * kHandRing + 1024;  // + room to align the base to 1024
  static_assert(kBytes <= 227 * 1024, "sm90 shared memory per block");
};

__device__ __forceinline__ void wait_barrier(uint64_t* bar, uint32_t parity) {
  while (!ptx::mbarrier_try_wait_parity(bar, parity)) {
  }
}

// bar.sync (bar.arrive when !kSync) of kThreads threads on named barrier
// kFirst + (i + kShift) % kCount, for a warp-uniform i in [0, kCount). The id must be an immediate
// (with an id in a register ptxas reserves all 16 barriers), hence a branch per value of i (kI: the
// value this instantiation handles; the last one is taken without a test).
template <bool kSync, int kThreads, int kFirst, int kCount, int kShift = 0, int kI = 0>
__device__ __forceinline__ void named_barrier(int i) {
  if constexpr (kI + 1 < kCount) {
    if (i != kI) {
      named_barrier<kSync, kThreads, kFirst, kCount, kShift, kI + 1>(i);
      return;
    }
  }
  constexpr int kId = kFirst + (kI + kShift) % kCount;
  if constexpr (kSync)
    asm volatile("bar.sync %0, %1;\n" ::"n"(kId), "n"(kThreads) : "memory");
  else
    asm volatile("bar.arrive %0, %1;\n" ::"n"(kId), "n"(kThreads) : "memory");
}

// The named barriers (0 is __syncthreads):
//   1 .. kConsumers               consumer warpgroup c's pingpong turn: barrier 1 + c
//   kConsumers + 1 .. 2 kConsumers  warpgroup c's epilogue_sync: barrier kConsumers + 1 + c
//   2 kConsumers + 1              all consumer warpgroups: consumers_sync (q_stages = 1 only)
//   2 kConsumers + 2              warpgroup 1's last S done, for warpgroup 0: early_meet (q_stages = 1)
// (with 2 consumers 1-2, 3-4 and 5, as before the third warpgroup; with 3, 1-3, 4-6 and 7.)
// ptxas counts barriers up to the highest id used (d = 256, no pingpong: 6, ids 1-2 unused).
//
// Pingpong turns (kPingpong): consumer warpgroup c may issue a step's products only while it holds
// the turn, i.e. after bar.sync on its barrier 1 + c; it passes the turn with bar.arrive on the next
// warpgroup's barrier (c + 1 mod kConsumers) right after issuing (the products then run
// asynchronously, in issue order on the tensor cores, while the next warpgroups issue theirs and
// this one does its softmax). Each barrier completes with 256 threads: the 128 of its owner's
// bar.sync and the 128 of the previous warpgroup's bar.arrive. Protocol and why it cannot deadlock:
// see the consumer code (kernel start, main loop, kernel end).
template <int kConsumers>
__device__ __forceinline__ void turn_wait(int cwg) {
  named_barrier<true, 256, 1, kConsumers>(cwg);
}
template <int kConsumers>
__device__ __forceinline__ void turn_pass(int cwg) {
  named_barrier<false, 256, 1, kConsumers, 1>(cwg);
}

// The 128 threads of consumer warpgroup cwg: the TMA epilogue's hand-off from the warpgroup's
// shared-memory writes to its storing thread.
template <int kConsumers>
__device__ __forceinline__ void epilogue_sync(int cwg) {
  named_barrier<true, 128, kConsumers + 1, kConsumers>(cwg);
}

// All consumer threads: with q_stages = 1 the O staging writes into K / V slots that the other
// warpgroup's last S / P V may still be reading.
template <int kConsumers>
__device__ __forceinline__ void consumers_sync() {
  named_barrier<true, 128 * kConsumers, 2 * kConsumers + 1, 1>(0);
}

// q_stages = 1, a tile whose last key block warpgroup 0 skips (kSkipMasked): warpgroup 0 stages O in
// that block's K slot once warpgroup 1's last S (the slot's one reader) is done, instead of meeting
// warpgroup 1 after its last P V (consumers_sync). Warpgroup 1 arrives (128 threads), warpgroup 0
// syncs (128): a barrier of 256.
__device__ __forceinline__ void early_meet_arrive() { asm volatile("bar.arrive 6, 256;\n" ::: "memory"); }
__device__ __forceinline__ void early_meet_sync() { asm volatile("bar.sync 6, 256;\n" ::: "memory"); }

// One work tile: a query block of one head of one sequence, and the key blocks it must visit.
// Producer and consumers derive the same plan from the tile index, so they agree on every load.
struct FwdTilePlan {
  int h, b, m0, m_last;  // query rows [m0, m_last] of the sequence
  int n_begin, n_end;    // key blocks [n_begin, n_end): empty when the mask hides every key
  SeqBounds sb;
  ScoreMod mod;
  bool skip;             // the block starts past this (varlen) sequence's end: nothing to do
};

// Under a causal-like mask (window_left < 0, window_right >= 0) a query block's cost grows with
// its index. The tiles then go in pairs: the slot of query blocks j and m_blocks - 1 - j of one head
// (the costlier first), which together cost about the same for every j, and one CTA takes both tiles
// of a pair (tile_of; where the pairs' costs differ, fwd_config.h's fwd_ctas sizes the grid). So the
// CTAs' loads stay even without sorting the tiles by cost, and the CTAs running at one time work on
// few heads: a head's m_blocks / 2 pairs sit on neighbouring CTAs, all
// reading the head's K/V blocks from the first on, nearly in step, so most reads hit L2. (An
// earlier order sorted all tiles by cost, the costliest query block of every head first: the CTAs
// running at one time each read a different head's K/V, from device memory; seqlen 2048 causal ran
// at 0.73-0.78x cuDNN.) Tiles per (head, batch): tile_slots (fwd_config.h, with tiles_paired).

// The tile index's divisors (plan_tile), prepared once on the host: FastDiv (common/fastdiv.h)
// instead of a ~20-instruction integer division per quotient on the path between two tiles.
struct FwdTileOrder {
  int m_blocks;      // query blocks of the longest sequence
  FastDiv per_head;  // units of one (head, batch): pairs of query blocks (tiles_paired) or query blocks
  FastDiv heads;     // p.heads_q
  FastDiv group;     // p.group: query heads per kv head
  static FwdTileOrder make(const Params& p, int m_blocks) {
    return {m_blocks, FastDiv::make(tiles_paired(p) ? (m_blocks + 1) / 2 : m_blocks), FastDiv::make(p.heads_q),
            FastDiv::make(p.group)};
  }
};

template <int kBM, int kBN>
__device__ __forceinline__ FwdTilePlan plan_tile(const Params& p, int t, const FwdTileOrder& order) {
  // Without a causal-like mask every query block costs the same: query block fastest, so the CTAs
  // running at one time share a head's K/V in L2.
  FwdTilePlan w;
  const int m_blocks = order.m_blocks;
  int m_block, hb, j;
  bool dup = false;  // the empty partner slot of an odd middle block
  if (tiles_paired(p)) {
    order.per_head.divmod(t >> 1, hb, j);  // pair j of the (head, batch) hb
    m_block = (t & 1) ? j : m_blocks - 1 - j;
    dup = (t & 1) && j == m_blocks - 1 - j;
  } else {
    order.per_head.divmod(t, hb, j);
    m_block = m_blocks - 1 - j;
  }
  order.heads.divmod(hb, w.b, w.h);
  w.sb = seq_bounds(p, w.b);
  w.m0 = m_block * kBM;
  w.skip = dup || w.m0 >= w.sb.sq;
  w.m_last = min(w.m0 + kBM, w.sb.sq) - 1;
  w.mod = ScoreMod::make(p, w.b, w.h, w.sb.sq, w.sb.sk);
  const KeyBlocks kb = key_blocks(w.mod.mask, w.m0, w.m_last, w.sb.sk, kBN);
  w.n_begin = kb.begin;
  w.n_end = kb.end;
  return w;
}

// The tile CTA `cta` of `ctas` takes in round r. Paired tiles (tiles_paired): the two tiles of pair
// (r / 2) ctas + cta in rounds r and r + 1. Otherwise tile r ctas + cta, rounds alternating direction
// (snake order).
__device__ __forceinline__ int tile_of(int r, int cta, int ctas, bool paired) {
  if (paired) return ((r >> 1) * ctas + cta) * 2 + (r & 1);
  return r * ctas + ((r & 1) ? ctas - 1 - cta : cta);
}
// Whether round r has any tile for some CTA (the rounds' loop bound).
__device__ __forceinline__ bool round_exists(int r, int ctas, int tiles, bool paired) {
  return (paired ? (r >> 1) * ctas * 2 : r * ctas) < tiles;
}
// CTA `cta`'s picks r = 0, 1, ...: tile_of's rounds, then, where the host dealt the last pairs' tiles
// singly (FwdTail, fwd_config.h), the CTA's tiles of that deal. pick_exists bounds the picks' loop;
// a tile >= tiles is an empty slot of the last round (skipped).
// kDeal false (fwd_deals): tile_of's rounds only, the kernel's code as before the deal.
template <bool kDeal>
__device__ __forceinline__ bool pick_exists(int r, int cta, int ctas, int tiles, bool paired, const FwdTail& tail) {
  if (kDeal && r >= 2 * tail.pair_rounds) return tail.begin[cta] + (r - 2 * tail.pair_rounds) < tail.begin[cta + 1];
  return round_exists(r, ctas, tiles, paired);
}
template <bool kDeal>
__device__ __forceinline__ int pick_tile(int r, int cta, int ctas, bool paired, const FwdTail& tail) {
  if (kDeal && r >= 2 * tail.pair_rounds) return tail.first + tail.tile[tail.begin[cta] + (r - 2 * tail.pair_rounds)];
  return tile_of(r, cta, ctas, paired);
}

// kMods: the call uses softcap or ALiBi (compiled out otherwise, as in the sm80 kernel).
// gridDim.x CTAs walk the tiles in rounds (tile_of); persistent (one CTA per multiprocessor), one
// tile's epilogue overlaps the next tile's loads; with one CTA per tile each does round 0 only.
// kTile: the row of fwd_config.h's kFwdTiles (head dim, tile, schedule).
template <class T, int kTile, bool kMods>
__global__ void __launch_bounds__(FwdWarps<kTile>::kThreads, 1)
    fwd_kernel(const __grid_constant__ Params p, const __grid_constant__ CUtensorMap tm_q,
               const __grid_constant__ CUtensorMap tm_k, const __grid_constant__ CUtensorMap tm_v,
               const __grid_constant__ CUtensorMap tm_o, bool o_tma, const FwdTileOrder order, int tiles,
               const __grid_constant__ FwdTail tail, int* sched) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using L = FwdSmem<kTile>;
  using W = FwdWarps<kTile>;
  constexpr int kD = FwdTileAt<kTile>::head_dim;  // columns computed (L::kD laid out: 128 at d = 96)
  constexpr bool kOverlap = FwdTileAt<kTile>::overlap, kPingpong = FwdTileAt<kTile>::pingpong;
  // Warpgroups skip key blocks masked from all their rows: where a block has fewer keys than the
  // tile has rows (d = 64: 192 x 128, 1.5 of a causal tile's 3 x blocks warpgroup-blocks on
  // average; d = 192 / 256: 128 x 80 and 128 x 64, warpgroup 0 one block of every causal tile), so
  // whole blocks of a causal tile's diagonal miss a warpgroup (not at 128 x 128: each warpgroup's
  // rows see part of the diagonal block). With q_stages = 1 (d = 256) the skipped last block's
  // K / V slot may still take O (keep_k / keep_v below): the skip loop then waits for its load and
  // defers that arrival as the main loop does. Measured (H200, d = 64 causal 2048, with fwd_ctas'
  // grid): 389 TFLOP/s against 376 without; non-causal unchanged (490 / 490). (Session 9's version
  // spilled and lost 9-20%: this one keeps the live loop as it was and puts the empty turns in a loop
  // of their own after the last P V.)
  constexpr bool kSkipMasked = FwdTileAt<kTile>::block_n < FwdTileAt<kTile>::block_m;
  constexpr bool kDeal = fwd_deals(FwdTileAt<kTile>::consumers, kMods);  // the last tiles dealt singly (fwd_tail)
  // Tiles from the counter (fwd_dynamic; run_fwd_tile passes it), not in the softcap / ALiBi kernels.
  constexpr bool kDynamic = !kMods;
  const bool dynamic = kDynamic && sched != nullptr;
  constexpr int kConsumers = W::kConsumers;
  constexpr int kBM = L::kBM, kBN = L::kBN, kStages = L::kStages, kQStages = L::kQStages;
  constexpr int kNT = kBN / 8;  // 8-key column tiles of S
  constexpr int kDT = FwdTileAt<kTile>::head_dim_v / 8;  // 8-column tiles of O
  constexpr int kPT = kBN / 16; // 16-key k-steps of O += P V

  extern __shared__ unsigned char smem_raw[];
  unsigned char* smem = smem_align_1024(smem_raw);
  const uint32_t smem_base = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  uint64_t* q_full = reinterpret_cast<uint64_t*>(smem + L::kBar);
  uint64_t* q_empty = q_full + kQStages;
  uint64_t* k_full = q_empty + kQStages;
  uint64_t* v_full = k_full + kStages;
  uint64_t* k_empty = v_full + kStages;
  uint64_t* v_empty = k_empty + kStages;
  uint64_t* hand_full = v_empty + kStages;           // [kHandRing] (dynamic: the protocol below)
  uint64_t* hand_empty = hand_full + L::kHandRing;   // [kHandRing]
  int* hand_tile = reinterpret_cast<int*>(smem + L::kHand);
  constexpr int kEndTile = -1;  // handed over after the last tile

  const int warp = __shfl_sync(0xffffffffu, static_cast<int>(threadIdx.x) / 32, 0);  // warp-uniform
  const int lane = threadIdx.x % 32;
  const bool paired = tiles_paired(p);  // the tile order (tile_of)
  if (threadIdx.x == 0) {
    for (int s = 0; s < kQStages; ++s) {
      ptx::mbarrier_init(q_full + s, 1);
      ptx::mbarrier_init(q_empty + s, W::kConsumerWarps);
    }
    for (int s = 0; s < kStages; ++s) {
      ptx::mbarrier_init(k_full + s, 1);
      ptx::mbarrier_init(v_full + s, 1);
      ptx::mbarrier_init(k_empty + s, W::kConsumerWarps);
      ptx::mbarrier_init(v_empty + s, W::kConsumerWarps);
    }
    for (int i = 0; i < L::kHandRing; ++i) {
      ptx::mbarrier_init(hand_full + i, 1);                      // the producer's hand-over
      ptx::mbarrier_init(hand_empty + i, 128 * W::kConsumers);   // every consumer thread's read
    }
    ptx::fence_mbarrier_init(ptx::sem_release, ptx::scope_cluster);
  }
  __syncthreads();

  // Ring positions run on across tiles: kv counts K/V tiles, q counts tiles whose Q was loaded.
  if (warp < 4) {  // ---- producer warpgroup ----
    regs_dealloc<W::kProducerRegs>();
    if (warp != 0 || lane != 0) return;
    int kv = 0, q = 0, hand = 0;
    // The dynamic schedule (fwd_config.h's fwd_dynamic). Only this thread knows which tiles the CTA
    // takes: each CTA's first is blockIdx.x, each later one gridDim.x + atomicAdd(sched, 1), taken
    // when the previous tile's loads are all issued (so the atomic's latency hides behind the
    // consumers' last key blocks, and no tile is bound to a CTA long before it can start). Every tile
    // that is not skipped (past its sequence's end; an odd middle block's empty partner), with keys
    // or without, and after the last one kEndTile, is handed over through a ring of kHandRing slots:
    // hand-over h stores the index in slot h % kHandRing and arrives on its hand_full (release);
    // every consumer thread waits for that phase (acquire), reads the slot in find_tile and arrives
    // on its hand_empty (count: all consumer threads, each arriving for its own read, the pattern
    // racecheck follows); hand-over h + kHandRing waits for that phase first. The consumers read
    // hand-over h + 1 while tile h's last P V runs (plan_next), before the blocks masked from their
    // rows (kSkipMasked) are released. No deadlock: the producer hands over tile h + 1 once tile h's
    // loads are issued, and the last of them, block n_end - 1, needs the release of block
    // n_end - 1 - kStages (V: released a step after its product), which every warpgroup made before
    // its plan_next as long as it skips at most kStages - 1 blocks (the static_assert below); the
    // consumers' other waits are on loads of tiles up to h, issued before. The statically scheduled
    // calls (sched == nullptr) use neither the ring nor the counter.
    static_assert((kBM - 64 + kBN - 1) / kBN <= kStages - 1,
                  "a warpgroup's masked blocks (at most those of the tile's last 64-row part's extra rows) "
                  "must leave the producer the releases it needs for the tile's last loads");
    auto hand_over = [&](int t) {  // dynamic: tile t (or kEndTile) to the consumers
      const int i = hand % L::kHandRing;
      if (hand >= L::kHandRing) wait_barrier(hand_empty + i, ((hand / L::kHandRing) & 1) ^ 1);
      hand_tile[i] = t;
      ptx::mbarrier_arrive(hand_full + i);  // (release: the store before the consumers' read)
      ++hand;
    };
    for (int r = 0;; ++r) {
      int t;
      if (dynamic) {
        t = r == 0 ? static_cast<int>(blockIdx.x) : static_cast<int>(gridDim.x) + atomicAdd(sched, 1);
        if (t >= tiles) {
          hand_over(kEndTile);
          break;
        }
      } else {
        if (!pick_exists<kDeal>(r, blockIdx.x, gridDim.x, tiles, paired, tail)) break;
        t = pick_tile<kDeal>(r, blockIdx.x, gridDim.x, paired, tail);
        if (t >= tiles) continue;
      }
      const FwdTilePlan w = plan_tile<kBM, kBN>(p, t, order);
      if (w.skip) continue;
      if (dynamic) hand_over(t);
      if (w.n_begin >= w.n_end) continue;
      const int hk = order.group.div(w.h);
      const int bt = p.varlen ? 0 : w.b;  // varlen: the row index carries the sequence
      const int q_row = static_cast<int>(w.sb.q_row0) + w.m0, k_row = static_cast<int>(w.sb.k_row0);
      // Q into its ring slot once the tile that used the slot last is done with it (its last S, and
      // with the TMA epilogue its O stores' reads of the slot).
      const int qs = q % kQStages;
      if (q >= kQStages) wait_barrier(q_empty + qs, ((q / kQStages) & 1) ^ 1);
      ++q;
      ptx::mbarrier_arrive_expect_tx(ptx::sem_release, ptx::scope_cta, ptx::space_shared, q_full + qs, L::kQBytes);
#pragma unroll
      for (int c = 0; c < L::kChunks; ++c) {
        const int32_t coords[4] = {c * 64, q_row, w.h, bt};
        ptx::cp_async_bulk_tensor(ptx::space_cluster, ptx::space_global,
                                  smem + L::kQ + qs * L::kQBytes + c * kBM * kSwizzleBytes, &tm_q, coords, q_full + qs);
      }
      for (int n = w.n_begin; n < w.n_end; ++n, ++kv) {
        const int s = kv % kStages;
        const uint32_t parity = ((kv / kStages) & 1) ^ 1;  // the consumers' release one round ago
        // K_n, then V_n, into ring slot s: wait until the slot is free, announce the bytes, copy.
        // (bytes and chunks: K's or V's, compile-time constants once inlined)
        auto load = [&](const CUtensorMap* map, int base, int bytes, int chunks, uint64_t* full, uint64_t* empty) {
          if (kv >= kStages) wait_barrier(empty + s, parity);
          ptx::mbarrier_arrive_expect_tx(ptx::sem_release, ptx::scope_cta, ptx::space_shared, full + s, bytes);
#pragma unroll
          for (int c = 0; c < chunks; ++c) {
            const int32_t coords[4] = {c * 64, k_row + n * kBN, hk, bt};
            ptx::cp_async_bulk_tensor(ptx::space_cluster, ptx::space_global,
                                      smem + base + s * bytes + c * kBN * kSwizzleBytes, map, coords, full + s);
          }
        };
        load(&tm_k, L::kK, L::kKBytes, L::kChunks, k_full, k_empty);
        load(&tm_v, L::kV, L::kVBytes, L::kVChunks, v_full, v_empty);
      }
    }
    return;
  }

  // ---- consumer warpgroups ----
  regs_alloc<W::kConsumerRegs>();
  const int cwg = warp / 4 - 1;  // 0 .. kConsumers - 1: query rows [64 cwg, 64 cwg + 64) of the block
  // Pingpong protocol (kPingpong), for K = kConsumers warpgroups (2 or 3). Turns are the main-loop
  // steps (one per key block after a tile's first); a step's turn covers issuing S_n = Q K_n^T and
  // O += P_{n-1} V_{n-1}. Warpgroup c's turn is bar.sync on its barrier B_c (turn_wait); it ends
  // with bar.arrive on B_{c+1 mod K} (turn_pass). Warpgroup 0 takes the first turn: warpgroup K - 1
  // arrives once on B_0 here, before any step.
  //   Order: every warpgroup takes the same turns (below), so number them j = 1, 2, ... per
  //   warpgroup. B_0's arrivals are K - 1's initial one, then one per turn of K - 1; B_c's (c > 0)
  //   one per turn of c - 1. So warpgroup c's j-th sync completes with its predecessor's j-th
  //   arrival (counting K - 1's initial one as the first on B_0): turn j of c follows turn j of
  //   c - 1, and turn j of 0 follows turn j - 1 of K - 1. Turns run strictly 0, 1, .., K - 1, 0, ...
  //   over the whole kernel, across tile boundaries.
  //   At most one pending arrival per barrier (so an arrival is never counted into the wrong phase:
  //   bar.arrive does not wait): the predecessor's next arrival on B_c needs its next turn, which by
  //   the order above comes after c's current turn, i.e. after c's sync consumed the pending one.
  //   This holds per warp too: a warp's arrival comes after its own sync, which completes only when
  //   all 256 threads of the previous phase arrived.
  //   Equal turn counts: every per-tile decision (the tile index, w.skip, n_begin / n_end: plan_tile
  //   has no per-warpgroup input; stage_o and the row bounds only choose how O is written) is the
  //   same for all K, and each takes n_end - n_begin - 1 turns in a tile (none for a skipped or
  //   empty tile, none for a single key block). The first S of a tile and the last P V are issued
  //   outside the turns (as in FA3), so nothing else is ordered by them.
  //   End: B_1 .. B_{K-1} end with as many arrivals as syncs; B_0 holds K - 1's last arrival (after
  //   its last turn, or its initial one when there were no turns), which warpgroup 0 consumes with
  //   one more turn_wait at kernel end.
  //   No deadlock, including the TMA producer (induction on the CTA's global key-block index g, the
  //   same sequence for every warpgroup): assume every warpgroup can finish its steps before g
  //   (releases included). The producer loads K_g after the releases of K_{g - kStages} (in step
  //   g - kStages) and of V_{g - 1 - kStages} (in step g - kStages, or at the end of its tile), and
  //   Q of a tile after its slot's release in an earlier tile's step: all before step g; so K_g
  //   lands. A warpgroup
  //   waits for K_g before its turn, never while holding it; its turn for g needs only its
  //   predecessor's turn for g (which needs K_g, landed) or, for warpgroup 0, K - 1's turn for an
  //   earlier block (finished by assumption); inside the turn it waits for V_{g-1}, which the
  //   producer issued before K_g. So every warpgroup finishes step g. No warpgroup ever waits, at a
  //   turn or an mbarrier, for something only a later step of another warpgroup provides.
  if (kPingpong && cwg == kConsumers - 1) turn_pass<kConsumers>(cwg);
  const uint32_t q_wg = smem_base + L::kQ + 64 * cwg * kSwizzleBytes;  // this warpgroup's rows, slot 0
  uint32_t q_addr = q_wg;  // ... of the current tile's Q slot
  const bool leader = threadIdx.x % 128 == 0;  // the warpgroup's TMA-store thread
  // The slot whose O stores this warpgroup issued but has not yet released (-1: none): a Q slot
  // (q_stages = 2) or, with q_stages = 1, the ring slot of the last key block whose K (warpgroup 0)
  // or V (warpgroup 1) buffer held O. Released (its 4 warps' arrivals at once) after the next tile's
  // first S is issued, once the stores have read it: the producer needs a Q slot only for the tile
  // after next, and a K / V slot only for the next tile's second key block (see the epilogue).
  int o_pending = -1;
  static_assert(kQStages > 1 || (kConsumers == 2 && kBN >= 64 && kStages >= 2),
                "O staged in K / V: one K and one V slot of >= 64 rows per warpgroup, and the next tile's "
                "first key block in another slot");
  auto o_slot_empty = [&](int slot) {  // the mbarrier that hands a staging slot back to the producer
    if constexpr (kQStages > 1)
      return q_empty + slot;
    else
      return (cwg == 0 ? k_empty : v_empty) + slot;
  };
  auto arrive = [&](uint64_t* bar) {  // one arrival per warp, after all its lanes are done
    __syncwarp();
    if (lane == 0) ptx::mbarrier_arrive(bar);
  };
  // S = Q K^T for the K tile in ring slot s: kD / 16 k-steps of m64 x n(kBN) x k16, rounded up (d = 40:
  // 3, the last over TMA's zero-filled columns 40-47) (not waited on).
  auto issue_s = [&](float (&sacc)[kNT][4], int s) {
    const uint64_t da0 = make_desc(q_addr, 16, kAtomBytes);
    const uint64_t db0 = make_desc(smem_base + L::kK + s * L::kKBytes, 16, kAtomBytes);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < (kD + 15) / 16; ++kk) {
      const uint32_t off = (kk % 4) * 32;  // 16 columns = 32 bytes into the 64-column tile
      wgmma_ss<T, 0, 0>(sacc, desc_add(da0, (kk / 4) * kBM * kSwizzleBytes + off),
                        desc_add(db0, (kk / 4) * kBN * kSwizzleBytes + off), kk > 0 ? 1 : 0);
    }
    wgmma_commit();
  };
  // O += P V for the V tile in ring slot s: kBN / 16 k-steps of m64 x n(kD) x k16, V read N-major.
  auto issue_pv = [&](float (&o)[kDT][4], const uint32_t (&pk)[kPT][4], int s) {
    const uint64_t db0 = make_desc(smem_base + L::kV + s * L::kVBytes, kBN * kSwizzleBytes, kAtomBytes);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kPT; ++kk) wgmma_rs<T, 1>(o, pk[kk], desc_add(db0, kk * 16 * kSwizzleBytes), 1);
    wgmma_commit();
  };

  int kv = 0, q = 0;
  // The CTA's next tile from round r on (r left at its round), its plan in `next`; false if none.
  // Planning a tile costs integer divisions and the score-mod set-up, a few hundred cycles of
  // dependent instructions: the next tile is planned while this tile's last P V product runs
  // (plan_next below), not between the two tiles.
  auto find_tile = [&](int& r, FwdTilePlan& next) {
    for (;; ++r) {
      int t;
      if (kDynamic && sched != nullptr) {  // dynamic: hand-over r (the producer hands over no skipped tile)
        const int i = r % L::kHandRing;
        wait_barrier(hand_full + i, (r / L::kHandRing) & 1);
        t = hand_tile[i];
        ptx::mbarrier_arrive(hand_empty + i);
        if (t == kEndTile) return false;
      } else {
        if (!pick_exists<kDeal>(r, blockIdx.x, gridDim.x, tiles, paired, tail)) return false;
        t = pick_tile<kDeal>(r, blockIdx.x, gridDim.x, paired, tail);
        if (t >= tiles) continue;
      }
      next = plan_tile<kBM, kBN>(p, t, order);
      if (!next.skip) return true;
    }
  };
  int r = 0;
  FwdTilePlan next;
  bool has_next = find_tile(r, next);
  while (has_next) {
    const FwdTilePlan w = next;
    ++r;
    bool planned = false;
    auto plan_next = [&] {
      if (!planned) has_next = find_tile(r, next);
      planned = true;
    };
    const int row0 = w.m0 + 64 * cwg + 16 * (warp % 4) + lane / 4;  // sequence row of s[.][0..1]; +8: [2..3]
    const int wg_m0 = w.m0 + 64 * cwg;
    const int wg_m_last = max(wg_m0, min(wg_m0 + 63, w.m_last));
    // kSkipMasked: the key blocks [wg_n_end, n_end) hide every key from this warpgroup's rows (a
    // 192-row tile over 128-key blocks under a causal mask: 1 or 2 of every tile's 3 warpgroups end
    // a block early). Their products are skipped; the warpgroup still takes their turns and
    // releases their K / V slots once loaded (below). At least the tile's first block is computed.
    auto blocks_end = [&](int c) {  // the end of warpgroup c's key blocks
      const int m0 = w.m0 + 64 * c, m_last = max(m0, min(m0 + 63, w.m_last));
      const int key_end = w.mod.mask.end_key(m_last, w.sb.sk);
      return kSkipMasked ? max(w.n_begin + 1, min(w.n_end, (key_end + kBN - 1) / kBN)) : w.n_end;
    };
    const int wg_n_end = blocks_end(cwg);
    // This warpgroup's O goes out through shared memory and TMA (epilogue below). A varlen block
    // must not reach past its sequence: TMA clips only at the packed tensor's end.
    const bool stage_o = o_tma && w.n_begin < w.n_end && (!p.varlen || wg_m0 + 64 <= w.sb.sq);
    // q_stages = 1: O is staged in the last key block's K slot (warpgroup 0) or V slot (warpgroup
    // 1), whose arrival on the slot's empty barrier is then deferred like a Q slot's. The two
    // warpgroups meet before either writes whenever warpgroup 0 stages (stage_o at w.m0; warpgroup
    // 1 stages only if warpgroup 0 does: its rows come later).
    const bool o_in_q = kQStages > 1 && stage_o;
    const bool meet = kQStages == 1 && o_tma && w.n_begin < w.n_end && (!p.varlen || w.m0 + 64 <= w.sb.sq);
    const bool keep_k = kQStages == 1 && stage_o && cwg == 0;
    const bool keep_v = kQStages == 1 && stage_o && cwg == 1;
    // Warpgroup 0 skips the tile's last block, so warpgroup 1 alone reads its K (and V): early_meet.
    const bool early = meet && kSkipMasked && kConsumers == 2 && blocks_end(0) < w.n_end;

    OnlineSoftmax softmax;
    softmax.init();
    float o[kDT][4];
#pragma unroll
    for (int dt = 0; dt < kDT; ++dt) o[dt][0] = o[dt][1] = o[dt][2] = o[dt][3] = 0.0f;

    // Scores of key block n -> P (16-bit A fragments) and the O rescale factors.
    auto softmax_step = [&](float (&sacc)[kNT][4], int n, uint32_t (&pk)[kPT][4], float (&alpha)[2]) {
      const int col0 = n * kBN + 2 * (lane % 4);
      const bool boundary = w.mod.block_needs_mask(wg_m0, wg_m_last, n * kBN, kBN);
      if (kMods) {  // scores to log2 units here (softcap / ALiBi are not linear in the score)
        if (boundary)
          w.mod.template apply<true, true>(sacc, row0, col0);
        else
          w.mod.template apply<false, true>(sacc, row0, col0);
        softmax.update(sacc, alpha);
      } else {  // raw scores; the scale is folded into the exponent
        if (boundary) w.mod.apply_mask(sacc, row0, col0);
        softmax.template update<true>(sacc, alpha, w.mod.scale_log2);
      }
      pack_a_fragments<T>(sacc, pk);
    };
    auto rescale = [&](const float (&alpha)[2]) {
      // Only when some row of the warp got a new maximum (alpha != 1): exact skip, warp-uniform.
      if (__any_sync(0xffffffffu, alpha[0] != 1.0f || alpha[1] != 1.0f)) {
#pragma unroll
        for (int dt = 0; dt < kDT; ++dt) {
          o[dt][0] *= alpha[0]; o[dt][1] *= alpha[0];
          o[dt][2] *= alpha[1]; o[dt][3] *= alpha[1];
        }
      }
    };

    const int qs = q % kQStages;  // this tile's Q slot (if it has keys to visit)
    if (w.n_begin < w.n_end) {
      q_addr = q_wg + qs * L::kQBytes;
      wait_barrier(q_full + qs, (q / kQStages) & 1);
      ++q;
      // Key block n_begin: S, softmax -> P. Then each further block n overlaps its softmax with
      // the previous block's O += P V on the tensor cores (FA3's intra-warpgroup pipelining):
      //   issue S_n; issue O += P_{n-1} V_{n-1}; wait S_n; softmax(S_n) -> P_n; wait O; rescale O.
      uint32_t pk[kPT][4];
      float alpha[2];
      {
        float sacc[kNT][4];
        const int s = kv % kStages;
        wait_barrier(k_full + s, (kv / kStages) & 1);
        issue_s(sacc, s);
        if (o_pending >= 0) {  // the previous tile's O stores have read their slot
          if (leader) {
            ptx::cp_async_bulk_wait_group_read(ptx::n32_t<0>{});
            ptx::mbarrier_arrive(o_slot_empty(o_pending), 4u);  // for the warpgroup's 4 warps
          }
          __syncwarp();
          o_pending = -1;
        }
        wgmma_wait<0>();
        fence_operands(sacc);
        // (The last block's K slot may take O: its arrival then waits for the stores, o_pending.)
        if (!(keep_k && w.n_begin + 1 == w.n_end)) arrive(k_empty + s);
        if (w.n_begin + 1 == wg_n_end && !o_in_q) arrive(q_empty + qs);  // the tile's last use of Q
        softmax_step(sacc, w.n_begin, pk, alpha);
      }
      for (int n = w.n_begin + 1; n < wg_n_end; ++n) {
        const int sp = kv % kStages;        // slot of block n - 1 (its V)
        const int s = (kv + 1) % kStages;   // slot of block n
        float sacc[kNT][4];
        wait_barrier(k_full + s, ((kv + 1) / kStages) & 1);
        if (kPingpong) turn_wait<kConsumers>(cwg);  // the K wait before: a turn is not held waiting for data
        fence_operands(o);  // before the first wgmma of the step: nothing may touch O in between
        issue_s(sacc, s);
        wait_barrier(v_full + sp, (kv / kStages) & 1);
        issue_pv(o, pk, sp);
        if (kPingpong) turn_pass<kConsumers>(cwg);  // both products issued: the next warpgroup's turn
        if (kOverlap) {
          wgmma_wait<1>();  // S_n done (groups complete in order); O += P V may still run
        } else {
          wgmma_wait<0>();
          fence_operands(o);
        }
        fence_operands(sacc);
        if (!(keep_k && n + 1 == w.n_end)) arrive(k_empty + s);
        if (n + 1 == wg_n_end && !o_in_q) arrive(q_empty + qs);
        if (early && cwg == 1 && n + 1 == w.n_end) early_meet_arrive();  // (never its first block)
        // P_n into registers of its own: the PV product still reads P_{n-1} from `pk` (register
        // operands of wgmma are read asynchronously; overwriting them before the wait makes ptxas
        // serialise the wgmma pipeline, warning C7513).
        uint32_t pk_next[kPT][4];
        softmax_step(sacc, n, pk_next, alpha);
        if (kOverlap) {
          wgmma_wait<0>();
          fence_operands(o);
        }
        arrive(v_empty + sp);
        rescale(alpha);
        // An opaque copy: a plain assignment lets the compiler merge pk and pk_next into the same
        // registers across the loop's back edge, which brings the hazard back.
#pragma unroll
        for (int kk = 0; kk < kPT; ++kk)
#pragma unroll
          for (int e = 0; e < 4; ++e) asm volatile("mov.b32 %0, %1;\n" : "=r"(pk[kk][e]) : "r"(pk_next[kk][e]));
        ++kv;
      }
      {  // O += P V for the last block
        const int s = kv % kStages;
        wait_barrier(v_full + s, (kv / kStages) & 1);
        fence_operands(o);
        issue_pv(o, pk, s);
        plan_next();  // while the product runs
        wgmma_wait<0>();
        fence_operands(o);
        if (!(keep_v && wg_n_end == w.n_end)) arrive(v_empty + s);  // (as for K above)
        ++kv;
      }
      // The blocks masked from all of this warpgroup's rows (kSkipMasked): their turns, and their K / V
      // slots released once loaded (an arrival before the load could complete the slot's previous
      // phase, whose other readers may not be done); the tile's last block's slot not when it takes O.
      for (int n = wg_n_end; n < w.n_end; ++n, ++kv) {
        const int s = kv % kStages;
        wait_barrier(k_full + s, (kv / kStages) & 1);
        if (kPingpong) {
          turn_wait<kConsumers>(cwg);
          turn_pass<kConsumers>(cwg);
        }
        if (!(keep_k && n + 1 == w.n_end)) arrive(k_empty + s);
        wait_barrier(v_full + s, (kv / kStages) & 1);
        if (!(keep_v && n + 1 == w.n_end)) arrive(v_empty + s);
      }
    }
    plan_next();  // (a tile without keys to visit: here)

    float o_scale[2], lse[2];
    softmax.finalize(1.0f, o_scale, lse);
    // Epilogue through shared memory: O / l into a 64-row region (chunk_bytes apart per 64-column
    // chunk, as TMA lays out a box of 64 rows) in TMA's 128-byte swizzle (16-byte unit u of row r at
    // u ^ (r % 8); a warp's 8 rows then hit 8 different units: no bank conflict), then one thread
    // stores each 64-column chunk with a bulk tensor copy (rows past a dense sequence's end are
    // clipped by the tensor map). The region is released after the next tile's first S
    // (o_pending), or never (kernel end: the producer is done).
    // With stmatrix (.x4: a quarter of the 4-byte stores; cuDNN's epilogue does the same, ncu
    // session 17): matrices (the warp's rows 0-7, 8-15) x (column tiles dt, dt + 1), lane l giving
    // the address of row l % 8 of matrix l / 8. Its 16-byte unit is (dt % 8 + l / 16) ^ (row % 8)
    // = (dt % 8) ^ u with u = (l / 16) ^ (row % 8), dt being even.
    // (An odd tile count, d = 40's 5, pairs its last tile with zeros: columns past head_dim_v, which
    // the tensor map clips.)
    auto store_o = [&](unsigned char* so, int chunk_bytes) {
      auto o_pair = [&](int dt, int r) {  // tile dt's packed row-pair r, zeros past the last tile
        return dt < kDT ? pack2<T>(o[dt][2 * r] * o_scale[r], o[dt][2 * r + 1] * o_scale[r]) : 0u;
      };
      const int mrow = 16 * (warp % 4) + (lane & 7) + 8 * ((lane >> 3) & 1);  // row within the warpgroup's 64
      const uint32_t row_addr = smem_addr(so) + mrow * kSwizzleBytes;
      const int u = (lane >> 4) ^ (mrow % 8);
#pragma unroll
      for (int dt = 0; dt < kDT; dt += 2)
        stmatrix_x4(row_addr + (dt / 8) * chunk_bytes + (((dt % 8) ^ u) * 16), o_pair(dt, 0), o_pair(dt, 1),
                    o_pair(dt + 1, 0), o_pair(dt + 1, 1));
      fence_proxy_async_smem();
      epilogue_sync<kConsumers>(cwg);
      if (leader) {
        const int bt = p.varlen ? 0 : w.b;
#pragma unroll
        for (int c = 0; c < L::kVChunks; ++c) {
          const int32_t coords[4] = {c * 64, static_cast<int>(w.sb.q_row0) + wg_m0, w.h, bt};
          ptx::cp_async_bulk_tensor(ptx::space_global, ptx::space_shared, &tm_o, coords, so + c * chunk_bytes);
        }
        ptx::cp_async_bulk_commit_group();
      }
      __syncwarp();
    };
    if (o_in_q) {  // this warpgroup's rows of the tile's Q slot (its last S is done)
      store_o(smem + L::kQ + qs * L::kQBytes + 64 * cwg * kSwizzleBytes, kBM * kSwizzleBytes);
      o_pending = qs;
    } else if (meet) {
      // q_stages = 1: the last key block's K slot (warpgroup 0) or V slot (warpgroup 1); a slot of
      // kBN >= 64 rows holds a warpgroup's 64 rows of O in the first 64 rows of each chunk. The other
      // warpgroup's last S reads this K and its last P V this V, so both warpgroups meet first
      // (whenever warpgroup 0 stages, so also when warpgroup 1's rows fall back to register stores).
      // A warpgroup that writes a slot skipped its arrival on that slot's empty barrier (keep_k /
      // keep_v; on the other slot's it arrived as usual: its reads were done) and makes it after the
      // next tile's first S (o_pending). Why this cannot deadlock, with g the CTA's running index of
      // this last key block (ring slot s):
      //  - the barrier: before it a warpgroup waits only for this tile's Q and key blocks, whose
      //    loads need arrivals for earlier blocks that each warpgroup makes before it gets here (in
      //    this tile, or, the previous tile's deferred one, at this tile's first S). The only
      //    arrival made after it is the deferred one for block g, which the producer needs first
      //    for block g + kStages, in a later tile.
      //  - the deferred arrival: it follows the next tile's first S, which needs that tile's Q (its
      //    slot released at this tile's last S) and key block g + 1, in another ring slot
      //    (kStages >= 2) freed by arrivals for block g + 1 - kStages made before; the stores'
      //    reads need nothing from the CTA.
      //  - block g + kStages, the next one in slot s (the next tile's second block, or a later
      //    tile's if the next has fewer; tiles without keys load nothing): each warpgroup waits for
      //    it only after its own next tile's first S, so after its own deferred arrival, and the
      //    other warpgroup's comes without waiting for this one (above).
      //  - the slot's phases stay in order: every later arrival on its empty barrier comes from a
      //    read of block g + kStages, which could be loaded only after the deferred arrival.
      // If no tile with keys follows, nothing more is loaded and the slot is never released; the
      // leader waits for its stores at kernel end.
      // With `early`, warpgroup 0 writes the K slot after warpgroup 1's last S only, and warpgroup 1
      // writes the V slot, which it alone read, without waiting: warpgroup 0 moves on to the next
      // tile while warpgroup 1 finishes this one. The arrival comes after warpgroup 1's last S and
      // each tile's is consumed in that tile (warpgroup 1's next one needs the next tile's Q, which
      // needs warpgroup 0's last S of that tile, after its sync here), so the barrier never holds
      // two; the deferred arrivals and slots are as below.
      const int s = (kv - 1) % kStages;  // the last key block's slot (kv is past it)
      if (!early)
        consumers_sync<kConsumers>();
      else if (cwg == 0)
        early_meet_sync();
      if (stage_o) {
        store_o(smem + (cwg == 0 ? L::kK + s * L::kKBytes : L::kV + s * L::kVBytes), kBN * kSwizzleBytes);
        o_pending = s;
      }
    }
    // LSE, and O straight from the fragments when it is not staged (a quad writes 16 contiguous
    // bytes of a row).
    T* gO = static_cast<T*>(p.out) + w.b * p.o_batch_stride + w.sb.q_row0 * p.o_row_stride + w.h * p.o_head_stride;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int row = row0 + 8 * r;
      if (row >= w.sb.sq) continue;
      if (!stage_o) {
        T* dst = gO + int64_t(row) * p.o_row_stride;
#pragma unroll
        for (int dt = 0; dt < kDT; ++dt) {
          const int col = dt * 8 + 2 * (lane % 4);
          if (col < p.head_dim_v)
            *reinterpret_cast<uint32_t*>(dst + col) = pack2<T>(o[dt][2 * r] * o_scale[r], o[dt][2 * r + 1] * o_scale[r]);
        }
      }
      if (p.lse != nullptr && lane % 4 == 0)
        p.lse[w.b * p.lse_batch_stride + w.h * p.lse_head_stride + w.sb.q_row0 + row] = lse[r];
    }
  }
  // The last O stores must have read shared memory before the CTA exits (and the pending slot needs
  // no release: the producer is done).
  if (leader) ptx::cp_async_bulk_wait_group(ptx::n32_t<0>{});
  // Pingpong: the last warpgroup's last arrival on warpgroup 0's barrier (after its last turn, or
  // its initial one when there were no turns) is still pending; consume it so that every barrier
  // ends the kernel complete. That warpgroup waits for nothing more from warpgroup 0 (its turns are
  // all granted by the time warpgroup 0 gets here: warpgroup 0's last turn_pass came before), so
  // this returns once it gets there.
  if (kPingpong && cwg == 0) turn_wait<kConsumers>(cwg);
#else
  __trap();  // built for sm_90a only; dispatch never launches it elsewhere
#endif
}

template <class T, int kTile, bool kMods>
cudaError_t launch_fwd_kernel(const Params& p, cudaStream_t stream, const FwdTileOrder& order, int tiles, int ctas,
                              const CUtensorMap& tq, const CUtensorMap& tk, const CUtensorMap& tv, const CUtensorMap& to,
                              bool o_tma, const FwdTail& tail, int* sched) {
  constexpr int kSmem = FwdSmem<kTile>::kBytes;
  auto kernel = fwd_kernel<T, kTile, kMods>;
  static std::atomic<uint64_t> configured{0};  // devices whose shared-memory opt-in is made
  cudaError_t e = allow_dynamic_smem(reinterpret_cast<const void*>(kernel), kSmem, configured);
  if (e != cudaSuccess) return e;
  kernel<<<ctas, FwdWarps<kTile>::kThreads, kSmem, stream>>>(p, tq, tk, tv, to, o_tma, order, tiles, tail, sched);
  return cudaGetLastError();
}

template <class T, int kTile>
Status run_fwd_tile(const Params& p, cudaStream_t stream) {
  using Tile = FwdTileAt<kTile>;
  constexpr int kD = Tile::head_dim, kBM = Tile::block_m;
  const int m_blocks = (p.seqlen_q + kBM - 1) / kBM;  // varlen: the longest sequence
  if (m_blocks == 0 || p.batch == 0) return Status::Ok();
  const int64_t tiles = int64_t(tile_slots(p, m_blocks)) * p.heads_q * p.batch;
  // (Below 2^30: the dynamic schedule's indices, gridDim.x + the counter, stay in range.)
  if (tiles >= (int64_t{1} << 30))
    return Status{ErrorCode::Unsupported, "sm90 forward: more than 2^30 query blocks in one call"};
  int device = 0, sms = 0;
  cudaError_t e = cudaGetDevice(&device);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (e != cudaSuccess) return Status{ErrorCode::BackendError, std::string("sm90 forward: ") + cudaGetErrorString(e)};
  const int ctas = fwd_ctas(p, kFwdTiles[kTile], sms);
  CUtensorMap tq, tk, tv, to;
  if (!encode_qkv_maps(p, kFwdTiles[kTile], &tq, &tk, &tv))
    return Status{ErrorCode::Unsupported, "sm90 forward: the driver refused a tensor map for these strides"};
  // O's map for the TMA epilogue; when the driver refuses it (say, a row stride that is not a
  // multiple of 16 bytes) O is written from registers instead.
  const bool o_tma = encode_o_map(p, &to);
  const bool mods = fwd_mods(p);
  const FwdTileOrder order = FwdTileOrder::make(p, m_blocks);
  const FwdTail tail = fwd_tail_cached(p, kFwdTiles[kTile], ctas);
  // The dynamic schedule's counter (fwd_dynamic): the workspace's first int, zeroed on the stream
  // (a memset node under graph capture). The backend checked the workspace's size before the call.
  int* sched = nullptr;
  if (fwd_dynamic(p, kFwdTiles[kTile], ctas)) {
    sched = static_cast<int*>(p.workspace);
    e = cudaMemsetAsync(sched, 0, sizeof(int), stream);
  }
  if (e == cudaSuccess)
    e = mods ? launch_fwd_kernel<T, kTile, true>(p, stream, order, int(tiles), ctas, tq, tk, tv, to, o_tma, tail, sched)
             : launch_fwd_kernel<T, kTile, false>(p, stream, order, int(tiles), ctas, tq, tk, tv, to, o_tma, tail, sched);
  if (e != cudaSuccess)
    return Status{ErrorCode::BackendError,
                  std::string("cuda forward (sm90, head dim ") + std::to_string(kD) + "): " + cudaGetErrorString(e)};
  return Status::Ok();
}

// Row `index` of kFwdTiles, among the rows from kRow on whose head dim rounds up to kD (compiled for
// those only).
template <class T, int kD, int kRow>
Status run_fwd_row(const Params& p, cudaStream_t stream, int index) {
  if constexpr (kRow == kFwdTileCount) {
    return Status{ErrorCode::BackendError, "sm90 forward: no tile row " + std::to_string(index) + " for head dim " +
                                               std::to_string(kD)};
  } else {
    if constexpr (sm90_head_dim(kFwdTiles[kRow].head_dim) == kD)
      if (index == kRow) return run_fwd_tile<T, kRow>(p, stream);
    return run_fwd_row<T, kD, kRow + 1>(p, stream, index);
  }
}

// Sm90 head dim kD's forward: the tile fwd_tile_index picks among the rows of the columns it
// computes (sm90_columns), instantiating only the rows that round up to kD.
template <class T, int kD>
Status run_fwd(const Params& p, cudaStream_t stream) {
  return run_fwd_row<T, kD, 0>(p, stream, fwd_tile_index(kD, p));
}

}  // namespace ioattn::cuda::sm90
