// The flash-attention kernels of the CPU backend, written once and compiled once per instruction
// set: isa_*.cpp include every header first (so library and std code keep the baseline target),
// then `#pragma GCC target(...)`, define IOATTN_CPU_ISA (the namespace) and include this file.
// Everything here has internal linkage or lives in that namespace, so no symbol compiled for
// AVX-512 can be picked by the linker for a baseline caller.
//
// The algorithm (FlashAttention-2, DESIGN.md §1, §4), per task:
//   forward, task (b, h, query block):   Q block (BQ x D) stays hot; for each key block in the
//     block's visible range:  S = Q Kᵀ (sgemm, BQ x BK)  ->  scale / softcap / ALiBi / mask  ->
//     online softmax {m, l} per row, rescale O by exp(m_old - m_new)  ->  O += P V (sgemm).
//     At the end O /= l and LSE = m + log l. Extra memory: the per-thread tiles, O(BQ·BK + (BQ + BK)·D).
//   backward, recomputing P = exp(S - LSE) per tile (nothing N x N is stored):
//     task (b, kv head, key block) owns dK, dV of its keys: for each query head of the group and
//     query block that sees the keys: dV += (P∘Z·rp)ᵀ dO, dP = dO Vᵀ, dS = P∘(dP∘Z·rp - D)
//     (times 1 - tanh² with softcap), dK += dSᵀ Q, and in the fused mode dQ += dS K into an fp32
//     accumulator the task owns. In the two-pass mode task (b, h, query block) computes dQ.
//
// Tile products go through cblas_sgemm on fp32 tiles. Inside an OpenMP parallel region the
// OpenMP build of OpenBLAS runs each call single-threaded (checked: two threads each calling
// 128x256x128 sgemm reach 2x the per-thread rate, 240 GFLOP/s with the Haswell kernels OpenBLAS
// 0.3.21 picks on this EPYC, 443 with OPENBLAS_CORETYPE=SkylakeX; one 2048³ sgemm on both cores:
// 265 / 498). fp32 inputs whose row stride BLAS accepts are used in place; bf16 / fp16 tiles are
// widened to fp32 once per tile (the widening costs 1/(2·BQ) of the tile's flops).
// bf16 inputs on CPUs with AVX-512 BF16 (the avx512bf16 build) skip the widening: every tile
// product runs on bf16 pairs with vdpbf16ps (bf16_dot.h), P and dS rounded to bf16 as flash-attn
// does on the GPU. Measured in user cycles (perf stat, one thread, B=1 H=8 S=2048 D=128, the shared
// machine's wall clock being too noisy), forward / backward flops per cycle:
//   bf16 pairs (vdpbf16ps)                    53 / 79
//   widen + sgemm, OpenBLAS Haswell kernels   19 / 27   (what OpenBLAS 0.3.21 picks on this EPYC)
//   fp32 sgemm, OPENBLAS_CORETYPE=SkylakeX    33 / 42
// Tile sizes, with the measurements that chose them, are in kernels.h.

// The including file also defines IOATTN_CPU_AVX512 (AVX-512 F/BW/VL/DQ), IOATTN_CPU_AVX2 (AVX2, FMA,
// F16C) and IOATTN_CPU_BF16 (AVX-512 BF16) to 0 or 1 for its target: g++ does not update __AVX512F__
// and friends after `#pragma GCC target` (only the C front end does), so those cannot be used.
#if !defined(IOATTN_CPU_ISA) || !defined(IOATTN_CPU_AVX512) || !defined(IOATTN_CPU_AVX2) || !defined(IOATTN_CPU_BF16)
#error "define IOATTN_CPU_ISA and the IOATTN_CPU_* feature flags before including flash_kernels.h"
#endif

// GCC 12 reports the self-initialised `__Y = __Y` inside _mm256_undefined_si256() (used by
// _mm512_mul_epu32, _mm512_cvtph_ps, ...) as maybe-uninitialised once inlined here; it is not.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace ioattn {
namespace cpu {
namespace IOATTN_CPU_ISA {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// ---- Vector math ---------------------------------------------------------------------------------
// Loops below are written for the auto-vectoriser (`omp simd`, no calls, branch-free bodies): the
// same source becomes 16-lane AVX-512, 8-lane AVX2 or 4-lane SSE2 code in the three builds.

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
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, 4);
  return y * scale;
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

// Writes rows x rows of an fp32 (rows x cols, ld) matrix times a into the strided output.
void store_rows(DType dt, const float* src, int ld, float a, void* base, int64_t row_stride, int rows, int cols) {
  const size_t row_bytes = static_cast<size_t>(row_stride) * dtype_size(dt);
  for (int r = 0; r < rows; ++r)
    narrow_row(dt, src + static_cast<size_t>(r) * ld, a, static_cast<char*>(base) + r * row_bytes, cols);
}

// C (m x n, ldc) = alpha · op(A) op(B) + beta · C, row-major.
void gemm(bool trans_a, bool trans_b, int m, int n, int k, const float* a, int lda, const float* b, int ldb,
          float beta, float* c, int ldc) {
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, m, n, k,
              1.0f, a, lda, b, ldb, beta, c, ldc);
}

#if IOATTN_CPU_BF16
#include "cpu/bf16_dot.h"
// Tile products on bf16 pairs for bf16 inputs with head dims of at least 16. Rounding P and dS to
// bf16 (as flash-attn does on the GPU) keeps the error below that of standard bf16 attention, but
// at head dims 1 and 2 only barely (max error up to 1.84x standard's over 120 random cases, 1.3x at
// 3, <= 1.25x from 8 up, against the float64 reference), and tiny head dims gain nothing from the
// pair kernels: those take the widen + sgemm path.
constexpr int kBf16MinHeadDim = 16;
bool bf16_products(const Params& p) {
  return p.dtype == DType::BF16 && p.head_dim >= kBf16MinHeadDim && p.head_dim_v >= kBf16MinHeadDim;
}
#endif

// ---- Forward tile products -------------------------------------------------------------------------
// S = Q Kᵀ and O += P V of one tile. fp32 sgemm on fp32 (or widened) tiles; with bf16 inputs on a
// CPU with AVX-512 BF16, vdpbf16ps on bf16 pairs (bf16_dot.h): Q, K and V are read as they are
// (products exact, sums fp32) and P is rounded to bf16 for P V, as flash-attn does on the GPU.
// Cycles measured for both paths: see the top of this file.

// Q block as the A operand: fp32 rows (Mat) or, on the bf16 path, pair words reinterpreted (ld in words).
Mat fwd_q(const Params& p, const void* q, int nq, float* buf) {
#if IOATTN_CPU_BF16
  if (bf16_products(p)) {
    pack_rows_pairs(static_cast<const uint16_t*>(q), p.q_row_stride, nq, p.head_dim, reinterpret_cast<uint32_t*>(buf));
    return Mat{buf, (p.head_dim + 1) / 2};
  }
#endif
  return load_rows(p.dtype, q, p.q_row_stride, nq, p.head_dim, buf);
}

// S (nq x nk, ld ldS) = Q Kᵀ for keys at k.
void fwd_qk(const Params& p, const Mat& Q, const void* k, int nq, int nk, float* kbuf, float* s, int lds) {
#if IOATTN_CPU_BF16
  if (bf16_products(p)) {
    int ldb;
    uint32_t* kp = reinterpret_cast<uint32_t*>(kbuf);
    pack_k_pairs(static_cast<const uint16_t*>(k), p.k_row_stride, nk, p.head_dim, kp, &ldb);
    bf16_gemm(nq, nk, (p.head_dim + 1) / 2, reinterpret_cast<const uint32_t*>(Q.ptr), Q.ld, kp, ldb, s, lds, false);
    return;
  }
#endif
  const Mat K = load_rows(p.dtype, k, p.k_row_stride, nk, p.head_dim, kbuf);
  gemm(false, true, nq, nk, p.head_dim, Q.ptr, Q.ld, K.ptr, K.ld, 0.0f, s, lds);
}

// O (nq x Dv) += P V for the values at v; P is (nq x nk, ld lds) and may be overwritten.
void fwd_pv(const Params& p, float* P, int lds, const void* v, int nq, int nk, float* vbuf, float* o) {
#if IOATTN_CPU_BF16
  if (bf16_products(p)) {
    int ldb;
    uint32_t* vp = reinterpret_cast<uint32_t*>(vbuf);
    pack_v_pairs(static_cast<const uint16_t*>(v), p.v_row_stride, nk, p.head_dim_v, vp, &ldb);
    for (int r = 0; r < nq; ++r) probs_to_pairs(P + static_cast<size_t>(r) * lds, nk);
    bf16_gemm(nq, p.head_dim_v, (nk + 1) / 2, reinterpret_cast<const uint32_t*>(P), lds, vp, ldb, o, p.head_dim_v, true);
    return;
  }
#endif
  const Mat V = load_rows(p.dtype, v, p.v_row_stride, nk, p.head_dim_v, vbuf);
  gemm(false, false, nq, p.head_dim_v, nk, P, lds, V.ptr, V.ld, 1.0f, o, p.head_dim_v);
}

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
void scores_to_probs(const Params& p, const ScoreFn& f, const WindowMask& mask, int sk, int i0, int nq, int j0,
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
  (void)p;
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

// ---- Forward ----------------------------------------------------------------------------------------
struct FwdTiles {
  float *q, *k, *v, *s, *o, *m, *l;
};

FwdTiles fwd_tiles(const Params& p, float* ws) {
  FwdTiles t;
  const size_t d = p.head_dim, dv = p.head_dim_v;
  // bf16 pair layouts (bf16_dot.h) fit the same space: Q (BQ, ceil(D/2)), K (ceil(D/2), BK),
  // V (BK/2, Dv rounded up to 32), P pairs in place of P.
  t.q = ws;                       // (BQ, D)    Q block, fp32
  t.k = t.q + kFwdBlockQ * d;     // (BK, D)    K tile, fp32
  t.v = t.k + kFwdBlockK * d;     // (BK, Dv + kPairPad)  V tile, fp32
  t.s = t.v + kFwdBlockK * (dv + kPairPad);  // (BQ, BK)   scores, then P
  t.o = t.s + kFwdBlockQ * kFwdBlockK;  // (BQ, Dv) unnormalised O
  t.m = t.o + kFwdBlockQ * dv;    // (BQ)       running max
  t.l = t.m + kFwdBlockQ;         // (BQ)       running sum
  return t;
}

void fwd_block(const Params& p, int b, int h, int qb, float* ws) {
  const Seq sq = seq_of(p, b);
  const int i0 = qb * kFwdBlockQ;
  if (i0 >= sq.sq) return;
  const int nq = std::min(kFwdBlockQ, sq.sq - i0);
  const int Dv = p.head_dim_v, hk = h / p.group;
  const WindowMask mask{p.window_left, p.window_right, sq.sk - sq.sq};
  const ScoreFn f = score_fn(p, b, h);
  const bool dropout = p.dropout_p > 0.0f;
  FwdTiles t = fwd_tiles(p, ws);

  // Keys any row of the block sees: first_key / end_key grow with i.
  const int kbeg = std::min(mask.first_key(i0), sq.sk), kend = mask.end_key(i0 + nq - 1, sq.sk);
  // Keys every row of the block sees: tiles inside need no mask.
  const int all_beg = mask.first_key(i0 + nq - 1), all_end = mask.end_key(i0, sq.sk);

  const Mat Q = fwd_q(p, at(p, p.q, p.q_batch_stride, p.q_row_stride, p.q_head_stride, b, sq.q0 + i0, h), nq, t.q);
  fill(t.o, nq * Dv, 0.0f);
  fill(t.m, nq, kNegInf);
  fill(t.l, nq, 0.0f);

  for (int j0 = kbeg; j0 < kend; j0 += kFwdBlockK) {
    const int nk = std::min(kFwdBlockK, kend - j0);
    fwd_qk(p, Q, at(p, p.k, p.k_batch_stride, p.k_row_stride, p.k_head_stride, b, sq.k0 + j0, hk), nq, nk, t.k, t.s,
           kFwdBlockK);  // S = Q Kᵀ  (nq, nk)
    const bool unmasked = all_beg <= j0 && all_end >= j0 + nk;

    for (int r = 0; r < nq; ++r) {
      float* row = t.s + static_cast<size_t>(r) * kFwdBlockK;
      int a = 0, e = nk;
      if (!unmasked) visible_in_tile(mask, sq.sk, i0 + r, j0, nk, &a, &e);
      transform_scores(f, row + a, nullptr, e - a, i0 + r + mask.shift - j0 - a);
      const float m_new = std::max(t.m[r], row_max(row + a, e - a));
      if (m_new == kNegInf) {  // no key seen yet (or only -inf scores): nothing to add, no -inf - -inf
        fill(row, nk, 0.0f);
        continue;
      }
      const float alpha = exp_approx(t.m[r] - m_new);  // 0 on the row's first keys (m = -inf)
      const float sum = exp_sub_sum(row + a, e - a, m_new);
      fill(row, a, 0.0f);
      fill(row + e, nk - e, 0.0f);
      t.l[r] = t.l[r] * alpha + sum;  // the normaliser uses P before dropout, as flash-attn does
      t.m[r] = m_new;
      if (alpha != 1.0f) scale_row(t.o + static_cast<size_t>(r) * Dv, Dv, alpha);
      if (dropout) apply_dropout(p, b, h, i0 + r, j0 + a, row + a, e - a);
    }
    fwd_pv(p, t.s, kFwdBlockK, at(p, p.v, p.v_batch_stride, p.v_row_stride, p.v_head_stride, b, sq.k0 + j0, hk), nq, nk,
           t.v, t.o);  // O += P V  (nq, Dv)
  }

  // Epilogue: O /= l; LSE = m + log l. A row that saw no key has l = 0: O = 0, LSE = -inf.
  for (int r = 0; r < nq; ++r) {
    const float l = t.l[r];
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
    narrow_row(p.dtype, t.o + static_cast<size_t>(r) * Dv, inv,
               at(p, p.out, p.o_batch_stride, p.o_row_stride, p.o_head_stride, b, sq.q0 + i0 + r, h), Dv);
    if (p.lse) p.lse[lse_index(p, b, h, sq, i0 + r)] = l > 0.0f ? t.m[r] + std::log(l) : kNegInf;
  }
}

// ---- Backward ---------------------------------------------------------------------------------------
struct BwdTiles {
  float *k, *v, *dk, *dv, *q, *dout, *dq, *s, *dp, *pd, *g;
  uint32_t *kj, *qi, *doi, *tp;  // bf16 path only: operands paired along keys or queries
};

BwdTiles bwd_tiles(const Params& p, float* ws) {
  BwdTiles t;
  const size_t d = p.head_dim, dv = p.head_dim_v, tile = static_cast<size_t>(kBwdBlockQ) * kBwdBlockK;
  // On the bf16 path k, v, q and dout hold pairs along the head dim instead (bf16_dot.h), which
  // fit the same space: K, V as (ceil(D/2), BK), Q, dO as (BQ, ceil(D/2)).
  t.k = ws;                          // (BK, D)   K tile
  t.v = t.k + kBwdBlockK * d;        // (BK, Dv)  V tile
  t.dk = t.v + kBwdBlockK * dv;      // (BK, D)   dK accumulator (unscaled)
  t.dv = t.dk + kBwdBlockK * d;      // (BK, Dv)  dV accumulator
  t.q = t.dv + kBwdBlockK * dv;      // (BQ, D)   Q tile
  t.dout = t.q + kBwdBlockQ * d;     // (BQ, Dv)  dO tile
  t.dq = t.dout + kBwdBlockQ * dv;   // (BQ, D)   dQ accumulator (two-pass mode)
  t.s = t.dq + kBwdBlockQ * d;       // (BQ, BK)  S, then P
  t.dp = t.s + tile;                 // (BQ, BK)  dP, then dS
  t.pd = t.dp + tile;                // (BQ, BK)  P after dropout
  t.g = t.pd + tile;                 // (BQ, BK)  1 - tanh² (softcap)
  t.kj = reinterpret_cast<uint32_t*>(t.g + tile);    // (BK/2, D + pad)   K, pairs of keys
  t.qi = t.kj + kBwdBlockK / 2 * (d + kPairPad);      // (BQ/2, D + pad)   Q, pairs of queries
  t.doi = t.qi + kBwdBlockQ / 2 * (d + kPairPad);     // (BQ/2, Dv + pad)  dO, pairs of queries
  t.tp = t.doi + kBwdBlockQ / 2 * (dv + kPairPad);    // (BK, BQ/2)        Pdᵀ or dSᵀ, pairs of queries
  return t;
}

void bwd_rowdot(const Params& p, int b, int h, float* dsum, float* ws) {
  const Seq sq = seq_of(p, b);
  const int Dv = p.head_dim_v;
  float* o = ws;
  float* d = ws + Dv;
  for (int i = 0; i < sq.sq; ++i) {
    widen_row(p.dtype, at(p, p.out, p.o_batch_stride, p.o_row_stride, p.o_head_stride, b, sq.q0 + i, h), o, Dv);
    widen_row(p.dtype, at(p, p.dout, p.do_batch_stride, p.do_row_stride, p.do_head_stride, b, sq.q0 + i, h), d, Dv);
    float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
    for (int c = 0; c < Dv; ++c) acc += o[c] * d[c];
    dsum[lse_index(p, b, h, sq, i)] = acc;
  }
}

// The operands of one backward step in the forms its five products read: fp32 rows (sgemm path)
// or, for bf16 inputs on AVX-512 BF16, bf16 pair layouts (bf16_dot.h) built once per tile.
struct KvTile {
  Mat K, V;                       // fp32: (nk, D), (nk, Dv)
  const uint32_t *kd, *vd, *kj;   // bf16: K, V paired along d (B of Q Kᵀ, dO Vᵀ); K paired along keys (B of dS K)
  int ld_kd, ld_vd, ld_kj;
};
struct QTile {
  Mat Q, dO;                                 // fp32: (nq, D), (nq, Dv)
  const uint32_t *qd, *dod, *qi, *doi;       // bf16: Q, dO paired along d (A) and along queries (B of dSᵀ Q, Pdᵀ dO)
  int ld_qd, ld_dod, ld_qi, ld_doi;
};

KvTile load_kv(const Params& p, const void* k, const void* v, int nk, BwdTiles& t) {
  KvTile kv{};
#if IOATTN_CPU_BF16
  if (bf16_products(p)) {
    const uint16_t* k16 = static_cast<const uint16_t*>(k);
    pack_k_pairs(k16, p.k_row_stride, nk, p.head_dim, reinterpret_cast<uint32_t*>(t.k), &kv.ld_kd);
    pack_k_pairs(static_cast<const uint16_t*>(v), p.v_row_stride, nk, p.head_dim_v, reinterpret_cast<uint32_t*>(t.v),
                 &kv.ld_vd);
    pack_v_pairs(k16, p.k_row_stride, nk, p.head_dim, t.kj, &kv.ld_kj);
    kv.kd = reinterpret_cast<const uint32_t*>(t.k);
    kv.vd = reinterpret_cast<const uint32_t*>(t.v);
    kv.kj = t.kj;
    return kv;
  }
#endif
  kv.K = load_rows(p.dtype, k, p.k_row_stride, nk, p.head_dim, t.k);
  kv.V = load_rows(p.dtype, v, p.v_row_stride, nk, p.head_dim_v, t.v);
  return kv;
}

QTile load_qdo(const Params& p, const void* q, const void* dout, int nq, BwdTiles& t) {
  QTile qt{};
#if IOATTN_CPU_BF16
  if (bf16_products(p)) {
    const uint16_t *q16 = static_cast<const uint16_t*>(q), *do16 = static_cast<const uint16_t*>(dout);
    pack_rows_pairs(q16, p.q_row_stride, nq, p.head_dim, reinterpret_cast<uint32_t*>(t.q));
    pack_rows_pairs(do16, p.do_row_stride, nq, p.head_dim_v, reinterpret_cast<uint32_t*>(t.dout));
    pack_v_pairs(q16, p.q_row_stride, nq, p.head_dim, t.qi, &qt.ld_qi);
    pack_v_pairs(do16, p.do_row_stride, nq, p.head_dim_v, t.doi, &qt.ld_doi);
    qt.qd = reinterpret_cast<const uint32_t*>(t.q);
    qt.dod = reinterpret_cast<const uint32_t*>(t.dout);
    qt.ld_qd = (p.head_dim + 1) / 2;
    qt.ld_dod = (p.head_dim_v + 1) / 2;
    qt.qi = t.qi;
    qt.doi = t.doi;
    return qt;
  }
#endif
  qt.Q = load_rows(p.dtype, q, p.q_row_stride, nq, p.head_dim, t.q);
  qt.dO = load_rows(p.dtype, dout, p.do_row_stride, nq, p.head_dim_v, t.dout);
  return qt;
}

// The five products; tiles (nq, nk) have leading dimension kBwdBlockK.
constexpr int kBwdLd = kBwdBlockK;

void prod_s(const Params& p, const QTile& q, const KvTile& kv, int nq, int nk, float* s) {  // S = Q Kᵀ
#if IOATTN_CPU_BF16
  if (bf16_products(p)) return bf16_gemm(nq, nk, (p.head_dim + 1) / 2, q.qd, q.ld_qd, kv.kd, kv.ld_kd, s, kBwdLd, false);
#endif
  gemm(false, true, nq, nk, p.head_dim, q.Q.ptr, q.Q.ld, kv.K.ptr, kv.K.ld, 0.0f, s, kBwdLd);
}

void prod_dp(const Params& p, const QTile& q, const KvTile& kv, int nq, int nk, float* dp) {  // dP = dO Vᵀ
#if IOATTN_CPU_BF16
  if (bf16_products(p))
    return bf16_gemm(nq, nk, (p.head_dim_v + 1) / 2, q.dod, q.ld_dod, kv.vd, kv.ld_vd, dp, kBwdLd, false);
#endif
  gemm(false, true, nq, nk, p.head_dim_v, q.dO.ptr, q.dO.ld, kv.V.ptr, kv.V.ld, 0.0f, dp, kBwdLd);
}

void prod_dv(const Params& p, const float* pd, const QTile& q, int nq, int nk, BwdTiles& t) {  // dV += Pdᵀ dO
#if IOATTN_CPU_BF16
  if (bf16_products(p)) {
    transpose_pairs(pd, kBwdLd, nq, nk, t.tp);
    return bf16_gemm(nk, p.head_dim_v, (nq + 1) / 2, t.tp, (nq + 1) / 2, q.doi, q.ld_doi, t.dv, p.head_dim_v, true);
  }
#endif
  gemm(true, false, nk, p.head_dim_v, nq, pd, kBwdLd, q.dO.ptr, q.dO.ld, 1.0f, t.dv, p.head_dim_v);
}

void prod_dk(const Params& p, const float* ds, const QTile& q, int nq, int nk, BwdTiles& t) {  // dK += dSᵀ Q
#if IOATTN_CPU_BF16
  if (bf16_products(p)) {
    transpose_pairs(ds, kBwdLd, nq, nk, t.tp);
    return bf16_gemm(nk, p.head_dim, (nq + 1) / 2, t.tp, (nq + 1) / 2, q.qi, q.ld_qi, t.dk, p.head_dim, true);
  }
#endif
  gemm(true, false, nk, p.head_dim, nq, ds, kBwdLd, q.Q.ptr, q.Q.ld, 1.0f, t.dk, p.head_dim);
}

// dQ (nq, D, ld D) += dS K. Last use of dS: the bf16 path overwrites it with its pairs.
void prod_dq(const Params& p, float* ds, const KvTile& kv, int nq, int nk, float* dq) {
#if IOATTN_CPU_BF16
  if (bf16_products(p)) {
    for (int r = 0; r < nq; ++r) probs_to_pairs(ds + static_cast<size_t>(r) * kBwdLd, nk);
    return bf16_gemm(nq, p.head_dim, (nk + 1) / 2, reinterpret_cast<const uint32_t*>(ds), kBwdLd, kv.kj, kv.ld_kj, dq,
                     p.head_dim, true);
  }
#endif
  gemm(false, false, nq, p.head_dim, nk, ds, kBwdLd, kv.K.ptr, kv.K.ld, 1.0f, dq, p.head_dim);
}

// One (query block) x (key block) step of the backward: recompute P, accumulate dV (when dv_acc),
// then dP and dS = P∘(dP∘Z·rp - D) into t.dp.
void bwd_tile(const Params& p, const ScoreFn& f, const WindowMask& mask, int b, int h, const Seq& sq, int i0, int nq,
              int j0, int nk, const QTile& q, const KvTile& kv, const float* dsum, BwdTiles& t, bool dv_acc) {
  const float* lse = p.lse + lse_index(p, b, h, sq, i0);
  const float* drow = dsum + lse_index(p, b, h, sq, i0);
  float* G = p.softcap > 0.0f ? t.g : nullptr;
  prod_s(p, q, kv, nq, nk, t.s);
  scores_to_probs(p, f, mask, sq.sk, i0, nq, j0, nk, lse, t.s, G, kBwdLd);
  const float* pd = t.s;
  if (p.dropout_p > 0.0f) {
    for (int r = 0; r < nq; ++r) {
      const size_t o = static_cast<size_t>(r) * kBwdLd;
      std::memcpy(t.pd + o, t.s + o, sizeof(float) * nk);
      apply_dropout(p, b, h, i0 + r, j0, t.pd + o, nk);
    }
    pd = t.pd;
  }
  if (dv_acc) prod_dv(p, pd, q, nq, nk, t);
  prod_dp(p, q, kv, nq, nk, t.dp);
  probs_to_dscores(p, nq, nk, t.s, pd, G, drow, t.dp, kBwdLd);
}

// Queries [*ib, *ie) of a sequence that see at least one key of [j0, j1).
void queries_seeing(const WindowMask& mask, int sq, int j0, int j1, int* ib, int* ie) {
  // Row i sees j iff diag - left <= j <= diag + right, diag = i + shift.
  long lo = 0, hi = sq;
  if (mask.right >= 0) lo = std::max<long>(lo, static_cast<long>(j0) - mask.shift - mask.right);
  if (mask.left >= 0) hi = std::min<long>(hi, static_cast<long>(j1) - 1 - mask.shift + mask.left + 1);
  *ib = static_cast<int>(std::min<long>(lo, sq));
  *ie = static_cast<int>(std::max<long>(hi, *ib));
}

void bwd_kv_block(const Params& p, const float* dsum, int b, int hk, int kb, float* dq_acc, float* ws) {
  const Seq sq = seq_of(p, b);
  const int j0 = kb * kBwdBlockK;
  if (j0 >= sq.sk) return;
  const int nk = std::min(kBwdBlockK, sq.sk - j0);
  const int D = p.head_dim, Dv = p.head_dim_v;
  const WindowMask mask{p.window_left, p.window_right, sq.sk - sq.sq};
  BwdTiles t = bwd_tiles(p, ws);

  const KvTile kv = load_kv(p, at(p, p.k, p.k_batch_stride, p.k_row_stride, p.k_head_stride, b, sq.k0 + j0, hk),
                            at(p, p.v, p.v_batch_stride, p.v_row_stride, p.v_head_stride, b, sq.k0 + j0, hk), nk, t);
  fill(t.dk, nk * D, 0.0f);
  fill(t.dv, nk * Dv, 0.0f);
  int ib, ie;
  queries_seeing(mask, sq.sq, j0, j0 + nk, &ib, &ie);

  for (int g = 0; g < p.group; ++g) {
    const int h = hk * p.group + g;
    const ScoreFn f = score_fn(p, b, h);
    for (int i0 = ib; i0 < ie; i0 += kBwdBlockQ) {
      const int nq = std::min(kBwdBlockQ, ie - i0);
      const QTile q = load_qdo(p, at(p, p.q, p.q_batch_stride, p.q_row_stride, p.q_head_stride, b, sq.q0 + i0, h),
                               at(p, p.dout, p.do_batch_stride, p.do_row_stride, p.do_head_stride, b, sq.q0 + i0, h), nq, t);
      bwd_tile(p, f, mask, b, h, sq, i0, nq, j0, nk, q, kv, dsum, t, true);
      prod_dk(p, t.dp, q, nq, nk, t);
      if (dq_acc)  // into the accumulator this task owns
        prod_dq(p, t.dp, kv, nq, nk, dq_acc + (static_cast<size_t>(g) * sq.sq + i0) * D);
    }
  }
  store_rows(p.dtype, t.dk, D, p.scale, at(p, p.dk, p.dk_batch_stride, p.dk_row_stride, p.dk_head_stride, b, sq.k0 + j0, hk),
             p.dk_row_stride, nk, D);
  store_rows(p.dtype, t.dv, Dv, 1.0f, at(p, p.dv, p.dv_batch_stride, p.dv_row_stride, p.dv_head_stride, b, sq.k0 + j0, hk),
             p.dv_row_stride, nk, Dv);
}

void bwd_dq_block(const Params& p, const float* dsum, int b, int h, int qb, float* ws) {
  const Seq sq = seq_of(p, b);
  const int i0 = qb * kBwdBlockQ;
  if (i0 >= sq.sq) return;
  const int nq = std::min(kBwdBlockQ, sq.sq - i0);
  const int D = p.head_dim, hk = h / p.group;
  const WindowMask mask{p.window_left, p.window_right, sq.sk - sq.sq};
  const ScoreFn f = score_fn(p, b, h);
  BwdTiles t = bwd_tiles(p, ws);

  const QTile q = load_qdo(p, at(p, p.q, p.q_batch_stride, p.q_row_stride, p.q_head_stride, b, sq.q0 + i0, h),
                           at(p, p.dout, p.do_batch_stride, p.do_row_stride, p.do_head_stride, b, sq.q0 + i0, h), nq, t);
  fill(t.dq, nq * D, 0.0f);
  const int kbeg = std::min(mask.first_key(i0), sq.sk), kend = mask.end_key(i0 + nq - 1, sq.sk);
  for (int j0 = kbeg; j0 < kend; j0 += kBwdBlockK) {
    const int nk = std::min(kBwdBlockK, kend - j0);
    const KvTile kv = load_kv(p, at(p, p.k, p.k_batch_stride, p.k_row_stride, p.k_head_stride, b, sq.k0 + j0, hk),
                              at(p, p.v, p.v_batch_stride, p.v_row_stride, p.v_head_stride, b, sq.k0 + j0, hk), nk, t);
    bwd_tile(p, f, mask, b, h, sq, i0, nq, j0, nk, q, kv, dsum, t, false);
    prod_dq(p, t.dp, kv, nq, nk, t.dq);
  }
  store_rows(p.dtype, t.dq, D, p.scale, at(p, p.dq, p.dq_batch_stride, p.dq_row_stride, p.dq_head_stride, b, sq.q0 + i0, h),
             p.dq_row_stride, nq, D);
}

void store_dq(const Params& p, int b, int h, const float* dq_acc) {
  const Seq sq = seq_of(p, b);
  store_rows(p.dtype, dq_acc, p.head_dim, p.scale,
             at(p, p.dq, p.dq_batch_stride, p.dq_row_stride, p.dq_head_stride, b, sq.q0, h), p.dq_row_stride, sq.sq,
             p.head_dim);
}

}  // namespace

const Kernels& kernels() {
  static const Kernels k{IOATTN_CPU_ISA_NAME, fwd_block, bwd_rowdot, bwd_kv_block, bwd_dq_block, store_dq};
  return k;
}

}  // namespace IOATTN_CPU_ISA
}  // namespace cpu
}  // namespace ioattn

#pragma GCC diagnostic pop
