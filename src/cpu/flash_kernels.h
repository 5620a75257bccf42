// The flash-attention kernels of the CPU backend, written once and compiled once per instruction
// set: isa_*.cpp include every header first (so library and std code keep the baseline target),
// then `#pragma GCC target(...)`, define IOATTN_CPU_ISA (the namespace) and include this file.
// Everything here has internal linkage or lives in that namespace, so no symbol compiled for
// AVX-512 can be picked by the linker for a baseline caller.
//
// The algorithm (FlashAttention-2, DESIGN.md §1, §4), per task:
//   forward, task (b, h, query block):   Q block (BQ x D) stays hot; for each key block in the
//     block's visible range:  S = Q Kᵀ (BQ x BK)  ->  scale / softcap / ALiBi / mask  ->
//     online softmax {m, l} per row, rescale O by exp(m_old - m_new)  ->  O += P V.
//     At the end O /= l and LSE = m + log l. Extra memory: the per-thread tiles, O(BQ·BK + (BQ + BK)·D).
//   backward, recomputing P = exp(S - LSE) per tile (nothing N x N is stored):
//     task (b, kv head, key block) owns dK, dV of its keys: for each query head of the group and
//     query block that sees the keys: dV += (P∘Z·rp)ᵀ dO, dP = dO Vᵀ, dS = P∘(dP∘Z·rp - D)
//     (times 1 - tanh² with softcap), dK += dSᵀ Q, and in the fused mode dQ += dS K into an fp32
//     accumulator the task owns. In the two-pass mode task (b, h, query block) computes dQ.
//
// Tile products (tile_ops.h: mm, mm_bt), by build:
//   avx512bf16, bf16 inputs (head dim >= 16): bf16 pairs with vdpbf16ps (bf16_dot.h), Q, K, V, dO
//     read as they are, P and dS rounded to bf16 as flash-attn does on the GPU, fp32 sums.
//   avx512 / avx512bf16 otherwise: fp32 tiles (bf16 / fp16 widened once per tile) through our
//     AVX-512 micro-kernel (gemm_avx512.h).
//   avx2, generic: fp32 tiles through cblas_sgemm. Inside an OpenMP parallel region the OpenMP
//     build of OpenBLAS runs each call single-threaded (checked: two threads each calling
//     128x256x128 sgemm reach twice the one-thread rate), so the tasks own the cores.
// Measured in user cycles (perf stat, one thread, B=1 H=8 S=2048 D=128: the shared machine's wall
// clock is too noisy), forward / backward flops per cycle:
//   bf16 pairs (vdpbf16ps)                               72 / 81
//   bf16 widened + AVX-512 micro-kernel                  49 / 53
//   fp32, AVX-512 micro-kernel                           46 / 50
//   fp32, cblas_sgemm with OPENBLAS_CORETYPE=SkylakeX    43 / 40
//   fp32, cblas_sgemm as OpenBLAS 0.3.21 runs on this    19 / 23   (it does not know the CPU and
//     EPYC by default                                               falls back to Haswell kernels)
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

#include "cpu/tile_ops.h"

// ---- Forward tile products -------------------------------------------------------------------------
// S = Q Kᵀ and O += P V of one tile, on fp32 tiles or (bf16 on AVX-512 BF16) bf16 pairs: Q, K and V
// read as they are (products exact, sums fp32) and P rounded to bf16 for P V. See the top of this file.

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
  mm_bt(nq, nk, p.head_dim, Q, load_bt(p.dtype, k, p.k_row_stride, nk, p.head_dim, kbuf), s, lds);
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
  mm(nq, p.head_dim_v, nk, P, lds, 1, V.ptr, V.ld, o, p.head_dim_v, true);
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
  float *k, *kt, *v, *dk, *dv, *q, *dout, *dq, *s, *dp, *pd, *g;
  uint32_t *kj, *qi, *doi, *tp;  // bf16 path only: operands paired along keys or queries
};

BwdTiles bwd_tiles(const Params& p, float* ws) {
  BwdTiles t;
  const size_t d = p.head_dim, dv = p.head_dim_v, tile = static_cast<size_t>(kBwdBlockQ) * kBwdBlockK;
  // On the bf16 path k, v, q and dout hold pairs along the head dim instead (bf16_dot.h), which
  // fit the same space: K, V as (ceil(D/2), BK), Q, dO as (BQ, ceil(D/2)).
  t.k = ws;                          // (BK, D)   K tile
  t.kt = t.k + kBwdBlockK * d;       // (D, BK)   Kᵀ (or K again, see load_bt)
  t.v = t.kt + kBwdBlockK * d;       // (BK, Dv)  V tile (Vᵀ on AVX-512)
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
    dsum[lse_index(p, b, h, sq, i)] = row_dot(o, d, Dv);
  }
}

// The operands of one backward step in the forms its five products read: fp32 tiles
// or, for bf16 inputs on AVX-512 BF16, bf16 pair layouts (bf16_dot.h) built once per tile.
struct KvTile {
  Mat K, Kt, Vt;                  // fp32: K rows (nk, D); Kᵀ and Vᵀ as load_bt gives them
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
  kv.Kt = load_bt(p.dtype, k, p.k_row_stride, nk, p.head_dim, t.kt);
  kv.Vt = load_bt(p.dtype, v, p.v_row_stride, nk, p.head_dim_v, t.v);
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
  mm_bt(nq, nk, p.head_dim, q.Q, kv.Kt, s, kBwdLd);
}

void prod_dp(const Params& p, const QTile& q, const KvTile& kv, int nq, int nk, float* dp) {  // dP = dO Vᵀ
#if IOATTN_CPU_BF16
  if (bf16_products(p))
    return bf16_gemm(nq, nk, (p.head_dim_v + 1) / 2, q.dod, q.ld_dod, kv.vd, kv.ld_vd, dp, kBwdLd, false);
#endif
  mm_bt(nq, nk, p.head_dim_v, q.dO, kv.Vt, dp, kBwdLd);
}

void prod_dv(const Params& p, const float* pd, const QTile& q, int nq, int nk, BwdTiles& t) {  // dV += Pdᵀ dO
#if IOATTN_CPU_BF16
  if (bf16_products(p)) {
    transpose_pairs(pd, kBwdLd, nq, nk, t.tp);
    return bf16_gemm(nk, p.head_dim_v, (nq + 1) / 2, t.tp, (nq + 1) / 2, q.doi, q.ld_doi, t.dv, p.head_dim_v, true);
  }
#endif
  mm(nk, p.head_dim_v, nq, pd, 1, kBwdLd, q.dO.ptr, q.dO.ld, t.dv, p.head_dim_v, true);
}

void prod_dk(const Params& p, const float* ds, const QTile& q, int nq, int nk, BwdTiles& t) {  // dK += dSᵀ Q
#if IOATTN_CPU_BF16
  if (bf16_products(p)) {
    transpose_pairs(ds, kBwdLd, nq, nk, t.tp);
    return bf16_gemm(nk, p.head_dim, (nq + 1) / 2, t.tp, (nq + 1) / 2, q.qi, q.ld_qi, t.dk, p.head_dim, true);
  }
#endif
  mm(nk, p.head_dim, nq, ds, 1, kBwdLd, q.Q.ptr, q.Q.ld, t.dk, p.head_dim, true);
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
  mm(nq, p.head_dim, nk, ds, kBwdLd, 1, kv.K.ptr, kv.K.ld, dq, p.head_dim, true);
}

// One (query block) x (key block) step of the backward: recompute P, accumulate dV (when dv_acc),
// then dP and dS = P∘(dP∘Z·rp - D) into t.dp.
void bwd_tile(const Params& p, const ScoreFn& f, const WindowMask& mask, int b, int h, const Seq& sq, int i0, int nq,
              int j0, int nk, const QTile& q, const KvTile& kv, const float* dsum, BwdTiles& t, bool dv_acc) {
  const float* lse = p.lse + lse_index(p, b, h, sq, i0);
  const float* drow = dsum + lse_index(p, b, h, sq, i0);
  float* G = p.softcap > 0.0f ? t.g : nullptr;
  prod_s(p, q, kv, nq, nk, t.s);
  scores_to_probs(f, mask, sq.sk, i0, nq, j0, nk, lse, t.s, G, kBwdLd);
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
  // D_i = dO_i·O_i = sum_j Pd_ij dP_ij. For a row whose visible keys all lie in this tile the sum
  // is taken here, from the same dP: then dS cancels exactly where it should (a row that sees one
  // key has P = 1 and dS = 0, where dO·O and a dP from another summation order differ by an ulp).
  float d_tile[kBwdBlockQ];
  for (int r = 0; r < nq; ++r) {
    const int i = i0 + r;
    d_tile[r] = drow[r];
    if (mask.first_key(i) >= j0 && mask.end_key(i, sq.sk) <= j0 + nk)
      d_tile[r] = row_dot(pd + static_cast<size_t>(r) * kBwdLd, t.dp + static_cast<size_t>(r) * kBwdLd, nk);
  }
  probs_to_dscores(p, nq, nk, t.s, pd, G, d_tile, t.dp, kBwdLd);
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
  // Key tiles on the kv pass's grid (multiples of kBwdBlockK), so both passes see the same tiles
  // (and the same in-tile D above).
  const int kbeg = std::min(mask.first_key(i0), sq.sk) / kBwdBlockK * kBwdBlockK;
  const int kend = mask.end_key(i0 + nq - 1, sq.sk);
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
