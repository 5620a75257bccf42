// Online softmax over key blocks for the two rows a thread holds in mma accumulator fragments
// (rows g and g + 8 of a warp's 16; the 4 threads of a quad share a row). The -inf rules live here
// and only here: a row that has seen no visible key keeps m = -inf and uses 0 as its exponent base,
// so no (-inf) - (-inf) is ever formed; an empty row ends with O = 0 and LSE = -inf, never NaN.
#pragma once

#include "score.cuh"

namespace ioattn::cuda {

struct OnlineSoftmax {
  float m[2];  // running row maximum, log2 units (quad-uniform)
  float l[2];  // running sum of exp2(x - m): this thread's columns only, summed over the quad at the end

  __device__ __forceinline__ void init() {
    m[0] = m[1] = -INFINITY;
    l[0] = l[1] = 0.0f;
  }

  // x: one key block of scores whose log2-unit value is x * scale -> P = exp2(x * scale - m_new) in
  // place. scale > 0 (validate.cpp: a given softmax_scale is > 0, else 1/sqrt(d)), so the maximum
  // can be taken on x before scaling: rounding is monotone, max(round(x_i * scale)) ==
  // round(max(x_i) * scale), the same m as scaling first. Folding the scale into the exponent makes
  // it one FFMA per element instead of FMUL + FADD (FA2's trick). Callers whose scores are already
  // in log2 units (softcap / ALiBi transforms) pass scale = 1, where x * 1 - m is exactly x - m.
  // Masked scores are -inf in either unit. alpha[r] is the factor the output accumulator of row r
  // must be rescaled by (exp2(m_old - m_new)).
  template <int kNTiles>
  __device__ __forceinline__ void update(float (&x)[kNTiles][4], float (&alpha)[2], float scale = 1.0f) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float mx = -INFINITY;
#pragma unroll
      for (int nt = 0; nt < kNTiles; ++nt) mx = fmaxf(mx, fmaxf(x[nt][2 * r], x[nt][2 * r + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      mx = fmaxf(m[r], mx * scale);  // log2 units; -inf * scale stays -inf
      const float base = mx == -INFINITY ? 0.0f : mx;
      alpha[r] = exp2f(m[r] - base);  // 0 while the row had no key (m = -inf)
      m[r] = mx;
      float sum = 0.0f;
#pragma unroll
      for (int nt = 0; nt < kNTiles; ++nt) {
        x[nt][2 * r] = exp2f(fmaf(x[nt][2 * r], scale, -base));
        x[nt][2 * r + 1] = exp2f(fmaf(x[nt][2 * r + 1], scale, -base));
        sum += x[nt][2 * r] + x[nt][2 * r + 1];
      }
      l[r] = l[r] * alpha[r] + sum;
    }
  }

  // Row sums over the quad; the output scale (out_scale / l, 0 for a row with no key) and the
  // natural-log LSE (-inf for a row with no key).
  __device__ __forceinline__ void finalize(float out_scale, float (&o_scale)[2], float (&lse)[2]) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float s = l[r];
      s += __shfl_xor_sync(0xffffffffu, s, 1);
      s += __shfl_xor_sync(0xffffffffu, s, 2);
      const bool empty = m[r] == -INFINITY || !(s > 0.0f);
      o_scale[r] = empty ? 0.0f : out_scale / s;
      lse[r] = empty ? -INFINITY : (m[r] + log2f(s)) * kLn2;
    }
  }
};

}  // namespace ioattn::cuda
