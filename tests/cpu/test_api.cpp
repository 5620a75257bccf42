// API behaviour on the CPU beyond the numbers: workspace queries, determinism, optional LSE,
// empty problems, dispatch description, and the O(N) extra memory of DESIGN.md §4.
#include <gtest/gtest.h>

#include <limits>
#include <string>
#include <utility>

#include "attention_case.h"
#include "ioattn/ioattn.h"

namespace ioattn::test {
namespace {

Case gqa_case(int s, DType dt) {
  Case c;
  c.name = "api";
  c.dtype = dt;
  c.batch = 2;
  c.hq = 6;
  c.hk = 2;
  c.sq = s;
  c.sk = s + 3;
  c.d = 64;
  c.causal = true;
  c.dropout_p = 0.1f;
  c.seed = static_cast<uint64_t>(s) * 31 + static_cast<uint64_t>(dt);
  return c;
}

TEST(Api, WorkspaceQueriesReturnZeroOnCpu) {
  for (bool varlen : {false, true}) {
    Case c = gqa_case(65, DType::BF16);
    if (varlen) {
      c.lens_q = {3, 0, 65};
      c.lens_k = {9, 4, 0};
    }
    CaseInputs in = make_inputs(c);
    size_t bytes = 12345;
    Status s = forward_workspace_size(in.q.view(), in.k.view(), in.v.view(), in.args, &bytes);
    EXPECT_TRUE(s.ok()) << s.message;
    EXPECT_EQ(bytes, 0u);
    bytes = 12345;
    s = backward_workspace_size(in.q.view(), in.k.view(), in.v.view(), in.args, &bytes);
    EXPECT_TRUE(s.ok()) << s.message;
    EXPECT_EQ(bytes, 0u);
  }
}

// Bitwise equal gradients run after run, with few (batch·Hk = 4) and many (= 8) tasks: the backend's
// two backward strategies (src/cpu/backend.cpp).
TEST(Api, BackwardIsDeterministic) {
  for (auto [dt, batch] : {std::pair{DType::F32, 2}, std::pair{DType::BF16, 2}, std::pair{DType::F16, 4}}) {
    Case c = gqa_case(257, dt);
    c.batch = batch;
    CaseInputs in = make_inputs(c);
    in.args.deterministic = true;
    HostTensor out(dt, in.out_shape), lse(DType::F32, in.lse_shape);
    ASSERT_TRUE(forward(in.q.view(), in.k.view(), in.v.view(), out.view(), lse.view(), in.args).ok());
    std::vector<uint8_t> first[3];
    for (int run = 0; run < 2; ++run) {
      HostTensor dq(dt, in.q.shape()), dk(dt, in.k.shape()), dv(dt, in.v.shape());
      dq.poison();
      dk.poison();
      dv.poison();
      const Status s = backward(in.q.view(), in.k.view(), in.v.view(), out.view(), in.dout.view(), lse.view(),
                                dq.view(), dk.view(), dv.view(), in.args);
      ASSERT_TRUE(s.ok()) << s.message;
      if (run == 0) {
        first[0] = dq.bytes();
        first[1] = dk.bytes();
        first[2] = dv.bytes();
      } else {
        EXPECT_TRUE(dq.bytes() == first[0]) << dtype_name(dt) << ": dq differs between two runs";
        EXPECT_TRUE(dk.bytes() == first[1]) << dtype_name(dt) << ": dk differs between two runs";
        EXPECT_TRUE(dv.bytes() == first[2]) << dtype_name(dt) << ": dv differs between two runs";
      }
    }
  }
}

TEST(Api, ForwardIsDeterministicAndLseIsOptional) {
  const Case c = gqa_case(129, DType::F16);
  CaseInputs in = make_inputs(c);
  HostTensor o1(c.dtype, in.out_shape), o2(c.dtype, in.out_shape), lse(DType::F32, in.lse_shape);
  o1.poison();
  o2.poison();
  ASSERT_TRUE(forward(in.q.view(), in.k.view(), in.v.view(), o1.view(), lse.view(), in.args).ok());
  ASSERT_TRUE(forward(in.q.view(), in.k.view(), in.v.view(), o2.view(), TensorView(), in.args).ok());
  EXPECT_TRUE(o1.bytes() == o2.bytes()) << "out differs with and without lse requested";
}

// Zero-length dimensions are legal: nothing to compute (Sq = 0), or rows that see no key (Sk = 0:
// O = 0, LSE = -inf, dQ = 0). Also a whole batch of 0.
TEST(Api, EmptyProblems) {
  struct E { int b, sq, sk; };
  for (const E& e : {E{1, 0, 5}, E{2, 3, 0}, E{0, 4, 4}}) {
    Case c;
    c.batch = e.b;
    c.hq = 2;
    c.hk = 1;
    c.sq = e.sq;
    c.sk = e.sk;
    c.d = 16;
    c.causal = true;
    CaseInputs in = make_inputs(c);
    HostTensor out(c.dtype, in.out_shape), lse(DType::F32, in.lse_shape);
    HostTensor dq(c.dtype, in.q.shape()), dk(c.dtype, in.k.shape()), dv(c.dtype, in.v.shape());
    for (HostTensor* t : {&out, &lse, &dq, &dk, &dv}) t->poison();
    Status s = forward(in.q.view(), in.k.view(), in.v.view(), out.view(), lse.view(), in.args);
    ASSERT_TRUE(s.ok()) << "B=" << e.b << " Sq=" << e.sq << " Sk=" << e.sk << ": " << s.message;
    for (int64_t i = 0; i < out.numel(); ++i) EXPECT_EQ(out.get(i), 0.0);
    for (int64_t i = 0; i < lse.numel(); ++i) EXPECT_EQ(lse.get(i), -INFINITY);
    s = backward(in.q.view(), in.k.view(), in.v.view(), out.view(), in.dout.view(), lse.view(), dq.view(), dk.view(),
                 dv.view(), in.args);
    ASSERT_TRUE(s.ok()) << "B=" << e.b << " Sq=" << e.sq << " Sk=" << e.sk << ": " << s.message;
    for (int64_t i = 0; i < dq.numel(); ++i) EXPECT_EQ(dq.get(i), 0.0);
    // Keys no query sees (Sq = 0) get zero gradients.
    for (int64_t i = 0; i < dk.numel(); ++i) EXPECT_EQ(dk.get(i), 0.0);
    for (int64_t i = 0; i < dv.numel(); ++i) EXPECT_EQ(dv.get(i), 0.0);
  }
}

// softmax_scale <= 0 or NaN means 1/sqrt(head_dim): bitwise the same call as passing 0.
TEST(Api, DefaultScale) {
  const Case c = gqa_case(70, DType::F32);
  CaseInputs in = make_inputs(c);
  HostTensor ref_out(c.dtype, in.out_shape);
  in.args.softmax_scale = 0.0f;
  ASSERT_TRUE(forward(in.q.view(), in.k.view(), in.v.view(), ref_out.view(), TensorView(), in.args).ok());
  for (float s : {-1.0f, std::numeric_limits<float>::quiet_NaN(), 1.0f / 8.0f}) {  // d = 64: 1/sqrt(64)
    HostTensor out(c.dtype, in.out_shape);
    out.poison();
    in.args.softmax_scale = s;
    ASSERT_TRUE(forward(in.q.view(), in.k.view(), in.v.view(), out.view(), TensorView(), in.args).ok());
    EXPECT_TRUE(out.bytes() == ref_out.bytes()) << "softmax_scale = " << s;
  }
}

TEST(Api, DescribesTheCpuChoice) {
  CaseInputs in = make_inputs(gqa_case(64, DType::F32));
  const std::string d = describe_forward_choice(in.q.view(), in.k.view(), in.v.view(), in.args);
  EXPECT_EQ(d.rfind("cpu", 0), 0u) << d;
  in.args.dropout_p = 2.0f;
  const std::string bad = describe_forward_choice(in.q.view(), in.k.view(), in.v.view(), in.args);
  EXPECT_EQ(bad.rfind("none", 0), 0u) << bad;
}

// Extra memory is O(N), not O(N²): at Sq = Sk = 4096 the N² score matrix of one head would be
// 64 MiB in fp32; the backend's peak scratch must stay far below it, forward and backward.
TEST(Api, ScratchMemoryIsLinear) {
  Case c;
  c.hq = 1;
  c.hk = 1;
  c.sq = 4096;
  c.sk = 4096;
  c.d = 32;
  c.causal = true;
  CaseInputs in = make_inputs(c);
  HostTensor out(c.dtype, in.out_shape), lse(DType::F32, in.lse_shape);
  HostTensor dq(c.dtype, in.q.shape()), dk(c.dtype, in.k.shape()), dv(c.dtype, in.v.shape());
  const size_t n2 = size_t{4096} * 4096 * sizeof(float);
  reset_cpu_peak_scratch_bytes();
  ASSERT_TRUE(forward(in.q.view(), in.k.view(), in.v.view(), out.view(), lse.view(), in.args).ok());
  const size_t fwd = cpu_peak_scratch_bytes();
  EXPECT_LT(fwd, n2 / 8) << "forward peak scratch " << fwd << " bytes";
  reset_cpu_peak_scratch_bytes();
  ASSERT_TRUE(backward(in.q.view(), in.k.view(), in.v.view(), out.view(), in.dout.view(), lse.view(), dq.view(),
                       dk.view(), dv.view(), in.args)
                  .ok());
  const size_t bwd = cpu_peak_scratch_bytes();
  EXPECT_LT(bwd, n2 / 8) << "backward peak scratch " << bwd << " bytes";
}

}  // namespace
}  // namespace ioattn::test
