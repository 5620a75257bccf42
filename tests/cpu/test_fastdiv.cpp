// FastDiv (src/cuda/common/fastdiv.h), the sm90 kernels' division by a run-time divisor, against
// the built-in division on the host: every dividend below 2^16 for the divisors 1..300 (tile
// counts, head counts, GQA groups live there), then random and extreme dividends (up to 2^31 - 1)
// for divisors across the whole range, powers of two and their neighbours included; a divisor
// below 1 (an empty count) divides as 1.
#include <gtest/gtest.h>

#include <climits>
#include <cstdint>
#include <random>
#include <vector>

#include "cuda/common/fastdiv.h"

namespace {

using ioattn::cuda::FastDiv;

void expect_divides(const FastDiv& f, int d, int n) {
  int q = -1, r = -1;
  f.divmod(n, q, r);
  ASSERT_EQ(q, n / d) << "n = " << n << ", d = " << d;
  ASSERT_EQ(r, n % d) << "n = " << n << ", d = " << d;
}

TEST(FastDiv, SmallDivisorsEveryDividendBelow2To16) {
  for (int d = 1; d <= 300; ++d) {
    const FastDiv f = FastDiv::make(d);
    for (int n = 0; n < (1 << 16); ++n) expect_divides(f, d, n);
  }
}

TEST(FastDiv, EmptyCountDividesAsOne) {
  for (int d : {0, -1, -7}) {
    const FastDiv f = FastDiv::make(d);
    for (int n : {0, 1, 5, 1 << 20, INT_MAX}) expect_divides(f, 1, n);
  }
}

TEST(FastDiv, WideDivisorsRandomAndExtremeDividends) {
  std::mt19937 rng(20261123);
  std::vector<int> divisors;
  for (int k = 0; k < 31; ++k) {
    const int p = 1 << k;
    for (int e : {-1, 0, 1}) {
      const int64_t d = int64_t{p} + e;
      if (d >= 1 && d <= INT_MAX) divisors.push_back(static_cast<int>(d));
    }
  }
  std::uniform_int_distribution<int> any(1, INT_MAX);
  for (int i = 0; i < 200; ++i) divisors.push_back(any(rng));
  for (int d : divisors) {
    const FastDiv f = FastDiv::make(d);
    for (int n : {0, 1, d - 1, d, INT_MAX - 1, INT_MAX}) {
      if (n >= 0) expect_divides(f, d, n);
    }
    for (int64_t m = 1; m <= 4; ++m) {  // multiples of d and their neighbours
      const int64_t n = m * d;
      for (int64_t e : {-1, 0, 1})
        if (n + e >= 0 && n + e <= INT_MAX) expect_divides(f, d, static_cast<int>(n + e));
    }
    for (int i = 0; i < 2000; ++i) expect_divides(f, d, any(rng) - 1);
  }
}

}  // namespace
