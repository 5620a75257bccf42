// The mask predicate and per-score transforms of the fast paths (DESIGN.md §1). The float64
// reference (src/reference/) implements the same rules independently, so a bug here cannot pass
// its own test.
#pragma once

#include <cmath>

#include "hostdevice.h"

namespace ioattn {

// Bottom-right aligned window: key j is visible to query i (positions inside the sequence, lengths
// sq, sk) iff i + sk - sq - left <= j <= i + sk - sq + right; a negative bound is unbounded.
struct WindowMask {
  int left, right;  // -1 = unbounded; causal is (-1, 0)
  int shift;        // sk - sq

  IOATTN_HD bool visible(int i, int j) const {
    const int diag = i + shift;
    return (left < 0 || j >= diag - left) && (right < 0 || j <= diag + right);
  }
  // First and one-past-last visible key of row i, clamped to [0, sk).
  IOATTN_HD int first_key(int i) const { return left < 0 ? 0 : (i + shift - left > 0 ? i + shift - left : 0); }
  IOATTN_HD int end_key(int i, int sk) const {
    if (right < 0) return sk;
    const int e = i + shift + right + 1;
    return e < 0 ? 0 : (e > sk ? sk : e);
  }
  // The transposed interval: first and one-past-last query that sees key j (the backward's tiles
  // hold keys in rows). The first is clamped to 0; without a left bound the end is 2^30 (past any
  // query: sequence lengths stay below 2^30).
  IOATTN_HD int first_query(int j) const { return right < 0 ? 0 : (j - shift - right > 0 ? j - shift - right : 0); }
  IOATTN_HD int end_query(int j) const {
    if (left < 0) return 1 << 30;
    const int e = j - shift + left + 1;
    return e < 0 ? 0 : e;
  }
  // ALiBi distance |i + sk - sq - j|.
  IOATTN_HD int alibi_distance(int i, int j) const {
    const int d = i + shift - j;
    return d < 0 ? -d : d;
  }
};

}  // namespace ioattn
