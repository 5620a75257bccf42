// Tests of the float64 reference itself (src/reference): it is the oracle of every other test, so it
// is checked against hand-computed values, identities of softmax attention, an independently
// written mask predicate, equivalences (GQA = repeated heads, varlen = dense per sequence), the
// dropout mask of src/core/philox.h, and its backward against finite differences of its forward.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "attention_case.h"
#include "core/philox.h"
#include "error_rule.h"
#include "reference/reference.h"

namespace ioattn::test {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

HostTensor tensor(DType dt, std::vector<int64_t> shape, const std::vector<double>& vals) {
  HostTensor t(dt, std::move(shape));
  for (size_t e = 0; e < vals.size(); ++e) t.set(static_cast<int64_t>(e), vals[e]);
  return t;
}

// V = identity (Sk x Sk per head), so that O row i is the probability row P_i.
HostTensor identity_v(int batch, int sk, int hk) {
  HostTensor v(DType::F32, {batch, sk, hk, sk});
  for (int64_t e = 0; e < v.numel(); ++e) {
    const int64_t col = e % sk, j = (e / sk / hk) % sk;
    v.set(e, col == j ? 1.0 : 0.0);
  }
  return v;
}

TEST(Reference, HandComputedTinyCase) {
  // q = [1, 0]; k = [[1, 0], [0, 1]]; v = [[1, 2], [3, 4]]; scale 1: s = [1, 0].
  HostTensor q = tensor(DType::F32, {1, 1, 1, 2}, {1, 0});
  HostTensor k = tensor(DType::F32, {1, 2, 1, 2}, {1, 0, 0, 1});
  HostTensor v = tensor(DType::F32, {1, 2, 1, 2}, {1, 2, 3, 4});
  Args a;
  a.softmax_scale = 1.0f;
  ref::Result r;
  ASSERT_TRUE(ref::forward(q.view(), k.view(), v.view(), a, &r).ok());
  const double e = std::exp(1.0), p0 = e / (e + 1), p1 = 1 / (e + 1);
  EXPECT_NEAR(r.out[0], p0 * 1 + p1 * 3, 1e-14);
  EXPECT_NEAR(r.out[1], p0 * 2 + p1 * 4, 1e-14);
  EXPECT_NEAR(r.lse[0], std::log(e + 1), 1e-14);

  // The default scale is the fp32 value of 1/sqrt(d).
  a.softmax_scale = 0.0f;
  ASSERT_TRUE(ref::forward(q.view(), k.view(), v.view(), a, &r).ok());
  const double s = static_cast<double>(1.0f / std::sqrt(2.0f));
  EXPECT_NEAR(r.lse[0], std::log(std::exp(s) + 1.0), 1e-14);

  // Backward by hand for dO = [1, 0]: dP = [1, 3], D = p0 + 3 p1, dS = P (dP - D),
  // dQ = dS K, dK_j = dS_j q, dV_j = P_j dO.
  a.softmax_scale = 1.0f;
  HostTensor dout = tensor(DType::F32, {1, 1, 1, 2}, {1, 0});
  ASSERT_TRUE(ref::backward(q.view(), k.view(), v.view(), dout.view(), a, &r).ok());
  const double D = p0 + 3 * p1, ds0 = p0 * (1 - D), ds1 = p1 * (3 - D);
  EXPECT_NEAR(r.dq[0], ds0, 1e-14);
  EXPECT_NEAR(r.dq[1], ds1, 1e-14);
  EXPECT_NEAR(r.dk[0], ds0, 1e-14);
  EXPECT_NEAR(r.dk[1], 0.0, 1e-14);
  EXPECT_NEAR(r.dk[2], ds1, 1e-14);
  EXPECT_NEAR(r.dv[0], p0, 1e-14);
  EXPECT_NEAR(r.dv[1], 0.0, 1e-14);
  EXPECT_NEAR(r.dv[2], p1, 1e-14);
}

TEST(Reference, BottomRightCausalLeavesEarlyRowsEmpty) {
  // Sq = 3, Sk = 2, causal: query i sees j <= i - 1. Row 0 sees nothing, row 1 key 0, row 2 both.
  Case c;
  c.sq = 3;
  c.sk = 2;
  c.d = 4;
  c.causal = true;
  CaseInputs in = make_inputs(c);
  ref::Result r;
  ASSERT_TRUE(ref::forward(in.q.view(), in.k.view(), in.v.view(), in.args, &r).ok());
  for (int d = 0; d < 4; ++d) {
    EXPECT_EQ(r.out[d], 0.0);                      // row 0: O = 0
    EXPECT_NEAR(r.out[4 + d], in.v.get(d), 1e-7);  // row 1: O = V_0 (one visible key)
  }
  EXPECT_EQ(r.lse[0], -kInf);
  double s10 = 0;
  for (int d = 0; d < 4; ++d) s10 += in.q.get(4 + d) * in.k.get(d);
  EXPECT_NEAR(r.lse[1], s10 * static_cast<double>(1.0f / std::sqrt(4.0f)), 1e-12);
  ASSERT_TRUE(ref::backward(in.q.view(), in.k.view(), in.v.view(), in.dout.view(), in.args, &r).ok());
  for (int d = 0; d < 4; ++d) EXPECT_EQ(r.dq[d], 0.0);
  // Row 1 alone sees key 0 with P = 1: dS = P (dP - D) = 0 there, so dQ row 1 is zero too.
  for (int d = 0; d < 4; ++d) EXPECT_NEAR(r.dq[4 + d], 0.0, 1e-12);
}

TEST(Reference, MaskMatchesIndependentPredicate) {
  // With V = I, O_ij = P_ij: the visible set of each row is where O is non-zero. Written here as
  // "j - i lies in [Sk - Sq - left, Sk - Sq + right]" rather than the reference's form.
  struct M { int sq, sk, l, r; bool causal; };
  const M masks[] = {{5, 9, -1, -1, true}, {9, 5, -1, -1, true}, {8, 8, 2, -1, false}, {8, 8, -1, 1, false},
                     {7, 11, 1, 2, false}, {11, 7, 0, 0, false}, {6, 6, 3, 0, true},  {4, 12, 20, 20, false}};
  for (const M& m : masks) {
    Case c;
    c.sq = m.sq;
    c.sk = m.sk;
    c.d = 4;
    c.causal = m.causal;
    c.window_left = m.l;
    c.window_right = m.r;
    c.backward = false;
    CaseInputs in = make_inputs(c);
    HostTensor v = identity_v(1, m.sk, 1);
    ref::Result r;
    ASSERT_TRUE(ref::forward(in.q.view(), in.k.view(), v.view(), in.args, &r).ok());
    const int right = m.causal ? 0 : m.r;
    for (int i = 0; i < m.sq; ++i) {
      int seen = 0;
      for (int j = 0; j < m.sk; ++j) {
        const int rel = j - i;
        const bool vis = (m.l < 0 || rel >= m.sk - m.sq - m.l) && (right < 0 || rel <= m.sk - m.sq + right);
        const double p = r.out[i * m.sk + j];
        EXPECT_EQ(p > 0.0, vis) << "Sq=" << m.sq << " Sk=" << m.sk << " window (" << m.l << "," << m.r << ")"
                                << (m.causal ? " causal" : "") << " i=" << i << " j=" << j;
        seen += vis;
      }
      EXPECT_EQ(std::isinf(r.lse[i]), seen == 0);
    }
  }
}

TEST(Reference, SoftmaxIdentities) {
  Case c;
  c.batch = 2;
  c.hq = 4;
  c.hk = 2;
  c.sq = 9;
  c.sk = 13;
  c.d = 5;
  c.window_left = 3;
  c.window_right = 1;
  c.alibi = Alibi::PerHead;
  c.softcap = 2.0f;
  CaseInputs in = make_inputs(c);
  // V = 1: every non-empty row's probabilities sum to 1, so O = 1.
  HostTensor ones(DType::F32, {2, 13, 2, 5});
  for (int64_t e = 0; e < ones.numel(); ++e) ones.set(e, 1.0);
  ref::Result r;
  ASSERT_TRUE(ref::forward(in.q.view(), in.k.view(), ones.view(), in.args, &r).ok());
  for (size_t row = 0; row < r.lse.size(); ++row) {
    const int b = static_cast<int>(row / (4 * 9)), h = static_cast<int>(row / 9 % 4), i = static_cast<int>(row % 9);
    const double* o = &r.out[((b * 9 + i) * 4 + h) * 5];
    for (int d = 0; d < 5; ++d) EXPECT_NEAR(o[d], std::isinf(r.lse[row]) ? 0.0 : 1.0, 1e-14);
  }
  // Q = 0 and no ALiBi/softcap: all visible scores are 0, so O is the mean of the visible V rows
  // and LSE = log(number of visible keys).
  HostTensor zq(DType::F32, {1, 6, 1, 3});
  for (int64_t e = 0; e < zq.numel(); ++e) zq.set(e, 0.0);
  Case c2;
  c2.sq = 6;
  c2.sk = 10;
  c2.d = 3;
  c2.window_left = 2;
  c2.window_right = 2;
  CaseInputs in2 = make_inputs(c2);
  ASSERT_TRUE(ref::forward(zq.view(), in2.k.view(), in2.v.view(), in2.args, &r).ok());
  for (int i = 0; i < 6; ++i) {
    const int diag = i + 4, lo = std::max(0, diag - 2), hi = std::min(9, diag + 2);
    EXPECT_NEAR(r.lse[i], std::log(hi - lo + 1.0), 1e-14);
    for (int d = 0; d < 3; ++d) {
      double mean = 0;
      for (int j = lo; j <= hi; ++j) mean += in2.v.get(j * 3 + d);
      EXPECT_NEAR(r.out[i * 3 + d], mean / (hi - lo + 1), 1e-12);
    }
  }
}

TEST(Reference, AlibiAndSoftcapFollowTheirFormulas) {
  // V = I gives P directly; compare with exp(score) / sum computed here from the formula of
  // DESIGN.md §1: S = softcap·tanh(scale·q·k / softcap) − slope·|i + Sk − Sq − j|.
  const int B = 2, H = 2, Sq = 5, Sk = 8, D = 4;
  for (float cap : {0.0f, 1.5f}) {
    Case c;
    c.batch = B;
    c.hq = H;
    c.hk = H;
    c.sq = Sq;
    c.sk = Sk;
    c.d = D;
    c.alibi = Alibi::PerBatchHead;
    c.softcap = cap;
    c.scale = 0.7f;
    CaseInputs in = make_inputs(c);
    HostTensor v = identity_v(B, Sk, H);
    ref::Result r;
    ASSERT_TRUE(ref::forward(in.q.view(), in.k.view(), v.view(), in.args, &r).ok());
    for (int b = 0; b < B; ++b)
      for (int h = 0; h < H; ++h)
        for (int i = 0; i < Sq; ++i) {
          std::vector<double> s(Sk);
          double sum = 0;
          for (int j = 0; j < Sk; ++j) {
            double dot = 0;
            for (int d = 0; d < D; ++d)
              dot += in.q.get(((b * Sq + i) * H + h) * D + d) * in.k.get(((b * Sk + j) * H + h) * D + d);
            double x = static_cast<double>(0.7f) * dot;
            if (cap > 0) x = cap * std::tanh(x / cap);
            x -= in.slopes.get(b * H + h) * std::abs(i + Sk - Sq - j);
            s[j] = std::exp(x);
            sum += s[j];
          }
          for (int j = 0; j < Sk; ++j) EXPECT_NEAR(r.out[((b * Sq + i) * H + h) * Sk + j], s[j] / sum, 1e-13);
          EXPECT_NEAR(r.lse[(b * H + h) * Sq + i], std::log(sum), 1e-12);
        }
  }
}

TEST(Reference, DropoutIsThePhiloxMask) {
  // O_ij = P_ij · Z_ij / (1 − p) with Z from dropout_keep, P from the same problem without dropout.
  const int B = 2, H = 3, Sq = 7, Sk = 21;
  Case c;
  c.batch = B;
  c.hq = H;
  c.hk = H;
  c.sq = Sq;
  c.sk = Sk;
  c.d = 6;
  c.dropout_p = 0.35f;
  CaseInputs in = make_inputs(c);
  HostTensor v = identity_v(B, Sk, H);
  ref::Result rd, r0;
  ASSERT_TRUE(ref::forward(in.q.view(), in.k.view(), v.view(), in.args, &rd).ok());
  Args nodrop = in.args;
  nodrop.dropout_p = 0;
  ASSERT_TRUE(ref::forward(in.q.view(), in.k.view(), v.view(), nodrop, &r0).ok());
  const uint32_t thr = dropout_threshold(0.35f);
  int kept = 0;
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h)
      for (int i = 0; i < Sq; ++i)
        for (int j = 0; j < Sk; ++j) {
          const size_t e = ((static_cast<size_t>(b) * Sq + i) * H + h) * Sk + j;
          const bool keep = dropout_keep(in.args.seed, in.args.offset, thr, b, h, H, i, j);
          kept += keep;
          EXPECT_NEAR(rd.out[e], keep ? r0.out[e] / (1.0 - 0.35f) : 0.0, 1e-15);
        }
  // The LSE is that of the undropped softmax.
  for (size_t e = 0; e < r0.lse.size(); ++e) EXPECT_EQ(rd.lse[e], r0.lse[e]);
  EXPECT_GT(kept, 0);
  EXPECT_LT(kept, B * H * Sq * Sk);
}

// dK/dV of a GQA problem equal the sums over the group of an MHA problem with K/V repeated.
TEST(Reference, GqaEqualsRepeatedHeads) {
  Case c;
  c.batch = 2;
  c.hq = 6;
  c.hk = 2;
  c.sq = 7;
  c.sk = 9;
  c.d = 3;
  c.causal = true;
  c.softcap = 3.0f;
  c.dropout_p = 0.25f;
  c.alibi = Alibi::PerHead;
  CaseInputs g = make_inputs(c);
  HostTensor k6(DType::F32, {2, 9, 6, 3}), v6(DType::F32, {2, 9, 6, 3});
  for (int64_t e = 0; e < k6.numel(); ++e) {
    const int64_t d = e % 3, h = e / 3 % 6, rest = e / 18;
    k6.set(e, g.k.get((rest * 2 + h / 3) * 3 + d));
    v6.set(e, g.v.get((rest * 2 + h / 3) * 3 + d));
  }
  ref::Result rg, rm;
  ASSERT_TRUE(ref::backward(g.q.view(), g.k.view(), g.v.view(), g.dout.view(), g.args, &rg).ok());
  ASSERT_TRUE(ref::backward(g.q.view(), k6.view(), v6.view(), g.dout.view(), g.args, &rm).ok());
  EXPECT_LT(max_abs_err(rg.dq, rm.dq), 1e-14);
  for (int64_t e = 0; e < g.k.numel(); ++e) {
    const int64_t d = e % 3, kh = e / 3 % 2, rest = e / 6;
    double sk = 0, sv = 0;
    for (int h = static_cast<int>(kh) * 3; h < (kh + 1) * 3; ++h) {
      sk += rm.dk[(rest * 6 + h) * 3 + d];
      sv += rm.dv[(rest * 6 + h) * 3 + d];
    }
    EXPECT_NEAR(rg.dk[e], sk, 1e-13);
    EXPECT_NEAR(rg.dv[e], sv, 1e-13);
  }
  ASSERT_TRUE(ref::forward(g.q.view(), g.k.view(), g.v.view(), g.args, &rg).ok());
  ASSERT_TRUE(ref::forward(g.q.view(), k6.view(), v6.view(), g.args, &rm).ok());
  EXPECT_LT(max_abs_err(rg.out, rm.out), 1e-14);
  EXPECT_LT(max_abs_err(rg.lse, rm.lse), 1e-14);
}

// A packed varlen problem equals one dense run per sequence (empty sequences included); with
// equal lengths it equals the dense batch exactly, dropout (indexed by sequence) included.
TEST(Reference, VarlenEqualsDense) {
  const std::vector<int> lq = {4, 0, 6, 3}, lk = {5, 3, 0, 7};
  Case c;
  c.hq = 2;
  c.hk = 1;
  c.d = 3;
  c.lens_q = lq;
  c.lens_k = lk;
  c.causal = true;
  c.alibi = Alibi::PerHead;
  CaseInputs in = make_inputs(c);
  ref::Result rv, gv;
  ASSERT_TRUE(ref::forward(in.q.view(), in.k.view(), in.v.view(), in.args, &rv).ok());
  ASSERT_TRUE(ref::backward(in.q.view(), in.k.view(), in.v.view(), in.dout.view(), in.args, &gv).ok());
  const int64_t tq = 13;
  int q0 = 0, k0 = 0;
  for (size_t b = 0; b < lq.size(); ++b) {
    // Dense copy of sequence b.
    HostTensor q(DType::F32, {1, lq[b], 2, 3}), k(DType::F32, {1, lk[b], 1, 3}), v(DType::F32, {1, lk[b], 1, 3}),
        dout(DType::F32, {1, lq[b], 2, 3});
    for (int64_t e = 0; e < q.numel(); ++e) {
      q.set(e, in.q.get(q0 * 6 + e));
      dout.set(e, in.dout.get(q0 * 6 + e));
    }
    for (int64_t e = 0; e < k.numel(); ++e) {
      k.set(e, in.k.get(k0 * 3 + e));
      v.set(e, in.v.get(k0 * 3 + e));
    }
    Args a = in.args;
    a.cu_seqlens_q = TensorView();
    a.cu_seqlens_k = TensorView();
    ref::Result rd, gd;
    ASSERT_TRUE(ref::forward(q.view(), k.view(), v.view(), a, &rd).ok());
    ASSERT_TRUE(ref::backward(q.view(), k.view(), v.view(), dout.view(), a, &gd).ok());
    for (int64_t e = 0; e < q.numel(); ++e) {
      EXPECT_EQ(rv.out[q0 * 6 + e], rd.out[e]);
      EXPECT_EQ(gv.dq[q0 * 6 + e], gd.dq[e]);
    }
    for (int h = 0; h < 2; ++h)
      for (int i = 0; i < lq[b]; ++i) EXPECT_EQ(rv.lse[h * tq + q0 + i], rd.lse[h * lq[b] + i]);
    for (int64_t e = 0; e < k.numel(); ++e) {
      EXPECT_EQ(gv.dk[k0 * 3 + e], gd.dk[e]);
      EXPECT_EQ(gv.dv[k0 * 3 + e], gd.dv[e]);
    }
    q0 += lq[b];
    k0 += lk[b];
  }

  // Equal lengths: varlen (3 sequences of 5 x 4) == dense batch 3, with dropout and batch slopes.
  Case d;
  d.batch = 3;
  d.hq = 2;
  d.hk = 2;
  d.sq = 5;
  d.sk = 4;
  d.d = 3;
  d.dropout_p = 0.3f;
  d.alibi = Alibi::PerBatchHead;
  d.window_left = 1;
  CaseInputs dn = make_inputs(d);
  Args a = dn.args;
  HostTensor cuq = tensor(DType::I32, {4}, {0, 5, 10, 15}), cuk = tensor(DType::I32, {4}, {0, 4, 8, 12});
  a.cu_seqlens_q = cuq.view();
  a.cu_seqlens_k = cuk.view();
  a.max_seqlen_q = 5;
  a.max_seqlen_k = 4;
  auto packed = [](const HostTensor& t) {  // (B, S, H, D) -> (B·S, H, D), same memory
    TensorView v = t.view();
    v.ndim = 3;
    v.shape[0] = t.shape()[0] * t.shape()[1];
    v.shape[1] = t.shape()[2];
    v.shape[2] = t.shape()[3];
    v.stride[0] = v.stride[1];
    v.stride[1] = v.stride[2];
    v.stride[2] = 1;
    return v;
  };
  ref::Result r1, r2;
  ASSERT_TRUE(ref::backward(dn.q.view(), dn.k.view(), dn.v.view(), dn.dout.view(), dn.args, &r1).ok());
  ASSERT_TRUE(ref::backward(packed(dn.q), packed(dn.k), packed(dn.v), packed(dn.dout), a, &r2).ok());
  EXPECT_EQ(r1.dq, r2.dq);
  EXPECT_EQ(r1.dk, r2.dk);
  EXPECT_EQ(r1.dv, r2.dv);
  ASSERT_TRUE(ref::forward(dn.q.view(), dn.k.view(), dn.v.view(), dn.args, &r1).ok());
  ASSERT_TRUE(ref::forward(packed(dn.q), packed(dn.k), packed(dn.v), a, &r2).ok());
  EXPECT_EQ(r1.out, r2.out);
  // LSE: (B, H, S) dense vs (H, B·S) varlen.
  for (int b = 0; b < 3; ++b)
    for (int h = 0; h < 2; ++h)
      for (int i = 0; i < 5; ++i) EXPECT_EQ(r1.lse[(b * 2 + h) * 5 + i], r2.lse[h * 15 + b * 5 + i]);
}

// The backward against central differences of the forward: L = Σ O·dO, so dL/dx = the gradient.
// Inputs are fp32 and the step is 2^-12 (x ± h is exact in fp32 unless it crosses a power of two,
// then the actual step is used); the difference is taken in double, so
// the truncation error is about h²/6·|L'''| ≈ 1e-8·|L'''|.
class ReferenceFiniteDifferences : public ::testing::TestWithParam<Case> {};

double loss(const CaseInputs& in, const HostTensor& dout) {
  ref::Result r;
  EXPECT_TRUE(ref::forward(in.q.view(), in.k.view(), in.v.view(), in.args, &r).ok());
  const std::vector<double> g = dout.values();
  double l = 0;
  for (size_t e = 0; e < g.size(); ++e) l += r.out[e] * g[e];
  return l;
}

TEST_P(ReferenceFiniteDifferences, BackwardMatches) {
  const Case& c = GetParam();
  CaseInputs in = make_inputs(c);
  ref::Result g;
  ASSERT_TRUE(ref::backward(in.q.view(), in.k.view(), in.v.view(), in.dout.view(), in.args, &g).ok());
  const double h = std::ldexp(1.0, -12);
  struct T { const char* name; HostTensor* t; const std::vector<double>* grad; };
  const T targets[] = {{"dq", &in.q, &g.dq}, {"dk", &in.k, &g.dk}, {"dv", &in.v, &g.dv}};
  for (const T& t : targets) {
    double gmax = 0;
    for (double x : *t.grad) gmax = std::max(gmax, std::fabs(x));
    double worst = 0;
    for (int64_t e = 0; e < t.t->numel(); ++e) {
      const double x = t.t->get(e);
      // x +- h rounds in fp32 where it crosses a power of two: divide by the actual step.
      t.t->set(e, x + h);
      const double xp = t.t->get(e), lp = loss(in, in.dout);
      t.t->set(e, x - h);
      const double xm = t.t->get(e), lm = loss(in, in.dout);
      t.t->set(e, x);
      worst = std::max(worst, std::fabs((lp - lm) / (xp - xm) - (*t.grad)[e]));
    }
    EXPECT_LT(worst, 1e-6 * std::max(1.0, gmax)) << t.name << ": max |fd - analytic| = " << worst
                                                 << ", max |grad| = " << gmax;
    EXPECT_GT(gmax, 0.0) << t.name << " is identically zero";
  }
}

std::vector<Case> fd_cases() {
  std::vector<Case> cs;
  auto add = [&](const char* name, auto&& tweak) {
    Case c;
    c.name = name;
    c.batch = 2;
    c.hq = 4;
    c.hk = 2;
    c.sq = 5;
    c.sk = 7;
    c.d = 3;
    c.dv = 2;
    c.seed = 1000 + cs.size();
    tweak(c);
    cs.push_back(c);
  };
  add("plain", [](Case&) {});
  add("causal_rows_empty", [](Case& c) { c.sq = 7; c.sk = 4; c.causal = true; });
  add("window", [](Case& c) { c.window_left = 1; c.window_right = 1; });
  add("softcap", [](Case& c) { c.softcap = 1.5f; c.scale = 0.8f; });
  add("alibi", [](Case& c) { c.alibi = Alibi::PerBatchHead; });
  add("dropout", [](Case& c) { c.dropout_p = 0.4f; });
  add("varlen_empty", [](Case& c) { c.lens_q = {3, 0, 4, 2}; c.lens_k = {2, 3, 0, 5}; c.causal = true; });
  add("everything", [](Case& c) {
    c.lens_q = {4, 6};
    c.lens_k = {6, 3};
    c.window_left = 2;
    c.softcap = 2.0f;
    c.alibi = Alibi::PerHead;
    c.dropout_p = 0.3f;
    c.scale = 0.6f;
  });
  return cs;
}

INSTANTIATE_TEST_SUITE_P(Reference, ReferenceFiniteDifferences, ::testing::ValuesIn(fd_cases()),
                         [](const ::testing::TestParamInfo<Case>& i) { return i.param.name; });

// Standard attention (the error baseline) is close to the reference and its error grows as the
// dtype narrows: fp32 < fp16 < bf16 (10 vs 7 mantissa bits), never zero in low precision.
TEST(Reference, StandardBaselineErrorOrdersByPrecision) {
  double err[3][2];  // dtype x {out, dq}
  const DType dts[] = {DType::F32, DType::F16, DType::BF16};
  for (int t = 0; t < 3; ++t) {
    Case c;
    c.dtype = dts[t];
    c.hq = 2;
    c.hk = 1;
    c.sq = 40;
    c.sk = 50;
    c.d = 32;
    c.causal = true;
    c.seed = 77;  // the same draw in every dtype (values then rounded to it)
    CaseInputs in = make_inputs(c);
    ref::Result r, s, gr, gs;
    ASSERT_TRUE(ref::forward(in.q.view(), in.k.view(), in.v.view(), in.args, &r).ok());
    ASSERT_TRUE(ref::standard_forward(in.q.view(), in.k.view(), in.v.view(), in.args, &s).ok());
    ASSERT_TRUE(ref::backward(in.q.view(), in.k.view(), in.v.view(), in.dout.view(), in.args, &gr).ok());
    ASSERT_TRUE(ref::standard_backward(in.q.view(), in.k.view(), in.v.view(), in.dout.view(), in.args, &gs).ok());
    err[t][0] = max_abs_err(s.out, r.out);
    err[t][1] = max_abs_err(gs.dq, gr.dq);
    EXPECT_LT(max_abs_err(s.lse, r.lse), 64 * unit_roundoff(dts[t]) * 8) << dtype_name(dts[t]);
  }
  for (int k = 0; k < 2; ++k) {
    EXPECT_GT(err[0][k], 0.0);
    EXPECT_LT(err[0][k], 1e-5);
    EXPECT_LT(err[0][k], err[1][k]);
    EXPECT_LT(err[1][k], err[2][k]);
    EXPECT_LT(err[2][k], 0.1);
  }
}

TEST(Reference, RowStrideComputesEveryNthRow) {
  Case c;
  c.batch = 2;
  c.hq = 2;
  c.sq = 30;
  c.sk = 20;
  c.d = 4;
  c.causal = true;
  CaseInputs in = make_inputs(c);
  ref::Result full, some;
  ASSERT_TRUE(ref::forward(in.q.view(), in.k.view(), in.v.view(), in.args, &full).ok());
  ASSERT_TRUE(ref::forward(in.q.view(), in.k.view(), in.v.view(), in.args, &some, 7).ok());
  for (int b = 0; b < 2; ++b)
    for (int h = 0; h < 2; ++h)
      for (int i = 0; i < 30; ++i) {
        const size_t l = (b * 2 + h) * 30 + i, o = ((b * 30 + i) * 2 + h) * 4;
        if (i % 7 == 0) {
          EXPECT_EQ(some.lse[l], full.lse[l]);
          EXPECT_EQ(some.out[o], full.out[o]);
        } else {
          EXPECT_TRUE(std::isnan(some.lse[l]) && std::isnan(some.out[o]));
        }
      }
}

// Row by row: a long key sequence needs O(Sk) memory, not O(Sq·Sk).
TEST(Reference, LongSequences) {
  Case c;
  c.sq = 16384;
  c.sk = 16384;
  c.d = 4;
  c.causal = true;
  CaseInputs in = make_inputs(c);
  ref::Result r;
  ASSERT_TRUE(ref::forward(in.q.view(), in.k.view(), in.v.view(), in.args, &r, 4096).ok());
  // Row 0 sees only key 0: O = V_0, LSE = its score.
  for (int d = 0; d < 4; ++d) EXPECT_NEAR(r.out[d], in.v.get(d), 1e-7);
  EXPECT_TRUE(std::isfinite(r.lse[4096]));
}

// The reference reads through strides: the same values in BHSD or padded memory give the same result.
TEST(Reference, LayoutDoesNotMatter) {
  for (bool varlen : {false, true}) {
    ref::Result base, other;
    for (Layout lay : {Layout::Contiguous, Layout::HeadMajor, Layout::Padded}) {
      Case c;
      c.dtype = DType::BF16;
      c.batch = 2;
      c.hq = 4;
      c.hk = 2;
      c.sq = 9;
      c.sk = 6;
      c.d = 5;
      c.dv = 3;
      if (varlen) {
        c.lens_q = {4, 0, 7};
        c.lens_k = {2, 5, 3};
      }
      c.causal = true;
      c.layout = lay;
      c.seed = 5;  // the same values in every layout
      CaseInputs in = make_inputs(c);
      ref::Result& r = lay == Layout::Contiguous ? base : other;
      ASSERT_TRUE(ref::backward(in.q.view(), in.k.view(), in.v.view(), in.dout.view(), in.args, &r).ok());
      ref::Result f;
      ASSERT_TRUE(ref::forward(in.q.view(), in.k.view(), in.v.view(), in.args, &f).ok());
      r.out = f.out;
      r.lse = f.lse;
      if (lay == Layout::Contiguous) continue;
      EXPECT_EQ(base.out, other.out) << layout_name(lay);
      EXPECT_EQ(base.lse, other.lse) << layout_name(lay);
      EXPECT_EQ(base.dq, other.dq) << layout_name(lay);
      EXPECT_EQ(base.dk, other.dk) << layout_name(lay);
      EXPECT_EQ(base.dv, other.dv) << layout_name(lay);
    }
  }
}

TEST(Reference, RejectsMalformedInput) {
  Case c;
  c.hq = 3;
  c.hk = 2;
  c.backward = false;
  CaseInputs in = make_inputs(c);
  ref::Result r;
  EXPECT_EQ(ref::forward(in.q.view(), in.k.view(), in.v.view(), in.args, &r).code, ErrorCode::InvalidShape);
  Case v;
  v.lens_q = {2, 3};
  v.lens_k = {2, 3};
  CaseInputs vin = make_inputs(v);
  vin.cu_q.set(1, 4);  // 0, 4, 5 is monotone; make it decrease
  vin.cu_q.set(2, 3);
  EXPECT_EQ(ref::forward(vin.q.view(), vin.k.view(), vin.v.view(), vin.args, &r).code, ErrorCode::InvalidIndex);
  CaseInputs ok = make_inputs(Case{});
  EXPECT_EQ(ref::forward(ok.q.view(), ok.k.view(), ok.v.view(), ok.args, &r, 0).code, ErrorCode::InvalidValue);
}

}  // namespace
}  // namespace ioattn::test
