// Decode kernels (forward_kvcache on the GPU), CUDA-core flash-decoding:
//   append   k_new/v_new rows -> cache positions [cache_seqlens[b], + Snew), keys rotated (fp32,
//            rounded to T). One block per (b, new row) x kv head.
//   attend   block (split, kv head x row block, b): kM packed query rows (query i, GQA head g of the
//            kv head: row r = i * group + g), so each K/V byte a block reads serves the whole group.
//            K/V tiles of kN = 128 keys come through cp.async from the contiguous or paged cache;
//            each warp owns 32 keys of a tile (one per lane) and keeps its own online-softmax state
//            per row; the warps' states merge through shared memory at the end (the same merge
//            as the splits'). Split s covers an equal share of the key tiles of [0, Sk_b).
//   combine  one warp per (b, h, i) merges the splits' normalised partials by LSE.
// Why CUDA cores, not mma.sync (yet): a decode block holds Sq·group real rows, typically 4-8 of
// the 16, and the loops skip the absent ones; per K/V byte (2 bytes per element, K and V) that is
// about rows/2 FMAs, i.e. 2-4 FMA per byte against the ~15 bytes/clock/SM of HBM on H100/H200 and
// 128 FMA/clock/SM: memory-bound up to ~16 rows. The score step reads K from shared memory once
// per lane and key with 16-byte loads (row pitch kD + 8: conflict-free). Blocks with many rows
// (paged prefill, Sq·group >> 16) would gain from mma.sync tiles (common/mma.cuh, tile.cuh); that
// is the next step for forward_paged's speed, not needed for its correctness.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "common/mma.cuh"
#include "core/kvcache.h"
#include "core/mask.h"
#include "core/params.h"
#include "core/softmax_state.h"

namespace ioattn::cuda::decode {

constexpr float kLog2eF = 1.4426950408889634f;

// Tile configuration per padded head dim kD (max(D, Dv) rounded up to 64, 128 or 256).
template <int kD>
struct Tile {
  static constexpr int kWarps = 4;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kN = kWarps * 32;      // keys per tile: one per lane of every warp
  // Packed query rows per block: 16 covers decode with GQA groups up to 16 (Sq = 1); at kD = 256
  // 8 rows keep the per-lane output accumulator at kM * kD / 32 = 64 floats, as at kD = 128.
  static constexpr int kM = kD <= 128 ? 16 : 8;
  static constexpr int kDL = kD / 32;         // output dims per lane: [lane * kDL, + kDL)
  static constexpr int kPitch = kD + 8;       // K/V smem row pitch (elements): 16-byte loads of 8
                                              // consecutive rows hit distinct bank groups
  static constexpr size_t kQBytes = sizeof(float) * kM * kD;
  static constexpr size_t kKVBytes = 2 * 2 * static_cast<size_t>(kN) * kPitch;  // K and V, 16-bit
  static constexpr size_t kPBytes = sizeof(float) * kWarps * kM * 32;
  static constexpr size_t kStateBytes = sizeof(float) * kWarps * kM * 2;
  static constexpr size_t kAlibiBytes = sizeof(float) * kM;
  static constexpr size_t kSmemBytes = kQBytes + kKVBytes + kPBytes + kStateBytes + kAlibiBytes;
  // The end-of-block merge stores every warp's (kM x kD) fp32 output over the K/V tiles.
  static_assert(sizeof(float) * kWarps * kM * kD <= kKVBytes, "warp merge must fit in the K/V tiles");
  static_assert(kD % 64 == 0 && kD <= 256, "kD is 64, 128 or 256");
};

template <class T>
__device__ __forceinline__ T from_float(float x) {
  if constexpr (std::is_same_v<T, __half>) return __float2half_rn(x);
  else return __float2bfloat16_rn(x);
}
template <class T>
__device__ __forceinline__ float to_float(T x) {
  return Half2Of<T>::to_float(x);
}

__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int o = 16; o > 0; o /= 2) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}
__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o /= 2) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// Element d of a row `x` (global, T) rotated at cache position pos, rounded to T, as float.
template <class T>
__device__ __forceinline__ float rotated(const Params& p, const T* x, int d, int pos) {
  const float v = to_float(x[d]);
  if (d >= p.rotary_dim) return v;
  const RotaryIndex r = rotary_index(d, p.rotary_dim, p.rotary_interleaved);
  const int64_t cs = static_cast<int64_t>(clamp_int(pos, 0, p.rotary_seqlen - 1)) * p.rotary_row_stride + r.angle;
  const float c = to_float(static_cast<const T*>(p.rotary_cos)[cs]);
  const float s = to_float(static_cast<const T*>(p.rotary_sin)[cs]);
  return to_float(from_float<T>(rotate(v, to_float(x[r.partner]), c, s, r.sign)));
}

// ---- append ----------------------------------------------------------------------------------
// grid (batch * seqlen_new, heads_k), any block size.
template <class T>
__global__ void append_kernel(const Params p) {
  const int b = blockIdx.x / p.seqlen_new, j = blockIdx.x % p.seqlen_new, hk = blockIdx.y;
  const KVSeq s = kv_seq(p, b);
  const KVLoc loc = kv_loc(p, b, s, s.old_len + j);
  const T* kn = static_cast<const T*>(p.k_new) + b * p.knew_batch_stride + j * p.knew_row_stride + hk * p.knew_head_stride;
  const T* vn = static_cast<const T*>(p.v_new) + b * p.vnew_batch_stride + j * p.vnew_row_stride + hk * p.vnew_head_stride;
  T* kc = static_cast<T*>(p.k_cache) + loc.outer * p.k_batch_stride + loc.row * p.k_row_stride + hk * p.k_head_stride;
  T* vc = static_cast<T*>(p.v_cache) + loc.outer * p.v_batch_stride + loc.row * p.v_row_stride + hk * p.v_head_stride;
  for (int d = threadIdx.x; d < p.head_dim; d += blockDim.x)
    kc[d] = p.rotary_dim > 0 ? from_float<T>(rotated(p, kn, d, s.old_len + j)) : kn[d];
  for (int d = threadIdx.x; d < p.head_dim_v; d += blockDim.x) vc[d] = vn[d];
}

// ---- attend ----------------------------------------------------------------------------------
// kDL consecutive 16-bit elements from shared memory as floats, in one load (4, 8 or 16 bytes).
template <class T, int kDL>
__device__ __forceinline__ void load_floats(const T* src, float (&dst)[kDL]) {
  using Vec = std::conditional_t<kDL == 8, uint4, std::conditional_t<kDL == 4, uint2, uint32_t>>;
  const Vec raw = *reinterpret_cast<const Vec*>(src);
  const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
  for (int k = 0; k < kDL; ++k) dst[k] = to_float(e[k]);
}

// grid (splits, heads_k * m_blocks, batch), Tile<kD>::kThreads threads, Tile<kD>::kSmemBytes
// dynamic shared memory. splits == 1 writes out / lse; otherwise normalised partials:
// part_o[(split * rows + row) * Dv + d], part_lse[split * rows + row], row = (b * Hq + h) * Sq + i.
template <class T, int kD>
__global__ void __launch_bounds__(Tile<kD>::kThreads) attend_kernel(const Params p, int splits, float* part_o,
                                                                    float* part_lse) {
  using C = Tile<kD>;
  constexpr int kM = C::kM, kN = C::kN, kDL = C::kDL, kPitch = C::kPitch;
  extern __shared__ __align__(16) unsigned char smem[];
  float* sq = reinterpret_cast<float*>(smem);                            // (kM, kD) queries, fp32
  T* sk = reinterpret_cast<T*>(smem + C::kQBytes);                       // (kN, kPitch) keys
  T* sv = sk + kN * kPitch;                                              // (kN, kPitch) values
  float* sp = reinterpret_cast<float*>(smem + C::kQBytes + C::kKVBytes); // (warps, kM, 32) probabilities
  float* sstate = sp + C::kWarps * kM * 32;                              // (warps, kM, {m, l})
  float* salibi = sstate + C::kWarps * kM * 2;                           // (kM) slope * log2 e

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int split = blockIdx.x, b = blockIdx.z;
  const int m_blocks = (p.seqlen_q * p.group + kM - 1) / kM;  // grid.y: sized for the longest sequence
  const int hk = blockIdx.y / m_blocks, r0 = (blockIdx.y % m_blocks) * kM;
  const int D = p.head_dim, Dv = p.head_dim_v;
  const KVSeq s = kv_seq(p, b);
  const int rows = s.sq * p.group;
  if (r0 >= rows) return;  // paged varlen: a shorter sequence (block-uniform, before any barrier)
  // Rows of this block that exist: decode with a GQA group of 4 fills 4 of the 16; the loops below
  // skip the rest with block-uniform branches, so the work follows the real row count.
  const int nrows = min(kM, rows - r0);
  const WindowMask mask{p.window_left, p.window_right, s.sk - s.sq};

  // This block's keys: the split's share of the tiles of [0, sk), cut to the rows' visible range
  // (first_key / end_key grow with the row, so the first and last rows bound it).
  const int i_first = r0 / p.group, i_last = (min(r0 + kM, rows) - 1) / p.group;
  const int tiles = (s.sk + kN - 1) / kN, per_split = (tiles + splits - 1) / splits;
  const int k_begin = max(min(mask.first_key(i_first), s.sk), split * per_split * kN);
  const int k_end = min(mask.end_key(i_last, s.sk), min(s.sk, (split + 1) * per_split * kN));

  // Queries (rotated, rounded to T) and ALiBi slopes of the block's rows.
  for (int e = tid; e < kM * kD; e += C::kThreads) {
    const int r = e / kD, d = e % kD, rg = r0 + r;
    float x = 0.0f;
    if (rg < rows && d < D) {
      const int i = rg / p.group, h = hk * p.group + rg % p.group;
      const T* qrow =
          static_cast<const T*>(p.q) + b * p.q_batch_stride + (s.q0 + i) * p.q_row_stride + h * p.q_head_stride;
      x = p.rotary_dim > 0 ? rotated(p, qrow, d, rotary_q_position(p, s, i)) : to_float(qrow[d]);
    }
    sq[e] = x;
  }
  if (tid < kM) {
    const int rg = r0 + tid, h = hk * p.group + rg % p.group;
    salibi[tid] = (p.alibi_slopes && rg < rows) ? p.alibi_slopes[b * p.alibi_batch_stride + h] * kLog2eF : 0.0f;
  }

  const bool softcap = p.softcap > 0.0f;
  const float cap_in = softcap ? p.scale / p.softcap : 0.0f, cap_out = p.softcap * kLog2eF;
  SoftmaxState st[kM];  // m warp-uniform; l this lane's partial sum (rescaled like the whole)
  float o[kM][kDL];
#pragma unroll
  for (int r = 0; r < kM; ++r) {
    st[r] = SoftmaxState::empty();
#pragma unroll
    for (int k = 0; k < kDL; ++k) o[r][k] = 0.0f;
  }

  const T* kbase = static_cast<const T*>(p.k) + hk * p.k_head_stride;
  const T* vbase = static_cast<const T*>(p.v) + hk * p.v_head_stride;
  for (int n0 = k_begin; n0 < k_end; n0 += kN) {
    const int nk = min(kN, k_end - n0);
    // K then V tile as two cp.async groups: the scores need only K, so V lands meanwhile.
    constexpr int kChunks = kD / 8;
    for (int c = tid; c < kN * kChunks; c += C::kThreads) {
      const int n = c / kChunks, col = (c % kChunks) * 8;
      const bool row_ok = n < nk;
      const KVLoc loc = kv_loc(p, b, s, s.start + n0 + (row_ok ? n : 0));
      const bool valid = row_ok && col < D;
      cp_async_16(sk + n * kPitch + col, valid ? kbase + loc.outer * p.k_batch_stride + loc.row * p.k_row_stride + col : kbase,
                  valid);
    }
    cp_async_commit();
    for (int c = tid; c < kN * kChunks; c += C::kThreads) {
      const int n = c / kChunks, col = (c % kChunks) * 8;
      const bool row_ok = n < nk;
      const KVLoc loc = kv_loc(p, b, s, s.start + n0 + (row_ok ? n : 0));
      const bool valid = row_ok && col < Dv;
      cp_async_16(sv + n * kPitch + col, valid ? vbase + loc.outer * p.v_batch_stride + loc.row * p.v_row_stride + col : vbase,
                  valid);
    }
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();

    // Scores of this lane's key against the kM rows (log2 units).
    const int n = warp * 32 + lane, j = n0 + n;
    float x[kM];
#pragma unroll
    for (int r = 0; r < kM; ++r) x[r] = 0.0f;
    const T* krow = sk + n * kPitch;
    for (int d0 = 0; d0 < D; d0 += 8) {
      const uint4 raw = *reinterpret_cast<const uint4*>(krow + d0);
      const T* ke = reinterpret_cast<const T*>(&raw);
      float kf[8];
#pragma unroll
      for (int k = 0; k < 8; ++k) kf[k] = to_float(ke[k]);
#pragma unroll
      for (int r = 0; r < kM; ++r) {
        if (r >= nrows) break;
        const float4 qa = *reinterpret_cast<const float4*>(sq + r * kD + d0);
        const float4 qb = *reinterpret_cast<const float4*>(sq + r * kD + d0 + 4);
        x[r] += qa.x * kf[0] + qa.y * kf[1] + qa.z * kf[2] + qa.w * kf[3] + qb.x * kf[4] + qb.y * kf[5] +
                qb.z * kf[6] + qb.w * kf[7];
      }
    }
#pragma unroll
    for (int r = 0; r < kM; ++r) {
      if (r >= nrows) break;
      const int rg = r0 + r, i = rg / p.group;
      float v = softcap ? cap_out * tanhf(x[r] * cap_in) : x[r] * p.scale_log2;
      v -= salibi[r] * static_cast<float>(mask.alibi_distance(i, j));
      const bool visible = rg < rows && n < nk && mask.visible(i, j);
      x[r] = visible ? v : -INFINITY;
      // Online softmax: the warp's maximum, this lane's probability (to shared memory for P V).
      const float alpha = st[r].raise_max(warp_max(x[r]));
      const float pr = st[r].prob(x[r]);
      st[r].l += pr;
      sp[(warp * kM + r) * 32 + lane] = pr;
#pragma unroll
      for (int k = 0; k < kDL; ++k) o[r][k] *= alpha;
    }
    cp_async_wait<0>();
    __syncthreads();  // V tile complete (and every warp's P written)

    // O += P V over the warp's 32 keys; lane owns dims [lane * kDL, + kDL).
#pragma unroll 4
    for (int nn = 0; nn < 32; ++nn) {
      float vf[kDL];
      load_floats<T, kDL>(sv + (warp * 32 + nn) * kPitch + lane * kDL, vf);
#pragma unroll
      for (int r = 0; r < kM; ++r) {
        if (r >= nrows) break;
        const float pr = sp[(warp * kM + r) * 32 + nn];
#pragma unroll
        for (int k = 0; k < kDL; ++k) o[r][k] += pr * vf[k];
      }
    }
    __syncthreads();  // before the next tile's copies overwrite K, V and P
  }

  // Merge the warps' states (the K/V tiles hold the warps' outputs now).
  float* so = reinterpret_cast<float*>(sk);  // (warps, kM, kD)
#pragma unroll
  for (int r = 0; r < kM; ++r) {
    const float l = warp_sum(st[r].l);
    if (lane == 0) {
      sstate[(warp * kM + r) * 2] = st[r].m;
      sstate[(warp * kM + r) * 2 + 1] = l;
    }
#pragma unroll
    for (int k = 0; k < kDL; ++k) so[(warp * kM + r) * kD + lane * kDL + k] = o[r][k];
  }
  __syncthreads();
  const int64_t total_rows = static_cast<int64_t>(p.batch) * p.heads_q * p.seqlen_q;
  for (int e = tid; e < kM * kD; e += C::kThreads) {
    const int r = e / kD, d = e % kD, rg = r0 + r;
    if (rg >= rows || d >= Dv) continue;
    SoftmaxState tot = SoftmaxState::empty();
    float acc = 0.0f;
#pragma unroll
    for (int w = 0; w < C::kWarps; ++w) {
      const SoftmaxState sw{sstate[(w * kM + r) * 2], sstate[(w * kM + r) * 2 + 1]};
      float a_self, a_other;
      tot.merge(sw, &a_self, &a_other);
      acc = acc * a_self + so[(w * kM + r) * kD + d] * a_other;
    }
    const int i = rg / p.group, h = hk * p.group + rg % p.group;
    const float val = acc * tot.out_scale();
    if (splits == 1) {
      T* orow = static_cast<T*>(p.out) + b * p.o_batch_stride + (s.q0 + i) * p.o_row_stride + h * p.o_head_stride;
      orow[d] = from_float<T>(val);
      if (d == 0 && p.lse) p.lse[b * p.lse_batch_stride + h * p.lse_head_stride + s.q0 + i] = tot.lse();
    } else {
      const int64_t row = split * total_rows + (static_cast<int64_t>(b) * p.heads_q + h) * p.seqlen_q + i;
      part_o[row * Dv + d] = val;
      if (d == 0) part_lse[row] = tot.lse();
    }
  }
}

// ---- combine ---------------------------------------------------------------------------------
// One warp per output row (b, h, i); blocks of kCombineWarps warps.
constexpr int kCombineWarps = 4;
template <class T>
__global__ void __launch_bounds__(kCombineWarps * 32) combine_kernel(const Params p, int splits,
                                                                     const float* part_o, const float* part_lse) {
  const int64_t total_rows = static_cast<int64_t>(p.batch) * p.heads_q * p.seqlen_q;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kCombineWarps + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= total_rows) return;
  const int i = static_cast<int>(row % p.seqlen_q);
  const int h = static_cast<int>(row / p.seqlen_q % p.heads_q);
  const int b = static_cast<int>(row / p.seqlen_q / p.heads_q);
  const KVSeq s = kv_seq(p, b);
  if (i >= s.sq) return;  // paged varlen: past this sequence's queries (never written by attend)
  float mx = -INFINITY;
  for (int sp = lane; sp < splits; sp += 32) mx = fmaxf(mx, part_lse[sp * total_rows + row]);
  LseMerge m = LseMerge::begin(warp_max(mx));
  constexpr int kMaxDL = 256 / 32;
  float acc[kMaxDL];
#pragma unroll
  for (int k = 0; k < kMaxDL; ++k) acc[k] = 0.0f;
  const int Dv = p.head_dim_v;
  for (int sp = 0; sp < splits; ++sp) {
    const float w = m.add(part_lse[sp * total_rows + row]);
    if (w == 0.0f) continue;  // an empty split (lse = -inf); its o is 0 anyway
    const float* src = part_o + (sp * total_rows + row) * Dv;
#pragma unroll
    for (int k = 0; k < kMaxDL; ++k)
      if (lane + 32 * k < Dv) acc[k] += w * src[lane + 32 * k];
  }
  const float scale = m.out_scale();
  T* orow = static_cast<T*>(p.out) + b * p.o_batch_stride + (s.q0 + i) * p.o_row_stride + h * p.o_head_stride;
#pragma unroll
  for (int k = 0; k < kMaxDL; ++k)
    if (lane + 32 * k < Dv) orow[lane + 32 * k] = from_float<T>(acc[k] * scale);
  if (lane == 0 && p.lse) p.lse[b * p.lse_batch_stride + h * p.lse_head_stride + s.q0 + i] = m.lse();
}

}  // namespace ioattn::cuda::decode
