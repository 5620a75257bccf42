// One attention problem as a test case, and the check every backend test runs on it: the library's
// forward (and backward) on poisoned outputs, against the float64 reference under the error rule
// (error_rule.h), with the outputs checked fully written, the gaps of strided outputs and the
// inputs untouched, rows that see no key exactly zero, and LSE = -inf there.
#pragma once

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include "host_tensor.h"
#include "ioattn/ioattn.h"

namespace ioattn::test {

enum class Alibi { None, PerHead, PerBatchHead };

struct Case {
  std::string name;  // unique, gtest-safe ([A-Za-z0-9_])
  DType dtype = DType::F32;
  int batch = 1, hq = 1, hk = 1;
  int sq = 1, sk = 1;                // dense lengths (ignored in varlen mode)
  int d = 8, dv = 0;                 // dv = 0: like d
  std::vector<int> lens_q, lens_k;   // varlen mode when non-empty: one length per sequence
  bool causal = false;
  int window_left = -1, window_right = -1;
  float softcap = 0.0f, scale = 0.0f, dropout_p = 0.0f;
  Alibi alibi = Alibi::None;
  Layout layout = Layout::Contiguous;  // of q, k, v, out, dout, dq, dk, dv (LSE is always contiguous)
  bool backward = true;
  // Long forward-only cases: the reference computes every n-th query row only (the library's
  // output is still checked fully written; the rule applies to the sampled rows).
  int ref_row_stride = 1;
  uint64_t seed = 1;  // inputs are drawn from this seed: fixed per case, different between cases

  bool varlen() const { return !lens_q.empty(); }
  int head_dim_v() const { return dv > 0 ? dv : d; }
  std::string describe() const;
};
void PrintTo(const Case& c, std::ostream* os);  // gtest prints the case, not its bytes

// Inputs of a case, drawn from its seed: q, k, v ~ N(0, 1), dout ~ N(0, 1), ALiBi slopes in
// (0, 1) (the geometric 2^-8h/H of the paper lies there), cu_seqlens from the lengths.
struct CaseInputs {
  HostTensor q, k, v, dout, cu_q, cu_k, slopes;
  Args args;
  std::vector<int64_t> out_shape, lse_shape;
};
CaseInputs make_inputs(const Case& c);

// The full check (gtest assertions inside; use with ASSERT_NO_FATAL_FAILURE).
void run_case(const Case& c);

// Makes a name gtest accepts: non-alphanumerics become '_'.
std::string sanitize(const std::string& s);

}  // namespace ioattn::test
