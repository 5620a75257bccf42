// forward_kvcache on the GPU (src/cuda/decode/): the shared KV-cache cases (tests/common/
// kvcache_case.h) through device copies against the float64 reference, head dims 64/128/256 and
// padded ones, GQA packing across row blocks, paged == contiguous bit for bit, split counts, the
// in-kernel split merge bit for bit from call to call and with 128 splits,
// named errors from device-resident index tensors with nothing written, workspace and CUDA graph
// capture. Each failure message names the case, the tensor and the numbers.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "common/kvcache_case.h"
#include "device_buffer.h"

namespace ioattn::test {
namespace {

#define CUDA_OK(expr)                                                                   \
  do {                                                                                  \
    const cudaError_t e_ = (expr);                                                      \
    ASSERT_EQ(e_, cudaSuccess) << #expr << ": " << cudaGetErrorString(e_);              \
  } while (0)

bool have_gpu() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

// Device copies of every input of a case, and the args pointing at them.
struct DeviceKV {
  DeviceBuffer q, k_cache, v_cache, k_new, v_new, cos, sin, seqlens, batch_idx, leftpad, block_table, slopes;
  KVCacheArgs args;
  DeviceKV(const KVCase& c, const KVInputs& in)
      : q(in.q), k_cache(in.k_cache), v_cache(in.v_cache), k_new(in.k_new), v_new(in.v_new), cos(in.cos),
        sin(in.sin), seqlens(in.seqlens), batch_idx(in.batch_idx), leftpad(in.leftpad), block_table(in.block_table),
        slopes(in.slopes), args(in.args(c)) {
    auto swap = [](TensorView& t, const DeviceBuffer& d) {
      if (t.defined()) t = d.view();
    };
    swap(args.k_new, k_new);
    swap(args.v_new, v_new);
    swap(args.rotary_cos, cos);
    swap(args.rotary_sin, sin);
    swap(args.cache_seqlens, seqlens);
    swap(args.cache_batch_idx, batch_idx);
    swap(args.cache_leftpad, leftpad);
    swap(args.block_table, block_table);
    swap(args.alibi_slopes, slopes);
  }
};

KVRun run_gpu(const KVCase& c, const KVInputs& in) {
  KVRun r;
  r.out = HostTensor(c.dtype, in.out_shape, c.layout);
  r.lse = HostTensor(DType::F32, in.lse_shape);
  r.out.poison();
  r.lse.poison();
  DeviceKV d(c, in);
  DeviceBuffer out(r.out), lse(r.lse);
  size_t bytes = 0;
  r.status = forward_kvcache_workspace_size(d.q.view(), d.k_cache.view(), d.v_cache.view(), d.args, &bytes);
  if (!r.status.ok()) return r;
  DeviceScratch ws(bytes);
  d.args.workspace = ws.get();
  d.args.workspace_bytes = bytes;
  r.status = forward_kvcache(d.q.view(), d.k_cache.view(), d.v_cache.view(), out.view(), lse.view(), d.args);
  const cudaError_t e = cudaDeviceSynchronize();
  if (r.status.ok() && e != cudaSuccess)
    r.status = Status{ErrorCode::BackendError, std::string("after forward_kvcache: ") + cudaGetErrorString(e)};
  out.copy_to(r.out);
  lse.copy_to(r.lse);
  r.k_cache = in.k_cache;
  r.v_cache = in.v_cache;
  d.k_cache.copy_to(r.k_cache);
  d.v_cache.copy_to(r.v_cache);
  return r;
}

KVCase base(const std::string& name, DType dt, int d) {
  KVCase c;
  c.name = name;
  c.dtype = dt;
  c.d = d;
  return c;
}

std::vector<KVCase> gpu_cases() {
  std::vector<KVCase> v;
  for (DType dt : {DType::F16, DType::BF16}) {
    const std::string t = dt == DType::F16 ? "F16" : "BF16";
    for (int d : {64, 128, 256}) {  // the three instantiated tiles, GQA group 4, random lengths
      KVCase c = base("Decode" + t + "D" + std::to_string(d), dt, d);
      c.batch = 4; c.hq = 16; c.hk = 4; c.capacity = 700;
      v.push_back(c);
    }
    { KVCase c = base("PagedCausalRotary" + t, dt, 128); c.page_size = 16; c.capacity = 320; c.hq = 8; c.hk = 2;
      c.sq = 3; c.snew = 3; c.causal = true; c.rotary_dim = 64; v.push_back(c); }
    { KVCase c = base("RotaryInterleavedNonCausal" + t, dt, 64); c.sq = 2; c.snew = 2; c.rotary_dim = 64;
      c.interleaved = true; v.push_back(c); }
  }
  // Padded head dims (80 -> the 128 tile, 200 -> 256) and Dv != D.
  { KVCase c = base("PaddedD80", DType::F16, 80); c.capacity = 300; v.push_back(c); }
  { KVCase c = base("PaddedD200Dv72", DType::BF16, 200); c.dv = 72; c.capacity = 300; v.push_back(c); }
  { KVCase c = base("D32Dv64", DType::F16, 32); c.dv = 64; v.push_back(c); }
  // GQA packing: 16 rows exactly, 32 rows over two row blocks, 12 rows over two blocks of 8 (D=256).
  { KVCase c = base("Group16", DType::F16, 128); c.hq = 16; c.hk = 1; c.capacity = 500; v.push_back(c); }
  { KVCase c = base("Group8Sq4Causal", DType::BF16, 128); c.hq = 16; c.hk = 2; c.sq = 4; c.snew = 4; c.causal = true;
    v.push_back(c); }
  { KVCase c = base("D256Group4Sq3", DType::F16, 256); c.hq = 8; c.hk = 2; c.sq = 3; c.snew = 1; c.causal = true;
    v.push_back(c); }
  // Masks and score modifiers.
  { KVCase c = base("WindowSoftcapAlibi", DType::F16, 64); c.page_size = 32; c.capacity = 256; c.sq = 2; c.snew = 2;
    c.window_left = 50; c.window_right = 1; c.softcap = 10.0f; c.alibi = true; v.push_back(c); }
  { KVCase c = base("BatchIdxLeftpadRotary", DType::BF16, 128); c.batch = 3; c.batch_idx = true; c.leftpad = true;
    c.causal = true; c.sq = 2; c.snew = 2; c.rotary_dim = 32; v.push_back(c); }
  { KVCase c = base("EmptyCache", DType::F16, 64); c.snew = 0; c.seqlens = {0}; v.push_back(c); }
  { KVCase c = base("PartlyEmptyCausal", DType::F16, 64); c.snew = 0; c.seqlens = {0, 37}; c.sq = 3; c.causal = true;
    v.push_back(c); }
  { KVCase c = base("NoAppendScalar", DType::BF16, 128); c.snew = 0; c.scalar_seqlen = true; c.seqlens = {129}; v.push_back(c); }
  { KVCase c = base("FullCache", DType::F16, 128); c.seqlens = {699}; c.capacity = 700; v.push_back(c); }
  // Split-KV: forced counts (more than the key tiles too) and the heuristic on a long cache.
  { KVCase c = base("Splits5", DType::F16, 128); c.capacity = 1500; c.seqlens = {1400, 90}; c.num_splits = 5; v.push_back(c); }
  { KVCase c = base("Splits64", DType::BF16, 64); c.capacity = 600; c.seqlens = {300, 5}; c.num_splits = 64; v.push_back(c); }
  { KVCase c = base("LongHeuristic", DType::BF16, 128); c.batch = 1; c.hq = 32; c.hk = 8; c.capacity = 16384;
    c.seqlens = {16000}; c.rotary_dim = 128; v.push_back(c); }
  // The tensor-core kernel's tiles: 16-key warp tiles in a 64-key block tile, a 3-stage per-warp
  // pipeline. A page-16 cache over many stages with the heuristic's splits (every warp tile is one
  // page, the page index read one tile ahead); a window whose first key is not a multiple of 16
  // across forced splits (the loop starts at the 16-key boundary below and masks the keys before).
  { KVCase c = base("Paged16LongGqa4", DType::BF16, 128); c.batch = 2; c.hq = 32; c.hk = 8; c.page_size = 16;
    c.capacity = 4096; c.seqlens = {4000, 1234}; v.push_back(c); }
  { KVCase c = base("WindowUnalignedSplits3", DType::F16, 128); c.capacity = 2000; c.seqlens = {1900, 777};
    c.sq = 2; c.snew = 2; c.window_left = 301; c.window_right = 0; c.num_splits = 3; v.push_back(c); }
  // 100 splits (over a third of them empty): the merge's LSEs over all 4 per lane and its unrolled O
  // loop over more splits than one batch (16 at head dim 128).
  { KVCase c = base("Splits100", DType::F16, 128); c.hq = 8; c.hk = 2; c.capacity = 8000; c.seqlens = {7900, 3000};
    c.num_splits = 100; v.push_back(c); }
  // Head-major (BHSD) q, k_new, caches and out: strides that are multiples of 8, not contiguous rows.
  { KVCase c = base("HeadMajorPagedRotary", DType::BF16, 128); c.layout = Layout::HeadMajor; c.page_size = 32;
    c.capacity = 256; c.hq = 8; c.hk = 2; c.sq = 2; c.snew = 2; c.causal = true; c.rotary_dim = 128; v.push_back(c); }
  { KVCase c = base("HeadMajorBatchIdxSplits", DType::F16, 64); c.layout = Layout::HeadMajor; c.batch_idx = true;
    c.leftpad = true; c.capacity = 900; c.num_splits = 4; v.push_back(c); }
  // Paged prefill (chunked): 200 new rows onto a cache of 50, causal, many row blocks.
  { KVCase c = base("PagedPrefill", DType::F16, 128); c.page_size = 64; c.capacity = 256; c.hq = 4; c.hk = 2;
    c.sq = 200; c.snew = 200; c.seqlens = {50, 0}; c.causal = true; c.rotary_dim = 128; v.push_back(c); }
  return v;
}

class KVCache : public ::testing::TestWithParam<KVCase> {
 protected:
  void SetUp() override {
    if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  }
};
TEST_P(KVCache, MatchesReference) { ASSERT_NO_FATAL_FAILURE(check_kv_case(GetParam(), run_gpu)); }
INSTANTIATE_TEST_SUITE_P(Gpu, KVCache, ::testing::ValuesIn(gpu_cases()), kv_case_name);

TEST(KVCacheGpu, PagedEqualsContiguousBitwise) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  KVCase c = base("Twin", DType::BF16, 128);
  c.batch = 3; c.capacity = 512; c.sq = 2; c.snew = 2; c.causal = true; c.rotary_dim = 64; c.hq = 8; c.hk = 2;
  expect_paged_equals_contiguous(c, run_gpu, {16, 256});
}

TEST(KVCacheGpu, SplitCountsAgree) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  KVCase c = base("SplitSweep", DType::F16, 128);
  c.capacity = 3000; c.seqlens = {2900, 1000}; c.hq = 8; c.hk = 2;
  for (int splits : {1, 2, 7, 24, 0}) {
    c.num_splits = splits;
    c.name = "SplitSweep" + std::to_string(splits);
    ASSERT_NO_FATAL_FAILURE(check_kv_case(c, run_gpu)) << "num_splits " << splits;
  }
}

// The split merge runs in the attend kernel's last-arriving block per group, ordered by arrival
// counters in the workspace. Which block arrives last varies from call to call; the merge order
// does not (splits in index order), so repeated calls must agree bit for bit. Every call reuses one
// workspace that starts as garbage (0xA5 bytes) and keeps the previous call's counters: the call
// itself must zero them. Shapes: group 4 over 24 splits (4 rows per block, one per warp), group 16
// at head dim 256 over 20 splits (16 rows, four per warp), paged group 8 over the heuristic's splits,
// and group 16 over 13 splits, which on sm_90 merge in a thread-block cluster instead (the kernel's
// description says which; a cluster call needs no workspace, every other split call does).
TEST(KVCacheGpu, SplitMergeBitwiseRepeatable) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  std::vector<KVCase> cases;
  { KVCase c = base("RepeatGqa4Splits24", DType::F16, 128); c.batch = 2; c.hq = 32; c.hk = 8; c.capacity = 6000;
    c.seqlens = {5900, 2500}; c.snew = 0; c.num_splits = 24; cases.push_back(c); }
  { KVCase c = base("RepeatGroup16D256Splits20", DType::BF16, 256); c.batch = 1; c.hq = 16; c.hk = 1;
    c.capacity = 3000; c.seqlens = {2950}; c.snew = 0; c.num_splits = 20; cases.push_back(c); }
  // At most 16 splits merge in a thread-block cluster on sm_90 (no workspace); elsewhere as above.
  { KVCase c = base("RepeatGroup16D128Splits13", DType::BF16, 128); c.batch = 2; c.hq = 16; c.hk = 1;
    c.capacity = 3000; c.seqlens = {2950, 1200}; c.snew = 0; c.num_splits = 13; cases.push_back(c); }
  { KVCase c = base("RepeatPagedGqa8Heuristic", DType::BF16, 128); c.batch = 1; c.hq = 32; c.hk = 4;
    c.page_size = 16; c.capacity = 16384; c.seqlens = {16000}; c.snew = 0; cases.push_back(c); }
  for (const KVCase& c : cases) {
    SCOPED_TRACE(c.name);
    KVRun first;
    ASSERT_NO_FATAL_FAILURE(check_kv_case(c, run_gpu, &first));  // against the reference, fresh workspace
    KVInputs in = make_kv_inputs(c);
    DeviceKV d(c, in);
    size_t bytes = 0;
    ASSERT_TRUE(forward_kvcache_workspace_size(d.q.view(), d.k_cache.view(), d.v_cache.view(), d.args, &bytes).ok());
    const std::string name = describe_kvcache_choice(d.q.view(), d.k_cache.view(), d.v_cache.view(), d.args);
    if (name.find("cluster") != std::string::npos)
      EXPECT_EQ(bytes, 0u) << "a cluster merge needs no workspace: " << name;
    else
      ASSERT_GT(bytes, 0u) << "a split call merged through global memory needs a workspace: " << name;
    DeviceScratch ws(bytes + 16);
    CUDA_OK(cudaMemset(ws.get(), 0xA5, bytes + 16));
    d.args.workspace = ws.get();
    d.args.workspace_bytes = bytes;
    for (int rep = 0; rep < 5; ++rep) {
      HostTensor out(c.dtype, in.out_shape, c.layout), lse(DType::F32, in.lse_shape);
      out.poison();
      lse.poison();
      DeviceBuffer dout(out), dlse(lse);
      const Status s = forward_kvcache(d.q.view(), d.k_cache.view(), d.v_cache.view(), dout.view(), dlse.view(), d.args);
      ASSERT_TRUE(s.ok()) << "call " << rep << ": " << s.message;
      CUDA_OK(cudaDeviceSynchronize());
      dout.copy_to(out);
      dlse.copy_to(lse);
      EXPECT_TRUE(out.bytes() == first.out.bytes()) << "call " << rep << ": out differs bitwise from the first call";
      EXPECT_TRUE(lse.bytes() == first.lse.bytes()) << "call " << rep << ": lse differs bitwise from the first call";
    }
  }
}

// Many splits on one long sequence: 65536 keys at batch 1 forced to the most splits the kernel
// takes (128 = decode::kMaxSplits; 8 key tiles each), so one block merges 128 partials per row:
// one query row per group (MHA), and 16 rows per group (four per warp) at head dim 64.
TEST(KVCacheGpu, ManySplitsLongCache) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  std::vector<KVCase> cases;
  { KVCase c = base("ManySplitsOneRow", DType::F16, 128); c.batch = 1; c.hq = 1; c.hk = 1; c.capacity = 65536;
    c.seqlens = {65535}; c.snew = 1; c.num_splits = 128; cases.push_back(c); }
  { KVCase c = base("ManySplitsGroup16", DType::BF16, 64); c.batch = 1; c.hq = 16; c.hk = 1; c.capacity = 65536;
    c.seqlens = {65535}; c.snew = 1; c.num_splits = 128; cases.push_back(c); }
  for (const KVCase& c : cases) {
    SCOPED_TRACE(c.name);
    const KVInputs in = make_kv_inputs(c);
    DeviceKV d(c, in);
    const std::string name = describe_kvcache_choice(d.q.view(), d.k_cache.view(), d.v_cache.view(), d.args);
    EXPECT_NE(name.find("128 splits"), std::string::npos) << name;
    ASSERT_NO_FATAL_FAILURE(check_kv_case(c, run_gpu));
  }
}

// Device-resident index tensors are checked on the host (no capture): named errors, out / lse
// still poisoned and the cache unchanged.
void expect_rejected(const KVCase& c, KVInputs& in, ErrorCode code, const std::string& needle) {
  DeviceKV d(c, in);
  HostTensor out(c.dtype, in.out_shape), lse(DType::F32, in.lse_shape);
  out.poison();
  lse.poison();
  DeviceBuffer dout(out), dlse(lse);
  const std::vector<uint8_t> k0 = d.k_cache.bytes(), v0 = d.v_cache.bytes(), o0 = dout.bytes(), l0 = dlse.bytes();
  DeviceScratch ws(1 << 24);
  d.args.workspace = ws.get();
  d.args.workspace_bytes = 1 << 24;
  const Status s = forward_kvcache(d.q.view(), d.k_cache.view(), d.v_cache.view(), dout.view(), dlse.view(), d.args);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_EQ(s.code, code) << c.name << ": got " << error_code_name(s.code) << ": " << s.message;
  EXPECT_NE(s.message.find(needle), std::string::npos) << c.name << ": message should name '" << needle << "': " << s.message;
  EXPECT_TRUE(d.k_cache.bytes() == k0 && d.v_cache.bytes() == v0) << c.name << ": a rejected call modified the cache";
  EXPECT_TRUE(dout.bytes() == o0 && dlse.bytes() == l0) << c.name << ": a rejected call wrote out or lse";
}

TEST(KVCacheGpu, BadIndicesRejected) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  KVCase paged = base("BadPaged", DType::F16, 64);
  paged.page_size = 16; paged.capacity = 64; paged.seqlens = {30, 40}; paged.snew = 2;
  {
    KVInputs in = make_kv_inputs(paged);
    in.block_table.set(1, static_cast<int>(in.k_cache.shape()[0]));
    expect_rejected(paged, in, ErrorCode::InvalidIndex, "block_table");
  }
  {
    KVInputs in = make_kv_inputs(paged);
    in.seqlens.set(1, 63);
    expect_rejected(paged, in, ErrorCode::InvalidIndex, "cache_seqlens");
  }
  KVCase contiguous = base("BadContiguous", DType::F16, 64);
  contiguous.capacity = 64; contiguous.seqlens = {30, 40}; contiguous.snew = 2; contiguous.batch_idx = true;
  contiguous.leftpad = true;
  {
    KVInputs in = make_kv_inputs(contiguous);
    in.batch_idx.set(0, 3);
    expect_rejected(contiguous, in, ErrorCode::InvalidIndex, "cache_batch_idx");
  }
  {
    KVInputs in = make_kv_inputs(contiguous);
    in.leftpad.set(1, 41);
    expect_rejected(contiguous, in, ErrorCode::InvalidIndex, "cache_leftpad");
  }
}

TEST(KVCacheGpu, MisalignedCacheAndSmallWorkspace) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  KVCase c = base("Contract", DType::F16, 64);
  // No append: the shifted k_cache view below reaches 2 bytes past its allocation, which must not
  // trip the cache-overlap checks an append adds (allocations can be adjacent).
  // 20 splits: more than a cluster takes, so the partials go through the workspace on every GPU.
  c.capacity = 4096; c.seqlens = {4000, 4000}; c.batch = 2; c.hq = 2; c.hk = 1; c.num_splits = 20; c.snew = 0;
  KVInputs in = make_kv_inputs(c);
  DeviceKV d(c, in);
  HostTensor out(c.dtype, in.out_shape), lse(DType::F32, in.lse_shape);
  DeviceBuffer dout(out), dlse(lse);
  size_t bytes = 0;
  Status s = forward_kvcache_workspace_size(d.q.view(), d.k_cache.view(), d.v_cache.view(), d.args, &bytes);
  ASSERT_TRUE(s.ok()) << s.message;
  EXPECT_GT(bytes, 0u) << "20 splits need partial results in the workspace";
  s = forward_kvcache(d.q.view(), d.k_cache.view(), d.v_cache.view(), dout.view(), dlse.view(), d.args);
  EXPECT_EQ(s.code, ErrorCode::WorkspaceTooSmall) << s.message;
  TensorView shifted = d.k_cache.view();
  shifted.data = static_cast<char*>(shifted.data) + 2;  // one fp16 element: not 16-byte aligned (query only)
  DeviceScratch ws(bytes + 16);
  d.args.workspace = static_cast<char*>(ws.get()) + 4;  // large enough, but not 16-byte aligned
  d.args.workspace_bytes = bytes;
  s = forward_kvcache(d.q.view(), d.k_cache.view(), d.v_cache.view(), dout.view(), dlse.view(), d.args);
  EXPECT_EQ(s.code, ErrorCode::Misaligned) << error_code_name(s.code) << ": " << s.message;
  EXPECT_NE(s.message.find("workspace"), std::string::npos) << s.message;
  d.args.workspace = ws.get();
  KVCacheArgs one = d.args;
  s = forward_kvcache_workspace_size(d.q.view(), shifted, d.v_cache.view(), one, &bytes);
  EXPECT_EQ(s.code, ErrorCode::Misaligned) << error_code_name(s.code) << ": " << s.message;
  EXPECT_NE(s.message.find("k_cache"), std::string::npos) << s.message;
  std::string name = describe_kvcache_choice(d.q.view(), d.k_cache.view(), d.v_cache.view(), d.args);
  EXPECT_NE(name.find("20 splits"), std::string::npos) << name;
}

// Captured in a CUDA graph (no host synchronisation inside the call): replay gives the eager
// result bit for bit. The append writes the same rows each replay, so replays are idempotent.
TEST(KVCacheGpu, GraphCaptureMatchesEager) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  KVCase c = base("Graph", DType::F16, 128);
  c.batch = 2; c.hq = 8; c.hk = 2; c.capacity = 2048; c.seqlens = {2000, 700}; c.snew = 1; c.rotary_dim = 64;
  c.page_size = 32;
  KVInputs in = make_kv_inputs(c);
  KVRun eager = run_gpu(c, in);
  ASSERT_TRUE(eager.status.ok()) << eager.status.message;

  DeviceKV d(c, in);
  HostTensor out(c.dtype, in.out_shape), lse(DType::F32, in.lse_shape);
  out.poison();
  lse.poison();
  DeviceBuffer dout(out), dlse(lse);
  size_t bytes = 0;
  ASSERT_TRUE(forward_kvcache_workspace_size(d.q.view(), d.k_cache.view(), d.v_cache.view(), d.args, &bytes).ok());
  DeviceScratch ws(bytes);
  cudaStream_t stream;
  CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  d.args.stream = stream;
  d.args.workspace = ws.get();
  d.args.workspace_bytes = bytes;
  cudaGraph_t graph;
  CUDA_OK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  const Status s = forward_kvcache(d.q.view(), d.k_cache.view(), d.v_cache.view(), dout.view(), dlse.view(), d.args);
  CUDA_OK(cudaStreamEndCapture(stream, &graph));
  ASSERT_TRUE(s.ok()) << "during capture: " << s.message;
  cudaGraphExec_t exec;
  CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));
  CUDA_OK(cudaGraphLaunch(exec, stream));
  CUDA_OK(cudaGraphLaunch(exec, stream));
  CUDA_OK(cudaStreamSynchronize(stream));
  dout.copy_to(out);
  dlse.copy_to(lse);
  EXPECT_TRUE(out.bytes() == eager.out.bytes()) << "graph replay out differs from the eager call";
  EXPECT_TRUE(lse.bytes() == eager.lse.bytes()) << "graph replay lse differs from the eager call";
  HostTensor kc = in.k_cache;
  d.k_cache.copy_to(kc);
  EXPECT_TRUE(kc.bytes() == eager.k_cache.bytes()) << "graph replay left a different k_cache";
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(stream);
}

// ---- Paged prefill (forward_paged) on the GPU ---------------------------------------------------

KVRun run_paged_gpu(const PagedCase& c, const PagedCaseInputs& in) {
  KVRun r;
  const int64_t tq = in.q.shape()[0];
  r.out = HostTensor(c.dtype, {tq, c.hq, c.head_dim_v()});
  r.lse = HostTensor(DType::F32, {c.hq, tq});
  r.out.poison();
  r.lse.poison();
  DeviceBuffer q(in.q), kc(in.k_cache), vc(in.v_cache), bt(in.block_table), cu_q(in.cu_q), cu_k(in.cu_k),
      slopes(in.slopes), out(r.out), lse(r.lse);
  Args a = in.args(c);
  a.cu_seqlens_q = cu_q.view();
  a.cu_seqlens_k = cu_k.view();
  if (c.alibi) a.alibi_slopes = slopes.view();
  size_t bytes = 0;
  r.status = forward_paged_workspace_size(q.view(), kc.view(), vc.view(), bt.view(), a, &bytes);
  if (!r.status.ok()) return r;
  DeviceScratch ws(bytes);
  a.workspace = ws.get();
  a.workspace_bytes = bytes;
  r.status = forward_paged(q.view(), kc.view(), vc.view(), bt.view(), out.view(), lse.view(), a);
  const cudaError_t e = cudaDeviceSynchronize();
  if (r.status.ok() && e != cudaSuccess)
    r.status = Status{ErrorCode::BackendError, std::string("after forward_paged: ") + cudaGetErrorString(e)};
  out.copy_to(r.out);
  lse.copy_to(r.lse);
  return r;
}

std::vector<PagedCase> gpu_paged_cases() {
  std::vector<PagedCase> v;
  { PagedCase c; c.name = "ChunkedCausalF16"; c.lens_q = {5, 0, 17}; c.lens_k = {40, 0, 17}; c.causal = true; v.push_back(c); }
  { PagedCase c; c.name = "SelfPrefillGqa4BF16D128"; c.dtype = DType::BF16; c.d = 128; c.lens_q = {133, 300};
    c.lens_k = {133, 300}; c.hq = 8; c.hk = 2; c.page_size = 32; c.causal = true; v.push_back(c); }
  { PagedCase c; c.name = "WindowSoftcapAlibiD256"; c.d = 256; c.lens_q = {3, 9}; c.lens_k = {600, 9};
    c.window_left = 100; c.window_right = 3; c.softcap = 4.0f; c.alibi = true; c.page_size = 256; v.push_back(c); }
  { PagedCase c; c.name = "VarlenDecodeLong"; c.lens_q = {1, 1, 1}; c.lens_k = {5000, 0, 1300}; c.hq = 16; c.hk = 2;
    c.d = 128; v.push_back(c); }
  return v;
}

class PagedPrefill : public ::testing::TestWithParam<PagedCase> {
 protected:
  void SetUp() override {
    if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  }
};
TEST_P(PagedPrefill, MatchesPackedReference) { ASSERT_NO_FATAL_FAILURE(check_paged_case(GetParam(), run_paged_gpu)); }
INSTANTIATE_TEST_SUITE_P(Gpu, PagedPrefill, ::testing::ValuesIn(gpu_paged_cases()), paged_case_name);

TEST(PagedPrefillGpu, BadBlockTableRejected) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  PagedCase c;
  c.lens_q = {4, 6};
  c.lens_k = {20, 40};
  PagedCaseInputs in = make_paged_inputs(c);
  in.block_table.set(3 + 1, 1000);  // sequence 1, page 1 (used)
  const KVRun r = run_paged_gpu(c, in);
  EXPECT_EQ(r.status.code, ErrorCode::InvalidIndex) << error_code_name(r.status.code) << ": " << r.status.message;
  EXPECT_NE(r.status.message.find("block_table"), std::string::npos) << r.status.message;
  EXPECT_EQ(r.out.count_nan(), r.out.numel()) << "a rejected call wrote out";
}

// ---- Timing (informational, no assertion on speed) ----------------------------------------------
// Decode bandwidth on typical shapes: the K/V bytes a call must read over its time (events, 20
// calls after a warm-up), for the split heuristic and for num_splits = 1. Printed for the log of
// the GPU run.
// A measurement, not a check: disabled so the suite asserts only correctness; run it with
// --gtest_also_run_disabled_tests. The decode benchmark of the decoding issue belongs in bench/gpu/.
TEST(KVCacheGpuTiming, DISABLED_DecodeBandwidth) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  struct Shape { int batch, hq, hk, d, len, page; };
  const Shape shapes[] = {{1, 32, 8, 128, 32768, 0},   {1, 32, 8, 128, 131072, 16}, {8, 32, 8, 128, 8192, 0},
                          {8, 32, 8, 128, 32768, 16},  {64, 32, 8, 128, 8192, 0},   {64, 32, 8, 128, 8192, 16},
                          {16, 64, 8, 128, 4096, 256}, {4, 32, 32, 128, 8192, 0},   {8, 16, 2, 256, 8192, 64}};
  for (const Shape& sh : shapes) {
    const int64_t cap = sh.len + 64;
    const int64_t per_seq = sh.page ? (cap + sh.page - 1) / sh.page : 0;
    const int64_t rows = sh.page ? sh.batch * per_seq : sh.batch, rlen = sh.page ? sh.page : cap;
    const size_t kv_elems = static_cast<size_t>(rows) * rlen * sh.hk * sh.d;
    void *q, *kc, *vc, *out, *bt = nullptr;
    CUDA_OK(cudaMalloc(&q, sizeof(uint16_t) * sh.batch * sh.hq * sh.d));
    CUDA_OK(cudaMalloc(&kc, sizeof(uint16_t) * kv_elems));
    CUDA_OK(cudaMalloc(&vc, sizeof(uint16_t) * kv_elems));
    CUDA_OK(cudaMalloc(&out, sizeof(uint16_t) * sh.batch * sh.hq * sh.d));
    CUDA_OK(cudaMemset(q, 0x2c, sizeof(uint16_t) * sh.batch * sh.hq * sh.d));  // fp16 0x2c2c ~ 0.06
    CUDA_OK(cudaMemset(kc, 0x2c, sizeof(uint16_t) * kv_elems));
    CUDA_OK(cudaMemset(vc, 0x2c, sizeof(uint16_t) * kv_elems));
    std::vector<int32_t> table(static_cast<size_t>(sh.batch) * std::max<int64_t>(per_seq, 1));
    // Pages in a shuffled order (a fixed permutation), as a serving cache's allocator leaves them:
    // the cost of scattered pages is part of what is timed.
    for (size_t e = 0; e < table.size(); ++e) table[e] = static_cast<int32_t>(e);
    for (size_t e = table.size(); e > 1; --e) std::swap(table[e - 1], table[(e * 2654435761u) % e]);
    if (sh.page) {
      CUDA_OK(cudaMalloc(&bt, sizeof(int32_t) * table.size()));
      CUDA_OK(cudaMemcpy(bt, table.data(), sizeof(int32_t) * table.size(), cudaMemcpyHostToDevice));
    }
    auto dev = [](void* p, std::initializer_list<int64_t> shape, DType dt = DType::F16) {
      return TensorView::contiguous(p, dt, shape, DeviceType::CUDA, 0);
    };
    const TensorView tq = dev(q, {sh.batch, 1, sh.hq, sh.d}), to = dev(out, {sh.batch, 1, sh.hq, sh.d});
    const TensorView tk = dev(kc, {rows, rlen, sh.hk, sh.d}), tv = dev(vc, {rows, rlen, sh.hk, sh.d});
    for (int splits : {0, 1}) {
      KVCacheArgs a;
      a.cache_seqlen = sh.len;
      a.num_splits = splits;
      if (sh.page) a.block_table = dev(bt, {sh.batch, per_seq}, DType::I32);
      size_t bytes = 0;
      Status s = forward_kvcache_workspace_size(tq, tk, tv, a, &bytes);
      ASSERT_TRUE(s.ok()) << s.message;
      DeviceScratch ws(bytes);
      a.workspace = ws.get();
      a.workspace_bytes = bytes;
      cudaStream_t stream;
      CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
      a.stream = stream;
      s = forward_kvcache(tq, tk, tv, to, TensorView{}, a);  // warm-up (and the index checks)
      ASSERT_TRUE(s.ok()) << s.message;
      // Replayed from a graph: under capture the host-side index check (a synchronisation) is
      // skipped, so the events time the kernels alone.
      cudaGraph_t graph;
      cudaGraphExec_t exec;
      CUDA_OK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
      s = forward_kvcache(tq, tk, tv, to, TensorView{}, a);
      CUDA_OK(cudaStreamEndCapture(stream, &graph));
      ASSERT_TRUE(s.ok()) << s.message;
      CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));
      cudaEvent_t t0, t1;
      CUDA_OK(cudaEventCreate(&t0));
      CUDA_OK(cudaEventCreate(&t1));
      constexpr int kReps = 20;
      CUDA_OK(cudaGraphLaunch(exec, stream));
      CUDA_OK(cudaEventRecord(t0, stream));
      for (int r = 0; r < kReps; ++r) CUDA_OK(cudaGraphLaunch(exec, stream));
      CUDA_OK(cudaEventRecord(t1, stream));
      CUDA_OK(cudaEventSynchronize(t1));
      cudaGraphExecDestroy(exec);
      cudaGraphDestroy(graph);
      float ms = 0;
      CUDA_OK(cudaEventElapsedTime(&ms, t0, t1));
      const double us = 1000.0 * ms / kReps;
      const double kv_bytes = 2.0 * sh.batch * sh.len * sh.hk * sh.d * sizeof(uint16_t);
      std::printf("[ timing   ] decode B=%d Hq=%d Hk=%d D=%d len=%d %s: %8.1f us  %7.1f GB/s  (%s)\n", sh.batch, sh.hq,
                  sh.hk, sh.d, sh.len, sh.page ? ("paged" + std::to_string(sh.page)).c_str() : "contiguous", us,
                  kv_bytes / us / 1e3, describe_kvcache_choice(tq, tk, tv, a).c_str());
      // After describe_kvcache_choice: it validates like the call, and with device-resident indices
      // (the paged shapes) that uses a.stream, so the stream must still exist.
      cudaStreamDestroy(stream);
      cudaEventDestroy(t0);
      cudaEventDestroy(t1);
    }
    cudaFree(q);
    cudaFree(kc);
    cudaFree(vc);
    cudaFree(out);
    if (bt) cudaFree(bt);
  }
}

}  // namespace
}  // namespace ioattn::test
