// Decoding over a KV cache on the CPU (forward_kvcache, flash-attn 2's flash_attn_with_kvcache):
//   1. append: k_new / v_new rows are written into the cache at [cache_seqlens[b], + Snew), the
//      keys rotated first when rotary tables are given (fp32, rounded to the dtype);
//   2. split-KV attention: task (b, kv head, split) holds the query rows of the whole GQA group
//      (Sq x group rows, so each cache row is widened once for the group), streams blocks of
//      kKeyBlock keys of its key range through the page table, and keeps an online-softmax state
//      per row (src/core/softmax_state.h);
//   3. combine: with more than one split the normalised partials (o_s, lse_s) of each row are
//      merged by LSE (LseMerge), the same rule as the GPU's combine kernel.
// Decode rows are few (Sq·group per task), so the products are row-times-block loops the compiler
// vectorises (attend_body, compiled per instruction set), not the sgemm tiles of the prefill
// forward (src/cpu/flash_kernels.h): with one query row an sgemm call would be a GEMV with packing
// overhead.
// forward_paged (paged prefill: varlen queries, keys through a block table, no append) runs here
// too: kv_seq() gives each sequence's query rows and key count from the prefix sums. Its rows can
// be many (Sq·group), which this row-by-row path serves correctly but without sgemm tiles.
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>

#include "core/backends.h"
#include "core/half.h"
#include "core/kvcache.h"
#include "core/mask.h"
#include "core/softmax_state.h"
#include "cpu/scratch.h"

namespace ioattn {
namespace cpu {
namespace {

#include "cpu/exp_poly.h"

// Keys widened to fp32 per step: 64 keys x D=128 of K and V are 64 KiB, L2-resident.
constexpr int kKeyBlock = 64;
constexpr float kLog2e = 1.4426950408889634f;

float load(const void* base, DType t, int64_t i) {
  switch (t) {
    case DType::F16: return fp16_to_float(static_cast<const uint16_t*>(base)[i]);
    case DType::BF16: return bf16_to_float(static_cast<const uint16_t*>(base)[i]);
    default: return static_cast<const float*>(base)[i];
  }
}
void store(void* base, DType t, int64_t i, float x) {
  switch (t) {
    case DType::F16: static_cast<uint16_t*>(base)[i] = float_to_fp16(x); break;
    case DType::BF16: static_cast<uint16_t*>(base)[i] = float_to_bf16(x); break;
    default: static_cast<float*>(base)[i] = x; break;
  }
}
// x rounded to the dtype (what a store and a load give).
float round_to(DType t, float x) {
  switch (t) {
    case DType::F16: return fp16_to_float(float_to_fp16(x));
    case DType::BF16: return bf16_to_float(float_to_bf16(x));
    default: return x;
  }
}
// ---- Row helpers ------------------------------------------------------------------------------
// Measured on the shared 2-core AVX-512 dev machine (B=1 Hq=32 Hk=8 D=128, 8000 cached keys, one
// thread, the same harness before and after, alternating runs): bf16 10.8-11.3 -> 6.1 ms (2.9 ->
// 5.3 GB/s of K/V), fp16 10.2 -> 5.9 ms, fp32 about 14 -> 11 ms; the old loops called a dot and
// an axpy per key and row through target_clones and took exp2f per element. The machine is
// loaded by other jobs: numbers move by 20-40% between runs, ratios less.

// fp16 -> fp32 with F16C, 8 at a time (tails scalar).
__attribute__((target("avx,f16c"))) void widen_f16_f16c(const uint16_t* src, int n, float* dst) {
  int d = 0;
  for (; d + 8 <= n; d += 8)
    _mm256_storeu_ps(dst + d, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + d))));
  for (; d < n; ++d) dst[d] = fp16_to_float(src[d]);
}
bool have_f16c() {
  static const bool yes = __builtin_cpu_supports("f16c") && __builtin_cpu_supports("avx");
  return yes;
}

void load_row(const void* base, DType t, int64_t offset, int n, float* dst) {
  switch (t) {
    case DType::F16: {
      const uint16_t* src = static_cast<const uint16_t*>(base) + offset;
      if (have_f16c()) {
        widen_f16_f16c(src, n, dst);
      } else {
        for (int d = 0; d < n; ++d) dst[d] = fp16_to_float(src[d]);
      }
      break;
    }
    case DType::BF16: {  // the high half of an fp32: a shift the compiler vectorises
      const uint16_t* src = static_cast<const uint16_t*>(base) + offset;
      for (int d = 0; d < n; ++d) {
        const uint32_t u = static_cast<uint32_t>(src[d]) << 16;
        std::memcpy(dst + d, &u, 4);
      }
      break;
    }
    default: std::memcpy(dst, static_cast<const float*>(base) + offset, sizeof(float) * n); break;
  }
}

// Row x (n elements at `src`, already fp32) rotated at table row `pos` into dst, rounded to the
// dtype; elements past rotary_dim are copied.
void rotate_row(const Params& p, const float* src, int n, int pos, float* dst) {
  pos = clamp_int(pos, 0, p.rotary_seqlen - 1);
  for (int d = 0; d < n; ++d) {
    if (d >= p.rotary_dim) { dst[d] = src[d]; continue; }
    const RotaryIndex r = rotary_index(d, p.rotary_dim, p.rotary_interleaved);
    const int64_t cs = pos * p.rotary_row_stride + r.angle;
    dst[d] = round_to(p.dtype, rotate(src[d], src[r.partner], load(p.rotary_cos, p.dtype, cs),
                                      load(p.rotary_sin, p.dtype, cs), r.sign));
  }
}

// Step 1: the append. Rows of one (b, j) are written by one iteration: no two iterations touch the
// same cache element (validation rejects two sequences appending to one contiguous cache row).
Status append(const Params& p) {
  const int64_t n = static_cast<int64_t>(p.batch) * p.seqlen_new;
  std::atomic<bool> failed{false};
#pragma omp parallel
  {
    Scratch<float> buf(2 * static_cast<size_t>(p.head_dim));
    if (!buf.ok()) failed = true;
#pragma omp for schedule(static)
    for (int64_t t = 0; t < n; ++t) {
      if (failed.load(std::memory_order_relaxed)) continue;
      const int b = static_cast<int>(t / p.seqlen_new), j = static_cast<int>(t % p.seqlen_new);
      const KVSeq s = kv_seq(p, b);
      const KVLoc loc = kv_loc(p, b, s, s.old_len + j);
      for (int hk = 0; hk < p.heads_k; ++hk) {
        const int64_t ksrc = b * p.knew_batch_stride + j * p.knew_row_stride + hk * p.knew_head_stride;
        const int64_t kdst = loc.outer * p.k_batch_stride + loc.row * p.k_row_stride + hk * p.k_head_stride;
        float* row = buf.get();
        float* rot = row + p.head_dim;
        load_row(p.k_new, p.dtype, ksrc, p.head_dim, row);
        const float* kout = row;
        if (p.rotary_dim > 0) {
          rotate_row(p, row, p.head_dim, s.old_len + j, rot);
          kout = rot;
        }
        for (int d = 0; d < p.head_dim; ++d) store(p.k_cache, p.dtype, kdst + d, kout[d]);
        const int64_t vsrc = b * p.vnew_batch_stride + j * p.vnew_row_stride + hk * p.vnew_head_stride;
        const int64_t vdst = loc.outer * p.v_batch_stride + loc.row * p.v_row_stride + hk * p.v_head_stride;
        if (p.dtype == DType::F32) {
          std::memcpy(static_cast<float*>(p.v_cache) + vdst, static_cast<const float*>(p.v_new) + vsrc,
                      sizeof(float) * p.head_dim_v);
        } else {
          std::memcpy(static_cast<uint16_t*>(p.v_cache) + vdst, static_cast<const uint16_t*>(p.v_new) + vsrc,
                      sizeof(uint16_t) * p.head_dim_v);
        }
      }
    }
  }
  return failed ? Status{ErrorCode::BackendError, "cpu: out of memory for the append"} : Status::Ok();
}

// The split count: tasks are (b, kv head); the key range of the longest sequence splits into at
// most one piece per key block.
int num_splits(const Params& p) {
  int max_sk = 0;
  for (int b = 0; b < p.batch; ++b) max_sk = std::max(max_sk, kv_seq(p, b).sk);
  const int key_blocks = std::max(1, (max_sk + kKeyBlock - 1) / kKeyBlock);
  if (p.num_splits > 0) return std::min(p.num_splits, key_blocks);
  return choose_num_splits(static_cast<long long>(p.batch) * p.heads_k, omp_get_max_threads(), key_blocks, 64);
}

struct Partials {
  float* o;    // (splits, B, Hq, Sq, Dv), normalised per split
  float* lse;  // (splits, B, Hq, Sq)
};
int64_t row_index(const Params& p, int b, int h, int i) {
  return (static_cast<int64_t>(b) * p.heads_q + h) * p.seqlen_q + i;
}

// Step 2: task (b, hk, split). Rows r = i * group + g are query row i of head hk * group + g.
// ws: q rows (R x D), o rows (R x Dv), states (R x 2), K block (kKeyBlock x D), V block
// (kKeyBlock x Dv), probabilities (R x kKeyBlock), one row buffer (D).
size_t task_floats(const Params& p) {
  const size_t R = static_cast<size_t>(p.seqlen_q) * p.group;
  return R * (p.head_dim + p.head_dim_v + 2 + kKeyBlock) + kKeyBlock * (p.head_dim + p.head_dim_v) + p.head_dim;
}

// ---- The block loop, compiled per instruction set ------------------------------------------------
// attend_body is written for the auto-vectoriser (omp simd loops, no intrinsics, helpers inlined)
// and instantiated inside three functions with different target attributes (AVX-512, AVX2 + FMA,
// baseline); forward_kvcache picks one at run time. Per key block of a task:
//   scores  four query rows at a time: each key row is loaded once for the four dot products
//           (one multi-accumulator simd reduction), so the GQA group shares the K read;
//   softmax per row: block maximum, rescale, probabilities by a vectorised exp2 (exp2_poly);
//   P V     four rows at a time again: each V row is loaded once and added, scaled by the four
//           probabilities, to the four output rows.
// Cache rows are widened (or copied) once per block into the K/V block buffers, and the next
// block's rows are prefetched.

#define IOATTN_DECODE_INLINE inline __attribute__((always_inline))

// 2^x for x <= 0 (scores minus the running maximum; -inf gives 0): x = n + f with n = round(x),
// |f| <= 1/2, and 2^f = e^(f ln 2) by the same degree-6 minimax polynomial as tile_ops.h's
// exp_approx (relative error about 1 ulp). Branch-free, so `omp simd` loops vectorise it.
IOATTN_DECODE_INLINE float exp2_poly(float x) {
  constexpr float kRound = 12582912.0f;  // 1.5·2^23: adding it rounds to an integer
  constexpr float kLn2 = 0.693147180559945f;
  x = x < -126.0f ? -126.0f : x;  // also catches -inf; 2^-126 rounds the probability to ~0
  const float n = (x + kRound) - kRound;
  const float r = (x - n) * kLn2;
  return exp_reduced(r, n);
}

// A cache row as fp32 in dst (widened from fp16 / bf16, copied from fp32).
IOATTN_DECODE_INLINE const float* cache_row(const void* base, DType t, int64_t offset, int n, float* dst) {
  switch (t) {
    case DType::BF16: {  // the high half of an fp32: a shift
      const uint16_t* src = static_cast<const uint16_t*>(base) + offset;
      uint32_t* d = reinterpret_cast<uint32_t*>(dst);
#pragma omp simd
      for (int j = 0; j < n; ++j) d[j] = static_cast<uint32_t>(src[j]) << 16;
      return dst;
    }
    case DType::F16:
      load_row(base, t, offset, n, dst);  // F16C when the CPU has it (a call per row)
      return dst;
    default:
      // Copied although it could be read in place: the copy issues the row's loads back to back,
      // and reading the (page-strided) rows inside the score loop measured 1.7x slower.
      std::memcpy(dst, static_cast<const float*>(base) + offset, sizeof(float) * n);
      return dst;
  }
}

IOATTN_DECODE_INLINE void prefetch_row(const void* base, DType t, int64_t offset, int n) {
  const size_t es = t == DType::F32 ? 4 : 2;
  const char* row = static_cast<const char*>(base) + offset * static_cast<int64_t>(es);
  for (size_t byte = 0; byte < n * es; byte += 64) __builtin_prefetch(row + byte, 0, 3);
}

template <int kVariant>
IOATTN_DECODE_INLINE void attend_body(const Params& p, int b, int hk, int split, int splits, float* ws,
                                      const Partials& part) {
  const KVSeq s = kv_seq(p, b);
  const int R = s.sq * p.group, D = p.head_dim, Dv = p.head_dim_v;
  float* q = ws;
  float* o = q + static_cast<size_t>(R) * D;
  SoftmaxState* st = reinterpret_cast<SoftmaxState*>(o + static_cast<size_t>(R) * Dv);
  float* kb = reinterpret_cast<float*>(st + R);
  float* vb = kb + kKeyBlock * D;
  float* pr = vb + kKeyBlock * Dv;  // (R x kKeyBlock): scores, then probabilities (0 where masked)
  float* tmp = pr + static_cast<size_t>(R) * kKeyBlock;
  const float* krow[kKeyBlock];
  const float* vrow[kKeyBlock];

  const WindowMask mask{p.window_left, p.window_right, s.sk - s.sq};
  // This split's keys: an equal share of the key blocks of [0, sk), as on the GPU.
  const int blocks = (s.sk + kKeyBlock - 1) / kKeyBlock;
  const int per_split = (blocks + splits - 1) / splits;
  const int k_begin = std::min(s.sk, split * per_split * kKeyBlock);
  const int k_end = std::min(s.sk, (split + 1) * per_split * kKeyBlock);

  for (int r = 0; r < R; ++r) {
    const int i = r / p.group, h = hk * p.group + r % p.group;
    const int64_t off = b * p.q_batch_stride + (s.q0 + i) * p.q_row_stride + h * p.q_head_stride;
    if (p.rotary_dim > 0) {
      load_row(p.q, p.dtype, off, D, tmp);
      rotate_row(p, tmp, D, rotary_q_position(p, s, i), q + static_cast<size_t>(r) * D);
    } else {
      load_row(p.q, p.dtype, off, D, q + static_cast<size_t>(r) * D);
    }
    std::fill(o + static_cast<size_t>(r) * Dv, o + static_cast<size_t>(r + 1) * Dv, 0.0f);
    st[r] = SoftmaxState::empty();
  }
  const bool softcap = p.softcap > 0.0f;
  const float cap_in = softcap ? p.scale / p.softcap : 0.0f, cap_out = p.softcap * kLog2e;
  const float scale_log2 = p.scale_log2;

  for (int n0 = k_begin; n0 < k_end; n0 += kKeyBlock) {
    const int nk = std::min(kKeyBlock, k_end - n0);
    // Rows with a visible key in this block (masks can hide whole blocks from some rows).
    int r_lo = R, r_hi = 0;
    for (int r = 0; r < R; ++r) {
      const int i = r / p.group;
      if (std::max(mask.first_key(i), n0) < std::min(mask.end_key(i, s.sk), n0 + nk)) {
        r_lo = std::min(r_lo, r);
        r_hi = r + 1;
      }
    }
    if (r_lo >= r_hi) continue;
    // The next block's rows are requested now, so their misses overlap this block's arithmetic (a
    // head's rows are Hk·D elements apart, usually a page or more: the hardware prefetchers, which
    // stay within a page, do not fetch them ahead).
    const int n_next = std::min(kKeyBlock, k_end - n0 - nk);
    for (int n = 0; n < n_next; ++n) {
      const KVLoc loc = kv_loc(p, b, s, s.start + n0 + nk + n);
      prefetch_row(p.k, p.dtype, loc.outer * p.k_batch_stride + loc.row * p.k_row_stride + hk * p.k_head_stride, D);
      prefetch_row(p.v, p.dtype, loc.outer * p.v_batch_stride + loc.row * p.v_row_stride + hk * p.v_head_stride, Dv);
    }
    for (int n = 0; n < nk; ++n) {
      const KVLoc loc = kv_loc(p, b, s, s.start + n0 + n);
      krow[n] = cache_row(p.k, p.dtype, loc.outer * p.k_batch_stride + loc.row * p.k_row_stride + hk * p.k_head_stride,
                          D, kb + static_cast<size_t>(n) * D);
      vrow[n] = cache_row(p.v, p.dtype, loc.outer * p.v_batch_stride + loc.row * p.v_row_stride + hk * p.v_head_stride,
                          Dv, vb + static_cast<size_t>(n) * Dv);
    }
    // Raw scores Q·K for rows [r_lo, r_hi), four rows per pass over each key row.
    int r = r_lo;
    for (; r + 4 <= r_hi; r += 4) {
      const float *q0 = q + static_cast<size_t>(r) * D, *q1 = q0 + D, *q2 = q1 + D, *q3 = q2 + D;
      float* s0 = pr + static_cast<size_t>(r) * kKeyBlock;
      for (int j = 0; j < nk; ++j) {
        const float* k = krow[j];
        float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
#pragma omp simd reduction(+ : a0, a1, a2, a3)
        for (int d = 0; d < D; ++d) {
          const float kd = k[d];
          a0 += q0[d] * kd;
          a1 += q1[d] * kd;
          a2 += q2[d] * kd;
          a3 += q3[d] * kd;
        }
        s0[j] = a0;
        s0[kKeyBlock + j] = a1;
        s0[2 * kKeyBlock + j] = a2;
        s0[3 * kKeyBlock + j] = a3;
      }
    }
    for (; r < r_hi; ++r) {
      const float* q0 = q + static_cast<size_t>(r) * D;
      float* s0 = pr + static_cast<size_t>(r) * kKeyBlock;
      for (int j = 0; j < nk; ++j) {
        const float* k = krow[j];
        float a0 = 0.0f;
#pragma omp simd reduction(+ : a0)
        for (int d = 0; d < D; ++d) a0 += q0[d] * k[d];
        s0[j] = a0;
      }
    }
    // Per row: score transform and mask, block maximum, rescale, probabilities.
    for (r = r_lo; r < r_hi; ++r) {
      const int i = r / p.group, h = hk * p.group + r % p.group;
      const int lo = std::max(mask.first_key(i), n0) - n0, hi = std::min(mask.end_key(i, s.sk), n0 + nk) - n0;
      float* x = pr + static_cast<size_t>(r) * kKeyBlock;
      if (lo >= hi) {
        std::fill(x, x + nk, 0.0f);
        continue;
      }
      if (softcap) {
        for (int j = lo; j < hi; ++j) x[j] = cap_out * std::tanh(x[j] * cap_in);
      } else {
#pragma omp simd
        for (int j = lo; j < hi; ++j) x[j] *= scale_log2;
      }
      if (p.alibi_slopes) {
        const float slope = p.alibi_slopes[b * p.alibi_batch_stride + h] * kLog2e;
        for (int j = lo; j < hi; ++j) x[j] -= slope * static_cast<float>(mask.alibi_distance(i, n0 + j));
      }
      float mx = -INFINITY;
#pragma omp simd reduction(max : mx)
      for (int j = lo; j < hi; ++j) mx = x[j] > mx ? x[j] : mx;
      const float alpha = st[r].raise_max(mx);
      if (alpha != 1.0f) {
        float* orow = o + static_cast<size_t>(r) * Dv;
#pragma omp simd
        for (int d = 0; d < Dv; ++d) orow[d] *= alpha;
      }
      const float base = SoftmaxState::base(st[r].m);
      float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
      for (int j = 0; j < nk; ++j) {
        const float e = (j >= lo && j < hi) ? exp2_poly(x[j] - base) : 0.0f;
        x[j] = e;
        sum += e;
      }
      st[r].l += sum;
    }
    // O += P V, four rows per pass over each V row (masked probabilities are 0).
    for (r = r_lo; r + 4 <= r_hi; r += 4) {
      float *o0 = o + static_cast<size_t>(r) * Dv, *o1 = o0 + Dv, *o2 = o1 + Dv, *o3 = o2 + Dv;
      const float* p0 = pr + static_cast<size_t>(r) * kKeyBlock;
      for (int j = 0; j < nk; ++j) {
        const float w0 = p0[j], w1 = p0[kKeyBlock + j], w2 = p0[2 * kKeyBlock + j], w3 = p0[3 * kKeyBlock + j];
        const float* v = vrow[j];
#pragma omp simd
        for (int d = 0; d < Dv; ++d) {
          const float vd = v[d];
          o0[d] += w0 * vd;
          o1[d] += w1 * vd;
          o2[d] += w2 * vd;
          o3[d] += w3 * vd;
        }
      }
    }
    for (; r < r_hi; ++r) {
      float* o0 = o + static_cast<size_t>(r) * Dv;
      const float* p0 = pr + static_cast<size_t>(r) * kKeyBlock;
      for (int j = 0; j < nk; ++j) {
        const float w0 = p0[j];
        const float* v = vrow[j];
#pragma omp simd
        for (int d = 0; d < Dv; ++d) o0[d] += w0 * v[d];
      }
    }
  }

  for (int r = 0; r < R; ++r) {
    const int i = r / p.group, h = hk * p.group + r % p.group;
    const float* orow = o + static_cast<size_t>(r) * Dv;
    const float inv = st[r].out_scale();
    if (splits == 1) {
      const int64_t off = b * p.o_batch_stride + (s.q0 + i) * p.o_row_stride + h * p.o_head_stride;
      for (int d = 0; d < Dv; ++d) store(p.out, p.dtype, off + d, orow[d] * inv);
      if (p.lse) p.lse[b * p.lse_batch_stride + h * p.lse_head_stride + s.q0 + i] = st[r].lse();
    } else {
      const int64_t row = static_cast<int64_t>(split) * p.batch * p.heads_q * p.seqlen_q + row_index(p, b, h, i);
      for (int d = 0; d < Dv; ++d) part.o[row * Dv + d] = orow[d] * inv;
      part.lse[row] = st[r].lse();
    }
  }
}

using AttendFn = void (*)(const Params&, int, int, int, int, float*, const Partials&);
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,prefer-vector-width=512"))) void attend_avx512(
    const Params& p, int b, int hk, int split, int splits, float* ws, const Partials& part) {
  attend_body<0>(p, b, hk, split, splits, ws, part);
}
__attribute__((target("avx2,fma,f16c"))) void attend_avx2(const Params& p, int b, int hk, int split, int splits,
                                                           float* ws, const Partials& part) {
  attend_body<1>(p, b, hk, split, splits, ws, part);
}
void attend_generic(const Params& p, int b, int hk, int split, int splits, float* ws, const Partials& part) {
  attend_body<2>(p, b, hk, split, splits, ws, part);
}
// The same instruction-set tiers as backend.cpp's choice of the flash kernels, and the same cap:
// IOATTN_CPU_ISA=avx512|avx2|generic (to test the other variants on one machine).
AttendFn attend_fn() {
  static const AttendFn fn = [] {
    __builtin_cpu_init();
    const char* cap = std::getenv("IOATTN_CPU_ISA");
    const std::string want = cap ? cap : "";
    const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && have_f16c();
    const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
    if (avx512 && (want.empty() || want == "avx512" || want == "avx512bf16")) return &attend_avx512;
    return avx2 && want != "generic" ? &attend_avx2 : &attend_generic;
  }();
  return fn;
}

// Step 3: merge the splits of row (b, h, i).
void combine(const Params& p, int splits, const Partials& part, int64_t row) {
  const int64_t rows = static_cast<int64_t>(p.batch) * p.heads_q * p.seqlen_q;
  const int i = static_cast<int>(row % p.seqlen_q);
  const int h = static_cast<int>(row / p.seqlen_q % p.heads_q);
  const int b = static_cast<int>(row / p.seqlen_q / p.heads_q);
  const KVSeq s = kv_seq(p, b);
  if (i >= s.sq) return;  // paged varlen: past this sequence's queries
  float mx = -INFINITY;
  for (int sp = 0; sp < splits; ++sp) mx = std::max(mx, part.lse[sp * rows + row]);
  LseMerge m = LseMerge::begin(mx);
  const int Dv = p.head_dim_v;
  float acc[256];
  const int64_t off = b * p.o_batch_stride + (s.q0 + i) * p.o_row_stride + h * p.o_head_stride;
  for (int d0 = 0; d0 < Dv; d0 += 256) {  // Dv is unbounded on the CPU: chunks of 256
    const int nd = std::min(256, Dv - d0);
    std::fill(acc, acc + nd, 0.0f);
    m.sum = 0.0f;
    for (int sp = 0; sp < splits; ++sp) {
      const float w = m.add(part.lse[sp * rows + row]);
      if (w == 0.0f) continue;
      const float* src = part.o + (sp * rows + row) * Dv + d0;
      for (int d = 0; d < nd; ++d) acc[d] += w * src[d];
    }
    const float inv = m.out_scale();
    for (int d = 0; d < nd; ++d) store(p.out, p.dtype, off + d0 + d, acc[d] * inv);
  }
  if (p.lse) p.lse[b * p.lse_batch_stride + h * p.lse_head_stride + s.q0 + i] = m.lse();
}

}  // namespace

Status forward_kvcache(const Params& p) {
  if (p.seqlen_new > 0) {
    Status s = append(p);
    if (!s.ok()) return s;
  }
  if (p.batch == 0 || p.seqlen_q == 0) return Status::Ok();
  const int splits = num_splits(p);
  const int64_t rows = static_cast<int64_t>(p.batch) * p.heads_q * p.seqlen_q;
  Scratch<float> part_o(splits > 1 ? static_cast<size_t>(splits * rows * p.head_dim_v) : 0);
  Scratch<float> part_lse(splits > 1 ? static_cast<size_t>(splits * rows) : 0);
  if (!part_o.ok() || !part_lse.ok()) return Status{ErrorCode::BackendError, "cpu: out of memory for split-KV partials"};
  const Partials part{part_o.get(), part_lse.get()};
  const int64_t tasks = static_cast<int64_t>(p.batch) * p.heads_k * splits;
  std::atomic<bool> failed{false};
  const AttendFn attend = attend_fn();
#pragma omp parallel num_threads(static_cast<int>(std::min<int64_t>(tasks, omp_get_max_threads())))
  {
    Scratch<float> ws(task_floats(p));
    if (!ws.ok()) failed = true;
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < tasks; ++t) {
      if (failed.load(std::memory_order_relaxed)) continue;
      const int split = static_cast<int>(t % splits);
      const int hk = static_cast<int>(t / splits % p.heads_k);
      const int b = static_cast<int>(t / splits / p.heads_k);
      attend(p, b, hk, split, splits, ws.get(), part);
    }
  }
  if (failed) return Status{ErrorCode::BackendError, "cpu: out of memory for decode tiles"};
  if (splits > 1) {
#pragma omp parallel for schedule(static)
    for (int64_t row = 0; row < rows; ++row) combine(p, splits, part, row);
  }
  return Status::Ok();
}

}  // namespace cpu
}  // namespace ioattn
