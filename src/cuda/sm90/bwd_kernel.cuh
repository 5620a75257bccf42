// The sm90 backward (Hopper: TMA + wgmma, warp-specialised), and its launcher run_bwd<T, D>.
//
// Three kernels on the caller's stream, the first and last shared with the sm80 path
// (sm80/bwd_kernel.cuh, same workspace layout):
//   bwd_preprocess   D_i = sum_d dO_id O_id, zeroes the fp32 dQ accumulator and bwd_kernel's
//                    item counter, and writes the rows' LSE (log2 units) and D for this kernel's
//                    producer to copy
//   bwd_kernel       (below) work items (key block of kBN keys, kv head, batch): one CTA per
//                    multiprocessor, each taking the next item from a global counter until none
//                    is left (persistent, dynamically balanced)
//   bwd_convert_dq   dq = scale * accumulator, in the input dtype
// Both modes run the same kernels; in the deterministic one the dQ writers add each query block's
// parts in key-block order (bwd_kernel's order protocol).
//
// bwd_kernel: 3 warpgroups, like the forward.
//   producer   warp 0, one thread, per item: takes the item's index (atomicAdd on the counter),
//              Q_m and dO_m for every (query head of the GQA group, query block m of kBM rows that
//              sees the key block) into a ring of kStages buffers (mbarriers; at d = 256, which has
//              one stage, dO and Q on barriers of their own, dO loaded once the previous step's dV
//              is done, while its dK and dQ run, Q once its dK is done), and K and V of the block
//              (TMA, one buffer: loaded after the item's first Q / dO stage, while the consumers
//              finish the previous item), handing the index to the consumers with K / V (see
//              bwd_kernel).
//   dQ writers warps 1 and 2, one per consumer warpgroup: issue the TMA reduce-adds of the
//              warpgroup's dQ parts from its staging (see bwd_kernel; in the deterministic mode
//              each part in its turn).
//   consumers  warpgroups 1 and 2, 64 keys each, 240 registers per thread; per query block:
//                the step's LSE (log2 units, +inf for rows that see no key or lie past the
//                sequence) and D rows arrive with its Q / dO stage (the producer's bulk copies of
//                rows bwd_preprocess prepared: sm80::bwd::stats_rows), no per-step loads or
//                conversions on the consumers' path
//                S^T = K Q^T, dP^T = V dO^T            (wgmma, both operands in shared memory)
//                P^T = exp2(S^T scale log2e - LSE), dS^T = P^T (dP^T - D)   (fp32, registers)
//                dV += P^T dO, dK += dS^T Q            (wgmma, P^T / dS^T from registers: the
//                                                       accumulator layout is the A layout)
//                dS^T -> shared memory (16-bit, swizzled), both warpgroups' 128 keys side by side
//                dQ_part = dS K over all 128 keys      (wgmma SS, A read M-major); each warpgroup
//                                                       computes one 64 x 64 half of the kBM x kD
//                                                       part (BwdShape)
//                dQ_part -> shared memory (fp32, swizzled) -> TMA reduce-add into the accumulator,
//                                                       issued by the warpgroup's dQ writer warp
//              d = 192 / 256 (BwdShape::kExchange): warpgroup 0 computes S^T and P^T only, warpgroup 1
//              dP^T only; P^T goes to warpgroup 1 through shared memory (fp32), which computes dS^T
//              and writes it to the dS^T buffer, from which warpgroup 0's dK = dS^T Q reads it (SS)
//              dK, dV stay in registers over the item's steps (the group's query heads included:
//              no dK/dV atomics) and are written at its end, dK times the softmax scale.
// Served: fp16/bf16, head dims 64, 128, 192 and 256, causal/window masks, GQA, varlen, both modes
// (atomic and deterministic), softcap and ALiBi (the kMods instantiation). Dropout stays on the sm80
// kernels (backend.cu decides).
#pragma once

#include <cuda/atomic>
#include <cuda/ptx>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdint>
#include <string>
#include <type_traits>

#include "cuda/common/fastdiv.h"
#include "cuda/common/mma.cuh"
#include "cuda/host_util.h"
#include "cuda/common/seq.cuh"
#include "cuda/common/softmax.cuh"
#include "cuda/sm80/bwd_kernel.cuh"
#include "bwd_run.h"
#include "tma.h"
#include "wgmma.cuh"

namespace ioattn::cuda::sm90 {

namespace bptx = ::cuda::ptx;

constexpr int kBwdThreads = 384;
// How an item's keys, the step's query rows and the head dim are split between the two consumer
// warpgroups. Registers per consumer thread in brackets (240 available).
//   d = 64:  128 keys per item, 64 per warpgroup; 128 query rows per step. [S^T, dP^T 64 each
//            (64 keys x 128 queries), dK, dV 32 each: 192.] Twice the rows of d = 128 halve the
//            per-step fixed costs and make the score products m64 n128 (less shared-memory
//            traffic per FLOP than n64). dQ: warpgroup w takes query rows [64 w, 64 w + 64).
//   d = 128: 128 keys, 64 per warpgroup; 64 rows. [S^T, dP^T 32 each, dK, dV 64 each: 192.]
//            dQ: warpgroup w takes columns [64 w, 64 w + 64).
//   d = 256: 64 keys per item, the SAME 64 for both warpgroups, which split the head dim instead:
//            warpgroup w owns columns [128 w, 128 w + 128) of dK, dV and dQ. [dK, dV 64 each,
//            S^T, dP^T 32 each: 192; 64 keys x 256 columns of dK and dV would be 256.] The two
//            score products are split between them (kExchange): warpgroup 0 computes S^T and P^T,
//            warpgroup 1 dP^T; P^T goes from 0 to 1 through shared memory (fp32, 16 KB), dS^T from
//            1 to 0 through the dS^T buffer (bf16, which dQ reads anyway). 5 units of tensor work
//            for the 5 products instead of 7 (each warpgroup computing both S^T and dP^T), at the
//            cost of two named barriers per step (A, B: the protocol at bwd_kernel). One Q / dO
//            stage: 2 would not fit next to the dQ staging (bench/notes-sm90.md, "Design sketch
//            ... d = 256" and "d = 256 backward, S / dP split").
//   d = 192: as d = 256, split on the 64-column boundaries that the 128-byte swizzle allows (a
//            wgmma operand read N-major cannot start inside a swizzle atom): warpgroup 0 owns
//            dK / dV columns [0, 128) and dQ columns [128, 192), warpgroup 1 dK / dV [128, 192)
//            and dQ [0, 128): product columns 2 x 128 + 64 = 320 and 2 x 64 + 128 = 256 per
//            warpgroup next to the 192 each spends on S^T (warpgroup 0) or dP^T (warpgroup 1, the
//            exchange as at d = 256; before session 28 each computed both: 704 and 640 columns per
//            step instead of 512 and 448, and the exchange measured +10-22% backward). The column
//            counts are compile-time (array sizes, wgmma shapes), so the consumer code is compiled
//            once per warpgroup at d = 192. Two Q / dO stages fit next to the P^T buffer.
//   d = 96:  d = 128's tiles and shared-memory layout (TMA fills columns 96-127 with zeros), the
//            products over 96 columns only: S^T / dP^T in 6 k-steps, dK / dV N = 96 [48 registers
//            each], dQ split uneven as at d = 192 (warpgroup 0 columns [64, 96), warpgroup 1 [0, 64)).
//   d = 80:  d = 96's, over 80 columns: S^T / dP^T in 5 k-steps, dK / dV N = 80 [40 registers each],
//            dQ split as at d = 96 (warpgroup 0's [64, 96) computed on K's zero-filled columns 80-95;
//            TMA drops their reduce-adds past the accumulator's width).
//   d = 32:  d = 64's tiles and layout the same way (2 k-steps, dK / dV N = 32, dQ parts 64 x 32).
//   d = 40:  likewise (3 k-steps, the last over zero-filled columns 40-47; dK / dV N = 40, stored in
//            groups of 4 column tiles with the last one padded; dQ parts 64 x 40).
//   q / k 192 with v 128 (kDV = 128: DeepSeek's MLA): d = 192's split for dK and dQ, dV split evenly
//            (warpgroup w columns [64 w, 64 w + 64)); V and dO tiles 128 wide, dP^T in 8 k-steps.
// Each warpgroup's dQ product covers all of the item's keys, so every dQ element is reduced into the
// accumulator once per item (an earlier version reduced each warpgroup's 64-key part separately:
// twice the reduction traffic).
template <int kD, int kDV = kD>
struct BwdShape {
  static_assert(kDV == kD || (kD == 192 && kDV == 128), "v as wide as q / k, or MLA's 192 / 128");
  static constexpr bool kSplitD = kD >= 192;
  // d = 80 / 96: d = 128's layout with fewer columns computed (kNarrow128).
  static constexpr bool kNarrow128 = kD > 64 && kD < 128;
  static constexpr bool kUneven = kD == 192 || kNarrow128;  // the warpgroups' dQ column counts differ (below)
  static constexpr int kDL = sm90_layout_dim(kD);  // columns laid out in shared memory (128 at d = 96)
  static constexpr int kDVL = sm90_layout_dim(kDV);  // of V and dO
  // Warpgroup 0 computes S^T only, warpgroup 1 dP^T only, exchanging P^T and dS^T (above). d = 192
  // too (A/B, session 28): its two stages and the 16 KB P^T buffer fit with 520 bytes to spare.
  static constexpr bool kExchange = kD >= 192;
  static constexpr int kBM = bwd_block_m(kD);               // query rows per step
  static constexpr int kBN = bwd_block_n(kD);               // keys per item
  static constexpr int kStages = kD == 256 ? 1 : 2;         // Q / dO buffers in flight
  static constexpr int kWgKeys = kSplitD ? 0 : 64;          // warpgroup w's first key: kWgKeys * w
  // The dQ staging's tiles (bwd_kernel's stores, the writers' reduce-adds, run_bwd's tensor map):
  // kDqTileCols fp32 columns x 64 rows, 128-byte swizzled at 32 columns, unswizzled at 8.
  static constexpr int kDqTileCols = kD <= 64 ? 8 : 32;
  static constexpr int kDqTileBytes = 64 * kDqTileCols * 4;
  // The dQ part's proxy fence and hand-off to its writer at the next step's score products instead of
  // right after its staging stores (bwd_kernel, dq_release_pending). Measured (session 23, H200,
  // backward TFLOP/s against the immediate release): d = 64 +1-5% on 8 of 10 shapes at 1024-16384
  // (3 rounds; the other two within their 7-9% spreads); d = 128 -3-0%, d = 192 +-1%, d = 256 -3-0%
  // (2 rounds at 2048 / 8192: the writer's reduce-adds start later; ncu had put ~8% of the d = 256
  // consumers' stall samples on the fence and the arrival behind it).
  static constexpr bool kLateDqRelease = kD <= 64;
  // Warpgroup w's dK / dV columns [wc0(w), + wg_cols(w)) and dQ part columns [dq_c(w), + dq_cols(w)),
  // rows [dq_m(w), + 64) of the step.
  __host__ __device__ static constexpr int wg_cols(int w) { return !kSplitD ? kD : kUneven && w == 1 ? 64 : 128; }
  __host__ __device__ static constexpr int wc0(int w) { return kSplitD ? 128 * w : 0; }
  // Warpgroup w's dV columns [wc0_v(w), + wg_cols_v(w)): the dK columns, or at MLA's 192 / 128 half each.
  __host__ __device__ static constexpr int wg_cols_v(int w) { return kDV == kD ? wg_cols(w) : kDV / 2; }
  __host__ __device__ static constexpr int wc0_v(int w) { return kDV == kD ? wc0(w) : kDV / 2 * w; }
  __host__ __device__ static constexpr int dq_cols(int w) {
    return kD <= 64 ? kD : kNarrow128 ? 32 + 32 * w : kD == 128 ? 64 : kUneven && w == 0 ? 64 : 128;
  }
  __host__ __device__ static constexpr int dq_c(int w) {
    return kD <= 64 ? 0 : kNarrow128 ? 64 * (1 - w) : kUneven ? (w == 0 ? 128 : 0) : dq_cols(0) * w;
  }
  __host__ __device__ static constexpr int dq_m(int w) { return kD <= 64 ? 64 * w : 0; }
  // (In whole 32-column staging tiles past d = 64: d = 80's parts cover 96 columns.)
  static_assert(64 * (dq_cols(0) + dq_cols(1)) == kBM * (kD <= 64 ? kD : (kD + 31) / 32 * 32),
                "the two 64-row dQ parts cover the step");
};

// Byte offsets in the (1024-byte aligned) dynamic shared memory. d = 64: 195 KB; d = 128: 194 KB;
// d = 192: 227 KB (all but 520 bytes, with the 16 KB P^T exchange buffer); d = 256: 226 KB.
template <int kD, int kDV = kD>
struct BwdSmem {
  using S = BwdShape<kD, kDV>;
  static constexpr int kChunks = S::kDL / 64;     // of K and Q
  static constexpr int kVChunks = S::kDVL / 64;   // of V and dO
  static constexpr int kKBytes = S::kBN * S::kDL * 2;
  static constexpr int kVBytes = S::kBN * S::kDVL * 2;
  static constexpr int kQBytes = S::kBM * S::kDL * 2;    // one stage
  static constexpr int kDOBytes = S::kBM * S::kDVL * 2;  // one stage
  static constexpr int kDSBytes = S::kBN * S::kBM * 2;  // dS^T of the item's keys, one buffer
  // Warpgroup w's fp32 dQ part (64 rows, tiles of 32 columns) at kDQ + dq_offset(w).
  __host__ __device__ static constexpr int dq_offset(int w) { return w * 64 * S::dq_cols(0) * 4; }
  static constexpr int kK = 0;
  static constexpr int kV = kK + kKBytes;
  static constexpr int kQ = kV + kVBytes;
  static constexpr int kDO = kQ + S::kStages * kQBytes;
  static constexpr int kDS = kDO + S::kStages * kDOBytes;  // 2 buffers: step it writes it % 2
  static constexpr int kDQ = kDS + 2 * kDSBytes;
  // Per Q / dO stage, the step's row statistics (LSE in log2 units, then D; kBM each), copied by the
  // producer with the stage's Q and dO.
  static constexpr int kStatsBytes = 2 * S::kBM * 4;
  // kExchange: warpgroup 0's fp32 P^T for warpgroup 1, in the accumulator fragment order: float4 j
  // of consumer thread t (st[j][0..3]) at 16 (128 j + t), so that each warp's float4 accesses are
  // 512 contiguous bytes (no bank conflicts, no swizzle); the two warpgroups' fragment layouts are
  // the same, so thread t of warpgroup 1 reads what thread t of warpgroup 0 wrote.
  static constexpr int kPXBytes = S::kExchange ? S::kBN * S::kBM * 4 : 0;
  static constexpr int kPX = kDQ + 64 * (S::dq_cols(0) + S::dq_cols(1)) * 4;
  static constexpr int kStats = kPX + kPXBytes;
  // kv_full, kv_empty, q_full[], do_full[], q_empty[], do_empty[], p_full (kExchange's hand-off A),
  // dq_full[2], dq_empty[2] (bwd_kernel's protocol)
  static constexpr int kBar = kStats + S::kStages * kStatsBytes;
  static constexpr int kItem = kBar + 8 * (3 + 4 * S::kStages + 4);  // the handed-over item index (bwd_kernel)
  // Warpgroup w's dQ slot (5 ints: the part's row, and in the deterministic mode its order counter,
  // turn, value after it and its chain's plane offset; bwd_kernel's protocol) at kDqRow + w * kDqSlotBytes, each on a
  // 128-byte line of its own. (Tried in session 12 against racecheck's reports of the slots under
  // named barriers, which it did not change: those paired each warpgroup's leader with its own
  // writer; the mbarriers did. Kept as it was tested; the 256 bytes are spare.)
  static constexpr int kDqSlotBytes = 128;
  static constexpr int kDqRow = kItem + 128;
  static constexpr int kBytes = kDqRow + 2 * kDqSlotBytes + 1024;
  static_assert(kBytes <= 227 * 1024, "sm90 shared memory per block");
};

// A score product over the head dim (kKT k-steps of 16), started afresh: acc = A B^T, both operands
// K-major in 64-column tiles of 128-byte rows, A's tiles kARows rows and B's kBRows rows apart.
template <class T, int kKT, int kARows, int kBRows, int N>
__device__ __forceinline__ void score_product(float (&acc)[N][4], uint64_t a_desc, uint64_t b_desc) {
#pragma unroll
  for (int kk = 0; kk < kKT; ++kk) {
    const uint32_t off_a = (kk / 4) * kARows * kSwizzleBytes + (kk % 4) * 32;
    const uint32_t off_b = (kk / 4) * kBRows * kSwizzleBytes + (kk % 4) * 32;
    wgmma_ss<T, 0, 0>(acc, desc_add(a_desc, off_a), desc_add(b_desc, off_b), kk > 0);
  }
}

__device__ __forceinline__ void bwd_wait(uint64_t* bar, uint32_t parity) {
  while (!bptx::mbarrier_try_wait_parity(bar, parity)) {
  }
}

// Named barriers (0 is __syncthreads; 1 and 2 are unused since the dQ writers took over the
// per-warpgroup staging syncs): 3, both consumer warpgroups (256 threads: the dS^T hand-off between
// them); 4 + s, 8, 10 below.
// Both consumer warpgroups (256 threads) on named barrier kId: 3 (kConsumersBarrier) for the dS^T
// hand-off of the other modes, 10 for kExchange's B (below). Not .aligned (bar.sync is
// barrier.sync.aligned, which wants every thread at the same instruction): at d = 192 and 256 the
// two warpgroups run different instantiations of the consumer loop, so they reach the barrier from
// different code; compute-sanitizer's synccheck reported the aligned form there ("divergent
// threads"). The __syncwarp converges the warp after leader-only branches before some of them.
constexpr int kConsumersBarrier = 3;
template <int kId = kConsumersBarrier>
__device__ __forceinline__ void consumers_sync() {
  __syncwarp();
  asm volatile("barrier.sync %0, 256;\n" ::"n"(kId) : "memory");
}

// 4 + s: the consumers' reads of stage s's row statistics are done (256 consumer threads arrive,
// producer warp 0 syncs before its next copy into that stage). The stage's do_empty / q_empty
// mbarriers order the same reads already; this named barrier is for compute-sanitizer's racecheck,
// which does not follow mbarriers and reported the copies' overwrites of rows the consumers had read.
__device__ __forceinline__ void stats_read_arrive(int s) { asm volatile("bar.arrive %0, 288;\n" ::"r"(4 + s) : "memory"); }
__device__ __forceinline__ void stats_read_sync(int s) { asm volatile("bar.sync %0, 288;\n" ::"r"(4 + s) : "memory"); }
// 8: the consumers read the handed-over item index (bwd_kernel's protocol; the 256 consumer threads
// arrive, producer warp 0 syncs before it writes the next index). kv_empty orders the same read
// already; this barrier is for racecheck, which does not follow mbarriers (as for 4 + s).
constexpr int kItemReadBarrier = 8;
static_assert(kItemReadBarrier > 4 + 2, "named barriers 4 + s are the statistics stages'");
// 10 (B), kExchange: warpgroup 1's dS^T written and its P^T read, for warpgroup 0 (both sync;
// bwd_kernel's protocol; hand-off A is the mbarrier p_full).
constexpr int kDSReadyBarrier = 10;
__device__ __forceinline__ void item_read_arrive() {
  __syncwarp();
  asm volatile("bar.arrive %0, 288;\n" ::"n"(kItemReadBarrier) : "memory");
}
__device__ __forceinline__ void item_read_sync() {
  __syncwarp();
  asm volatile("bar.sync %0, 288;\n" ::"n"(kItemReadBarrier) : "memory");
}
// The dQ slot's values besides an accumulator row (bwd_kernel's protocol, the dQ hand-offs).
constexpr int kDqNoRows = -1;  // the part's rows lie past the sequence: nothing to add
constexpr int kDqEnd = -2;     // the warpgroup has no more parts

// One work item of bwd_kernel: the key block from key n0 of kv head hk of sequence b, and its steps
// (query head of the GQA group, query block of kBM rows that sees the block; head-major). Producer
// and consumers derive the same item from its index (which the producer hands over), so they agree
// on every load.
struct BwdItem {
  int hk, b, n0;
  SeqBounds sb;
  int m_begin, m_count, steps;
  bool skip;  // the block starts past this (varlen) sequence's end: not even dK / dV to write
  // Step k's query head and first query row. The loops step them (query blocks of a head, then the
  // next head) instead of dividing k by m_count: that integer division (~20 dependent
  // instructions) ran once per step on the producer's and each consumer's path.
  struct Step {
    int hq, m0;
  };
  template <int kBM>
  __device__ __forceinline__ Step first_step(const Params& p) const {
    return {hk * p.group, m_begin * kBM};
  }
  template <int kBM>
  __device__ __forceinline__ Step next_step(Step st) const {
    st.m0 += kBM;
    if (st.m0 == (m_begin + m_count) * kBM) {
      st.m0 = m_begin * kBM;
      ++st.hq;
    }
    return st;
  }
};

// Item w: key block fastest, then kv head, then batch (the order the counter hands them out in, as
// the former one-CTA-per-block grid launched them). CTAs that run at the same time then work on
// neighbouring key blocks of the same heads, which read the same Q / dO rows and reduce into the
// same dQ rows in L2: measured to be worth 13-25% over an order across heads (bench/notes-sm90.md,
// the launch order under a causal mask).
// n_blocks: key blocks per (kv head, batch); heads: p.heads_k (FastDiv, prepared once per CTA).
// reversed (the deterministic mode under a mask with a right bound: bwd_kernel's order protocol):
// the key blocks of a (kv head, batch) in decreasing order.
template <int kBN, int kBM>
__device__ __forceinline__ BwdItem bwd_item(const Params& p, int w, const FastDiv& n_blocks, const FastDiv& heads,
                                            bool reversed) {
  BwdItem t;
  int hb, nb;
  n_blocks.divmod(w, hb, nb);
  if (reversed) nb = static_cast<int>(n_blocks.d) - 1 - nb;
  t.n0 = nb * kBN;
  heads.divmod(hb, t.b, t.hk);
  t.sb = seq_bounds(p, t.b);
  t.skip = t.n0 >= t.sb.sk;
  int m_end = 0;
  sm80::bwd::query_blocks_for_keys(p, t.sb, t.n0, kBN, &t.m_begin, &m_end, kBM);
  t.m_count = m_end - t.m_begin;
  t.steps = p.group * t.m_count;  // 0 when skipped
  return t;
}

// The items (bwd_item) are handed out dynamically: the producer of each of the gridDim.x CTAs (one
// per multiprocessor, run_bwd) takes the next index from a global counter with atomicAdd when it
// needs a new item, until the counter passes `items`. The indices start in increasing order, so
// the CTAs running together still work on neighbouring key blocks of the same heads (bwd_item), and
// the load balances itself under a mask, where the items' costs differ (causal: key block j meets
// the query blocks from j on): a CTA that finished a cheap item takes the next one. The index is
// taken when the producer is about to issue the item's first Q / dO stage, i.e. kStages steps
// before the consumers finish the previous item: the atomic's latency hides behind those steps,
// and no index is reserved long before it can start (a prefetch one item ahead would bind the
// last items to CTAs still busy with long ones).
//   The counter's lifetime: one int in the workspace (sm80::bwd::sched_offset), zeroed by
// bwd_preprocess, which runs before this kernel on the same stream at every call (and at every
// replay of a captured graph); this launch only increments it (items + gridDim.x times in all, below
// 2^31: run_bwd keeps items below 2^30); the next call's preprocess zeroes it again.
//
// The protocol across a CTA's items. Only the producer (warp 0) knows which items its CTA got; it
// hands each index to the consumers through one shared-memory slot (L::kItem): it stores the index
// with lane 0 before its arrive on kv_full for that item, and the consumers read the slot after
// their wait for that kv_full phase completed. mbarrier.arrive has release and try_wait acquire
// semantics at CTA scope (the PTX defaults of the cuda::ptx calls used), so the plain st.shared is
// visible to the plain ld.shared after the wait; both calls' asm clobber memory, so the compiler
// keeps the store before the arrive and the load after the wait. Every item the consumers have
// work for is handed over, including those with no steps (a varlen sequence without query rows, or
// a window that no query of the block sees), whose dK = dV = 0 the consumers write: for those the
// producer arrives on kv_full with no bytes expected (the phase completes at once). Items past a
// varlen sequence's end (skip) are not handed over: nobody has anything to do for them (no loads,
// no dK / dV rows), so the consumers need not know of them, and the producer takes the next index
// at once. After the last item the producer hands over kEndItem the same way (no bytes): the
// consumers leave their loop, so none waits for a phase that never completes.
// Counters run on across items, on both sides alike: g counts steps (Q / dO ring stage
// g % kStages in its fill g / kStages, statistics barrier 4 + g % kStages, dS^T buffer g % 2), kv
// counts hand-overs (kv_full's and kv_empty's phase kv; the end's hand-over is kv_full's last
// phase, with no kv_empty phase after it).
//   K / V have one buffer, the item slot one word. The producer loads item kv's K / V right after
// the item's first Q / dO stage (whose ring slot frees earlier, at step g - kStages), once kv_empty's
// phase kv - 1 completed, and writes the slot just before: the consumers arrive on kv_empty (each of
// the 8 consumer warps, __syncwarp then lane 0) after their last product reading K or V of item
// kv - 1 (the last step's dQ = dS K), or right after reading the slot for an item with no steps; every consumer thread reads the
// slot before any of its products of that item. So K / V and the slot are rewritten only after
// every read of them for the previous item (the arrive releases those reads, the producer's wait
// acquires). The consumers store dK / dV after their kv_empty arrival, while the copy runs, then wait
// for kv_full's phase kv. A parity wait cannot mistake a phase two ahead: phase kv + 1 of either
// barrier needs the other side's part in phase kv first.
//   No deadlock: the producer's waits before issuing step g, the K / V of g's item or a hand-over
// (statistics barrier, do_empty and q_empty of step g - kStages, kv_empty of the previous hand-over) are on
// consumer work of earlier steps and items only, all of whose copies and hand-overs the producer
// issued earlier in its program order; the consumers' waits (kv_full of each hand-over, q_full and
// do_full of step g, and the two warpgroups' named barriers, which both pass at every step in the
// same order) are on copies and hand-overs issued before any producer wait on a later step or
// hand-over. The
// atomicAdd waits for nothing. By induction on (hand-overs, steps) every wait returns, and the end's
// hand-over reaches the consumers after they arrived for the last item.
//   No buffer rewritten while read: K / V and the slot by kv_empty (above; the slot also by named
//   barrier 8, item_read_arrive / item_read_sync, for racecheck); a Q / dO stage and its
//   statistics by q_empty / do_empty and barrier 4 + s (below) at g - kStages; the dS^T buffer of step g was
//   last read by step g - 2's dQ products, which both warpgroups completed before step g - 1's
//   consumers_sync (kExchange: by hand-off A, below) (g global: restarted per item, an item's first
//   step could overwrite the buffer that the other warpgroup's dQ product of the previous item's
//   last step still reads); a
//   warpgroup's dQ staging and slot by dq_empty (the dQ hand-offs, below).
//   kExchange (d = 192 / 256): per step g, warpgroup 0 writes P^T(g) to L::kPX and each of its threads
//   arrives on the mbarrier p_full (A, count 128: phase g); warpgroup 1 waits for phase g, reads
//   P^T(g), computes dS^T(g), writes it to dS^T buffer g % 2 (then fence.proxy.async) and both
//   sync on named barrier B (kDSReadyBarrier, 256 threads) before warpgroup 0's dK (and dQ)
//   products read that buffer. Warpgroup 0 does not wait for warpgroup 1 at A: it goes on to its
//   dV product while warpgroup 1 may still be in its previous step's dQ; at B it waits anyway (for
//   dS^T), and warpgroup 1, whose dS^T comes last, rarely does. (Session 10 had both warpgroups sync
//   on two named barriers A and B: +1-7% over the unsplit form; with warpgroup 0 only arriving on A
//   and warpgroup 1 only on B, +3-15%, but racecheck reported hazards on the P^T buffer and the
//   statistics. bench/gpu/probes/racecheck_arrive.cu (session 11) shows racecheck reporting a
//   named-barrier arrive / sync hand-off without a race for a write after read (mode 7), not for a
//   read after write (mode 6); with A an mbarrier and B synced by both: +2-5% at 2048 / 16k, clean.)
//   What each hand-off orders:
//     A(g): warpgroup 0's P^T(g) stores before warpgroup 1's loads of them (release arrive, acquire
//       wait); and every dS^T read of warpgroup 0 before step g (its dK and dQ of steps up to g - 1,
//       each waited for with wgmma_wait<0> in its step) before warpgroup 1's dS^T(g) stores: so
//       buffer g % 2, last read by step g - 2, is free (one buffer would do for this hand-off;
//       warpgroup 1's own dQ reads precede its stores in program order).
//     B(g): warpgroup 1's dS^T(g) stores (and fence.proxy.async) before warpgroup 0's wgmma reads of
//       them, and before warpgroup 1's own dQ wgmma reads of them (B is a sync of all 256 consumer
//       threads; a warpgroup bar.sync that stood before that dQ product was redundant and went with
//       the dQ writers); warpgroup 1's loads of P^T(g) before warpgroup 0's P^T(g + 1) stores
//       (which follow B(g) in warpgroup 0's program order).
//   The statistics barrier 4 + s, do_empty / q_empty and kv_empty get the same arrivals as in the
//   other modes: every consumer thread arrives on 4 + s once per step after its last read of the
//   statistics (warpgroup 0 reads LSE only, warpgroup 1 D only), every consumer warp on do_empty
//   after its dV product, on q_empty after its dK product, and on kv_empty after its last product
//   reading K or V (warpgroup 0: S^T or dQ; warpgroup 1: dP^T or dQ). No deadlock: both warpgroups take the same items and
//   steps; both sync on B(g), which warpgroup 0 reaches after its arrival on A(g) and warpgroup 1
//   after its wait for A(g), which that arrival completes; before A(g) both wait on the producer
//   only (q_full, do_full of g; the producer's waits for step g are on arrivals of steps before g, made as
//   in the other modes: above). No early arrivals: warpgroup 0 arrives on A(g + 1) after passing
//   B(g), which completes after warpgroup 1 waited for A(g); and neither reaches B(g + 1) before
//   both passed B(g). Items without steps touch neither.
//   Statistics barriers: the consumers' arrival at step g meets the producer's bar.sync before it
//   copies step g + kStages, or the producer's drain of the last min(g, kStages) steps after its
//   end hand-over (once per CTA, so none is left with a phase pending at exit); the consumers arrive
//   at step g + kStages only after its q_full or do_full, i.e. after that bar.sync: a barrier never gets a
//   phase's arrivals before the previous phase completed.
//   The dQ hand-offs. Consumer warpgroup w's fp32 dQ part goes through
//   its staging (L::kDQ + dq_offset(w)) and its slot (ints at L::kDqRow + w kDqSlotBytes: the row, then the order protocol's four) to its
//   dQ writer, producer warp 1 + w, whose lane 0 issues the part's TMA reduce-adds into the
//   accumulator: the warpgroup's threads neither wait for a reduction's read of the staging nor sync
//   among themselves before it is issued (before session 12 a leader thread issued it after a
//   warpgroup bar.sync and waited for the previous part's read). Two mbarriers per warpgroup:
//   dq_full[w] (count 128) and dq_empty[w] (count 32). Part n of warpgroup w is its dQ part of its
//   n-th step (counting over its items; items without steps have none), and after the last one,
//   part N is its end:
//     warpgroup w, part n < N (dq_staging_acquire / _release): after issuing the dQ product, for
//       n > 0 wait for phase n - 1 of dq_empty[w]; wait for the product; store the part (STS) and
//       fence.proxy.async; the leader stores the slot: the part's first accumulator row, or
//       kDqNoRows (-1: the rows lie past the sequence and hold zeros); every thread arrives on
//       dq_full[w] (phase n), and goes on. Part N (at the kernel's end): the same wait, the leader
//       stores kDqEnd (-2), every thread arrives. (kLateDqRelease, d = 64: the fence, the slot store
//       and the arrival of part n come later, after the next step's score products are issued or at
//       the item's end, still before part n + 1's wait, which is what the writer's progress needs.)
//     writer 1 + w, per part n until it reads kDqEnd: wait for phase n of dq_full[w]; read the slot;
//       for a row, lane 0 issues the part's dq_cols(w) / Shape::kDqTileCols reduce-adds (one per tile), commits
//       them as one group and waits for their reads of the staging (cp.async.bulk.wait_group.read
//       0); every lane arrives on dq_empty[w] (phase n). After kDqEnd lane 0 waits for the groups'
//       completion (cp.async.bulk.wait_group 0) before the warp exits.
//   What each orders: dq_full[w] phase n, each thread's part-n stores (its proxy fence makes them
//   visible to the async proxy that the reduce-adds read through) and the leader's slot store
//   before the writer's slot read and reduce issue (arrive releases, the wait acquires);
//   dq_empty[w] phase n, the reads of part n (lane 0's wait_group.read precedes its arrival; bulk
//   groups are per thread, so lane 0's are this writer's only) and every lane's slot read before
//   the warpgroup's part n + 1 stores. The first form (session 12), named barriers of 160 threads
//   with both sides syncing on both, drew racecheck reports of the slot's store against its read,
//   though the same pattern alone in bench/gpu/probes/racecheck_slot.cu drew none; with the
//   mbarriers racecheck is clean, and the slots sit on 128-byte lines of their own.
//   Matching counts: the consumers' dQ block runs at every step of
//   every item with no early exit (the `last` step, masked, softcap and ALiBi steps alike; kExchange
//   and kUneven in both warpgroups' instantiations: the block is the same code for both), so each
//   of the warpgroup's 128 threads arrives once per part, the leader's slot store being the only
//   thread-dependent part, and part N once, after the item loop; the writer's 32 lanes arrive once
//   per part before kDqEnd. Producer warps 0 and 3 do not touch these barriers. The writer needs no item sequence: the part
//   count is the only thing both sides share. A parity wait cannot mistake a phase two ahead:
//   dq_full phase n + 1 needs dq_empty phase n, which needs the writer past its phase-n wait, and
//   dq_empty phase n needs dq_full phase n, which needs the warpgroup past its phase n - 1 wait.
//   No deadlock: the writer waits only on its warpgroup's arrivals (which follow, for part n, its
//   wait on dq_empty phase n - 1 and its own dQ product) and on the TMA unit's reads of reductions it
//   issued (which need no thread); the warpgroup's new wait, dq_empty phase n - 1, needs only the
//   writer's arrival after part n - 1, which the warpgroup's own arrivals for part n - 1, made
//   earlier in its program order, enabled. So these waits add no dependence on the producer or on
//   the other warpgroup (each warpgroup has its own writer and barriers; a single writer taking the
//   two warpgroups' parts in turn would make a warpgroup's staging wait for the other's), and every
//   wait of the argument above still returns, by induction on the steps as there.
//   The order protocol (the deterministic mode): fp32 sums depend on their order, so the parts
//   that the key blocks of a (kv head, batch) add to the same accumulator rows and columns are
//   added in the order the items are taken: increasing key blocks, or decreasing ones (bwd_item's
//   `reversed`) under a mask with a right bound (causal, window), where key block j's first query
//   block grows with j: in increasing order, block j's first step would wait for block j - 1's
//   part of the same rows, j - 1 steps into that block, and so on down the chain (measured in
//   session 24: 3-10x slower than decreasing order, the order the parts become ready in). An item's rank
//   is its place in that order. One counter per (batch, query head, 64-row block, consumer
//   warpgroup) in the workspace (sm80::bwd::det_order_offset), zeroed by bwd_preprocess, holds
//   rank + 1 once that item's part of those rows has been added. Chains (sm80::bwd::det_chains: 2
//   without a mask's right bound, else 1): the ranks are dealt round-robin to the chains, each adding
//   into an accumulator plane of its own with counters of its own (per rows and warpgroup), so the
//   "rank" and "previous item" below are within the part's chain (rank / chains; the key block
//   `chains` blocks before), and
//   bwd_convert_dq sums the planes in plane order. The query blocks that a key block
//   has steps for are an interval (bwd_item's m_begin, m_count: a mask's keys per query row are an
//   interval, so are their unions), and so are, for a query block, the key blocks that have a step
//   for it: a part is the first of its rows if the previous item of the chain has no step for its
//   query block, and its turn comes when the counter reads 0; otherwise when it reads the part's
//   rank. The consumers' leader hands the counter's index, that turn and rank + 1 over in the slot
//   with the part's row; the writer's lane 0 spins on the counter (ld.acquire.gpu) until its turn,
//   issues the reduce-adds, waits for their reads (dq_empty as before) and then for their
//   completion (cp.async.bulk.wait_group 0, with a proxy fence), and stores rank + 1
//   (st.release.gpu). Parts whose rows lie past the sequence (kDqNoRows) are no one's: every key
//   block skips them alike. Bitwise repeatable: each element's adds come in one order, the first
//   onto the zeroed accumulator.
//   No deadlock: a part waits only on a part of the item taken just before its own in the chain,
//   i.e. of a smaller item index; items are taken from the counter in increasing order by running
//   CTAs, and a CTA's writer takes its items' parts in the order the CTA took them. By induction on
//   the item index every part is added: the parts of item x wait only on parts of item x - 1 of the
//   chain (added, by induction), and the writer holding item x has finished its earlier items'
//   parts (smaller indices, added by induction); its consumers wait on it only for the staging,
//   which it frees after each part. (With the key blocks taken in increasing order but added in
//   decreasing order, a CTA holding blocks j - 1 and j + 1 and another holding j could wait on each
//   other: hence the order of taking follows the order of adding.)
// kMods: softcap and ALiBi compiled in (calls with either; run_bwd picks the instantiation), as in
// the forward's kernels: the calls without them keep the loop they had.
template <class T, int kD, bool kMods, int kDV = kD>
__global__ void __launch_bounds__(kBwdThreads, 1)
    bwd_kernel(const __grid_constant__ Params p, const __grid_constant__ CUtensorMap tm_k,
               const __grid_constant__ CUtensorMap tm_v, const __grid_constant__ CUtensorMap tm_q,
               const __grid_constant__ CUtensorMap tm_do, const __grid_constant__ CUtensorMap tm_dq,
               const float* row_stats, int* sched, int* dq_order) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using L = BwdSmem<kD, kDV>;
  using Shape = BwdShape<kD, kDV>;
  // The S / dP split between the warpgroups (d = 192 / 256). By product (kExchange: warpgroup 0 S^T,
  // warpgroup 1 dP^T, P^T handed over), with softcap / ALiBi too at d = 192: softcap's dS^T needs
  // 1 - tanh^2 of warpgroup 0's scores, which then travels with P^T (the exchange below). Softcap /
  // ALiBi at d = 256 split by keys instead (kKeySplit: each warpgroup both products for 32 of the 64
  // keys; the consumer loop). Measured (H200): the key split at 0.96-0.98 of the exchange for plain
  // calls (session 23), hence not there; with softcap / ALiBi, the exchange gained 10-19% over both
  // products per warpgroup at d = 192 but ran at 0.95-0.99 of the key split at d = 256, where its
  // kernel spills (session 29, `variants-...-s29-bwd-mods-exchange.txt`).
  constexpr bool kKeySplit = Shape::kExchange && kMods && kD == 256;
  constexpr bool kExchange = Shape::kExchange && !kKeySplit;
  constexpr int kBM = Shape::kBM, kBN = Shape::kBN, kStages = Shape::kStages;
  // 16-wide k-steps over the head dim (S^T) and v's (dP^T), rounded up: d = 40's last one runs over
  // TMA's zero-filled columns 40-47.
  constexpr int kKT = (kD + 15) / 16;
  constexpr int kKTV = (kDV + 15) / 16;
  constexpr int kQT = kBM / 8;   // 8-query column tiles of S^T, dP^T
  constexpr int kQK = kBM / 16;  // 16-query k-steps of dV, dK

  extern __shared__ unsigned char smem_raw[];
  unsigned char* smem = smem_align_1024(smem_raw);
  const uint32_t smem_base = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  uint64_t* kv_full = reinterpret_cast<uint64_t*>(smem + L::kBar);
  uint64_t* kv_empty = kv_full + 1;
  // Per Q / dO stage: with one stage (d = 256, kSplitQdo), Q (with the LSE rows) and dO (with the D
  // rows) complete on barriers of their own, so that the next step's dO is loaded once this step's
  // dV is done, while dK and dQ run, and its Q after dK (the protocol above). Measured (session 19,
  // H200, backward TFLOP/s): d = 256 +1-3%; with two stages (d = 64 / 128 / 192) -1-3%, so there
  // do_full / do_empty are q_full / q_empty and a stage completes as a whole.
  constexpr bool kSplitQdo = kStages == 1;
  uint64_t* q_full = kv_empty + 1;                                  // [kStages]
  uint64_t* do_full = kSplitQdo ? q_full + kStages : q_full;        // [kStages]
  uint64_t* q_empty = q_full + 2 * kStages;                         // [kStages]
  uint64_t* do_empty = kSplitQdo ? q_empty + kStages : q_empty;     // [kStages]
  uint64_t* p_full = do_empty + kStages;  // kExchange: hand-off A (the protocol above)
  uint64_t* dq_full = p_full + 1;          // [2]: the dQ hand-offs (the protocol above)
  uint64_t* dq_empty = dq_full + 2;        // [2]
  int* item_slot = reinterpret_cast<int*>(smem + L::kItem);  // the index handed over (the protocol above)
  constexpr int kEndItem = -1;                                 // ... after the last item

  // run_bwd keeps n_blocks * heads_k * batch (varlen: seqlen_k is the longest sequence) below 2^30,
  // so that the counter, taken items + gridDim.x times, stays in range.
  const int n_blocks = (p.seqlen_k + kBN - 1) / kBN;
  const int items = n_blocks * p.heads_k * p.batch;
  // bwd_item's divisors (a 64-bit division each, once per thread).
  const FastDiv n_blocks_div = FastDiv::make(n_blocks), heads_div = FastDiv::make(p.heads_k);
  // The deterministic mode under a mask with a right bound (causal, window): key blocks taken in
  // decreasing order (bwd_item; the order protocol above).
  const bool reversed = p.deterministic && p.window_right >= 0;

  const int warp = __shfl_sync(0xffffffffu, static_cast<int>(threadIdx.x) / 32, 0);
  const int lane = threadIdx.x % 32;
  if (threadIdx.x == 0) {
    bptx::mbarrier_init(kv_full, 1);    // the producer's hand-over (arrive.expect_tx)
    bptx::mbarrier_init(kv_empty, 8);   // the 8 consumer warps
    for (int s = 0; s < kStages; ++s) {
      // the producer's arrive.expect_tx (both operands' in one barrier without kSplitQdo)
      bptx::mbarrier_init(q_full + s, kSplitQdo ? 1 : 2);
      bptx::mbarrier_init(q_empty + s, 8);  // the 8 consumer warps
      if (kSplitQdo) {
        bptx::mbarrier_init(do_full + s, 1);
        bptx::mbarrier_init(do_empty + s, 8);
      }
    }
    if (kExchange) bptx::mbarrier_init(p_full, 128);  // warpgroup 0's threads
    for (int w = 0; w < 2; ++w) {
      bptx::mbarrier_init(dq_full + w, 128);  // consumer warpgroup w's threads
      bptx::mbarrier_init(dq_empty + w, 32);  // its writer's lanes
    }
    bptx::fence_mbarrier_init(bptx::sem_release, bptx::scope_cluster);
  }
  __syncthreads();

  if (warp < 4) {  // ---- producer warpgroup ----
    regs_dealloc<24>();
    // Warp 0 walks the steps converged (the statistics barrier is a whole-warp bar.sync), all lanes
    // waiting on the mbarriers; lane 0 issues the copies. Kept warp-uniform, the loop state fits the
    // 24 registers (in uniform registers): with the waits in lane 0's branch too, it spilled 20 bytes.
    if (warp == 1 || warp == 2) {  // ---- dQ writer of consumer warpgroup w (the protocol above) ----
      const int w = warp - 1;
      const int* dq_row = reinterpret_cast<const int*>(smem + L::kDqRow + w * L::kDqSlotBytes);
      unsigned char* src = smem + L::kDQ + L::dq_offset(w);
      // The warp walks the hand-offs converged; lane 0 issues the reductions.
      for (uint32_t n = 0;; ++n) {
        bwd_wait(dq_full + w, n & 1);  // part n (or the end) is in the staging and the slot
        const int row = *dq_row;
        if (row == kDqEnd) break;
        int* order = nullptr;  // the deterministic mode's counter of these rows (lane 0)
        int done = 0;          // ... and its value once this part is added
        if (lane == 0 && row >= 0) {  // kDqNoRows: the part's rows lie past the sequence (zeros)
          // The deterministic mode: the part's turn among the key blocks adding to these rows (the
          // order protocol above), then its reduce-adds.
          int plane_row = row;  // the row in this part's chain's accumulator plane
          if (p.deterministic) {
            order = dq_order + dq_row[1];
            plane_row += dq_row[4];
            const int turn = dq_row[2];
            done = dq_row[3];
            ::cuda::atomic_ref<int, ::cuda::thread_scope_device> counter(*order);
            while (counter.load(::cuda::memory_order_acquire) != turn) {
            }
            bptx::fence_proxy_async(bptx::space_global);  // the reduce-adds below after the acquire
          }
          // Tiles of kDqTileCols columns (64 rows each), from the part's first column.
          static_assert(Shape::dq_cols(0) <= Shape::dq_cols(1), "warpgroup 1's part is the wider");
          constexpr int kTile = Shape::kDqTileCols;
#pragma unroll
          for (int c = 0; c < Shape::dq_cols(1) / kTile; ++c) {
            if (c >= Shape::dq_cols(w) / kTile) break;  // (kUneven: warpgroup 0's part is narrower)
            const int32_t coords[4] = {Shape::dq_c(w) + c * kTile, plane_row, 0, 0};
            bptx::cp_reduce_async_bulk_tensor(bptx::space_global, bptx::space_shared, bptx::op_add, &tm_dq, coords,
                                              src + c * Shape::kDqTileBytes);
          }
          bptx::cp_async_bulk_commit_group();
          bptx::cp_async_bulk_wait_group_read(bptx::n32_t<0>{});  // (bulk groups are per thread)
        }
        __syncwarp();
        bptx::mbarrier_arrive(dq_empty + w);  // phase n: the staging and the slot are free again
        if (order != nullptr) {  // (lane 0 only) the next key block's turn, once these adds are done
          bptx::cp_async_bulk_wait_group(bptx::n32_t<0>{});
          bptx::fence_proxy_async(bptx::space_global);
          ::cuda::atomic_ref<int, ::cuda::thread_scope_device>(*order).store(done, ::cuda::memory_order_release);
        }
      }
      if (lane == 0) bptx::cp_async_bulk_wait_group(bptx::n32_t<0>{});  // reductions done before the CTA's exit
      return;
    }
    if (warp != 0) return;
    int g = 0, kv = 0;  // steps, hand-overs (the protocol above)
    // Hands item w (or kEndItem) to the consumers as kv_full's phase kv, which completes once the
    // tx_bytes of the copies the caller issues next on kv_full have landed (none: a plain arrive,
    // the phase completes at once). tx_bytes is a constant at each call: no branch is compiled.
    auto hand_over = [&](int w, uint32_t tx_bytes) {
      if (kv > 0) {
        item_read_sync();                   // hand-over kv - 1's slot is read (for racecheck)
        bwd_wait(kv_empty, (kv - 1) & 1);  // hand-over kv - 1's slot and K / V are read
      }
      if (lane == 0) {
        *item_slot = w;  // released by the arrive below, acquired by the consumers' wait on kv_full
        if (tx_bytes > 0)
          bptx::mbarrier_arrive_expect_tx(bptx::sem_release, bptx::scope_cta, bptx::space_shared, kv_full, tx_bytes);
        else
          bptx::mbarrier_arrive(kv_full);  // release.cta (the PTX default)
      }
    };
    for (;;) {
      // The next item; lane 0 takes it, the warp follows (warp-uniform: see above).
      int w = 0;
      if (lane == 0) w = atomicAdd(sched, 1);
      w = __shfl_sync(0xffffffffu, w, 0);
      if (w >= items) break;
      const BwdItem t = bwd_item<kBN, kBM>(p, w, n_blocks_div, heads_div, reversed);
      if (t.skip) continue;  // nothing to load, no dK / dV rows: the consumers need not know of it
      if (t.steps == 0) hand_over(w, 0);  // nothing to load; the consumers write dK = dV = 0
      const int bt = p.varlen ? 0 : t.b;  // varlen: the row index carries the sequence
      BwdItem::Step st = t.first_step<kBM>(p);
      for (int k = 0; k < t.steps; ++k, ++g, st = t.next_step<kBM>(st)) {
        const int s = g % kStages;
        __syncwarp();  // converged for the aligned barrier
        const uint32_t empty_phase = ((g / kStages) & 1) ^ 1;
        if (g >= kStages) {
          stats_read_sync(s);  // step g - kStages's statistics are read
          bwd_wait(do_empty + s, empty_phase);
        }
        const int hq = st.hq, m0 = st.m0;
        // The step's LSE (log2 units) and D rows, prepared by bwd_preprocess (sm80::bwd::stats_rows):
        // D with dO, LSE with Q.
        const int64_t stats_row = (static_cast<int64_t>(t.b) * p.heads_q + hq) * sm80::bwd::stats_rows(p) + m0;
        unsigned char* stats_dst = smem + L::kStats + s * L::kStatsBytes;
        // One operand of the stage (Q or dO: tensor map tm, buffer at byte offset dst) and its
        // statistics rows (src) on barrier `full`.
        // (bytes and chunks: Q's or dO's, constants once inlined)
        auto load_operand = [&](uint64_t* full, const CUtensorMap& tm, int dst, int bytes, int chunks, unsigned char* stats,
                                const float* src) {
          if (lane != 0) return;
          bptx::mbarrier_arrive_expect_tx(bptx::sem_release, bptx::scope_cta, bptx::space_shared, full, bytes + kBM * 4);
          bptx::cp_async_bulk(bptx::space_cluster, bptx::space_global, stats, src + stats_row, kBM * 4, full);
#pragma unroll
          for (int c = 0; c < chunks; ++c) {
            const int32_t coords[4] = {c * 64, static_cast<int>(t.sb.q_row0) + m0, hq, bt};
            bptx::cp_async_bulk_tensor(bptx::space_cluster, bptx::space_global,
                                       smem + dst + s * bytes + c * kBM * kSwizzleBytes, &tm, coords, full);
          }
        };
        load_operand(do_full + s, tm_do, L::kDO, L::kDOBytes, L::kVChunks, stats_dst + kBM * 4,
                     row_stats + sm80::bwd::stats_plane(p));
        if (kSplitQdo && g >= kStages) bwd_wait(q_empty + s, empty_phase);
        load_operand(q_full + s, tm_q, L::kQ, L::kQBytes, L::kChunks, stats_dst, row_stats);
        if (k == 0) {  // the item's index, K and V, once the previous item's last products have read them
          hand_over(w, L::kKBytes + L::kVBytes);
          if (lane == 0) {
#pragma unroll
            for (int c = 0; c < L::kChunks; ++c) {
              const int32_t coords[4] = {c * 64, static_cast<int>(t.sb.k_row0) + t.n0, t.hk, bt};
              bptx::cp_async_bulk_tensor(bptx::space_cluster, bptx::space_global,
                                         smem + L::kK + c * kBN * kSwizzleBytes, &tm_k, coords, kv_full);
              if (c < L::kVChunks)
                bptx::cp_async_bulk_tensor(bptx::space_cluster, bptx::space_global,
                                           smem + L::kV + c * kBN * kSwizzleBytes, &tm_v, coords, kv_full);
            }
          }
        }
      }
      ++kv;
    }
    hand_over(kEndItem, 0);  // the consumers leave their loop
    // The last kStages steps' arrivals, so that no barrier is left with a phase pending.
    __syncwarp();
    for (int i = g > kStages ? g - kStages : 0; i < g; ++i) stats_read_sync(i % kStages);
    return;
  }

  // ---- consumer warpgroups ----
  regs_alloc<240>();
  const int cwg = warp / 4 - 1;  // keys [kWgKeys cwg, + 64) of the block (BwdShape)
  const int wr = 16 * (warp % 4) + lane / 4;  // this thread's first key row within the warpgroup's 64
  const int wk0 = Shape::kWgKeys * cwg;       // the warpgroup's first key within the block
  const uint32_t k_wg = smem_base + L::kK + wk0 * kSwizzleBytes;  // this warpgroup's K rows
  const uint32_t v_wg = smem_base + L::kV + wk0 * kSwizzleBytes;
  const uint64_t k_desc = make_desc(k_wg, 16, kAtomBytes), v_desc = make_desc(v_wg, 16, kAtomBytes);
  const bool leader = threadIdx.x % 128 == 0;  // writes this warpgroup's dQ slot
  // The non-deterministic mode's hand-offs of this warpgroup's dQ staging to the dQ writer (the
  // protocol above): the staging (and slot) are this warpgroup's to write between
  // dq_staging_acquire and dq_staging_release, which hands over the part's accumulator row (or
  // kDqNoRows, kDqEnd). Once per step of every item, and once at the end.
  int* dq_row = reinterpret_cast<int*>(smem + L::kDqRow + cwg * L::kDqSlotBytes);
  uint32_t dq_parts = 0;  // parts handed over: part n waits for phase n - 1 of dq_empty
  auto dq_staging_acquire = [&] {
    if (dq_parts > 0) bwd_wait(dq_empty + cwg, (dq_parts - 1) & 1);
  };
  auto dq_staging_release = [&](int row) {
    if (leader) *dq_row = row;  // (all threads' staging stores came before, each with its proxy fence)
    bptx::mbarrier_arrive(dq_full + cwg);  // release.cta
    ++dq_parts;
  };
  // Shape::kLateDqRelease: a part's release (its proxy fence, which waits for the thread's staging
  // stores to complete, and the arrival) is deferred from the end of its step to the next step's
  // score products, after their issue and before the wait for them (dq_release_pending), so that the
  // stores complete while the tensor cores run instead of on the warpgroup's path; at an item's end
  // (before the dK / dV stores) a pending part is released at once, so none is left at the kernel's
  // end. Otherwise each part is released right after its stores. dq_pending: the row of the part stored but not yet
  // released, or kDqNone.
  constexpr int kDqNone = INT_MIN;
  int dq_pending = kDqNone;
  auto dq_release_pending = [&] {
    if (dq_pending == kDqNone) return;  // (uniform over the warpgroup)
    fence_proxy_async_smem();  // for the writer's reductions (async proxy)
    dq_staging_release(dq_pending);
    dq_pending = kDqNone;
  };
  auto release_kv = [&] {  // one arrival per warp, after all its lanes' reads of K / V and the item slot
    __syncwarp();
    if (lane == 0) bptx::mbarrier_arrive(kv_empty);
  };

  // The consumer loop of warpgroup kW's columns (BwdShape): kW is cwg where the two warpgroups'
  // column counts or products differ (kUneven, kExchange), else 0 for both (the counts are the
  // same; offsets use cwg).
  auto consume = [&](auto wg_const) {
    constexpr int kW = decltype(wg_const)::value;
    // (The next three are the other modes', unused by kKeySplit.)
    [[maybe_unused]] constexpr bool kComputesS = !kExchange || kW == 0;   // S^T (and P^T) in this warpgroup
    [[maybe_unused]] constexpr bool kComputesDP = !kExchange || kW == 1;  // dP^T (and dS^T in registers)
    constexpr int kDT = Shape::wg_cols(kW) / 8;     // 8-column tiles of this warpgroup's dK
    constexpr int kDTV = Shape::wg_cols_v(kW) / 8;  // and of its dV
    constexpr int kDqCols = Shape::dq_cols(kW);
    const int wc0 = Shape::wc0(cwg);      // the warpgroup's first dK column
    const int wc0_v = Shape::wc0_v(cwg);  // and dV column
    // This warpgroup's share of the dQ part: query rows [dq_m, dq_m + 64) of the step, columns
    // [dq_c, dq_c + kDqCols).
    const int dq_m = Shape::dq_m(cwg), dq_c = Shape::dq_c(cwg);
    unsigned char* dq_wg = smem + L::kDQ + L::dq_offset(cwg);
    int g = 0;  // steps (the protocol above)
    for (int kv = 0;; ++kv) {  // hand-overs
      bwd_wait(kv_full, kv & 1);
      const int w = *item_slot;  // stored before the producer's arrive on this phase (the protocol above)
      if (w == kEndItem) break;  // (no arrival: the producer writes the slot no more)
      item_read_arrive();
      const BwdItem t = bwd_item<kBN, kBM>(p, w, n_blocks_div, heads_div, reversed);
      if (t.steps == 0) release_kv();  // the slot is all it reads of this hand-over
      const SeqBounds& sb = t.sb;
      const int key0 = t.n0 + wk0 + wr;  // sequence key of fragment rows r = 0 (+8 for r = 1)
      [[maybe_unused]] const int n0w = t.n0 + wk0;
      float dk[kDT][4], dv[kDTV][4];
#pragma unroll
      for (int dt = 0; dt < kDT; ++dt)
#pragma unroll
        for (int e = 0; e < 4; ++e) dk[dt][e] = 0.0f;
#pragma unroll
      for (int dt = 0; dt < kDTV; ++dt)
#pragma unroll
        for (int e = 0; e < 4; ++e) dv[dt][e] = 0.0f;

      BwdItem::Step st = t.first_step<kBM>(p);
      for (int k = 0; k < t.steps; ++k, ++g, st = t.next_step<kBM>(st)) {
        const bool last = k + 1 == t.steps;
        const int s = g % kStages;
        const int hq = st.hq, m0 = st.m0;
        const ScoreMod mod = ScoreMod::make(p, t.b, hq, sb.sq, sb.sk);
        const uint32_t q_addr = smem_base + L::kQ + s * L::kQBytes;
        const uint32_t do_addr = smem_base + L::kDO + s * L::kDOBytes;
        const uint32_t ds_addr = smem_base + L::kDS + (g % 2) * L::kDSBytes;
        const uint32_t full_phase = (g / kStages) & 1;
        if constexpr (kKeySplit) {
          // kKeySplit (d = 256 with softcap or ALiBi, whose dS needs per-element values of S that the
          // exchange of the plain kernel does not carry): warpgroup w computes S = Q K_w^T and
          // dP = dO V_w^T for its 32 of the block's 64 keys (M = 64 queries, N = 32 keys, K = head
          // dim), P and dS from them in registers (query rows: one LSE and one D per fragment row),
          // instead of both score products over all 64 keys in each warpgroup (7 units of tensor work
          // per step instead of 5), and stores both, in 16 bits,
          // transposed by stmatrix.trans into the step's P^T and dS^T buffers (keys as rows, the
          // layout of the dS^T tile below); after both warpgroups' stores (named barrier B), each
          // computes its 128 columns of dV += P^T dO and dK += dS^T Q over all 64 keys with A from
          // those buffers, then its dQ part as in the other modes.
          bwd_wait(q_full + s, full_phase);
          bwd_wait(do_full + s, full_phase);
          float sc[4][4], dps[4][4];  // S, dP: 64 queries x this warpgroup's 32 keys
          {
            const uint64_t q_k = make_desc(q_addr, 16, kAtomBytes), do_k = make_desc(do_addr, 16, kAtomBytes);
            const uint32_t kw_off = 32 * cwg * kSwizzleBytes;  // rows [32 w, + 32) of each 64-column tile
            const uint64_t kw = make_desc(smem_base + L::kK + kw_off, 16, kAtomBytes);
            const uint64_t vw = make_desc(smem_base + L::kV + kw_off, 16, kAtomBytes);
            wgmma_fence();
            score_product<T, kKT, kBM, kBN>(sc, q_k, kw);
            score_product<T, kKTV, kBM, kBN>(dps, do_k, vw);
            wgmma_commit();
            dq_release_pending();  // (kLateDqRelease only)
            wgmma_wait<0>();
            fence_operands(sc);
            fence_operands(dps);
          }
          const float* s_stats = reinterpret_cast<const float*>(smem + L::kStats + s * L::kStatsBytes);
          const int qr = 16 * (warp % 4) + lane / 4;  // step query row of elements 0, 1 (+ 8: 2, 3)
          const float lse[2] = {s_stats[qr], s_stats[qr + 8]}, dsum[2] = {s_stats[kBM + qr], s_stats[kBM + qr + 8]};
          stats_read_arrive(s);
          const int kn0 = t.n0 + 32 * cwg;  // this warpgroup's first key
          // P and dS, element (query row, key column): score.cuh's transform (ScoreMod::apply_scores:
          // softcap, ALiBi, the mask as row intervals) with softcap's tanh kept for dS's derivative
          // (d(cap tanh(s c / cap)) / d(s c) = 1 - tanh^2; the scale c is applied to dK / dQ at the end).
          // The mask and the softcap test are compiled into separate copies, as in the other modes.
          auto scores_to_ds = [&](auto masked, auto softcap) {
            constexpr bool kCap = decltype(softcap)::value;
            const int row0 = m0 + qr, col0 = kn0 + 2 * (lane % 4);
            [[maybe_unused]] ScoreMod::RowIntervals iv;
            if constexpr (decltype(masked)::value) iv = mod.row_intervals(row0, col0);
            const float dist0 = static_cast<float>(row0 + mod.mask.shift - col0);  // ALiBi's i + shift - j at (0, 0)
#pragma unroll
            for (int j = 0; j < 4; ++j)
#pragma unroll
              for (int e = 0; e < 4; ++e) {
                float x, th = 0.0f;
                if constexpr (kCap) {
                  th = fmaf(-2.0f, softcap_r(sc[j][e] * mod.cap_in), 1.0f);
                  x = mod.cap_out * th;
                } else {
                  x = sc[j][e] * mod.scale_log2;
                }
                x = fmaf(-mod.alibi_log2, fabsf(dist0 + static_cast<float>(8 * (e / 2) - 8 * j - e % 2)), x);
                if constexpr (decltype(masked)::value) {
                  if (!ScoreMod::in_interval(iv, j, e)) x = -INFINITY;
                }
                const float pr = sm_exp2(x - lse[e / 2]);
                float ds = pr * (dps[j][e] - dsum[e / 2]);
                if constexpr (kCap) ds *= 1.0f - th * th;
                sc[j][e] = pr;
                dps[j][e] = ds;
              }
          };
          auto with_softcap = [&](auto masked) {
            if (mod.softcap)
              scores_to_ds(masked, std::true_type{});
            else
              scores_to_ds(masked, std::false_type{});
          };
          if (mod.block_needs_mask(m0, min(m0 + kBM, sb.sq) - 1, kn0, 32))
            with_softcap(std::true_type{});
          else
            with_softcap(std::false_type{});
          // P^T and dS^T -> buffers g % 2 (L::kPX, L::kDS): matrix (h, j) of the fragment (query rows
          // 16 (warp % 4) + 8 h + 0..7, keys 8 j + 0..7 of the warpgroup's 32) stored transposed: its
          // row r is key 32 w + 8 j + r, holding the 8 queries as 16-byte unit 2 (warp % 4) + h of the
          // key's 128-byte row, at unit ^ (key % 8) (the 128-byte swizzle). Per x4: matrices
          // (h, j) = (0, J), (1, J), (0, J + 1), (1, J + 1); lane l addresses row l % 8 of matrix l / 8.
          {
            const int mtx = lane / 8, h = mtx % 2, r = lane % 8;
            const uint32_t row_off = (32 * cwg + 8 * (mtx / 2) + r) * kSwizzleBytes + ((((2 * (warp % 4) + h) ^ r)) * 16);
            const uint32_t p_buf = smem_base + L::kPX + (g % 2) * L::kDSBytes + row_off;
            const uint32_t ds_buf = ds_addr + row_off;
#pragma unroll
            for (int J = 0; J < 4; J += 2) {
              stmatrix_x4_trans(p_buf + 8 * J * kSwizzleBytes, pack2<T>(sc[J][0], sc[J][1]), pack2<T>(sc[J][2], sc[J][3]),
                                pack2<T>(sc[J + 1][0], sc[J + 1][1]), pack2<T>(sc[J + 1][2], sc[J + 1][3]));
              stmatrix_x4_trans(ds_buf + 8 * J * kSwizzleBytes, pack2<T>(dps[J][0], dps[J][1]), pack2<T>(dps[J][2], dps[J][3]),
                                pack2<T>(dps[J + 1][0], dps[J + 1][1]), pack2<T>(dps[J + 1][2], dps[J + 1][3]));
            }
          }
          fence_proxy_async_smem();
          // B: both warpgroups' halves written, for both warpgroups' dV, dK and dQ products. Buffers g % 2
          // were last read by step g - 2's products, which both warpgroups completed before B at g - 1.
          consumers_sync<kDSReadyBarrier>();
          const uint32_t wc_off = (wc0 / 64) * kBM * kSwizzleBytes;
          const uint64_t do_n = make_desc(do_addr + (wc0_v / 64) * kBM * kSwizzleBytes, kBM * kSwizzleBytes, kAtomBytes);
          const uint64_t q_n = make_desc(q_addr + wc_off, kBM * kSwizzleBytes, kAtomBytes);
          const uint64_t p_k = make_desc(smem_base + L::kPX + (g % 2) * L::kDSBytes, 16, kAtomBytes);
          const uint64_t ds_k = make_desc(ds_addr, 16, kAtomBytes);
          fence_operands(dk);
          fence_operands(dv);
          wgmma_fence();
#pragma unroll
          for (int kk = 0; kk < kQK; ++kk)
            wgmma_ss<T, 0, 1>(dv, desc_add(p_k, (kk % 4) * 32), desc_add(do_n, kk * 16 * kSwizzleBytes), 1);
          wgmma_commit();
#pragma unroll
          for (int kk = 0; kk < kQK; ++kk)
            wgmma_ss<T, 0, 1>(dk, desc_add(ds_k, (kk % 4) * 32), desc_add(q_n, kk * 16 * kSwizzleBytes), 1);
          wgmma_commit();
          wgmma_wait<1>();  // dV done: this step's dO is no longer read
          fence_operands(dv);
          __syncwarp();
          if (lane == 0) bptx::mbarrier_arrive(do_empty + s);
          wgmma_wait<0>();  // dK done: nor its Q
          fence_operands(dk);
          __syncwarp();
          if (lane == 0) bptx::mbarrier_arrive(q_empty + s);
        } else {
          // The operands of this warpgroup's score products (kExchange: warpgroup 0 Q, warpgroup 1 dO; the
          // other one is waited for before dV / dK).
          if constexpr (kComputesS || !kSplitQdo) bwd_wait(q_full + s, full_phase);
          if constexpr (kComputesDP && kSplitQdo) bwd_wait(do_full + s, full_phase);

          // S^T = K Q^T and dP^T = V dO^T: M = 64 keys, N = kBM queries, K = head dim. kExchange:
          // warpgroup 0 computes S^T only, warpgroup 1 dP^T only.
          float st[kQT][4], dpt[kQT][4];
          const uint64_t q_desc = make_desc(q_addr, 16, kAtomBytes), do_desc = make_desc(do_addr, 16, kAtomBytes);
          wgmma_fence();
          if constexpr (kComputesS) score_product<T, kKT, kBN, kBM>(st, k_desc, q_desc);
          if constexpr (kComputesDP) score_product<T, kKTV, kBN, kBM>(dpt, v_desc, do_desc);
          wgmma_commit();
          dq_release_pending();  // the previous step's dQ part, while the products run
          wgmma_wait<0>();
          if constexpr (kComputesS) fence_operands(st);
          if constexpr (kComputesDP) fence_operands(dpt);

          // P^T and dS^T, element (key row, query column); masked elements and rows without keys give 0.
          // The mask test is compiled into a separate copy of the loop, taken only by boundary blocks:
          // written as one loop with a run-time flag, the compiler evaluated the whole mask for every
          // element of every block (ncu: integer and predicate instructions were most of this loop).
          // The softcap test likewise (kMods), once per step.
          // The stage's LSE (log2 units; +inf for rows that see no key or lie past the sequence) and D.
          const float* s_lse = reinterpret_cast<const float*>(smem + L::kStats + s * L::kStatsBytes);
          // dS^T from P^T and dP^T, at query column qc of the step.
          auto ds_of = [&](float pr, float dp, int qc) { return pr * (dp - s_lse[kBM + qc]); };
          // with_ds: also dS^T (in dpt); kExchange's warpgroup 0 has no dP^T and computes P^T only.
          auto scores_to_ds = [&](auto masked, auto softcap, auto with_ds) {
            constexpr bool kCap = decltype(softcap)::value;
            // ALiBi's distance |i + shift - j| for query i = m0 + qc and key j = key0 + 8 (e / 2): this
            // thread's i + shift - j at j = 0, e = 0 once, then a constant per element (score.cuh's
            // form: one FADD with |.| as an operand modifier and one FFMA per score).
            [[maybe_unused]] const float dist0 = kMods ? static_cast<float>(m0 + 2 * (lane % 4) + mod.mask.shift - key0) : 0.0f;
            // masked: the queries that see key row r (key0 + 8 r) are one interval (none past the key
            // tail): one unsigned compare per element (ScoreMod::key_row_intervals / in_interval; the
            // per-element WindowMask::visible test it replaces, with the key-tail test, cost ~10
            // instructions per element: masked steps ran ~1.5x the time of plain ones, session 11).
            // Not in d = 64's softcap / ALiBi kernel, which is at its register limit: the two rows'
            // offsets and widths made ptxas spill 180 bytes there (76 with the per-element test).
            constexpr bool kInterval = decltype(masked)::value && !(kMods && kD <= 64);
            [[maybe_unused]] ScoreMod::RowIntervals qiv;
            if constexpr (kInterval) qiv = mod.key_row_intervals(key0, m0 + 2 * (lane % 4));
  #pragma unroll
            for (int j = 0; j < kQT; ++j) {
  #pragma unroll
              for (int e = 0; e < 4; ++e) {
                const int qc = 8 * j + 2 * (lane % 4) + (e % 2);  // query within the block
                float x, th = 0.0f;  // th: softcap's tanh, for its derivative below
                if constexpr (kMods) {  // score.cuh's transform (ScoreMod::apply_scores), transposed
                  // (The row's -LSE as the first operation's addend: one FADD per score fewer.)
                  if constexpr (kCap) {
                    th = fmaf(-2.0f, softcap_r(st[j][e] * mod.cap_in), 1.0f);
                    x = fmaf(mod.cap_out, th, -s_lse[qc]);
                  } else {
                    x = fmaf(st[j][e], mod.scale_log2, -s_lse[qc]);
                  }
                  x = fmaf(-mod.alibi_log2, fabsf(dist0 + static_cast<float>(8 * j + e % 2 - 8 * (e / 2))), x);
                } else {
                  x = fmaf(st[j][e], mod.scale_log2, -s_lse[qc]);
                }
                if constexpr (kInterval) {
                  if (!ScoreMod::in_interval(qiv, j, e)) x = -INFINITY;
                } else if constexpr (decltype(masked)::value) {
                  const int key = key0 + 8 * (e / 2);
                  if (key >= sb.sk || !mod.mask.visible(m0 + qc, key)) x = -INFINITY;
                }
                const float pr = sm_exp2(x);
                st[j][e] = pr;
                // Softcap: d(cap tanh(s c / cap)) / d(s c) = 1 - tanh^2 (the scale c is applied to dK /
                // dQ at the end, as without softcap); ALiBi's bias has no derivative in the score.
                if constexpr (decltype(with_ds)::value) {
                  float ds = ds_of(pr, dpt[j][e], qc);
                  if constexpr (kCap) ds *= 1.0f - th * th;
                  dpt[j][e] = ds;
                } else if constexpr (kCap) {
                  dpt[j][e] = 1.0f - th * th;  // (kExchange's warpgroup 0, which has no dP^T: for warpgroup 1)
                }
              }
            }
          };
          auto scores_to_p = [&](auto with_ds) {
            auto with_mask = [&](auto softcap) {
              if (mod.block_needs_mask(m0, min(m0 + kBM, sb.sq) - 1, n0w, 64))
                scores_to_ds(std::true_type{}, softcap, with_ds);
              else
                scores_to_ds(std::false_type{}, softcap, with_ds);
            };
            if constexpr (kMods) {
              if (mod.softcap)
                with_mask(std::true_type{});
              else
                with_mask(std::false_type{});
            } else {
              with_mask(std::false_type{});
            }
          };
          // kExchange: this thread's P^T in the exchange buffer (L::kPX).
          auto p_exchange = [&] { return reinterpret_cast<float4*>(smem + L::kPX) + threadIdx.x % 128; };
          if constexpr (!kExchange) {
            scores_to_p(std::true_type{});
          } else if constexpr (kW == 0) {
            // P^T -> warpgroup 1. The buffer's previous contents (step g - 1) were read before warpgroup 1
            // reached B at g - 1, which this warpgroup synced on before this step. With softcap, each
            // element's P and 1 - tanh^2 as two fp16 in the same 4 bytes (both in [0, 1]; fp16's 11
            // bits are finer than the 16-bit P that dV's product takes and the dS^T that is stored).
            scores_to_p(std::false_type{});
            if (kMods && mod.softcap) {
  #pragma unroll
              for (int j = 0; j < kQT; ++j) {
                uint32_t w[4];
  #pragma unroll
                for (int e = 0; e < 4; ++e) w[e] = pack2<__half>(st[j][e], dpt[j][e]);
                reinterpret_cast<uint4*>(p_exchange())[128 * j] = make_uint4(w[0], w[1], w[2], w[3]);
              }
            } else {
  #pragma unroll
              for (int j = 0; j < kQT; ++j) p_exchange()[128 * j] = make_float4(st[j][0], st[j][1], st[j][2], st[j][3]);
            }
            bptx::mbarrier_arrive(p_full);  // A(g): release.cta
          } else {
            // Warpgroup 1: warpgroup 0's P^T (A(g): phase g of p_full, acquire), dS^T from it.
            bwd_wait(p_full, g & 1);
            if (kMods && mod.softcap) {
  #pragma unroll
              for (int j = 0; j < kQT; ++j) {
                const uint4 pg = reinterpret_cast<const uint4*>(p_exchange())[128 * j];
                const uint32_t w[4] = {pg.x, pg.y, pg.z, pg.w};
  #pragma unroll
                for (int e = 0; e < 4; ++e) {
                  // (P, 1 - tanh^2): the low and high halves of word e
                  const float pr = __half2float(__ushort_as_half(static_cast<unsigned short>(w[e] & 0xffffu)));
                  const float gd = __half2float(__ushort_as_half(static_cast<unsigned short>(w[e] >> 16)));
                  st[j][e] = pr;
                  dpt[j][e] = ds_of(pr, dpt[j][e], 8 * j + 2 * (lane % 4) + (e % 2)) * gd;
                }
              }
            } else {
  #pragma unroll
              for (int j = 0; j < kQT; ++j) {
                const float4 pr = p_exchange()[128 * j];
                st[j][0] = pr.x, st[j][1] = pr.y, st[j][2] = pr.z, st[j][3] = pr.w;
  #pragma unroll
                for (int e = 0; e < 4; ++e) dpt[j][e] = ds_of(st[j][e], dpt[j][e], 8 * j + 2 * (lane % 4) + (e % 2));
              }
            }
          }
          stats_read_arrive(s);
          uint32_t pp[kQK][4], pds[kQK][4];  // A fragments, 16 queries per k-step
          pack_a_fragments<T>(st, pp);
          if constexpr (kComputesDP) pack_a_fragments<T>(dpt, pds);

          // dS^T -> shared memory buffer g % 2, the A operand of dQ = dS K read M-major (queries
          // contiguous), and at kExchange of warpgroup 0's dK = dS^T Q read K-major: per 64-query
          // chunk, kBN rows (keys; this warpgroup's at wk0) of 128 bytes, 16-byte chunk c of a row at
          // c ^ (row % 8). From the packed fragments (the fp32 dS^T is dead by now): pds[kk][2 h + r]
          // holds row wr + 8 r, queries 8 (2 kk + h) + 2 (lane % 4) + {0, 1}.
          // One stmatrix.x4 per k-step: its matrices (rows wr.. + 8 r, query tile 2 kk + h) are the A
          // fragment's registers in order (e = 2 h + r); lane l gives the address of row l % 8 of
          // matrix l / 8, whose 16-byte unit is (2 kk % 8 + l / 16) ^ (row % 8) = (2 kk % 8) ^ st_u.
          auto store_ds = [&] {
            const int st_row = wk0 + 16 * (warp % 4) + (lane & 7) + 8 * ((lane >> 3) & 1);  // lane l's row
            const int st_u = (lane >> 4) ^ (st_row % 8);
            const uint32_t ds = smem_addr(smem + L::kDS + (g % 2) * L::kDSBytes) + st_row * kSwizzleBytes;
  #pragma unroll
            for (int kk = 0; kk < kQK; ++kk)
              stmatrix_x4(ds + (kk / 4) * (kBN * kSwizzleBytes) + (((2 * kk) % 8 ^ st_u) * 16), pds[kk][0], pds[kk][1],
                          pds[kk][2], pds[kk][3]);
          };
          if constexpr (kExchange && kW == 1) {
            // For warpgroup 0's dK (both modes) and dQ, and this warpgroup's dQ (B is a sync of all 256
            // consumer threads: it orders this warpgroup's stores before its own dQ reads too). Buffer
            // g % 2 was last read by step g - 2's products (warpgroup 0's dK and dQ, this warpgroup's
            // dQ), which warpgroup 0 completed before A at g - 1 and this warpgroup before this step.
            // B also releases this thread's read of P^T above.
            store_ds();
            fence_proxy_async_smem();
            consumers_sync<kDSReadyBarrier>();
          }

          // dV += P^T dO, dK += dS^T Q: M = 64 keys, N = head dim, K = kBM queries; B read N-major.
          // kSplitQdo: dV and dK are committed as separate groups, dV first: dO is released when dV is done.
          if constexpr (!kComputesS) bwd_wait(q_full + s, full_phase);
          if constexpr (!kComputesDP) bwd_wait(do_full + s, full_phase);
          fence_operands(dk);
          fence_operands(dv);
          wgmma_fence();
          // (B from the warpgroup's first column tile: wc0 / 64 tiles of kBM rows in.)
          const uint32_t wc_off = (wc0 / 64) * kBM * kSwizzleBytes;
          const uint64_t do_n = make_desc(do_addr + (wc0_v / 64) * kBM * kSwizzleBytes, kBM * kSwizzleBytes, kAtomBytes);
          const uint64_t q_n = make_desc(q_addr + wc_off, kBM * kSwizzleBytes, kAtomBytes);
  #pragma unroll
          for (int kk = 0; kk < kQK; ++kk) wgmma_rs<T, 1>(dv, pp[kk], desc_add(do_n, kk * 16 * kSwizzleBytes), 1);
          if constexpr (kSplitQdo || !kComputesDP) wgmma_commit();
          if constexpr (kComputesDP) {
  #pragma unroll
            for (int kk = 0; kk < kQK; ++kk) wgmma_rs<T, 1>(dk, pds[kk], desc_add(q_n, kk * 16 * kSwizzleBytes), 1);
            wgmma_commit();
          } else {
            // Warpgroup 0 of kExchange: dK with A = warpgroup 1's dS^T from the buffer, read K-major (keys
            // are M, the contiguous queries K: the form of K as A of S^T), once B says it is written.
            consumers_sync<kDSReadyBarrier>();
            // (A fence of its own: ptxas injected one here, C7519, after a branch that stood before B.)
            wgmma_fence();
            const uint64_t ds_k = make_desc(ds_addr + wk0 * kSwizzleBytes, 16, kAtomBytes);
  #pragma unroll
            for (int kk = 0; kk < kQK; ++kk) {
              const uint32_t off = (kk / 4) * kBN * kSwizzleBytes + (kk % 4) * 32;
              wgmma_ss<T, 0, 1>(dk, desc_add(ds_k, off), desc_add(q_n, kk * 16 * kSwizzleBytes), 1);
            }
            wgmma_commit();
          }

          if (!kExchange) {
            // The buffer was last read by step g - 2's dQ products, which both warpgroups finished
            // before step g - 1's consumers_sync.
            // At d = 192 both warpgroups hold the same dS^T: warpgroup 0 writes it.
            if (!Shape::kSplitD || cwg == 0) store_ds();
            fence_proxy_async_smem();
            consumers_sync();  // both warpgroups' dS^T written, for both dQ products
          }

          if constexpr (kSplitQdo) {
            wgmma_wait<1>();  // dV done: this step's dO is no longer read (dP^T was waited for above)
            fence_operands(dv);
            __syncwarp();
            if (lane == 0) bptx::mbarrier_arrive(do_empty + s);
          }
          wgmma_wait<0>();  // dK (and dV) done: the step's Q (and dO) are no longer read
          fence_operands(dk);
          fence_operands(dv);
          __syncwarp();
          if (lane == 0) bptx::mbarrier_arrive(q_empty + s);
        }

        {
          // dQ part = dS K: M = 64 queries (A = dS^T chunk read M-major), N = kDqCols columns of the head
          // dim (B = K rows read N-major), K = the item's kBN keys.
          float dq[kDqCols / 8][4];
          // (dS^T is read after B (kExchange) or consumers_sync (the other modes), both syncs of all
          // 256 consumer threads after their stores and proxy fences.)
          const uint64_t ds_m = make_desc(ds_addr + (dq_m / 64) * (kBN * kSwizzleBytes), kBN * kSwizzleBytes, kAtomBytes);
          const uint64_t k_n = make_desc(smem_base + L::kK + (dq_c / 64) * (kBN * kSwizzleBytes), kBN * kSwizzleBytes, kAtomBytes);
          wgmma_fence();
#pragma unroll
          for (int kk = 0; kk < kBN / 16; ++kk)
            wgmma_ss<T, 1, 1>(dq, desc_add(ds_m, kk * 16 * kSwizzleBytes), desc_add(k_n, kk * 16 * kSwizzleBytes), kk > 0);
          wgmma_commit();
          // While the product runs: the writer's reductions of this warpgroup's previous part have
          // read the staging (dq_empty; usually long done).
          dq_staging_acquire();
          // The deterministic mode: the leader puts the part's order in the slot (the order protocol
          // above), which is the warpgroup's to write once acquired: the counter, the turn (after the
          // part of the key block taken before this one in its chain, if that block has this step)
          // and the value after it. (Computed here by the leader alone rather than carried as loop
          // state by every thread: registers are what the other mode's loop is short of.)
          if (p.deterministic && leader) {
            // sm80::bwd::det_chains(p) chains: 1 where the order is reversed (a right-bounded mask),
            // else 2, as a shift (registers: a division spilled 8 bytes in d = 128's kMods kernel).
            const int chain_bits = reversed ? 0 : 1, chains = 1 << chain_bits;
            const int j = t.n0 / kBN, rank = reversed ? static_cast<int>(n_blocks_div.d) - 1 - j : j;
            // Chain rank % chains; the key block before this one in its chain is `chains` blocks away.
            const int prev_n0 = reversed ? t.n0 + kBN : t.n0 - chains * kBN;
            int prev_begin = 0, prev_end = 0;
            if (prev_n0 >= 0 && prev_n0 < sb.sk)
              sm80::bwd::query_blocks_for_keys(p, sb, prev_n0, kBN, &prev_begin, &prev_end, kBM);
            const int mb = m0 / kBM;
            dq_row[1] = ((((t.b * p.heads_q + hq) * sm80::bwd::det_row_blocks(p) + (m0 + dq_m) / 64) * 2 + cwg) << chain_bits) +
                        (rank & (chains - 1));
            dq_row[2] = mb >= prev_begin && mb < prev_end ? rank >> chain_bits : 0;
            dq_row[3] = (rank >> chain_bits) + 1;
            // The chain's accumulator plane, as a row offset: computed here, off the chain's critical
            // path (the writer's turn, reduce-adds and release), where a run-time modulo and 64-bit
            // product cost causal calls 1-3% (H200, session 25).
            dq_row[4] = (rank & (chains - 1)) * static_cast<int>(sm80::bwd::det_plane_rows(p));
          }
          wgmma_wait<0>();
          fence_operands(dq);
          if (last) release_kv();  // the item's last read of K
          if constexpr (Shape::kDqTileCols == 8) {
            // At d = 64: tiles of 8 columns (64 rows of 32 bytes, unswizzled): thread q of a quad
            // holds columns 2 q, + 1 of tile dt, so a half warp's 8-byte store covers 4 whole rows,
            // 128 contiguous bytes: one wavefront, with no SELs; the writer issues 4x the
            // reduce-adds, of 2 KB each. Measured (session 12, H200, backward TFLOP/s, against the
            // 32-column form below): d = 64 +4-5%, but d = 128 -3-5%, d = 192 -9-15%, d = 256 -17-29%
            // (the many small reduce-adds), hence only at d = 64.
#pragma unroll
            for (int dt = 0; dt < kDqCols / 8; ++dt)
#pragma unroll
              for (int r = 0; r < 2; ++r)
                *reinterpret_cast<float2*>(dq_wg + dt * Shape::kDqTileBytes + (wr + 8 * r) * 32 + (lane % 4) * 8) =
                    make_float2(dq[dt][2 * r], dq[dt][2 * r + 1]);
          } else {
            // dQ part -> fp32 tiles of 32 columns (128-byte rows, 16-byte chunk u of row q at u ^ (q % 8):
            // TMA's 128-byte swizzle), which the writer reduces with one reduce-add per tile. Stored
            // as the fragment lies (8-byte store i of a tile: column tile 4 T + i of rows wr, wr + 8),
            // a half warp (rows q .. q + 3, q % 8 = 0 or 4) writes 32 bytes of each row into 4
            // distinct chunk pairs: two ways in each bank, twice the ideal wavefronts (ncu, session 12:
            // 4 per store instead of 2; the staging held ~10% of the d = 256 stall samples). So the
            // thread's store i takes column tile 4 T + (i ^ rho), rho = row % 4: the half warp's rows
            // then fill all 8 chunks. rho's bits pick the tile by two conditional swaps (SELs, 2 per
            // value), and the chunk offset is the thread's own XOR with 32 i (the swizzle is an XOR).
            // Measured (session 12, H200, backward TFLOP/s): d = 128 +2-7% (512 causal -1%), d = 256
            // -1-2% (its 128 SELs per thread cost more than the conflicts: the d = 256 kernel waits on
            // L2 and its products instead), so d > 128 keeps rho = 0, the fragment's order.
            static_assert(kDqCols % 32 == 0, "whole 32-column tiles");
            const int rho = kD <= 128 ? wr % 4 : 0;
#pragma unroll
            for (int tile = 0; tile < kDqCols / 32; ++tile)
#pragma unroll
              for (int r = 0; r < 2; ++r) {
                float2 v[4];
#pragma unroll
                for (int i = 0; i < 4; ++i) v[i] = make_float2(dq[4 * tile + i][2 * r], dq[4 * tile + i][2 * r + 1]);
                auto swap_if = [](bool c, float2& a, float2& b) {
                  const float2 a0 = a;
                  a = c ? b : a;
                  b = c ? a0 : b;
                };
                swap_if(rho & 1, v[0], v[1]), swap_if(rho & 1, v[2], v[3]);  // v[i] <- v[i ^ (rho & 1)]
                swap_if(rho & 2, v[0], v[2]), swap_if(rho & 2, v[1], v[3]);  // v[i] <- v[i ^ rho]
                const int row = wr + 8 * r, q = lane % 4;
                // Byte offset of tile 4 T + i's columns 2 q, + 1 in row `row`: chunk (2 (i ^ rho) + q / 2) ^ (row % 8).
                const int base = row * kSwizzleBytes + (((2 * rho + q / 2) ^ (row % 8)) * 16) + (q % 2) * 8;
                unsigned char* tile_base = dq_wg + tile * (64 * kSwizzleBytes);
#pragma unroll
                for (int i = 0; i < 4; ++i) *reinterpret_cast<float2*>(tile_base + (base ^ (32 * i))) = v[i];
              }
          }
          // The part's first accumulator row (run_bwd keeps the rows below 2^31); rows past the
          // sequence hold zeros: nothing to add. kLateDqRelease: released at the next step's score products.
          dq_pending = m0 + dq_m < sb.sq ? static_cast<int>(sm80::bwd::row_index(p, t.b, hq, m0 + dq_m)) : kDqNoRows;
          if constexpr (!Shape::kLateDqRelease) dq_release_pending();
        }
      }
      dq_release_pending();  // the item's last part: nothing to overlap it with here
      // dK (times the softmax scale) and dV of this warpgroup's 64 keys and kDT * 8 columns from wc0,
      // from the fragments (while the producer loads the next item's K / V). Thread q = lane % 4 of a
      // quad holds columns 8 dt + 2 q, + 1 of tile dt of its rows: stored as they are, each warp
      // instruction writes 8 rows x 16 bytes in 4-byte pieces (half-used 32-byte sectors; ncu: 5-7%
      // of the stall samples on these stores, lg throttle). Instead, per 4 tiles 4 G + i, the quad
      // transposes its 4 x 4 packed words (quad_transpose), so that thread q holds the 8 columns of
      // tile 4 G + q and writes them with one 16-byte store: a quarter of the store instructions, each
      // writing whole sectors. Aligned: backend.cu's select() takes only 16-byte aligned dk / dv with
      // used strides that are multiples of 8 elements (check_alignment) and head dims that are
      // multiples of 8 (check_head_dim), so a tile lies wholly inside or past head_dim / head_dim_v.
      // The quad transpose takes the column tiles 4 at a time: where a warpgroup's tiles are not a
      // multiple of 4 (d = 80: 10), the last group's missing tiles are zeros whose columns lie at or
      // past kD >= head_dim, so their stores are skipped.
      T* gdk = static_cast<T*>(p.dk) + t.b * p.dk_batch_stride + sb.k_row0 * p.dk_row_stride + t.hk * p.dk_head_stride;
      T* gdv = static_cast<T*>(p.dv) + t.b * p.dv_batch_stride + sb.k_row0 * p.dv_row_stride + t.hk * p.dv_head_stride;
      // w[i] of thread q (columns 2 q, + 1 of tile i) -> w[j] = columns 2 j, + 1 of tile q (w[j] of
      // thread j), in two rounds of shfl_xor: round b (lane bit 1, then 2) takes the words whose index
      // differs from q in bit b from lane q ^ b (word i ^ b there). Every lane shuffles: the quads'
      // rows differ, so the key test comes after, on the stores only.
      auto quad_transpose = [&](uint32_t(&w)[4]) {
        const int q = lane % 4;
#pragma unroll
        for (int b = 1; b <= 2; b *= 2) {
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            if (i & b) continue;  // the pair (i, i + b)
            // q with bit b set keeps word i + b and sends word i; its partner the other way round.
            const uint32_t got = __shfl_xor_sync(0xffffffffu, (q & b) ? w[i] : w[i + b], b);
            if (q & b)
              w[i] = got;
            else
              w[i + b] = got;
          }
        }
      };
      // Tiles 4 G + i, i = 0..3, of row key of one tensor (base gx, row stride rs, cols valid columns,
      // the warpgroup's first column c0); word(dt): this thread's packed pair of tile dt (dt < the
      // warpgroup's tiles; G and i are unrolled, so the test folds).
      auto store_tiles = [&](int G, T* gx, int64_t rs, int cols, int c0, int key, auto word) {
        uint32_t w[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) w[i] = word(4 * G + i);
        quad_transpose(w);
        const int col = c0 + 8 * (4 * G + lane % 4);
        // (__stwb: st.global.wb.v4, the default cache policy; a plain uint4 assignment came out of
        // NVVM as four 4-byte stores for G = 0.)
        if (key < sb.sk && col < cols)
          __stwb(reinterpret_cast<uint4*>(gx + int64_t(key) * rs + col), make_uint4(w[0], w[1], w[2], w[3]));
      };
      // (Tile groups outermost: each group's registers are dead once it is stored.)
      auto store_dk = [&](int G, int r) {
        store_tiles(G, gdk, p.dk_row_stride, p.head_dim, wc0, key0 + 8 * r, [&](int dt) {
          return dt < kDT ? pack2<T>(dk[dt][2 * r] * p.scale, dk[dt][2 * r + 1] * p.scale) : 0u;
        });
      };
      auto store_dv = [&](int G, int r) {
        store_tiles(G, gdv, p.dv_row_stride, p.head_dim_v, wc0_v, key0 + 8 * r,
                    [&](int dt) { return dt < kDTV ? pack2<T>(dv[dt][2 * r], dv[dt][2 * r + 1]) : 0u; });
      };
      if constexpr (kDTV == kDT) {
#pragma unroll
        for (int G = 0; G < (kDT + 3) / 4; ++G)
#pragma unroll
          for (int r = 0; r < 2; ++r) store_dk(G, r), store_dv(G, r);
      } else {  // (MLA: dK and dV of different widths, one after the other)
#pragma unroll
        for (int G = 0; G < (kDT + 3) / 4; ++G)
#pragma unroll
          for (int r = 0; r < 2; ++r) store_dk(G, r);
#pragma unroll
        for (int G = 0; G < (kDTV + 3) / 4; ++G)
#pragma unroll
          for (int r = 0; r < 2; ++r) store_dv(G, r);
      }
    }
  };
  if constexpr (Shape::kUneven || kExchange) {
    if (cwg == 0)
      consume(std::integral_constant<int, 0>{});
    else
      consume(std::integral_constant<int, 1>{});
  } else {
    consume(std::integral_constant<int, 0>{});
  }
  dq_staging_acquire();  // this warpgroup's end for the dQ writer (the protocol above)
  dq_staging_release(kDqEnd);
#else
  __trap();  // built for sm_90a only; dispatch never launches it elsewhere
#endif
}

template <class T, int kD, int kAccD, int kDV>
Status run_bwd(const Params& p, cudaStream_t stream, void* workspace) {
  // (d = 80's dQ parts cover 96 columns, the accumulator of a 96 call: BwdShape.)
  static_assert(kAccD <= (kD + 31) / 32 * 32, "the accumulator is at most as wide as the kernel's dQ parts");
  // q / k of 192 with v of at most 128 (DeepSeek's MLA): the kernel with V and dO 128 wide.
  if constexpr (kD == 192 && kDV == kD)
    if (p.head_dim_v <= 128 && p.head_dim > 128) return run_bwd<T, kD, kAccD, 128>(p, stream, workspace);
  // Head dims <= 80 (q / k and v) among d = 96's, <= 40 among d = 64's: the 80- / 40-column kernels
  // (sm90_columns).
  if constexpr (kD == 96)
    if (sm90_columns(kD, std::max(p.head_dim, p.head_dim_v)) == 80) return run_bwd<T, 80, kAccD>(p, stream, workspace);
  if constexpr (kD == 64)
    if (sm90_columns(kD, std::max(p.head_dim, p.head_dim_v)) == 40) return run_bwd<T, 40, kAccD>(p, stream, workspace);
  using namespace sm80::bwd;
  if (p.batch == 0 || p.heads_q == 0) return Status::Ok();
  float* dsum = static_cast<float*>(workspace);
  // The deterministic mode's accumulator and order counters lie past the common layout
  // (det_accum_offset: the sm80 path's deterministic mode has no accumulator).
  float* dq_accum = dsum + (p.deterministic ? det_accum_offset(p, kAccD) : dq_accum_offset(p));
  int* dq_order = p.deterministic ? reinterpret_cast<int*>(dsum + det_order_offset(p, kAccD)) : nullptr;
  float* row_stats = dsum + stats_offset(p, kAccD);
  int* sched = reinterpret_cast<int*>(dsum + sched_offset(p, kAccD));  // bwd_kernel's item counter
  const int m_blocks = (p.seqlen_q + kBlockM - 1) / kBlockM;  // of the sm80 preprocess / convert
  using Shape = BwdShape<kD, kDV>;
  constexpr int kBN = Shape::kBN;
  const int n_blocks = (p.seqlen_k + kBN - 1) / kBN;
  const int64_t accum_rows = int64_t(p.batch) * p.heads_q * p.seqlen_q;
  if (accum_rows > INT32_MAX || (p.deterministic && det_chains(p) * det_plane_rows(p) > INT32_MAX))
    return Status{ErrorCode::Unsupported, "sm90 backward: more than 2^31 query rows in one call"};
  const int64_t items = int64_t(n_blocks) * p.heads_k * p.batch;  // bwd_kernel's work items
  if (items >= (int64_t(1) << 30))
    return Status{ErrorCode::Unsupported, "sm90 backward: more than 2^30 key blocks in one call"};
  // bwd_preprocess, over the query rows, zeroes the item counter: without query rows it would not
  // run (backend.cu's sm90_eligible sends such calls to the sm80 kernels).
  if (m_blocks == 0) return Status{ErrorCode::Unsupported, "sm90 backward: no query rows"};

  const CUtensorMapDataType type = map_type(p);
  const int batch = p.varlen ? 1 : p.batch;
  const int64_t rows_q = p.varlen ? p.total_q : p.seqlen_q, rows_k = p.varlen ? p.total_k : p.seqlen_k;
  CUtensorMap tk, tv, tq, tdo, tdq;
  const bool ok =
      encode_tensor_map(&tk, {p.k, p.head_dim, rows_k, p.heads_k, batch, p.k_row_stride, p.k_head_stride, p.k_batch_stride},
                        kBN, type) &&
      encode_tensor_map(&tv, {p.v, p.head_dim_v, rows_k, p.heads_k, batch, p.v_row_stride, p.v_head_stride, p.v_batch_stride},
                        kBN, type) &&
      encode_tensor_map(&tq, {p.q, p.head_dim, rows_q, p.heads_q, batch, p.q_row_stride, p.q_head_stride, p.q_batch_stride},
                        Shape::kBM, type) &&
      encode_tensor_map(&tdo, {p.dout, p.head_dim_v, rows_q, p.heads_q, batch, p.do_row_stride, p.do_head_stride,
                               p.do_batch_stride},
                        Shape::kBM, type) &&
      // The accumulator is kAccD wide: the reductions of columns past it (kD > kAccD) fall outside
      // the tensor and TMA drops them.
      // The deterministic mode's det_chains planes are one taller tensor (the writers add a part's
      // chain's plane offset to its row).
      encode_tensor_map(&tdq, {dq_accum, kAccD, p.deterministic ? det_chains(p) * det_plane_rows(p) : accum_rows, 1, 1, kAccD, 0, 0},
                        64, CU_TENSOR_MAP_DATA_TYPE_FLOAT32, 4,
                        Shape::kDqTileCols * 4,
                        Shape::kDqTileCols == 8 ? CU_TENSOR_MAP_SWIZZLE_NONE : CU_TENSOR_MAP_SWIZZLE_128B);
  if (!ok) return Status{ErrorCode::Unsupported, "sm90 backward: the driver refused a tensor map for these strides"};

  // Softcap / ALiBi (no dropout here: use_sm90_backward) run the kMods instantiation.
  const bool mods = p.softcap > 0.0f || p.alibi_slopes != nullptr;
  auto kernel = mods ? bwd_kernel<T, kD, true, kDV> : bwd_kernel<T, kD, false, kDV>;
  constexpr int kSmem = BwdSmem<kD, kDV>::kBytes;
  static std::atomic<uint64_t> configured[2];  // per instantiation: devices whose shared-memory opt-in is made
  cudaError_t e = allow_dynamic_smem(reinterpret_cast<const void*>(kernel), kSmem, configured[mods]);
  // One CTA per multiprocessor (persistent), each taking items from the counter (bwd_kernel): an
  // item's K / V and first Q / dO copies overlap the previous item's last step and dK / dV stores
  // instead of each CTA's start and end being exposed, and under a mask, where the items' costs
  // differ, the dynamic hand-out keeps the CTAs balanced. Attribute queries are host-side and legal
  // during stream capture.
  int ctas = 0;
  if (e == cudaSuccess) {
    int device = 0, sms = 0;
    e = cudaGetDevice(&device);
    if (e == cudaSuccess) e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
    ctas = static_cast<int>(std::min<int64_t>(items, sms));
  }
  if (e == cudaSuccess) {
    // Over stats_rows (seqlen_q rounded up to 128): the row statistics' padding rows are written too.
    const int pre_blocks = stats_rows(p) / kBlockM;
    bwd_preprocess<kAccD, T><<<dim3(pre_blocks, p.heads_q, p.batch), kThreads, 0, stream>>>(
        p, dsum, dq_accum, row_stats, sched, dq_order, p.deterministic ? det_chains(p) : 1);
    e = cudaGetLastError();
  }
  if (e == cudaSuccess && ctas > 0) {
    kernel<<<ctas, kBwdThreads, kSmem, stream>>>(p, tk, tv, tq, tdo, tdq, row_stats, sched, dq_order);
    e = cudaGetLastError();
  }
  if (e == cudaSuccess) {
    bwd_convert_dq<kAccD, T><<<dim3(m_blocks, p.heads_q, p.batch), kThreads, 0, stream>>>(
        p, dq_accum, p.deterministic ? det_chains(p) : 1);
    e = cudaGetLastError();
  }
  if (e != cudaSuccess)
    return Status{ErrorCode::BackendError,
                  std::string("cuda backward (sm90, head dim ") + std::to_string(kD) + "): " + cudaGetErrorString(e)};
  return Status::Ok();
}

}  // namespace ioattn::cuda::sm90
