// The CPU backend against the float64 reference (error rule of DESIGN.md §1), forward and backward:
// named edge cases for each feature, then a randomized grid that mixes all of them.
//
// The CPU backend tiles queries and keys in blocks of 64/128/256, so lengths sit on and beside
// those sizes (63, 64, 65, 127, ... 257): the ragged last tile and the masked diagonal tile are
// where a blocked kernel goes wrong.
#include <gtest/gtest.h>

#include <random>
#include <stdexcept>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "attention_case.h"

namespace ioattn::test {
namespace {

// Seeds differ per case but stay fixed: FNV-1a of the name.
uint64_t seed_of(const std::string& name) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char ch : name) h = (h ^ ch) * 1099511628211ull;
  return h;
}

class CaseList {
 public:
  Case& add(Case c) {
    c.name = sanitize(c.name);
    if (!names_.insert(c.name).second) throw std::logic_error("duplicate case name " + c.name);
    c.seed = seed_of(c.name);
    cases_.push_back(c);
    return cases_.back();
  }
  std::vector<Case> cases_;

 private:
  std::set<std::string> names_;
};

const char* dt_tag(DType dt) { return dtype_name(dt); }

Case dense(const std::string& name, DType dt, int b, int hq, int hk, int sq, int sk, int d) {
  Case c;
  c.name = name;
  c.dtype = dt;
  c.batch = b;
  c.hq = hq;
  c.hk = hk;
  c.sq = sq;
  c.sk = sk;
  c.d = d;
  return c;
}

std::vector<Case> named_cases() {
  CaseList L;
  const DType kAll[] = {DType::F32, DType::F16, DType::BF16};

  // Sequence lengths: 1, small odd ones and every tile edge, square, with and without causal.
  for (int s : {1, 2, 3, 7, 31, 63, 64, 65, 127, 128, 129, 255, 256, 257}) {
    L.add(dense("seqlen_" + std::to_string(s), DType::F32, 1, 2, 2, s, s, 64));
    Case c = dense("seqlen_" + std::to_string(s) + "_causal_bf16", DType::BF16, 1, 2, 1, s, s, 64);
    c.causal = true;
    L.add(c);
  }
  // Sq != Sk both ways around tile edges. Causal with Sq > Sk leaves the first Sq - Sk rows
  // without any key (bottom-right alignment): they must give O = 0, LSE = -inf, dQ = 0.
  const int pairs[][2] = {{1, 257}, {257, 1}, {63, 129}, {129, 63}, {65, 255}, {255, 65}, {128, 127}, {127, 128},
                          {64, 256}, {256, 64}, {3, 200}, {200, 3}};
  int n = 0;
  for (auto [sq, sk] : pairs)
    for (bool causal : {false, true}) {
      const DType dt = kAll[n++ % 3];
      Case c = dense("sq" + std::to_string(sq) + "_sk" + std::to_string(sk) + (causal ? "_causal_" : "_") + dt_tag(dt),
                     dt, 1, 2, 1, sq, sk, 32);
      c.causal = causal;
      L.add(c);
    }
  // Sliding windows: left only, right only, both, causal + left, a one-key window, and windows
  // that leave rows empty (Sq > Sk) or reach past both ends.
  struct W { int sq, sk, l, r; bool causal; };
  const W windows[] = {{129, 129, 16, -1, false}, {129, 129, -1, 16, false}, {129, 129, 7, 9, false},
                       {129, 129, 33, 0, true},   {65, 65, 0, 0, false},     {20, 10, 2, 1, false},
                       {10, 20, 1, 2, false},     {5, 30, 0, 0, false},      {257, 64, 40, -1, true},
                       {64, 257, 300, 300, false}, {100, 40, -1, 3, false},  {40, 100, 0, -1, false}};
  n = 0;
  for (const W& w : windows) {
    const DType dt = kAll[n++ % 3];
    Case c = dense("window_" + std::to_string(w.sq) + "x" + std::to_string(w.sk) + "_l" + std::to_string(w.l) + "_r" +
                       std::to_string(w.r) + (w.causal ? "_causal_" : "_") + dt_tag(dt),
                   dt, 2, 2, 2, w.sq, w.sk, 24);
    c.causal = w.causal;
    c.window_left = w.l;
    c.window_right = w.r;
    L.add(c);
  }
  // Fully masked rows in bulk: most rows of a causal problem with Sq >> Sk see nothing.
  for (DType dt : kAll) {
    Case c = dense(std::string("mostly_masked_causal_") + dt_tag(dt), dt, 2, 3, 1, 130, 7, 16);
    c.causal = true;
    L.add(c);
  }
  // GQA / MQA.
  const int groups[][2] = {{4, 2}, {6, 3}, {8, 1}, {6, 2}};
  n = 0;
  for (auto [hq, hk] : groups)
    for (bool causal : {false, true}) {
      const DType dt = kAll[n++ % 3];
      Case c = dense("gqa_" + std::to_string(hq) + "_" + std::to_string(hk) + (causal ? "_causal_" : "_") + dt_tag(dt),
                     dt, 2, hq, hk, 65, 129, 32);
      c.causal = causal;
      L.add(c);
    }
  // Head dims, each dtype; odd ones and the GPU sizes. Then dv != d.
  for (int d : {1, 3, 5, 8, 17, 31, 64, 96, 128, 200, 256})
    for (DType dt : kAll) L.add(dense("headdim_" + std::to_string(d) + "_" + dt_tag(dt), dt, 1, 2, 1, 33, 47, d));
  // Beyond the GPU's 256: any positive head dim is served on the CPU (DESIGN.md §2).
  for (int d : {300, 512}) {
    Case c = dense("headdim_" + std::to_string(d) + "_bf16_causal", DType::BF16, 1, 2, 1, 40, 33, d);
    c.causal = true;
    L.add(c);
  }
  const int dvs[][2] = {{64, 32}, {17, 5}, {3, 64}, {128, 256}};
  n = 0;
  for (auto [d, dv] : dvs) {
    const DType dt = kAll[n++ % 3];
    Case c = dense("headdim_" + std::to_string(d) + "_dv" + std::to_string(dv) + "_" + dt_tag(dt), dt, 1, 2, 2, 40, 70, d);
    c.dv = dv;
    c.causal = n % 2 == 0;
    L.add(c);
  }
  // Variable length, with empty sequences on either side and tile-edge lengths.
  struct V { std::vector<int> q, k; bool causal; };
  const V varlens[] = {{{5, 0, 17}, {3, 0, 9}, false},         {{0, 0}, {0, 4}, false},
                       {{0, 64}, {65, 0}, true},               {{1, 128, 0, 33}, {129, 1, 7, 0}, true},
                       {{63, 64, 65}, {65, 64, 63}, false},    {{257}, {1}, true},
                       {{7, 9, 11, 13, 15}, {15, 13, 11, 9, 7}, true}};
  n = 0;
  for (const V& v : varlens) {
    for (DType dt : {DType::F32, DType::BF16}) {
      Case c;
      c.name = "varlen_" + std::to_string(n) + "_" + dt_tag(dt);
      c.dtype = dt;
      c.hq = 4;
      c.hk = 2;
      c.d = 40;
      c.lens_q = v.q;
      c.lens_k = v.k;
      c.causal = v.causal;
      L.add(c);
    }
    ++n;
  }
  // Softcap: small caps saturate tanh (scale 0.5 makes scores ~N(0, 16) at d = 64).
  for (float cap : {1.0f, 5.0f, 30.0f})
    for (DType dt : {DType::F32, DType::F16}) {
      Case c = dense("softcap_" + std::to_string(static_cast<int>(cap)) + "_" + dt_tag(dt), dt, 1, 4, 2, 70, 90, 64);
      c.softcap = cap;
      c.scale = 0.5f;
      c.causal = cap > 2.0f;
      L.add(c);
    }
  // ALiBi: one slope per head, or one per (batch, head); with masks and Sq != Sk.
  n = 0;
  for (Alibi a : {Alibi::PerHead, Alibi::PerBatchHead})
    for (int variant = 0; variant < 3; ++variant) {
      const DType dt = kAll[n++ % 3];
      Case c = dense(std::string("alibi_") + (a == Alibi::PerHead ? "head_" : "batchhead_") + std::to_string(variant) +
                         "_" + dt_tag(dt),
                     dt, 2, 4, 2, variant == 1 ? 97 : 65, variant == 2 ? 97 : 65, 32);
      c.alibi = a;
      c.causal = variant == 1;
      if (variant == 2) { c.window_left = 20; c.window_right = 5; }
      L.add(c);
    }
  // Dropout, checked against the reference, which applies the Philox mask of src/core/philox.h.
  n = 0;
  for (float p : {0.1f, 0.5f, 0.9f})
    for (bool causal : {false, true}) {
      const DType dt = kAll[n++ % 3];
      Case c = dense("dropout_" + std::to_string(static_cast<int>(p * 10)) + (causal ? "_causal_" : "_") + dt_tag(dt),
                     dt, 2, 4, 2, 65, 130, 32);
      c.dropout_p = p;
      c.causal = causal;
      L.add(c);
    }
  // Strided views: BHSD (SDPA's layout read through strides) and padded strides, dense and varlen.
  for (Layout lay : {Layout::HeadMajor, Layout::Padded})
    for (DType dt : kAll) {
      Case c = dense(std::string("layout_") + layout_name(lay) + "_" + dt_tag(dt), dt, 2, 4, 2, 65, 66, 24);
      c.layout = lay;
      c.causal = dt == DType::F16;
      L.add(c);
      Case v;
      v.name = std::string("layout_varlen_") + layout_name(lay) + "_" + dt_tag(dt);
      v.dtype = dt;
      v.hq = 2;
      v.hk = 1;
      v.d = 17;
      v.lens_q = {9, 0, 65};
      v.lens_k = {4, 3, 66};
      v.layout = lay;
      L.add(v);
    }
  // An explicit softmax scale.
  for (float s : {0.3f, 1.7f}) {
    Case c = dense("scale_" + std::to_string(static_cast<int>(s * 10)), DType::F32, 1, 2, 2, 50, 60, 16);
    c.scale = s;
    L.add(c);
  }
  // Longer sequences: many tiles and threads. Backward in full at 520; forward-only beyond, with
  // the reference sampling every 61st / 127th row (odd strides visit every residue of the tiles).
  {
    Case c = dense("long_520_causal_fp32", DType::F32, 1, 2, 1, 520, 520, 64);
    c.causal = true;
    L.add(c);
    c = dense("long_520x777_window_dropout_bf16", DType::BF16, 1, 2, 2, 520, 777, 64);
    c.window_left = 150;
    c.window_right = 30;
    c.dropout_p = 0.15f;
    L.add(c);
    c = dense("long_2053_causal_alibi_bf16_fwd", DType::BF16, 1, 4, 2, 2053, 2053, 128);
    c.causal = true;
    c.alibi = Alibi::PerHead;
    c.backward = false;
    c.ref_row_stride = 61;
    L.add(c);
    c = dense("long_4099_window_softcap_fp16_fwd", DType::F16, 1, 2, 1, 4099, 4099, 64);
    c.window_left = 700;
    c.window_right = 5;
    c.softcap = 20.0f;
    c.backward = false;
    c.ref_row_stride = 127;
    L.add(c);
    c = dense("decode_1x8193_gqa_fp32", DType::F32, 2, 8, 1, 1, 8193, 128);  // one query row, long cache
    c.causal = true;
    L.add(c);
  }
  // Many (batch, kv head) tasks: the backend's backward switches strategy with the task count
  // (per-task dQ accumulators once batch·Hk >= 8, src/cpu/backend.cpp), so cover both sides.
  n = 0;
  for (auto [b, hq, hk] : {std::tuple{4, 4, 2}, std::tuple{3, 6, 3}, std::tuple{8, 2, 1}, std::tuple{2, 16, 8}}) {
    const DType dt = kAll[n++ % 3];
    Case c = dense("many_tasks_b" + std::to_string(b) + "_hk" + std::to_string(hk) + "_" + dt_tag(dt), dt, b, hq, hk,
                   n % 2 ? 129 : 65, n % 2 ? 65 : 257, 32);
    c.causal = n != 2;
    c.dropout_p = n == 3 ? 0.2f : 0.0f;
    L.add(c);
  }
  {
    Case v;
    v.name = "many_tasks_varlen_bf16";
    v.dtype = DType::BF16;
    v.hq = 4;
    v.hk = 2;
    v.d = 64;
    v.lens_q = {0, 129, 5, 64, 1, 0, 200, 33};
    v.lens_k = {7, 130, 0, 64, 300, 0, 199, 1};
    v.causal = true;
    v.softcap = 10.0f;
    L.add(v);
  }
  // Everything at once.
  for (DType dt : kAll) {
    Case c = dense(std::string("all_features_") + dt_tag(dt), dt, 2, 4, 2, 129, 256, 64);
    c.causal = true;
    c.window_left = 100;
    c.softcap = 8.0f;
    c.alibi = Alibi::PerBatchHead;
    c.dropout_p = 0.2f;
    c.layout = Layout::Padded;
    L.add(c);
    Case v;
    v.name = std::string("all_features_varlen_") + dt_tag(dt);
    v.dtype = dt;
    v.hq = 6;
    v.hk = 2;
    v.d = 48;
    v.lens_q = {0, 65, 1, 130};
    v.lens_k = {3, 0, 64, 129};
    v.window_left = 31;
    v.window_right = 2;
    v.softcap = 4.0f;
    v.alibi = Alibi::PerBatchHead;
    v.dropout_p = 0.3f;
    v.layout = Layout::HeadMajor;
    L.add(v);
  }
  return L.cases_;
}

// The randomized grid: each case draws every feature independently (fixed generator seed, so the
// grid is the same on every run). Work per case is bounded so the grid stays quick in a Release build.
std::vector<Case> random_cases() {
  CaseList L;
  std::mt19937_64 rng(20240601);
  auto pick = [&](auto const& v) { return v[std::uniform_int_distribution<size_t>(0, v.size() - 1)(rng)]; };
  auto coin = [&](double p) { return std::bernoulli_distribution(p)(rng); };
  const std::vector<int> lens = {1, 2, 5, 17, 31, 63, 64, 65, 127, 128, 129, 255, 256, 257};
  const std::vector<int> dims = {1, 3, 8, 16, 17, 32, 33, 64, 80, 128, 256};
  const std::vector<DType> dts = {DType::F32, DType::F16, DType::BF16};
  const std::vector<std::pair<int, int>> heads = {{1, 1}, {2, 1}, {2, 2}, {4, 2}, {3, 3}, {6, 2}, {4, 1}};
  const std::vector<Layout> lays = {Layout::Contiguous, Layout::Contiguous, Layout::HeadMajor, Layout::Padded};
  constexpr double kMaxWork = 6e6;  // B·Hq·Sq·Sk·(d + dv), about 0.1 s of reference time
  for (int idx = 0; idx < 200; ++idx) {
    Case c;
    c.name = "grid_" + std::to_string(idx);
    for (;;) {
      c.dtype = pick(dts);
      c.d = pick(dims);
      c.dv = coin(0.2) ? pick(dims) : 0;
      auto [hq, hk] = pick(heads);
      c.hq = hq;
      c.hk = hk;
      c.lens_q.clear();
      c.lens_k.clear();
      double rows_work = 0;
      if (coin(0.25)) {
        const int nb = 1 + static_cast<int>(rng() % 4);
        for (int b = 0; b < nb; ++b) {
          c.lens_q.push_back(coin(0.2) ? 0 : pick(lens));
          c.lens_k.push_back(coin(0.2) ? 0 : pick(lens));
          rows_work += static_cast<double>(c.lens_q.back()) * c.lens_k.back();
        }
      } else {
        c.batch = 1 + static_cast<int>(rng() % 2);
        c.sq = pick(lens);
        c.sk = coin(0.5) ? c.sq : pick(lens);
        rows_work = static_cast<double>(c.batch) * c.sq * c.sk;
      }
      if (rows_work * c.hq * (c.d + c.head_dim_v()) <= kMaxWork) break;
    }
    const int mask = static_cast<int>(rng() % 6);
    c.causal = mask == 1 || mask == 4;
    c.window_left = (mask == 2 || mask == 4 || mask == 5) ? static_cast<int>(rng() % 80) : -1;
    c.window_right = (mask == 3 || mask == 5) ? static_cast<int>(rng() % 80) : -1;
    c.softcap = coin(0.25) ? static_cast<float>(1 + rng() % 20) : 0.0f;
    c.alibi = coin(0.25) ? (coin(0.5) ? Alibi::PerHead : Alibi::PerBatchHead) : Alibi::None;
    c.dropout_p = coin(0.25) ? pick(std::vector<float>{0.1f, 0.25f, 0.5f}) : 0.0f;
    c.scale = coin(0.15) ? 0.1f + 0.05f * static_cast<float>(rng() % 20) : 0.0f;
    c.layout = pick(lays);
    L.add(c);
  }
  return L.cases_;
}

class CpuVsReference : public ::testing::TestWithParam<Case> {};

TEST_P(CpuVsReference, ForwardBackward) { ASSERT_NO_FATAL_FAILURE(run_case(GetParam())); }

std::string case_name(const ::testing::TestParamInfo<Case>& info) { return info.param.name; }

INSTANTIATE_TEST_SUITE_P(Named, CpuVsReference, ::testing::ValuesIn(named_cases()), case_name);
INSTANTIATE_TEST_SUITE_P(Random, CpuVsReference, ::testing::ValuesIn(random_cases()), case_name);

}  // namespace
}  // namespace ioattn::test
