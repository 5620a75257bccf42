// forward_kvcache on the CPU: decode over contiguous and paged caches against the float64
// reference (append, rotary, GQA, masks, softcap, ALiBi, split-KV), paged == contiguous bit for
// bit, and the named errors of malformed index tensors with nothing written.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "kvcache_case.h"

namespace ioattn::test {
namespace {

KVRun run_cpu(const KVCase& c, const KVInputs& in0) {
  KVInputs in = in0;  // the call writes the cache: work on a copy, keep the inputs for the reference
  KVRun r;
  r.out = HostTensor(c.dtype, in.out_shape, c.layout);
  r.lse = HostTensor(DType::F32, in.lse_shape);
  r.out.poison();
  r.lse.poison();
  r.status = forward_kvcache(in.q.view(), in.k_cache.view(), in.v_cache.view(), r.out.view(), r.lse.view(), in.args(c));
  r.k_cache = in.k_cache;
  r.v_cache = in.v_cache;
  return r;
}

KVCase base(const std::string& name, DType dt) {
  KVCase c;
  c.name = name;
  c.dtype = dt;
  return c;
}

std::vector<KVCase> cases() {
  std::vector<KVCase> v;
  { KVCase c = base("DecodeF16Gqa4", DType::F16); c.batch = 3; c.hq = 8; c.hk = 2; c.capacity = 300; v.push_back(c); }
  { KVCase c = base("DecodeF32Mha", DType::F32); c.hq = 3; c.hk = 3; c.d = 40; c.dv = 24; v.push_back(c); }
  { KVCase c = base("NoAppendScalarSeqlen", DType::BF16); c.snew = 0; c.scalar_seqlen = true; c.seqlens = {97}; v.push_back(c); }
  { KVCase c = base("SpeculativeCausalRotaryHalves", DType::F16); c.sq = 4; c.snew = 4; c.causal = true;
    c.rotary_dim = 32; v.push_back(c); }
  { KVCase c = base("RotaryInterleavedNonCausal", DType::BF16); c.sq = 2; c.snew = 2; c.rotary_dim = 64;
    c.interleaved = true; v.push_back(c); }
  { KVCase c = base("RotaryF32Window", DType::F32); c.d = 48; c.sq = 3; c.snew = 3; c.rotary_dim = 16;
    c.window_left = 20; c.window_right = 0; v.push_back(c); }
  { KVCase c = base("PagedCausalGqa4", DType::BF16); c.page_size = 16; c.capacity = 160; c.hq = 8; c.hk = 2;
    c.sq = 3; c.snew = 3; c.causal = true; v.push_back(c); }
  { KVCase c = base("PagedSoftcapAlibiWindow", DType::F32); c.page_size = 32; c.capacity = 192; c.window_left = 40;
    c.window_right = 2; c.softcap = 5.0f; c.alibi = true; c.sq = 2; c.snew = 1; v.push_back(c); }
  { KVCase c = base("BatchIdxLeftpadCausal", DType::F16); c.batch = 3; c.batch_idx = true; c.leftpad = true;
    c.causal = true; c.sq = 2; c.snew = 2; c.rotary_dim = 16; v.push_back(c); }
  { KVCase c = base("EmptyCache", DType::F16); c.snew = 0; c.seqlens = {0}; v.push_back(c); }
  { KVCase c = base("PartlyEmptyLocal", DType::F16); c.snew = 0; c.seqlens = {0, 37}; c.sq = 3; c.causal = true;
    v.push_back(c); }
  { KVCase c = base("FullCache", DType::F16); c.seqlens = {159}; v.push_back(c); }
  { KVCase c = base("Splits7", DType::BF16); c.capacity = 700; c.seqlens = {650, 13}; c.num_splits = 7; v.push_back(c); }
  { KVCase c = base("SplitsMoreThanBlocks", DType::F16); c.seqlens = {40, 3}; c.num_splits = 50; v.push_back(c); }
  { KVCase c = base("LongHeuristicSplits", DType::F16); c.batch = 1; c.hq = 4; c.hk = 1; c.capacity = 2048;
    c.seqlens = {2000}; c.d = 128; v.push_back(c); }
  { KVCase c = base("PagedPrefillCausal", DType::BF16); c.batch = 2; c.page_size = 16; c.capacity = 96; c.sq = 64;
    c.snew = 64; c.seqlens = {0, 20}; c.causal = true; c.rotary_dim = 32; v.push_back(c); }
  { KVCase c = base("MqaGroup16", DType::F16); c.hq = 16; c.hk = 1; c.sq = 2; c.snew = 2; c.causal = true; v.push_back(c); }
  { KVCase c = base("WideDvSplitsF32", DType::F32); c.d = 20; c.dv = 300; c.capacity = 300; c.num_splits = 3;
    c.seqlens = {250, 120}; v.push_back(c); }  // the combine's 256-wide chunks of Dv
  { KVCase c = base("PaddedStridesPagedRotary", DType::BF16); c.layout = Layout::Padded; c.page_size = 16;
    c.capacity = 96; c.sq = 2; c.snew = 2; c.causal = true; c.rotary_dim = 32; c.interleaved = true; v.push_back(c); }
  { KVCase c = base("HeadMajorBatchIdx", DType::F16); c.layout = Layout::HeadMajor; c.batch_idx = true; c.leftpad = true;
    c.sq = 3; c.snew = 1; c.window_left = 30; c.window_right = 5; v.push_back(c); }
  return v;
}

class KVCacheCpu : public ::testing::TestWithParam<KVCase> {};
TEST_P(KVCacheCpu, MatchesReference) { ASSERT_NO_FATAL_FAILURE(check_kv_case(GetParam(), run_cpu)); }
INSTANTIATE_TEST_SUITE_P(Cpu, KVCacheCpu, ::testing::ValuesIn(cases()), kv_case_name);

// The same logical cache, contiguous and paged (two page sizes): identical out and lse, bit for bit,
// and each against the reference.
TEST(KVCacheCpuLayout, PagedEqualsContiguous) {
  KVCase c = base("Twin", DType::BF16);
  c.batch = 3; c.capacity = 192; c.sq = 2; c.snew = 2; c.causal = true; c.rotary_dim = 32; c.hq = 6; c.hk = 2;
  expect_paged_equals_contiguous(c, run_cpu, {16, 64});
}

// Forcing the split count changes the summation order only: every count within the rule (checked by
// check_kv_case) and close to the unsplit result.
TEST(KVCacheCpuSplits, SplitCountsAgree) {
  KVCase c = base("SplitSweep", DType::F32);
  c.capacity = 1000; c.seqlens = {900, 500}; c.d = 32;
  std::vector<double> first;
  for (int splits : {1, 2, 3, 8, 16}) {
    c.num_splits = splits;
    KVRun r;
    ASSERT_NO_FATAL_FAILURE(check_kv_case(c, run_cpu, &r)) << "num_splits " << splits;
    const std::vector<double> o = r.out.values();
    if (first.empty()) first = o;
    double worst = 0;
    for (size_t e = 0; e < o.size(); ++e) worst = std::max(worst, std::fabs(o[e] - first[e]));
    EXPECT_LT(worst, 1e-5) << "num_splits " << splits << " vs 1";
  }
}

// ---- Errors: named, and nothing written -------------------------------------------------------

struct ErrorCheck {
  KVCase c;
  KVInputs in;
  explicit ErrorCheck(KVCase cc) : c(std::move(cc)), in(make_kv_inputs(c)) {}
  // Calls with the (mutated) args; expects `code` with `needle` in the message, out / lse still
  // poisoned and the cache unchanged.
  void expect(const KVCacheArgs& args, ErrorCode code, const std::string& needle, const TensorView* out_override = nullptr) {
    HostTensor out(c.dtype, in.out_shape), lse(DType::F32, in.lse_shape);
    out.poison();
    lse.poison();
    const std::vector<uint8_t> k0 = in.k_cache.bytes(), v0 = in.v_cache.bytes(), o0 = out.bytes(), l0 = lse.bytes();
    const Status s = forward_kvcache(in.q.view(), in.k_cache.view(), in.v_cache.view(),
                                     out_override ? *out_override : out.view(), lse.view(), args);
    EXPECT_EQ(s.code, code) << "got " << error_code_name(s.code) << ": " << s.message;
    EXPECT_NE(s.message.find(needle), std::string::npos) << "message should name '" << needle << "': " << s.message;
    EXPECT_TRUE(in.k_cache.bytes() == k0 && in.v_cache.bytes() == v0) << "a rejected call modified the cache";
    EXPECT_TRUE(out.bytes() == o0 && lse.bytes() == l0) << "a rejected call wrote out or lse";
  }
};

KVCase paged_case() {
  KVCase c = base("ErrPaged", DType::F16);
  c.page_size = 16; c.capacity = 64; c.seqlens = {30, 40}; c.snew = 2;
  return c;
}
KVCase contiguous_case() {
  KVCase c = base("ErrContiguous", DType::F16);
  c.capacity = 64; c.seqlens = {30, 40}; c.snew = 2; c.batch_idx = true;
  return c;
}

TEST(KVCacheCpuErrors, BlockTableEntryOutOfRange) {
  ErrorCheck e(paged_case());
  const int pages = static_cast<int>(e.in.k_cache.shape()[0]);
  e.in.block_table.set(1, pages);  // sequence 0, logical page 1 (used: 32 keys)
  e.expect(e.in.args(e.c), ErrorCode::InvalidIndex, "block_table");
  e.in.block_table.set(1, -1);
  e.expect(e.in.args(e.c), ErrorCode::InvalidIndex, "block_table");
}

TEST(KVCacheCpuErrors, UnusedBlockTableEntriesAreIgnored) {
  KVCase c = paged_case();
  c.seqlens = {10, 12};  // one page each: entries 1..3 of every row unused
  KVInputs in = make_kv_inputs(c);
  for (int b = 0; b < c.batch; ++b) in.block_table.set(b * 4 + 3, -7);
  HostTensor out(c.dtype, in.out_shape), lse(DType::F32, in.lse_shape);
  const Status s = forward_kvcache(in.q.view(), in.k_cache.view(), in.v_cache.view(), out.view(), lse.view(), in.args(c));
  EXPECT_TRUE(s.ok()) << s.message;
}

TEST(KVCacheCpuErrors, LengthPastCapacity) {
  ErrorCheck e(paged_case());
  e.in.seqlens.set(1, 63);  // 63 + 2 new > 64
  e.expect(e.in.args(e.c), ErrorCode::InvalidIndex, "cache_seqlens");
  e.in.seqlens.set(1, -1);
  e.expect(e.in.args(e.c), ErrorCode::InvalidIndex, "cache_seqlens");
  ErrorCheck f(contiguous_case());
  f.in.seqlens.set(0, 64);
  f.expect(f.in.args(f.c), ErrorCode::InvalidIndex, "capacity");
  KVCacheArgs a = f.in.args(f.c);
  a.cache_seqlens = TensorView{};
  a.cache_seqlen = 63;
  f.expect(a, ErrorCode::InvalidIndex, "cache_seqlen");
}

TEST(KVCacheCpuErrors, BatchIndexOutOfRangeOrRepeated) {
  ErrorCheck e(contiguous_case());
  e.in.batch_idx.set(0, 3);  // 3 cache rows
  e.expect(e.in.args(e.c), ErrorCode::InvalidIndex, "cache_batch_idx");
  e.in.batch_idx.set(0, -1);
  e.expect(e.in.args(e.c), ErrorCode::InvalidIndex, "cache_batch_idx");
  e.in.batch_idx.set(0, 1);
  e.in.batch_idx.set(1, 1);  // two sequences appending to one row
  e.expect(e.in.args(e.c), ErrorCode::InvalidIndex, "both append");
}

TEST(KVCacheCpuErrors, LeftpadPastLength) {
  KVCase c = contiguous_case();
  c.leftpad = true;
  ErrorCheck e(c);
  e.in.leftpad.set(0, 31);  // > cache_seqlens 30
  e.expect(e.in.args(e.c), ErrorCode::InvalidIndex, "cache_leftpad");
}

TEST(KVCacheCpuErrors, ShapesAndLayouts) {
  {  // page size not a multiple of 16
    KVCase c = paged_case();
    c.page_size = 8; c.capacity = 64;
    ErrorCheck e(c);
    e.expect(e.in.args(e.c), ErrorCode::InvalidShape, "page size");
  }
  {  // batch index with a paged cache
    ErrorCheck e(paged_case());
    KVCacheArgs a = e.in.args(e.c);
    HostTensor idx(DType::I32, {2});
    idx.set(0, 0); idx.set(1, 1);
    a.cache_batch_idx = idx.view();
    e.expect(a, ErrorCode::InvalidValue, "cache_batch_idx");
  }
  {  // rotary wider than the head, and a table shorter than the cache
    KVCase c = contiguous_case();
    c.rotary_dim = 32;
    ErrorCheck e(c);
    KVCacheArgs a = e.in.args(e.c);
    HostTensor wide(c.dtype, {80, 40});
    std::mt19937_64 rng(3);
    wide.fill_normal(rng);
    a.rotary_cos = a.rotary_sin = wide.view();
    e.expect(a, ErrorCode::InvalidShape, "rotary_cos");
    a = e.in.args(e.c);
    a.rotary_cos.shape[0] = a.rotary_sin.shape[0] = 10;
    e.expect(a, ErrorCode::InvalidShape, "rotary_cos");
    a = e.in.args(e.c);
    a.rotary_sin = TensorView{};
    e.expect(a, ErrorCode::InvalidShape, "rotary");
  }
  {  // k_new without v_new, wrong dtype, negative splits, out overlapping the cache
    ErrorCheck e(contiguous_case());
    KVCacheArgs a = e.in.args(e.c);
    a.v_new = TensorView{};
    e.expect(a, ErrorCode::InvalidShape, "v_new");
    a = e.in.args(e.c);
    a.k_new.dtype = DType::BF16;
    e.expect(a, ErrorCode::InvalidDType, "k_new");
    a = e.in.args(e.c);
    a.num_splits = -1;
    e.expect(a, ErrorCode::InvalidValue, "num_splits");
    a = e.in.args(e.c);
    a.cache_seqlens.shape[0] = 3;
    e.expect(a, ErrorCode::InvalidShape, "cache_seqlens");
    TensorView alias = e.in.k_cache.view();  // out placed on the cache's storage
    alias.shape[0] = 2; alias.shape[1] = 1; alias.shape[2] = e.c.hq; alias.shape[3] = e.c.head_dim_v();
    alias.stride[0] = 1024; alias.stride[1] = 512; alias.stride[2] = 64; alias.stride[3] = 1;
    e.expect(e.in.args(e.c), ErrorCode::InvalidStride, "out", &alias);
  }
}

TEST(KVCacheCpuApi, WorkspaceAndDescribe) {
  KVCase c = paged_case();
  KVInputs in = make_kv_inputs(c);
  size_t bytes = 1;
  const Status s = forward_kvcache_workspace_size(in.q.view(), in.k_cache.view(), in.v_cache.view(), in.args(c), &bytes);
  EXPECT_TRUE(s.ok()) << s.message;
  EXPECT_EQ(bytes, 0u) << "the CPU needs no caller workspace";
  EXPECT_NE(describe_kvcache_choice(in.q.view(), in.k_cache.view(), in.v_cache.view(), in.args(c)).find("cpu"),
            std::string::npos);
}

// ---- Paged prefill (forward_paged) ------------------------------------------------------------

KVRun run_paged_cpu(const PagedCase& c, const PagedCaseInputs& in) {
  KVRun r;
  const int64_t tq = in.q.shape()[0];
  r.out = HostTensor(c.dtype, {tq, c.hq, c.head_dim_v()});
  r.lse = HostTensor(DType::F32, {c.hq, tq});
  r.out.poison();
  r.lse.poison();
  r.status = forward_paged(in.q.view(), in.k_cache.view(), in.v_cache.view(), in.block_table.view(), r.out.view(),
                           r.lse.view(), in.args(c));
  return r;
}

std::vector<PagedCase> paged_cases() {
  std::vector<PagedCase> v;
  { PagedCase c; c.name = "ChunkedCausalF16"; c.lens_q = {5, 0, 17}; c.lens_k = {40, 0, 17}; c.causal = true; v.push_back(c); }
  { PagedCase c; c.name = "SelfPrefillGqa4BF16"; c.dtype = DType::BF16; c.lens_q = {33, 64}; c.lens_k = {33, 64};
    c.hq = 8; c.hk = 2; c.page_size = 32; c.causal = true; v.push_back(c); }
  { PagedCase c; c.name = "WindowSoftcapAlibiF32"; c.dtype = DType::F32; c.d = 40; c.dv = 24; c.lens_q = {3, 9};
    c.lens_k = {100, 9}; c.window_left = 20; c.window_right = 3; c.softcap = 4.0f; c.alibi = true; v.push_back(c); }
  { PagedCase c; c.name = "VarlenDecode"; c.lens_q = {1, 1, 1}; c.lens_k = {50, 0, 130}; v.push_back(c); }
  return v;
}

class PagedPrefillCpu : public ::testing::TestWithParam<PagedCase> {};
TEST_P(PagedPrefillCpu, MatchesPackedReference) { ASSERT_NO_FATAL_FAILURE(check_paged_case(GetParam(), run_paged_cpu)); }
INSTANTIATE_TEST_SUITE_P(Cpu, PagedPrefillCpu, ::testing::ValuesIn(paged_cases()), paged_case_name);

TEST(PagedPrefillCpuErrors, NamedErrorsNothingWritten) {
  PagedCase c;
  c.lens_q = {4, 6};
  c.lens_k = {20, 40};
  auto expect = [&](PagedCaseInputs& in, const Args& a, ErrorCode code, const std::string& needle) {
    const int64_t tq = in.q.shape()[0];
    HostTensor out(c.dtype, {tq, c.hq, c.head_dim_v()}), lse(DType::F32, {c.hq, tq});
    out.poison();
    lse.poison();
    const std::vector<uint8_t> o0 = out.bytes(), l0 = lse.bytes();
    const Status s = forward_paged(in.q.view(), in.k_cache.view(), in.v_cache.view(), in.block_table.view(),
                                   out.view(), lse.view(), a);
    EXPECT_EQ(s.code, code) << error_code_name(s.code) << ": " << s.message;
    EXPECT_NE(s.message.find(needle), std::string::npos) << "message should name '" << needle << "': " << s.message;
    EXPECT_TRUE(out.bytes() == o0 && lse.bytes() == l0) << "a rejected call wrote out or lse";
  };
  {
    PagedCaseInputs in = make_paged_inputs(c);
    in.block_table.set(3 + 1, 1000);  // sequence 1, page 1 (used by its 40 keys)
    expect(in, in.args(c), ErrorCode::InvalidIndex, "block_table");
  }
  {
    PagedCaseInputs in = make_paged_inputs(c);
    in.cu_k.set(2, 20 + 49);  // 49 keys > capacity 3 pages x 16
    Args a = in.args(c);
    a.max_seqlen_k = 49;
    expect(in, a, ErrorCode::InvalidIndex, "cu_seqlens_k");
  }
  {
    PagedCaseInputs in = make_paged_inputs(c);
    Args a = in.args(c);
    a.max_seqlen_k = 30;  // sequence 1 has 40 keys
    expect(in, a, ErrorCode::InvalidIndex, "max_seqlen_k");
    a = in.args(c);
    a.dropout_p = 0.1f;
    expect(in, a, ErrorCode::Unsupported, "dropout_p");
    a = in.args(c);
    a.cu_seqlens_k = TensorView{};
    expect(in, a, ErrorCode::InvalidShape, "cu_seqlens_k");
  }
}

}  // namespace
}  // namespace ioattn::test
