// Online softmax over key blocks for the two rows a thread holds in mma accumulator fragments
// (rows g and g + 8 of a warp's 16; the 4 threads of a quad share a row). The -inf rules live here
// and only here: a row that has seen no visible key keeps m = -inf and uses 0 as its exponent base,
// so no (-inf) - (-inf) is ever formed; an empty row ends with O = 0 and LSE = -inf, never NaN.
#pragma once

#include "score.cuh"

namespace ioattn::cuda {

// op over t[0 .. n) (t is overwritten; any n): kTree, pairs at distance 1, 2, 4, ... (log2(n)
// dependent steps); else left to right (n - 1 dependent steps).
template <bool kTree, int kN, class Op>
__device__ __forceinline__ float reduce_row(float (&t)[kN], Op op) {
  if constexpr (kTree) {
#pragma unroll
    for (int w = 1; w < kN; w *= 2)
#pragma unroll
      for (int i = 0; i + w < kN; i += 2 * w) t[i] = op(t[i], t[i + w]);
  } else {
#pragma unroll
    for (int i = 1; i < kN; ++i) t[0] = op(t[0], t[i]);
  }
  return t[0];
}

struct OnlineSoftmax {
  float m[2];  // running row maximum, log2 units (quad-uniform)
  float l[2];  // running sum of exp2(x - m): this thread's columns only, summed over the quad at the end

  __device__ __forceinline__ void init() {
    m[0] = m[1] = -INFINITY;
    l[0] = l[1] = 0.0f;
  }

  // x: one key block of scores whose log2-unit value is x * scale -> P = exp2(x * scale - m_new) in
  // place; alpha[r] is the factor the output accumulator of row r must be rescaled by
  // (exp2(m_old - m_new)). kScaled = false: x is already in log2 units (scale unused; callers whose
  // softcap / ALiBi transforms are not linear in the score). kScaled = true: x is the raw score and
  // scale > 0 (validate.cpp: a given softmax_scale is > 0, else 1/sqrt(d)), so the maximum can be
  // taken before scaling (rounding is monotone: max(round(x_i * scale)) == round(max(x_i) * scale),
  // the same m as scaling first), and the scale folds into the exponent: one FFMA per element
  // instead of FMUL + FADD (FA2's trick). Masked scores are -inf in either unit.
  // kTrees: the row's maximum and sum as pairwise trees instead of chains (a shorter dependency
  // path, a few more live registers). Measured (H200, session 13, bench/notes-sm80.md): the sm80
  // forward +3-4% at d = 64, within +-1% at d = 128 / 256; the sm90 forward 1-4% slower, so it
  // keeps the chains.
  template <bool kScaled = false, bool kTrees = false, int kNTiles>
  __device__ __forceinline__ void update(float (&x)[kNTiles][4], float (&alpha)[2], float scale = 1.0f) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float t[kNTiles];
#pragma unroll
      for (int nt = 0; nt < kNTiles; ++nt) t[nt] = fmaxf(x[nt][2 * r], x[nt][2 * r + 1]);
      float mx = reduce_row<kTrees>(t, [](float a, float b) { return fmaxf(a, b); });
      if (!kScaled) mx = fmaxf(mx, m[r]);
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      if (kScaled) mx = fmaxf(m[r], mx * scale);  // to log2 units; -inf * scale stays -inf
      const float base = mx == -INFINITY ? 0.0f : mx;
      // 0 while the row had no key (m = -inf); exactly 1 when the maximum did not move, which
      // lets the caller skip rescaling O (fwd_kernel.cuh) whatever ex2.approx returns for 0.
      alpha[r] = m[r] == base ? 1.0f : sm_exp2(m[r] - base);
      m[r] = mx;
#pragma unroll
      for (int nt = 0; nt < kNTiles; ++nt) {
        if (kScaled) {
          x[nt][2 * r] = sm_exp2(fmaf(x[nt][2 * r], scale, -base));
          x[nt][2 * r + 1] = sm_exp2(fmaf(x[nt][2 * r + 1], scale, -base));
        } else {
          x[nt][2 * r] = sm_exp2(x[nt][2 * r] - base);
          x[nt][2 * r + 1] = sm_exp2(x[nt][2 * r + 1] - base);
        }
        t[nt] = x[nt][2 * r] + x[nt][2 * r + 1];
      }
      l[r] = fmaf(l[r], alpha[r], reduce_row<kTrees>(t, [](float a, float b) { return a + b; }));
    }
  }

  // Row sums over the quad; the output scale (out_scale / l, 0 for a row with no key) and the
  // natural-log LSE (-inf for a row with no key). The reciprocal and log2 are the MUFU
  // approximations (rcp.approx, lg2.approx: relative error ~2^-22 here, since a row that sees a key
  // has l >= 1, its maximum's term being exp2(0)), not the IEEE division and log2f: those are a
  // slow-path branch and a 10-term polynomial per row on the tile's serial epilogue (ncu, sm90
  // d = 64 causal 512: 8% of the consumers' stall samples), for a precision that O's 16-bit
  // rounding (2^-8 / 2^-11) and the LSE's fp32 sum do not keep anyway.
  __device__ __forceinline__ void finalize(float out_scale, float (&o_scale)[2], float (&lse)[2]) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float s = l[r];
      s += __shfl_xor_sync(0xffffffffu, s, 1);
      s += __shfl_xor_sync(0xffffffffu, s, 2);
      const bool empty = m[r] == -INFINITY || !(s > 0.0f);
      o_scale[r] = empty ? 0.0f : out_scale * sm_rcp(s);
      lse[r] = empty ? -INFINITY : (m[r] + sm_log2(s)) * kLn2;
    }
  }
};

}  // namespace ioattn::cuda
