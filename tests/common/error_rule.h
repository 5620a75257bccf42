// The error rule of DESIGN.md §1, shared by every test that checks numbers:
//
//   max |lib − ref64|  <=  2 · max |std − ref64|  +  slack(dtype) · max(1, max |ref64|)
//
// where ref64 is the float64 reference and std is standard attention in the input dtype (the
// framework math path, ioattn::ref::standard_*). The factor 2 is FlashAttention's; the slack keeps
// the rule meaningful where standard attention happens to be (nearly) exact, see slack_units().
#pragma once

#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "ioattn/ioattn.h"

namespace ioattn::test {

// Unit roundoff of a dtype: 2^-24 (fp32), 2^-11 (fp16), 2^-8 (bf16).
double unit_roundoff(DType dt);
// The absolute slack of the rule, in units of roundoff × max(1, max|ref|):
//   fp16 / bf16: 1 — one rounding of the result itself. Standard attention also rounds its result,
//     but on some elements it lands exactly (e.g. seqlen 1, where O = V), so its measured error can
//     be 0 while the library's fp32 accumulation order differs by a last-place rounding.
//   fp32 forward: 16 — no output rounding dominates here; the library may evaluate exp as exp2 of
//     (s·scale·log2 e) with the constant folded into one fp32 multiply (relative error up to
//     |s|·2^-24 in the exponent), and sums in a blocked order; both are as accurate as the
//     standard path but not bitwise alike. 16 ulp (≈ 1e-6 at magnitude 1) absorbs that without
//     hiding a real bug (a wrong mask, scale or index is off by ≥ 1e-3).
//   fp32 backward: 64 (≈ 4e-6). dS = P∘(dP − D) with dP_j = dO·V_j and D = dO·O, two fp32 dot
//     products of length Dv whose difference is all of dS when a row sees a single key (the exact
//     dQ, dK are then 0). Summed in different orders they differ by ≈ √Dv·u·Σ|dO·O| (measured
//     1e-6 to 2e-6 at Dv = 17..128, also summed over the rows of dK), while standard attention sums
//     both in the same order and is exactly 0 there.
double slack_units(DType dt, bool gradient);

// Max |a − ref| over the elements where ref is not NaN (NaN in a reference = not computed, e.g.
// rows skipped by row_stride). Equal infinities count as 0; a NaN or a wrong infinity in `a` makes
// the error +inf. `max_ref` receives max |ref| over the finite entries.
double max_abs_err(const std::vector<double>& a, const std::vector<double>& ref, double* max_ref = nullptr);

// The rule above as a gtest assertion with every number in its message. With the environment
// variable IOATTN_TEST_PRINT_ERRORS set, every comparison is printed with its lib / bound ratio.
// `gradient` selects the backward's slack (slack_units).
::testing::AssertionResult within_rule(const std::string& what, DType dt, const std::vector<double>& lib,
                                       const std::vector<double>& ref, const std::vector<double>& std_attn,
                                       bool gradient = false);

}  // namespace ioattn::test
