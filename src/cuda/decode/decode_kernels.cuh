// Decode kernels (forward_kvcache on the GPU), flash-decoding on tensor cores:
//   append   k_new/v_new rows -> cache positions [cache_seqlens[b], + Snew), keys rotated (fp32,
//            rounded to T). One block per (b, new row) x kv head.
//   attend   block (split, kv head x row block, b): kM = 16 packed query rows (query i, GQA head g
//            of the kv head: row r = i * group + g) form the M side of mma.sync.m16n8k16, so each
//            K/V byte a block reads serves the whole group (decode with group 4 fills 4 of the 16
//            rows; the spare rows cost tensor-core slots, not bytes). Split s covers an equal share
//            of the 64-key tiles of [0, Sk_b). With more than one split each block writes
//            normalised partials and the last block of its group (b, kv head x row block) to
//            arrive merges all splits' partials by LSE (merge_row), ordered by an arrival counter
//            per group in the workspace: no separate combine launch.
//
// Why it is shaped like this: decode is memory-bound (bytes = K + V of the visible cache once;
// arithmetic per byte is a few FLOPs), so the kernel's one job is to keep enough bytes in flight
// per multiprocessor (HBM3e at ~4.3 TB/s and ~1-2 us latency under load: >= 50 KB per SM). Each of
// the 4 warps owns 16 keys of every 64-key block tile and runs its *own* cp.async pipeline of
// kStages stages (K and V rows of its 16 keys, 16-byte chunks, coalesced 256-byte rows), so the
// warps never wait for each other inside the key loop (cp.async.wait_group + __syncwarp only).
// About 96 KB of stages per block, two blocks per SM on sm_90 (one on sm_80): 128-192 KB in flight.
// Scores S = Q K^T and O += P V run on mma.sync (fp32 accumulate) with P kept in registers
// (the C fragments of S are the A fragment of P V); each warp keeps its own online-softmax state and
// the 4 warps merge through shared memory at the end, with the same rules as the split merge.
// Paged caches: page sizes are multiples of 16, so a warp's 16 keys (aligned to 16 positions)
// sit in one page; the page index of the next tile is loaded one iteration ahead, so the
// block-table read is off the load path.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cooperative_groups.h>

#include <climits>
#include <cstdint>
#include <type_traits>

#include "common/fastdiv.h"
#include "common/mma.cuh"
#include "common/score.cuh"
#include "common/tile_layout.h"
#include "core/kvcache.h"
#include "core/mask.h"
#include "core/params.h"
#include "core/softmax_state.h"

namespace ioattn::cuda::decode {

constexpr float kLog2eF = 1.4426950408889634f;

// Tile configuration per padded head dim kD (max(D, Dv) rounded up to 64, 128 or 256) and
// pipeline depth: kStagesT = 0 is the default (~96 KB of stages); the host takes kFewStages<kD>
// where a block may not have that much shared memory (sm_86 / sm_89: 99 KB per block).
template <int kD, int kStagesT = 0>
struct Tile {
  static constexpr int kWarps = 4;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kM = 16;               // packed query rows per block (mma M)
  static constexpr int kWN = 16;              // keys per warp per stage (one k16 step of P V)
  static constexpr int kN = kWarps * kWN;     // keys per block tile
  static constexpr int kChunks = kD / 8;      // 16-byte chunks per K/V row
  static constexpr size_t kRowBytes = 2 * static_cast<size_t>(kD);
  static constexpr size_t kWarpStageBytes = 2 * kWN * kRowBytes;  // K and V rows of 16 keys
  // Default: ~96 KB of stages per block (two blocks per SM on sm_90's 227 KB), at least two.
  static constexpr int kStages = kStagesT > 0 ? kStagesT
                                 : (96 * 1024) / (kWarps * kWarpStageBytes) >= 2
                                     ? static_cast<int>((96 * 1024) / (kWarps * kWarpStageBytes))
                                     : 2;
  static constexpr size_t kQBytes = kM * kRowBytes;
  static constexpr size_t kKVBytes = kStages * kWarps * kWarpStageBytes;
  static constexpr size_t kStateBytes = sizeof(float) * kWarps * kM * 2;
  static constexpr size_t kSmemBytes = kQBytes + kKVBytes + kStateBytes;
  static constexpr int kMinBlocks = kD <= 128 ? 2 : 1;  // blocks per SM the registers must allow
  // Q as mma A fragments in registers (kD / 16 k-steps x 4 registers) up to kD = 128; at 256 the
  // output accumulator alone takes 128 registers, so Q fragments are re-read from shared memory.
  static constexpr bool kQInRegs = kD <= 128;
  // The end-of-block merge stores every warp's (kM x kD) fp32 output over the K/V stages.
  // Row pitch of that store: kD + 8 floats puts the 8 rows a half-warp's float2 stores touch in
  // 8 distinct bank groups (a pitch of kD, a multiple of 32 words, made them 4-way conflicts);
  // kD where the padded rows would not fit (the one-stage kD = 256 variant).
  static constexpr int kSoPitch = sizeof(float) * kWarps * kM * (kD + 8) <= kKVBytes ? kD + 8 : kD;
  static constexpr int kDim = kD;
  // The cluster merge keeps the block's normalised partials (kM x kD fp32) after the warps' outputs.
  static constexpr bool kClusterFits = sizeof(float) * (kWarps * kM * kSoPitch + kM * kD) <= kKVBytes;
  static_assert(sizeof(float) * kWarps * kM * kSoPitch <= kKVBytes, "warp merge must fit in the K/V stages");
  static_assert(kD % 64 == 0 && kD <= 256, "kD is 64, 128 or 256");
  static_assert(kWN * kChunks % 32 == 0, "a warp's stage is a whole number of 16-byte chunks per lane");
  static_assert(kStages >= 1, "at least one stage");
};
// The fallback depth that fits 99 KB per block: 64 KB of stages at kD = 128 and 256 (at 256 a
// single stage: each tile's copies are waited for before its math, correct but unpipelined).
template <int kD>
constexpr int kFewStages = kD == 64 ? 4 : (kD == 128 ? 2 : 1);

template <class T>
__device__ __forceinline__ T from_float(float x) {
  if constexpr (std::is_same_v<T, __half>) return __float2half_rn(x);
  else return __float2bfloat16_rn(x);
}
template <class T>
__device__ __forceinline__ float to_float(T x) {
  return Half2Of<T>::to_float(x);
}

__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int o = 16; o > 0; o /= 2) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}

// The sum over the warp by xor butterfly: every lane ends with the same value (each step adds
// the same two numbers on both lanes of a pair), and the order is fixed, so it is deterministic.
__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o /= 2) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// Element d of a row `x` (global, T) rotated at cache position pos, rounded to T, as float.
template <class T>
__device__ __forceinline__ float rotated(const Params& p, const T* x, int d, int pos) {
  const float v = to_float(x[d]);
  if (d >= p.rotary_dim) return v;
  const RotaryIndex r = rotary_index(d, p.rotary_dim, p.rotary_interleaved);
  const int64_t cs = static_cast<int64_t>(clamp_int(pos, 0, p.rotary_seqlen - 1)) * p.rotary_row_stride + r.angle;
  const float c = to_float(static_cast<const T*>(p.rotary_cos)[cs]);
  const float s = to_float(static_cast<const T*>(p.rotary_sin)[cs]);
  return to_float(from_float<T>(rotate(v, to_float(x[r.partner]), c, s, r.sign)));
}

// ---- append ----------------------------------------------------------------------------------
// grid (batch * seqlen_new, heads_k), any block size.
template <class T>
__global__ void append_kernel(const Params p) {
  const int b = blockIdx.x / p.seqlen_new, j = blockIdx.x % p.seqlen_new, hk = blockIdx.y;
  const KVSeq s = kv_seq(p, b);
  const KVLoc loc = kv_loc(p, b, s, s.old_len + j);
  const T* kn = static_cast<const T*>(p.k_new) + b * p.knew_batch_stride + j * p.knew_row_stride + hk * p.knew_head_stride;
  const T* vn = static_cast<const T*>(p.v_new) + b * p.vnew_batch_stride + j * p.vnew_row_stride + hk * p.vnew_head_stride;
  T* kc = static_cast<T*>(p.k_cache) + loc.outer * p.k_batch_stride + loc.row * p.k_row_stride + hk * p.k_head_stride;
  T* vc = static_cast<T*>(p.v_cache) + loc.outer * p.v_batch_stride + loc.row * p.v_row_stride + hk * p.v_head_stride;
  for (int d = threadIdx.x; d < p.head_dim; d += blockDim.x)
    kc[d] = p.rotary_dim > 0 ? from_float<T>(rotated(p, kn, d, s.old_len + j)) : kn[d];
  for (int d = threadIdx.x; d < p.head_dim_v; d += blockDim.x) vc[d] = vn[d];
}

// ---- split merge -----------------------------------------------------------------------------
// With splits > 1 the attend blocks of one group (b, kv head x row block) write normalised
// partials (o_s, lse_s) of the group's rows, and the block that arrives last merges them. This
// replaces a separate combine kernel, which with its launch cost 5.3-6.4 us per call (ncu,
// bench/notes-decode.md) on calls whose bytes take 8-30 us.
constexpr int kMaxSplits = 128;  // the merge keeps kMaxSplits / 32 LSEs per lane in registers

// Split-KV arrival at the group's counter (zeroed on the stream before attend, every call; the
// merging block leaves it at `splits`, the next call's memset clears it). Returns true, in every
// thread, in the one block of the group that arrives last; every split's partial writes are then
// visible to all of its threads. Ordering (the pattern of cooperative groups' grid sync):
//   release: each thread's __threadfence() orders its partial stores before its later accesses,
//            device-wide; the barrier puts all four warps' fences before thread 0's atomicAdd.
//   acquire: the block whose atomicAdd returns splits - 1 has observed every other block's
//            increment, each made after that block's fences; thread 0's __threadfence() after
//            the atomic, then the barrier, order the merge's plain loads (all threads) after those
//            increments, so they see the partials. The fence also keeps stale L1 lines from being
//            read: part_lse rows of neighbouring groups share cache lines, which an earlier merge
//            on this SM may have cached.
__device__ __forceinline__ bool last_to_arrive(unsigned* counter, int splits) {
  __threadfence();
  __syncthreads();
  bool last = false;
  if (threadIdx.x == 0) {
    last = atomicAdd(counter, 1u) == static_cast<unsigned>(splits - 1);
    if (last) __threadfence();
  }
  return __syncthreads_or(last);
}

// Merges the splits' partials of output row `row` = (b * Hq + h) * Sq + i with one warp, by LSE
// (softmax_state.h's LseMerge): LSE = log sum_s exp(lse_s), O = sum_s exp(lse_s - LSE) o_s. Lane l
// reads the LSEs of splits l, l + 32, ... (all loads in flight), then owns dims l + 32 k of O and
// sums the splits in index order, kUnroll splits' loads in flight at a time (see below),
// so a row costs a few L2 latencies. One warp per row, not one block: the merging block has up
// to kM rows to merge and its warps take them in parallel. Every sum has a fixed order (splits
// ascending; the weights' sum a butterfly), so the result does not depend on which block merges.
// s_w: kMaxSplits floats of shared memory owned by this warp. orow: the row of out (T); lse_out:
// its LSE, or null.
template <class T, int kMaxD>
__device__ void merge_row(const Params& p, int splits, const float* part_o, const float* part_lse, int64_t total_rows,
                          int64_t row, T* orow, float* lse_out, float* s_w) {
  // Loads in flight per lane: 128 floats up to kMaxD = 128 (32 splits in one round trip to L2:
  // with 16 per round the merge's dependent rounds were most of its time), 32 at kMaxD = 256 (the
  // attend kernel is at its 255 registers there, and 64 added 4 bytes of spill loads on sm_80).
  constexpr int kL = kMaxSplits / 32, kDL = kMaxD / 32, kUnroll = (kMaxD <= 128 ? 4096 : 1024) / kMaxD;
  const int lane = threadIdx.x % 32, Dv = p.head_dim_v;
  // The partial outputs of splits [sp0, sp0 + kUnroll) of this lane's dims. The first round is
  // loaded before the LSEs, so both are one round trip to L2 together, not two in a row.
  float v[kUnroll][kDL];
  auto load_round = [&](int sp0) {
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int sp = sp0 + u;
      const float* src = part_o + (sp * total_rows + row) * Dv;
#pragma unroll
      for (int k = 0; k < kDL; ++k) v[u][k] = (sp < splits && lane + 32 * k < Dv) ? src[lane + 32 * k] : 0.0f;
    }
  };
  load_round(0);
  float lse[kL];
#pragma unroll
  for (int k = 0; k < kL; ++k) {
    const int sp = lane + 32 * k;
    lse[k] = sp < splits ? part_lse[sp * total_rows + row] : -INFINITY;
  }
  float mx = lse[0];
#pragma unroll
  for (int k = 1; k < kL; ++k) mx = fmaxf(mx, lse[k]);
  LseMerge m = LseMerge::begin(warp_max(mx));
#pragma unroll
  for (int k = 0; k < kL; ++k) s_w[lane + 32 * k] = m.add(lse[k]);  // empty splits (lse = -inf) weigh exactly 0
  m.sum = warp_sum(m.sum);
  __syncwarp();  // s_w written by all lanes

  float acc[kDL];
#pragma unroll
  for (int k = 0; k < kDL; ++k) acc[k] = 0.0f;
  for (int sp0 = 0; sp0 < splits; sp0 += kUnroll) {
    if (sp0 > 0) load_round(sp0);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const float w = sp0 + u < splits ? s_w[sp0 + u] : 0.0f;
#pragma unroll
      for (int k = 0; k < kDL; ++k) acc[k] += w * v[u][k];
    }
  }
  const float scale = m.out_scale();
#pragma unroll
  for (int k = 0; k < kDL; ++k)
    if (lane + 32 * k < Dv) orow[lane + 32 * k] = from_float<T>(acc[k] * scale);
  if (lane == 0 && lse_out) *lse_out = m.lse();
  __syncwarp();  // every lane's reads of s_w precede the warp's next row
}

// ---- split merge in a thread-block cluster (sm_90) -------------------------------------------
// With 2 <= splits <= kMaxClusterSplits the group's blocks (one per split, blockIdx.x = split =
// cluster rank) are one cluster. Each leaves its normalised partial outputs (kM x kD fp32,
// `part`) and its rows' LSEs (sstate[r * 2 + 1]) in its own shared memory; after a cluster barrier
// (release / acquire: every block's stores are visible to the others), block c merges output items
// c, c + splits, ... (item = a row and 4 dims) by reading every split's partials through
// distributed shared memory, in split order (so the result is the same from call to call); a second
// barrier keeps every block's shared memory alive until all reads of it are done. Against the
// global merge this drops the per-call memset of the arrival counters, the partials' round trip
// through L2, the fences and the atomic (about 4 us of a 10-25 us decode call: globaltimer traces,
// bench/notes-decode.md).
constexpr int kMaxClusterSplits = 16;  // the largest cluster sm_90 launches (8 portable, 16 opted in)

// The attend kernel's run-time divisors, prepared on the host (common/fastdiv.h): at batch 1 a
// block's whole life is a prologue, a tile or two and the merge, and the prologue's integer
// divisions (row block and kv head out of blockIdx.y, a row's query and head out of the GQA group,
// the split's share of the tiles: ~20 dependent instructions each) sat on its serial path.
struct AttendDivs {
  FastDiv group;       // p.group: row rg of a block is query rg / group of head hk * group + rg % group
  FastDiv row_blocks;  // row blocks per kv head: blockIdx.y = hk * row_blocks + row block
  FastDiv splits;      // the grid's splits (blockIdx.x)
  static AttendDivs make(const Params& p, int row_blocks, int splits) {
    return {FastDiv::make(p.group), FastDiv::make(row_blocks), FastDiv::make(splits)};
  }
};

template <class T, class C>
__device__ void cluster_merge(const Params& p, int splits, const FastDiv& group, float* part, const float* sstate,
                              int real_rows, int r0, int hk, int b, int64_t q0) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  namespace cg = cooperative_groups;
  constexpr int kD4 = C::kDim / 4;  // 4-dim groups per row
  cg::cluster_group cluster = cg::this_cluster();
  cluster.sync();
  const int Dv = p.head_dim_v;
  // Items interleaved over the blocks (item rank + splits * k), so a group with few rows spreads its
  // remote reads over all the cluster's multiprocessors instead of one.
  for (int e = static_cast<int>(cluster.block_rank()) + splits * static_cast<int>(threadIdx.x); e < real_rows * kD4;
       e += splits * C::kThreads) {
    const int r = e / kD4, d = (e % kD4) * 4;
    if (d >= Dv) continue;
    // Every split's partial and LSE requested before any is used: one round trip of remote reads.
    float4 x[kMaxClusterSplits];
    float lse[kMaxClusterSplits];
#pragma unroll
    for (int sp = 0; sp < kMaxClusterSplits; ++sp) {
      if (sp < splits) {
        x[sp] = *reinterpret_cast<const float4*>(cluster.map_shared_rank(part + r * C::kDim + d, sp));
        lse[sp] = *cluster.map_shared_rank(sstate + r * 2 + 1, sp);
      } else {
        x[sp] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        lse[sp] = -INFINITY;
      }
    }
    float mx = lse[0];
#pragma unroll
    for (int sp = 1; sp < kMaxClusterSplits; ++sp) mx = fmaxf(mx, lse[sp]);
    LseMerge m = LseMerge::begin(mx);
    float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
    for (int sp = 0; sp < kMaxClusterSplits; ++sp) {
      const float w = m.add(lse[sp]);  // empty splits (lse = -inf) weigh exactly 0
      acc.x += w * x[sp].x;
      acc.y += w * x[sp].y;
      acc.z += w * x[sp].z;
      acc.w += w * x[sp].w;
    }
    const float scale = m.out_scale();
    int i, hr;
    group.divmod(r0 + r, i, hr);
    const int h = hk * p.group + hr;
    T* orow = static_cast<T*>(p.out) + b * p.o_batch_stride + (q0 + i) * p.o_row_stride + h * p.o_head_stride + d;
    orow[0] = from_float<T>(acc.x * scale);
    orow[1] = from_float<T>(acc.y * scale);
    orow[2] = from_float<T>(acc.z * scale);
    orow[3] = from_float<T>(acc.w * scale);
    if (d == 0 && p.lse) p.lse[b * p.lse_batch_stride + h * p.lse_head_stride + q0 + i] = m.lse();
  }
  cluster.sync();
#else
  __trap();  // the host launches the cluster kernels only on sm_90 devices (decode.cu)
#endif
}

// ---- attend ----------------------------------------------------------------------------------
// Shared-memory rows of kD 16-bit elements with the 16-byte chunk c of row r stored at chunk
// c ^ (r % 8) (the sm80 tiles' swizzle, common/tile_layout.h): ldmatrix's 8 row addresses (8
// consecutive rows, one logical chunk) then fall in 8 distinct bank groups although the row pitch is
// a multiple of 128 bytes. swz takes the chunk index c; its element offset.
template <int kD>
__device__ __forceinline__ int swz(int r, int c) {
  return smem_tile_offset(r, c << 3, kD, true);
}

// grid (splits, heads_k * m_blocks, batch), Tile<kD, kStagesT>::kThreads threads,
// Tile<kD, kStagesT>::kSmemBytes dynamic shared memory. splits == 1 writes out / lse; otherwise normalised partials:
// part_o[(split * rows + row) * Dv + d], part_lse[split * rows + row], row = (b * Hq + h) * Sq + i,
// and the group's last block merges them into out / lse. arrivals: one counter per group
// (b * grid.y + blockIdx.y), zero at launch (unused with one split).
// kCluster (sm_90, 2 <= splits <= kMaxClusterSplits, launched with cluster dims (splits, 1, 1)):
// the group's blocks form one thread-block cluster and merge through distributed shared memory
// instead (cluster_merge): no workspace, no counters, no global partials.
template <class T, int kD, int kStagesT, bool kCluster = false>
__global__ void __launch_bounds__(Tile<kD, kStagesT>::kThreads, Tile<kD, kStagesT>::kMinBlocks)
    attend_kernel(const Params p, int splits, const AttendDivs dv, float* part_o, float* part_lse, unsigned* arrivals) {
  using C = Tile<kD, kStagesT>;
  constexpr int kM = C::kM, kN = C::kN, kWN = C::kWN, kStages = C::kStages, kChunks = C::kChunks;
  constexpr int kKSteps = kD / 16;                 // k16 steps of Q K^T
  constexpr int kDT = kD / 8;                      // n8 tiles of the output
  constexpr int kLoads = kWN * kChunks / 32;       // 16-byte chunks per lane per K (and V) stage
  extern __shared__ __align__(128) unsigned char smem[];
  T* sq = reinterpret_cast<T*>(smem);                                   // (kM, kD) queries, swizzled
  T* skv = reinterpret_cast<T*>(smem + C::kQBytes);                     // stages x warps x {K, V}
  float* sstate = reinterpret_cast<float*>(smem + C::kQBytes + C::kKVBytes);  // (warps, kM, {m, l})

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int g = lane / 4, t = lane % 4;
  const int split = blockIdx.x, b = blockIdx.z;
  int hk, r0;  // grid.y: kv heads x row blocks, sized for the longest sequence (AttendDivs)
  dv.row_blocks.divmod(static_cast<int>(blockIdx.y), hk, r0);
  r0 *= kM;
  const int D = p.head_dim, Dv = p.head_dim_v;
  const KVSeq s = kv_seq(p, b);
  const int rows = s.sq * p.group;
  if (r0 >= rows) return;  // paged varlen: a shorter sequence (block-uniform, before any barrier)
  const WindowMask mask{p.window_left, p.window_right, s.sk - s.sq};

  // This block's keys: the split's share of the tiles of [0, sk), cut to the rows' visible range
  // (first_key / end_key grow with the row, so the first and last rows bound it). The loop starts
  // at k_begin rounded down to 16 so every warp tile starts on a 16-key boundary (one page);
  // the keys before k_begin are masked.
  const int i_first = dv.group.div(r0), i_last = dv.group.div(min(r0 + kM, rows) - 1);
  const int tiles = (s.sk + kN - 1) / kN, per_split = dv.splits.div(tiles + splits - 1);
  const int k_begin = max(min(mask.first_key(i_first), s.sk), split * per_split * kN);
  const int k_end = min(mask.end_key(i_last, s.sk), min(s.sk, (split + 1) * per_split * kN));
  const int k_start = k_begin & ~(kWN - 1);
  const int n_iter = k_end > k_begin ? (k_end - k_start + kN - 1) / kN : 0;

  // ---- K/V producer: this warp's 16 keys of block tile `it` into stage it % kStages.
  // A warp tile's 16 keys are 16 consecutive cache rows of one page (page sizes are multiples of
  // 16 and paged caches have no left padding: validate_kvcache.cpp; a contiguous cache's rows are
  // consecutive anyway), so every address of a tile is the tile's first row plus per-lane
  // constants: lane l copies 16-byte column cc = l % kChunks of rows n0 + e * kRowStep, e < kLoads.
  // The per-chunk work is then one 64-bit add and one compare (ncu, batch 1 / 8k keys: the general
  // per-chunk location arithmetic was ~40 integer instructions per cp.async and made the kernel
  // issue-bound at 2.6x cuDNN's instruction count).
  static_assert(32 % kChunks == 0, "a warp covers whole rows per load step");
  constexpr int kRowStep = 32 / kChunks;
  const int n0 = lane / kChunks, cc = lane % kChunks;
  const bool k_col = cc * 8 < D, v_col = cc * 8 < Dv;
  const T* kbase = static_cast<const T*>(p.k) + hk * p.k_head_stride;
  const T* vbase = static_cast<const T*>(p.v) + hk * p.v_head_stride;
  const int64_t k_step = static_cast<int64_t>(kRowStep) * p.k_row_stride, v_step = static_cast<int64_t>(kRowStep) * p.v_row_stride;
  auto tile_key = [&](int it) { return k_start + it * kN + warp * kWN; };  // first key of the warp tile
  auto tile_loc = [&](int it) {
    const int j0 = tile_key(it);
    return (it < n_iter && j0 < k_end) ? kv_loc(p, b, s, s.start + j0) : KVLoc{0, 0};
  };
  T* const my_stages = skv + warp * (2 * kWN * kD);
  constexpr int kStageElems = C::kWarps * 2 * kWN * kD;  // one stage of all warps
  int soff[kLoads];  // this lane's swizzled element offsets in a stage's K (and V) rows
#pragma unroll
  for (int e = 0; e < kLoads; ++e) soff[e] = swz<kD>(n0 + e * kRowStep, cc);
  // Chunks past the tile's rows or the head dim pass src-size 0: cp.async zero-fills the 16 bytes
  // and reads nothing, so the (possibly out-of-range) address is never dereferenced.
  auto issue = [&](int it, KVLoc loc0) {
    if (it < n_iter) {
      T* sk = my_stages + (it % kStages) * kStageElems;
      T* sv = sk + kWN * kD;
      const int rows_left = k_end - tile_key(it) - n0;  // this lane's rows e * kRowStep < rows_left exist
      const T* kp = kbase + loc0.outer * p.k_batch_stride + static_cast<int64_t>(loc0.row + n0) * p.k_row_stride + cc * 8;
      const T* vp = vbase + loc0.outer * p.v_batch_stride + static_cast<int64_t>(loc0.row + n0) * p.v_row_stride + cc * 8;
#pragma unroll
      for (int e = 0; e < kLoads; ++e) {
        const bool row_ok = e * kRowStep < rows_left;
        cp_async_16(sk + soff[e], kp, row_ok && k_col);
        cp_async_16(sv + soff[e], vp, row_ok && v_col);
        kp += k_step;
        vp += v_step;
      }
    }
    cp_async_commit();  // one group per tile, empty past the end: the wait count stays uniform
  };

  // Queries (rotated, rounded to T) of the block's rows, read into registers before the K/V
  // prologue so that their loads are ahead of its copies in the memory queue (ncu, batch 1 / 8k
  // keys: read after the copies, they arrived behind them, and waiting for them and at the barrier
  // after them took a quarter of the kernel's time), then stored to shared memory while K/V land.
  static_assert(kM * kChunks % C::kThreads == 0, "whole query chunks per thread");
  constexpr int kQIters = kM * kChunks / C::kThreads;
  uint4 qx[kQIters];
#pragma unroll
  for (int u = 0; u < kQIters; ++u) {
    const int e = tid + u * C::kThreads, r = e / kChunks, c = e % kChunks, rg = r0 + r;
    alignas(16) T x[8];
#pragma unroll
    for (int k = 0; k < 8; ++k) x[k] = from_float<T>(0.0f);
    if (rg < rows && c * 8 < D) {
      int i, hr;
      dv.group.divmod(rg, i, hr);
      const int h = hk * p.group + hr;
      const T* qrow =
          static_cast<const T*>(p.q) + b * p.q_batch_stride + (s.q0 + i) * p.q_row_stride + h * p.q_head_stride;
#pragma unroll
      for (int k = 0; k < 8; ++k) {
        const int d = c * 8 + k;
        if (d < D) x[k] = p.rotary_dim > 0 ? from_float<T>(rotated(p, qrow, d, rotary_q_position(p, s, i))) : qrow[d];
      }
    }
    qx[u] = *reinterpret_cast<const uint4*>(x);
  }

  // Prologue: the first kStages tiles in flight (every stage), before the queries' barrier; the
  // loop refills a stage as soon as its tile is consumed. (Issuing the last stage's tile at the
  // loop's start instead put it behind the queries' wait: globaltimer traces, batch 1 / 8k keys.)
  // loc_next: the cache location of the next tile to issue (its block-table read one iteration
  // ahead of its use).
#pragma unroll
  for (int it = 0; it < kStages; ++it) issue(it, tile_loc(it));
  KVLoc loc_next = tile_loc(kStages);
#pragma unroll
  for (int u = 0; u < kQIters; ++u) {
    const int e = tid + u * C::kThreads;
    *reinterpret_cast<uint4*>(sq + swz<kD>(e / kChunks, e % kChunks)) = qx[u];
  }
  __syncthreads();

  // Q as A fragments: a[0] (row g, k 2t..), a[1] (row g+8), a[2] (row g, k 2t+8..), a[3] (row g+8, k 2t+8..)
  // = ldmatrix.x4 of the 8x8 matrices (rows 0-7 / 8-15) x (k 0-7 / 8-15); lane l addresses row
  // l % 8 of matrix l / 8.
  const int a_row = ((lane >> 3) & 1) * 8 + (lane & 7), a_chunk = lane >> 4;
  uint32_t qf[C::kQInRegs ? kKSteps : 1][4];
  if constexpr (C::kQInRegs) {
#pragma unroll
    for (int ks = 0; ks < kKSteps; ++ks) ldmatrix_x4(qf[ks], sq + swz<kD>(a_row, 2 * ks + a_chunk));
  }

  // Per lane: rows g and g + 8 of the block. Visible keys of a row: [lo, hi) (the mask's range
  // cut to this block's keys); padding rows see nothing.
  const bool softcap = p.softcap > 0.0f;
  const float cap_in = softcap ? softcap_in(p.scale, p.softcap) : 0.0f, cap_out = p.softcap * kLog2eF;
  int lo[2], hi[2], qi[2];
  float slope[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int rg = r0 + g + 8 * r;
    const bool real = rg < rows;
    int hr;
    dv.group.divmod(rg, qi[r], hr);
    if (!real) qi[r] = 0;
    lo[r] = real ? max(k_begin, mask.first_key(qi[r])) : 0;
    hi[r] = real ? min(k_end, mask.end_key(qi[r], s.sk)) : 0;
    const int h = hk * p.group + hr;
    slope[r] = (p.alibi_slopes && real) ? p.alibi_slopes[b * p.alibi_batch_stride + h] * kLog2eF : 0.0f;
  }
  const bool alibi = p.alibi_slopes != nullptr, mods = softcap || alibi;
  // The keys every real row of the block sees: [vis_lo, vis_hi) (empty when some row sees none).
  const int vis_lo = __reduce_max_sync(0xffffffffu, max(r0 + g < rows ? lo[0] : INT_MIN, r0 + g + 8 < rows ? lo[1] : INT_MIN));
  const int vis_hi = __reduce_min_sync(0xffffffffu, min(r0 + g < rows ? hi[0] : INT_MAX, r0 + g + 8 < rows ? hi[1] : INT_MAX));

  SoftmaxState st[2] = {SoftmaxState::empty(), SoftmaxState::empty()};  // l: this lane's partial sum
  float o[kDT][4];
#pragma unroll
  for (int n = 0; n < kDT; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) o[n][e] = 0.0f;

  // K fragments (non-transposed ldmatrix of K rows): matrix m = lane / 8 is keys (m / 2) * 8 + 0..7,
  // dims (m % 2) * 8 + 0..7 of the k-step: regs {b0, b1} of key tile 0, then of key tile 1.
  const int kb_row = (lane >> 4) * 8 + (lane & 7), kb_chunk = (lane >> 3) & 1;
  // V fragments (transposed ldmatrix of V rows): matrix m is keys (m % 2) * 8 + 0..7, dims
  // (m / 2) * 8 + 0..7 of a 16-dim pair: {b0, b1} of dim tile 2np, then of dim tile 2np + 1.
  const int vb_row = ((lane >> 3) & 1) * 8 + (lane & 7), vb_chunk = lane >> 4;

  for (int it = 0; it < n_iter; ++it) {
    cp_async_wait<kStages - 1>();  // kStages + it groups committed: tile it has landed
    __syncwarp();
    const T* sk = my_stages + (it % kStages) * kStageElems;
    const T* sv = sk + kWN * kD;
    const int j0 = tile_key(it);

    // S = Q K^T for the warp's 16 keys: s[nt][e], row g (e < 2) / g + 8, key j0 + nt * 8 + 2t + (e & 1).
    float sc[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
#pragma unroll
    for (int ks = 0; ks < kKSteps; ++ks) {
      uint32_t kf[4];
      ldmatrix_x4(kf, sk + swz<kD>(kb_row, 2 * ks + kb_chunk));
      if constexpr (C::kQInRegs) {
        mma_16816<T>(sc[0], qf[ks], kf[0], kf[1]);
        mma_16816<T>(sc[1], qf[ks], kf[2], kf[3]);
      } else {
        uint32_t a[4];
        ldmatrix_x4(a, sq + swz<kD>(a_row, 2 * ks + a_chunk));
        mma_16816<T>(sc[0], a, kf[0], kf[1]);
        mma_16816<T>(sc[1], a, kf[2], kf[3]);
      }
    }

    // Scores in log2 units, masked; online softmax per row (the max over the row's 4 lanes). Three
    // forms of one body, chosen per tile, uniformly over the warp: with score modifiers (softcap,
    // ALiBi), or plain and either masked or (a tile every row of the block sees whole) unmasked; the
    // plain unmasked form is most tiles of a long cache and half the instructions of the general one.
    uint32_t pa[4];
    float alpha[2];
    auto softmax_tile = [&](auto mods_tag, auto masked_tag) {
      constexpr bool kMods = decltype(mods_tag)::value, kMasked = decltype(masked_tag)::value;
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        float x[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int nt = e / 2, j = j0 + nt * 8 + 2 * t + (e & 1);
          const float acc = sc[nt][2 * r + (e & 1)];
          float v = acc * p.scale_log2;
          if constexpr (kMods) {
            if (softcap) v = fmaf(softcap_r(acc * cap_in), -2.0f * cap_out, cap_out);
            if (alibi) v -= slope[r] * static_cast<float>(mask.alibi_distance(qi[r], j));
          }
          if constexpr (kMasked) v = (j >= lo[r] && j < hi[r]) ? v : -INFINITY;
          x[e] = v;
        }
        float mx = fmaxf(fmaxf(x[0], x[1]), fmaxf(x[2], x[3]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        alpha[r] = st[r].raise_max(mx);
        float pr[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) pr[e] = st[r].prob(x[e]);
        st[r].l += (pr[0] + pr[1]) + (pr[2] + pr[3]);
        // A fragment of P V: a[r] = keys 2t.. of tile 0, a[r + 2] = keys 8 + 2t.. (tile 1).
        pa[r] = pack2<T>(pr[0], pr[1]);
        pa[r + 2] = pack2<T>(pr[2], pr[3]);
      }
    };
    if (mods) softmax_tile(std::true_type{}, std::true_type{});
    else if (j0 >= vis_lo && j0 + kWN <= vis_hi) softmax_tile(std::false_type{}, std::false_type{});
    else softmax_tile(std::false_type{}, std::true_type{});
    // The output's rescale, skipped by the whole warp when no row's maximum moved (most tiles once
    // a row has seen a few: a multiply by 1 is exact, so lanes that did not need it may take it).
    if (__any_sync(0xffffffffu, alpha[0] != 1.0f || alpha[1] != 1.0f)) {
#pragma unroll
      for (int n = 0; n < kDT; ++n) {
        o[n][0] *= alpha[0];
        o[n][1] *= alpha[0];
        o[n][2] *= alpha[1];
        o[n][3] *= alpha[1];
      }
    }

    // O += P V over the 16 keys.
#pragma unroll
    for (int np = 0; np < kDT / 2; ++np) {
      uint32_t vf[4];
      ldmatrix_x4_trans(vf, sv + swz<kD>(vb_row, 2 * np + vb_chunk));
      mma_16816<T>(o[2 * np], pa, vf[0], vf[1]);
      mma_16816<T>(o[2 * np + 1], pa, vf[2], vf[3]);
    }
    __syncwarp();  // every lane's reads of this stage precede the copies that refill it
    issue(it + kStages, loc_next);
    loc_next = tile_loc(it + kStages + 1);  // the block-table read for the tile after: used next iteration
  }
  cp_async_wait<0>();
  __syncthreads();  // all warps are done with the stages: they hold the warps' outputs now

  // Merge the warps' states (rows g, g + 8; the row's l is the sum over its 4 lanes).
  float* so = reinterpret_cast<float*>(skv);  // (warps, kM, kD), rows C::kSoPitch floats apart
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float l = st[r].l;
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    const int row = g + 8 * r;
    if (t == 0) {
      sstate[(warp * kM + row) * 2] = st[r].m;
      sstate[(warp * kM + row) * 2 + 1] = l;
    }
#pragma unroll
    for (int n = 0; n < kDT; ++n)
      *reinterpret_cast<float2*>(so + (warp * kM + row) * C::kSoPitch + n * 8 + 2 * t) = make_float2(o[n][2 * r], o[n][2 * r + 1]);
  }
  __syncthreads();
  // Each row's warp weights, once per row (thread r < kM): folding the warps' states in order,
  // warp w's output ends multiplied by its a_other times every later warp's a_self, and by the
  // row's 1 / l. The weights replace the row's (m, l) in sstate (each thread reads and writes only
  // its own row); slot 1 of warp 0 takes the row's LSE.
  if (tid < kM) {
    SoftmaxState tot = SoftmaxState::empty();
    float wgt[C::kWarps];
#pragma unroll
    for (int w = 0; w < C::kWarps; ++w) {
      const SoftmaxState sw{sstate[(w * kM + tid) * 2], sstate[(w * kM + tid) * 2 + 1]};
      float a_self, a_other;
      tot.merge(sw, &a_self, &a_other);
#pragma unroll
      for (int u = 0; u < w; ++u) wgt[u] *= a_self;
      wgt[w] = a_other;
    }
    const float scale = tot.out_scale();
#pragma unroll
    for (int w = 0; w < C::kWarps; ++w) sstate[(w * kM + tid) * 2] = wgt[w] * scale;
    sstate[tid * 2 + 1] = tot.lse();
  }
  __syncthreads();
  // The block's real rows only, 4 dims per thread (float4 from shared memory, and to the partials:
  // Dv is a multiple of 8, so a group of 4 is wholly inside or outside it). Element by element over
  // all kM rows this loop was a quarter of a short call's time (globaltimer traces).
  const int64_t total_rows = static_cast<int64_t>(p.batch) * p.heads_q * p.seqlen_q;
  constexpr int kD4 = kD / 4;
  const int real_rows = min(kM, rows - r0);
  // Cluster mode: this block's normalised partials, (kM, kD) fp32, in the K/V stages past `so`.
  static_assert(!kCluster || C::kClusterFits, "the cluster merge's partials must fit in the K/V stages");
  float* const so_part = so + C::kWarps * kM * C::kSoPitch;
  for (int e = tid; e < real_rows * kD4; e += C::kThreads) {
    const int r = e / kD4, d = (e % kD4) * 4, rg = r0 + r;
    if (d >= Dv) continue;
    float4 val = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
    for (int w = 0; w < C::kWarps; ++w) {
      const float4 x = *reinterpret_cast<const float4*>(so + (w * kM + r) * C::kSoPitch + d);
      const float wt = sstate[(w * kM + r) * 2];
      val.x += x.x * wt;
      val.y += x.y * wt;
      val.z += x.z * wt;
      val.w += x.w * wt;
    }
    const float row_lse = sstate[r * 2 + 1];
    int i, hr;
    dv.group.divmod(rg, i, hr);
    const int h = hk * p.group + hr;
    if (splits == 1) {
      T* orow = static_cast<T*>(p.out) + b * p.o_batch_stride + (s.q0 + i) * p.o_row_stride + h * p.o_head_stride + d;
      orow[0] = from_float<T>(val.x);
      orow[1] = from_float<T>(val.y);
      orow[2] = from_float<T>(val.z);
      orow[3] = from_float<T>(val.w);
      if (d == 0 && p.lse) p.lse[b * p.lse_batch_stride + h * p.lse_head_stride + s.q0 + i] = row_lse;
    } else if constexpr (kCluster) {
      *reinterpret_cast<float4*>(so_part + r * kD + d) = val;  // the row's LSE stays in sstate[r * 2 + 1]
    } else {
      const int64_t row = split * total_rows + (static_cast<int64_t>(b) * p.heads_q + h) * p.seqlen_q + i;
      *reinterpret_cast<float4*>(part_o + row * Dv + d) = val;  // 16-byte aligned: workspace_for's layout
      if (d == 0) part_lse[row] = row_lse;
    }
  }
  if (splits == 1) return;
  if constexpr (kCluster) {
    cluster_merge<T, C>(p, splits, dv.group, so_part, sstate, real_rows, r0, hk, b, s.q0);
    return;
  }

  // ---- Split merge by the group's last block: its warps take the group's rows in turn. The
  // K/V stages are free (last_to_arrive's barriers follow every read of `so`): each warp's
  // merge weights go there.
  if (!last_to_arrive(arrivals + static_cast<int64_t>(b) * gridDim.y + blockIdx.y, splits)) return;
  static_assert(sizeof(float) * C::kWarps * kMaxSplits <= C::kKVBytes, "merge weights must fit in the K/V stages");
  static_assert(kMaxSplits % 32 == 0, "whole LSEs per lane");
  float* s_w = reinterpret_cast<float*>(skv) + warp * kMaxSplits;
  for (int r = warp; r < min(kM, rows - r0); r += C::kWarps) {
    int i, hr;
    dv.group.divmod(r0 + r, i, hr);
    const int h = hk * p.group + hr;
    T* orow = static_cast<T*>(p.out) + b * p.o_batch_stride + (s.q0 + i) * p.o_row_stride + h * p.o_head_stride;
    float* lse_out = p.lse ? p.lse + b * p.lse_batch_stride + h * p.lse_head_stride + s.q0 + i : nullptr;
    const int64_t row = (static_cast<int64_t>(b) * p.heads_q + h) * p.seqlen_q + i;
    merge_row<T, kD>(p, splits, part_o, part_lse, total_rows, row, orow, lse_out, s_w);
  }
}

}  // namespace ioattn::cuda::decode
