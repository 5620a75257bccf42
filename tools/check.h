// `ioattn run --check`: the outputs against the float64 reference (src/reference), next to the
// error of standard attention computed in the same dtype, with FlashAttention's rule
//   err <= 2 × standard_err + slack,
// slack = max(eps(dtype)/2, 4 fp32 ulps) × max(1, max|reference|) (an ulp-sized allowance, as FA's
// tests add; check.cpp says why fp32 needs a floor).
#pragma once

#include <limits>
#include <string>
#include <vector>

#include "problem.h"

namespace ioattn_tool {

struct ErrorPair {
  double err = std::numeric_limits<double>::quiet_NaN();       // max |ioattn - reference|
  double standard = std::numeric_limits<double>::quiet_NaN();  // max |standard - reference|
  double slack = 0.0;
  bool measured = false;
  bool pass() const { return measured && err <= 2.0 * standard + slack; }  // false for NaN
};

// Results of ioattn, copied to the host and widened to double, contiguous like the reference's.
struct Outputs {
  std::vector<double> out, lse, dq, dk, dv;
};

struct CheckReport {
  int row_stride = 1;            // forward checked every row_stride-th query row of each sequence
  ErrorPair out, lse;
  bool backward_checked = false;
  std::string backward_note;     // why the backward check was skipped, if it was
  ErrorPair dq, dk, dv;
  bool pass() const;
};

// Checks the forward outputs (a subset of rows for long sequences) and, when `got` holds gradients
// and the float64 backward is affordable, dq/dk/dv. Throws StatusError if the reference refuses.
CheckReport check_against_reference(const RunConfig& c, const HostProblem& p, const Outputs& got);

// Widen n elements of dtype dt to double.
std::vector<double> widen(const void* data, ioattn::DType dt, size_t n);

}  // namespace ioattn_tool
