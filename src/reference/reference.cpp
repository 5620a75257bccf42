// The float64 reference and the "standard attention" error baseline (DESIGN.md §1).
//
// Both are the same row-by-row algorithm, written once and instantiated with a numeric policy:
//   Exact     accumulates in double and never rounds: the oracle.
//   Standard  accumulates in fp32 and rounds every intermediate a framework materialises (S, P,
//             O, dP, dS, dQ, dK, dV) to the input dtype, as PyTorch's SDPA MATH backend does with
//             fp16/bf16 tensors; for fp32 inputs it is plain fp32 attention. Its backward takes
//             D = dO·O from its own rounded O, the formula of DESIGN.md §1 that every flash
//             backward uses (PyTorch's softmax backward sums P∘dP instead, which is exactly 0 when
//             a row sees one key, whereas any implementation of D = dO·O carries O's rounding
//             into dS there: the baseline must carry it too or the rule would demand the impossible).
// The library must stay within twice Standard's error against Exact (plus a small slack).
//
// Deliberately independent of the fast paths: the mask, ALiBi and softcap rules are spelled out
// here from DESIGN.md rather than taken from src/core/mask.h, so a mask bug cannot pass its own
// test. Dropout is the one shared piece: src/core/philox.h *defines* which elements are dropped.
//
// Memory: one query row of scores at a time (O(Sk)), plus the dK/dV accumulators of one kv head,
// so long sequences fit. Cost: O(B·Hq·Sq·Sk·d) like the problem itself.
#include "reference.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "core/half.h"
#include "core/philox.h"

namespace ioattn::ref {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

Status fail(ErrorCode c, const std::string& msg) { return Status{c, "reference: " + msg}; }

double load(const TensorView& t, int64_t off) {
  switch (t.dtype) {
    case DType::F32: return static_cast<const float*>(t.data)[off];
    case DType::F16: return fp16_to_float(static_cast<const uint16_t*>(t.data)[off]);
    case DType::BF16: return bf16_to_float(static_cast<const uint16_t*>(t.data)[off]);
    case DType::I32: return static_cast<const int32_t*>(t.data)[off];
  }
  return kNaN;
}

// ---- Numeric policies ---------------------------------------------------------------------------

struct Exact {
  using Acc = double;
  Acc round(Acc x) const { return x; }
};

struct Standard {
  using Acc = float;
  DType dt;
  Acc round(Acc x) const {
    switch (dt) {
      case DType::F16: return fp16_to_float(float_to_fp16(x));
      case DType::BF16: return bf16_to_float(float_to_bf16(x));
      default: return x;
    }
  }
};

// ---- The problem, resolved from the views -------------------------------------------------------

struct Problem {
  bool varlen = false;
  int batch = 0, hq = 0, hk = 0, d = 0, dv = 0, group = 1;
  int64_t rows_q = 0, rows_k = 0;  // dense: Sq, Sk; varlen: Tq, Tk
  std::vector<int64_t> q0, k0, sq, sk;  // per sequence: first row (varlen) and lengths
  double scale = 0;                     // the fp32 value the library uses, widened
  double softcap = 0;
  bool dropout = false;
  uint32_t threshold = 0;

  // Row of the contiguous result arrays.
  int64_t qrow(int b, int64_t i) const { return varlen ? q0[b] + i : b * rows_q + i; }
  int64_t krow(int b, int64_t j) const { return varlen ? k0[b] + j : b * rows_k + j; }
  int64_t lse_index(int b, int h, int64_t i) const {
    return varlen ? h * rows_q + q0[b] + i : (static_cast<int64_t>(b) * hq + h) * rows_q + i;
  }
};

// Element offset of (sequence b, position i, head h) in a BSHD view, or a packed THD view whose
// sequence b starts at row `first[b]`.
int64_t offset_of(const Problem& pr, const std::vector<int64_t>& first, const TensorView& t, int b, int64_t i,
                  int h) {
  return pr.varlen ? (first[b] + i) * t.stride[0] + h * t.stride[1]
                   : b * t.stride[0] + i * t.stride[1] + h * t.stride[2];
}
int64_t qat(const Problem& pr, const TensorView& t, int b, int64_t i, int h) { return offset_of(pr, pr.q0, t, b, i, h); }
int64_t kat(const Problem& pr, const TensorView& t, int b, int64_t j, int h) { return offset_of(pr, pr.k0, t, b, j, h); }

Status check_view(const char* name, const TensorView& t, int nd) {
  if (!t.defined()) return fail(ErrorCode::InvalidShape, std::string(name) + ": missing");
  if (t.device != DeviceType::CPU) return fail(ErrorCode::DeviceMismatch, std::string(name) + ": not a host tensor");
  if (t.ndim != nd) return fail(ErrorCode::InvalidShape, std::string(name) + ": wrong rank");
  if (t.dtype != DType::F32 && t.dtype != DType::F16 && t.dtype != DType::BF16)
    return fail(ErrorCode::InvalidDType, std::string(name) + ": expected fp32, fp16 or bf16");
  for (int i = 0; i < nd; ++i)
    if (t.shape[i] < 0 || t.stride[i] < 0) return fail(ErrorCode::InvalidShape, std::string(name) + ": negative size");
  return Status::Ok();
}

Status read_prefix(const char* name, const TensorView& cu, int64_t total, std::vector<int64_t>* start,
                   std::vector<int64_t>* len) {
  if (!cu.defined() || cu.ndim != 1 || cu.dtype != DType::I32 || cu.shape[0] < 1 || cu.device != DeviceType::CPU)
    return fail(ErrorCode::InvalidShape, std::string(name) + ": expected host int32 (batch + 1)");
  const int64_t n = cu.shape[0] - 1;
  start->resize(n);
  len->resize(n);
  const auto* c = static_cast<const int32_t*>(cu.data);
  if (c[0] != 0) return fail(ErrorCode::InvalidIndex, std::string(name) + ": must start at 0");
  for (int64_t b = 0; b < n; ++b) {
    const int64_t lo = c[b * cu.stride[0]], hi = c[(b + 1) * cu.stride[0]];
    if (hi < lo || hi > total) return fail(ErrorCode::InvalidIndex, std::string(name) + ": not monotone / in bounds");
    (*start)[b] = lo;
    (*len)[b] = hi - lo;
  }
  return Status::Ok();
}

Status resolve(const TensorView& q, const TensorView& k, const TensorView& v, const Args& a, Problem* pr) {
  pr->varlen = a.cu_seqlens_q.defined() || a.cu_seqlens_k.defined();
  const int nd = pr->varlen ? 3 : 4;
  for (auto [n, t] : {std::pair<const char*, const TensorView*>{"q", &q}, {"k", &k}, {"v", &v}}) {
    Status s = check_view(n, *t, nd);
    if (!s.ok()) return s;
    if (t->shape[nd - 1] > 1 && t->stride[nd - 1] != 1)
      return fail(ErrorCode::InvalidStride, std::string(n) + ": last dimension must be contiguous");
  }
  pr->hq = static_cast<int>(q.shape[nd - 2]);
  pr->hk = static_cast<int>(k.shape[nd - 2]);
  pr->d = static_cast<int>(q.shape[nd - 1]);
  pr->dv = static_cast<int>(v.shape[nd - 1]);
  if (pr->hq <= 0 || pr->hk <= 0 || pr->hq % pr->hk != 0 || v.shape[nd - 2] != pr->hk)
    return fail(ErrorCode::InvalidShape, "heads: q heads must be a multiple of k/v heads");
  if (pr->d <= 0 || pr->dv <= 0 || k.shape[nd - 1] != pr->d)
    return fail(ErrorCode::InvalidShape, "head_dim: q and k must agree and be positive");
  pr->group = pr->hq / pr->hk;
  if (pr->varlen) {
    pr->rows_q = q.shape[0];
    pr->rows_k = k.shape[0];
    if (v.shape[0] != pr->rows_k) return fail(ErrorCode::InvalidShape, "v: total_k differs from k");
    Status s = read_prefix("cu_seqlens_q", a.cu_seqlens_q, pr->rows_q, &pr->q0, &pr->sq);
    if (!s.ok()) return s;
    s = read_prefix("cu_seqlens_k", a.cu_seqlens_k, pr->rows_k, &pr->k0, &pr->sk);
    if (!s.ok()) return s;
    if (pr->q0.size() != pr->k0.size()) return fail(ErrorCode::InvalidShape, "cu_seqlens: lengths differ");
    pr->batch = static_cast<int>(pr->q0.size());
  } else {
    pr->batch = static_cast<int>(q.shape[0]);
    pr->rows_q = q.shape[1];
    pr->rows_k = k.shape[1];
    if (k.shape[0] != q.shape[0] || v.shape[0] != q.shape[0] || v.shape[1] != k.shape[1])
      return fail(ErrorCode::InvalidShape, "batch / seqlen_k disagree between q, k, v");
    pr->q0.assign(pr->batch, 0);
    pr->k0.assign(pr->batch, 0);
    pr->sq.assign(pr->batch, pr->rows_q);
    pr->sk.assign(pr->batch, pr->rows_k);
  }
  if (a.alibi_slopes.defined()) {
    const TensorView& s = a.alibi_slopes;
    const bool ok = s.dtype == DType::F32 && (s.ndim == 1 || s.ndim == 2) && s.shape[s.ndim - 1] == pr->hq &&
                    (s.ndim == 1 || s.shape[0] == pr->batch);
    if (!ok) return fail(ErrorCode::InvalidShape, "alibi_slopes: expected fp32 (heads_q) or (batch, heads_q)");
  }
  if (!(a.dropout_p >= 0.0f && a.dropout_p < 1.0f)) return fail(ErrorCode::InvalidValue, "dropout_p out of [0, 1)");
  if (a.causal && a.window_right > 0) return fail(ErrorCode::InvalidValue, "causal with window_right > 0");
  // The scale is an fp32 argument; the function being approximated uses that fp32 value (the
  // library's default is 1/sqrt(d) rounded to fp32), so the comparison measures the kernels and
  // not the rounding of an argument.
  const float scale = a.softmax_scale > 0.0f ? a.softmax_scale : 1.0f / std::sqrt(static_cast<float>(pr->d));
  pr->scale = scale;
  pr->softcap = a.softcap > 0.0f ? a.softcap : 0.0;
  pr->dropout = a.dropout_p > 0.0f;
  pr->threshold = dropout_threshold(a.dropout_p);
  return Status::Ok();
}

double slope(const Args& a, int b, int h) {
  const TensorView& s = a.alibi_slopes;
  const auto* f = static_cast<const float*>(s.data);
  return s.ndim == 1 ? f[h * s.stride[0]] : f[b * s.stride[0] + h * s.stride[1]];
}

// The mask, bottom-right aligned (DESIGN.md §1): with diag = i + Sk - Sq, key j is visible iff
// diag - left <= j <= diag + right, an unbounded side being -1; causal means right = 0.
bool visible(const Args& a, int64_t i, int64_t j, int64_t sq, int64_t sk) {
  const int64_t diag = i + sk - sq;
  const int64_t right = a.causal ? 0 : a.window_right;
  if (a.window_left >= 0 && j < diag - a.window_left) return false;
  if (right >= 0 && j > diag + right) return false;
  return true;
}

// One query row: scores, softmax, dropout. Entries for invisible keys are p = pd = 0.
template <class Acc>
struct Row {
  std::vector<Acc> q;        // the query row, widened
  std::vector<Acc> s;        // final scores
  std::vector<Acc> t;        // tanh(raw / softcap), for softcap's derivative
  std::vector<Acc> p, pd;    // softmax, and softmax after dropout (P ∘ Z / (1 - p))
  std::vector<char> vis, keep;  // visible under the mask; kept by dropout
  Acc lse = 0;
  bool empty = true;
};

template <class Pol>
void compute_row(const Pol& pol, const Problem& pr, const Args& a, const TensorView& q, const TensorView& k, int b,
                 int h, int64_t i, Row<typename Pol::Acc>* r) {
  using Acc = typename Pol::Acc;
  const int64_t sq = pr.sq[b], sk = pr.sk[b];
  const int kh = h / pr.group;
  r->q.resize(pr.d);
  r->s.assign(sk, Acc(0));
  r->t.assign(sk, Acc(0));
  r->p.assign(sk, Acc(0));
  r->pd.assign(sk, Acc(0));
  r->vis.assign(sk, 0);
  r->keep.assign(sk, 1);
  const int64_t qo = qat(pr, q, b, i, h);
  for (int d = 0; d < pr.d; ++d) r->q[d] = static_cast<Acc>(load(q, qo + d));
  const Acc scale = static_cast<Acc>(pr.scale), cap = static_cast<Acc>(pr.softcap);
  const Acc sl = a.alibi_slopes.defined() ? static_cast<Acc>(slope(a, b, h)) : Acc(0);
  Acc m = -std::numeric_limits<Acc>::infinity();
  r->empty = true;
  for (int64_t j = 0; j < sk; ++j) {
    if (!visible(a, i, j, sq, sk)) continue;
    r->vis[j] = 1;
    r->empty = false;
    const int64_t ko = kat(pr, k, b, j, kh);
    Acc acc = 0;
    for (int d = 0; d < pr.d; ++d) acc += r->q[d] * static_cast<Acc>(load(k, ko + d));
    Acc s = pol.round(scale * acc);
    if (pr.softcap > 0) {
      r->t[j] = pol.round(std::tanh(pol.round(s / cap)));
      s = pol.round(cap * r->t[j]);
    }
    if (a.alibi_slopes.defined()) {
      const int64_t dist = i + sk - sq - j;
      s = pol.round(s - sl * static_cast<Acc>(dist < 0 ? -dist : dist));
    }
    r->s[j] = s;
    if (s > m) m = s;
  }
  if (r->empty) {
    r->lse = -std::numeric_limits<Acc>::infinity();
    return;
  }
  Acc sum = 0;
  for (int64_t j = 0; j < sk; ++j)
    if (r->vis[j]) sum += std::exp(r->s[j] - m);
  r->lse = m + std::log(sum);
  const Acc rp = Acc(1) / (Acc(1) - static_cast<Acc>(a.dropout_p));
  for (int64_t j = 0; j < sk; ++j) {
    if (!r->vis[j]) continue;
    r->p[j] = pol.round(std::exp(r->s[j] - m) / sum);
    if (pr.dropout) {
      r->keep[j] = dropout_keep(a.seed, a.offset, pr.threshold, b, h, pr.hq, static_cast<int>(i),
                                static_cast<int>(j));
      r->pd[j] = r->keep[j] ? pol.round(r->p[j] * rp) : Acc(0);
    } else {
      r->pd[j] = r->p[j];
    }
  }
}

template <class Pol>
Status forward_impl(const Pol& pol, const TensorView& q, const TensorView& k, const TensorView& v, const Args& a,
                    Result* r, int row_stride) {
  using Acc = typename Pol::Acc;
  Problem pr;
  Status st = resolve(q, k, v, a, &pr);
  if (!st.ok()) return st;
  if (row_stride < 1) return fail(ErrorCode::InvalidValue, "row_stride must be >= 1");
  const int64_t nrows = pr.varlen ? pr.rows_q : pr.batch * pr.rows_q;
  r->out.assign(nrows * pr.hq * pr.dv, kNaN);
  r->lse.assign(nrows * pr.hq, kNaN);
  Row<Acc> row;
  std::vector<Acc> o(pr.dv);
  for (int b = 0; b < pr.batch; ++b)
    for (int h = 0; h < pr.hq; ++h)
      for (int64_t i = 0; i < pr.sq[b]; i += row_stride) {
        compute_row(pol, pr, a, q, k, b, h, i, &row);
        std::fill(o.begin(), o.end(), Acc(0));
        if (!row.empty)
          for (int64_t j = 0; j < pr.sk[b]; ++j) {
            if (row.pd[j] == Acc(0)) continue;
            const int64_t vo = kat(pr, v, b, j, h / pr.group);
            for (int d = 0; d < pr.dv; ++d) o[d] += row.pd[j] * static_cast<Acc>(load(v, vo + d));
          }
        double* dst = &r->out[(pr.qrow(b, i) * pr.hq + h) * pr.dv];
        for (int d = 0; d < pr.dv; ++d) dst[d] = pol.round(o[d]);
        r->lse[pr.lse_index(b, h, i)] = row.lse;
      }
  return Status::Ok();
}

// Backward: per query row, dP = dO Vᵀ (through the dropout mask), D = dO·O (= Σ_j P_j dP_j),
// dS = P ∘ (dP − D), through softcap's derivative 1 − tanh², dQ = scale·dS K; dK and dV gather
// over the rows of one query head, then over the heads of the kv group (GQA), as a framework's
// expand-then-reduce does.
template <class Pol>
Status backward_impl(const Pol& pol, const TensorView& q, const TensorView& k, const TensorView& v,
                     const TensorView& dout, const Args& a, Result* r) {
  using Acc = typename Pol::Acc;
  Problem pr;
  Status st = resolve(q, k, v, a, &pr);
  if (!st.ok()) return st;
  st = check_view("dout", dout, pr.varlen ? 3 : 4);
  if (!st.ok()) return st;
  const int nd = pr.varlen ? 3 : 4;
  if (dout.shape[nd - 2] != pr.hq || dout.shape[nd - 1] != pr.dv || dout.shape[0] != q.shape[0] ||
      (!pr.varlen && dout.shape[1] != q.shape[1]))
    return fail(ErrorCode::InvalidShape, "dout: expected the shape of out");
  const int64_t nq = pr.varlen ? pr.rows_q : pr.batch * pr.rows_q;
  const int64_t nk = pr.varlen ? pr.rows_k : pr.batch * pr.rows_k;
  r->dq.assign(nq * pr.hq * pr.d, kNaN);
  r->dk.assign(nk * pr.hk * pr.d, kNaN);
  r->dv.assign(nk * pr.hk * pr.dv, kNaN);
  const Acc scale = static_cast<Acc>(pr.scale);
  const Acc rp = Acc(1) / (Acc(1) - static_cast<Acc>(a.dropout_p));
  Row<Acc> row;
  std::vector<Acc> dov(pr.dv), o(pr.dv), g, dq(pr.d);
  for (int b = 0; b < pr.batch; ++b) {
    const int64_t sk = pr.sk[b];
    std::vector<Acc> dk_h(sk * pr.d), dv_h(sk * pr.dv), dk_g(sk * pr.d), dv_g(sk * pr.dv);
    for (int kh = 0; kh < pr.hk; ++kh) {
      std::fill(dk_g.begin(), dk_g.end(), Acc(0));
      std::fill(dv_g.begin(), dv_g.end(), Acc(0));
      for (int h = kh * pr.group; h < (kh + 1) * pr.group; ++h) {
        std::fill(dk_h.begin(), dk_h.end(), Acc(0));
        std::fill(dv_h.begin(), dv_h.end(), Acc(0));
        for (int64_t i = 0; i < pr.sq[b]; ++i) {
          compute_row(pol, pr, a, q, k, b, h, i, &row);
          double* dqdst = &r->dq[(pr.qrow(b, i) * pr.hq + h) * pr.d];
          if (row.empty) {  // a row that sees no key contributes no gradient
            for (int d = 0; d < pr.d; ++d) dqdst[d] = 0.0;
            continue;
          }
          const int64_t doo = qat(pr, dout, b, i, h);
          for (int d = 0; d < pr.dv; ++d) dov[d] = static_cast<Acc>(load(dout, doo + d));
          g.assign(sk, Acc(0));
          std::fill(o.begin(), o.end(), Acc(0));
          for (int64_t j = 0; j < sk; ++j) {
            if (!row.vis[j]) continue;
            const int64_t vo = kat(pr, v, b, j, kh);
            Acc acc = 0;
            for (int d = 0; d < pr.dv; ++d) {
              const Acc vjd = static_cast<Acc>(load(v, vo + d));
              acc += dov[d] * vjd;
              o[d] += row.pd[j] * vjd;
            }
            g[j] = pol.round(acc);
            if (pr.dropout) g[j] = row.keep[j] ? pol.round(g[j] * rp) : Acc(0);
          }
          // D = dO·O with O as the forward stored it (rounded to the dtype), as DESIGN.md §1 writes
          // the backward; in float64 it equals Σ_j P_j dP_j.
          Acc dsum = 0;
          for (int d = 0; d < pr.dv; ++d) dsum += dov[d] * pol.round(o[d]);
          std::fill(dq.begin(), dq.end(), Acc(0));
          for (int64_t j = 0; j < sk; ++j) {
            if (!row.vis[j]) continue;
            Acc d_s = pol.round(row.p[j] * (g[j] - dsum));
            if (pr.softcap > 0) d_s = pol.round(d_s * (Acc(1) - row.t[j] * row.t[j]));
            const int64_t ko = kat(pr, k, b, j, kh);
            for (int d = 0; d < pr.d; ++d) {
              dq[d] += d_s * static_cast<Acc>(load(k, ko + d));
              dk_h[j * pr.d + d] += d_s * row.q[d];
            }
            if (row.pd[j] != Acc(0))
              for (int d = 0; d < pr.dv; ++d) dv_h[j * pr.dv + d] += row.pd[j] * dov[d];
          }
          for (int d = 0; d < pr.d; ++d) dqdst[d] = pol.round(scale * dq[d]);
        }
        for (size_t x = 0; x < dk_h.size(); ++x) dk_g[x] += pol.round(scale * dk_h[x]);
        for (size_t x = 0; x < dv_h.size(); ++x) dv_g[x] += pol.round(dv_h[x]);
      }
      for (int64_t j = 0; j < sk; ++j) {
        double* dkd = &r->dk[(pr.krow(b, j) * pr.hk + kh) * pr.d];
        double* dvd = &r->dv[(pr.krow(b, j) * pr.hk + kh) * pr.dv];
        for (int d = 0; d < pr.d; ++d) dkd[d] = pol.round(dk_g[j * pr.d + d]);
        for (int d = 0; d < pr.dv; ++d) dvd[d] = pol.round(dv_g[j * pr.dv + d]);
      }
    }
  }
  return Status::Ok();
}

}  // namespace

Status forward(const TensorView& q, const TensorView& k, const TensorView& v, const Args& args, Result* r,
               int row_stride) {
  return forward_impl(Exact{}, q, k, v, args, r, row_stride);
}

Status backward(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& dout,
                const Args& args, Result* r) {
  return backward_impl(Exact{}, q, k, v, dout, args, r);
}

Status standard_forward(const TensorView& q, const TensorView& k, const TensorView& v, const Args& args,
                        Result* r, int row_stride) {
  return forward_impl(Standard{q.dtype}, q, k, v, args, r, row_stride);
}

Status standard_backward(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& dout,
                         const Args& args, Result* r) {
  return backward_impl(Standard{q.dtype}, q, k, v, dout, args, r);
}

}  // namespace ioattn::ref
