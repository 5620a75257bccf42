// Backward-specific GPU tests (part of ioattn_gpu_tests; test_cuda.cpp checks the gradients of
// its Small/Features cases in the default mode). Here, per case, both backward modes:
//   - atomic (default) and deterministic dq/dk/dv against the float64 reference under the error
//     rule (tests/common/error_rule.h), poisoned outputs AND a poisoned workspace (the kernels must
//     initialise what they accumulate into), every element written, nothing outside the views,
//     dQ = 0 exactly on rows that see no key;
//   - the deterministic mode bitwise identical over repeated runs;
//   - the backward captured in a CUDA graph and replayed equals the eager call (no host sync, no
//     allocation inside the call).
// BwdTiming (disabled; --gtest_also_run_disabled_tests) times forward + backward on long sequences.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "common/attention_case.h"
#include "common/error_rule.h"
#include "common/host_tensor.h"
#include "device_buffer.h"
#include "reference/reference.h"

namespace ioattn::test {
namespace {

struct Grads {
  HostTensor dq, dk, dv;
};

// Forward on the device (once per fixture), then backward calls into fresh poisoned gradients.
struct BwdFixture {
  Case c;
  CaseInputs in;
  DeviceInputs d;
  HostTensor out, lse;
  DeviceBuffer d_out, d_lse;
  Status fwd;

  explicit BwdFixture(const Case& cs)
      : c(cs),
        in(make_inputs(cs)),
        d(in),
        out(cs.dtype, in.out_shape, cs.layout),
        lse(DType::F32, in.lse_shape),
        d_out(poisoned(out)),
        d_lse(poisoned(lse)) {
    fwd = forward(d.q.view(), d.k.view(), d.v.view(), d_out.view(), d_lse.view(), d.args);
  }
  static const HostTensor& poisoned(HostTensor& t) {
    t.poison();
    return t;
  }

  // One backward call (optionally on `stream`, optionally captured and replayed as a graph).
  Status run(bool deterministic, Grads* g, cudaStream_t stream = nullptr, bool graph = false) {
    Args args = d.args;
    args.deterministic = deterministic;
    args.stream = stream;
    size_t ws_bytes = 0;
    Status s = backward_workspace_size(d.q.view(), d.k.view(), d.v.view(), args, &ws_bytes);
    if (!s.ok()) return s;
    DeviceScratch ws(ws_bytes);
    if (ws_bytes) cudaMemset(ws.get(), 0xFF, ws_bytes);  // NaN everywhere: nothing may read it uninitialised
    args.workspace = ws.get();
    args.workspace_bytes = ws_bytes;
    g->dq = HostTensor(c.dtype, in.q.shape(), c.layout);
    g->dk = HostTensor(c.dtype, in.k.shape(), c.layout);
    g->dv = HostTensor(c.dtype, in.v.shape(), c.layout);
    g->dq.poison();
    g->dk.poison();
    g->dv.poison();
    DeviceBuffer dq(g->dq), dk(g->dk), dv(g->dv);
    auto call = [&] {
      return backward(d.q.view(), d.k.view(), d.v.view(), d_out.view(), d.dout.view(), d_lse.view(), dq.view(),
                      dk.view(), dv.view(), args);
    };
    if (graph) {
      cudaGraph_t gr;
      if (cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal) != cudaSuccess)
        return Status{ErrorCode::BackendError, "begin capture"};
      s = call();
      if (cudaStreamEndCapture(stream, &gr) != cudaSuccess) return Status{ErrorCode::BackendError, "end capture"};
      if (!s.ok()) return s;
      cudaGraphExec_t exec;
      if (cudaGraphInstantiate(&exec, gr, 0) != cudaSuccess) return Status{ErrorCode::BackendError, "instantiate"};
      for (int replay = 0; replay < 2; ++replay) cudaGraphLaunch(exec, stream);
      cudaGraphExecDestroy(exec);
      cudaGraphDestroy(gr);
    } else {
      s = call();
      if (!s.ok()) return s;
    }
    const cudaError_t e = cudaDeviceSynchronize();
    if (e != cudaSuccess) return Status{ErrorCode::BackendError, cudaGetErrorString(e)};
    dq.copy_to(g->dq);
    dk.copy_to(g->dk);
    dv.copy_to(g->dv);
    return Status::Ok();
  }
};

int64_t nonzero_dq_in_empty_rows(const Case& c, const std::vector<double>& lse, const std::vector<double>& dq) {
  const int64_t rows = c.varlen() ? static_cast<int64_t>(lse.size() / c.hq) : c.sq;
  const int batches = c.varlen() ? 1 : c.batch;
  int64_t bad = 0;
  for (int b = 0; b < batches; ++b)
    for (int h = 0; h < c.hq; ++h)
      for (int64_t i = 0; i < rows; ++i) {
        const double l = lse[(static_cast<int64_t>(b) * c.hq + h) * rows + i];
        if (!(std::isinf(l) && l < 0)) continue;
        const int64_t base = ((static_cast<int64_t>(b) * rows + i) * c.hq + h) * c.d;
        for (int dd = 0; dd < c.d; ++dd) bad += dq[base + dd] != 0.0 ? 1 : 0;
      }
  return bad;
}

void expect_grads(const Case& c, const std::string& mode, const Grads& g, const ref::Result& g64,
                  const ref::Result& gstd, const ref::Result& f64) {
  SCOPED_TRACE(mode);
  EXPECT_EQ(g.dq.count_nan(), 0) << "dq unwritten or NaN";
  EXPECT_EQ(g.dk.count_nan(), 0) << "dk unwritten or NaN";
  EXPECT_EQ(g.dv.count_nan(), 0) << "dv unwritten or NaN";
  EXPECT_TRUE(g.dq.gaps_poisoned() && g.dk.gaps_poisoned() && g.dv.gaps_poisoned()) << "wrote outside a view";
  EXPECT_TRUE(within_rule("dq", c.dtype, g.dq.values(), g64.dq, gstd.dq));
  EXPECT_TRUE(within_rule("dk", c.dtype, g.dk.values(), g64.dk, gstd.dk));
  EXPECT_TRUE(within_rule("dv", c.dtype, g.dv.values(), g64.dv, gstd.dv));
  EXPECT_EQ(nonzero_dq_in_empty_rows(c, f64.lse, g.dq.values()), 0) << "rows that see no key must give dQ = 0";
}

void check_case(const Case& c) {
  SCOPED_TRACE(c.describe());
  BwdFixture f(c);
  if (f.fwd.code == ErrorCode::Unsupported) GTEST_SKIP() << f.fwd.message;  // head dim not instantiated
  ASSERT_TRUE(f.fwd.ok()) << "forward: " << f.fwd.message;

  ref::Result g64, gstd, f64;
  ASSERT_TRUE(ref::backward(f.in.q.view(), f.in.k.view(), f.in.v.view(), f.in.dout.view(), f.in.args, &g64).ok());
  ASSERT_TRUE(
      ref::standard_backward(f.in.q.view(), f.in.k.view(), f.in.v.view(), f.in.dout.view(), f.in.args, &gstd).ok());
  ASSERT_TRUE(ref::forward(f.in.q.view(), f.in.k.view(), f.in.v.view(), f.in.args, &f64).ok());

  Grads atomic, det1, det2, det_graph;
  Status s = f.run(false, &atomic);
  ASSERT_TRUE(s.ok()) << "backward: " << error_code_name(s.code) << ": " << s.message;
  expect_grads(c, "atomic dQ", atomic, g64, gstd, f64);

  ASSERT_TRUE((s = f.run(true, &det1)).ok()) << "deterministic backward: " << s.message;
  expect_grads(c, "deterministic", det1, g64, gstd, f64);
  ASSERT_TRUE((s = f.run(true, &det2)).ok()) << s.message;
  EXPECT_TRUE(det1.dq.bytes() == det2.dq.bytes()) << "deterministic dq differs between runs";
  EXPECT_TRUE(det1.dk.bytes() == det2.dk.bytes()) << "deterministic dk differs between runs";
  EXPECT_TRUE(det1.dv.bytes() == det2.dv.bytes()) << "deterministic dv differs between runs";
  // dK and dV never use atomics (the CTA loops over the GQA group), so they agree across modes too.
  EXPECT_TRUE(atomic.dk.bytes() == det1.dk.bytes() && atomic.dv.bytes() == det1.dv.bytes())
      << "dk/dv differ between the atomic and the deterministic mode";

  // Graph capture (global mode: an illegal call inside the library would break the capture).
  // Replays must match the eager deterministic call bitwise. Varlen is left out: outside capture
  // the library checks device cu_seqlens on the host, inside it skips that check, by design.
  if (!c.varlen()) {
    cudaStream_t stream;
    ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
    s = f.run(true, &det_graph, stream, /*graph=*/true);
    cudaStreamDestroy(stream);
    ASSERT_TRUE(s.ok()) << "captured backward: " << s.message;
    EXPECT_TRUE(det_graph.dq.bytes() == det1.dq.bytes() && det_graph.dk.bytes() == det1.dk.bytes() &&
                det_graph.dv.bytes() == det1.dv.bytes())
        << "graph replay differs from the eager deterministic call";
  }
}

std::vector<Case> bwd_cases() {
  std::vector<Case> v;
  auto add = [&](Case c) {
    c.seed = 7001 + 31 * v.size();
    v.push_back(c);
  };
  Case c;
  c.name = "fp16_d64_ragged"; c.dtype = DType::F16; c.batch = 2; c.hq = 2; c.hk = 2; c.sq = 130; c.sk = 130; c.d = 64;
  add(c);
  c.name = "bf16_d128_sq_lt_sk"; c.dtype = DType::BF16; c.d = 128; c.sq = 67; c.sk = 193;
  add(c);
  c = {};
  c.name = "bf16_d128_causal_sq_lt_sk"; c.dtype = DType::BF16; c.hq = 3; c.hk = 3; c.sq = 100; c.sk = 200; c.d = 128;
  c.causal = true;
  add(c);
  c.name = "fp16_d64_causal_sq_gt_sk_empty_rows"; c.dtype = DType::F16; c.d = 64; c.sq = 200; c.sk = 77;
  add(c);
  c = {};
  c.name = "bf16_d64_gqa3_window"; c.dtype = DType::BF16; c.batch = 2; c.hq = 6; c.hk = 2; c.sq = 150; c.sk = 150;
  c.d = 64; c.window_left = 32; c.window_right = 8;
  add(c);
  c.name = "fp16_d128_mqa4_causal"; c.dtype = DType::F16; c.hq = 4; c.hk = 1; c.d = 128; c.window_left = -1;
  c.window_right = -1; c.causal = true; c.sq = 129; c.sk = 129;
  add(c);
  c = {};
  c.name = "fp16_d64_softcap_alibi_gqa"; c.dtype = DType::F16; c.batch = 2; c.hq = 2; c.hk = 1; c.sq = 90; c.sk = 140;
  c.d = 64; c.softcap = 5.0f; c.alibi = Alibi::PerBatchHead;
  add(c);
  // Softcap and ALiBi on Hopper run the sm90 backward's kMods instantiation: each head dim's kernel,
  // with masks (the masked and unmasked copies of its score loop), varlen and GQA.
  c = {};
  c.name = "bf16_d128_softcap_alibi_causal"; c.dtype = DType::BF16; c.batch = 2; c.hq = 4; c.hk = 2; c.sq = 200;
  c.sk = 200; c.d = 128; c.softcap = 10.0f; c.alibi = Alibi::PerHead; c.causal = true;
  add(c);
  c = {};
  c.name = "fp16_d192_alibi_window"; c.dtype = DType::F16; c.batch = 2; c.hq = 2; c.hk = 2; c.sq = 150; c.sk = 180;
  c.d = 192; c.alibi = Alibi::PerBatchHead; c.window_left = 64; c.window_right = 16;
  add(c);
  c = {};
  c.name = "bf16_d256_softcap_varlen_gqa"; c.dtype = DType::BF16; c.hq = 4; c.hk = 2; c.d = 256; c.softcap = 20.0f;
  c.lens_q = {0, 70, 129, 5}; c.lens_k = {10, 90, 140, 64};
  add(c);
  c = {};
  c.name = "bf16_d64_dropout_causal_gqa"; c.dtype = DType::BF16; c.batch = 2; c.hq = 4; c.hk = 2; c.sq = 140;
  c.sk = 140; c.d = 64; c.dropout_p = 0.2f; c.causal = true;
  add(c);
  c.name = "fp16_d128_dropout_softcap"; c.dtype = DType::F16; c.d = 128; c.causal = false; c.softcap = 8.0f;
  c.dropout_p = 0.1f; c.sq = 70; c.sk = 100;
  add(c);
  // Varlen with empty sequences on both sides; head dims that pad (40 -> 64; 96 runs the sm90 d = 96
  // kernel where 96 is instantiated, else 128).
  c = {};
  c.name = "fp16_d40_varlen_empty_causal_gqa"; c.dtype = DType::F16; c.hq = 4; c.hk = 2; c.d = 40; c.causal = true;
  c.lens_q = {0, 70, 129, 5, 33}; c.lens_k = {10, 0, 140, 64, 33};
  add(c);
  c.name = "bf16_d96_varlen_window"; c.dtype = DType::BF16; c.d = 96; c.causal = false; c.window_left = 20;
  c.window_right = 0; c.lens_q = {65, 0, 1, 128}; c.lens_k = {64, 7, 0, 200};
  add(c);
  // d = 96 (on Hopper d = 128's tiles over 96 columns, its dQ split uneven between the warpgroups):
  // causal GQA with q / k narrower than v (80 / 96), and the kMods instantiation.
  c = {};
  c.name = "fp16_d96_causal_gqa_dv"; c.dtype = DType::F16; c.batch = 2; c.hq = 4; c.hk = 2; c.sq = 150; c.sk = 190;
  c.d = 80; c.dv = 96; c.causal = true;
  add(c);
  c = {};
  c.name = "bf16_d96_softcap_alibi_window"; c.dtype = DType::BF16; c.batch = 2; c.hq = 2; c.hk = 2; c.sq = 170;
  c.sk = 140; c.d = 96; c.softcap = 10.0f; c.alibi = Alibi::PerHead; c.window_left = 50; c.window_right = 10;
  add(c);
  // Head dims <= 80 (on Hopper d = 96's 80-column kernel: 5 k-steps, dK / dV at N = 80 stored in
  // groups of 4 column tiles with the last group half empty, warpgroup 0's dQ part over [64, 96) on
  // K's zero-filled columns): causal GQA, and the kMods instantiation with q / k wider than v (72 /
  // 64) under a window.
  c = {};
  c.name = "fp16_d80_causal_gqa"; c.dtype = DType::F16; c.batch = 2; c.hq = 4; c.hk = 2; c.sq = 150; c.sk = 190;
  c.d = 80; c.causal = true;
  add(c);
  c = {};
  c.name = "bf16_d80_softcap_alibi_window_dv"; c.dtype = DType::BF16; c.batch = 2; c.hq = 2; c.hk = 2; c.sq = 170;
  c.sk = 140; c.d = 72; c.dv = 64; c.softcap = 10.0f; c.alibi = Alibi::PerHead; c.window_left = 50; c.window_right = 10;
  add(c);
  // Head dims <= 40 (on Hopper d = 64's 40-column kernel: 3 k-steps, dK / dV and dQ at N = 40):
  // softcap + ALiBi, causal, with q / k narrower than v (32 / 40).
  c = {};
  c.name = "fp16_d40_softcap_alibi_causal_dv"; c.dtype = DType::F16; c.batch = 2; c.hq = 4; c.hk = 2; c.sq = 200;
  c.sk = 230; c.d = 32; c.dv = 40; c.softcap = 10.0f; c.alibi = Alibi::PerHead; c.causal = true;
  add(c);
  c = {};
  c.name = "bf16_d32_softcap_alibi_causal_dv"; c.dtype = DType::BF16; c.batch = 2; c.hq = 4; c.hk = 2; c.sq = 200;
  c.sk = 230; c.d = 24; c.dv = 32; c.softcap = 10.0f; c.alibi = Alibi::PerBatchHead; c.causal = true;
  add(c);
  // q / k of 192 with v of 128 (DeepSeek's MLA): on Hopper the sm90 backward with V, dO and dV 128
  // wide (dV split evenly between the warpgroups, dK as at d = 192), varlen GQA, and softcap.
  c = {};
  c.name = "bf16_mla_d192_v128_varlen_causal_gqa"; c.dtype = DType::BF16; c.hq = 4; c.hk = 2; c.d = 192; c.dv = 128;
  c.causal = true; c.lens_q = {70, 0, 129, 200}; c.lens_k = {70, 5, 200, 150};
  add(c);
  c = {};
  c.name = "fp16_mla_d192_v128_softcap"; c.dtype = DType::F16; c.batch = 2; c.hq = 2; c.hk = 2; c.sq = 150; c.sk = 180;
  c.d = 192; c.dv = 128; c.softcap = 15.0f;
  add(c);
  c = {};
  c.name = "bf16_d128_headmajor_layout"; c.dtype = DType::BF16; c.batch = 2; c.hq = 4; c.hk = 2; c.sq = 96; c.sk = 160;
  c.d = 128; c.layout = Layout::HeadMajor;
  add(c);
  // d = 256: the largest shared-memory configuration (and the one-CTA-per-SM register budget).
  c = {};
  c.name = "bf16_d256_causal_gqa"; c.dtype = DType::BF16; c.hq = 2; c.hk = 1; c.sq = 130; c.sk = 130; c.d = 256;
  c.causal = true;
  add(c);
  c.name = "fp16_d256_dropout"; c.dtype = DType::F16; c.causal = false; c.dropout_p = 0.15f; c.sq = 70; c.sk = 150;
  add(c);
  // d = 192: on Hopper, the sm90 backward's uneven head-dim split between its two warpgroups.
  c = {};
  c.name = "bf16_d192_causal_gqa_varlen"; c.dtype = DType::BF16; c.hq = 4; c.hk = 2; c.d = 192; c.causal = true;
  c.lens_q = {70, 0, 129}; c.lens_k = {70, 5, 200};
  add(c);
  c = {};
  c.name = "fp16_d192_window_sq_lt_sk"; c.dtype = DType::F16; c.batch = 2; c.hq = 2; c.hk = 2; c.sq = 100; c.sk = 230;
  c.d = 192; c.window_left = 40; c.window_right = 16;
  add(c);
  c = {};
  c.name = "fp16_d64_seqlen1"; c.dtype = DType::F16; c.batch = 3; c.hq = 2; c.hk = 2; c.sq = 1; c.sk = 1; c.d = 64;
  add(c);
  // The sm90 backward is persistent (one CTA per multiprocessor takes the key blocks one by one):
  // more key blocks than the 132 multiprocessors of an H100 / H200, so that CTAs take several, among
  // them blocks past a varlen sequence's end, blocks of a sequence without query rows (dK = dV = 0)
  // and query blocks that end inside a step; GQA throughout. Few query rows per key: the float64
  // reference stays fast.
  const std::vector<int> many_q = {40, 0, 129, 1, 64, 17, 100, 0, 33, 65, 8, 150, 2, 70, 31, 128, 5, 90, 12, 47};
  const std::vector<int> many_k = {760, 300, 0, 1, 700, 129, 64, 250, 640, 33, 520, 200, 768, 90, 400, 128, 700, 15,
                                   385, 600};
  // Varlen over those sequences, without a mask and causal. Masked calls run persistent too, their
  // items taken from a counter (costs differ: the dynamic hand-out): causal varlen with the same
  // sequences (480 / 720 / 480 / 480 items, about half of them past a sequence's end, which the
  // producer does not hand over, so CTAs take 2-3 of unequal cost, and items of sequences without
  // query rows, handed over with no steps).
  struct VarlenCase {
    const char* name;
    DType dtype;
    int hq, hk, d;
    bool causal;
  };
  for (const VarlenCase& vc : {VarlenCase{"fp16_d64_varlen_gqa3_many_blocks", DType::F16, 6, 2, 64, false},
                               VarlenCase{"bf16_d128_varlen_gqa_many_blocks", DType::BF16, 6, 3, 128, false},
                               VarlenCase{"bf16_d96_varlen_causal_gqa_many_blocks", DType::BF16, 6, 2, 96, true},
                               VarlenCase{"fp16_d80_varlen_causal_gqa_many_blocks", DType::F16, 6, 2, 80, true},
                               VarlenCase{"bf16_d40_varlen_gqa_many_blocks", DType::BF16, 6, 2, 40, false},
                               VarlenCase{"fp16_d32_varlen_gqa_many_blocks", DType::F16, 6, 2, 32, false},
                               VarlenCase{"bf16_d32_varlen_causal_gqa_many_blocks", DType::BF16, 6, 3, 32, true},
                               VarlenCase{"fp16_d192_varlen_gqa_many_blocks", DType::F16, 4, 2, 192, false},
                               VarlenCase{"bf16_d256_varlen_gqa_many_blocks", DType::BF16, 4, 2, 256, false},
                               VarlenCase{"fp16_d64_varlen_causal_gqa3_many_blocks", DType::F16, 12, 4, 64, true},
                               VarlenCase{"bf16_d128_varlen_causal_gqa_many_blocks", DType::BF16, 12, 6, 128, true},
                               VarlenCase{"bf16_d192_varlen_causal_gqa_many_blocks", DType::BF16, 4, 2, 192, true},
                               VarlenCase{"fp16_d256_varlen_causal_gqa_many_blocks", DType::F16, 4, 2, 256, true}}) {
    c = {};
    c.name = vc.name; c.dtype = vc.dtype; c.hq = vc.hq; c.hk = vc.hk; c.d = vc.d;
    c.causal = vc.causal; c.lens_q = many_q; c.lens_k = many_k;
    add(c);
  }
  // Softcap + ALiBi (the sm90 backward's kMods instantiation) across several items per CTA.
  c = {};
  c.name = "fp16_d64_varlen_softcap_alibi_many_blocks"; c.dtype = DType::F16; c.hq = 6; c.hk = 2; c.d = 64;
  c.lens_q = many_q; c.lens_k = many_k; c.softcap = 8.0f; c.alibi = Alibi::PerHead;
  add(c);
  c = {};  // dense: also the graph-capture check
  c.name = "bf16_d128_gqa_many_blocks"; c.dtype = DType::BF16; c.batch = 4; c.hq = 4; c.hk = 2; c.sq = 70;
  c.sk = 2200; c.d = 128;
  add(c);
  c.name = "fp16_d256_gqa_many_blocks"; c.dtype = DType::F16; c.batch = 3; c.hq = 8; c.hk = 4; c.sq = 20; c.sk = 1500;
  c.d = 256;
  add(c);
  // Dense windows that leave most key blocks seen by no query (items with no steps that are not past
  // the end: dK = dV = 0 written between items with steps; graph capture).
  c = {};
  c.name = "fp16_d128_window_gqa_many_blocks"; c.dtype = DType::F16; c.batch = 4; c.hq = 4; c.hk = 2; c.sq = 64;
  c.sk = 2200; c.d = 128; c.window_left = 100; c.window_right = 0;
  add(c);
  // d = 256 with windows: many key blocks seen by no query (items with no steps between items with
  // steps, on Hopper), steps that see only part of a block, Sq < Sk; ALiBi with a window runs the
  // sm90 backward's kMods kernel (both score products in each warpgroup) under masks.
  c = {};
  c.name = "fp16_d256_window_gqa_many_blocks"; c.dtype = DType::F16; c.batch = 2; c.hq = 4; c.hk = 2; c.sq = 64;
  c.sk = 2200; c.d = 256; c.window_left = 100; c.window_right = 0;
  add(c);
  c = {};
  c.name = "bf16_d256_alibi_window_sq_lt_sk"; c.dtype = DType::BF16; c.batch = 2; c.hq = 4; c.hk = 2; c.sq = 100;
  c.sk = 300; c.d = 256; c.alibi = Alibi::PerHead; c.window_left = 40; c.window_right = 16;
  add(c);
  c = {};  // softcap under a causal mask across several items per CTA (d = 256's kMods kernel)
  c.name = "fp16_d256_softcap_causal_gqa_many_blocks"; c.dtype = DType::F16; c.batch = 2; c.hq = 4; c.hk = 2;
  c.sq = 200; c.sk = 330; c.d = 256; c.causal = true; c.softcap = 15.0f;
  add(c);
  c = {};
  c.name = "bf16_d256_causal_gqa_many_blocks"; c.dtype = DType::BF16; c.batch = 3; c.hq = 6; c.hk = 3; c.sq = 128;
  c.sk = 1100; c.d = 256; c.causal = true;
  add(c);
  // A window bounded on the left only, Sq > Sk: the deterministic mode's two dQ chains under a mask
  // (sm80/bwd_run.cuh's det_chains), whose first part differs from one query block to the next.
  c = {};
  c.name = "bf16_d128_left_window_gqa_many_blocks"; c.dtype = DType::BF16; c.batch = 2; c.hq = 4; c.hk = 2;
  c.sq = 700; c.sk = 900; c.d = 128; c.window_left = 150; c.window_right = -1;
  add(c);
  c = {};
  c.name = "fp16_d64_left_window_many_blocks"; c.dtype = DType::F16; c.batch = 2; c.hq = 2; c.hk = 2;
  c.sq = 1000; c.sk = 800; c.d = 64; c.window_left = 300; c.window_right = -1;
  add(c);
  // Softcap at d = 192 through the S / dP exchange (session 29: P and 1 - tanh^2 handed from
  // warpgroup 0 to warpgroup 1 as fp16 pairs), causal with GQA over several key blocks.
  c = {};
  c.name = "bf16_d192_softcap_causal_gqa"; c.dtype = DType::BF16; c.batch = 2; c.hq = 4; c.hk = 2;
  c.sq = 260; c.sk = 300; c.d = 192; c.softcap = 12.0f; c.causal = true;
  add(c);
  return v;
}

class Bwd : public ::testing::TestWithParam<Case> {};
TEST_P(Bwd, BothModesMatchReference) { check_case(GetParam()); }
INSTANTIATE_TEST_SUITE_P(Gpu, Bwd, ::testing::ValuesIn(bwd_cases()),
                         [](const ::testing::TestParamInfo<Case>& i) { return sanitize(i.param.name); });

// Forward + backward time on long sequences (disabled by default), bf16, BSHD
// contiguous, TFLOP/s with the FlashAttention convention (forward 4·B·H·S²·d, halved when causal;
// backward 2.5× forward). Events around each call; one warm-up run, then the mean of 5.
// A measurement, not a check: disabled so the suite asserts only correctness; run it with
// --gtest_also_run_disabled_tests. (Benchmarks proper live in bench/gpu/.)
TEST(BwdTiming, DISABLED_LongSequences) {
  struct Shape {
    int batch, heads, seqlen, d;
    bool causal;
  };
  const Shape shapes[] = {{2, 16, 4096, 64, false},  {2, 16, 4096, 64, true},  {2, 16, 4096, 128, false},
                          {2, 16, 4096, 128, true},  {8, 16, 1024, 128, false}, {4, 16, 2048, 256, false},
                          {4, 16, 2048, 256, true}};
  for (const Shape& sh : shapes) {
    Case c;
    c.name = "timing";
    c.dtype = DType::BF16;
    c.batch = sh.batch; c.hq = c.hk = sh.heads; c.sq = c.sk = sh.seqlen; c.d = sh.d; c.causal = sh.causal;
    BwdFixture f(c);
    if (f.fwd.code == ErrorCode::Unsupported) continue;
    ASSERT_TRUE(f.fwd.ok()) << f.fwd.message;
    for (bool det : {false, true}) {
      Args args = f.d.args;
      args.deterministic = det;
      size_t ws_bytes = 0;
      ASSERT_TRUE(backward_workspace_size(f.d.q.view(), f.d.k.view(), f.d.v.view(), args, &ws_bytes).ok());
      DeviceScratch ws(ws_bytes);
      args.workspace = ws.get();
      args.workspace_bytes = ws_bytes;
      HostTensor gq(c.dtype, f.in.q.shape()), gk(c.dtype, f.in.k.shape()), gv(c.dtype, f.in.v.shape());
      DeviceBuffer dq(gq), dk(gk), dv(gv);
      cudaEvent_t e0, e1, e2;
      cudaEventCreate(&e0);
      cudaEventCreate(&e1);
      cudaEventCreate(&e2);
      const int reps = 5;
      float fwd_ms = 0, bwd_ms = 0;
      for (int r = 0; r <= reps; ++r) {
        cudaEventRecord(e0);
        ASSERT_TRUE(forward(f.d.q.view(), f.d.k.view(), f.d.v.view(), f.d_out.view(), f.d_lse.view(), args).ok());
        cudaEventRecord(e1);
        ASSERT_TRUE(backward(f.d.q.view(), f.d.k.view(), f.d.v.view(), f.d_out.view(), f.d.dout.view(),
                             f.d_lse.view(), dq.view(), dk.view(), dv.view(), args)
                        .ok());
        cudaEventRecord(e2);
        ASSERT_EQ(cudaEventSynchronize(e2), cudaSuccess);
        float a = 0, b = 0;
        cudaEventElapsedTime(&a, e0, e1);
        cudaEventElapsedTime(&b, e1, e2);
        if (r > 0) {
          fwd_ms += a / reps;
          bwd_ms += b / reps;
        }
      }
      const double flops = 4.0 * sh.batch * sh.heads * static_cast<double>(sh.seqlen) * sh.seqlen * sh.d *
                           (sh.causal ? 0.5 : 1.0);
      std::printf("TIMING bf16 B=%d H=%d S=%d d=%d causal=%d deterministic=%d: fwd %.3f ms %.1f TFLOP/s | "
                  "bwd %.3f ms %.1f TFLOP/s\n",
                  sh.batch, sh.heads, sh.seqlen, sh.d, sh.causal, det, fwd_ms, flops / fwd_ms * 1e-9, bwd_ms,
                  2.5 * flops / bwd_ms * 1e-9);
      cudaEventDestroy(e0);
      cudaEventDestroy(e1);
      cudaEventDestroy(e2);
    }
  }
}

}  // namespace
}  // namespace ioattn::test
