#include "kvcache_reference.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "core/half.h"
#include "reference.h"

namespace ioattn::ref {
namespace {

int64_t offset4(const TensorView& t, int64_t a, int64_t b, int64_t c, int64_t d) {
  return a * t.stride[0] + b * t.stride[1] + c * t.stride[2] + d * t.stride[3];
}
double get(const TensorView& t, int64_t off) {
  switch (t.dtype) {
    case DType::F32: return static_cast<const float*>(t.data)[off];
    case DType::F16: return fp16_to_float(static_cast<const uint16_t*>(t.data)[off]);
    case DType::BF16: return bf16_to_float(static_cast<const uint16_t*>(t.data)[off]);
    case DType::I32: return static_cast<const int32_t*>(t.data)[off];
  }
  return 0;
}
int index_at(const TensorView& t, int64_t i) { return static_cast<const int32_t*>(t.data)[i * t.stride[0]]; }
double round_to(DType dt, double x) {
  switch (dt) {
    case DType::F16: return fp16_to_float(float_to_fp16(static_cast<float>(x)));
    case DType::BF16: return bf16_to_float(float_to_bf16(static_cast<float>(x)));
    case DType::F32: return static_cast<float>(x);
    default: return x;
  }
}

// A dense host tensor of the input dtype built from doubles that are dtype values (exact).
struct Dense {
  std::vector<uint8_t> bytes;
  TensorView view;
  Dense(DType dt, std::initializer_list<int64_t> shape) {
    int64_t n = 1;
    for (int64_t s : shape) n *= s;
    bytes.assign(static_cast<size_t>(std::max<int64_t>(n, 1)) * dtype_size(dt), 0);
    view = TensorView::contiguous(bytes.data(), dt, shape);
  }
  void set(int64_t i, double x) {
    switch (view.dtype) {
      case DType::F32: reinterpret_cast<float*>(bytes.data())[i] = static_cast<float>(x); break;
      case DType::F16: reinterpret_cast<uint16_t*>(bytes.data())[i] = float_to_fp16(static_cast<float>(x)); break;
      case DType::BF16: reinterpret_cast<uint16_t*>(bytes.data())[i] = float_to_bf16(static_cast<float>(x)); break;
      default: break;
    }
  }
};

// Row `x` (D values) rotated at table row `pos`: angle column i of cos/sin rotates the pair
// (2i, 2i+1) (interleaved) or (i, i + R/2) (halves); the rest passes through.
std::vector<double> rotary(const KVCacheArgs& a, DType dt, const std::vector<double>& x, int64_t pos) {
  std::vector<double> y = x;
  if (!a.rotary_cos.defined()) return y;
  const int64_t half = a.rotary_cos.shape[1];
  if (pos >= a.rotary_cos.shape[0]) pos = a.rotary_cos.shape[0] - 1;
  for (int64_t i = 0; i < half; ++i) {
    const double c = get(a.rotary_cos, pos * a.rotary_cos.stride[0] + i);
    const double s = get(a.rotary_sin, pos * a.rotary_sin.stride[0] + i);
    const int64_t e0 = a.rotary_interleaved ? 2 * i : i;
    const int64_t e1 = a.rotary_interleaved ? 2 * i + 1 : i + half;
    y[e0] = round_to(dt, x[e0] * c - x[e1] * s);
    y[e1] = round_to(dt, x[e1] * c + x[e0] * s);
  }
  return y;
}

}  // namespace

Status forward_kvcache(const TensorView& q, const TensorView& k_cache, const TensorView& v_cache,
                       const KVCacheArgs& a, KVCacheResult* r, bool standard) {
  const DType dt = q.dtype;
  const int64_t B = q.shape[0], Sq = q.shape[1], Hq = q.shape[2], D = q.shape[3];
  const int64_t Hk = k_cache.shape[2], Dv = v_cache.shape[3];
  const bool paged = a.block_table.defined();
  const int64_t page = paged ? k_cache.shape[1] : 0;
  const int64_t Snew = a.k_new.defined() ? a.k_new.shape[1] : 0;
  const bool local = a.causal || a.window_left >= 0 || a.window_right >= 0;

  // The cache as doubles, logical order (dim0, dim1, Hk, D).
  const int64_t n0 = k_cache.shape[0], n1 = k_cache.shape[1];
  r->k_cache.assign(n0 * n1 * Hk * D, 0.0);
  r->v_cache.assign(n0 * n1 * Hk * Dv, 0.0);
  for (int64_t x = 0; x < n0; ++x)
    for (int64_t y = 0; y < n1; ++y)
      for (int64_t h = 0; h < Hk; ++h) {
        for (int64_t d = 0; d < D; ++d) r->k_cache[((x * n1 + y) * Hk + h) * D + d] = get(k_cache, offset4(k_cache, x, y, h, d));
        for (int64_t d = 0; d < Dv; ++d) r->v_cache[((x * n1 + y) * Hk + h) * Dv + d] = get(v_cache, offset4(v_cache, x, y, h, d));
      }
  // (dim0, dim1) of cache position pos of sequence b.
  auto where = [&](int64_t b, int64_t pos, int64_t* x, int64_t* y) {
    if (paged) {
      *x = static_cast<const int32_t*>(a.block_table.data)[b * a.block_table.stride[0] + (pos / page) * a.block_table.stride[1]];
      *y = pos % page;
    } else {
      *x = a.cache_batch_idx.defined() ? index_at(a.cache_batch_idx, b) : b;
      *y = pos;
    }
  };

  r->out.assign(B * Sq * Hq * Dv, 0.0);
  r->lse.assign(B * Hq * Sq, 0.0);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t len = a.cache_seqlens.defined() ? index_at(a.cache_seqlens, b) : a.cache_seqlen;
    const int64_t pad = a.cache_leftpad.defined() ? index_at(a.cache_leftpad, b) : 0;
    // Append, rotating the new keys at their cache positions.
    for (int64_t j = 0; j < Snew; ++j) {
      int64_t x, y;
      where(b, len + j, &x, &y);
      for (int64_t h = 0; h < Hk; ++h) {
        std::vector<double> kr(D);
        for (int64_t d = 0; d < D; ++d) kr[d] = get(a.k_new, offset4(a.k_new, b, j, h, d));
        kr = rotary(a, dt, kr, len + j);
        for (int64_t d = 0; d < D; ++d) r->k_cache[((x * n1 + y) * Hk + h) * D + d] = kr[d];
        for (int64_t d = 0; d < Dv; ++d)
          r->v_cache[((x * n1 + y) * Hk + h) * Dv + d] = get(a.v_new, offset4(a.v_new, b, j, h, d));
      }
    }
    // Gather the visible keys [pad, len + Snew) and the (rotated) queries of sequence b.
    const int64_t sk = len + Snew - pad;
    Dense qb(dt, {1, Sq, Hq, D}), kb(dt, {1, sk, Hk, D}), vb(dt, {1, sk, Hk, Dv});
    for (int64_t i = 0; i < Sq; ++i)
      for (int64_t h = 0; h < Hq; ++h) {
        std::vector<double> qr(D);
        for (int64_t d = 0; d < D; ++d) qr[d] = get(q, offset4(q, b, i, h, d));
        qr = rotary(a, dt, qr, len + (local ? i : 0));
        for (int64_t d = 0; d < D; ++d) qb.set((i * Hq + h) * D + d, qr[d]);
      }
    for (int64_t j = 0; j < sk; ++j) {
      int64_t x, y;
      where(b, pad + j, &x, &y);
      for (int64_t h = 0; h < Hk; ++h) {
        for (int64_t d = 0; d < D; ++d) kb.set((j * Hk + h) * D + d, r->k_cache[((x * n1 + y) * Hk + h) * D + d]);
        for (int64_t d = 0; d < Dv; ++d) vb.set((j * Hk + h) * Dv + d, r->v_cache[((x * n1 + y) * Hk + h) * Dv + d]);
      }
    }
    Args args;
    args.softmax_scale = a.softmax_scale;
    args.causal = a.causal;
    args.window_left = a.window_left;
    args.window_right = a.window_right;
    args.softcap = a.softcap;
    if (a.alibi_slopes.defined()) {
      args.alibi_slopes = a.alibi_slopes;
      if (a.alibi_slopes.ndim == 2) {  // this sequence's row of (B, Hq)
        args.alibi_slopes.data = static_cast<float*>(a.alibi_slopes.data) + b * a.alibi_slopes.stride[0];
        args.alibi_slopes.ndim = 1;
        args.alibi_slopes.shape[0] = Hq;
        args.alibi_slopes.stride[0] = a.alibi_slopes.stride[1];
      }
    }
    Result res;
    Status s = standard ? standard_forward(qb.view, kb.view, vb.view, args, &res)
                        : forward(qb.view, kb.view, vb.view, args, &res);
    if (!s.ok()) return s;
    std::copy(res.out.begin(), res.out.end(), r->out.begin() + b * Sq * Hq * Dv);
    std::copy(res.lse.begin(), res.lse.end(), r->lse.begin() + b * Hq * Sq);
  }
  return Status::Ok();
}

}  // namespace ioattn::ref
