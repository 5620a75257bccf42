#include "error_rule.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <sstream>

namespace ioattn::test {

double unit_roundoff(DType dt) {
  switch (dt) {
    case DType::F16: return std::ldexp(1.0, -11);
    case DType::BF16: return std::ldexp(1.0, -8);
    default: return std::ldexp(1.0, -24);
  }
}

double slack_units(DType dt, bool gradient) {
  if (dt != DType::F32) return 1.0;
  return gradient ? 64.0 : 16.0;
}

double max_abs_err(const std::vector<double>& a, const std::vector<double>& ref, double* max_ref) {
  double err = a.size() == ref.size() ? 0.0 : std::numeric_limits<double>::infinity();
  double mref = 0.0;
  const size_t n = std::min(a.size(), ref.size());
  for (size_t i = 0; i < n; ++i) {
    const double r = ref[i], x = a[i];
    if (std::isnan(r)) continue;
    if (std::isinf(r)) {
      if (x != r) err = std::numeric_limits<double>::infinity();
      continue;
    }
    mref = std::max(mref, std::fabs(r));
    const double e = std::fabs(x - r);
    if (std::isnan(e) || std::isinf(e)) err = std::numeric_limits<double>::infinity();
    else err = std::max(err, e);
  }
  if (max_ref) *max_ref = mref;
  return err;
}

::testing::AssertionResult within_rule(const std::string& what, DType dt, const std::vector<double>& lib,
                                       const std::vector<double>& ref, const std::vector<double>& std_attn,
                                       bool gradient) {
  double mref = 0.0;
  const double e_lib = max_abs_err(lib, ref, &mref);
  const double e_std = max_abs_err(std_attn, ref);
  const double slack = slack_units(dt, gradient) * unit_roundoff(dt) * std::max(1.0, mref);
  const double bound = 2.0 * e_std + slack;
  std::ostringstream os;
  os << what << " (" << dtype_name(dt) << "): max|lib-ref| = " << e_lib << ", max|std-ref| = " << e_std
     << ", bound 2*std + " << slack << " = " << bound << ", max|ref| = " << mref << ", " << ref.size()
     << " elements";
  // A baseline that is not finite would make the bound vacuous: report it instead of passing.
  if (!std::isfinite(e_std)) return ::testing::AssertionFailure() << os.str() << " (standard baseline not finite)";
  // IOATTN_TEST_PRINT_ERRORS=1 prints every comparison, to see the margins and not just failures.
  static const bool print = std::getenv("IOATTN_TEST_PRINT_ERRORS") != nullptr;
  if (print) std::printf("[ errors   ] %s, ratio %.3f\n", os.str().c_str(), bound > 0 ? e_lib / bound : 0.0);
  if (e_lib <= bound) return ::testing::AssertionSuccess() << os.str();
  return ::testing::AssertionFailure() << os.str();
}

}  // namespace ioattn::test
