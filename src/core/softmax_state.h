// The online-softmax state of one query row as a named value, and the merge of partial results,
// shared by the CPU and GPU decode paths (src/cpu/decode.cpp, src/cuda/decode/): the split-KV
// pieces of one row are merged with the same rules on both. The -inf rules live here:
//   - a state that has seen no visible key has m = -inf; its exponent base is 0, so no
//     (-inf) - (-inf) is ever formed and its weight in a merge is exactly 0;
//   - an empty row ends with O = 0 (scale 0, never 0/0) and LSE = -inf.
// Scores are in log2 units (s * scale * log2 e), so the exponentials are exp2f; LSE leaves in
// natural-log units as DESIGN.md §1 defines it. Also here: how many pieces the key range of a
// decode call is split into (split-KV / flash-decoding).
#pragma once

#include <cmath>

#include "hostdevice.h"

namespace ioattn {

constexpr float kLn2f = 0.6931471805599453f;  // log2 units -> natural log

// 2^x, 1 / x, log2(x), e^x and ln(x): the one definition every GPU kernel uses (the attention
// kernels' softmax, score mods and finalize, the decode kernels). On the GPU the MUFU approximations,
// flushing subnormals (ex2 / rcp / lg2.approx.ftz: one instruction each, ~2 ulp); on the host the
// library functions. exp2(-inf) = +0 on both, so masked scores still give exactly 0.
// exp2f without -ftz=true compiles to ex2.approx.f32, which ptxas expands to about four
// instructions (range test and pre/post scaling so that results below 2^-126 come out subnormal
// instead of 0); FA2 gets the one-instruction form from --use_fast_math. Flushing is harmless for
// attention probabilities: a P below 2^-126 next to the row maximum's P = 1 is below fp32's
// resolution of the row sum and of fp16's range, and bf16's subnormal products with V vanish in the
// fp32 accumulator. The IEEE division adds a slow-path branch and log2f a polynomial, on the
// kernels' per-tile and epilogue paths.
IOATTN_HD float sm_exp2(float x) {
#if defined(__CUDA_ARCH__)
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#else
  return exp2f(x);
#endif
}
IOATTN_HD float sm_rcp(float x) {
#if defined(__CUDA_ARCH__)
  float y;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#else
  return 1.0f / x;
#endif
}
IOATTN_HD float sm_log2(float x) {
#if defined(__CUDA_ARCH__)
  float y;
  asm("lg2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#else
  return log2f(x);
#endif
}
IOATTN_HD float sm_exp(float x) {
#if defined(__CUDA_ARCH__)
  return sm_exp2(x * 1.4426950408889634f);
#else
  return expf(x);
#endif
}
IOATTN_HD float sm_log(float x) {
#if defined(__CUDA_ARCH__)
  return sm_log2(x) * kLn2f;
#else
  return logf(x);
#endif
}

struct SoftmaxState {
  float m;  // running maximum of the scores seen (log2 units), -inf while none is visible
  float l;  // running sum of exp2(x - m)

  IOATTN_HD static SoftmaxState empty() { return SoftmaxState{-INFINITY, 0.0f}; }
  IOATTN_HD static float base(float m) { return m == -INFINITY ? 0.0f : m; }

  // Raises the maximum to include mx (the maximum of a new block of scores); returns the factor the
  // row's accumulated output must be multiplied by (0 while the row had seen nothing).
  IOATTN_HD float raise_max(float mx) {
    const float m_new = m > mx ? m : mx;
    const float alpha = sm_exp2(m - base(m_new));
    m = m_new;
    l *= alpha;
    return alpha;
  }
  // Unnormalised probability of score x under the current maximum (0 for a masked x = -inf).
  IOATTN_HD float prob(float x) const { return sm_exp2(x - base(m)); }

  // Folds another state of the same row into this one: out = a_self * out + a_other * out_other.
  IOATTN_HD void merge(const SoftmaxState& o, float* a_self, float* a_other) {
    const float m_new = m > o.m ? m : o.m;
    *a_self = sm_exp2(m - base(m_new));
    *a_other = sm_exp2(o.m - base(m_new));
    l = l * *a_self + o.l * *a_other;
    m = m_new;
  }

  IOATTN_HD bool is_empty() const { return m == -INFINITY || !(l > 0.0f); }
  // What the accumulated output is multiplied by at the end (1 / l; 0 for an empty row).
  IOATTN_HD float out_scale() const { return is_empty() ? 0.0f : sm_rcp(l); }
  // Natural-log LSE; -inf for an empty row.
  IOATTN_HD float lse() const { return is_empty() ? -INFINITY : (m + sm_log2(l)) * kLn2f; }
};

// Merge of normalised partial results (o_s, lse_s) of one row, s = 0..n-1 (the split-KV combine):
//   LSE = log Σ exp(lse_s),  O = Σ exp(lse_s - LSE) o_s.
// Two passes over the lse_s: max_lse() first, then weight(lse_s) per split.
struct LseMerge {
  float max_lse;  // -inf when every split was empty
  float sum;      // Σ exp(lse_s - max_lse)

  IOATTN_HD static LseMerge begin(float max_lse) { return LseMerge{max_lse, 0.0f}; }
  // exp(lse_s - max); accumulates the sum. An empty split (lse = -inf) weighs exactly 0.
  IOATTN_HD float add(float lse_s) {
    const float w = max_lse == -INFINITY ? 0.0f : sm_exp(lse_s - max_lse);
    sum += w;
    return w;
  }
  // Factor turning Σ w_s o_s into O; 0 for an empty row.
  IOATTN_HD float out_scale() const { return sum > 0.0f ? sm_rcp(sum) : 0.0f; }
  IOATTN_HD float lse() const { return sum > 0.0f ? max_lse + sm_log(sum) : -INFINITY; }
};

// How many pieces to split the key range into (host). `work_units` independent tiles already fill
// `processors` (SMs or threads) to some degree; splitting each into s pieces multiplies the work
// units by s. Flash-attn 2's rule (num_splits_heuristic): no split when the units fill >= 80% of
// the processors; otherwise the smallest s whose wave efficiency (units·s / processors over its
// ceiling) is within 85% of the best s <= max_splits, skipping s that leave a piece's key block
// count unchanged (ceil(blocks / s) equal to ceil(blocks / (s - 1))).
inline int choose_num_splits(long long work_units, int processors, int key_blocks, int max_splits) {
  if (work_units <= 0 || processors <= 0 || key_blocks <= 1) return 1;
  if (work_units * 10 >= static_cast<long long>(processors) * 8) return 1;
  int limit = max_splits < processors ? max_splits : processors;
  limit = limit < key_blocks ? limit : key_blocks;
  auto eligible = [&](int s) { return s == 1 || (key_blocks + s - 1) / s != (key_blocks + s - 2) / (s - 1); };
  auto efficiency = [&](int s) {
    const double waves = static_cast<double>(work_units) * s / processors;
    return waves / std::ceil(waves);
  };
  double best = 0.0;
  for (int s = 1; s <= limit; ++s)
    if (eligible(s) && efficiency(s) > best) best = efficiency(s);
  for (int s = 1; s <= limit; ++s)
    if (eligible(s) && efficiency(s) >= 0.85 * best) return s;
  return 1;
}

}  // namespace ioattn
