// bf16 tile products on AVX-512 BF16 (vdpbf16ps): products of bf16 pairs with fp32 accumulation,
// for all seven tile products of the forward and backward when the inputs are bf16. Included by
// tile_ops.h in the avx512bf16 build only (inside its namespace).
//
// vdpbf16ps multiplies the two bf16 halves of each 32-bit lane of a and b and adds both products to
// the fp32 lane of c. So operands are "pairs": 32-bit words holding two consecutive elements of
// the reduction dimension (d for Q Kᵀ and dO Vᵀ, keys for P V and dS K, queries for Pᵀ dO and
// dSᵀ Q), low half first:
//   A (m x k2 pairs, row-major, lda in words)   one broadcast word per row and step
//   B (k2 x n pairs, ldb words, n padded to 32) two 16-lane vectors per step
// Micro-tile 12 rows x 32 columns: 24 zmm accumulators, 2 B vectors, 1 broadcast (the driver,
// for_tiles, is gemm_avx512.h's).

#if !IOATTN_CPU_BF16
#error "bf16_dot.h needs the avx512bf16 target"
#endif

constexpr int kBf16Cols = 32;  // B's columns are padded to a multiple of this
constexpr int kBf16Rows = 12;

inline int round_up(int x, int m) { return (x + m - 1) / m * m; }

template <int R>
void bf16_micro(int k2, const uint32_t* a, int lda, const uint32_t* b, int ldb, float* c, int ldc, __mmask16 m0,
                __mmask16 m1, bool accumulate) {
  __m512 c0[R], c1[R];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
    c0[r] = accumulate ? _mm512_maskz_loadu_ps(m0, c + r * ldc) : _mm512_setzero_ps();
    c1[r] = accumulate ? _mm512_maskz_loadu_ps(m1, c + r * ldc + 16) : _mm512_setzero_ps();
  }
  for (int t = 0; t < k2; ++t) {
    const __m512bh b0 = (__m512bh)_mm512_loadu_si512(b + static_cast<size_t>(t) * ldb);
    const __m512bh b1 = (__m512bh)_mm512_loadu_si512(b + static_cast<size_t>(t) * ldb + 16);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const __m512bh av = (__m512bh)_mm512_set1_epi32(static_cast<int>(a[static_cast<size_t>(r) * lda + t]));
      c0[r] = _mm512_dpbf16_ps(c0[r], av, b0);
      c1[r] = _mm512_dpbf16_ps(c1[r], av, b1);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
    _mm512_mask_storeu_ps(c + r * ldc, m0, c0[r]);
    _mm512_mask_storeu_ps(c + r * ldc + 16, m1, c1[r]);
  }
}

// C (m x n, ldc) = A·B (or += with accumulate); columns >= n of C are not touched.
void bf16_gemm(int m, int n, int k2, const uint32_t* a, int lda, const uint32_t* b, int ldb, float* c, int ldc,
               bool accumulate) {
  for_tiles<kBf16Rows>(m, n, [&](auto rows, int i, int j, __mmask16 m0, __mmask16 m1) {
    bf16_micro<decltype(rows)::value>(k2, a + static_cast<size_t>(i) * lda, lda, b + j, ldb,
                                      c + static_cast<size_t>(i) * ldc + j, ldc, m0, m1, accumulate);
  });
}

// Rows of bf16 (rows x cols, row_stride elements apart) as pairs along the row: (rows x ceil(cols/2))
// words, ld = ceil(cols / 2); an odd last element is paired with 0.
void pack_rows_pairs(const uint16_t* src, int64_t row_stride, int rows, int cols, uint32_t* dst) {
  const int c2 = (cols + 1) / 2;
  for (int r = 0; r < rows; ++r) {
    const uint16_t* s = src + r * row_stride;
    uint32_t* d = dst + static_cast<size_t>(r) * c2;
#pragma omp simd
    for (int t = 0; t < cols / 2; ++t) d[t] = static_cast<uint32_t>(s[2 * t]) | static_cast<uint32_t>(s[2 * t + 1]) << 16;
    if (cols & 1) d[c2 - 1] = s[cols - 1];
  }
}

// Kᵀ as B operand of S = Q Kᵀ: word (t, j) = (K[j][2t], K[j][2t+1]); (ceil(D/2) x round_up(nk, 32)), zero padded.
void pack_k_pairs(const uint16_t* k, int64_t row_stride, int nk, int d, uint32_t* dst, int* ldb) {
  const int d2 = (d + 1) / 2, ld = round_up(nk, kBf16Cols);
  for (int t = 0; t < d2; ++t) {
    uint32_t* row = dst + static_cast<size_t>(t) * ld;
    const bool pair = 2 * t + 1 < d;
    for (int j = 0; j < nk; ++j) {
      const uint16_t* kj = k + j * row_stride + 2 * t;
      row[j] = static_cast<uint32_t>(kj[0]) | (pair ? static_cast<uint32_t>(kj[1]) << 16 : 0u);
    }
    for (int j = nk; j < ld; ++j) row[j] = 0;
  }
  *ldb = ld;
}

// V as B operand of O += P V: word (t, c) = (V[2t][c], V[2t+1][c]); (ceil(nk/2) x round_up(Dv, 32)), zero padded.
void pack_v_pairs(const uint16_t* v, int64_t row_stride, int nk, int dv, uint32_t* dst, int* ldb) {
  const int k2 = (nk + 1) / 2, ld = round_up(dv, kBf16Cols);
  for (int t = 0; t < k2; ++t) {
    const uint16_t* v0 = v + 2 * t * row_stride;
    const uint16_t* v1 = v0 + row_stride;
    uint32_t* row = dst + static_cast<size_t>(t) * ld;
    if (2 * t + 1 < nk) {
#pragma omp simd
      for (int c = 0; c < dv; ++c) row[c] = static_cast<uint32_t>(v0[c]) | static_cast<uint32_t>(v1[c]) << 16;
    } else {
#pragma omp simd
      for (int c = 0; c < dv; ++c) row[c] = v0[c];
    }
    for (int c = dv; c < ld; ++c) row[c] = 0;
  }
  *ldb = ld;
}

// X (rows x cols, ldx) fp32 -> Xᵀ paired along rows: word (j, t) = (X[2t][j], X[2t+1][j]) rounded to
// bf16, (cols x ceil(rows/2)), ld ceil(rows/2); an odd last row is paired with 0. The A operand of
// dV += Pdᵀ dO and dK += dSᵀ Q.
void transpose_pairs(const float* x, int ldx, int rows, int cols, uint32_t* out) {
  const int r2 = (rows + 1) / 2;
  for (int t = 0; t < r2; ++t) {
    const float* x0 = x + static_cast<size_t>(2 * t) * ldx;
    const float* x1 = 2 * t + 1 < rows ? x0 + ldx : nullptr;
    for (int j = 0; j < cols; ++j) {
      const uint32_t lo = float_to_bf16(x0[j]);
      const uint32_t hi = x1 ? float_to_bf16(x1[j]) : 0u;
      out[static_cast<size_t>(j) * r2 + t] = lo | hi << 16;
    }
  }
}

// P row (fp32, n values) -> bf16 pairs in place (round to nearest even, vcvtne2ps2bf16); the pair
// count is ceil(n / 2), an odd tail paired with 0. Reads run ahead of writes, so in place is safe.
void probs_to_pairs(float* row, int n) {
  uint32_t* out = reinterpret_cast<uint32_t*>(row);
  int j = 0;
  for (; j + 32 <= n; j += 32) {
    const __m512 lo = _mm512_loadu_ps(row + j), hi = _mm512_loadu_ps(row + j + 16);
    _mm512_storeu_si512(out + j / 2, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
  }
  for (; j < n; j += 2) {
    const uint32_t lo = float_to_bf16(row[j]);
    const uint32_t hi = j + 1 < n ? float_to_bf16(row[j + 1]) : 0u;
    out[j / 2] = lo | hi << 16;
  }
}
