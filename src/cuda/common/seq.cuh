// Where sequence b lives in the tensors, for dense and varlen calls alike.
#pragma once

#include <cstdint>

#include "core/params.h"

namespace ioattn::cuda {

struct SeqBounds {
  int64_t q_row0, k_row0;  // first row of the sequence (0 in dense mode: the batch stride does it)
  int sq, sk;              // its lengths
};

// Varlen prefix sums may not have been checked on the host (stream capture skips the copy; see
// check_cu_seqlens in backend.cu), so every value read from them is clamped: starts and ends into
// [0, total rows], lengths into [0, max_seqlen]. A malformed cu_seqlens then gives wrong numbers
// for that sequence but never an out-of-bounds access.
__device__ __forceinline__ SeqBounds seq_bounds(const Params& p, int b) {
  if (!p.varlen) return {0, 0, p.seqlen_q, p.seqlen_k};
  auto clamp = [](int x, int lo, int hi) { return x < lo ? lo : (x > hi ? hi : x); };
  const int q0 = clamp(p.cu_seqlens_q[b], 0, p.total_q), q1 = clamp(p.cu_seqlens_q[b + 1], q0, p.total_q);
  const int k0 = clamp(p.cu_seqlens_k[b], 0, p.total_k), k1 = clamp(p.cu_seqlens_k[b + 1], k0, p.total_k);
  return {q0, k0, min(q1 - q0, p.seqlen_q), min(k1 - k0, p.seqlen_k)};
}

}  // namespace ioattn::cuda
