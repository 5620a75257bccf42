// Tile operations of the CPU kernels: vector math (exp, tanh, reductions), dtype conversion, row
// loads and stores, the tile products, the score transform, masks within a tile, Philox dropout
// and the probability / gradient element-wise steps. Included by flash_kernels.h inside its
// per-ISA namespace (so it is compiled once per instruction set, like the kernels); not a
// standalone header.

#include "cpu/exp_poly.h"

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// ---- Vector math ---------------------------------------------------------------------------------
// Loops below are written for the auto-vectoriser (`omp simd`, no calls, branch-free bodies): the
// same source becomes 16-lane AVX-512, 8-lane AVX2 or 4-lane SSE2 code in the ISA builds.

// exp(x) in fp32: Cody-Waite reduction x = n·ln2 + r (|r| <= ln2/2, ln2 split in two so r is exact
// to ~1 ulp) and Cephes' expf minimax polynomial for e^r (relative error about 1 ulp), scaled by
// 2^n built in the exponent bits. x is clamped to [-88, 88]: -inf (masked scores, m = -inf) gives
// exactly 0 (n = -127 builds a zero scale), results below ~2^-126 flush to 0, NaN stays NaN.
inline float exp_approx(float x) {
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
  constexpr float kRound = 12582912.0f;  // 1.5·2^23: adding it rounds to an integer
  x = x < -88.0f ? -88.0f : x;
  x = x > 88.0f ? 88.0f : x;
  const float n = (x * kLog2e + kRound) - kRound;
  float r = x - n * kLn2Hi;
  r = r - n * kLn2Lo;
  return exp_reduced(r, n);
}

// tanh(x) = sign(x)·(1 - 2 / (e^{2|x|} + 1)): absolute error about 1e-7 (relative error grows for
// |x| < 1e-3, where the softcapped score is tiny anyway); saturates to ±1 without overflow.
inline float tanh_approx(float x) {
  const float ax = x < 0.0f ? -x : x;
  const float t = 1.0f - 2.0f / (exp_approx(2.0f * ax) + 1.0f);
  return x < 0.0f ? -t : t;
}

void fill(float* x, int n, float v) {
#pragma omp simd
  for (int j = 0; j < n; ++j) x[j] = v;
}

void scale_row(float* x, int n, float a) {
#pragma omp simd
  for (int j = 0; j < n; ++j) x[j] *= a;
}

float row_max(const float* x, int n) {
  float m = kNegInf;
#pragma omp simd reduction(max : m)
  for (int j = 0; j < n; ++j) m = x[j] > m ? x[j] : m;
  return m;
}

float row_dot(const float* x, const float* y, int n) {
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int j = 0; j < n; ++j) s += x[j] * y[j];
  return s;
}

// x[j] = exp(x[j] - sub), returns the sum.
float exp_sub_sum(float* x, int n, float sub) {
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int j = 0; j < n; ++j) {
    const float e = exp_approx(x[j] - sub);
    x[j] = e;
    sum += e;
  }
  return sum;
}

// ---- dtype conversion ------------------------------------------------------------------------------
void widen_row(DType dt, const void* src, float* dst, int n) {
  switch (dt) {
    case DType::F32:
      std::memcpy(dst, src, sizeof(float) * static_cast<size_t>(n));
      return;
    case DType::BF16: {
      const uint16_t* s = static_cast<const uint16_t*>(src);
      uint32_t* d = reinterpret_cast<uint32_t*>(dst);
#pragma omp simd
      for (int j = 0; j < n; ++j) d[j] = static_cast<uint32_t>(s[j]) << 16;
      return;
    }
    case DType::F16: {
      const uint16_t* s = static_cast<const uint16_t*>(src);
      int j = 0;
#if IOATTN_CPU_AVX512
      for (; j + 16 <= n; j += 16)
        _mm512_storeu_ps(dst + j, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + j))));
#elif IOATTN_CPU_AVX2
      for (; j + 8 <= n; j += 8)
        _mm256_storeu_ps(dst + j, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + j))));
#endif
      for (; j < n; ++j) dst[j] = fp16_to_float(s[j]);
      return;
    }
    default:
      return;
  }
}

// dst = src · a in dtype dt, rounding to nearest even (bf16 NaNs stay quiet NaNs).
void narrow_row(DType dt, const float* src, float a, void* dst, int n) {
  switch (dt) {
    case DType::F32: {
      float* d = static_cast<float*>(dst);
#pragma omp simd
      for (int j = 0; j < n; ++j) d[j] = src[j] * a;
      return;
    }
    case DType::BF16: {
      uint16_t* d = static_cast<uint16_t*>(dst);
#pragma omp simd
      for (int j = 0; j < n; ++j) {
        const float x = src[j] * a;
        uint32_t u;
        std::memcpy(&u, &x, 4);
        const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
        const uint32_t nan = (u >> 16) | 0x40u;
        d[j] = static_cast<uint16_t>((u & 0x7FFFFFFFu) > 0x7F800000u ? nan : rounded);
      }
      return;
    }
    case DType::F16: {
      uint16_t* d = static_cast<uint16_t*>(dst);
      int j = 0;
#if IOATTN_CPU_AVX512
      const __m512 va = _mm512_set1_ps(a);
      for (; j + 16 <= n; j += 16)
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + j),
                            _mm512_cvtps_ph(_mm512_mul_ps(_mm512_loadu_ps(src + j), va), _MM_FROUND_TO_NEAREST_INT));
#elif IOATTN_CPU_AVX2
      const __m256 va = _mm256_set1_ps(a);
      for (; j + 8 <= n; j += 8)
        _mm_storeu_si128(reinterpret_cast<__m128i*>(d + j),
                         _mm256_cvtps_ph(_mm256_mul_ps(_mm256_loadu_ps(src + j), va), _MM_FROUND_TO_NEAREST_INT));
#endif
      for (; j < n; ++j) d[j] = float_to_fp16(src[j] * a);
      return;
    }
    default:
      return;
  }
}

// A row-major fp32 matrix as BLAS sees it.
struct Mat {
  const float* ptr;
  int ld;
};

// `rows` rows of `cols` elements starting at `base`, `row_stride` elements apart, as fp32: the
// source itself when it is fp32 and its stride is a leading dimension BLAS accepts, else widened
// (or compacted) into buf, ld = cols.
Mat load_rows(DType dt, const void* base, int64_t row_stride, int rows, int cols, float* buf) {
  if (dt == DType::F32 && row_stride >= cols && row_stride <= std::numeric_limits<int>::max())
    return Mat{static_cast<const float*>(base), static_cast<int>(row_stride)};
  const size_t row_bytes = static_cast<size_t>(row_stride) * dtype_size(dt);
  for (int r = 0; r < rows; ++r)
    widen_row(dt, static_cast<const char*>(base) + r * row_bytes, buf + static_cast<size_t>(r) * cols, cols);
  return Mat{buf, cols};
}

// Element (row, 0) of head h of sequence b of a strided tensor.
const void* at(const Params& p, const void* base, int64_t bs, int64_t rs, int64_t hs, int b, int64_t row, int h) {
  return static_cast<const char*>(base) + (b * bs + row * rs + h * hs) * static_cast<int64_t>(dtype_size(p.dtype));
}
void* at(const Params& p, void* base, int64_t bs, int64_t rs, int64_t hs, int b, int64_t row, int h) {
  return static_cast<char*>(base) + (b * bs + row * rs + h * hs) * static_cast<int64_t>(dtype_size(p.dtype));
}

// Writes an fp32 (rows x cols, ld) matrix times a into `rows` strided output rows, in dtype dt.
void store_rows(DType dt, const float* src, int ld, float a, void* base, int64_t row_stride, int rows, int cols) {
  const size_t row_bytes = static_cast<size_t>(row_stride) * dtype_size(dt);
  for (int r = 0; r < rows; ++r)
    narrow_row(dt, src + static_cast<size_t>(r) * ld, a, static_cast<char*>(base) + r * row_bytes, cols);
}

#if IOATTN_CPU_AVX512
#include "cpu/gemm_avx512.h"
#endif

// The two forms of tile product the kernels use, on fp32 tiles: AVX-512 builds run them on
// gemm_avx512.h's micro-kernel, the others on cblas_sgemm (single-threaded inside our OpenMP
// region, see flash_kernels.h).
//
// C (m x n, ldc) = A·B (+ C with accumulate). A: element (r, t) at a[r * a_rs + t * a_cs], so a
// row-major matrix (a_cs = 1) or the transpose of one (a_rs = 1: Pᵀ, dSᵀ); B: (k x n) rows, ldb.
void mm(int m, int n, int k, const float* a, int64_t a_rs, int64_t a_cs, const float* b, int ldb, float* c, int ldc,
        bool accumulate) {
#if IOATTN_CPU_AVX512
  f32_gemm(m, n, k, a, a_rs, a_cs, b, ldb, c, ldc, accumulate);
#else
  const bool trans_a = a_cs != 1;
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, CblasNoTrans, m, n, k, 1.0f, a,
              static_cast<int>(trans_a ? a_cs : a_rs), b, ldb, accumulate ? 1.0f : 0.0f, c, ldc);
#endif
}

// The B operand of C = A·Bᵀ (S = Q Kᵀ, dP = dO Vᵀ), from `n` rows of `k` elements of B: AVX-512
// builds store Bᵀ (k x n, ld n) so the micro-kernel streams its rows; the others keep B's rows (fp32
// in place when possible) for sgemm's transposed mode.
Mat load_bt(DType dt, const void* src, int64_t row_stride, int n, int k, float* buf) {
#if IOATTN_CPU_AVX512
  load_transposed(dt, src, row_stride, n, k, buf);
  return Mat{buf, n};
#else
  return load_rows(dt, src, row_stride, n, k, buf);
#endif
}

// C (m x n, ldc) = A·Bᵀ, A (m x k) rows, Bt from load_bt.
void mm_bt(int m, int n, int k, const Mat& a, const Mat& bt, float* c, int ldc) {
#if IOATTN_CPU_AVX512
  f32_gemm(m, n, k, a.ptr, a.ld, 1, bt.ptr, bt.ld, c, ldc, false);
#else
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1.0f, a.ptr, a.ld, bt.ptr, bt.ld, 0.0f, c, ldc);
#endif
}

#if IOATTN_CPU_BF16
#include "cpu/bf16_dot.h"
// Tile products on bf16 pairs for bf16 inputs with head dims of at least 16. Rounding P and dS to
// bf16 (as flash-attn does on the GPU) keeps the error below that of standard bf16 attention, but
// at head dims 1 and 2 only barely (max error up to 1.84x standard's over 120 random cases, 1.3x at
// 3, <= 1.25x from 8 up, against the float64 reference), and tiny head dims gain nothing from the
// pair kernels: those take the fp32 path.
constexpr int kBf16MinHeadDim = 16;
bool bf16_products(const Params& p) {
  return p.dtype == DType::BF16 && p.head_dim >= kBf16MinHeadDim && p.head_dim_v >= kBf16MinHeadDim;
}
#endif

// ---- Scores ---------------------------------------------------------------------------------------
// The per-head constants of the score transform (DESIGN.md §1 order: scale, softcap, ALiBi).
struct ScoreFn {
  float scale;      // softmax scale
  float softcap;    // 0 = off
  float cap_inv;    // scale / softcap: tanh argument per raw score
  float slope;      // ALiBi slope of this head (0 = off)
  bool alibi;
};

ScoreFn score_fn(const Params& p, int b, int h) {
  ScoreFn f;
  f.scale = p.scale;
  f.softcap = p.softcap;
  f.cap_inv = p.softcap > 0.0f ? p.scale / p.softcap : 0.0f;
  f.alibi = p.alibi_slopes != nullptr;
  f.slope = f.alibi ? p.alibi_slopes[b * p.alibi_batch_stride + h] : 0.0f;
  return f;
}

// Raw scores x[0..n) of row i at keys j0.. -> final scores. `diag0` is i + Sk - Sq - j0 (the ALiBi
// distance is |diag0 - t|). With softcap, g (if given) receives d(score)/d(scale·raw) = 1 - tanh².
void transform_scores(const ScoreFn& f, float* x, float* g, int n, int diag0) {
  if (f.softcap > 0.0f) {
    const float c = f.softcap, k = f.cap_inv;
    if (g) {
#pragma omp simd
      for (int t = 0; t < n; ++t) {
        const float th = tanh_approx(x[t] * k);
        x[t] = c * th;
        g[t] = 1.0f - th * th;
      }
    } else {
#pragma omp simd
      for (int t = 0; t < n; ++t) x[t] = c * tanh_approx(x[t] * k);
    }
  } else {
    scale_row(x, n, f.scale);
  }
  if (f.alibi) {
    const float s = f.slope;
#pragma omp simd
    for (int t = 0; t < n; ++t) {
      const int d = diag0 - t;
      x[t] -= s * static_cast<float>(d < 0 ? -d : d);
    }
  }
}

// Visible keys of row i inside the tile [j0, j0 + nk), as offsets [*a, *e) into the tile.
void visible_in_tile(const WindowMask& mask, int sk, int i, int j0, int nk, int* a, int* e) {
  int lo = mask.first_key(i) - j0, hi = mask.end_key(i, sk) - j0;
  lo = lo < 0 ? 0 : (lo > nk ? nk : lo);
  hi = hi < 0 ? 0 : (hi > nk ? nk : hi);
  *a = lo;
  *e = hi > lo ? hi : lo;
}

// Philox 4x32-10 (src/core/philox.h, same constants) for 16 consecutive counters c0 = g0 .. g0 + 15,
// side by side: out[w][l] is word w of counter g0 + l. AVX-512 / AVX2 do the 32x32 -> 64-bit
// products with vpmuludq on even and odd lanes; the portable loop is the scalar definition.
constexpr int kPhiloxLanes = 16;

#if IOATTN_CPU_AVX512
using PhiloxVec = __m512i;  // 16 lanes
constexpr int kPhiloxStep = 16;
inline PhiloxVec pv_set1(uint32_t x) { return _mm512_set1_epi32(static_cast<int>(x)); }
inline PhiloxVec pv_lanes(uint32_t base) { return _mm512_add_epi32(pv_set1(base), _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)); }
inline PhiloxVec pv_xor3(PhiloxVec a, PhiloxVec b, PhiloxVec c) { return _mm512_ternarylogic_epi32(a, b, c, 0x96); }
inline void pv_store(uint32_t* dst, PhiloxVec x) { _mm512_storeu_si512(dst, x); }
inline void pv_mulhilo(PhiloxVec a, PhiloxVec m, PhiloxVec* hi, PhiloxVec* lo) {
  const __m512i even = _mm512_mul_epu32(a, m), odd = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), m);
  *lo = _mm512_mullo_epi32(a, m);
  *hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
}
#elif IOATTN_CPU_AVX2
using PhiloxVec = __m256i;  // 8 lanes
constexpr int kPhiloxStep = 8;
inline PhiloxVec pv_set1(uint32_t x) { return _mm256_set1_epi32(static_cast<int>(x)); }
inline PhiloxVec pv_lanes(uint32_t base) { return _mm256_add_epi32(pv_set1(base), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)); }
inline PhiloxVec pv_xor3(PhiloxVec a, PhiloxVec b, PhiloxVec c) { return _mm256_xor_si256(_mm256_xor_si256(a, b), c); }
inline void pv_store(uint32_t* dst, PhiloxVec x) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), x); }
inline void pv_mulhilo(PhiloxVec a, PhiloxVec m, PhiloxVec* hi, PhiloxVec* lo) {
  const __m256i even = _mm256_mul_epu32(a, m), odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);
  *lo = _mm256_mullo_epi32(a, m);
  *hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
}
#endif

void philox_lanes(uint32_t g0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1,
                  uint32_t out[4][kPhiloxLanes]) {
#if IOATTN_CPU_AVX512 || IOATTN_CPU_AVX2
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u, kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
  const PhiloxVec m0 = pv_set1(kM0), m1 = pv_set1(kM1);
  for (int l0 = 0; l0 < kPhiloxLanes; l0 += kPhiloxStep) {
    PhiloxVec a0 = pv_lanes(g0 + l0), a1 = pv_set1(c1), a2 = pv_set1(c2), a3 = pv_set1(c3);
    uint32_t kk0 = k0, kk1 = k1;
    for (int r = 0; r < 10; ++r) {
      PhiloxVec hi0, lo0, hi1, lo1;
      pv_mulhilo(a0, m0, &hi0, &lo0);
      pv_mulhilo(a2, m1, &hi1, &lo1);
      a0 = pv_xor3(hi1, a1, pv_set1(kk0));
      a1 = lo1;
      a2 = pv_xor3(hi0, a3, pv_set1(kk1));
      a3 = lo0;
      kk0 += kW0;
      kk1 += kW1;
    }
    pv_store(out[0] + l0, a0); pv_store(out[1] + l0, a1); pv_store(out[2] + l0, a2); pv_store(out[3] + l0, a3);
  }
#else
  for (int l = 0; l < kPhiloxLanes; ++l) {
    const Philox4 w = philox4x32_10(g0 + l, c1, c2, c3, k0, k1);
    for (int t = 0; t < 4; ++t) out[t][l] = w.x[t];
  }
#endif
}

// Dropout on x[0..n) = P[i, j_begin ..): kept elements times rp, dropped ones 0 (src/core/philox.h:
// one Philox call per four keys, key (seed_lo, seed_hi ^ offset_hi), counter (j/4, i, b·Hq + h,
// offset_lo)).
void apply_dropout(const Params& p, int b, int h, int i, int j_begin, float* x, int n) {
  const uint32_t k0 = static_cast<uint32_t>(p.seed);
  const uint32_t k1 = static_cast<uint32_t>(p.seed >> 32) ^ static_cast<uint32_t>(p.offset >> 32);
  const uint32_t c1 = static_cast<uint32_t>(i), c2 = static_cast<uint32_t>(b * p.heads_q + h);
  const uint32_t c3 = static_cast<uint32_t>(p.offset);
  const uint32_t thr = p.dropout_threshold;
  const float rp = p.rp_dropout;
  const int j_end = j_begin + n;
  uint32_t words[4][kPhiloxLanes];
  for (int g0 = j_begin >> 2; g0 * 4 < j_end; g0 += kPhiloxLanes) {
    philox_lanes(static_cast<uint32_t>(g0), c1, c2, c3, k0, k1, words);
    const int lo = std::max(j_begin, g0 * 4), hi = std::min(j_end, (g0 + kPhiloxLanes) * 4);
    for (int j = lo; j < hi; ++j) {
      const int l = j / 4 - g0;
      float& v = x[j - j_begin];
      v = words[j & 3][l] >= thr ? v * rp : 0.0f;
    }
  }
}

// Backward: raw scores S (nq x nk, ld) of rows i0.. and keys j0.. -> P = exp(score - LSE), zero
// where masked or where the row saw no key (LSE = -inf); G (same shape, when softcap) = 1 - tanh².
void scores_to_probs(const ScoreFn& f, const WindowMask& mask, int sk, int i0, int nq, int j0,
                     int nk, const float* lse, float* s, float* g, int ld) {
  for (int r = 0; r < nq; ++r) {
    float* row = s + static_cast<size_t>(r) * ld;
    float* grow = g ? g + static_cast<size_t>(r) * ld : nullptr;
    int a, e;
    visible_in_tile(mask, sk, i0 + r, j0, nk, &a, &e);
    if (lse[r] == kNegInf) a = e = 0;
    if (grow) fill(grow, nk, 0.0f);
    transform_scores(f, row + a, grow ? grow + a : nullptr, e - a, i0 + r + mask.shift - j0 - a);
    exp_sub_sum(row + a, e - a, lse[r]);
    fill(row, a, 0.0f);
    fill(row + e, nk - e, 0.0f);
  }
}

// dS = P∘(dP∘Z·rp - D) (∘ G with softcap), in place of dP. Z·rp is read off the dropped copy Pd of
// P: where P > 0, Pd != 0 exactly when the element was kept.
void probs_to_dscores(const Params& p, int nq, int nk, const float* P, const float* Pd, const float* G,
                      const float* dsum, float* dp, int ld) {
  const bool dropout = p.dropout_p > 0.0f;
  const float rp = p.rp_dropout;
  for (int r = 0; r < nq; ++r) {
    const size_t o = static_cast<size_t>(r) * ld;
    const float* pr = P + o;
    float* d = dp + o;
    const float di = dsum[r];
    if (dropout) {
      const float* pd = Pd + o;
#pragma omp simd
      for (int t = 0; t < nk; ++t) d[t] = pr[t] * ((pd[t] != 0.0f ? d[t] * rp : 0.0f) - di);
    } else {
#pragma omp simd
      for (int t = 0; t < nk; ++t) d[t] = pr[t] * (d[t] - di);
    }
    if (G) {
      const float* gr = G + o;
#pragma omp simd
      for (int t = 0; t < nk; ++t) d[t] *= gr[t];
    }
  }
}
