// Standard attention with explicit N×N matrices through BLAS, fp32: the baseline the CPU benchmark
// puts next to ioattn. It is what a framework's "math" path does (S = Q Kᵀ, softmax, O = P V, and the
// backward from the stored P), written well: sgemm for the four products, a vectorised exp and
// OpenMP over rows for the softmax. Heads run one after another through one N×N buffer (two in the
// backward), so its timing carries the N² memory traffic without needing B·H·N² of memory.
#pragma once

#include <cstdint>
#include <vector>

namespace bench {

// One problem in BSHD layout, batch 1, heads_q == heads_k: q, k, v, out, dout, dq, dk, dv are
// (1, seqlen, heads, head_dim) contiguous fp32. Causal: query i sees keys j <= i.
struct StandardProblem {
  int heads = 0, seqlen = 0, head_dim = 0;
  bool causal = false;
  const float *q = nullptr, *k = nullptr, *v = nullptr, *dout = nullptr;
  float *out = nullptr, *dq = nullptr, *dk = nullptr, *dv = nullptr;
};

// Owns the per-head N×N buffers, so that timed calls (after a first, warm-up call) allocate nothing.
class StandardAttention {
 public:
  // Forward only (writes out).
  void forward(const StandardProblem& p);
  // Forward then backward, head by head (writes out, dq, dk, dv). Returns the seconds spent in the
  // backward parts alone (given the stored P): timing them directly rather than as
  // time(forward + backward) − time(forward) keeps the noise of two measurements out of it.
  double forward_backward(const StandardProblem& p);

 private:
  void reserve(const StandardProblem& p, bool backward);
  std::vector<float> p_, dp_, d_;  // P (n×n), dP then dS (n×n), D (n)
};

// Bytes standard attention keeps for a backward: P of every head (B·H·N² fp32), as frameworks save it.
inline double standard_saved_bytes(int batch, int heads, int64_t seqlen) {
  return 4.0 * batch * heads * double(seqlen) * double(seqlen);
}

}  // namespace bench
