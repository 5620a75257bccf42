// The CPU backend's per-task kernels and what they share. Layers of src/cpu/:
//   backend.cpp        entry points: picks the instruction set at run time, splits the work into
//                      tasks and runs them on OpenMP threads (the only place that knows threads).
//   kernels.h          this file: tile sizes, task geometry, the table of per-ISA kernels.
//   flash_kernels.h    the kernels themselves (forward block, backward key block, backward query
//                      block): tiled online softmax around cblas_sgemm tile products. Compiled
//                      four times, by isa_avx512bf16.cpp, isa_avx512.cpp, isa_avx2.cpp and
//                      isa_generic.cpp.
//   tile_ops.h         what the kernels are made of: vector exp / tanh, dtype conversion, row
//                      loads and stores, score transform, in-tile masks, Philox dropout.
//   bf16_dot.h         bf16 pair products (vdpbf16ps) for the avx512bf16 build.
//   scratch.h/.cpp     the tracked allocator behind cpu_peak_scratch_bytes().
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/params.h"

namespace ioattn {
namespace cpu {

// ---- Tile sizes --------------------------------------------------------------------------------
// Chosen on the 2-core AVX-512 EPYC of the dev machine when the products still went through
// OpenBLAS 0.3.21 (OPENBLAS_CORETYPE=SkylakeX), fp32, S=2048, D=128, one thread (the shared
// machine is too noisy for two), forward GFLOP/s next to a 2048³ sgemm at ~250 on the same core:
//   BQ x BK    64x256  128x128  128x256  128x512  256x256  256x512
//   fwd        155-160 174-187  167-174  189      188-198  136-148
// The tile products spend ~15% of their time in OpenBLAS's packing of the operands (perf), which
// larger BQ amortises; at 256x512 the S tile (512 KiB) plus K/V tiles spill the 1 MiB L2. With
// the AVX-512 micro-kernel (no packing) 128x256, 256x128, 256x256 and 256x512 all come within 2%
// in user cycles, fp32 and bf16 pairs alike.
// Forward: a Q block of kFwdBlockQ rows stays in L2 while K/V blocks of kFwdBlockK keys stream
// past it; S = Q Kᵀ is (kFwdBlockQ x kFwdBlockK) fp32 (256 KiB).
constexpr int kFwdBlockQ = 256;
constexpr int kFwdBlockK = 256;
// Backward: a key block of kBwdBlockK keys owns its dK/dV accumulators while query blocks of
// kBwdBlockQ rows stream past it (and the reverse for the dQ pass). Four (BQ x BK) fp32 tiles
// (S/P, dP/dS, dropped P, softcap derivative) live at once, so the tiles are smaller than the
// forward's: 128x128 keeps them at 256 KiB. 128x256 and 256x128 measured within the noise of
// 128x128 (110-145 GFLOP/s single-threaded on the loaded machine); 2 threads, quiet machine:
// 333 GFLOP/s backward (fused mode) against a 460 GFLOP/s sgemm.
constexpr int kBwdBlockQ = 128;
constexpr int kBwdBlockK = 128;
// Extra columns of tiles in bf16 pair layouts (bf16_dot.h), which pad their columns to a multiple of 32.
constexpr int kPairPad = 32;
static_assert(kFwdBlockK % kPairPad == 0 && kBwdBlockK % kPairPad == 0, "bf16 pair tiles pad keys to a multiple of 32");
static_assert(kBwdBlockQ % 2 == 0 && kBwdBlockK % 2 == 0, "bf16 pairs of queries / keys");
static_assert(kFwdBlockK % 4 == 0 && kBwdBlockK % 4 == 0, "dropout words come four keys at a time");

// ---- Task geometry (shared by backend.cpp and the kernels) -------------------------------------
// Sequence b: its first rows in the packed (varlen) tensors and its lengths.
struct Seq {
  int64_t q0, k0;  // first row (varlen: cu_seqlens[b]; dense: 0, the batch stride is used)
  int sq, sk;
};

inline Seq seq_of(const Params& p, int b) {
  if (p.varlen) return Seq{p.cu_seqlens_q[b], p.cu_seqlens_k[b], p.cu_seqlens_q[b + 1] - p.cu_seqlens_q[b],
                           p.cu_seqlens_k[b + 1] - p.cu_seqlens_k[b]};
  return Seq{0, 0, p.seqlen_q, p.seqlen_k};
}

// Index of (b, h, row i) in the LSE layout (dense (B, Hq, Sq), varlen (Hq, Tq)); the backward's
// D = rowsum(dO * O) scratch uses the same layout.
inline int64_t lse_index(const Params& p, int b, int h, const Seq& s, int i) {
  return b * p.lse_batch_stride + h * p.lse_head_stride + s.q0 + i;
}
inline size_t lse_count(const Params& p) {
  return p.varlen ? static_cast<size_t>(p.heads_q) * p.lse_head_stride
                  : static_cast<size_t>(p.batch) * p.heads_q * p.seqlen_q;
}

// ---- Per-ISA kernels -----------------------------------------------------------------------------
// Each works on one task and a per-thread scratch area of the size the *_scratch_floats functions
// give; none allocates, none starts threads, and each writes only the output rows its task owns.
struct Kernels {
  const char* isa;  // "avx512bf16", "avx512", "avx2" or "generic"
  // Forward of rows [qb * kFwdBlockQ, +kFwdBlockQ) of query head h of sequence b: O and LSE.
  void (*fwd_block)(const Params& p, int b, int h, int qb, float* ws);
  // Dsum[lse_index(b, h, i)] = sum_d dO[i, d] * O[i, d] for every row i of (b, h).
  void (*bwd_rowdot)(const Params& p, int b, int h, float* dsum, float* ws);
  // dK, dV of keys [kb * kBwdBlockK, +kBwdBlockK) of kv head hk of sequence b, summed over the query
  // heads of the group. With dq_acc (fp32, (group, sq, head_dim)), also adds the block's
  // unscaled contribution dS K to it (the fused single-pass backward).
  void (*bwd_kv_block)(const Params& p, const float* dsum, int b, int hk, int kb, float* dq_acc, float* ws);
  // dQ of rows [qb * kBwdBlockQ, +kBwdBlockQ) of query head h of sequence b (two-pass backward).
  void (*bwd_dq_block)(const Params& p, const float* dsum, int b, int h, int qb, float* ws);
  // Writes dQ rows of (b, h) from an fp32 accumulator (sq, head_dim), times the softmax scale.
  void (*store_dq)(const Params& p, int b, int h, const float* dq_acc);
};

size_t fwd_scratch_floats(const Params& p);
size_t bwd_scratch_floats(const Params& p);

namespace avx512bf16 { const Kernels& kernels(); }
namespace avx512 { const Kernels& kernels(); }
namespace avx2 { const Kernels& kernels(); }
namespace generic { const Kernels& kernels(); }

}  // namespace cpu
}  // namespace ioattn
