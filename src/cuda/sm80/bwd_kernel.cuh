// Backward kernels of the sm80 path (mma.sync m16n8k16, ldmatrix, cp.async), FA2-style
// (DESIGN.md §1). Four kernels, launched in order on the caller's stream by bwd_sm80.cu:
//
//   bwd_preprocess   D_i = Σ_d dO_id · O_id (fp32, workspace) and, in the atomic mode, zeroes the
//                    fp32 dQ accumulator (workspace).
//   bwd_dkdv         one CTA per (key block of kBlockN keys, kv head, batch). Holds K_j, V_j in
//                    shared memory and loops over every (query head of the GQA group, query block
//                    that can see key block j); recomputes P from Q, K and the forward's LSE;
//                    accumulates dV += (P∘Z·rp)ᵀ dO and dK += dSᵀ Q in registers. In the atomic mode
//                    it also adds dS K into the fp32 dQ accumulator with atomicAdd.
//   bwd_dq           deterministic mode only: one CTA per (query block, query head, batch) loops
//                    over the visible key blocks and accumulates dQ = dS K in registers, in a fixed
//                    order, then writes dq directly. It recomputes S and dP a second time (+40%
//                    FLOPs; measured on H200, bf16, S = 4096: 1.56x the atomic mode's backward
//                    time at d = 64, 1.22x at d = 128, 1.07x at d = 256 with S = 2048), the price of
//                    bitwise repeatability without a workspace of per-key-block dQ slabs (which
//                    would be O(Sk/kBlockN · Sq · d)).
//   bwd_convert_dq   atomic mode only: dq = scale · (fp32 accumulator), in the input dtype.
//
// GQA: the dkdv CTA loops over the query heads of its group itself, so dK/dV are summed in
// registers in a fixed order: deterministic, no atomics, no dK/dV workspace, and K/V are read once
// per group instead of once per query head.
//
// Tiles (Config below): kStepM query rows (dkdv: 128 at d = 32 and at d = 64 without softcap/
// ALiBi/dropout, else 64; dq: 64) × kBlockN keys (128 for d <= 128, else 64) with 8 warps,
// arranged per product as FA2 does where the shapes divide (warp tiles of 32 or 64 rows read each
// B fragment once for two or four m-tiles: bwd_warp.cuh). The score products S = Q Kᵀ and
// dP = dO Vᵀ (kStepM × kBlockN): 2 × 4 warps of 32 × 32 (64 rows) or 64 × 32 (128 rows) at 128
// keys, 4 × 2 of 16 × 32 at 64. dV, dK
// (kBlockN × d): 32 keys × the d columns of a warp column (4 × 2 warps at 128 keys, 2 × 4 at 64),
// or 16 keys (kBlockN/16 × the rest) where d does not split into those columns in 16-column pairs
// (d = 160, 224). dQ (kStepM × d): 16-row warp tiles, 4 × 2 of 16 × d/2 (64 rows) or 8 × 1 of
// 16 × d (128 rows). Shared tiles are the row-major SmemTiles of common/tile.cuh (conflict-free
// ldmatrix; padded rows up to d = 128, XOR-swizzled above: sm80_bwd_layout in tile_layout.h).
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>

#include "core/params.h"
#include "cuda/common/mma.cuh"
#include "cuda/common/score.cuh"
#include "cuda/common/seq.cuh"
#include "cuda/common/softmax.cuh"
#include "cuda/common/tile.cuh"
#include "cuda/sm80/bwd_run.cuh"
#include "cuda/sm80/bwd_warp.cuh"
#include "launch.h"

namespace ioattn::cuda::sm80::bwd {

// ---- Tile configuration ----------------------------------------------------------------------
constexpr int kBlockM = 64;  // query rows per block of preprocess, convert, dq (dkdv: step_m_for)
constexpr int kWarps = 8;    // warp grids per product: see Config
constexpr int kThreads = kWarps * 32;
constexpr int kSmemLimitSm80 = 163 * 1024;  // opt-in maximum per CTA, A100
constexpr int kSmemLimitSm90 = 227 * 1024;  // opt-in maximum per CTA, H100/H200

// Keys per dkdv CTA. The dK + dV accumulators take 2 · kBlockN · d fp32 over 256 threads: 128 keys
// at d = 64 is 64 regs/thread (and S + dP another 64), so the wider block (fewer Q/dO reloads per
// key, fewer barriers per FLOP) fits. At d = 128 it is 128 + 64 regs, FA2's 64 × 128 block: with
// softcap/ALiBi/dropout compiled out (kMods = false) ptxas fits it in 255 registers with a 12-byte
// spill (56 bytes with them in; sm_90a; loop invariants, reloaded once per query block), and it
// halves, per FLOP, the dQ atomics (the backward's largest L2 traffic), the Q/dO reloads and the
// barriers, and lowers ldmatrix per mma (S, dP: 0.75 -> 0.5; dK, dV: 0.625 -> 0.375 with Config's
// warp grids). One line to revert: `head_dim <= 64`. At d = 256 even 64 keys is 128 + 32 regs, so
// d > 128 uses 64.
constexpr int block_n_for(int head_dim) { return head_dim <= 128 ? 128 : 64; }

// The kWarps warps over one (kRows × kCols) product: kWarpsM along rows × kWarpsN along columns,
// each warp a tile of kMT 16-row m-tiles × kNT 8-column tiles (bwd_warp.cuh), whose ldmatrix.x4
// per mma is (kMT + kNT/2) / (kMT · kNT). kFits: the grid covers the product exactly, and kNT is
// even (B fragments are loaded in pairs of 8-column tiles).
template <int kRows, int kCols, int kWarpsM_>
struct WarpGrid {
  static constexpr int kWarpsM = kWarpsM_;
  static constexpr int kWarpsN = kWarps / kWarpsM;
  static constexpr int kMT = kRows / (16 * kWarpsM);
  static constexpr int kNT = kCols / (8 * kWarpsN);
  static constexpr bool kFits =
      kWarps % kWarpsM == 0 && kRows % (16 * kWarpsM) == 0 && kCols % (16 * kWarpsN) == 0;
  // First row / column of warp `warp`'s tile: warps are numbered along rows first.
  static __device__ __forceinline__ int row0(int warp) { return (warp % kWarpsM) * 16 * kMT; }
  static __device__ __forceinline__ int col0(int warp) { return (warp / kWarpsM) * 8 * kNT; }
};

// Query rows per dkdv iteration (kMods: the instantiation with softcap/ALiBi/dropout). 128 where
// the S and dP accumulators of a 128 × kBlockN step (2 · 128 · 128 fp32 over 256 threads: 128
// regs/thread) fit next to dK + dV (2 · kBlockN · d fp32: d regs/thread) in 255 registers, FA2's
// d = 64 backward block (kBlockM = kBlockN = 128, 8 warps). It halves, per FLOP, the iteration's
// fixed costs (two barriers, the LSE/D loads, the cp.async set-up, loop and address arithmetic)
// and lowers ldmatrix per mma of S and dP (warp tiles 64 × 32: 0.5 -> 0.375). d = 64 without the
// mods: 254-255 registers, no spill (ptxas, sm_80 and sm_90a); with them (Philox state, softcap's
// score) 244-252 bytes of spill stores, so that instantiation keeps 64 rows; d = 32 fits both.
// Everything else (preprocess, convert, the deterministic dq kernel, the sm90 backward, the
// workspace) stays on kBlockM = 64 rows: the dkdv kernel's query blocks are only its loop steps.
constexpr int step_m_for(int head_dim, bool mods) { return head_dim <= (mods ? 32 : 64) ? 128 : kBlockM; }

// Tiles and warp grids of one (kRows query rows × kBlockN keys) step: the dkdv kernel's
// (kRows = step_m_for) and the dq kernel's (kRows = kBlockM).
template <int kHeadDim, int kRows_>
struct StepShape {
  static constexpr int kRows = kRows_;
  static constexpr int kBlockN = block_n_for(kHeadDim);
  static constexpr SmemLayout kLayout = sm80_bwd_layout(kHeadDim);  // shared tiles (tile_layout.h)
  using TileQ = SmemTile<kRows, kHeadDim, kLayout>;    // Q, dO
  using TileK = SmemTile<kBlockN, kHeadDim, kLayout>;  // K, V
  using TileS = SmemTile<kRows, kBlockN, kLayout>;     // P, dS
  // Warp grids (8 warps), FA2's where they divide. The accumulators per thread are fixed by the
  // product's size; the warp tile's shape sets the shared-memory reads per mma (WarpGrid).
  // S = Q Kᵀ, dP = dO Vᵀ (kRows × kBlockN): 128 keys 2 × 4 warps (64 rows: 32 × 32, 0.5 ldmatrix
  // per mma, 4 × 2 of 16 × 64 read 0.625; 128 rows: 64 × 32, 0.375, FA2's d = 64 AtomLayoutMSdP);
  // 64 keys 4 × 2 of 16 × 32 (0.75, as 2 × 4 of 32 × 16 would).
  using GridS = WarpGrid<kRows, kBlockN, kBlockN == 128 ? 2 : 4>;
  // dQ (kRows × d), both modes: one 16-row m-tile per warp (warp_gemm_ab_atomic works on one),
  // kRows/16 × the rest: 64 rows 4 × 2 of 16 × d/2, 128 rows 8 × 1 of 16 × d.
  using GridDQ = WarpGrid<kRows, kHeadDim, (kRows / 16 < kWarps ? kRows / 16 : kWarps)>;
  static_assert(GridS::kFits && GridDQ::kFits && GridDQ::kMT == 1, "every warp grid must cover its product");
};

// Shared memory per head dim. dkdv: K, V (kBlockN rows) + stages × (Q, dO) (kStepM rows) + P, dS
// (kStepM × kBlockN) + stages × (LSE, D) rows. Two Q/dO stages (the next query block loads while
// this one computes) fit every head dim on sm_90 (d = 256: 217 KiB); on sm_80 (163 KiB), the
// 128-row d = 64 step and d >= 128 fall back to one stage (run_bwd asks the device). dq
// (deterministic mode, 64-row blocks): Q, dO, K, V + dS.
//   d    kStepM      kBlockN   dkdv 1 stage   dkdv 2 stages   dq
//   32     128         128       109.0 KiB      130.0 KiB      47.5 KiB
//   64     128 plain   128       141.0 KiB      178.0 KiB      71.5 KiB
//   64      64 mods    128        88.5 KiB      107.0 KiB
//   96      64         128       112.5 KiB      139.0 KiB      95.5 KiB
//   128     64         128       136.5 KiB      171.0 KiB     119.5 KiB
//   192     64          64       118.5 KiB      169.0 KiB     109.5 KiB
//   256     64          64       150.5 KiB      217.0 KiB     141.5 KiB
template <int kHeadDim>
struct Config {
  static_assert(kHeadDim % 32 == 0 && kHeadDim <= 256,
                "bwd splits d into two warp columns of 16-column mma steps: d % 32 == 0, d <= 256");
  static constexpr int kBlockN = block_n_for(kHeadDim);
  template <bool kMods>
  using Dkdv = StepShape<kHeadDim, step_m_for(kHeadDim, kMods)>;  // the dkdv kernel's steps
  using Dq = StepShape<kHeadDim, kBlockM>;                        // the dq kernel's blocks
  using TileK = typename Dq::TileK;
  // dK, dV (kBlockN keys × d): 32-key warp tiles, kBlockN/32 × the rest (128 keys: 4 × 2, d = 128
  // 32 × 64, 0.375 ldmatrix per mma; 64 keys: 2 × 4, d = 256 32 × 64) where d splits into those
  // warp columns in 16-column pairs; otherwise (d = 160, 224: 5 or 7 8-column tiles per column)
  // 16-key tiles, kBlockN/16 × the rest (d = 160: 4 × 2 of 16 × 80).
  using GridKV32 = WarpGrid<kBlockN, kHeadDim, kBlockN / 32>;
  using GridKV = std::conditional_t<GridKV32::kFits, GridKV32, WarpGrid<kBlockN, kHeadDim, kBlockN / 16>>;
  static_assert(GridKV::kFits, "every warp grid must cover its product");

  template <bool kMods>
  static constexpr int smem_dkdv(int stages) {
    using Step = Dkdv<kMods>;
    return 2 * TileK::kBytes + stages * 2 * Step::TileQ::kBytes + 2 * Step::TileS::kBytes +
           stages * 2 * Step::kRows * 4;
  }
  static constexpr int kSmemDq =
      2 * Dq::TileQ::kBytes + 2 * TileK::kBytes + Dq::TileS::kBytes + 2 * kBlockM * 4;
  static_assert(smem_dkdv<false>(1) <= kSmemLimitSm80 && smem_dkdv<true>(1) <= kSmemLimitSm80,
                "one-stage dkdv must fit an sm_80 CTA");
  static_assert(smem_dkdv<false>(2) <= kSmemLimitSm90 && smem_dkdv<true>(2) <= kSmemLimitSm90,
                "two-stage dkdv must fit an sm_90 CTA");
  static_assert(kSmemDq <= kSmemLimitSm80, "dq must fit an sm_80 CTA");
};

// ---- Workspace (fp32) ------------------------------------------------------------------------
// D (B, Hq, Sq) at offset 0, then, in the atomic mode, the dQ accumulator (B, Hq, Sq, d_pad) at
// a 256-byte boundary, then the sm90 backward's row statistics (offsets: bwd_run.cuh). Sq is
// seqlen_q (the maximum in varlen mode): sequence b uses rows [0, sq_b).
__host__ __device__ __forceinline__ int64_t row_index(const Params& p, int b, int h, int i) {
  return (static_cast<int64_t>(b) * p.heads_q + h) * p.seqlen_q + i;
}

// First row of (b, h) in a strided tensor.
template <class T>
__device__ __forceinline__ T* head_base(T* ptr, int64_t batch_stride, int64_t row_stride, int64_t head_stride,
                                        int b, int h, int64_t row0) {
  return ptr + b * batch_stride + h * head_stride + row0 * row_stride;
}

// LSE in log2 units, +inf for rows that see no key and rows past the sequence (so that
// exp2(x - lse) = 0 for them instead of exp2(+inf)), and D, for query rows [m0, m0 + kRows) of
// (b, h) (kRows: kBlockM, or the dkdv kernel's step). Split in two so that the dkdv kernel can
// issue the global loads (fetch, into registers of threads < kRows: one row each) early and write
// shared memory (store) a whole block of products later, instead of stalling warps on the load
// latency right before the score products. The values stay raw in registers (LSE -inf / D 0 stand
// for rows past the sequence): any arithmetic on them would wait for the load where it is placed.
struct RowStats {
  float lse, d;
};
template <int kRows = kBlockM>
__device__ __forceinline__ RowStats fetch_row_stats(const Params& p, const float* dsum, const SeqBounds& s, int b,
                                                    int h, int m0) {
  static_assert(kThreads >= kRows, "one row of statistics per thread");
  RowStats st{-INFINITY, 0.f};
  const int i = m0 + static_cast<int>(threadIdx.x);
  if (threadIdx.x < kRows && i < s.sq) {
    st.lse = p.lse[b * p.lse_batch_stride + h * p.lse_head_stride + s.q_row0 + i];
    st.d = dsum[row_index(p, b, h, i)];
  }
  return st;
}
template <int kRows = kBlockM>
__device__ __forceinline__ void store_row_stats(float* s_lse, float* s_dsum, const RowStats& st) {
  if (threadIdx.x < kRows) {
    s_lse[threadIdx.x] = st.lse == -INFINITY ? INFINITY : st.lse * kLog2e;
    s_dsum[threadIdx.x] = st.d;
  }
}
__device__ __forceinline__ void load_row_stats(float* s_lse, float* s_dsum, const Params& p, const float* dsum,
                                               const SeqBounds& s, int b, int h, int m0) {
  store_row_stats(s_lse, s_dsum, fetch_row_stats(p, dsum, s, b, h, m0));
}

// ---- Visible ranges (bottom-right aligned masks) ---------------------------------------------
// Query blocks [*m_begin, *m_end) of block_m rows (this kernel's kBlockM unless given: the sm90
// backward's differ) holding a row that sees a key of [n0, n0 + kBlockN).
// Key j is seen by rows j - shift - right <= i <= j - shift + left (shift = sk - sq).
__device__ __forceinline__ void query_blocks_for_keys(const Params& p, const SeqBounds& s, int n0, int kBlockN,
                                                      int* m_begin, int* m_end, int block_m = kBlockM) {
  const int shift = s.sk - s.sq;
  const int n_last = min(n0 + kBlockN, s.sk) - 1;
  const int i_lo = p.window_right < 0 ? 0 : max(n0 - shift - p.window_right, 0);
  const int i_hi = p.window_left < 0 ? s.sq - 1 : min(n_last - shift + p.window_left, s.sq - 1);
  *m_begin = *m_end = 0;
  if (s.sq > 0 && n_last >= n0 && i_lo <= i_hi) {
    *m_begin = i_lo / block_m;
    *m_end = i_hi / block_m + 1;
  }
}

// Key blocks [*n_begin, *n_end) holding a key seen by a row of [m0, m0 + kBlockM).
__device__ __forceinline__ void key_blocks_for_queries(const Params& p, const SeqBounds& s, int m0, int kBlockN,
                                                       int* n_begin, int* n_end) {
  const WindowMask mask{p.window_left, p.window_right, s.sk - s.sq};
  const int m_last = min(m0 + kBlockM, s.sq) - 1;
  const int j_lo = mask.first_key(m0);
  const int j_hi = mask.end_key(m_last, s.sk) - 1;
  *n_begin = *n_end = 0;
  if (m_last >= m0 && s.sk > 0 && j_lo <= j_hi) {
    *n_begin = j_lo / kBlockN;
    *n_end = j_hi / kBlockN + 1;
  }
}

// ---- P and dS of one step (Shape: a StepShape, kRows × kBlockN) -----------------------------
// For the warp's tile of Shape::GridS (kMT 16-row m-tiles × kNT 8-key tiles): S = Q Kᵀ and
// dP = dO Vᵀ on tensor cores, then
//   P  = exp2(x − LSE·log2e) with x the transformed score (score.cuh: scale, softcap, ALiBi, mask),
//   dS = P ∘ (dP∘Z·rp − D) ∘ (1 − tanh²(·) under softcap),
// stored as T to s_ds, and P∘Z·rp to s_p (skipped when s_p is null: the dq kernel needs only dS).
// m0, n0: sequence positions of the block's first row and key. The element-wise part runs per
// m-tile, on the 16-row slabs that ScoreMod and Dropout take, with that slab's first sequence row.
// kMods = false (calls without softcap, ALiBi and dropout, checked by run_bwd) compiles those out:
// fewer instructions in the element-wise part and fewer live registers. Its scores stay raw and
// the scale is folded into the exponent, exp2(fma(s, scale·log2e, −LSE·log2e)): one FFMA per
// element instead of FMUL + FADD. With kMods the scores are in log2 units (score.cuh) and the
// multiplier is 1, where fma(x, 1, −lse) is exactly x − lse: unchanged from before.
template <class Shape, bool kMods, class T>
__device__ __forceinline__ void scores_and_ds(const T* sQ, const T* sK, const T* sdO, const T* sV,
                                              const float* s_lse, const float* s_dsum, T* s_p, T* s_ds,
                                              const Params& p, const ScoreMod& mod, const Dropout& drop, int m0,
                                              int n0, int m_last) {
  using TileQ = typename Shape::TileQ;
  using TileK = typename Shape::TileK;
  using TileS = typename Shape::TileS;
  using Grid = typename Shape::GridS;
  constexpr int kMT = Grid::kMT, kNT = Grid::kNT;
  constexpr int kKSteps = TileQ::kCols / 16;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int row_w = Grid::row0(warp), col_w = Grid::col0(warp);
  const int g = lane / 4, t = lane % 4;
  float s[kMT][kNT][4] = {}, dp[kMT][kNT][4] = {};
  warp_gemm_abt<TileQ, TileK, kKSteps>(s, sQ, sK, row_w, col_w, lane);
  warp_gemm_abt<TileQ, TileK, kKSteps>(dp, sdO, sV, row_w, col_w, lane);

  const int j0 = n0 + col_w + 2 * t;  // this thread's first column
  const bool masked = mod.block_needs_mask(m0, m_last, n0, Shape::kBlockN);
  const float x_scale = kMods ? 1.f : mod.scale_log2;
  const bool dropout = kMods && p.dropout_p > 0.f;
  const float rp = dropout ? p.rp_dropout : 1.f;
  // softcap's tanh below, th = x / cap_out + (alibi_log2 / cap_out) |i + shift - j|, by a multiply
  // (an IEEE division per score compiles to a reciprocal, its refinement and a slow-path branch:
  // the softcap backward ran 7-36% slower with it, session 30) and the distance in float as
  // apply_scores takes it (one FADD per score with |.| as an operand modifier, where the integer
  // distance took an IADD, an IABS and an I2F).
  [[maybe_unused]] const float inv_cap_out = kMods && mod.softcap ? 1.f / mod.cap_out : 0.f;
  [[maybe_unused]] const float alibi_th = mod.alibi_log2 * inv_cap_out;
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
    const int i0 = m0 + row_w + 16 * mt + g;  // this thread's first row in m-tile mt
    if (kMods) {
      if (masked) {
        mod.apply<true>(s[mt], i0, j0);
      } else {
        mod.apply<false>(s[mt], i0, j0);
      }
    } else if (masked) {
      mod.apply_mask(s[mt], i0, j0);  // raw scores, −inf where masked
    }
    // One draw of the mask for dP∘Z here and P∘Z after the loop below (the 1/(1-p) factor of dP
    // is applied below, P's at its store)
    Dropout::Keep keep{};
    if (dropout) {
      keep = drop.keep<kNT>(i0, j0);
      Dropout::apply(dp[mt], keep);
    }
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int r = row_w + 16 * mt + g + half * 8;
      const float lse2 = s_lse[r], dsum = s_dsum[r];
      // i + shift - j0 of this row (softcap's ALiBi distance below; exact below 2^24)
      [[maybe_unused]] const float d0 = static_cast<float>(i0 + half * 8 + mod.mask.shift - j0);
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const float x = s[mt][nt][half * 2 + e];
          const float prob = sm_exp2(fmaf(x, x_scale, -lse2));  // softmax.cuh: one MUFU.EX2
          float ds = prob * (dp[mt][nt][half * 2 + e] * rp - dsum);
          if (kMods && mod.softcap) {
            // tanh of the capped score, recovered from x = cap_out · tanh − ALiBi; fmaxf keeps a
            // masked x = −inf from making 0 · (−inf).
            const float th = fmaf(alibi_th, fabsf(d0 - static_cast<float>(nt * 8 + e)), x * inv_cap_out);
            ds *= fmaxf(fmaf(-th, th, 1.f), 0.f);
          }
          s[mt][nt][half * 2 + e] = prob;
          dp[mt][nt][half * 2 + e] = ds;
        }
      }
    }
    if (dropout) Dropout::apply(s[mt], keep);  // P∘Z, for dV (ds above took the undropped P)
  }
  // x[mt][nt][2 half + e] is the block's row row_w + 16 mt + g + 8 half, key col_w + 8 nt + 2t + e,
  // stored times mul. On sm_90 one stmatrix.x4 per 16 x 16 (matrices: rows 0-7 / 8-15 x column
  // tiles nt / nt + 1, lane l giving the address of row l % 8 of matrix l / 8; kNT is even: GridS's
  // kFits): a quarter of the shared-memory instructions of the 4-byte stores, on a kernel whose
  // MIO queue is its bottleneck next to the dQ reductions (bench/notes-sm80.md, session 17).
  auto store = [&](T* dst, const float(&x)[kMT][kNT][4], float mul) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    const int srow = row_w + (lane & 7) + 8 * ((lane >> 3) & 1), scol = col_w + 8 * (lane >> 4);
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
      for (int nt = 0; nt < kNT; nt += 2)
        stmatrix_x4(smem_addr(dst + TileS::offset(srow + 16 * mt, scol + nt * 8)),
                    pack2<T>(x[mt][nt][0] * mul, x[mt][nt][1] * mul), pack2<T>(x[mt][nt][2] * mul, x[mt][nt][3] * mul),
                    pack2<T>(x[mt][nt + 1][0] * mul, x[mt][nt + 1][1] * mul),
                    pack2<T>(x[mt][nt + 1][2] * mul, x[mt][nt + 1][3] * mul));
    }
#else
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int off = TileS::offset(row_w + 16 * mt + g + half * 8, col_w + nt * 8 + 2 * t);
          *reinterpret_cast<uint32_t*>(dst + off) = pack2<T>(x[mt][nt][half * 2] * mul, x[mt][nt][half * 2 + 1] * mul);
        }
      }
    }
#endif
  };
  store(s_ds, dp, 1.f);
  if (s_p == nullptr) return;
  store(s_p, s, rp);
}

// ---- Kernels ---------------------------------------------------------------------------------

// Grid (ceil(Sq / 64), Hq, B), or ceil(stats_rows / 64) with `stats` (the sm90 backward's row
// statistics, see stats_rows; nullptr for the sm80 kernels). kLanes lanes per row, each taking 8
// columns (16 bytes) per step: the largest power of two up to the row's 16-byte chunks (d = 64: 8
// lanes, 4 rows per warp at once; d = 128: 16 lanes, 2 rows), so that every lane loads (with one
// warp per row, 24 of 32 lanes idled at d = 64 and 16 at d = 128). `sched` (the sm90 backward's
// work-item counter, sched_offset; nullptr for the sm80 kernels): zeroed by the first thread, so that
// each launch of the sm90 kernel, which runs after this one on the same stream, hands out its items
// from 0 (graph replays included). `order` (the sm90 backward's dQ order counters in its
// deterministic mode, det_order_offset; nullptr otherwise): block x zeroes those of its 64 rows.
// planes: the accumulators to zero (the sm90 deterministic mode's det_chains, det_plane_rows apart; 1
// otherwise).
template <int kHeadDim, class T>
__global__ void __launch_bounds__(kThreads)
    bwd_preprocess(Params p, float* dsum, float* dq_accum, float* stats, int* sched, int* order, int planes = 1) {
  constexpr int kChunks = kHeadDim / 8;
  constexpr int kLanes = kChunks >= 32 ? 32 : kChunks >= 16 ? 16 : kChunks >= 8 ? 8 : 4;
  constexpr int kRowsPerWarp = 32 / kLanes;
  static_assert(kChunks >= 4 && kBlockM % (kWarps * kRowsPerWarp) == 0, "head dims 32 .. 256");
  if (sched != nullptr && blockIdx.x == 0 && blockIdx.y == 0 && blockIdx.z == 0 && threadIdx.x == 0) *sched = 0;
  const int b = blockIdx.z, h = blockIdx.y;
  static_assert(kBlockM == 64, "one 64-row block of the order counters per block");
  if (order != nullptr && static_cast<int>(threadIdx.x) < 2 * det_chains(p) && static_cast<int>(blockIdx.x) < det_row_blocks(p))
    order[((static_cast<int64_t>(b) * p.heads_q + h) * det_row_blocks(p) + blockIdx.x) * 2 * det_chains(p) + threadIdx.x] = 0;
  const SeqBounds s = seq_bounds(p, b);
  const T* o = head_base(static_cast<const T*>(p.out), p.o_batch_stride, p.o_row_stride, p.o_head_stride, b, h,
                         s.q_row0);
  const T* dout = head_base(static_cast<const T*>(p.dout), p.do_batch_stride, p.do_row_stride, p.do_head_stride,
                            b, h, s.q_row0);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int sub = lane / kLanes, sl = lane % kLanes;  // the warp's row, the lane within it
  const int rows = stats != nullptr ? stats_rows(p) : p.seqlen_q;
  const int64_t plane = planes > 1 ? det_plane_rows(p) * kHeadDim : 0;  // floats between accumulator planes
  for (int r0 = warp * kRowsPerWarp; r0 < kBlockM; r0 += kWarps * kRowsPerWarp) {
    const int i = blockIdx.x * kBlockM + r0 + sub;
    if (blockIdx.x * kBlockM + r0 >= rows) break;  // (warp-uniform: the warp's first row)
    float acc = 0.f;
    if (i < s.sq && i < rows) {
      for (int c = sl; c < kChunks && c * 8 < p.head_dim_v; c += kLanes) {
        acc += dot8(o + i * p.o_row_stride + c * 8, dout + i * p.do_row_stride + c * 8);
      }
    }
#pragma unroll
    for (int off = kLanes / 2; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
    if (i >= rows) continue;
    if (i < p.seqlen_q) {
      if (sl == 0) dsum[row_index(p, b, h, i)] = acc;
      for (int pl = 0; dq_accum != nullptr && pl < planes; ++pl) {
        float4* row = reinterpret_cast<float4*>(dq_accum + pl * plane + row_index(p, b, h, i) * kHeadDim);
        for (int c = sl; c < kHeadDim / 4; c += kLanes) row[c] = make_float4(0.f, 0.f, 0.f, 0.f);
      }
    }
    if (stats != nullptr && sl == 0) {
      // LSE to log2 units; -inf (a row that sees no key) and rows past the sequence to +inf.
      float lse2 = INFINITY;
      if (i < s.sq) {
        const float l = p.lse[b * p.lse_batch_stride + h * p.lse_head_stride + s.q_row0 + i];
        if (l != -INFINITY) lse2 = l * kLog2e;
      }
      const int64_t k = (static_cast<int64_t>(b) * p.heads_q + h) * rows + i;
      stats[k] = lse2;
      stats[stats_plane(p) + k] = acc;  // 0 past the sequence
    }
  }
}

// Grid (ceil(Sk / kBlockN), Hk, B). dK, dV of one key block, summed over the group's query heads.
// kMods: softcap, ALiBi or dropout compiled in (see scores_and_ds).
template <int kHeadDim, class T, bool kMods>
__global__ void __launch_bounds__(kThreads, 1)
    bwd_dkdv(Params p, const float* dsum, float* dq_accum, int stages) {
  using Cfg = Config<kHeadDim>;
  using Shape = typename Cfg::template Dkdv<kMods>;
  using TileQ = typename Shape::TileQ;
  using TileK = typename Shape::TileK;
  using TileS = typename Shape::TileS;
  constexpr int kBlockN = Cfg::kBlockN;
  constexpr int kStepM = Shape::kRows;  // query rows per iteration (this kernel's query blocks)
  extern __shared__ __align__(128) unsigned char smem_raw[];  // 128: swizzled SmemTile rows (tile.cuh)
  const int hk = blockIdx.y, b = blockIdx.z;
  const SeqBounds s = seq_bounds(p, b);
  const int n0 = blockIdx.x * kBlockN;
  if (n0 >= s.sk) return;

  T* sK = reinterpret_cast<T*>(smem_raw);   // [kBlockN][d] (SmemTile)
  T* sV = sK + TileK::kElems;               // [kBlockN][d] (SmemTile)
  T* sQ = sV + TileK::kElems;               // [stages][kStepM][d] (SmemTile)
  T* sdO = sQ + stages * TileQ::kElems;     // [stages][kStepM][d] (SmemTile)
  T* sP = sdO + stages * TileQ::kElems;     // [kStepM][kBlockN] (SmemTile)
  T* sdS = sP + TileS::kElems;              // [kStepM][kBlockN] (SmemTile)
  float* s_lse = reinterpret_cast<float*>(sdS + TileS::kElems);  // [stages][kStepM]
  float* s_dsum = s_lse + stages * kStepM;                        // [stages][kStepM]

  const int tid = threadIdx.x;
  const int rows_k = min(kBlockN, s.sk - n0);
  load_tile_async<TileK, kThreads>(sK, head_base(static_cast<const T*>(p.k), p.k_batch_stride, p.k_row_stride,
                                                 p.k_head_stride, b, hk, s.k_row0 + n0),
                                   p.k_row_stride, rows_k, p.head_dim, tid);
  load_tile_async<TileK, kThreads>(sV, head_base(static_cast<const T*>(p.v), p.v_batch_stride, p.v_row_stride,
                                                 p.v_head_stride, b, hk, s.k_row0 + n0),
                                   p.v_row_stride, rows_k, p.head_dim_v, tid);

  int m_begin, m_end;
  query_blocks_for_keys(p, s, n0, kBlockN, &m_begin, &m_end, kStepM);
  const int n_m = m_end - m_begin;
  const int iters = n_m * p.group;  // (query head of the group) × (query block), head-major

  // An iteration's position: query head h of the group, first query row m0. The loop steps it
  // (query blocks within a head, then the next head) instead of dividing the iteration count by
  // n_m: three integer divisions per iteration were ~3% of the d = 256 kernel's instructions.
  struct StepPos {
    int h, m0;
  };
  auto next_pos = [&](StepPos q) {
    q.m0 += kStepM;
    if (q.m0 >= m_end * kStepM) {
      q.m0 = m_begin * kStepM;
      ++q.h;
    }
    return q;
  };
  // Q and dO of the iteration at `q` into `stage` (cp.async; the caller commits). Its row
  // statistics: fetch_row_stats + store_row_stats (see there).
  auto prefetch_tiles = [&](StepPos q, int stage) {
    const int h = q.h, m0 = q.m0;
    const int rows = min(kStepM, s.sq - m0);
    load_tile_async<TileQ, kThreads>(sQ + stage * TileQ::kElems,
                                     head_base(static_cast<const T*>(p.q), p.q_batch_stride, p.q_row_stride,
                                               p.q_head_stride, b, h, s.q_row0 + m0),
                                     p.q_row_stride, rows, p.head_dim, tid);
    load_tile_async<TileQ, kThreads>(sdO + stage * TileQ::kElems,
                                     head_base(static_cast<const T*>(p.dout), p.do_batch_stride, p.do_row_stride,
                                               p.do_head_stride, b, h, s.q_row0 + m0),
                                     p.do_row_stride, rows, p.head_dim_v, tid);
  };
  auto fetch_stats = [&](StepPos q) { return fetch_row_stats<kStepM>(p, dsum, s, b, q.h, q.m0); };
  StepPos pos{hk * p.group, m_begin * kStepM};  // iteration it's position
  if (iters > 0) {
    prefetch_tiles(pos, 0);
    store_row_stats<kStepM>(s_lse, s_dsum, fetch_stats(pos));
  }
  cp_async_commit();

  const int warp = tid / 32, lane = tid % 32;
  // dK/dV warp tile (Cfg::GridKV): keys kv_row .. + 16 kMT, columns kv_col .. + 8 kNT.
  using GridKV = typename Cfg::GridKV;
  const int kv_row = GridKV::row0(warp), kv_col = GridKV::col0(warp);
  // dQ warp tile (Shape::GridDQ): rows dq_row .. + 16, columns dq_col .. + 8 kNT.
  using GridDQ = typename Shape::GridDQ;
  const int dq_row = GridDQ::row0(warp), dq_col = GridDQ::col0(warp);
  float dk_acc[GridKV::kMT][GridKV::kNT][4] = {}, dv_acc[GridKV::kMT][GridKV::kNT][4] = {};

  for (int it = 0; it < iters; ++it) {
    const int stage = stages == 2 ? (it & 1) : 0;
    cp_async_wait<0>();  // the only group in flight is this block's (and, at it = 0, K and V)
    // (a) this stage's Q, dO, LSE, D are visible to every warp; (b) every warp is done with the
    // previous iteration, so the other stage, P and dS may be overwritten.
    __syncthreads();
    const bool prefetch_next = stages == 2 && it + 1 < iters;
    const StepPos next = next_pos(pos);
    RowStats next_stats{};
    if (prefetch_next) {
      prefetch_tiles(next, stage ^ 1);  // overlaps with this block's five products
      cp_async_commit();
      next_stats = fetch_stats(next);  // in flight during the score products
    }

    const int h = pos.h, m0 = pos.m0;
    const T* q_s = sQ + stage * TileQ::kElems;
    const T* do_s = sdO + stage * TileQ::kElems;
    scores_and_ds<Shape, kMods>(q_s, sK, do_s, sV, s_lse + stage * kStepM, s_dsum + stage * kStepM, sP, sdS, p,
                                ScoreMod::make(p, b, h, s.sq, s.sk), Dropout::make(p, b, h), m0, n0,
                                m0 + kStepM - 1);
    // The other stage's statistics: nobody reads that stage in this iteration, and the barrier at
    // the top of the next one publishes them.
    if (prefetch_next)
      store_row_stats<kStepM>(s_lse + (stage ^ 1) * kStepM, s_dsum + (stage ^ 1) * kStepM, next_stats);
    __syncthreads();  // P and dS are complete

    // dV += (P∘Z·rp)ᵀ dO and dK += dSᵀ Q: (kBlockN keys × d), k = the step's kStepM query rows.
    warp_gemm_atb<TileS, TileQ, kStepM / 16>(dv_acc, sP, do_s, kv_row, kv_col, lane);
    warp_gemm_atb<TileS, TileQ, kStepM / 16>(dk_acc, sdS, q_s, kv_row, kv_col, lane);
    if (dq_accum != nullptr) {
      // dQ(kStepM rows × d) += dS K into the fp32 accumulator, unscaled (bwd_convert_dq scales);
      // rows past the sequence (s.sq - m0 < kStepM) are skipped.
      warp_gemm_ab_atomic<TileS, TileK, kBlockN / 16, GridDQ::kNT / 2>(dq_accum + row_index(p, b, h, m0) * kHeadDim,
                                                                       kHeadDim, s.sq - m0, sdS, sK,
                                                                       dq_row, dq_col, lane);
    }
    if (stages == 1 && it + 1 < iters) {
      __syncthreads();  // one stage: the next block may only land once this one is consumed
      prefetch_tiles(next, 0);
      cp_async_commit();
      store_row_stats<kStepM>(s_lse, s_dsum, fetch_stats(next));
    }
    pos = next;
  }
  cp_async_wait<0>();  // K/V when there was no iteration

  // dK = scale · Σ dSᵀ Q, dV = Σ (P∘Z·rp)ᵀ dO; key rows < sk, columns < head_dim(_v).
  T* dk = head_base(static_cast<T*>(p.dk), p.dk_batch_stride, p.dk_row_stride, p.dk_head_stride, b, hk,
                    s.k_row0 + n0);
  T* dv = head_base(static_cast<T*>(p.dv), p.dv_batch_stride, p.dv_row_stride, p.dv_head_stride, b, hk,
                    s.k_row0 + n0);
  store_acc_tile(dk, p.dk_row_stride, dk_acc, p.scale, kv_row, rows_k, kv_col, p.head_dim, lane);
  store_acc_tile(dv, p.dv_row_stride, dv_acc, 1.f, kv_row, rows_k, kv_col, p.head_dim_v, lane);
}

// Deterministic mode. Grid (ceil(Sq / 64), Hq, B): dQ of one query block, key blocks in order.
template <int kHeadDim, class T, bool kMods>
__global__ void __launch_bounds__(kThreads, 1) bwd_dq(Params p, const float* dsum) {
  using Shape = typename Config<kHeadDim>::Dq;
  using TileQ = typename Shape::TileQ;
  using TileK = typename Shape::TileK;
  using TileS = typename Shape::TileS;
  constexpr int kBlockN = Shape::kBlockN;
  extern __shared__ __align__(128) unsigned char smem_raw[];  // 128: swizzled SmemTile rows (tile.cuh)
  const int h = blockIdx.y, b = blockIdx.z;
  const SeqBounds s = seq_bounds(p, b);
  const int m0 = blockIdx.x * kBlockM;
  if (m0 >= s.sq) return;
  const int hk = h / p.group;

  T* sQ = reinterpret_cast<T*>(smem_raw);
  T* sdO = sQ + TileQ::kElems;
  T* sK = sdO + TileQ::kElems;
  T* sV = sK + TileK::kElems;
  T* sdS = sV + TileK::kElems;
  float* s_lse = reinterpret_cast<float*>(sdS + TileS::kElems);
  float* s_dsum = s_lse + kBlockM;

  const int tid = threadIdx.x;
  const int rows_q = min(kBlockM, s.sq - m0);
  load_tile_async<TileQ, kThreads>(sQ, head_base(static_cast<const T*>(p.q), p.q_batch_stride, p.q_row_stride,
                                                 p.q_head_stride, b, h, s.q_row0 + m0),
                                   p.q_row_stride, rows_q, p.head_dim, tid);
  load_tile_async<TileQ, kThreads>(sdO, head_base(static_cast<const T*>(p.dout), p.do_batch_stride,
                                                  p.do_row_stride, p.do_head_stride, b, h, s.q_row0 + m0),
                                   p.do_row_stride, rows_q, p.head_dim_v, tid);
  load_row_stats(s_lse, s_dsum, p, dsum, s, b, h, m0);
  const T* k = head_base(static_cast<const T*>(p.k), p.k_batch_stride, p.k_row_stride, p.k_head_stride, b, hk,
                         s.k_row0);
  const T* v = head_base(static_cast<const T*>(p.v), p.v_batch_stride, p.v_row_stride, p.v_head_stride, b, hk,
                         s.k_row0);

  int n_begin, n_end;
  key_blocks_for_queries(p, s, m0, kBlockN, &n_begin, &n_end);
  const int warp = tid / 32, lane = tid % 32;
  using GridDQ = typename Shape::GridDQ;
  const int row_w = GridDQ::row0(warp), col_w = GridDQ::col0(warp);
  float dq_acc[GridDQ::kMT][GridDQ::kNT][4] = {};
  const ScoreMod mod = ScoreMod::make(p, b, h, s.sq, s.sk);
  const Dropout drop = Dropout::make(p, b, h);
  for (int n = n_begin; n < n_end; ++n) {
    const int n0 = n * kBlockN;
    __syncthreads();  // the previous block's reads of K, V and dS are done
    load_tile_async<TileK, kThreads>(sK, k + static_cast<int64_t>(n0) * p.k_row_stride, p.k_row_stride,
                                     s.sk - n0, p.head_dim, tid);
    load_tile_async<TileK, kThreads>(sV, v + static_cast<int64_t>(n0) * p.v_row_stride, p.v_row_stride,
                                     s.sk - n0, p.head_dim_v, tid);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    scores_and_ds<Shape, kMods, T>(sQ, sK, sdO, sV, s_lse, s_dsum, nullptr, sdS, p, mod, drop, m0, n0, m0 + kBlockM - 1);
    __syncthreads();
    warp_gemm_ab<TileS, TileK, kBlockN / 16>(dq_acc, sdS, sK, row_w, col_w, lane);
  }
  cp_async_commit();
  cp_async_wait<0>();  // Q/dO when the loop was empty
  T* dq = head_base(static_cast<T*>(p.dq), p.dq_batch_stride, p.dq_row_stride, p.dq_head_stride, b, h,
                    s.q_row0 + m0);
  store_acc_tile(dq, p.dq_row_stride, dq_acc, p.scale, row_w, rows_q, col_w, p.head_dim, lane);
}

// Atomic mode. Grid (ceil(Sq / 64), Hq, B): dq = scale · accumulator, 8 columns per thread-step.
template <int kHeadDim, class T>
// planes: accumulators summed in plane order, det_plane_rows apart (the sm90 deterministic mode's
// det_chains); 1 otherwise.
__global__ void __launch_bounds__(kThreads) bwd_convert_dq(Params p, const float* dq_accum, int planes = 1) {
  const int h = blockIdx.y, b = blockIdx.z;
  const SeqBounds s = seq_bounds(p, b);
  const int chunks = p.head_dim / 8;
  T* dq = head_base(static_cast<T*>(p.dq), p.dq_batch_stride, p.dq_row_stride, p.dq_head_stride, b, h, s.q_row0);
  const int64_t plane = planes > 1 ? det_plane_rows(p) * kHeadDim : 0;  // floats between accumulator planes
  for (int c = threadIdx.x; c < kBlockM * chunks; c += kThreads) {
    const int i = blockIdx.x * kBlockM + c / chunks, col = (c % chunks) * 8;
    if (i >= s.sq) continue;
    const float* src = dq_accum + row_index(p, b, h, i) * kHeadDim + col;
    if (planes == 1) {
      store8_scaled(dq + i * p.dq_row_stride + col, src, p.scale);
    } else {
      float4 lo = make_float4(0.f, 0.f, 0.f, 0.f), hi = lo;
      for (int pl = 0; pl < planes; ++pl) {  // in plane order: the same sums at every call
        const float* x = src + pl * plane;
        const float4 a = *reinterpret_cast<const float4*>(x), c4 = *reinterpret_cast<const float4*>(x + 4);
        lo.x += a.x, lo.y += a.y, lo.z += a.z, lo.w += a.w;
        hi.x += c4.x, hi.y += c4.y, hi.z += c4.z, hi.w += c4.w;
      }
      store8_scaled(dq + i * p.dq_row_stride + col, lo, hi, p.scale);
    }
  }
}

}  // namespace ioattn::cuda::sm80::bwd

namespace ioattn::cuda::sm80 {

template <class T, int kHeadDim>
Status run_bwd(const Params& p, cudaStream_t stream, void* workspace) {
  using namespace bwd;
  using Cfg = Config<kHeadDim>;
  if (p.batch == 0 || p.heads_q == 0) return Status::Ok();
  float* dsum = static_cast<float*>(workspace);
  float* dq_accum = p.deterministic ? nullptr : dsum + dq_accum_offset(p);
  const int m_blocks = (p.seqlen_q + kBlockM - 1) / kBlockM;
  const int n_blocks = (p.seqlen_k + Cfg::kBlockN - 1) / Cfg::kBlockN;

  // Two Q/dO stages where the device's per-CTA shared memory allows (every sm_90 head dim), else
  // one. Attribute queries are host-side and legal during stream capture.
  int device = 0, smem_optin = 0;
  cudaError_t e = cudaGetDevice(&device);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  // Calls without softcap, ALiBi and dropout (the common case) run the instantiation with them
  // compiled out (scores_and_ds); its step, so its shared memory, may differ (step_m_for).
  const bool mods = p.softcap > 0.0f || p.alibi_slopes != nullptr || p.dropout_p > 0.0f;
  auto smem_dkdv_of = [mods](int stages) {
    return mods ? Cfg::template smem_dkdv<true>(stages) : Cfg::template smem_dkdv<false>(stages);
  };
  const int stages = smem_optin >= smem_dkdv_of(2) ? 2 : 1;
  const int smem_dkdv = smem_dkdv_of(stages);
  auto dkdv = mods ? bwd_dkdv<kHeadDim, T, true> : bwd_dkdv<kHeadDim, T, false>;
  auto dq = mods ? bwd_dq<kHeadDim, T, true> : bwd_dq<kHeadDim, T, false>;
  if (e == cudaSuccess) e = cudaFuncSetAttribute(dkdv, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_dkdv);
  if (e == cudaSuccess && p.deterministic)
    e = cudaFuncSetAttribute(dq, cudaFuncAttributeMaxDynamicSharedMemorySize, Cfg::kSmemDq);
  if (e == cudaSuccess && m_blocks > 0) {
    bwd_preprocess<kHeadDim, T><<<dim3(m_blocks, p.heads_q, p.batch), kThreads, 0, stream>>>(p, dsum, dq_accum,
                                                                                               nullptr, nullptr, nullptr);
    e = cudaGetLastError();
  }
  if (e == cudaSuccess && n_blocks > 0) {
    dkdv<<<dim3(n_blocks, p.heads_k, p.batch), kThreads, smem_dkdv, stream>>>(p, dsum, dq_accum, stages);
    e = cudaGetLastError();
  }
  if (e == cudaSuccess && m_blocks > 0) {
    if (p.deterministic) {
      dq<<<dim3(m_blocks, p.heads_q, p.batch), kThreads, Cfg::kSmemDq, stream>>>(p, dsum);
    } else {
      bwd_convert_dq<kHeadDim, T><<<dim3(m_blocks, p.heads_q, p.batch), kThreads, 0, stream>>>(p, dq_accum);
    }
    e = cudaGetLastError();
  }
  if (e != cudaSuccess)
    return Status{ErrorCode::BackendError, std::string("cuda backward (sm80, head dim ") + std::to_string(kHeadDim) +
                                               "): " + cudaGetErrorString(e)};
  return Status::Ok();
}

}  // namespace ioattn::cuda::sm80
