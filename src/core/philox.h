// Philox 4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11) and the
// dropout mask built on it. Counter-based: the keep decision for element (b, h, i, j) is a pure
// function of (seed, offset, b, h, i, j), so the CPU and GPU backends drop the same elements and the
// backward pass regenerates the mask instead of storing it.
//
// One Philox call yields four 32-bit words, used for four consecutive keys j = 4t .. 4t + 3:
//   key     = (seed_lo, seed_hi ^ offset_hi)
//   counter = (j / 4, i, b * heads_q + h, offset_lo)
//   word    = output[j % 4];  element kept iff word >= threshold = floor(p * 2^32).
// i and j are positions inside the sequence (varlen: b is the sequence index).
#pragma once

#include <cstdint>

#include "hostdevice.h"

namespace ioattn {

struct Philox4 {
  uint32_t x[4];
};

IOATTN_HD void philox_mulhilo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  const uint64_t p = static_cast<uint64_t>(a) * b;
  hi = static_cast<uint32_t>(p >> 32);
  lo = static_cast<uint32_t>(p);
}

IOATTN_HD Philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0,
                                uint32_t k1) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;  // round multipliers
  constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;  // Weyl key increments
#if defined(__CUDACC__)
#pragma unroll
#endif
  for (int r = 0; r < 10; ++r) {
    uint32_t hi0, lo0, hi1, lo1;
    philox_mulhilo(kM0, c0, hi0, lo0);
    philox_mulhilo(kM1, c2, hi1, lo1);
    const uint32_t n0 = hi1 ^ c1 ^ k0, n1 = lo1, n2 = hi0 ^ c3 ^ k1, n3 = lo0;
    c0 = n0; c1 = n1; c2 = n2; c3 = n3;
    k0 += kW0;
    k1 += kW1;
  }
  return Philox4{{c0, c1, c2, c3}};
}

// The four dropout words for keys 4*j4 .. 4*j4+3 of row i of head (b, h).
IOATTN_HD Philox4 dropout_words(uint64_t seed, uint64_t offset, int b, int h, int heads_q, int i,
                                int j4) {
  return philox4x32_10(static_cast<uint32_t>(j4), static_cast<uint32_t>(i),
                       static_cast<uint32_t>(b * heads_q + h), static_cast<uint32_t>(offset),
                       static_cast<uint32_t>(seed),
                       static_cast<uint32_t>(seed >> 32) ^ static_cast<uint32_t>(offset >> 32));
}

// floor(p * 2^32), for p in [0, 1).
IOATTN_HD uint32_t dropout_threshold(float p) {
  const double t = static_cast<double>(p) * 4294967296.0;
  return t >= 4294967295.0 ? 0xFFFFFFFFu : static_cast<uint32_t>(t);
}

// Is element (b, h, i, j) kept? (Scalar form; fast paths use dropout_words for 4 keys at once.)
IOATTN_HD bool dropout_keep(uint64_t seed, uint64_t offset, uint32_t threshold, int b, int h,
                            int heads_q, int i, int j) {
  const Philox4 w = dropout_words(seed, offset, b, h, heads_q, i, j >> 2);
  return w.x[j & 3] >= threshold;
}

}  // namespace ioattn
