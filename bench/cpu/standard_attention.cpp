#include "standard_attention.h"

#include <cblas.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>

namespace bench {
namespace {

// exp(x) for x <= 0 (scores minus their row maximum), about 1 ulp, in plain arithmetic that the
// compiler vectorises (std::exp is a scalar libm call, which would make the baseline a strawman):
// 2^t with t = x·log2(e) split into an integer n and f in [-1/2, 1/2]; 2^f by its Taylor series of
// degree 6 (error below 2e-7); 2^n written straight into the exponent bits.
#pragma omp declare simd
inline float exp_nonpositive(float x) {
  constexpr float kLog2e = 1.44269504088896341f, kLn2 = 0.693147180559945309f;
  constexpr float kRound = 12582912.0f;  // 1.5·2^23: adding it rounds to an integer in the low bits
  const float t = std::fmax(x * kLog2e, -126.0f);  // 2^-126 is the smallest normal; -inf lands here
  const float n = (t + kRound) - kRound;
  const float u = (t - n) * kLn2;
  const float poly =
      1.0f + u * (1.0f + u * (0.5f + u * (1.0f / 6 + u * (1.0f / 24 + u * (1.0f / 120 + u * (1.0f / 720))))));
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, 4);
  return poly * scale;
}

// Row-wise softmax of the N×N scores in place; causal rows see keys 0..i and zero the rest.
void softmax_rows(float* s, int n, bool causal) {
#pragma omp parallel for schedule(static, 64)  // interleaved chunks: causal rows grow with i
  for (int i = 0; i < n; ++i) {
    float* row = s + int64_t{i} * n;
    const int len = causal ? i + 1 : n;
    float m = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : m)
    for (int j = 0; j < len; ++j) m = std::fmax(m, row[j]);
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int j = 0; j < len; ++j) {
      row[j] = exp_nonpositive(row[j] - m);
      sum += row[j];
    }
    const float inv = 1.0f / sum;
#pragma omp simd
    for (int j = 0; j < len; ++j) row[j] *= inv;
    for (int j = len; j < n; ++j) row[j] = 0.0f;
  }
}

// One head's forward: P (n×n, in `pbuf`) and O. Strides: rows of q/k/v/out are heads·d apart.
void head_forward(const StandardProblem& p, int h, float* pbuf) {
  const int n = p.seqlen, d = p.head_dim, ld = p.heads * p.head_dim;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  const float *q = p.q + h * d, *k = p.k + h * d, *v = p.v + h * d;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, d, scale, q, ld, k, ld, 0.0f, pbuf, n);  // S = s·Q Kᵀ
  softmax_rows(pbuf, n, p.causal);                                                                    // P
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, d, n, 1.0f, pbuf, n, v, ld, 0.0f, p.out + h * d, ld);
}

// One head's backward from the stored P: dV = Pᵀ dO, dP = dO Vᵀ, dS = P ∘ (dP − D), dQ = s·dS K,
// dK = s·dSᵀ Q, with D_i = Σ_d dO_id O_id.
void head_backward(const StandardProblem& p, int h, const float* pbuf, float* dpbuf, float* dvec) {
  const int n = p.seqlen, d = p.head_dim, ld = p.heads * p.head_dim;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  const float *q = p.q + h * d, *k = p.k + h * d, *v = p.v + h * d, *o = p.out + h * d, *dout = p.dout + h * d;
#pragma omp parallel for schedule(static)
  for (int i = 0; i < n; ++i) {
    float acc = 0.0f;
    for (int c = 0; c < d; ++c) acc += dout[int64_t{i} * ld + c] * o[int64_t{i} * ld + c];
    dvec[i] = acc;
  }
  cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n, d, n, 1.0f, pbuf, n, dout, ld, 0.0f, p.dv + h * d, ld);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, d, 1.0f, dout, ld, v, ld, 0.0f, dpbuf, n);
#pragma omp parallel for schedule(static)
  for (int i = 0; i < n; ++i) {
    const float* prow = pbuf + int64_t{i} * n;
    float* row = dpbuf + int64_t{i} * n;
#pragma omp simd
    for (int j = 0; j < n; ++j) row[j] = prow[j] * (row[j] - dvec[i]);
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, d, n, scale, dpbuf, n, k, ld, 0.0f, p.dq + h * d, ld);
  cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n, d, n, scale, dpbuf, n, q, ld, 0.0f, p.dk + h * d, ld);
}

}  // namespace

void StandardAttention::reserve(const StandardProblem& p, bool backward) {
  const size_t nn = size_t(p.seqlen) * p.seqlen;
  if (p_.size() < nn) p_.resize(nn);
  if (backward && dp_.size() < nn) dp_.resize(nn);
  if (backward && d_.size() < size_t(p.seqlen)) d_.resize(p.seqlen);
}

void StandardAttention::forward(const StandardProblem& p) {
  reserve(p, false);
  for (int h = 0; h < p.heads; ++h) head_forward(p, h, p_.data());
}

double StandardAttention::forward_backward(const StandardProblem& p) {
  reserve(p, true);
  std::chrono::duration<double> backward{0};
  for (int h = 0; h < p.heads; ++h) {
    head_forward(p, h, p_.data());
    const auto t0 = std::chrono::steady_clock::now();
    head_backward(p, h, p_.data(), dp_.data(), d_.data());
    backward += std::chrono::steady_clock::now() - t0;
  }
  return backward.count();
}

}  // namespace bench
