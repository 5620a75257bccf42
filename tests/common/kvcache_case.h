// forward_kvcache test cases shared by the CPU (tests/cpu/test_kvcache.cpp) and GPU
// (tests/gpu/kvcache_test.cpp) suites: a case description, its inputs drawn from a seed, and the
// full check of one run against the float64 reference (ioattn/src/reference/kvcache_reference.h):
//   out and lse under the error rule (error_rule.h), nothing left unwritten, and the whole cache
//   after the call equal to the reference's expected cache: appended rows exact (rotated rows
//   within one rounding of the dtype), every other entry unchanged bit for bit.
// The logical cache content of a case depends only on its seed and sizes, not on the layout, so a
// paged case and its contiguous twin hold the same keys and must give the same result.
// Header-only so both test binaries include it without a CMake change.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "error_rule.h"
#include "host_tensor.h"
#include "ioattn/ioattn.h"
#include "reference/kvcache_reference.h"
#include "reference/reference.h"

namespace ioattn::test {

struct KVCase {
  std::string name;
  DType dtype = DType::F16;
  int batch = 2, hq = 4, hk = 2, d = 64, dv = 0;  // dv = 0: like d
  int sq = 1, snew = 1;
  int capacity = 160;               // keys per sequence the cache holds (paged: a multiple of page_size)
  int page_size = 0;                // > 0: paged cache with a shuffled block table
  std::vector<int> seqlens;         // cached keys before the call; empty: random in [0, capacity - snew]
  bool scalar_seqlen = false;       // pass cache_seqlen (seqlens[0]) instead of the tensor
  bool batch_idx = false;           // contiguous: sequences map to shuffled cache rows (+ 1 spare row)
  bool leftpad = false;             // contiguous: random leftpad in [0, seqlen]
  int rotary_dim = 0;
  bool interleaved = false;
  bool causal = false;
  int window_left = -1, window_right = -1;
  float softcap = 0.0f;
  bool alibi = false;               // per (batch, head) slopes
  int num_splits = 0;
  // Memory layout of q, k_new, v_new, the caches and out (Padded also pads the block table rows):
  // strided views must be read and written through their strides only.
  Layout layout = Layout::Contiguous;
  uint64_t seed = 1;

  int head_dim_v() const { return dv > 0 ? dv : d; }
};

inline std::string kv_case_name(const ::testing::TestParamInfo<KVCase>& info) { return info.param.name; }
inline void PrintTo(const KVCase& c, std::ostream* os) { *os << c.name; }

// Host inputs of a case. args() binds a KVCacheArgs to these tensors (call after the object has
// its final address).
struct KVInputs {
  HostTensor q, k_cache, v_cache, k_new, v_new, cos, sin, seqlens, batch_idx, leftpad, block_table, slopes;
  std::vector<int> len, pad;  // per sequence, as passed
  std::vector<int64_t> out_shape, lse_shape;

  KVCacheArgs args(const KVCase& c) const {
    KVCacheArgs a;
    if (c.snew > 0) { a.k_new = k_new.view(); a.v_new = v_new.view(); }
    if (c.rotary_dim > 0) { a.rotary_cos = cos.view(); a.rotary_sin = sin.view(); }
    a.rotary_interleaved = c.interleaved;
    if (c.scalar_seqlen) a.cache_seqlen = len[0];
    else a.cache_seqlens = seqlens.view();
    if (c.batch_idx) a.cache_batch_idx = batch_idx.view();
    if (c.leftpad) a.cache_leftpad = leftpad.view();
    if (c.page_size > 0) a.block_table = block_table.view();
    a.causal = c.causal;
    a.window_left = c.window_left;
    a.window_right = c.window_right;
    a.softcap = c.softcap;
    if (c.alibi) a.alibi_slopes = slopes.view();
    a.num_splits = c.num_splits;
    return a;
  }
};

inline KVInputs make_kv_inputs(const KVCase& c) {
  std::mt19937_64 rng(c.seed);
  KVInputs in;
  const int B = c.batch, cap = c.capacity, D = c.d, Dv = c.head_dim_v();
  // Logical cache content first (the same for every layout), then the rest.
  HostTensor lk(c.dtype, {B, cap, c.hk, D}), lv(c.dtype, {B, cap, c.hk, Dv});
  lk.fill_normal(rng);
  lv.fill_normal(rng);
  const Layout L = c.layout;
  in.q = HostTensor(c.dtype, {B, c.sq, c.hq, D}, L);
  in.q.fill_normal(rng);
  const int snew_rows = std::max(c.snew, 1);  // a 0-row tensor has no storage: keep one (unused)
  in.k_new = HostTensor(c.dtype, {B, snew_rows, c.hk, D}, L);
  in.v_new = HostTensor(c.dtype, {B, snew_rows, c.hk, Dv}, L);
  in.k_new.fill_normal(rng);
  in.v_new.fill_normal(rng);
  in.len.resize(B);
  in.pad.assign(B, 0);
  for (int b = 0; b < B; ++b) {
    if (!c.seqlens.empty()) in.len[b] = c.seqlens[std::min<size_t>(b, c.seqlens.size() - 1)];
    else in.len[b] = std::uniform_int_distribution<int>(0, cap - c.snew)(rng);
    if (c.leftpad) in.pad[b] = std::uniform_int_distribution<int>(0, in.len[b])(rng);
  }
  in.seqlens = HostTensor(DType::I32, {B});
  in.leftpad = HostTensor(DType::I32, {B});
  for (int b = 0; b < B; ++b) { in.seqlens.set(b, in.len[b]); in.leftpad.set(b, in.pad[b]); }

  auto copy_row = [&](HostTensor& dst, int64_t dst_row, const HostTensor& src, int64_t src_row, int64_t n) {
    for (int64_t e = 0; e < n; ++e) dst.set(dst_row * n + e, src.get(src_row * n + e));
  };
  if (c.page_size > 0) {
    const int per_seq = cap / c.page_size;
    const int pages = B * per_seq + 3;  // 3 spare pages nobody maps
    in.k_cache = HostTensor(c.dtype, {pages, c.page_size, c.hk, D}, L);
    in.v_cache = HostTensor(c.dtype, {pages, c.page_size, c.hk, Dv}, L);
    in.k_cache.fill_normal(rng);
    in.v_cache.fill_normal(rng);
    std::vector<int> perm(pages);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    in.block_table = HostTensor(DType::I32, {B, per_seq}, L == Layout::Padded ? Layout::Padded : Layout::Contiguous);
    for (int b = 0; b < B; ++b)
      for (int n = 0; n < per_seq; ++n) {
        const int page = perm[b * per_seq + n];
        in.block_table.set(b * per_seq + n, page);
        for (int r = 0; r < c.page_size; ++r) {
          const int64_t pos = n * c.page_size + r;
          copy_row(in.k_cache, int64_t(page) * c.page_size + r, lk, int64_t(b) * cap + pos, int64_t(c.hk) * D);
          copy_row(in.v_cache, int64_t(page) * c.page_size + r, lv, int64_t(b) * cap + pos, int64_t(c.hk) * Dv);
        }
      }
  } else {
    const int rows = c.batch_idx ? B + 1 : B;
    in.k_cache = HostTensor(c.dtype, {rows, cap, c.hk, D}, L);
    in.v_cache = HostTensor(c.dtype, {rows, cap, c.hk, Dv}, L);
    in.k_cache.fill_normal(rng);
    in.v_cache.fill_normal(rng);
    std::vector<int> perm(rows);
    std::iota(perm.begin(), perm.end(), 0);
    if (c.batch_idx) std::shuffle(perm.begin(), perm.end(), rng);
    in.batch_idx = HostTensor(DType::I32, {B});
    for (int b = 0; b < B; ++b) {
      in.batch_idx.set(b, perm[b]);
      for (int pos = 0; pos < cap; ++pos) {
        copy_row(in.k_cache, int64_t(perm[b]) * cap + pos, lk, int64_t(b) * cap + pos, int64_t(c.hk) * D);
        copy_row(in.v_cache, int64_t(perm[b]) * cap + pos, lv, int64_t(b) * cap + pos, int64_t(c.hk) * Dv);
      }
    }
  }
  if (c.rotary_dim > 0) {
    const int rows = cap + 5, half = c.rotary_dim / 2;
    in.cos = HostTensor(c.dtype, {rows, half});
    in.sin = HostTensor(c.dtype, {rows, half});
    for (int pos = 0; pos < rows; ++pos)
      for (int i = 0; i < half; ++i) {
        const double theta = pos * std::pow(10000.0, -2.0 * i / c.rotary_dim);
        in.cos.set(pos * half + i, std::cos(theta));
        in.sin.set(pos * half + i, std::sin(theta));
      }
  }
  if (c.alibi) {
    in.slopes = HostTensor(DType::F32, {B, c.hq});
    std::uniform_real_distribution<double> u(0.05, 1.0);
    for (int64_t e = 0; e < in.slopes.numel(); ++e) in.slopes.set(e, u(rng));
  }
  in.out_shape = {B, c.sq, c.hq, Dv};
  in.lse_shape = {B, c.hq, c.sq};
  return in;
}

// What a backend run returns: out, lse and the cache tensors after the call (host copies).
struct KVRun {
  Status status;
  HostTensor out, lse, k_cache, v_cache;
};
// Runs the library on a case's inputs (poisoned out / lse given); the CPU suite calls
// forward_kvcache directly, the GPU suite through device copies.
using KVRunner = std::function<KVRun(const KVCase&, const KVInputs&)>;

// Appended cache rows: exact without rotary; rotated rows within one rounding of the dtype of the
// reference (the library rotates in fp32, the reference in float64, both round once).
inline ::testing::AssertionResult cache_matches(const char* what, const KVCase& c, const HostTensor& lib,
                                                const std::vector<double>& ref) {
  const std::vector<double> got = lib.values();
  const double u = unit_roundoff(c.dtype);
  int64_t bad = 0, first = -1;
  for (size_t e = 0; e < ref.size(); ++e) {
    const double tol = c.rotary_dim > 0 ? 2 * u * std::fabs(ref[e]) + 1e-6 : 0.0;
    const bool same = (std::isnan(got[e]) && std::isnan(ref[e])) || std::fabs(got[e] - ref[e]) <= tol;
    if (!same && bad++ == 0) first = static_cast<int64_t>(e);
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << what << ": " << bad << " of " << ref.size()
                                       << " cache elements differ from the expected cache (first at logical index "
                                       << first << ": got " << got[first] << ", expected " << ref[first] << ")";
}

// The full check of one case through `run`.
inline void check_kv_case(const KVCase& c, const KVRunner& run, KVRun* result = nullptr) {
  const KVInputs in = make_kv_inputs(c);
  const KVCacheArgs args = in.args(c);
  ref::KVCacheResult r64, rstd;
  ASSERT_TRUE(ref::forward_kvcache(in.q.view(), in.k_cache.view(), in.v_cache.view(), args, &r64).ok());
  ASSERT_TRUE(ref::forward_kvcache(in.q.view(), in.k_cache.view(), in.v_cache.view(), args, &rstd, true).ok());
  KVRun got = run(c, in);
  ASSERT_TRUE(got.status.ok()) << error_code_name(got.status.code) << ": " << got.status.message;
  EXPECT_EQ(got.out.count_nan(), 0) << "forward_kvcache left elements of out unwritten (or wrote NaN)";
  EXPECT_EQ(got.lse.count_nan(), 0) << "forward_kvcache left elements of lse unwritten (or wrote NaN)";
  EXPECT_TRUE(got.out.gaps_poisoned()) << "forward_kvcache wrote outside the out view (" << layout_name(c.layout) << ")";
  EXPECT_TRUE(within_rule("out", c.dtype, got.out.values(), r64.out, rstd.out));
  EXPECT_TRUE(within_rule("lse", DType::F32, got.lse.values(), r64.lse, rstd.lse));
  // Rows that see no key: O exactly 0 and LSE = -inf.
  const std::vector<double> o = got.out.values(), l = got.lse.values();
  int64_t empty_bad = 0;
  const int Dv = c.head_dim_v();
  for (int b = 0; b < c.batch; ++b)
    for (int h = 0; h < c.hq; ++h)
      for (int i = 0; i < c.sq; ++i) {
        const int64_t li = (int64_t(b) * c.hq + h) * c.sq + i;
        if (!std::isinf(r64.lse[li])) continue;
        if (!(std::isinf(l[li]) && l[li] < 0)) ++empty_bad;
        for (int d = 0; d < Dv; ++d)
          if (o[((int64_t(b) * c.sq + i) * c.hq + h) * Dv + d] != 0.0) ++empty_bad;
      }
  EXPECT_EQ(empty_bad, 0) << "rows that see no key must give O = 0 and LSE = -inf";
  EXPECT_TRUE(cache_matches("k_cache", c, got.k_cache, r64.k_cache));
  EXPECT_TRUE(cache_matches("v_cache", c, got.v_cache, r64.v_cache));
  if (result) *result = std::move(got);
}

// The paged twin of a contiguous case (same seed and capacity, hence the same logical cache).
inline KVCase paged_twin(KVCase c, int page_size) {
  c.name += "_paged" + std::to_string(page_size);
  c.page_size = page_size;
  c.batch_idx = false;
  c.leftpad = false;
  return c;
}

// The same logical cache, contiguous and paged with each of `page_sizes`: every run against the
// reference (check_kv_case), and the paged out and lse identical to the contiguous ones, bit for bit.
inline void expect_paged_equals_contiguous(const KVCase& c, const KVRunner& run, std::initializer_list<int> page_sizes) {
  KVRun contiguous;
  ASSERT_NO_FATAL_FAILURE(check_kv_case(c, run, &contiguous));
  for (int page : page_sizes) {
    KVRun paged;
    ASSERT_NO_FATAL_FAILURE(check_kv_case(paged_twin(c, page), run, &paged));
    EXPECT_TRUE(contiguous.out.bytes() == paged.out.bytes()) << "page size " << page << ": out differs from the contiguous cache";
    EXPECT_TRUE(contiguous.lse.bytes() == paged.lse.bytes()) << "page size " << page << ": lse differs from the contiguous cache";
  }
}

// ---- Paged prefill (forward_paged) ------------------------------------------------------------
// Varlen queries over keys that live in pages: the packed keys (Tk, Hk, D) of a varlen problem are
// scattered into a shuffled page pool, and forward_paged must match the float64 reference of the
// packed problem (ref::forward in varlen mode).
struct PagedCase {
  std::string name;
  DType dtype = DType::F16;
  std::vector<int> lens_q, lens_k;
  int hq = 4, hk = 2, d = 64, dv = 0;
  int page_size = 16;
  bool causal = false;
  int window_left = -1, window_right = -1;
  float softcap = 0.0f;
  bool alibi = false;
  uint64_t seed = 7;
  int head_dim_v() const { return dv > 0 ? dv : d; }
};
inline std::string paged_case_name(const ::testing::TestParamInfo<PagedCase>& info) { return info.param.name; }
inline void PrintTo(const PagedCase& c, std::ostream* os) { *os << c.name; }

struct PagedCaseInputs {
  HostTensor q, k, v, k_cache, v_cache, block_table, cu_q, cu_k, slopes;
  int max_q = 0, max_k = 0;
  Args args(const PagedCase& c) const {  // host views of cu_seqlens and slopes
    Args a;
    a.cu_seqlens_q = cu_q.view();
    a.cu_seqlens_k = cu_k.view();
    a.max_seqlen_q = max_q;
    a.max_seqlen_k = max_k;
    a.causal = c.causal;
    a.window_left = c.window_left;
    a.window_right = c.window_right;
    a.softcap = c.softcap;
    if (c.alibi) a.alibi_slopes = slopes.view();
    return a;
  }
};

inline PagedCaseInputs make_paged_inputs(const PagedCase& c) {
  std::mt19937_64 rng(c.seed);
  PagedCaseInputs in;
  const int B = static_cast<int>(c.lens_q.size()), D = c.d, Dv = c.head_dim_v();
  int tq = 0, tk = 0, per_seq = 1;
  in.cu_q = HostTensor(DType::I32, {B + 1});
  in.cu_k = HostTensor(DType::I32, {B + 1});
  in.cu_q.set(0, 0);
  in.cu_k.set(0, 0);
  for (int b = 0; b < B; ++b) {
    tq += c.lens_q[b];
    tk += c.lens_k[b];
    in.cu_q.set(b + 1, tq);
    in.cu_k.set(b + 1, tk);
    in.max_q = std::max(in.max_q, c.lens_q[b]);
    in.max_k = std::max(in.max_k, c.lens_k[b]);
    per_seq = std::max(per_seq, (c.lens_k[b] + c.page_size - 1) / c.page_size);
  }
  in.q = HostTensor(c.dtype, {std::max(tq, 1), c.hq, D});
  in.k = HostTensor(c.dtype, {std::max(tk, 1), c.hk, D});
  in.v = HostTensor(c.dtype, {std::max(tk, 1), c.hk, Dv});
  in.q.fill_normal(rng);
  in.k.fill_normal(rng);
  in.v.fill_normal(rng);
  const int pages = B * per_seq + 2;
  in.k_cache = HostTensor(c.dtype, {pages, c.page_size, c.hk, D});
  in.v_cache = HostTensor(c.dtype, {pages, c.page_size, c.hk, Dv});
  in.k_cache.fill_normal(rng);
  in.v_cache.fill_normal(rng);
  std::vector<int> perm(pages);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  in.block_table = HostTensor(DType::I32, {B, per_seq});
  int k0 = 0;
  for (int b = 0; b < B; ++b) {
    for (int n = 0; n < per_seq; ++n) in.block_table.set(b * per_seq + n, perm[b * per_seq + n]);
    for (int j = 0; j < c.lens_k[b]; ++j) {
      const int64_t dst = int64_t(perm[b * per_seq + j / c.page_size]) * c.page_size + j % c.page_size;
      for (int64_t e = 0; e < int64_t(c.hk) * D; ++e) in.k_cache.set(dst * c.hk * D + e, in.k.get((k0 + j) * int64_t(c.hk) * D + e));
      for (int64_t e = 0; e < int64_t(c.hk) * Dv; ++e)
        in.v_cache.set(dst * c.hk * Dv + e, in.v.get((k0 + j) * int64_t(c.hk) * Dv + e));
    }
    k0 += c.lens_k[b];
  }
  if (c.alibi) {
    in.slopes = HostTensor(DType::F32, {c.hq});
    for (int h = 0; h < c.hq; ++h) in.slopes.set(h, std::pow(2.0, -8.0 * (h + 1) / c.hq));
  }
  return in;
}

// Runs forward_paged on a case's inputs; returns out (Tq, Hq, Dv) and lse (Hq, Tq), poisoned first.
using PagedRunner = std::function<KVRun(const PagedCase&, const PagedCaseInputs&)>;

inline void check_paged_case(const PagedCase& c, const PagedRunner& run) {
  const PagedCaseInputs in = make_paged_inputs(c);
  const Args args = in.args(c);
  ref::Result r64, rstd;
  ASSERT_TRUE(ref::forward(in.q.view(), in.k.view(), in.v.view(), args, &r64).ok());
  ASSERT_TRUE(ref::standard_forward(in.q.view(), in.k.view(), in.v.view(), args, &rstd).ok());
  KVRun got = run(c, in);
  ASSERT_TRUE(got.status.ok()) << error_code_name(got.status.code) << ": " << got.status.message;
  const int64_t tq = in.q.shape()[0];
  const bool any_q = std::accumulate(c.lens_q.begin(), c.lens_q.end(), 0) > 0;
  if (!any_q) return;
  EXPECT_EQ(got.out.count_nan(), 0) << "forward_paged left elements of out unwritten (or wrote NaN), Tq " << tq;
  EXPECT_EQ(got.lse.count_nan(), 0) << "forward_paged left elements of lse unwritten (or wrote NaN)";
  EXPECT_TRUE(within_rule("out", c.dtype, got.out.values(), r64.out, rstd.out));
  EXPECT_TRUE(within_rule("lse", DType::F32, got.lse.values(), r64.lse, rstd.lse));
}

}  // namespace ioattn::test
