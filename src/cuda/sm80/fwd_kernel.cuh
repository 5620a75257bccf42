// The sm80 forward kernel (FlashAttention-2 scheme on mma.sync), and its launcher run_fwd<T, D>.
//
// One CTA per (query block of block_m rows, query head, batch); each warp owns 16 * m_tiles query
// rows. The tile (fwd_config.h) is chosen per head dim and per kMods: d = 64 plain calls stream
// 128-key K/V tiles, everything else 64-key tiles.
//   prologue   Q tile and the first K tile -> shared memory (cp.async, zero-filled tails)
//   main loop  over the key blocks the mask lets this query block see (WindowMask range):
//                wait K_n; start V_n                        (V_n load overlaps S = Q K_n^T)
//                S = Q K_n^T   mma.m16n8k16, fp32 accumulators in registers
//                scores -> log2 units: scale / softcap / ALiBi; element mask only on boundary blocks
//                online softmax (m, l) in fp32 with exp2 (sm_exp2); rescale O; dropout on P
//                wait V_n; start K_{n+1}                    (K_{n+1} load overlaps O += P V_n)
//                O += P V_n    P converted to 16 bits in registers (C fragment == A fragment)
//   epilogue   O / l (and 1/(1-p) with dropout) -> input dtype, staged through the Q tile for
//              16-byte coalesced stores; LSE = ln(sum) in fp32.
// Fast intrinsics relied on: ex2.approx.ftz (sm_exp2 in core/softmax_state.h, about 2 ulp, results
// below 2^-126 flushed to 0), log2f, and softcap's tanh from ex2 and a reciprocal (softcap_r).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <string>
#include <type_traits>

#include "cuda/common/mma.cuh"
#include "cuda/host_util.h"
#include "cuda/common/seq.cuh"
#include "cuda/common/softmax.cuh"
#include "cuda/common/tile.cuh"
#include "fwd_config.h"

namespace ioattn::cuda::sm80 {

// kMods: the call uses softcap, ALiBi or dropout (fwd_uses_mods). Calls without them (the common
// case) run an instantiation with that code compiled out, which frees the registers for a larger
// key tile at d = 64 and keeps the others spill-free (ptxas numbers: bench/notes-sm80.md).
// kPaired: the head dim's row has a paired tile and the device fits two of its CTAs per SM
// (fwd_paired in fwd_config.h).
template <class T, int kD, bool kMods, bool kPaired>
__global__ void __launch_bounds__(FwdTileFor<kD, kMods, kPaired>::warps * 32, FwdTileFor<kD, kMods, kPaired>::min_ctas)
    fwd_kernel(const Params p) {
  using Cfg = FwdTileFor<kD, kMods, kPaired>;
  constexpr int kBM = Cfg::block_m, kBN = Cfg::block_n, kThreads = Cfg::warps * 32;
  constexpr int kMT = Cfg::m_tiles;  // 16-row tiles per warp
  constexpr int kNT = kBN / 8;       // 8-key tiles of S per m-tile:    S is (16 kMT, kBN) per warp
  constexpr int kDT = kD / 8;        // 8-column tiles of O per m-tile: O is (16 kMT, kD) per warp
  static_assert(kBM == 16 * kMT * Cfg::warps, "each warp owns 16 * m_tiles query rows");
  static_assert(kD % 32 == 0 && kBN % 32 == 0, "tile.cuh's conflict-free layout and 16-wide mma steps");
  using QTile = SmemTile<kBM, kD, Cfg::layout>;   // (block_m, d)
  using KVTile = SmemTile<kBN, kD, Cfg::layout>;  // (block_n, d), K and V alike

  extern __shared__ __align__(128) unsigned char smem_raw[];  // 128: swizzled SmemTile rows (tile.cuh)
  T* sQ = reinterpret_cast<T*>(smem_raw);
  T* sK = sQ + QTile::kElems;
  T* sV = sK + KVTile::kElems;

  // Grid (query block, head, batch), the query block fastest-varying (FA2's order): the CTAs
  // resident at one time are the query blocks of one or two heads, which stream the same K/V tiles,
  // so K/V come from HBM about once per head and then hit in L2. (Head-fastest order put every
  // head's K/V in flight at once: at d = 128, S = 16k that is 128 MB, more than L2.) Indices are
  // plain blockIdx reads (no division): ptxas rematerialises them instead of keeping them live,
  // which a flattened (head, block) index cost 40-50 bytes of spills at d = 128.
  // Query blocks reversed: under a causal mask the last ones see the most keys; start them first
  // so the short ones fill the tail of each head's wave.
  const int h = blockIdx.y, b = blockIdx.z;
  const int m_block = gridDim.x - 1 - blockIdx.x;
  const SeqBounds sb = seq_bounds(p, b);
  const int m0 = m_block * kBM;
  if (m0 >= sb.sq) return;  // beyond this (varlen) sequence: the whole CTA leaves together
  const int m_last = min(m0 + kBM, sb.sq) - 1;

  const ScoreMod mod = ScoreMod::make(p, b, h, sb.sq, sb.sk);
  const int key_begin = mod.mask.first_key(m0);
  const int key_end = mod.mask.end_key(m_last, sb.sk);
  const int n_begin = key_begin / kBN;
  const int n_end = key_end > key_begin ? (key_end + kBN - 1) / kBN : n_begin;

  const int hk = h / p.group;
  const T* gQ = static_cast<const T*>(p.q) + b * p.q_batch_stride + (sb.q_row0 + m0) * p.q_row_stride +
                h * p.q_head_stride;
  const T* gK = static_cast<const T*>(p.k) + b * p.k_batch_stride + sb.k_row0 * p.k_row_stride +
                hk * p.k_head_stride;
  const T* gV = static_cast<const T*>(p.v) + b * p.v_batch_stride + sb.k_row0 * p.v_row_stride +
                hk * p.v_head_stride;

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int warp_row = warp * 16 * kMT;             // first row of this warp in the block
  const int row0 = m0 + warp_row + lane / 4;        // sequence row of c[0], c[1] in m-tile 0
  const int col_in_tile = 2 * (lane % 4);           // key column of c[0] within an 8-key tile

  OnlineSoftmax softmax[kMT];
  constexpr bool kSoftmaxTrees = true;  // row max / sum as trees (softmax.cuh: +3-4% at d = 64 here)
  float o[kMT][kDT][4];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
    softmax[mt].init();
#pragma unroll
    for (int dt = 0; dt < kDT; ++dt) o[mt][dt][0] = o[mt][dt][1] = o[mt][dt][2] = o[mt][dt][3] = 0.0f;
  }

  auto load_k = [&](int n) {
    load_tile_async<KVTile, kThreads>(sK, gK + int64_t(n) * kBN * p.k_row_stride, p.k_row_stride,
                                      sb.sk - n * kBN, p.head_dim, tid);
  };
  auto load_v = [&](int n) {
    load_tile_async<KVTile, kThreads>(sV, gV + int64_t(n) * kBN * p.v_row_stride, p.v_row_stride,
                                      sb.sk - n * kBN, p.head_dim_v, tid);
  };

  if (n_begin < n_end) {
    load_tile_async<QTile, kThreads>(sQ, gQ, p.q_row_stride, sb.sq - m0, p.head_dim, tid);
    load_k(n_begin);
    cp_async_commit();
  }
  const Dropout dropout = Dropout::make(p, b, h);
  const bool has_dropout = p.dropout_p > 0.0f;

  for (int n = n_begin; n < n_end; ++n) {
    cp_async_wait<0>();
    __syncthreads();  // K_n (and Q) visible to all warps; every warp is done with V_{n-1}
    load_v(n);
    cp_async_commit();

    float s[kMT][kNT][4];  // S = Q K_n^T
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt) s[mt][nt][0] = s[mt][nt][1] = s[mt][nt][2] = s[mt][nt][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < kD / 16; ++kk) {
      uint32_t a[kMT][4];
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) load_a_frag<QTile>(a[mt], sQ, warp_row + mt * 16, kk * 16, lane);
#pragma unroll
      for (int np = 0; np < kNT / 2; ++np) {
        uint32_t bk[4];
        load_b_frags_nk<KVTile>(bk, sK, np * 16, kk * 16, lane);
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
          mma_16816<T>(s[mt][2 * np], a[mt], bk[0], bk[1]);
          mma_16816<T>(s[mt][2 * np + 1], a[mt], bk[2], bk[3]);
        }
      }
    }

    const int col0 = n * kBN + col_in_tile;
    const bool boundary = mod.block_needs_mask(m0, m_last, n * kBN, kBN);
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
      const int row = row0 + mt * 16;
      float alpha[2];
      if (kMods) {  // scores to log2 units here (softcap / ALiBi are not linear in the score)
        if (boundary)
          mod.apply<true, true>(s[mt], row, col0);
        else
          mod.apply<false, true>(s[mt], row, col0);
        softmax[mt].update<false, kSoftmaxTrees>(s[mt], alpha);  // s now holds P (undropped: l and LSE use it)
      } else {  // raw scores; the scale is folded into the exponent (one FFMA per element)
        if (boundary) mod.apply_mask(s[mt], row, col0);
        softmax[mt].update<true, kSoftmaxTrees>(s[mt], alpha, mod.scale_log2);
      }
      if (kMods && has_dropout) dropout.apply(s[mt], row, col0);
      // Rescale O only when some row of the warp's m-tile got a new maximum (alpha != 1). Once a
      // row has seen its largest scores (most blocks of a long row) alpha is exactly 1 and the
      // d/2 FMULs per row pair (2 per score element at d = 128, 4 at d = 256) are skipped; the
      // skip is exact (x * 1 == x). The vote keeps the branch warp-uniform.
      if (__any_sync(0xffffffffu, alpha[0] != 1.0f || alpha[1] != 1.0f)) {
#pragma unroll
        for (int dt = 0; dt < kDT; ++dt) {
          o[mt][dt][0] *= alpha[0]; o[mt][dt][1] *= alpha[0];
          o[mt][dt][2] *= alpha[1]; o[mt][dt][3] *= alpha[1];
        }
      }
    }

    // P to 16 bits now, all of it (FA2 does the same): the fp32 scores die here, so the O += P V
    // product below holds O, P packed (half the registers of S) and one V fragment.
    uint32_t pk[kMT][kBN / 16][4];
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) pack_a_fragments<T>(s[mt], pk[mt]);

    cp_async_wait<0>();
    __syncthreads();  // V_n visible; every warp is done reading K_n
    if (n + 1 < n_end) {
      load_k(n + 1);
      cp_async_commit();
    }

#pragma unroll
    for (int kk = 0; kk < kBN / 16; ++kk) {  // O += P V_n, 16 keys per step
#pragma unroll
      for (int dp = 0; dp < kDT / 2; ++dp) {
        uint32_t bv[4];
        load_b_frags_kn<KVTile>(bv, sV, kk * 16, dp * 16, lane);
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
          mma_16816<T>(o[mt][2 * dp], pk[mt][kk], bv[0], bv[1]);
          mma_16816<T>(o[mt][2 * dp + 1], pk[mt][kk], bv[2], bv[3]);
        }
      }
    }
  }

  // Epilogue: O / l -> input dtype, staged through sQ (every warp is done with sQ / sV after the
  // barrier) so the global stores are whole 16-byte row chunks.
  __syncthreads();
  T* sO = sQ;  // (block_m, d)
  float lse[kMT][2];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
    float o_scale[2];
    softmax[mt].finalize(kMods && has_dropout ? p.rp_dropout : 1.0f, o_scale, lse[mt]);
    const int r = warp_row + mt * 16 + lane / 4;
#pragma unroll
    for (int dt = 0; dt < kDT; ++dt) {
      const int c = dt * 8 + col_in_tile;
      *reinterpret_cast<uint32_t*>(sO + QTile::offset(r, c)) =
          pack2<T>(o[mt][dt][0] * o_scale[0], o[mt][dt][1] * o_scale[0]);
      *reinterpret_cast<uint32_t*>(sO + QTile::offset(r + 8, c)) =
          pack2<T>(o[mt][dt][2] * o_scale[1], o[mt][dt][3] * o_scale[1]);
    }
  }
  __syncthreads();
  // Plain calls read the sequence bounds once more (varlen: two loads of cu_seqlens, L2 hits)
  // rather than keep the 64-bit row offset live through the main loop: at d = 64 with 128-key
  // tiles that value was the kernel's one spill (stored before the loop, reloaded here). The kMods
  // kernels keep sb: for them the re-read only moves spills around (d = 256: 4 B from sm_80 into
  // sm_90a's main loop; bench/notes-sm80.md).
  const SeqBounds sbo = kMods ? sb : seq_bounds(p, b);
  T* gO = static_cast<T*>(p.out) + b * p.o_batch_stride + (sbo.q_row0 + m0) * p.o_row_stride + h * p.o_head_stride;
  const int rows_valid = sbo.sq - m0;
  constexpr int kChunksPerRow = kD / 8;
#pragma unroll
  for (int c = tid; c < kBM * kChunksPerRow; c += kThreads) {
    const int r = c / kChunksPerRow, col = (c % kChunksPerRow) * 8;
    if (r < rows_valid && col < p.head_dim_v)
      *reinterpret_cast<uint4*>(gO + r * p.o_row_stride + col) =
          *reinterpret_cast<const uint4*>(sO + QTile::offset(r, col));
  }
  if (p.lse != nullptr && lane % 4 == 0) {
    float* gL = p.lse + b * p.lse_batch_stride + h * p.lse_head_stride + sbo.q_row0;
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
      const int row = row0 + mt * 16;
      if (row < sbo.sq) gL[row] = lse[mt][0];
      if (row + 8 < sbo.sq) gL[row + 8] = lse[mt][1];
    }
  }
}

template <class T, int kD, bool kMods, bool kPaired>
cudaError_t launch_fwd_kernel(const Params& p, cudaStream_t stream) {
  using Cfg = FwdTileFor<kD, kMods, kPaired>;
  constexpr int kSmem = fwd_smem_bytes(kD, kMods, kPaired);
  const int m_blocks = (p.seqlen_q + Cfg::block_m - 1) / Cfg::block_m;  // varlen: the longest sequence
  auto kernel = fwd_kernel<T, kD, kMods, kPaired>;
  static std::atomic<uint64_t> configured{0};  // devices whose shared-memory opt-in is made
  cudaError_t e = allow_dynamic_smem(reinterpret_cast<const void*>(kernel), kSmem, configured);
  if (e != cudaSuccess) return e;
  kernel<<<dim3(m_blocks, p.heads_q, p.batch), Cfg::warps * 32, kSmem, stream>>>(p);
  return cudaGetLastError();
}

template <class T, int kD>
Status run_fwd(const Params& p, cudaStream_t stream) {
  if (p.seqlen_q <= 0 || p.batch == 0) return Status::Ok();  // nothing to write
  // Heads are grid y (65535 at most, as in the backward's grids); select() bounds batch (grid z)
  // and the query-block count.
  if (p.heads_q > 65535)
    return Status{ErrorCode::Unsupported, "q: " + std::to_string(p.heads_q) +
                                              " heads exceed the CUDA kernels' 65535 (grid y)"};
  const bool mods = fwd_uses_mods(p);
  auto launch = [&](auto paired) {
    constexpr bool kPaired = decltype(paired)::value;
    return mods ? launch_fwd_kernel<T, kD, true, kPaired>(p, stream) : launch_fwd_kernel<T, kD, false, kPaired>(p, stream);
  };
  cudaError_t e;
  if constexpr (fwd_tile_row(kD).paired.block_m > 0)  // instantiated only where a row has one
    e = fwd_paired(kD, p.device_index) ? launch(std::true_type{}) : launch(std::false_type{});
  else
    e = launch(std::false_type{});
  if (e != cudaSuccess)
    return Status{ErrorCode::BackendError, std::string("cuda forward (sm80, head dim ") + std::to_string(kD) +
                                               "): " + cudaGetErrorString(e)};
  return Status::Ok();
}

}  // namespace ioattn::cuda::sm80
