// Causal attention on the CPU through the installed ioattn package: forward, then backward, on
// plain std::vector buffers described by TensorViews (BSHD layout, strides in elements).
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include <ioattn/ioattn.h>

int main() {
  const int64_t B = 2, S = 128, H = 4, D = 64;
  std::mt19937 rng(0);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  auto randn = [&](int64_t n) {
    std::vector<float> x(n);
    for (float& e : x) e = normal(rng);
    return x;
  };
  const int64_t n = B * S * H * D;
  std::vector<float> q = randn(n), k = randn(n), v = randn(n), dout = randn(n);
  std::vector<float> out(n), lse(B * H * S), dq(n), dk(n), dv(n);

  using ioattn::DType;
  using ioattn::TensorView;
  auto bshd = [&](std::vector<float>& x) { return TensorView::contiguous(x.data(), DType::F32, {B, S, H, D}); };
  const TensorView lse_view = TensorView::contiguous(lse.data(), DType::F32, {B, H, S});

  ioattn::Args args;
  args.causal = true;  // softmax_scale left at 0: 1/sqrt(D)
  ioattn::Status st = ioattn::forward(bshd(q), bshd(k), bshd(v), bshd(out), lse_view, args);
  if (!st.ok()) {
    std::fprintf(stderr, "forward failed: %s: %s\n", ioattn::error_code_name(st.code), st.message.c_str());
    return 1;
  }
  st = ioattn::backward(bshd(q), bshd(k), bshd(v), bshd(out), bshd(dout), lse_view, bshd(dq), bshd(dk), bshd(dv),
                        args);
  if (!st.ok()) {
    std::fprintf(stderr, "backward failed: %s: %s\n", ioattn::error_code_name(st.code), st.message.c_str());
    return 1;
  }

  // Causal row 0 sees only key 0, so its output is exactly V's row 0 (up to rounding).
  double row0 = 0, sum_sq = 0;
  for (int64_t d = 0; d < D; ++d) row0 = std::fmax(row0, std::fabs(out[d] - v[d]));
  for (float g : dq) sum_sq += static_cast<double>(g) * g;
  const ioattn::BuildInfo info = ioattn::build_info();
  std::printf("ioattn %s (cpu: %s)\n", info.version.c_str(), info.cpu_features.c_str());
  std::printf("forward+backward B=%lld S=%lld H=%lld D=%lld causal: |O[0] - V[0]| = %.2e, |dQ| = %.4f, lse[1] = %.4f\n",
              static_cast<long long>(B), static_cast<long long>(S), static_cast<long long>(H),
              static_cast<long long>(D), row0, std::sqrt(sum_sq), lse[1]);
  return row0 < 1e-5 && std::isfinite(sum_sq) ? 0 : 1;
}
