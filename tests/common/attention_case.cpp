#include "attention_case.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <sstream>

#include "error_rule.h"
#include "reference/reference.h"

namespace ioattn::test {

std::string sanitize(const std::string& s) {
  std::string r = s;
  for (char& ch : r)
    if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
  return r;
}

std::string Case::describe() const {
  std::ostringstream os;
  os << name << ": " << dtype_name(dtype) << " B=" << batch << " Hq=" << hq << " Hk=" << hk;
  if (varlen()) {
    os << " varlen q=[";
    for (size_t i = 0; i < lens_q.size(); ++i) os << (i ? "," : "") << lens_q[i];
    os << "] k=[";
    for (size_t i = 0; i < lens_k.size(); ++i) os << (i ? "," : "") << lens_k[i];
    os << "]";
  } else {
    os << " Sq=" << sq << " Sk=" << sk;
  }
  os << " d=" << d << " dv=" << head_dim_v();
  if (causal) os << " causal";
  if (ref_row_stride > 1) os << " checked rows: every " << ref_row_stride << "th";
  if (window_left >= 0 || window_right >= 0) os << " window=(" << window_left << "," << window_right << ")";
  if (softcap > 0) os << " softcap=" << softcap;
  if (scale > 0) os << " scale=" << scale;
  if (dropout_p > 0) os << " dropout=" << dropout_p;
  if (alibi == Alibi::PerHead) os << " alibi=head";
  if (alibi == Alibi::PerBatchHead) os << " alibi=batch*head";
  os << " layout=" << layout_name(layout) << (backward ? " fwd+bwd" : " fwd") << " seed=" << seed;
  return os.str();
}

void PrintTo(const Case& c, std::ostream* os) { *os << c.describe(); }

CaseInputs make_inputs(const Case& c) {
  CaseInputs in;
  std::mt19937_64 rng(c.seed * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull);
  const int dv = c.head_dim_v();
  int batch = c.batch;
  if (c.varlen()) {
    batch = static_cast<int>(c.lens_q.size());
    int64_t tq = 0, tk = 0;
    int mq = 0, mk = 0;
    in.cu_q = HostTensor(DType::I32, {batch + 1});
    in.cu_k = HostTensor(DType::I32, {batch + 1});
    in.cu_q.set(0, 0);
    in.cu_k.set(0, 0);
    for (int b = 0; b < batch; ++b) {
      tq += c.lens_q[b];
      tk += c.lens_k[b];
      mq = std::max(mq, c.lens_q[b]);
      mk = std::max(mk, c.lens_k[b]);
      in.cu_q.set(b + 1, static_cast<double>(tq));
      in.cu_k.set(b + 1, static_cast<double>(tk));
    }
    in.q = HostTensor(c.dtype, {tq, c.hq, c.d}, c.layout);
    in.k = HostTensor(c.dtype, {tk, c.hk, c.d}, c.layout);
    in.v = HostTensor(c.dtype, {tk, c.hk, dv}, c.layout);
    in.out_shape = {tq, c.hq, dv};
    in.lse_shape = {c.hq, tq};
    in.args.cu_seqlens_q = in.cu_q.view();
    in.args.cu_seqlens_k = in.cu_k.view();
    in.args.max_seqlen_q = mq;
    in.args.max_seqlen_k = mk;
  } else {
    in.q = HostTensor(c.dtype, {c.batch, c.sq, c.hq, c.d}, c.layout);
    in.k = HostTensor(c.dtype, {c.batch, c.sk, c.hk, c.d}, c.layout);
    in.v = HostTensor(c.dtype, {c.batch, c.sk, c.hk, dv}, c.layout);
    in.out_shape = {c.batch, c.sq, c.hq, dv};
    in.lse_shape = {c.batch, c.hq, c.sq};
  }
  in.q.fill_normal(rng);
  in.k.fill_normal(rng);
  in.v.fill_normal(rng);
  in.dout = HostTensor(c.dtype, in.out_shape, c.layout);
  in.dout.fill_normal(rng);
  if (c.alibi != Alibi::None) {
    in.slopes = c.alibi == Alibi::PerHead ? HostTensor(DType::F32, {c.hq}) : HostTensor(DType::F32, {batch, c.hq});
    std::uniform_real_distribution<double> u(0.01, 1.0);
    for (int64_t e = 0; e < in.slopes.numel(); ++e) in.slopes.set(e, u(rng));
    in.args.alibi_slopes = in.slopes.view();
  }
  in.args.causal = c.causal;
  in.args.window_left = c.window_left;
  in.args.window_right = c.window_right;
  in.args.softcap = c.softcap;
  in.args.softmax_scale = c.scale;
  in.args.dropout_p = c.dropout_p;
  in.args.seed = c.seed ^ 0xD1B54A32D192ED03ull;
  in.args.offset = c.seed % 977;
  return in;
}

namespace {

// Rows (of the contiguous (rows, heads, dim) reference layout) whose LSE is -inf must be exactly
// zero in `x`; returns how many elements are not.
int64_t nonzero_in_empty_rows(const Case& c, const std::vector<double>& ref_lse, const std::vector<double>& x,
                              int dim) {
  // LSE is (B, Hq, Sq) dense or (Hq, Tq) varlen; x is (B, Sq, Hq, dim) or (Tq, Hq, dim).
  int64_t bad = 0;
  const int64_t rows = c.varlen() ? static_cast<int64_t>(ref_lse.size() / c.hq) : c.sq;
  const int batches = c.varlen() ? 1 : c.batch;
  for (int b = 0; b < batches; ++b)
    for (int h = 0; h < c.hq; ++h)
      for (int64_t i = 0; i < rows; ++i) {
        const double l = c.varlen() ? ref_lse[h * rows + i] : ref_lse[(static_cast<int64_t>(b) * c.hq + h) * rows + i];
        if (!(std::isinf(l) && l < 0)) continue;
        const int64_t base = ((static_cast<int64_t>(b) * rows + i) * c.hq + h) * dim;
        for (int d = 0; d < dim; ++d) bad += x[base + d] != 0.0 ? 1 : 0;
      }
  return bad;
}

}  // namespace

void run_case(const Case& c) {
  SCOPED_TRACE(c.describe());
  CaseInputs in = make_inputs(c);
  const std::vector<uint8_t> q0 = in.q.bytes(), k0 = in.k.bytes(), v0 = in.v.bytes(), do0 = in.dout.bytes();

  HostTensor out(c.dtype, in.out_shape, c.layout), lse(DType::F32, in.lse_shape);
  out.poison();
  lse.poison();
  Status s = forward(in.q.view(), in.k.view(), in.v.view(), out.view(), lse.view(), in.args);
  ASSERT_TRUE(s.ok()) << "forward: " << error_code_name(s.code) << ": " << s.message;
  EXPECT_EQ(out.count_nan(), 0) << "forward left elements of out unwritten (or wrote NaN)";
  EXPECT_EQ(lse.count_nan(), 0) << "forward left elements of lse unwritten (or wrote NaN)";
  EXPECT_TRUE(out.gaps_poisoned()) << "forward wrote outside the out view";

  ref::Result r64, rstd;
  ASSERT_TRUE(c.ref_row_stride == 1 || !c.backward) << "row sampling is for forward-only cases";
  s = ref::forward(in.q.view(), in.k.view(), in.v.view(), in.args, &r64, c.ref_row_stride);
  ASSERT_TRUE(s.ok()) << s.message;
  s = ref::standard_forward(in.q.view(), in.k.view(), in.v.view(), in.args, &rstd, c.ref_row_stride);
  ASSERT_TRUE(s.ok()) << s.message;
  const std::vector<double> o = out.values(), l = lse.values();
  EXPECT_TRUE(within_rule("out", c.dtype, o, r64.out, rstd.out));
  // LSE is fp32 in every dtype: its slack is fp32's.
  EXPECT_TRUE(within_rule("lse", DType::F32, l, r64.lse, rstd.lse));
  EXPECT_EQ(nonzero_in_empty_rows(c, r64.lse, o, c.head_dim_v()), 0) << "rows that see no key must give O = 0";

  if (c.backward) {
    HostTensor dq(c.dtype, in.q.shape(), c.layout), dk(c.dtype, in.k.shape(), c.layout),
        dv(c.dtype, in.v.shape(), c.layout);
    dq.poison();
    dk.poison();
    dv.poison();
    const std::vector<uint8_t> out0 = out.bytes(), lse0 = lse.bytes();
    s = backward(in.q.view(), in.k.view(), in.v.view(), out.view(), in.dout.view(), lse.view(), dq.view(), dk.view(),
                 dv.view(), in.args);
    ASSERT_TRUE(s.ok()) << "backward: " << error_code_name(s.code) << ": " << s.message;
    EXPECT_EQ(dq.count_nan(), 0) << "backward left elements of dq unwritten (or wrote NaN)";
    EXPECT_EQ(dk.count_nan(), 0) << "backward left elements of dk unwritten (or wrote NaN)";
    EXPECT_EQ(dv.count_nan(), 0) << "backward left elements of dv unwritten (or wrote NaN)";
    EXPECT_TRUE(dq.gaps_poisoned() && dk.gaps_poisoned() && dv.gaps_poisoned())
        << "backward wrote outside a gradient view";
    EXPECT_TRUE(out.bytes() == out0 && lse.bytes() == lse0) << "backward modified out or lse";

    ref::Result g64, gstd;
    s = ref::backward(in.q.view(), in.k.view(), in.v.view(), in.dout.view(), in.args, &g64);
    ASSERT_TRUE(s.ok()) << s.message;
    s = ref::standard_backward(in.q.view(), in.k.view(), in.v.view(), in.dout.view(), in.args, &gstd);
    ASSERT_TRUE(s.ok()) << s.message;
    const std::vector<double> gq = dq.values();
    EXPECT_TRUE(within_rule("dq", c.dtype, gq, g64.dq, gstd.dq, true));
    EXPECT_TRUE(within_rule("dk", c.dtype, dk.values(), g64.dk, gstd.dk, true));
    EXPECT_TRUE(within_rule("dv", c.dtype, dv.values(), g64.dv, gstd.dv, true));
    EXPECT_EQ(nonzero_in_empty_rows(c, r64.lse, gq, c.d), 0) << "rows that see no key must give dQ = 0";
  }
  EXPECT_TRUE(in.q.bytes() == q0 && in.k.bytes() == k0 && in.v.bytes() == v0 && in.dout.bytes() == do0)
      << "an input was modified";
}

}  // namespace ioattn::test
