// Warp-level pieces of the backward kernels that the forward does not need: the three product
// shapes of the backward pass on padded shared tiles (tile.cuh), and fragment <-> global moves.
//
// A warp owns kMT 16-row m-tiles × kNT 8-column tiles of the output (the warp grids per product
// are in bwd_kernel.cuh's Config); accumulators are acc[mt][nt][4] in the mma C layout (mma.cuh):
// acc[mt][nt][0..1] = (row 16mt + g, cols 8nt + 2t, +1), acc[mt][nt][2..3] = row 16mt + g + 8.
//   abt:  C += A Bᵀ, A stored [m][k], B stored [n][k]   (S = Q Kᵀ, dP = dO Vᵀ)
//   atb:  C += Aᵀ B, A stored [k][m], B stored [k][n]   (dV = Pᵀ dO, dK = dSᵀ Q)
//   ab:   C += A B,  A stored [m][k], B stored [k][n]   (dQ = dS K)
#pragma once

#include <cstdint>

#include "cuda/common/mma.cuh"
#include "cuda/common/tile.cuh"

namespace ioattn::cuda::sm80::bwd {

// A fragment (16x16, m × k) of a tile stored k-major ([k][m], e.g. P stored [query][key] read as
// Pᵀ): ldmatrix.trans of the four 8x8 blocks (m 0-7 | 8-15) × (k 0-7 | 8-15) in a[0..3] order.
template <class Tile, class T>
__device__ __forceinline__ void load_a_frag_trans(uint32_t (&a)[4], const T* smem, int k0, int m0, int lane) {
  const int mat = lane / 8;
  ldmatrix_x4_trans(a, Tile::frag_addr(smem, k0 + (mat / 2) * 8 + lane % 8, m0, (mat % 2) * 8));
}

// C(16 kMT × 8 kNT) += Σ_ks A_ks B_ks, the loop the three shapes share. Per 16-deep k-step the
// warp loads its kMT A fragments, then each B fragment pair (8-column tiles 2np, 2np + 1) once
// for all kMT m-tiles: (kMT + kNT/2) / (kMT · kNT) = 1/kNT + 1/(2 kMT) ldmatrix.x4 per mma, so at
// a fixed accumulator count a squarer warp tile reads less shared memory (16 × 128: 0.56;
// 32 × 64: 0.375; FA2's warp layouts, and the sm80 forward's m_tiles). load_a(a, mt, ks) and
// load_b(b, np, ks) fetch the fragments of m-tile mt / column pair np at k-step ks.
template <class T, int kKSteps, int kMT, int kNT, class LoadA, class LoadB>
__device__ __forceinline__ void warp_gemm(float (&acc)[kMT][kNT][4], const LoadA& load_a, const LoadB& load_b) {
  static_assert(kNT % 2 == 0, "B fragments come in pairs of 8-column tiles");
#pragma unroll
  for (int ks = 0; ks < kKSteps; ++ks) {
    uint32_t a[kMT][4];
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) load_a(a[mt], mt, ks);
#pragma unroll
    for (int np = 0; np < kNT / 2; ++np) {
      uint32_t b[4];
      load_b(b, np, ks);
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
        mma_16816<T>(acc[mt][2 * np], a[mt], b[0], b[1]);
        mma_16816<T>(acc[mt][2 * np + 1], a[mt], b[2], b[3]);
      }
    }
  }
}

// C(16 kMT × 8 kNT) += A[m0.., k] · B[n0.., k]ᵀ over k in [0, 16 kKSteps).
template <class TileA, class TileB, int kKSteps, int kMT, int kNT, class T>
__device__ __forceinline__ void warp_gemm_abt(float (&acc)[kMT][kNT][4], const T* sA, const T* sB, int m0, int n0,
                                              int lane) {
  warp_gemm<T, kKSteps>(
      acc, [&](uint32_t(&a)[4], int mt, int ks) { load_a_frag<TileA>(a, sA, m0 + 16 * mt, 16 * ks, lane); },
      [&](uint32_t(&b)[4], int np, int ks) { load_b_frags_nk<TileB>(b, sB, n0 + 16 * np, 16 * ks, lane); });
}

// C(16 kMT × 8 kNT) += A[k, m0..]ᵀ · B[k, n0..] over k in [0, 16 kKSteps).
template <class TileA, class TileB, int kKSteps, int kMT, int kNT, class T>
__device__ __forceinline__ void warp_gemm_atb(float (&acc)[kMT][kNT][4], const T* sA, const T* sB, int m0, int n0,
                                              int lane) {
  warp_gemm<T, kKSteps>(
      acc, [&](uint32_t(&a)[4], int mt, int ks) { load_a_frag_trans<TileA>(a, sA, 16 * ks, m0 + 16 * mt, lane); },
      [&](uint32_t(&b)[4], int np, int ks) { load_b_frags_kn<TileB>(b, sB, 16 * ks, n0 + 16 * np, lane); });
}

// C(16 kMT × 8 kNT) += A[m0.., k] · B[k, n0..] over k in [0, 16 kKSteps).
template <class TileA, class TileB, int kKSteps, int kMT, int kNT, class T>
__device__ __forceinline__ void warp_gemm_ab(float (&acc)[kMT][kNT][4], const T* sA, const T* sB, int m0, int n0,
                                             int lane) {
  warp_gemm<T, kKSteps>(
      acc, [&](uint32_t(&a)[4], int mt, int ks) { load_a_frag<TileA>(a, sA, m0 + 16 * mt, 16 * ks, lane); },
      [&](uint32_t(&b)[4], int np, int ks) { load_b_frags_kn<TileB>(b, sB, 16 * ks, n0 + 16 * np, lane); });
}

// d[0] += x, d[1] += y (fp32, global) where `valid`. sm_90 has a vector reduction
// (red.global.add.v2.f32, what CUDA's float2 atomicAdd compiles to): one instruction and one L2
// request per pair instead of two. d is 8-byte aligned: the dQ accumulator rows start at multiples
// of d_pad floats from a 256-byte offset into the workspace (bwd_preprocess already stores float4 to
// them, so the workspace is 16-byte aligned), and columns are even. sm_80 uses two scalar
// reductions. Predicated in PTX (d is not dereferenced when !valid); ptxas still puts each
// reduction and its address arithmetic in a BSSY / BRA / BSYNC region (SASS, session 17), and that
// spacing is worth keeping: a branch-free form with immediate offsets issued the REDGs in bursts and
// ran 5-6% slower at d = 64 / 128 (bench/notes-sm80.md, session 17).
__device__ __forceinline__ void atomic_add2_if(bool valid, float* d, float x, float y) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile(
      "{\n .reg .pred p;\n setp.ne.b32 p, %3, 0;\n @p red.global.add.v2.f32 [%0], {%1, %2};\n}\n" ::"l"(d),
      "f"(x), "f"(y), "r"(static_cast<int>(valid))
      : "memory");
#else
  asm volatile(
      "{\n .reg .pred p;\n setp.ne.b32 p, %3, 0;\n @p red.global.add.f32 [%0], %1;\n"
      " @p red.global.add.f32 [%0+4], %2;\n}\n" ::"l"(d),
      "f"(x), "f"(y), "r"(static_cast<int>(valid))
      : "memory");
#endif
}

// dst[m0.., n0..] += A[m0.., k] · B[k, n0..] (fp32, reductions), 16 columns at a time so that only
// 8 accumulators are live: the dQ update of the atomic mode. Rows >= rows_valid are skipped; every
// column is written (dst's rows are the accumulator's kHeadDim columns wide; columns past the call's
// head dim are never read back: bwd_convert_dq). The A fragments (16 × 16 kKSteps) are loaded once
// for all columns.
template <class TileA, class TileB, int kKSteps, int kNPairs, class T>
__device__ __forceinline__ void warp_gemm_ab_atomic(float* dst, int ld, int rows_valid, const T* sA, const T* sB,
                                                    int m0, int n0, int lane) {
  uint32_t a[kKSteps][4];
#pragma unroll
  for (int ks = 0; ks < kKSteps; ++ks) load_a_frag<TileA>(a[ks], sA, m0, ks * 16, lane);
  const int g = lane / 4, t = lane % 4;
  const bool row_ok[2] = {m0 + g < rows_valid, m0 + g + 8 < rows_valid};
#pragma unroll
  for (int np = 0; np < kNPairs; ++np) {
    float acc[2][4] = {};
#pragma unroll
    for (int ks = 0; ks < kKSteps; ++ks) {
      uint32_t b[4];
      load_b_frags_kn<TileB>(b, sB, ks * 16, n0 + np * 16, lane);
      mma_16816<T>(acc[0], a[ks], b[0], b[1]);
      mma_16816<T>(acc[1], a[ks], b[2], b[3]);
    }
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
      const int col = n0 + np * 16 + nt * 8 + 2 * t;
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int row = m0 + g + half * 8;
        atomic_add2_if(row_ok[half], dst + static_cast<int64_t>(row) * ld + col, acc[nt][half * 2],
                       acc[nt][half * 2 + 1]);
      }
    }
  }
}

// Store a warp's accumulators, times `scale`, as T to a strided global slab: rows r0 + 16 mt +
// {g, g + 8} (< rows_valid), columns c0 + 8 nt + {2t, 2t + 1} (< cols_valid; cols_valid is a
// multiple of 8, so a pair is either wholly inside or wholly out). One 4-byte store per pair.
template <int kMT, int kNT, class T>
__device__ __forceinline__ void store_acc_tile(T* dst, int64_t row_stride, const float (&acc)[kMT][kNT][4],
                                               float scale, int r0, int rows_valid, int c0, int cols_valid,
                                               int lane) {
  const int g = lane / 4, t = lane % 4;
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt) {
      const int col = c0 + nt * 8 + 2 * t;
      if (col >= cols_valid) continue;
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int row = r0 + 16 * mt + g + half * 8;
        if (row >= rows_valid) continue;
        *reinterpret_cast<uint32_t*>(dst + row * row_stride + col) =
            pack2<T>(acc[mt][nt][half * 2] * scale, acc[mt][nt][half * 2 + 1] * scale);
      }
    }
  }
}

// Σ_k x_k y_k of 8 contiguous 16-bit elements (one 16-byte load of each), in fp32.
template <class T>
__device__ __forceinline__ float dot8(const T* x, const T* y) {
  const uint4 xv = *reinterpret_cast<const uint4*>(x), yv = *reinterpret_cast<const uint4*>(y);
  const T* xe = reinterpret_cast<const T*>(&xv);
  const T* ye = reinterpret_cast<const T*>(&yv);
  float s = 0.f;
#pragma unroll
  for (int k = 0; k < 8; ++k) s += Half2Of<T>::to_float(xe[k]) * Half2Of<T>::to_float(ye[k]);
  return s;
}

// dst[0..8) = T(scale · src[0..8)): two 16-byte fp32 loads, one 16-byte store.
template <class T>
__device__ __forceinline__ void store8_scaled(T* dst, float4 lo, float4 hi, float scale) {
  uint4 out;
  out.x = pack2<T>(lo.x * scale, lo.y * scale);
  out.y = pack2<T>(lo.z * scale, lo.w * scale);
  out.z = pack2<T>(hi.x * scale, hi.y * scale);
  out.w = pack2<T>(hi.z * scale, hi.w * scale);
  *reinterpret_cast<uint4*>(dst) = out;
}
template <class T>
__device__ __forceinline__ void store8_scaled(T* dst, const float* src, float scale) {
  store8_scaled(dst, *reinterpret_cast<const float4*>(src), *reinterpret_cast<const float4*>(src + 4), scale);
}

}  // namespace ioattn::cuda::sm80::bwd
