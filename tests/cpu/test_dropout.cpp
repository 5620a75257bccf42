// Dropout on the CPU backend: the elements dropped are exactly those of src/core/philox.h (the same
// in forward and backward), the keep rate is 1 − p within statistical bounds, and the mask moves
// with seed and offset but not between runs.
//
// The mask is read out of the library's own outputs: with V = I (head_dim_v = Sk) the forward
// output row i is P_i ∘ Z_i / (1 − p), and with dO_i = e_i the backward's dV[j][i] is the same
// element, so a zero marks a dropped element (P itself is never 0 at these scores).
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "attention_case.h"
#include "core/philox.h"

namespace ioattn::test {
namespace {

struct MaskProblem {
  int batch, heads, sq, sk;
  float p;
};

// Runs forward (V = I) and backward (dO one-hot) and returns both masks, indexed (b, h, i, j).
void library_masks(const MaskProblem& m, uint64_t seed, uint64_t offset, std::vector<char>* fwd,
                   std::vector<char>* bwd, std::vector<double>* fwd_vals = nullptr,
                   std::vector<double>* bwd_vals = nullptr) {
  Case c;
  c.batch = m.batch;
  c.hq = m.heads;
  c.hk = m.heads;
  c.sq = m.sq;
  c.sk = m.sk;
  c.d = 16;
  c.dv = m.sk;
  c.seed = seed;
  CaseInputs in = make_inputs(c);
  in.args.dropout_p = m.p;
  in.args.seed = seed;
  in.args.offset = offset;
  for (int64_t e = 0; e < in.v.numel(); ++e) {  // (B, Sk, H, Sk): row j of each head is e_j
    const int64_t col = e % m.sk, j = e / m.sk / m.heads % m.sk;
    in.v.set(e, col == j ? 1.0 : 0.0);
  }
  ASSERT_GE(m.sk, m.sq);  // dO row i = e_i needs Dv = Sk >= Sq
  for (int64_t e = 0; e < in.dout.numel(); ++e) {  // (B, Sq, H, Sk)
    const int64_t col = e % m.sk, i = e / m.sk / m.heads % m.sq;
    in.dout.set(e, col == i ? 1.0 : 0.0);
  }
  HostTensor out(DType::F32, in.out_shape), lse(DType::F32, in.lse_shape);
  HostTensor dq(DType::F32, in.q.shape()), dk(DType::F32, in.k.shape()), dv(DType::F32, in.v.shape());
  out.poison();
  lse.poison();
  dq.poison();
  dk.poison();
  dv.poison();
  Status s = forward(in.q.view(), in.k.view(), in.v.view(), out.view(), lse.view(), in.args);
  ASSERT_TRUE(s.ok()) << s.message;
  s = backward(in.q.view(), in.k.view(), in.v.view(), out.view(), in.dout.view(), lse.view(), dq.view(), dk.view(),
               dv.view(), in.args);
  ASSERT_TRUE(s.ok()) << s.message;
  const size_t n = static_cast<size_t>(m.batch) * m.heads * m.sq * m.sk;
  fwd->assign(n, 0);
  bwd->assign(n, 0);
  if (fwd_vals) fwd_vals->assign(n, 0);
  if (bwd_vals) bwd_vals->assign(n, 0);
  for (int b = 0; b < m.batch; ++b)
    for (int h = 0; h < m.heads; ++h)
      for (int i = 0; i < m.sq; ++i)
        for (int j = 0; j < m.sk; ++j) {
          const size_t e = ((static_cast<size_t>(b) * m.heads + h) * m.sq + i) * m.sk + j;
          const double o = out.get(((static_cast<int64_t>(b) * m.sq + i) * m.heads + h) * m.sk + j);
          const double g = dv.get(((static_cast<int64_t>(b) * m.sk + j) * m.heads + h) * m.sk + i);
          (*fwd)[e] = o != 0.0;
          (*bwd)[e] = g != 0.0;
          if (fwd_vals) (*fwd_vals)[e] = o;
          if (bwd_vals) (*bwd_vals)[e] = g;
        }
}

TEST(Dropout, SameMaskInForwardAndBackwardAsPhilox) {
  const MaskProblem m{2, 3, 70, 131, 0.3f};
  const uint64_t seed = 0x1234'5678'9ABC'DEF0ull, offset = (7ull << 32) + 12;
  std::vector<char> f, b;
  std::vector<double> fv, bv;
  ASSERT_NO_FATAL_FAILURE(library_masks(m, seed, offset, &f, &b, &fv, &bv));
  const uint32_t thr = dropout_threshold(m.p);
  int64_t mismatch_fwd = 0, mismatch_bwd = 0, value_mismatch = 0;
  for (int bb = 0; bb < m.batch; ++bb)
    for (int h = 0; h < m.heads; ++h)
      for (int i = 0; i < m.sq; ++i)
        for (int j = 0; j < m.sk; ++j) {
          const size_t e = ((static_cast<size_t>(bb) * m.heads + h) * m.sq + i) * m.sk + j;
          const bool keep = dropout_keep(seed, offset, thr, bb, h, m.heads, i, j);
          mismatch_fwd += f[e] != keep;
          mismatch_bwd += b[e] != keep;
          // Kept elements carry the same value P·1/(1 − p) in both passes.
          value_mismatch += std::fabs(fv[e] - bv[e]) > 1e-6 * std::fabs(fv[e]) + 1e-9;
        }
  EXPECT_EQ(mismatch_fwd, 0) << "forward dropped elements other than philox.h's";
  EXPECT_EQ(mismatch_bwd, 0) << "backward dropped elements other than philox.h's";
  EXPECT_EQ(value_mismatch, 0) << "P∘Z/(1-p) differs between forward and backward";
}

// Varlen: b is the sequence index and (i, j) positions inside the sequence.
TEST(Dropout, VarlenMaskIsIndexedBySequence) {
  Case c;
  c.hq = 2;
  c.hk = 2;
  c.d = 8;
  c.lens_q = {5, 0, 9};
  c.lens_k = {12, 4, 12};
  c.dv = 12;
  c.seed = 99;
  CaseInputs in = make_inputs(c);
  in.args.dropout_p = 0.5f;
  for (int64_t e = 0; e < in.v.numel(); ++e) {  // (Tk, H, 12): key j of its sequence -> e_j
    const int64_t col = e % 12, t = e / 12 / 2;
    const int64_t j = t < 12 ? t : t < 16 ? t - 12 : t - 16;
    in.v.set(e, col == j ? 1.0 : 0.0);
  }
  HostTensor out(DType::F32, in.out_shape), lse(DType::F32, in.lse_shape);
  out.poison();
  ASSERT_TRUE(forward(in.q.view(), in.k.view(), in.v.view(), out.view(), lse.view(), in.args).ok());
  const uint32_t thr = dropout_threshold(0.5f);
  const int qstart[] = {0, 5, 5};
  int64_t mismatch = 0;
  for (int b : {0, 2})
    for (int h = 0; h < 2; ++h)
      for (int i = 0; i < c.lens_q[b]; ++i)
        for (int j = 0; j < 12; ++j) {
          const bool kept = out.get(((static_cast<int64_t>(qstart[b]) + i) * 2 + h) * 12 + j) != 0.0;
          mismatch += kept != dropout_keep(in.args.seed, in.args.offset, thr, b, h, 2, i, j);
        }
  EXPECT_EQ(mismatch, 0);
}

TEST(Dropout, KeepRateWithinStatisticalBounds) {
  for (float p : {0.1f, 0.5f, 0.85f}) {
    const MaskProblem m{2, 2, 128, 256, p};
    std::vector<char> f, b;
    ASSERT_NO_FATAL_FAILURE(library_masks(m, 4242 + static_cast<uint64_t>(p * 100), 3, &f, &b));
    double kept = 0;
    for (char x : f) kept += x;
    const double n = static_cast<double>(f.size()), rate = kept / n;
    const double sigma = std::sqrt(p * (1.0 - p) / n);
    // 5 sigma: a correct generator fails this about once in 3.5 million runs; a wrong threshold
    // (e.g. keeping with probability p instead of 1 - p) misses by hundreds of sigma.
    EXPECT_NEAR(rate, 1.0 - p, 5 * sigma) << "p = " << p << " over " << n << " elements";
  }
  // The generator itself, over many more elements and awkward probabilities.
  for (float p : {0.001f, 0.2f, 1.0f / 3.0f, 0.999f}) {
    const uint32_t thr = dropout_threshold(p);
    int64_t kept = 0, n = 0;
    for (int h = 0; h < 4; ++h)
      for (int i = 0; i < 512; ++i)
        for (int j = 0; j < 1024; ++j, ++n) kept += dropout_keep(77, 5, thr, 1, h, 4, i, j);
    const double sigma = std::sqrt(p * (1.0 - p) / n);
    EXPECT_NEAR(static_cast<double>(kept) / n, 1.0 - p, 5 * sigma) << "p = " << p;
  }
}

TEST(Dropout, MaskFollowsSeedAndOffsetOnly) {
  const MaskProblem m{1, 2, 64, 128, 0.5f};
  std::vector<char> a, a2, b, c, unused;
  ASSERT_NO_FATAL_FAILURE(library_masks(m, 11, 0, &a, &unused));
  ASSERT_NO_FATAL_FAILURE(library_masks(m, 11, 0, &a2, &unused));
  ASSERT_NO_FATAL_FAILURE(library_masks(m, 12, 0, &b, &unused));
  ASSERT_NO_FATAL_FAILURE(library_masks(m, 11, 1, &c, &unused));
  EXPECT_EQ(a, a2) << "the same seed and offset must drop the same elements";
  // Independent masks at p = 0.5 agree on half the elements; identical ones on all.
  auto agreement = [](const std::vector<char>& x, const std::vector<char>& y) {
    double same = 0;
    for (size_t e = 0; e < x.size(); ++e) same += x[e] == y[e];
    return same / static_cast<double>(x.size());
  };
  const double sigma = 0.5 / std::sqrt(static_cast<double>(a.size()));
  EXPECT_NEAR(agreement(a, b), 0.5, 5 * sigma) << "changing the seed must give an independent mask";
  EXPECT_NEAR(agreement(a, c), 0.5, 5 * sigma) << "changing the offset must give an independent mask";
}

}  // namespace
}  // namespace ioattn::test
