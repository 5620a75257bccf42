// What happens to a score between the QK^T product and the softmax, applied to mma accumulator
// fragments (layout in mma.cuh): softmax scale, softcap, ALiBi, the window/causal mask and the
// ragged key tail, and dropout on P. Scores leave here in log2 units (x = s * log2(e)), so the
// softmax uses exp2 (sm_exp2, softmax.cuh). Shared by the forward and backward kernels.
#pragma once

#include <cstdint>

#include "core/mask.h"
#include "core/params.h"
#include "core/philox.h"
#include "core/softmax_state.h"

namespace ioattn::cuda {

constexpr float kLog2e = 1.4426950408889634f;  // log2(e): natural-log units -> log2 units
constexpr float kLn2 = 0.6931471805599453f;    // ln(2):   log2 units -> natural log (LSE)

// 2^x, 1 / x and log2(x) on the MUFU: sm_exp2, sm_rcp, sm_log2 (core/softmax_state.h, shared with
// the decode kernels and the CPU backend's host forms).

// Softcap's tanh(y) = 1 - 2 r with r = 1 / (e^(2y) + 1): one ex2 and one reciprocal on the MUFU,
// where tanhf costs ~20 instructions with a branch (softcap's forward ran at a quarter of the plain
// kernel's speed with it). softcap_r takes z = 2 y log2(e), the ex2's argument (ScoreMod::cap_in
// carries the 2 log2(e)), and the capped log2-unit score cap_out tanh y is then one FFMA,
// cap_out - 2 cap_out r (ScoreMod::cap_r = -2 cap_out): per score a multiply, the two MUFU
// operations, an add and the FFMA, where the form cap_out * (1 - 2 / (e + 1)) of y took three
// multiplies and two adds around them (the softcap kernels are issue-bound: session 29 measured
// Newton's reciprocal on the FMA pipe instead of MUFU.RCP 2-23% slower). Error: absolute, below
// 5e-7 in tanh (ex2's 2 ulp on e^(2y) and the reciprocal's 1 ulp, both relative, taken through
// 2 / (e + 1) <= 2); softcap multiplies it by softcap * log2(e) into the log2-unit score, ~1e-5 of a
// unit at softcap 30: a relative error of ~1e-5 in P, 50x below fp16's rounding. Large |y|: e = inf
// gives r = 0 (tanh 1), e = 0 gives r = 1 (tanh -1); NaN stays NaN.
__device__ __forceinline__ float softcap_r(float z) { return sm_rcp(sm_exp2(z) + 1.0f); }
// softcap_r's argument per raw score: 2 log2(e) scale / softcap (ScoreMod::cap_in, the decode kernel).
__device__ __forceinline__ float softcap_in(float scale, float softcap) { return 2.0f * kLog2e * scale / softcap; }

struct ScoreMod {
  float scale_log2;  // no softcap: x = acc * scale * log2(e)
  float cap_in;      // softcap:    x = cap_out * tanh(acc * scale / softcap) = fma(r, cap_r, cap_out),
  float cap_out;     //             r = softcap_r(acc * cap_in), cap_in = 2 log2(e) scale / softcap,
  float cap_r;       //             cap_out = softcap * log2(e), cap_r = -2 cap_out
  float alibi_log2;  // slope_h * log2(e); 0 without ALiBi
  bool softcap;
  WindowMask mask;   // bottom-right aligned, shift = sk - sq of this sequence
  int sk;            // keys j >= sk are the zero-filled tail of the last key block

  static __device__ __forceinline__ ScoreMod make(const Params& p, int b, int h, int sq, int sk) {
    ScoreMod m;
    m.scale_log2 = p.scale_log2;
    m.softcap = p.softcap > 0.0f;
    m.cap_in = m.softcap ? softcap_in(p.scale, p.softcap) : 0.0f;
    m.cap_out = p.softcap * kLog2e;
    m.cap_r = -2.0f * m.cap_out;
    m.alibi_log2 = p.alibi_slopes ? p.alibi_slopes[b * p.alibi_batch_stride + h] * kLog2e : 0.0f;
    m.mask = WindowMask{p.window_left, p.window_right, sk - sq};
    m.sk = sk;
    return m;
  }

  // Does a key block [n0, n0 + n) need the element mask for query rows [m0, m_last]? Only blocks
  // that cross the key tail or a window edge do; all others skip the per-element test.
  __device__ __forceinline__ bool block_needs_mask(int m0, int m_last, int n0, int n) const {
    if (n0 + n > sk) return true;
    if (mask.left >= 0 && n0 < m_last + mask.shift - mask.left) return true;
    if (mask.right >= 0 && n0 + n - 1 > m0 + mask.shift + mask.right) return true;
    return false;
  }

  // Scores of kNTiles 16x8 fragments: rows row0 (c[0], c[1]) and row0 + 8 (c[2], c[3]), columns
  // col0 + 8 nt + {0, 1}. Transforms in place to log2 units; kMask adds the element mask (-inf).
  // kMods = false compiles softcap and ALiBi out (for kernels instantiated for calls without them:
  // fewer live registers). softcap_r, not tanh.approx (2^-11 relative: fp16's rounding).
  // The softcap test is taken once per call, outside the element loops (a per-element test kept
  // the tanh's instructions, predicated off, in every ALiBi-only call's issue stream).
  template <bool kMask, bool kMods = true, int kNTiles>
  __device__ __forceinline__ void apply(float (&s)[kNTiles][4], int row0, int col0) const {
    if (kMods && softcap)
      apply_scores<kMask, kMods, true>(s, row0, col0);
    else
      apply_scores<kMask, kMods, false>(s, row0, col0);
  }

  // apply() for one softcap setting. ALiBi (kMods): -slope |i + shift - j| (alibi_distance) in
  // float, exact for distances below 2^24: the row's i + shift - col0 once per row, then per
  // element one FADD of a constant (|.| is an operand modifier) and one FFMA; slope 0 without ALiBi.
  // kMask: the interval test of apply_mask (RowIntervals), not j >= sk || !mask.visible(i, j),
  // which cost ~10 instructions per element (the sm90 backward's switch to the interval form made
  // causal 6-22% and window 25-41% faster). It also frees registers in these kernels, which run
  // at their limits: ptxas spills went down or away in every kMods kernel that had any (sm90
  // d = 64 forward, 192-row tile: 186/204 bytes of spill stores/loads -> 16/16; sm80 d = 64 and 96
  // forward and d = 96 dK/dV: 16/24 and 4/8 -> none) and up in none.
  template <bool kMask, bool kMods, bool kSoftcap, int kNTiles>
  __device__ __forceinline__ void apply_scores(float (&s)[kNTiles][4], int row0, int col0) const {
    float d0[2];  // i + shift - col0 for rows row0, row0 + 8
    if (kMods) {
      d0[0] = static_cast<float>(row0 + mask.shift - col0);
      d0[1] = d0[0] + 8.0f;
    }
    const RowIntervals iv = kMask ? row_intervals(row0, col0) : RowIntervals{};
#pragma unroll
    for (int nt = 0; nt < kNTiles; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float x = kSoftcap ? fmaf(softcap_r(s[nt][e] * cap_in), cap_r, cap_out) : s[nt][e] * scale_log2;
        if (kMods) x = fmaf(-alibi_log2, fabsf(d0[e / 2] - static_cast<float>(nt * 8 + e % 2)), x);
        if (kMask && !in_interval(iv, nt, e)) x = -INFINITY;
        s[nt][e] = x;
      }
    }
  }

  // The element mask alone (-inf outside the window and past the key tail), scores left in raw
  // units: for calls without softcap and ALiBi, where the scale is folded into the exponent
  // (OnlineSoftmax::update's `scale`; the backward's exp2(fma(x, scale_log2, -lse))).
  // A row's visible keys are one interval, [first_key(i), end_key(i, sk)) of its WindowMask (the
  // window and the ragged key tail together; j >= 0 always), so each element costs one unsigned
  // compare of j - first_key against the interval's width. The per-element window test it replaces
  // compiled to a branch per element pair, ~13 instructions per element on diagonal blocks, and
  // needed more live registers next to the scores (the sm80 d = 64 forward on 128-key tiles
  // spilled with it: bench/notes-sm80.md).
  template <int kNTiles>
  __device__ __forceinline__ void apply_mask(float (&s)[kNTiles][4], int row0, int col0) const {
    const RowIntervals iv = row_intervals(row0, col0);
#pragma unroll
    for (int nt = 0; nt < kNTiles; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e)
        if (!in_interval(iv, nt, e)) s[nt][e] = -INFINITY;
  }

  // The visible-key intervals of a fragment's two rows, row0 (elements 0, 1) and row0 + 8
  // (elements 2, 3), relative to column col0: element (nt, e) is column j = col0 + 8 nt + e % 2
  // of row r = e / 2, visible iff 0 <= j - first_key < width (in_interval). Equals
  // j < sk && mask.visible(i, j) for every j >= 0: end_key clamps to sk, first_key at 0, and an
  // empty row gets width 0 (tests/cpu/test_mask.cpp checks first_key / end_key against visible).
  struct RowIntervals {
    int off[2];    // col0 - first_key of the row
    int width[2];  // end_key - first_key, at least 0
  };
  __device__ __forceinline__ RowIntervals row_intervals(int row0, int col0) const {
    RowIntervals iv;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int lo = mask.first_key(row0 + 8 * r), hi = mask.end_key(row0 + 8 * r, sk);
      iv.off[r] = col0 - lo;
      iv.width[r] = max(hi - lo, 0);  // 0: the row sees no key at all
    }
    return iv;
  }
  // The transposed form, for tiles whose rows are keys (the sm90 backward's S^T): the queries that
  // see key rows key0 (elements 0, 1) and key0 + 8 (2, 3), relative to query col0, so that element
  // (nt, e) is query col0 + 8 nt + e % 2 (WindowMask::first_query / end_query; keys past sk see
  // none).
  __device__ __forceinline__ RowIntervals key_row_intervals(int key0, int col0) const {
    RowIntervals iv;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int key = key0 + 8 * r;
      const int lo = mask.first_query(key), hi = key < sk ? mask.end_query(key) : lo;
      iv.off[r] = col0 - lo;
      iv.width[r] = max(hi - lo, 0);
    }
    return iv;
  }
  // One unsigned compare per element: j - lo < 0 wraps to >= width.
  static __device__ __forceinline__ bool in_interval(const RowIntervals& iv, int nt, int e) {
    return unsigned(iv.off[e / 2] + nt * 8 + e % 2) < unsigned(iv.width[e / 2]);
  }
};

// Dropout on P fragments with the mask of src/core/philox.h: one Philox call gives the words of
// keys 4 (j / 4) .. + 3 of one row. Dropped elements become 0; the 1 / (1 - p) scaling is folded
// into the final normalisation of O.
struct Dropout {
  uint64_t seed, offset;
  uint32_t threshold;
  int b, h, heads_q;

  static __device__ __forceinline__ Dropout make(const Params& p, int b, int h) {
    return Dropout{p.seed, p.offset, p.dropout_threshold, b, h, p.heads_q};
  }

  // A thread's keep bits for kNTiles fragments (rows row0, row0 + 8; columns col0 + 8 nt + {0, 1}):
  // bit 2 nt + c of row[r] keeps element (nt, 2 r + c).
  struct Keep {
    uint32_t row[2];
  };

  // Lanes 4g + t and 4g + (t ^ 1) hold the same two rows and the two halves of each group of four
  // keys (col0 = 8k + 2t), and one Philox call gives a row's four words, so the pair shares its
  // calls: the lower lane (t even) computes row0's words, the upper lane row0 + 8's, and each
  // passes its partner the partner's two bits of its row (one shuffle for all tiles). One call per
  // tile and lane where each lane computed both rows: Philox (10 rounds of two wide multiplies
  // and their xors, ~70 instructions) was ~35 instructions per score in the forward and twice that
  // in the backward, which drew the mask for dP and again for P. Must be reached by the whole warp.
  template <int kNTiles>
  __device__ __forceinline__ Keep keep(int row0, int col0) const {
    static_assert(kNTiles <= 16, "two bits per tile in a 32-bit word");
    const bool upper = (col0 & 2) != 0;  // this lane's columns are keys 2, 3 of their group of four
    const int row = row0 + (upper ? 8 : 0);
    uint32_t own = 0, other = 0;  // this lane's bits of `row`, and its partner's
#pragma unroll
    for (int nt = 0; nt < kNTiles; ++nt) {
      const Philox4 w = dropout_words(seed, offset, b, h, heads_q, row, (col0 + nt * 8) >> 2);
      const uint32_t lo = uint32_t(w.x[0] >= threshold) | uint32_t(w.x[1] >= threshold) << 1;
      const uint32_t hi = uint32_t(w.x[2] >= threshold) | uint32_t(w.x[3] >= threshold) << 1;
      own |= (upper ? hi : lo) << (2 * nt);
      other |= (upper ? lo : hi) << (2 * nt);
    }
    const uint32_t got = __shfl_xor_sync(0xffffffffu, other, 1);
    return Keep{{upper ? got : own, upper ? own : got}};
  }

  template <int kNTiles>
  static __device__ __forceinline__ void apply(float (&pf)[kNTiles][4], const Keep& k) {
#pragma unroll
    for (int nt = 0; nt < kNTiles; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e)
        if (!((k.row[e / 2] >> (2 * nt + e % 2)) & 1u)) pf[nt][e] = 0.0f;
  }

  template <int kNTiles>
  __device__ __forceinline__ void apply(float (&pf)[kNTiles][4], int row0, int col0) const {
    apply(pf, keep<kNTiles>(row0, col0));
  }
};

}  // namespace ioattn::cuda
