// Malformed calls (DESIGN.md §3): each returns its named ErrorCode with a message, and nothing is
// written: every output (and every input) is poisoned or filled first and compared byte for byte
// afterwards. Each call starts from a valid one (checked to succeed) and breaks one thing.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "host_tensor.h"
#include "ioattn/ioattn.h"

namespace ioattn::test {
namespace {

constexpr int64_t B = 2, Sq = 6, Sk = 7, Hq = 4, Hk = 2, D = 8;

// A valid forward or backward call (dense or varlen) whose views can be broken one at a time.
struct Call {
  bool backward = false, varlen = false;
  HostTensor q, k, v, out, lse, dout, dq, dk, dv, cu_q, cu_k, slopes, slopes16;
  TensorView Q, K, V, O, L, dO, dQ, dK, dV;
  Args args;

  Call(bool bwd, bool vl) : backward(bwd), varlen(vl) {
    std::mt19937_64 rng(bwd * 2 + vl + 17);
    const std::vector<int64_t> qs = vl ? std::vector<int64_t>{B * Sq, Hq, D} : std::vector<int64_t>{B, Sq, Hq, D};
    const std::vector<int64_t> ks = vl ? std::vector<int64_t>{B * Sk, Hk, D} : std::vector<int64_t>{B, Sk, Hk, D};
    const std::vector<int64_t> ls = vl ? std::vector<int64_t>{Hq, B * Sq} : std::vector<int64_t>{B, Hq, Sq};
    q = HostTensor(DType::F32, qs);
    k = HostTensor(DType::F32, ks);
    v = HostTensor(DType::F32, ks);
    out = HostTensor(DType::F32, qs);
    dout = HostTensor(DType::F32, qs);
    lse = HostTensor(DType::F32, ls);
    dq = HostTensor(DType::F32, qs);
    dk = HostTensor(DType::F32, ks);
    dv = HostTensor(DType::F32, ks);
    for (HostTensor* t : {&q, &k, &v, &dout, &out, &lse}) t->fill_normal(rng);
    for (HostTensor* t : {&dq, &dk, &dv}) t->poison();
    if (!bwd) {
      out.poison();
      lse.poison();
    }
    slopes = HostTensor(DType::F32, {B + 1, Hq + 1});
    slopes.fill_normal(rng);
    slopes16 = HostTensor(DType::F16, {Hq});
    slopes16.fill_normal(rng);
    cu_q = HostTensor(DType::I32, {B + 1});
    cu_k = HostTensor(DType::I32, {B + 1});
    for (int b = 0; b <= B; ++b) {
      cu_q.set(b, static_cast<double>(b * Sq));
      cu_k.set(b, static_cast<double>(b * Sk));
    }
    Q = q.view(); K = k.view(); V = v.view(); O = out.view(); L = lse.view();
    dO = dout.view(); dQ = dq.view(); dK = dk.view(); dV = dv.view();
    if (vl) {
      args.cu_seqlens_q = cu_q.view();
      args.cu_seqlens_k = cu_k.view();
      args.max_seqlen_q = Sq;
      args.max_seqlen_k = Sk;
    }
  }

  Status run() const {
    return backward ? ioattn::backward(Q, K, V, O, dO, L, dQ, dK, dV, args) : ioattn::forward(Q, K, V, O, L, args);
  }

  std::vector<std::vector<uint8_t>> snapshot() const {
    std::vector<std::vector<uint8_t>> s;
    for (const HostTensor* t : {&q, &k, &v, &out, &lse, &dout, &dq, &dk, &dv, &cu_q, &cu_k, &slopes, &slopes16})
      s.push_back(t->bytes());
    return s;
  }
};

// Views of a (heads) or (batch, heads) slice of the slope buffer.
TensorView slope_view(const Call& c, std::vector<int64_t> shape) {
  TensorView t = c.slopes.view();
  t.ndim = static_cast<int>(shape.size());
  for (int i = 0; i < t.ndim; ++i) t.shape[i] = shape[i];
  t.stride[t.ndim - 1] = 1;
  if (t.ndim == 2) t.stride[0] = Hq + 1;
  return t;
}

struct Malformed {
  std::string name;
  bool backward, varlen;
  std::function<void(Call&)> breaks;
  ErrorCode expect;
};

std::vector<Malformed> malformed_calls() {
  constexpr bool F = false, T = true;
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  using E = ErrorCode;
  return {
      // Shapes.
      {"HeadsNotDivisible", F, F, [](Call& c) { c.K.shape[2] = 3; c.V.shape[2] = 3; }, E::InvalidShape},
      {"KHeadDimDiffers", F, F, [](Call& c) { c.K.shape[3] = 4; }, E::InvalidShape},
      {"VSeqlenDiffersFromK", F, F, [](Call& c) { c.V.shape[1] = Sk - 1; }, E::InvalidShape},
      {"VHeadsDifferFromK", F, F, [](Call& c) { c.V.shape[2] = 1; }, E::InvalidShape},
      {"BatchDiffers", F, F, [](Call& c) { c.K.shape[0] = 1; c.V.shape[0] = 1; }, E::InvalidShape},
      {"DenseQWithThreeDims", F, F, [](Call& c) { c.Q.ndim = 3; }, E::InvalidShape},
      {"HeadDimZero", F, F, [](Call& c) { c.Q.shape[3] = 0; c.K.shape[3] = 0; }, E::InvalidShape},
      {"NegativeSize", F, F, [](Call& c) { c.K.shape[1] = -7; c.V.shape[1] = -7; }, E::InvalidShape},
      {"OutHeadDimDiffersFromV", F, F, [](Call& c) { c.O.shape[3] = 4; }, E::InvalidShape},
      {"OutSeqlenDiffersFromQ", F, F, [](Call& c) { c.O.shape[1] = Sq - 1; }, E::InvalidShape},
      {"LseWrongShape", F, F, [](Call& c) { c.L.shape[2] = Sq - 1; }, E::InvalidShape},
      {"NullQ", F, F, [](Call& c) { c.Q.data = nullptr; }, E::InvalidShape},
      {"NullOut", F, F, [](Call& c) { c.O.data = nullptr; }, E::InvalidShape},
      // Dtypes.
      {"QInt32", F, F, [](Call& c) { c.Q.dtype = DType::I32; }, E::InvalidDType},
      {"KDtypeDiffersFromQ", F, F, [](Call& c) { c.K.dtype = DType::F16; }, E::InvalidDType},
      {"OutDtypeDiffers", F, F, [](Call& c) { c.O.dtype = DType::BF16; }, E::InvalidDType},
      {"LseNotFp32", F, F, [](Call& c) { c.L.dtype = DType::F16; }, E::InvalidDType},
      // Strides and aliasing.
      {"NegativeStride", F, F, [](Call& c) { c.K.stride[1] = -c.K.stride[1]; }, E::InvalidStride},
      {"LastDimNotContiguous", F, F, [](Call& c) { c.Q.stride[3] = 2; }, E::InvalidStride},
      {"LseNotContiguous", F, F, [](Call& c) { c.L.stride[0] = Hq * Sq + 1; }, E::InvalidStride},
      {"OutOverlapsQ", F, F, [](Call& c) { c.O = c.Q; }, E::InvalidStride},
      {"OutOverlapsV", F, F, [](Call& c) { c.O.data = c.V.data; }, E::InvalidStride},
      {"OutSelfOverlapping", F, F, [](Call& c) { c.O.stride[1] = 0; }, E::InvalidStride},
      {"LseOverlapsOut", F, F, [](Call& c) { c.L.data = c.O.data; }, E::InvalidStride},
      // Devices.
      {"KOnCudaQOnCpu", F, F, [](Call& c) { c.K.device = DeviceType::CUDA; }, E::DeviceMismatch},
      {"OutOnCuda", F, F, [](Call& c) { c.O.device = DeviceType::CUDA; }, E::DeviceMismatch},
      {"LseOnOtherDeviceIndex", F, F, [](Call& c) { c.L.device_index = 1; }, E::DeviceMismatch},
      // Scalars.
      {"DropoutOne", F, F, [](Call& c) { c.args.dropout_p = 1.0f; }, E::InvalidValue},
      {"DropoutNegative", F, F, [](Call& c) { c.args.dropout_p = -0.1f; }, E::InvalidValue},
      {"DropoutNaN", F, F, [nan](Call& c) { c.args.dropout_p = nan; }, E::InvalidValue},
      {"CausalWithWindowRight", F, F, [](Call& c) { c.args.causal = true; c.args.window_right = 2; }, E::InvalidValue},
      {"WindowLeftBelowMinusOne", F, F, [](Call& c) { c.args.window_left = -2; }, E::InvalidValue},
      {"WindowRightBelowMinusOne", F, F, [](Call& c) { c.args.window_right = -5; }, E::InvalidValue},
      {"SoftcapNegative", F, F, [](Call& c) { c.args.softcap = -1.0f; }, E::InvalidValue},
      {"SoftcapInfinite", F, F, [inf](Call& c) { c.args.softcap = inf; }, E::InvalidValue},
      {"SoftcapNaN", F, F, [nan](Call& c) { c.args.softcap = nan; }, E::InvalidValue},
      {"ScaleInfinite", F, F, [inf](Call& c) { c.args.softmax_scale = inf; }, E::InvalidValue},
      // ALiBi slopes.
      {"AlibiWrongHeads", F, F, [](Call& c) { c.args.alibi_slopes = slope_view(c, {Hq + 1}); }, E::InvalidShape},
      {"AlibiWrongBatch", F, F, [](Call& c) { c.args.alibi_slopes = slope_view(c, {B + 1, Hq}); }, E::InvalidShape},
      {"AlibiThreeDims", F, F,
       [](Call& c) { c.args.alibi_slopes = slope_view(c, {1, B, Hq}); c.args.alibi_slopes.stride[1] = Hq + 1; },
       E::InvalidShape},
      {"AlibiFp16", F, F, [](Call& c) { c.args.alibi_slopes = c.slopes16.view(); }, E::InvalidDType},
      {"AlibiOnCuda", F, F,
       [](Call& c) { c.args.alibi_slopes = slope_view(c, {Hq}); c.args.alibi_slopes.device = DeviceType::CUDA; },
       E::DeviceMismatch},
      // Variable length.
      {"CuSeqlensNonMonotone", F, T, [](Call& c) { c.cu_q.set(1, 8); c.cu_q.set(2, 7); }, E::InvalidIndex},
      {"CuSeqlensNotStartingAtZero", F, T, [](Call& c) { c.cu_k.set(0, 1); }, E::InvalidIndex},
      {"CuSeqlensPastTotal", F, T, [](Call& c) { c.cu_k.set(2, B * Sk + 1); }, E::InvalidIndex},
      {"SequenceLongerThanMaxSeqlen", F, T, [](Call& c) { c.args.max_seqlen_q = Sq - 1; }, E::InvalidIndex},
      {"MaxSeqlenNegative", F, T, [](Call& c) { c.args.max_seqlen_k = -1; }, E::InvalidValue},
      {"OnlyCuSeqlensQ", F, T, [](Call& c) { c.args.cu_seqlens_k = TensorView(); }, E::InvalidShape},
      {"CuSeqlensFp32", F, T, [](Call& c) { c.args.cu_seqlens_q.dtype = DType::F32; }, E::InvalidDType},
      {"CuSeqlensLengthsDiffer", F, T, [](Call& c) { c.args.cu_seqlens_k.shape[0] = B; }, E::InvalidShape},
      {"CuSeqlensOnCuda", F, T, [](Call& c) { c.args.cu_seqlens_q.device = DeviceType::CUDA; }, E::DeviceMismatch},
      {"VarlenLseWrongShape", F, T, [](Call& c) { c.L.shape[1] = B * Sq - 1; }, E::InvalidShape},
      {"VarlenQWithFourDims", F, T, [](Call& c) { c.Q.ndim = 4; c.Q.shape[3] = 1; c.Q.stride[3] = 1; }, E::InvalidShape},
      // Backward.
      {"BwdLseMissing", T, F, [](Call& c) { c.L = TensorView(); }, E::InvalidShape},
      {"BwdLseWrongShape", T, F, [](Call& c) { c.L.shape[1] = Hk; }, E::InvalidShape},
      {"BwdDoutWrongShape", T, F, [](Call& c) { c.dO.shape[1] = Sq - 1; }, E::InvalidShape},
      {"BwdDkWrongShape", T, F, [](Call& c) { c.dK.shape[3] = D / 2; }, E::InvalidShape},
      {"BwdDqWrongDtype", T, F, [](Call& c) { c.dQ.dtype = DType::F16; }, E::InvalidDType},
      {"BwdDqOverlapsQ", T, F, [](Call& c) { c.dQ = c.Q; }, E::InvalidStride},
      {"BwdDkOverlapsDv", T, F, [](Call& c) { c.dV = c.dK; }, E::InvalidStride},
      {"BwdDvOverlapsDout", T, F, [](Call& c) { c.dV.data = c.dO.data; }, E::InvalidStride},
      {"BwdDqOverlapsLse", T, F, [](Call& c) { c.dQ.data = c.L.data; }, E::InvalidStride},
      {"BwdDqSelfOverlapping", T, F, [](Call& c) { c.dQ.stride[2] = 0; }, E::InvalidStride},
      {"BwdDoutOnCuda", T, F, [](Call& c) { c.dO.device = DeviceType::CUDA; }, E::DeviceMismatch},
      {"BwdDropoutOne", T, F, [](Call& c) { c.args.dropout_p = 1.0f; }, E::InvalidValue},
      {"BwdVarlenCuSeqlensNonMonotone", T, T, [](Call& c) { c.cu_k.set(1, 10); c.cu_k.set(2, 3); }, E::InvalidIndex},
  };
}

void PrintTo(const Malformed& m, std::ostream* os) {
  *os << m.name << (m.backward ? " (backward" : " (forward") << (m.varlen ? ", varlen) -> " : ") -> ")
      << error_code_name(m.expect);
}

class MalformedCall : public ::testing::TestWithParam<Malformed> {};

TEST_P(MalformedCall, ReturnsNamedErrorAndWritesNothing) {
  const Malformed& m = GetParam();
  Call c(m.backward, m.varlen);
  m.breaks(c);
  const auto before = c.snapshot();
  const Status s = c.run();
  EXPECT_EQ(s.code, m.expect) << "got " << error_code_name(s.code) << " (\"" << s.message << "\"), expected "
                              << error_code_name(m.expect);
  EXPECT_FALSE(s.message.empty()) << "an error must say which argument is wrong";
  EXPECT_TRUE(c.snapshot() == before) << "a rejected call modified memory";
  if (!m.backward) {  // the workspace queries validate like the call itself
    size_t bytes = 12345;
    const Status w = forward_workspace_size(c.Q, c.K, c.V, c.args, &bytes);
    const bool about_outputs = m.name.find("Out") != std::string::npos || m.name.find("Lse") != std::string::npos;
    if (!about_outputs) {  // (the query has no out / lse to check)
      EXPECT_EQ(w.code, m.expect) << w.message;
    }
    if (!w.ok()) {
      EXPECT_EQ(bytes, 0u);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Validation, MalformedCall, ::testing::ValuesIn(malformed_calls()),
                         [](const ::testing::TestParamInfo<Malformed>& i) { return i.param.name; });

// The unbroken calls succeed, so each failure above is caused by its one change.
TEST(Validation, UnbrokenCallsSucceed) {
  for (bool vl : {false, true}) {
    Call f(false, vl);
    Status s = f.run();
    ASSERT_TRUE(s.ok()) << (vl ? "varlen " : "dense ") << "forward: " << s.message;
    EXPECT_EQ(f.out.count_nan(), 0);
    Call b(true, vl);
    b.out = f.out;  // backward from the forward's out and lse
    b.lse = f.lse;
    b.O = b.out.view();
    b.L = b.lse.view();
    s = b.run();
    ASSERT_TRUE(s.ok()) << (vl ? "varlen " : "dense ") << "backward: " << s.message;
    EXPECT_EQ(b.dq.count_nan() + b.dk.count_nan() + b.dv.count_nan(), 0);
  }
}

TEST(Validation, AtLeastTwentyDistinctMalformedCalls) {
  EXPECT_GE(malformed_calls().size(), 20u);
}

}  // namespace
}  // namespace ioattn::test
