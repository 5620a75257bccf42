#include "check.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>

#include "core/half.h"
#include "errors.h"
#include "reference/reference.h"

namespace ioattn_tool {
namespace {

using ioattn::DType;

// How much float64 work a check may do. Measured on a 2-core AVX-512 machine: the reference and the
// standard-attention baseline each run at about 2.4 GFLOP/s (forward FLOPs of the rows they compute),
// and the two backward passes together take about 1.1 s per forward GFLOP of the problem. These
// bounds keep `--check` to about 5 seconds.
constexpr double kForwardCheckFlops = 4e9;   // forward FLOPs of the rows checked
constexpr double kBackwardCheckFlops = 5e9;  // forward FLOPs of a problem whose backward is checked

// The slack of the error rule, relative to max(1, max|reference|): half an ulp of the output dtype
// (FlashAttention's tests allow about that), but at least 4 fp32 ulps, because every dtype is
// computed in fp32 and a tiled fp32 computation (exp2 with the scale folded in, another summation
// order) differs from fp32 standard attention by a few ulps: with fp32 inputs the 2x rule alone
// failed 2 of 20 random small problems at 2.1-2.7x.
double slack_unit(DType dt) {
  constexpr double kFp32Floor = 4 * FLT_EPSILON;
  switch (dt) {
    case DType::BF16: return 0x1.0p-8;   // eps 2^-7
    case DType::F16: return 0x1.0p-11;   // eps 2^-10
    default: return kFp32Floor;
  }
}

// Max |got - ref| over the entries the reference computed (it leaves skipped rows NaN). A NaN or an
// infinity in `got` where the reference is finite counts as an infinite error; equal infinities
// (LSE = -inf of rows that see no key) count as exact.
ErrorPair compare(const std::vector<double>& got, const std::vector<double>& standard,
                  const std::vector<double>& ref, double slack_per_unit) {
  ErrorPair e;
  e.measured = true;
  e.err = 0.0;
  e.standard = 0.0;
  double ref_max = 1.0;
  auto diff = [](double a, double r) {
    if (a == r) return 0.0;  // also equal infinities
    const double d = std::fabs(a - r);
    return std::isnan(d) ? HUGE_VAL : d;
  };
  const size_t n = std::min({got.size(), standard.size(), ref.size()});
  if (got.size() != ref.size()) e.err = HUGE_VAL;  // a shape mismatch is a failure, not a skip
  for (size_t i = 0; i < n; ++i) {
    const double r = ref[i];
    if (std::isnan(r)) continue;
    if (std::isfinite(r)) ref_max = std::max(ref_max, std::fabs(r));
    e.err = std::max(e.err, diff(got[i], r));
    e.standard = std::max(e.standard, diff(standard[i], r));
  }
  e.slack = slack_per_unit * ref_max;
  return e;
}

}  // namespace

std::vector<double> widen(const void* data, DType dt, size_t n) {
  std::vector<double> out(n);
  const unsigned char* b = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < n; ++i) {
    switch (dt) {
      case DType::F32: { float f; std::memcpy(&f, b + 4 * i, 4); out[i] = f; break; }
      case DType::BF16: { uint16_t h; std::memcpy(&h, b + 2 * i, 2); out[i] = ioattn::bf16_to_float(h); break; }
      case DType::F16: { uint16_t h; std::memcpy(&h, b + 2 * i, 2); out[i] = ioattn::fp16_to_float(h); break; }
      case DType::I32: { int32_t v; std::memcpy(&v, b + 4 * i, 4); out[i] = v; break; }
    }
  }
  return out;
}

bool CheckReport::pass() const {
  bool ok = out.pass() && lse.pass();
  if (backward_checked) ok = ok && dq.pass() && dk.pass() && dv.pass();
  return ok;
}

CheckReport check_against_reference(const RunConfig& c, const HostProblem& p, const Outputs& got) {
  CheckReport rep;
  const ioattn::TensorView q = p.q_view(c), k = p.k_view(c), v = p.v_view(c);
  const ioattn::Args args = p.host_args(c);
  const double flops = forward_flops(c, p);
  rep.row_stride = static_cast<int>(std::clamp(std::ceil(flops / kForwardCheckFlops), 1.0, double(c.seqlen_q)));

  ioattn::ref::Result ref, standard;
  throw_if_error(ioattn::ref::forward(q, k, v, args, &ref, rep.row_stride), "reference forward");
  throw_if_error(ioattn::ref::standard_forward(q, k, v, args, &standard, rep.row_stride),
                 "standard attention forward");
  const double slack = slack_unit(c.dtype);
  rep.out = compare(got.out, standard.out, ref.out, slack);
  rep.lse = compare(got.lse, standard.lse, ref.lse, slack_unit(DType::F32));  // LSE is fp32 for every dtype

  if (got.dq.empty()) return rep;
  if (flops > kBackwardCheckFlops) {
    rep.backward_note = "skipped for size (the float64 backward has no row subset; the forward is " +
                        std::to_string(static_cast<long long>(flops / 1e9)) + " GFLOP, limit " +
                        std::to_string(static_cast<long long>(kBackwardCheckFlops / 1e9)) + ")";
    return rep;
  }
  const ioattn::TensorView dout = p.dout_view(c);
  throw_if_error(ioattn::ref::backward(q, k, v, dout, args, &ref), "reference backward");
  throw_if_error(ioattn::ref::standard_backward(q, k, v, dout, args, &standard), "standard attention backward");
  rep.backward_checked = true;
  rep.dq = compare(got.dq, standard.dq, ref.dq, slack);
  rep.dk = compare(got.dk, standard.dk, ref.dk, slack);
  rep.dv = compare(got.dv, standard.dv, ref.dv, slack);
  return rep;
}

}  // namespace ioattn_tool
