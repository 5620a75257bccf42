// Division of non-negative 31-bit integers by a divisor fixed at run time, as one multiply-high, an
// add and a shift (the round-up method of Granlund and Montgomery, "Division by invariant integers
// using multiplication", 1994): for 1 <= d < 2^31, s = ceil(log2 d) and
//   mul = floor(2^32 (2^s - d) / d) + 1,   n / d = (umulhi(n, mul) + n) >> s   for 0 <= n < 2^31
// (umulhi(n, mul) <= n, so the sum fits in 32 bits). A kernel's integer division by a value it reads
// from its parameters compiles to ~20 dependent instructions (I2F, MUFU.RCP, F2I and corrections);
// the sm90 forward's tile planning did two or three per tile, on the serial path between tiles (ncu,
// session 16). Host and device: the divisor is prepared once (make), the tests check it on the host.
#pragma once

#include <cstdint>

#include "core/hostdevice.h"

namespace ioattn::cuda {

struct FastDiv {
  uint32_t d = 1, mul = 1, shift = 0;

  // A divisor d < 1 (the count of something empty, which no index is divided by) is taken as 1.
  IOATTN_HD static FastDiv make(int d) {
    FastDiv f;
    f.d = static_cast<uint32_t>(d > 1 ? d : 1);
    while ((uint64_t{1} << f.shift) < f.d) ++f.shift;
    f.mul = static_cast<uint32_t>(((uint64_t{1} << 32) * ((uint64_t{1} << f.shift) - f.d)) / f.d + 1);
    return f;
  }
  // n / d for 0 <= n < 2^31.
  IOATTN_HD int div(int n) const {
    const uint32_t u = static_cast<uint32_t>(n);
#if defined(__CUDA_ARCH__)
    const uint32_t hi = __umulhi(u, mul);
#else
    const uint32_t hi = static_cast<uint32_t>((static_cast<uint64_t>(u) * mul) >> 32);
#endif
    return static_cast<int>((hi + u) >> shift);
  }
  // q = n / d and r = n - q d.
  IOATTN_HD void divmod(int n, int& q, int& r) const {
    q = div(n);
    r = n - q * static_cast<int>(d);
  }
};

}  // namespace ioattn::cuda
