// CPU backend entry points (src/core/backends.h): choose the instruction set once, split a call
// into independent tasks and run them on OpenMP threads. The kernels (flash_kernels.h) never see
// threads; every task writes only the output rows it owns, so no call has a race and results do
// not depend on the thread count or the schedule.
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>

#include "core/backends.h"
#include "core/mask.h"
#include "cpu/kernels.h"
#include "cpu/scratch.h"

extern "C" char* openblas_get_corename(void);

namespace ioattn {
namespace cpu {

// Per-thread scratch: must cover fwd_tiles() and bwd_tiles() of flash_kernels.h (the checker and
// AddressSanitizer runs of every ISA build exercise both).
size_t fwd_scratch_floats(const Params& p) {
  const size_t d = p.head_dim, dv = p.head_dim_v;
  return kFwdBlockQ * (d + dv + kFwdBlockK + 2) + kFwdBlockK * (d + dv + kPairPad);
}

size_t bwd_scratch_floats(const Params& p) {
  const size_t d = p.head_dim, dv = p.head_dim_v;
  return kBwdBlockK * (3 * d + 2 * dv) + kBwdBlockQ * (2 * d + dv) + 4 * static_cast<size_t>(kBwdBlockQ) * kBwdBlockK +
         kBwdBlockK / 2 * (d + kPairPad) + kBwdBlockQ / 2 * (d + dv + 2 * kPairPad) + kBwdBlockK * kBwdBlockQ / 2;
}

namespace {

// The fused single-pass backward (each task owns a whole (batch, kv head): dK, dV and, through an
// fp32 accumulator, the dQ of the group's query heads) does 5 tile products per tile; the two-pass
// one 7 (S and dP are recomputed for dQ) but splits the keys into blocks. Fused needs enough
// (batch, kv head) tasks to keep the threads busy and an accumulator of group·Sq·D floats per
// running task; both limits depend only on the shapes, so the result never depends on the thread
// count.
constexpr int kFusedMinTasks = 8;
constexpr size_t kFusedMaxAccBytes = size_t{64} << 20;

struct Isa {
  const Kernels* kernels;
  std::string features;
};

// The best kernels this CPU runs. IOATTN_CPU_ISA=avx512|avx2|generic caps the choice (to test the other
// builds on one machine); it never selects more than the CPU has.
Isa choose_isa() {
  __builtin_cpu_init();
  const bool has_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const bool has_avx512 = has_avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  const char* cap = std::getenv("IOATTN_CPU_ISA");
  const std::string want = cap ? cap : "";
  Isa isa;
  const bool has_bf16 = has_avx512 && __builtin_cpu_supports("avx512bf16");
  if (has_bf16 && want.empty()) {
    isa = {&avx512bf16::kernels(), "avx512f avx512bw avx512vl avx512dq avx512bf16 fma f16c"};
  } else if (has_avx512 && (want.empty() || want == "avx512")) {
    isa = {&avx512::kernels(), "avx512f avx512bw avx512vl avx512dq fma f16c"};
  } else if (has_avx2 && want != "generic") {
    isa = {&avx2::kernels(), "avx2 fma f16c"};
  } else {
    isa = {&generic::kernels(), "sse2"};
  }
  isa.features += std::string(" (kernels ") + isa.kernels->isa + ", OpenBLAS " + openblas_get_corename() + ")";
  return isa;
}

const Isa& isa() {
  static const Isa chosen = choose_isa();
  return chosen;
}

Status out_of_memory(const char* what) {
  return Status{ErrorCode::BackendError, std::string("cpu: out of memory for ") + what};
}

// Runs body(task, ws) for task in [0, n) on the OpenMP threads, each thread with its own scratch of
// ws_floats floats. Dynamic scheduling: tasks are ordered heaviest first by the callers.
template <class Body>
Status run_tasks(int64_t n, size_t ws_floats, const char* what, Body body) {
  if (n <= 0) return Status::Ok();
  std::atomic<bool> failed{false};
  const int threads = static_cast<int>(std::min<int64_t>(n, omp_get_max_threads()));
#pragma omp parallel num_threads(threads)
  {
    Scratch<float> ws(ws_floats);
    if (!ws.ok()) failed = true;
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < n; ++t)
      if (!failed.load(std::memory_order_relaxed)) body(t, ws.get());
  }
  return failed ? out_of_memory(what) : Status::Ok();
}

// A query (or key) block of one sequence and the number of keys (queries) it meets: tasks are
// sorted by that cost so the long causal rows start first.
struct Block {
  int b, blk;
  int64_t cost;
};

Scratch<Block> query_blocks(const Params& p, int block, int64_t* count) {
  int64_t n = 0;
  for (int b = 0; b < p.batch; ++b) n += (seq_of(p, b).sq + block - 1) / block;
  Scratch<Block> blocks(static_cast<size_t>(n));
  *count = blocks.ok() ? n : -1;
  if (!blocks.ok()) return blocks;
  int64_t t = 0;
  for (int b = 0; b < p.batch; ++b) {
    const Seq s = seq_of(p, b);
    const WindowMask mask{p.window_left, p.window_right, s.sk - s.sq};
    for (int i0 = 0; i0 < s.sq; i0 += block) {
      const int i1 = std::min(i0 + block, s.sq) - 1;
      const int64_t keys = std::max(0, mask.end_key(i1, s.sk) - std::min(mask.first_key(i0), s.sk));
      blocks.get()[t++] = Block{b, i0 / block, keys};
    }
  }
  std::stable_sort(blocks.get(), blocks.get() + n, [](const Block& x, const Block& y) { return x.cost > y.cost; });
  return blocks;
}

}  // namespace

std::string features() { return isa().features; }

Status forward(const Params& p) {
  const Kernels& k = *isa().kernels;
  int64_t nblocks;
  Scratch<Block> blocks = query_blocks(p, kFwdBlockQ, &nblocks);
  if (nblocks < 0) return out_of_memory("the task table");
  // Task = (head, query block): consecutive tasks share a head, so K and V stay in the L3 cache
  // for the threads working on it.
  const int heads = p.heads_q;
  return run_tasks(nblocks * heads, fwd_scratch_floats(p), "forward tiles", [&](int64_t t, float* ws) {
    const Block& blk = blocks.get()[t % nblocks];
    k.fwd_block(p, blk.b, static_cast<int>(t / nblocks), blk.blk, ws);
  });
}

Status backward(const Params& p) {
  const Kernels& k = *isa().kernels;
  // D = rowsum(dO ∘ O), one float per query row and head (the LSE's layout).
  Scratch<float> dsum(lse_count(p));
  if (!dsum.ok()) return out_of_memory("rowsum(dO * O)");
  const int hq = p.heads_q, hk = p.heads_k;
  Status s = run_tasks(static_cast<int64_t>(p.batch) * hq, 2 * static_cast<size_t>(p.head_dim_v), "rowsum(dO * O)",
                       [&](int64_t t, float* ws) { k.bwd_rowdot(p, static_cast<int>(t / hq), static_cast<int>(t % hq), dsum.get(), ws); });
  if (!s.ok()) return s;

  const size_t acc_floats = static_cast<size_t>(p.group) * p.seqlen_q * p.head_dim;
  const bool fused = static_cast<int64_t>(p.batch) * hk >= kFusedMinTasks && acc_floats * sizeof(float) <= kFusedMaxAccBytes;
  if (fused) {
    std::atomic<bool> no_memory{false};
    s = run_tasks(static_cast<int64_t>(p.batch) * hk, bwd_scratch_floats(p), "backward tiles", [&](int64_t t, float* ws) {
      const int b = static_cast<int>(t / hk), kvh = static_cast<int>(t % hk);
      const Seq sq = seq_of(p, b);
      const size_t n = static_cast<size_t>(p.group) * sq.sq * p.head_dim;
      Scratch<float> dq(n);  // (group, sq, D) fp32, owned by this task
      if (!dq.ok()) { no_memory = true; return; }
      if (n) std::memset(dq.get(), 0, n * sizeof(float));
      for (int kb = 0; kb * kBwdBlockK < sq.sk; ++kb) k.bwd_kv_block(p, dsum.get(), b, kvh, kb, dq.get(), ws);
      for (int g = 0; g < p.group; ++g)
        k.store_dq(p, b, kvh * p.group + g, dq.get() + static_cast<size_t>(g) * sq.sq * p.head_dim);
    });
    if (s.ok() && no_memory) s = out_of_memory("the dQ accumulator");
    return s;
  }

  // Two passes: dK, dV by (kv head, key block); then dQ by (query head, query block).
  int64_t nkb = 0;
  for (int b = 0; b < p.batch; ++b) nkb += (seq_of(p, b).sk + kBwdBlockK - 1) / kBwdBlockK;
  Scratch<Block> kblocks(static_cast<size_t>(nkb));
  if (!kblocks.ok()) return out_of_memory("the task table");
  for (int b = 0, t = 0; b < p.batch; ++b)
    for (int kb = 0; kb * kBwdBlockK < seq_of(p, b).sk; ++kb) kblocks.get()[t++] = Block{b, kb, 0};
  s = run_tasks(nkb * hk, bwd_scratch_floats(p), "backward tiles", [&](int64_t t, float* ws) {
    const Block& blk = kblocks.get()[t % nkb];
    k.bwd_kv_block(p, dsum.get(), blk.b, static_cast<int>(t / nkb), blk.blk, nullptr, ws);
  });
  if (!s.ok()) return s;
  int64_t nqb;
  Scratch<Block> qblocks = query_blocks(p, kBwdBlockQ, &nqb);
  if (nqb < 0) return out_of_memory("the task table");
  return run_tasks(nqb * hq, bwd_scratch_floats(p), "backward tiles", [&](int64_t t, float* ws) {
    const Block& blk = qblocks.get()[t % nqb];
    k.bwd_dq_block(p, dsum.get(), blk.b, static_cast<int>(t / nqb), blk.blk, ws);
  });
}

}  // namespace cpu
}  // namespace ioattn
