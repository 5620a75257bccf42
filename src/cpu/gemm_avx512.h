// fp32 tile products on AVX-512, replacing cblas_sgemm in the AVX-512 builds. Included by
// tile_ops.h (inside the per-ISA namespace) when IOATTN_CPU_AVX512.
//
// Why not OpenBLAS here: OpenBLAS 0.3.21 does not know this EPYC and runs its Haswell (AVX2)
// kernels, about half the machine's fp32 rate; and each call repacks both operands. This
// micro-kernel reads A in place (any row / column stride, so Pᵀ and dSᵀ need no copy) and B as
// rows, 12 rows x 32 columns per step with 24 zmm accumulators. Measured one thread, 256x256x128:
// 250 GFLOP/s, against OpenBLAS 127 (default Haswell kernels) and 245 (OPENBLAS_CORETYPE=SkylakeX).

// Runs tile(rows, i) over row blocks of R (R a std::integral_constant), the tail with a smaller R.
template <int R, class Tile>
void for_row_tail(int rows, int i, Tile& tile) {
  if constexpr (R > 0) {
    if (rows == R) return tile(std::integral_constant<int, R>{}, i);
    for_row_tail<R - 1>(rows, i, tile);
  }
}

// Calls tile(R, i, j, m0, m1) for every (row block, 32-column block) of an (m x n) output; m0 / m1
// mask the two 16-column halves of a ragged last column block.
template <int kRows, class Micro>
void for_tiles(int m, int n, Micro micro) {
  for (int j = 0; j < n; j += 32) {
    const int w = std::min(32, n - j);
    const __mmask16 m0 = static_cast<__mmask16>(w >= 16 ? 0xFFFF : (1u << w) - 1);
    const __mmask16 m1 = static_cast<__mmask16>(w <= 16 ? 0 : (w >= 32 ? 0xFFFF : (1u << (w - 16)) - 1));
    auto tile = [&](auto rows, int i) { micro(rows, i, j, m0, m1); };
    int i = 0;
    for (; i + kRows <= m; i += kRows) tile(std::integral_constant<int, kRows>{}, i);
    for_row_tail<kRows - 1>(m - i, i, tile);
  }
}

// C (R x 32 at c) (+)= A (R x k; element (r, t) at a[r * a_rs + t * a_cs]) · B (k x 32 at b, ldb).
template <int R>
void f32_micro(int k, const float* a, int64_t a_rs, int64_t a_cs, const float* b, int ldb, float* c, int ldc,
               __mmask16 m0, __mmask16 m1, bool accumulate) {
  __m512 c0[R], c1[R];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
    c0[r] = accumulate ? _mm512_maskz_loadu_ps(m0, c + r * ldc) : _mm512_setzero_ps();
    c1[r] = accumulate ? _mm512_maskz_loadu_ps(m1, c + r * ldc + 16) : _mm512_setzero_ps();
  }
  for (int t = 0; t < k; ++t) {
    const __m512 b0 = _mm512_maskz_loadu_ps(m0, b + static_cast<size_t>(t) * ldb);
    const __m512 b1 = _mm512_maskz_loadu_ps(m1, b + static_cast<size_t>(t) * ldb + 16);
    const float* at = a + t * a_cs;
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const __m512 av = _mm512_set1_ps(at[r * a_rs]);
      c0[r] = _mm512_fmadd_ps(av, b0, c0[r]);
      c1[r] = _mm512_fmadd_ps(av, b1, c1[r]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
    _mm512_mask_storeu_ps(c + r * ldc, m0, c0[r]);
    _mm512_mask_storeu_ps(c + r * ldc + 16, m1, c1[r]);
  }
}

// C (m x n, ldc) = A·B, or += with accumulate. A element (r, t) at a[r * a_rs + t * a_cs]; B (k x n)
// row-major with leading dimension ldb. Columns >= n of C are not touched.
void f32_gemm(int m, int n, int k, const float* a, int64_t a_rs, int64_t a_cs, const float* b, int ldb, float* c,
              int ldc, bool accumulate) {
  for_tiles<12>(m, n, [&](auto rows, int i, int j, __mmask16 m0, __mmask16 m1) {
    f32_micro<decltype(rows)::value>(k, a + i * a_rs, a_rs, a_cs, b + j, ldb, c + static_cast<size_t>(i) * ldc + j, ldc,
                                     m0, m1, accumulate);
  });
}

// 16 rows of 16 fp32 -> their transpose, in registers (unpack pairs, then quads, then 128-bit lanes).
inline void transpose16(__m512 r[16]) {
  __m512 t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {  // r[4i + k], lane L: column 4L + k of rows 4i .. 4i+3
    const __m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 2]);
    const __m512d c = _mm512_castps_pd(t[4 * i + 1]), d = _mm512_castps_pd(t[4 * i + 3]);
    r[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
    r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
    r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(c, d));
    r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(c, d));
  }
  for (int k = 0; k < 4; ++k) {
    t[k] = _mm512_shuffle_f32x4(r[k], r[4 + k], 0x88);
    t[4 + k] = _mm512_shuffle_f32x4(r[k], r[4 + k], 0xDD);
    t[8 + k] = _mm512_shuffle_f32x4(r[8 + k], r[12 + k], 0x88);
    t[12 + k] = _mm512_shuffle_f32x4(r[8 + k], r[12 + k], 0xDD);
  }
  for (int k = 0; k < 4; ++k) {
    r[k] = _mm512_shuffle_f32x4(t[k], t[8 + k], 0x88);
    r[8 + k] = _mm512_shuffle_f32x4(t[k], t[8 + k], 0xDD);
    r[4 + k] = _mm512_shuffle_f32x4(t[4 + k], t[12 + k], 0x88);
    r[12 + k] = _mm512_shuffle_f32x4(t[4 + k], t[12 + k], 0xDD);
  }
}

// 16 elements of dtype dt at src as fp32.
inline __m512 load16(DType dt, const void* src) {
  switch (dt) {
    case DType::BF16:
      return _mm512_castsi512_ps(
          _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(static_cast<const __m256i*>(src))), 16));
    case DType::F16:
      return _mm512_cvtph_ps(_mm256_loadu_si256(static_cast<const __m256i*>(src)));
    default:
      return _mm512_loadu_ps(static_cast<const float*>(src));
  }
}

// dst (cols x rows, ld rows) = the transpose of `rows` rows of `cols` elements (row_stride apart)
// in dtype dt, widened to fp32: 16 x 16 blocks in registers, ragged edges element by element.
void load_transposed(DType dt, const void* src, int64_t row_stride, int rows, int cols, float* dst) {
  const size_t es = dtype_size(dt);
  const char* base = static_cast<const char*>(src);
  auto element = [&](int r, int c) {
    const char* e = base + (r * row_stride + c) * static_cast<int64_t>(es);
    uint16_t h;
    float f;
    switch (dt) {
      case DType::BF16: std::memcpy(&h, e, 2); return bf16_to_float(h);
      case DType::F16: std::memcpy(&h, e, 2); return fp16_to_float(h);
      default: std::memcpy(&f, e, 4); return f;
    }
  };
  const int r16 = rows / 16 * 16, c16 = cols / 16 * 16;
  for (int r0 = 0; r0 < r16; r0 += 16) {
    for (int c0 = 0; c0 < c16; c0 += 16) {
      __m512 v[16];
      for (int i = 0; i < 16; ++i) v[i] = load16(dt, base + ((r0 + i) * row_stride + c0) * static_cast<int64_t>(es));
      transpose16(v);
      for (int i = 0; i < 16; ++i) _mm512_storeu_ps(dst + static_cast<size_t>(c0 + i) * rows + r0, v[i]);
    }
    for (int c = c16; c < cols; ++c)
      for (int i = 0; i < 16; ++i) dst[static_cast<size_t>(c) * rows + r0 + i] = element(r0 + i, c);
  }
  for (int r = r16; r < rows; ++r)
    for (int c = 0; c < cols; ++c) dst[static_cast<size_t>(c) * rows + r] = element(r, c);
}
