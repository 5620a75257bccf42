// GPU tests of the CUDA backend (ioattn_gpu_tests; run by scripts/gpu_check.sh on a GPU machine,
// labelled GPU for ctest so CI can exclude it). Every case: fresh random inputs (tests/common),
// outputs poisoned with a NaN pattern before the call and checked fully written, nothing written
// outside the views or into the inputs, O and LSE (and dQ/dK/dV when the build has the CUDA
// backward) against the float64 reference under DESIGN.md §1's error rule (tests/common/error_rule.h).
// Dropout is covered by the same comparison: the reference draws its mask from the same Philox
// stream (src/core/philox.h), so any mask difference shows up as a large error.
//
// Suites: Small/* (short shapes, also run under compute-sanitizer), Features/* (every feature and
// edge shape), Large/* (long sequences, reference on sampled rows), GpuContract.* (determinism,
// graph capture, named errors on bad inputs).
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "common/attention_case.h"
#include "common/error_rule.h"
#include "common/host_tensor.h"
#include "device_buffer.h"
#include "reference/reference.h"

namespace ioattn::test {
namespace {

bool not_instantiated(const Status& s) {
  return s.code == ErrorCode::Unsupported && s.message.find("IOATTN_CUDA_HEAD_DIMS") != std::string::npos;
}
bool no_cuda_backward(const Status& s) {
  return s.code == ErrorCode::Unsupported && s.message.find("no CUDA backward") != std::string::npos;
}

// Rows whose reference LSE is -inf must be exactly zero in x ((B, S, H, dim) or (T, H, dim)).
int64_t nonzero_in_empty_rows(const Case& c, const std::vector<double>& lse, const std::vector<double>& x, int dim) {
  int64_t bad = 0;
  const int64_t rows = c.varlen() ? static_cast<int64_t>(lse.size() / c.hq) : c.sq;
  const int batches = c.varlen() ? 1 : c.batch;
  for (int b = 0; b < batches; ++b)
    for (int h = 0; h < c.hq; ++h)
      for (int64_t i = 0; i < rows; ++i) {
        const double l = lse[(static_cast<int64_t>(b) * c.hq + h) * rows + i];
        if (!(std::isinf(l) && l < 0)) continue;
        const int64_t base = ((static_cast<int64_t>(b) * rows + i) * c.hq + h) * dim;
        for (int d = 0; d < dim; ++d) bad += x[base + d] != 0.0 ? 1 : 0;
      }
  return bad;
}

// Forward (and backward) of one case on the GPU, checked against the reference. row_stride > 1
// compares only every row_stride-th query row (long sequences: the float64 reference is O(N^2 d)).
void run_gpu_case(const Case& c, int row_stride = 1) {
  SCOPED_TRACE(c.describe());
  CaseInputs in = make_inputs(c);
  DeviceInputs d(in);

  HostTensor out(c.dtype, in.out_shape, c.layout), lse(DType::F32, in.lse_shape);
  out.poison();
  lse.poison();
  DeviceBuffer d_out(out), d_lse(lse);
  Status s = forward(d.q.view(), d.k.view(), d.v.view(), d_out.view(), d_lse.view(), d.args);
  if (not_instantiated(s)) GTEST_SKIP() << s.message;
  ASSERT_TRUE(s.ok()) << "forward: " << error_code_name(s.code) << ": " << s.message;
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  d_out.copy_to(out);
  d_lse.copy_to(lse);
  EXPECT_EQ(out.count_nan(), 0) << "forward left elements of out unwritten (or wrote NaN)";
  EXPECT_EQ(lse.count_nan(), 0) << "forward left elements of lse unwritten (or wrote NaN)";
  EXPECT_TRUE(out.gaps_poisoned()) << "forward wrote outside the out view";

  ref::Result r64, rstd;
  ASSERT_TRUE(ref::forward(in.q.view(), in.k.view(), in.v.view(), in.args, &r64, row_stride).ok());
  ASSERT_TRUE(ref::standard_forward(in.q.view(), in.k.view(), in.v.view(), in.args, &rstd, row_stride).ok());
  const std::vector<double> o = out.values();
  EXPECT_TRUE(within_rule("out", c.dtype, o, r64.out, rstd.out));
  EXPECT_TRUE(within_rule("lse", DType::F32, lse.values(), r64.lse, rstd.lse));
  EXPECT_EQ(nonzero_in_empty_rows(c, r64.lse, o, c.head_dim_v()), 0) << "rows that see no key must give O = 0";

  if (c.backward && row_stride == 1) {
    size_t ws_bytes = 0;
    s = backward_workspace_size(d.q.view(), d.k.view(), d.v.view(), d.args, &ws_bytes);
    if (no_cuda_backward(s)) {
      std::printf("[  NOTE    ] %s: backward not built, gradients not checked\n", c.name.c_str());
    } else {
      ASSERT_TRUE(s.ok()) << "backward_workspace_size: " << s.message;
      DeviceScratch ws(ws_bytes);
      Args args = d.args;
      args.workspace = ws.get();
      args.workspace_bytes = ws_bytes;
      HostTensor dq(c.dtype, in.q.shape(), c.layout), dk(c.dtype, in.k.shape(), c.layout),
          dv(c.dtype, in.v.shape(), c.layout);
      dq.poison();
      dk.poison();
      dv.poison();
      DeviceBuffer d_dq(dq), d_dk(dk), d_dv(dv);
      s = backward(d.q.view(), d.k.view(), d.v.view(), d_out.view(), d.dout.view(), d_lse.view(), d_dq.view(),
                   d_dk.view(), d_dv.view(), args);
      ASSERT_TRUE(s.ok()) << "backward: " << error_code_name(s.code) << ": " << s.message;
      ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
      d_dq.copy_to(dq);
      d_dk.copy_to(dk);
      d_dv.copy_to(dv);
      EXPECT_EQ(dq.count_nan() + dk.count_nan() + dv.count_nan(), 0) << "backward left gradients unwritten (or NaN)";
      EXPECT_TRUE(dq.gaps_poisoned() && dk.gaps_poisoned() && dv.gaps_poisoned())
          << "backward wrote outside a gradient view";
      EXPECT_TRUE(d_out.bytes() == out.bytes() && d_lse.bytes() == lse.bytes()) << "backward modified out or lse";
      ref::Result g64, gstd;
      ASSERT_TRUE(ref::backward(in.q.view(), in.k.view(), in.v.view(), in.dout.view(), in.args, &g64).ok());
      ASSERT_TRUE(ref::standard_backward(in.q.view(), in.k.view(), in.v.view(), in.dout.view(), in.args, &gstd).ok());
      const std::vector<double> gq = dq.values();
      EXPECT_TRUE(within_rule("dq", c.dtype, gq, g64.dq, gstd.dq));
      EXPECT_TRUE(within_rule("dk", c.dtype, dk.values(), g64.dk, gstd.dk));
      EXPECT_TRUE(within_rule("dv", c.dtype, dv.values(), g64.dv, gstd.dv));
      EXPECT_EQ(nonzero_in_empty_rows(c, r64.lse, gq, c.d), 0) << "rows that see no key must give dQ = 0";
    }
  }
  EXPECT_TRUE(d.q.bytes() == in.q.bytes() && d.k.bytes() == in.k.bytes() && d.v.bytes() == in.v.bytes() &&
              d.dout.bytes() == in.dout.bytes())
      << "an input was modified";
}

// ---- Case lists ---------------------------------------------------------------------------------

Case make(std::string name, DType dt, int sq, int sk, int d) {
  Case c;
  c.name = sanitize(name + (dt == DType::BF16 ? "_bf16" : "_fp16"));
  c.dtype = dt;
  c.sq = sq;
  c.sk = sk;
  c.d = d;
  c.hq = c.hk = 2;
  c.seed = std::hash<std::string>{}(c.name) | 1;
  return c;
}

std::vector<Case> small_cases() {
  std::vector<Case> v;
  for (DType dt : {DType::F16, DType::BF16}) {
    v.push_back(make("basic", dt, 70, 90, 64));
    Case c = make("causal_sq_gt_sk", dt, 90, 40, 64);  // rows 0..49 see no key
    c.causal = true;
    v.push_back(c);
    c = make("window_gqa", dt, 65, 130, 128);
    c.window_left = 20; c.window_right = 5; c.hq = 4; c.hk = 2;
    v.push_back(c);
    c = make("varlen_dropout_alibi", dt, 0, 0, 64);
    c.lens_q = {0, 33, 129, 5}; c.lens_k = {7, 0, 100, 140}; c.causal = true; c.dropout_p = 0.2f;
    c.alibi = Alibi::PerHead;
    v.push_back(c);
    c = make("softcap_headmajor", dt, 40, 64, 64);
    c.softcap = 1.5f; c.layout = Layout::HeadMajor;
    v.push_back(c);
  }
  return v;
}

std::vector<Case> feature_cases() {
  std::vector<Case> v;
  for (DType dt : {DType::F16, DType::BF16}) {
    // Head dims: instantiated ones and ones that round up (zero-padded columns).
    for (int d : {32, 40, 64, 72, 80, 96, 128, 136, 192, 200, 256}) v.push_back(make("d" + std::to_string(d), dt, 150, 173, d));
    // Ragged tails: one row / one key, block size +- 1, Sq != Sk both ways, causal and not.
    const int shapes[][2] = {{1, 1}, {1, 300}, {300, 1}, {63, 65}, {127, 129}, {128, 128}, {129, 127}, {257, 100}, {100, 257}};
    for (auto& sh : shapes)
      for (bool causal : {false, true}) {
        Case c = make("tail_" + std::to_string(sh[0]) + "x" + std::to_string(sh[1]) + (causal ? "_causal" : ""), dt,
                      sh[0], sh[1], 128);
        c.causal = causal;
        c.batch = 2;
        v.push_back(c);
      }
    // Windows (bottom-right aligned), including an empty-looking (0, 0) diagonal.
    const int windows[][2] = {{32, 16}, {0, 0}, {64, -1}, {-1, 8}, {200, 0}};
    for (auto& w : windows) {
      Case c = make("window_" + std::to_string(w[0]) + "_" + std::to_string(w[1]), dt, 190, 230, 64);
      c.window_left = w[0]; c.window_right = w[1];
      v.push_back(c);
    }
    Case c = make("softcap", dt, 150, 150, 128);
    c.softcap = 2.0f; c.scale = 0.3f;
    v.push_back(c);
    c = make("softcap_causal_alibi", dt, 150, 200, 64);
    c.softcap = 5.0f; c.causal = true; c.alibi = Alibi::PerHead;
    v.push_back(c);
    c = make("alibi_batch_head", dt, 100, 140, 64);
    c.alibi = Alibi::PerBatchHead; c.batch = 2;
    v.push_back(c);
    // Softcap with ALiBi through every head dim's mods kernels (d 64: 400 rows, three 192-row
    // tiles of the 3-warpgroup forward), non-causal and causal.
    for (int d : {32, 40, 64, 80, 96, 128, 256}) {
      c = make("softcap_alibi_d" + std::to_string(d), dt, d == 64 || d == 40 ? 400 : 130, 200, d);
      c.softcap = 10.0f; c.alibi = Alibi::PerHead;
      v.push_back(c);
      c = make("softcap_alibi_causal_d" + std::to_string(d), dt, 200, 200, d);
      c.softcap = 10.0f; c.alibi = Alibi::PerBatchHead; c.causal = true; c.batch = 2;
      v.push_back(c);
    }
    for (int d : {64, 128}) {
      c = make("dropout_d" + std::to_string(d), dt, 140, 170, d);
      c.dropout_p = 0.17f;
      v.push_back(c);
      c = make("dropout_causal_d" + std::to_string(d), dt, 170, 140, d);
      c.dropout_p = 0.5f; c.causal = true; c.batch = 2;
      v.push_back(c);
    }
    c = make("gqa", dt, 100, 120, 64);
    c.hq = 6; c.hk = 2; c.causal = true;
    v.push_back(c);
    c = make("mqa", dt, 100, 120, 128);
    c.hq = 4; c.hk = 1;
    v.push_back(c);
    c = make("varlen", dt, 0, 0, 64);
    c.lens_q = {0, 17, 128, 129, 1, 300}; c.lens_k = {5, 0, 128, 200, 64, 300};
    v.push_back(c);
    c = make("varlen_causal_gqa", dt, 0, 0, 128);
    c.lens_q = {200, 0, 64, 3}; c.lens_k = {150, 9, 64, 70}; c.causal = true; c.hq = 4; c.hk = 2;
    v.push_back(c);
    c = make("headmajor", dt, 130, 70, 64);
    c.layout = Layout::HeadMajor; c.batch = 2;
    v.push_back(c);
    c = make("dv_lt_d", dt, 80, 90, 64);
    c.dv = 32;
    v.push_back(c);
    c = make("dv_gt_d", dt, 80, 90, 32);
    c.dv = 64;
    v.push_back(c);
    // q / k of 192 and v of 128 (DeepSeek's MLA prefill: the sm90 forward's (192, 128) tile, its V tiles
    // and O at 128 columns), causal GQA, and v narrower still (96, zero-filled to 128) with ALiBi.
    c = make("mla_d192_v128_causal_gqa", dt, 200, 260, 192);
    c.dv = 128; c.causal = true; c.hq = 4; c.hk = 2;
    v.push_back(c);
    c = make("d160_v96_alibi", dt, 150, 140, 160);
    c.dv = 96; c.alibi = Alibi::PerHead; c.softcap = 20.0f;
    v.push_back(c);
    // The sm90 d = 96 forward (d = 128's tiles, products over 96 columns) with q / k and v of
    // different widths on either side of 80, causal.
    c = make("dv_lt_d_d96", dt, 130, 150, 96);
    c.dv = 72; c.causal = true;
    v.push_back(c);
    c = make("dv_gt_d_d96", dt, 130, 150, 80);
    c.dv = 96;
    v.push_back(c);
  }
  // Several tiles per persistent CTA (132 on an H100/H200): the sm90 forward's Q ring and the Q slots
  // its epilogue stages O in are reused across tiles, with ragged last blocks, dense and varlen
  // (blocks that end inside a warpgroup's rows store O from registers), causal pairs.
  Case c = make("many_tiles_gqa_d64", DType::BF16, 200, 200, 64);
  c.batch = 4; c.hq = 64; c.hk = 16;
  v.push_back(c);
  // d 64 runs 3 consumer warpgroups (192-row blocks): sequences ending inside each warpgroup's
  // rows (rows 1-64, 65-128, 129-192 of a block), causal pairs with an odd middle block.
  c = make("many_tiles_varlen_causal_d64", DType::BF16, 0, 0, 64);
  c.lens_q = {500, 193, 64, 130, 1, 320}; c.lens_k = {500, 260, 64, 130, 17, 300}; c.causal = true;
  c.hq = 32; c.hk = 8;
  v.push_back(c);
  // Non-causal d 64 (3 warpgroups in every tile): warpgroups whose rows all lie past their sequence's
  // end skip their products (dead_steps) in tiles of 1, 2 and 3 live warpgroups, next to live ones.
  // The same for d 32 and 40 (d 64's tiles over 32 / 40 columns), here and in the deal and varlen
  // cases below (d 96 and 80 on d 128's tiles likewise).
  for (int d : {64, 32, 40}) {
    c = make("many_tiles_varlen_d" + std::to_string(d), DType::F16, 0, 0, d);
    c.lens_q = {500, 193, 64, 130, 1, 320, 384, 129}; c.lens_k = {470, 260, 64, 300, 17, 320, 90, 129};
    c.hq = 24; c.hk = 8;
    v.push_back(c);
  }
  // Causal d 64 with 3 warpgroups (key span >= 768): per tile, warpgroups whose rows end a key block
  // before the tile's last take empty turns for it (kSkipMasked), at both tile alignments (192-row
  // tiles start on and between 128-key blocks), with sq < sk (bottom-right diagonal, shift 300).
  c = make("causal_3wg_skip_d64", DType::BF16, 1700, 2000, 64);
  c.hq = 4; c.hk = 2; c.causal = true; c.backward = false;
  v.push_back(c);
  // A causal grid one CTA short of the SMs (fwd_ctas: 24 heads x 6 pairs of 192-row tiles at 2048
  // take 131 CTAs on a 132-SM H100 / H200): CTAs take units c, c + 131, ..., so several run two.
  c = make("causal_grid_d64", DType::BF16, 2048, 2048, 64);
  c.hq = 24; c.hk = 8; c.causal = true; c.backward = false;
  v.push_back(c);
  // The last pairs' tiles dealt singly by cost (fwd_config.h's fwd_tail): 144 heads x 2 pairs of
  // 128-row tiles over 132 CTAs (one round of pairs, then 312 tiles dealt), and d 128 with sq > sk
  // (rows 0-199 see no key: empty tiles in the deal, left out of it) and an odd middle block (5
  // query blocks: its empty partner slot), two rounds of pairs on 131 CTAs, then the deal.
  for (int d : {64, 32, 40}) {
    c = make("many_tiles_causal_deal_d" + std::to_string(d), DType::BF16, 512, 512, d);
    c.batch = 3; c.hq = 48; c.hk = 16; c.causal = true; c.backward = false;
    v.push_back(c);
  }
  c = make("many_tiles_causal_deal_d128", DType::BF16, 600, 400, 128);
  c.batch = 2; c.hq = 80; c.hk = 16; c.causal = true; c.backward = false;
  v.push_back(c);
  // The deal in the softcap / ALiBi (kMods) kernel of a 2-consumer tile (fwd_deals).
  c = make("many_tiles_causal_deal_mods_d128", DType::BF16, 512, 512, 128);
  c.batch = 2; c.hq = 80; c.hk = 16; c.causal = true; c.backward = false;
  c.softcap = 5.0f; c.alibi = Alibi::PerHead;
  v.push_back(c);
  for (int d : {128, 96, 80}) {
    c = make("many_tiles_varlen_d" + std::to_string(d), DType::F16, 0, 0, d);
    c.lens_q = {300, 129, 7, 260, 1, 64}; c.lens_k = {300, 140, 7, 200, 33, 64}; c.hq = c.hk = 32;
    v.push_back(c);
  }
  c = make("many_tiles_varlen_mla_d192_v128", DType::BF16, 0, 0, 192);
  c.dv = 128; c.lens_q = {300, 129, 7, 260, 1, 64}; c.lens_k = {300, 140, 7, 200, 33, 64}; c.hq = c.hk = 32;
  v.push_back(c);
  c = make("many_tiles_causal_d192", DType::BF16, 260, 260, 192);
  c.batch = 2; c.hq = c.hk = 64; c.causal = true;
  v.push_back(c);
  // The Q ring and the O slots' releases across tiles without keys between tiles with keys (causal,
  // sq > sk: rows 0-129 see no key) and across tiles of one or two key blocks (a sliding window).
  for (int d : {128, 96, 80}) {
    c = make("many_tiles_causal_gqa_d" + std::to_string(d), DType::BF16, 330, 200, d);
    c.batch = 2; c.hq = 64; c.hk = 16; c.causal = true;
    v.push_back(c);
  }
  c = make("many_tiles_window_d192", DType::F16, 300, 300, 192);
  c.batch = 2; c.hq = c.hk = 64; c.window_left = 70; c.window_right = 10;
  v.push_back(c);
  // d 256 stages O in the last key block's K and V slots (one Q buffer) and hands them back to the
  // producer only in the CTA's next tile with keys: the last query block of a varlen sequence with
  // warpgroup 0 staging and warpgroup 1 not (64, 100, 200 rows) or neither (1, 7, 129, 300), tiles of
  // one key block (7, 33 and 64 keys) and two (65); then causal GQA pairs whose second tile sees no
  // key (sq > sk: rows 0-129), so a staged slot stays pending across an empty tile, and dense rows
  // clipped by the tensor map.
  c = make("many_tiles_varlen_d256", DType::F16, 0, 0, 256);
  c.lens_q = {300, 129, 7, 200, 1, 64, 100}; c.lens_k = {300, 140, 7, 200, 33, 64, 65}; c.hq = c.hk = 32;
  v.push_back(c);
  c = make("many_tiles_causal_gqa_d256", DType::BF16, 330, 200, 256);
  c.batch = 2; c.hq = 64; c.hk = 16; c.causal = true;
  v.push_back(c);
  // The same two with 64-key blocks (fwd_config.h's second d 256 row: the longest sequence has 512 or
  // 256 keys, which 80-key blocks pad): tiles of one key block (7, 33, 64 keys) and two (65, 100).
  c = make("many_tiles_varlen_d256_n64", DType::F16, 0, 0, 256);
  c.lens_q = {300, 129, 7, 200, 1, 64, 100, 512}; c.lens_k = {300, 140, 7, 200, 33, 64, 100, 512}; c.hq = c.hk = 32;
  v.push_back(c);
  c = make("many_tiles_causal_gqa_d256_n64", DType::BF16, 330, 256, 256);
  c.batch = 2; c.hq = 64; c.hk = 16; c.causal = true;
  v.push_back(c);
  return v;
}

std::vector<Case> large_cases() {
  std::vector<Case> v;
  for (int d : {32, 40, 64, 80, 96, 128, 256}) {
    Case c = make("long_causal_d" + std::to_string(d), DType::BF16, 2048, 2048, d);
    c.causal = true; c.backward = false;
    v.push_back(c);
    c = make("long_d" + std::to_string(d), DType::F16, 1000, 3000, d);
    c.backward = false;
    v.push_back(c);
  }
  // Under a causal mask d 64 keeps the 3-warpgroup tile only for long key spans (fwd_config.h):
  // one 3100-row sequence takes it for the whole call, the short ones end inside its 64-row parts.
  Case c = make("long_varlen_causal_d64", DType::F16, 0, 0, 64);
  c.lens_q = {3100, 193, 64, 130, 1}; c.lens_k = {3100, 260, 64, 130, 17}; c.causal = true;
  c.hq = 4; c.hk = 2; c.backward = false;
  v.push_back(c);
  return v;
}

class Small : public ::testing::TestWithParam<Case> {};
class Features : public ::testing::TestWithParam<Case> {};
class Large : public ::testing::TestWithParam<Case> {};
TEST_P(Small, MatchesReference) { run_gpu_case(GetParam()); }
TEST_P(Features, MatchesReference) { run_gpu_case(GetParam()); }
TEST_P(Large, MatchesReferenceOnSampledRows) { run_gpu_case(GetParam(), 37); }
auto case_name = [](const ::testing::TestParamInfo<Case>& i) { return i.param.name; };
INSTANTIATE_TEST_SUITE_P(Gpu, Small, ::testing::ValuesIn(small_cases()), case_name);
INSTANTIATE_TEST_SUITE_P(Gpu, Features, ::testing::ValuesIn(feature_cases()), case_name);
INSTANTIATE_TEST_SUITE_P(Gpu, Large, ::testing::ValuesIn(large_cases()), case_name);

// ---- Contract: determinism, graph capture, errors -------------------------------------------------

struct Fixture {
  Case c;
  CaseInputs in;
  DeviceInputs d;
  HostTensor out, lse;
  explicit Fixture(const Case& cs)
      : c(cs), in(make_inputs(cs)), d(in), out(cs.dtype, in.out_shape, cs.layout), lse(DType::F32, in.lse_shape) {
    out.poison();
    lse.poison();
  }
};

TEST(GpuContract, ForwardIsBitwiseRepeatable) {
  Case c = make("repeat", DType::BF16, 300, 300, 128);
  c.dropout_p = 0.1f; c.causal = true;
  Fixture f(c);
  DeviceBuffer o1(f.out), l1(f.lse), o2(f.out), l2(f.lse);
  ASSERT_TRUE(forward(f.d.q.view(), f.d.k.view(), f.d.v.view(), o1.view(), l1.view(), f.d.args).ok());
  ASSERT_TRUE(forward(f.d.q.view(), f.d.k.view(), f.d.v.view(), o2.view(), l2.view(), f.d.args).ok());
  EXPECT_TRUE(o1.bytes() == o2.bytes() && l1.bytes() == l2.bytes());
}

// Dispatch on a Hopper GPU with the sm90 kernels built: the TMA/wgmma forward serves every call it
// can (IOATTN_SM90=0 turns it off), dropout goes to the sm80 kernel. Elsewhere: not applicable.
TEST(GpuContract, HopperForwardUsesSm90Kernels) {
  int major = 0;
  ASSERT_EQ(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0), cudaSuccess);
  if (major != 9 || !build_info().cuda_sm90_kernels) GTEST_SKIP() << "not a Hopper GPU, or a build without sm_90a";
  const char* env = std::getenv("IOATTN_SM90");
  const bool off = env != nullptr && std::string(env) == "0";
  Case plain = make("choice", DType::BF16, 300, 300, 128);
  plain.causal = true;
  Case varlen = make("choice_varlen", DType::F16, 0, 0, 64);
  varlen.lens_q = {5, 300}; varlen.lens_k = {70, 2}; varlen.hq = 4; varlen.hk = 2;
  Case padded = make("choice_d96", DType::BF16, 100, 100, 96);
  Case dropout = make("choice_dropout", DType::BF16, 300, 300, 128);
  dropout.dropout_p = 0.1f;
  for (const Case* c : {&plain, &varlen, &padded, &dropout}) {
    Fixture f(*c);
    const std::string choice = describe_forward_choice(f.d.q.view(), f.d.k.view(), f.d.v.view(), f.d.args);
    const bool sm90 = !off && c->dropout_p == 0.0f;
    EXPECT_NE(choice.find(sm90 ? ": sm90 forward" : ": sm80 forward"), std::string::npos) << c->name << ": " << choice;
  }
  if (off) return;
  // d 64 (and 40, on its tiles): 3 consumer warpgroups (192-row tiles), 2 where a causal / window mask
  // leaves the queries short key spans (fwd_config.h's fwd_tile_index).
  struct TileCase { int seqlen; bool causal; int window_left; int consumers; int d; };
  for (const TileCase& t : {TileCase{512, false, -1, 3, 64}, TileCase{1024, true, -1, 2, 64}, TileCase{2048, true, -1, 3, 64},
                            TileCase{3200, true, -1, 3, 64}, TileCase{4096, false, 2000, 2, 64}, TileCase{8192, false, 4000, 3, 64},
                            TileCase{1024, true, -1, 2, 40}, TileCase{2048, true, -1, 3, 40}}) {
    Case c = make("tile_d64", DType::BF16, t.seqlen, t.seqlen, t.d);
    c.causal = t.causal;
    if (t.window_left >= 0) { c.window_left = t.window_left; c.window_right = 0; }
    Fixture f(c);
    const std::string choice = describe_forward_choice(f.d.q.view(), f.d.k.view(), f.d.v.view(), f.d.args);
    EXPECT_NE(choice.find(std::to_string(t.consumers) + " consumer warpgroups"), std::string::npos)
        << "d " << t.d << ", seqlen " << t.seqlen << (t.causal ? " causal" : "") << " window " << t.window_left << ": " << choice;
  }
  // d 256: 64-key blocks where 80-key blocks would pad the keys by 5% more (fwd_config.h).
  for (const auto& [seqlen, block_n] : {std::pair{512, 64}, std::pair{1024, 80}, std::pair{256, 64}, std::pair{640, 80}}) {
    Case c = make("tile_d256", DType::BF16, seqlen, seqlen, 256);
    Fixture f(c);
    const std::string choice = describe_forward_choice(f.d.q.view(), f.d.k.view(), f.d.v.view(), f.d.args);
    EXPECT_NE(choice.find("tile 128x" + std::to_string(block_n)), std::string::npos) << "seqlen " << seqlen << ": " << choice;
  }
  // Head dims 65-80 (q / k and v) on d = 96's 80-column row, 96 on its own; 33-40 on d = 64's 40-column
  // rows (fwd_config.h's sm90_columns).
  for (const auto& [d, dv, kernel] : {std::tuple{72, 72, 80}, std::tuple{80, 64, 80}, std::tuple{80, 96, 96}, std::tuple{96, 96, 96},
                                      std::tuple{40, 40, 40}, std::tuple{40, 48, 64}, std::tuple{24, 40, 40}}) {
    Case c = make("tile_d80", DType::BF16, 200, 200, d);
    c.dv = dv;
    Fixture f(c);
    const std::string choice = describe_forward_choice(f.d.q.view(), f.d.k.view(), f.d.v.view(), f.d.args);
    EXPECT_NE(choice.find("head dim " + std::to_string(kernel)), std::string::npos) << "d " << d << ", dv " << dv << ": " << choice;
  }
  // The persistent grid under a causal mask (fwd_config.h's fwd_ctas): one CTA per multiprocessor, or
  // one fewer where the round-robin of the heads' query-block pairs (pair u % pairs of unit u to CTA
  // u % ctas) then loads the busiest CTA at least 2% less. Recomputed here from the pairs' key blocks.
  int sms = 0;
  ASSERT_EQ(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0), cudaSuccess);
  struct GridCase { int seqlen, d, heads, batch; };
  for (const GridCase& g : {GridCase{2048, 64, 8, 4}, GridCase{4000, 64, 4, 10}, GridCase{1000, 64, 4, 40},
                            GridCase{2048, 128, 8, 4}, GridCase{1500, 128, 4, 11}}) {
    Case c = make("grid", DType::BF16, g.seqlen, g.seqlen, g.d);
    c.causal = true; c.hq = c.hk = g.heads; c.batch = g.batch;
    Fixture f(c);
    const std::string choice = describe_forward_choice(f.d.q.view(), f.d.k.view(), f.d.v.view(), f.d.args);
    int block_m = 0, block_n = 0;  // the tile the call runs with ("tile 192x128")
    const size_t at = choice.find("tile ");
    ASSERT_NE(at, std::string::npos) << choice;
    ASSERT_EQ(std::sscanf(choice.c_str() + at, "tile %dx%d", &block_m, &block_n), 2) << choice;
    const int m_blocks = (g.seqlen + block_m - 1) / block_m, pairs = (m_blocks + 1) / 2;
    const int units = pairs * g.heads * g.batch;
    auto blocks = [&](int m) { return (std::min((m + 1) * block_m, g.seqlen) - 1) / block_n + 1; };
    auto busiest = [&](int ctas) {
      std::vector<long> load(ctas, 0);
      for (int u = 0; u < units; ++u) {
        const int j = u % pairs;
        load[u % ctas] += blocks(m_blocks - 1 - j) + (j != m_blocks - 1 - j ? blocks(j) : 0);
      }
      return *std::max_element(load.begin(), load.end());
    };
    const int want = units <= sms ? units : (50 * busiest(sms - 1) <= 49 * busiest(sms) ? sms - 1 : sms);
    EXPECT_NE(choice.find(", " + std::to_string(want) + " persistent CTAs"), std::string::npos)
        << "seqlen " << g.seqlen << " d " << g.d << ": " << choice;
  }
  // The last pairs' tiles dealt by cost (fwd_config.h's fwd_tail) under a causal mask with more
  // pairs than CTAs (d 64 at 512: 32 x 32 heads x 2 pairs); not under a sliding window (no pairs).
  for (const bool causal : {true, false}) {
    Case c = make("deal", DType::BF16, 512, 512, 64);
    c.hq = c.hk = 32; c.batch = 32;
    if (causal) c.causal = true;
    else { c.window_left = 100; c.window_right = 0; }
    Fixture f(c);
    const std::string choice = describe_forward_choice(f.d.q.view(), f.d.k.view(), f.d.v.view(), f.d.args);
    EXPECT_EQ(choice.find("tiles dealt by cost") != std::string::npos, causal) << choice;
  }
}

// Without dropout (the sm90 kernel on Hopper): the same bits every run, across query-block order.
TEST(GpuContract, ForwardWithoutDropoutIsBitwiseRepeatable) {
  Case c = make("repeat_plain", DType::BF16, 700, 900, 128);
  c.causal = true; c.hq = 4; c.hk = 2; c.batch = 2;
  Fixture f(c);
  DeviceBuffer o1(f.out), l1(f.lse), o2(f.out), l2(f.lse);
  ASSERT_TRUE(forward(f.d.q.view(), f.d.k.view(), f.d.v.view(), o1.view(), l1.view(), f.d.args).ok());
  ASSERT_TRUE(forward(f.d.q.view(), f.d.k.view(), f.d.v.view(), o2.view(), l2.view(), f.d.args).ok());
  EXPECT_TRUE(o1.bytes() == o2.bytes() && l1.bytes() == l2.bytes());
}

// Runs the deterministic backward `runs` times on one workspace and expects the same bits each time.
void check_deterministic_repeats(Case c, int runs) {
  Fixture f(c);
  f.d.args.deterministic = true;
  DeviceBuffer o(f.out), l(f.lse);
  ASSERT_TRUE(forward(f.d.q.view(), f.d.k.view(), f.d.v.view(), o.view(), l.view(), f.d.args).ok());
  size_t ws_bytes = 0;
  Status s = backward_workspace_size(f.d.q.view(), f.d.k.view(), f.d.v.view(), f.d.args, &ws_bytes);
  if (no_cuda_backward(s)) GTEST_SKIP() << s.message;
  ASSERT_TRUE(s.ok()) << s.message;
  DeviceScratch ws(ws_bytes);
  f.d.args.workspace = ws.get();
  f.d.args.workspace_bytes = ws_bytes;
  std::vector<uint8_t> first[3];
  for (int run = 0; run < runs; ++run) {
    HostTensor dq(c.dtype, f.in.q.shape()), dk(c.dtype, f.in.k.shape()), dv(c.dtype, f.in.v.shape());
    DeviceBuffer gq(dq), gk(dk), gv(dv);
    s = backward(f.d.q.view(), f.d.k.view(), f.d.v.view(), o.view(), f.d.dout.view(), l.view(), gq.view(), gk.view(),
                 gv.view(), f.d.args);
    ASSERT_TRUE(s.ok()) << s.message;
    if (run == 0) {
      first[0] = gq.bytes(); first[1] = gk.bytes(); first[2] = gv.bytes();
    } else {
      EXPECT_TRUE(gq.bytes() == first[0]) << c.name << ": dq differs in run " << run;
      EXPECT_TRUE(gk.bytes() == first[1]) << c.name << ": dk differs in run " << run;
      EXPECT_TRUE(gv.bytes() == first[2]) << c.name << ": dv differs in run " << run;
    }
  }
}

TEST(GpuContract, DeterministicBackwardIsBitwiseRepeatable) {
  Case c = make("det_bwd", DType::BF16, 257, 300, 64);
  c.hq = 8; c.hk = 2; c.causal = true;
  check_deterministic_repeats(c, 3);
}

// At scale: many key blocks per head and more work items than multiprocessors, so that the sm90
// kernel's CTAs take several items each and many parts meet on the same dQ rows (the order
// protocol of sm90/bwd_kernel.cuh), under a causal mask and a window (key blocks taken in
// decreasing order) and without a mask (increasing order).
TEST(GpuContract, DeterministicBackwardIsBitwiseRepeatableAtScale) {
  Case c = make("det_bwd_causal_d128", DType::BF16, 2048, 2048, 128);
  c.hq = 8; c.hk = 2; c.batch = 8; c.causal = true;
  check_deterministic_repeats(c, 4);
  c = make("det_bwd_window_d256", DType::F16, 1000, 1500, 256);
  c.hq = 4; c.hk = 4; c.batch = 4; c.window_left = 300; c.window_right = 200;
  check_deterministic_repeats(c, 4);
  c = make("det_bwd_plain_d64", DType::BF16, 1500, 1300, 64);
  c.hq = 8; c.hk = 8; c.batch = 4;
  check_deterministic_repeats(c, 4);
}

// A window bounded on the left only: the sm90 kernel adds the dQ parts in two chains there
// (sm80/bwd_run.cuh's det_chains), and each key block's query blocks are an interval that starts at
// 0 and ends with the window, so the chains' first parts differ from one query block to the next.
// GQA, so that several query heads' counters take turns too.
TEST(GpuContract, DeterministicBackwardIsBitwiseRepeatableLeftWindow) {
  Case c = make("det_bwd_left_window_d128", DType::BF16, 1200, 1000, 128);
  c.hq = 8; c.hk = 2; c.batch = 3; c.window_left = 256;
  check_deterministic_repeats(c, 4);
}

// Capture a forward call in a CUDA graph (global capture mode: any illegal call inside the library
// would invalidate the capture), replay it twice and compare with an eager call bitwise.
void check_graph_capture(const Case& c) {
  Fixture f(c);
  cudaStream_t stream;
  ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
  f.d.args.stream = stream;
  DeviceBuffer eager_o(f.out), eager_l(f.lse), graph_o(f.out), graph_l(f.lse);
  ASSERT_TRUE(forward(f.d.q.view(), f.d.k.view(), f.d.v.view(), eager_o.view(), eager_l.view(), f.d.args).ok());
  ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);

  cudaGraph_t graph;
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal), cudaSuccess);
  Status s = forward(f.d.q.view(), f.d.k.view(), f.d.v.view(), graph_o.view(), graph_l.view(), f.d.args);
  ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
  ASSERT_TRUE(s.ok()) << s.message;
  EXPECT_TRUE(graph_o.bytes() == f.out.bytes()) << "nothing may run before the graph is launched";
  cudaGraphExec_t exec;
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
  for (int replay = 0; replay < 2; ++replay) {
    ASSERT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
    ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    EXPECT_TRUE(graph_o.bytes() == eager_o.bytes()) << "replay " << replay << ": out differs from the eager call";
    EXPECT_TRUE(graph_l.bytes() == eager_l.bytes()) << "replay " << replay << ": lse differs from the eager call";
  }
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(stream);
}

TEST(GpuContract, GraphCaptureDense) {
  Case c = make("graph", DType::F16, 200, 333, 64);
  c.causal = true; c.alibi = Alibi::PerHead; c.dropout_p = 0.1f;
  check_graph_capture(c);
}

TEST(GpuContract, GraphCaptureVarlen) {  // the host-side cu_seqlens check is skipped under capture
  Case c = make("graph_varlen", DType::BF16, 0, 0, 128);
  c.lens_q = {10, 0, 300}; c.lens_k = {64, 20, 250};
  check_graph_capture(c);
}

// A bad call returns the named error and writes nothing.
void expect_error(const char* what, Fixture& f, const TensorView& q, const TensorView& k, const TensorView& v,
                  ErrorCode want, const std::string& must_mention, const Args* args = nullptr) {
  DeviceBuffer o(f.out), l(f.lse);
  Status s = forward(q, k, v, o.view(), l.view(), args ? *args : f.d.args);
  cudaDeviceSynchronize();
  EXPECT_EQ(s.code, want) << what << ": got " << error_code_name(s.code) << ": " << s.message;
  EXPECT_NE(s.message.find(must_mention), std::string::npos) << what << ": message should name '" << must_mention
                                                              << "': " << s.message;
  EXPECT_TRUE(o.bytes() == f.out.bytes() && l.bytes() == f.lse.bytes()) << what << ": an output was written";
}

// Enough varlen tiles for the sm90 forward to take them from its counter (fwd_config.h's
// fwd_dynamic: more units than CTAs): 32 heads x 4 sequences, the longest of 8 query blocks (4 causal pairs).
Case varlen_counter_case(const std::string& name) {
  Case c = make(name, DType::BF16, 0, 0, 128);
  c.lens_q = {10, 0, 300, 900}; c.lens_k = {64, 20, 250, 900}; c.hq = 32; c.hk = 8; c.causal = true;
  c.backward = false;
  return c;
}

TEST(GpuContract, GraphCaptureVarlenCounter) {  // the counter's memset is captured with the kernel
  check_graph_capture(varlen_counter_case("graph_varlen_counter"));
}

// The varlen forward's workspace on Hopper: described, required (a named error, nothing written,
// without it or with a byte less), zeroed by every call (the fixture's starts as 0xA5 bytes, and a
// second call reuses what the first left: both must match the reference and each other bitwise).
TEST(GpuContract, VarlenForwardWorkspace) {
  const Case c = varlen_counter_case("varlen_counter");
  Fixture f(c);
  int major = 0;
  ASSERT_EQ(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0), cudaSuccess);
  const char* env = std::getenv("IOATTN_SM90");
  const bool sm90 = major == 9 && build_info().cuda_sm90_kernels && !(env != nullptr && std::string(env) == "0");
  const std::string choice = describe_forward_choice(f.d.q.view(), f.d.k.view(), f.d.v.view(), f.d.args);
  if (!sm90) {  // the sm80 forward needs no workspace
    EXPECT_EQ(f.d.fwd_workspace_bytes, 0u) << choice;
    return;
  }
  EXPECT_NE(choice.find("tiles taken from a counter (varlen)"), std::string::npos) << choice;
  ASSERT_GT(f.d.fwd_workspace_bytes, 0u) << choice;
  Args none = f.d.args;
  none.workspace = nullptr;
  none.workspace_bytes = 0;
  expect_error("no forward workspace", f, f.d.q.view(), f.d.k.view(), f.d.v.view(), ErrorCode::WorkspaceTooSmall,
               "forward_workspace_size", &none);
  Args small = f.d.args;
  small.workspace_bytes = f.d.fwd_workspace_bytes - 1;
  expect_error("forward workspace a byte short", f, f.d.q.view(), f.d.k.view(), f.d.v.view(),
               ErrorCode::WorkspaceTooSmall, "forward_workspace_size", &small);
  DeviceBuffer o1(f.out), l1(f.lse), o2(f.out), l2(f.lse);
  ASSERT_TRUE(forward(f.d.q.view(), f.d.k.view(), f.d.v.view(), o1.view(), l1.view(), f.d.args).ok());
  ASSERT_TRUE(forward(f.d.q.view(), f.d.k.view(), f.d.v.view(), o2.view(), l2.view(), f.d.args).ok());
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_TRUE(o1.bytes() == o2.bytes() && l1.bytes() == l2.bytes()) << "the second call differs from the first";
  run_gpu_case(c);  // against the reference, outputs poisoned, with its own 0xA5 workspace
}

TEST(GpuContract, BadInputsGiveNamedErrors) {
  Fixture f(make("bad", DType::BF16, 64, 64, 64));
  // k on the host while q is on the GPU.
  expect_error("device mismatch", f, f.d.q.view(), f.in.k.view(), f.d.v.view(), ErrorCode::DeviceMismatch, "k:");
  // q offset by one element: not 16-byte aligned.
  TensorView q = f.d.q.view();
  q.data = static_cast<uint16_t*>(q.data) + 1;
  q.shape[1] -= 1;  // stay inside the allocation
  {
    Fixture g(make("bad_mis", DType::BF16, 63, 64, 64));
    expect_error("misaligned q", g, q, f.d.k.view(), f.d.v.view(), ErrorCode::Misaligned, "q:");
  }
  // Non-contiguous last dimension.
  TensorView kk = f.d.k.view();
  kk.stride[3] = 2;
  kk.shape[3] = 32;
  TensorView vv = f.d.v.view();
  {
    Fixture g(make("bad_stride", DType::BF16, 64, 64, 32));
    TensorView qq = f.d.q.view();
    qq.shape[3] = 32;
    qq.stride[3] = 1;
    vv.shape[3] = 32;
    expect_error("strided last dim", g, qq, kk, vv, ErrorCode::InvalidStride, "k:");
  }
  // Head dims the GPU does not take.
  for (int d : {12, 264}) {
    Fixture g(make("bad_d" + std::to_string(d), DType::BF16, 16, 16, d));
    expect_error("head dim", g, g.d.q.view(), g.d.k.view(), g.d.v.view(), ErrorCode::Unsupported, "head_dim");
  }
  // fp32 on the GPU.
  {
    Case c = make("bad_fp32", DType::BF16, 16, 16, 64);
    c.dtype = DType::F32;
    Fixture g(c);
    expect_error("fp32", g, g.d.q.view(), g.d.k.view(), g.d.v.view(), ErrorCode::Unsupported, "fp32 is CPU-only");
  }
}

TEST(GpuContract, BadDeviceCuSeqlensAreRejected) {
  Case c = make("bad_cu", DType::F16, 0, 0, 64);
  c.lens_q = {10, 20, 30}; c.lens_k = {10, 20, 30};
  Fixture f(c);
  // Non-monotone: 0, 10, 5, 60.
  HostTensor cu(DType::I32, {4});
  const int vals[] = {0, 10, 5, 60};
  for (int i = 0; i < 4; ++i) cu.set(i, vals[i]);
  DeviceBuffer d_cu(cu);
  Args a = f.d.args;
  a.cu_seqlens_q = d_cu.view();
  expect_error("non-monotone cu_seqlens_q", f, f.d.q.view(), f.d.k.view(), f.d.v.view(), ErrorCode::InvalidIndex,
               "cu_seqlens_q", &a);
  // Last entry beyond the rows of k.
  const int vals2[] = {0, 10, 31, 61};  // lengths 10, 21, 30 <= max_seqlen_k; 61 > 60 rows
  for (int i = 0; i < 4; ++i) cu.set(i, vals2[i]);
  DeviceBuffer d_cu2(cu);
  a = f.d.args;
  a.cu_seqlens_k = d_cu2.view();
  expect_error("cu_seqlens_k out of range", f, f.d.q.view(), f.d.k.view(), f.d.v.view(), ErrorCode::InvalidIndex,
               "cu_seqlens_k", &a);
}

}  // namespace
}  // namespace ioattn::test
