// The sm90 forward kernel (Hopper: TMA + wgmma, warp-specialised), and its launcher run_fwd<T, D>.
//
// One CTA per (query block of 128 rows, query head, batch), 3 warpgroups (fwd_config.h):
//   producer   warpgroup 0 gives its registers back (setmaxnreg) and one thread issues the TMA
//              copies: the Q tile once, then K_n and V_n for each key block into a ring of kStages
//              buffers. "full" mbarriers complete when a copy's bytes land; "empty" mbarriers when
//              all 8 consumer warps are done reading a buffer.
//   consumers  warpgroups 1 and 2, 64 query rows each, with 240 registers per thread:
//                wait K_n; S = Q K_n^T  (wgmma, A and B from shared memory, fp32 accumulators)
//                release K_n; scores -> log2 units / mask / online softmax (common/ helpers, the
//                accumulator fragments have mma.sync's layout); rescale O
//                wait V_n; O += P V_n   (wgmma, P from registers: the accumulator layout is the
//                A-operand layout, as on sm80); release V_n
//              The two consumer warpgroups run out of step by themselves, so one's softmax
//              overlaps the other's products.
//   epilogue   O / l -> input dtype, straight from registers to global memory; LSE in fp32.
// Dropout is not served here (backend.cu sends it to the sm80 kernel).
#pragma once

#include <cuda/ptx>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <string>

#include "cuda/common/mma.cuh"
#include "cuda/common/seq.cuh"
#include "cuda/common/softmax.cuh"
#include "fwd_config.h"
#include "tma.h"
#include "wgmma.cuh"

namespace ioattn::cuda::sm90 {

namespace ptx = ::cuda::ptx;

constexpr int kFwdThreads = 384;       // producer warpgroup + 2 consumer warpgroups
constexpr int kProducerRegs = 24;      // setmaxnreg: 128 x 24 + 256 x 240 <= 64K registers
constexpr int kConsumerRegs = 240;
constexpr int kConsumerWarps = 8;

// Byte offsets in the (1024-byte aligned) dynamic shared memory.
template <int kD>
struct FwdSmem {
  static constexpr int kBM = FwdTileFor<kD>::block_m, kBN = FwdTileFor<kD>::block_n;
  static constexpr int kStages = FwdTileFor<kD>::stages;
  static constexpr int kChunks = kD / 64;  // 64-column tiles per row (wgmma.cuh)
  static constexpr int kQBytes = kBM * kD * 2;
  static constexpr int kKVBytes = kBN * kD * 2;
  static constexpr int kQ = 0;
  static constexpr int kK = kQ + kQBytes;
  static constexpr int kV = kK + kStages * kKVBytes;
  static constexpr int kBar = kV + kStages * kKVBytes;
  static constexpr int kBars = 1 + 4 * kStages;  // q_full, k_full[], v_full[], k_empty[], v_empty[]
  static constexpr int kBytes = kBar + 8 * kBars + 1024;  // + room to align the base to 1024
  static_assert(kBytes <= 227 * 1024, "sm90 shared memory per block");
};

__device__ __forceinline__ void wait_barrier(uint64_t* bar, uint32_t parity) {
  while (!ptx::mbarrier_try_wait_parity(bar, parity)) {
  }
}

// kMods: the call uses softcap or ALiBi (compiled out otherwise, as in the sm80 kernel).
template <class T, int kD, bool kMods>
__global__ void __launch_bounds__(kFwdThreads, 1)
    fwd_kernel(const __grid_constant__ Params p, const __grid_constant__ CUtensorMap tm_q,
               const __grid_constant__ CUtensorMap tm_k, const __grid_constant__ CUtensorMap tm_v) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using L = FwdSmem<kD>;
  constexpr int kBM = L::kBM, kBN = L::kBN, kStages = L::kStages;
  constexpr int kNT = kBN / 8;  // 8-key column tiles of S
  constexpr int kDT = kD / 8;   // 8-column tiles of O

  extern __shared__ unsigned char smem_raw[];
  unsigned char* smem = reinterpret_cast<unsigned char*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
  const uint32_t smem_base = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  uint64_t* q_full = reinterpret_cast<uint64_t*>(smem + L::kBar);
  uint64_t* k_full = q_full + 1;
  uint64_t* v_full = k_full + kStages;
  uint64_t* k_empty = v_full + kStages;
  uint64_t* v_empty = k_empty + kStages;

  // Query blocks reversed (as in sm80): under a causal mask the last ones see the most keys.
  const int h = blockIdx.y, b = blockIdx.z;
  const int m_block = gridDim.x - 1 - blockIdx.x;
  const SeqBounds sb = seq_bounds(p, b);
  const int m0 = m_block * kBM;
  if (m0 >= sb.sq) return;  // beyond this (varlen) sequence: the whole CTA leaves together
  const int m_last = min(m0 + kBM, sb.sq) - 1;
  const ScoreMod mod = ScoreMod::make(p, b, h, sb.sq, sb.sk);
  const int key_begin = mod.mask.first_key(m0);
  const int key_end = mod.mask.end_key(m_last, sb.sk);
  const int n_begin = key_begin / kBN;
  const int n_end = key_end > key_begin ? (key_end + kBN - 1) / kBN : n_begin;

  const int warp = __shfl_sync(0xffffffffu, static_cast<int>(threadIdx.x) / 32, 0);  // warp-uniform
  const int lane = threadIdx.x % 32;
  if (threadIdx.x == 0) {
    ptx::mbarrier_init(q_full, 1);
    for (int s = 0; s < kStages; ++s) {
      ptx::mbarrier_init(k_full + s, 1);
      ptx::mbarrier_init(v_full + s, 1);
      ptx::mbarrier_init(k_empty + s, kConsumerWarps);
      ptx::mbarrier_init(v_empty + s, kConsumerWarps);
    }
    ptx::fence_mbarrier_init(ptx::sem_release, ptx::scope_cluster);
  }
  __syncthreads();

  if (warp < 4) {  // ---- producer warpgroup ----
    regs_dealloc<kProducerRegs>();
    if (warp == 0 && lane == 0 && n_begin < n_end) {
      const int hk = h / p.group;
      const int bt = p.varlen ? 0 : b;  // varlen: the row index carries the sequence
      const int q_row = static_cast<int>(sb.q_row0) + m0, k_row = static_cast<int>(sb.k_row0);
      ptx::mbarrier_arrive_expect_tx(ptx::sem_release, ptx::scope_cta, ptx::space_shared, q_full, L::kQBytes);
#pragma unroll
      for (int c = 0; c < L::kChunks; ++c) {
        const int32_t coords[4] = {c * 64, q_row, h, bt};
        ptx::cp_async_bulk_tensor(ptx::space_cluster, ptx::space_global, smem + L::kQ + c * kBM * kSwizzleBytes,
                                  &tm_q, coords, q_full);
      }
      for (int n = n_begin, it = 0; n < n_end; ++n, ++it) {
        const int s = it % kStages;
        const uint32_t parity = ((it / kStages) & 1) ^ 1;  // the consumers' release one round ago
        if (it >= kStages) wait_barrier(k_empty + s, parity);
        ptx::mbarrier_arrive_expect_tx(ptx::sem_release, ptx::scope_cta, ptx::space_shared, k_full + s, L::kKVBytes);
#pragma unroll
        for (int c = 0; c < L::kChunks; ++c) {
          const int32_t coords[4] = {c * 64, k_row + n * kBN, hk, bt};
          ptx::cp_async_bulk_tensor(ptx::space_cluster, ptx::space_global,
                                    smem + L::kK + s * L::kKVBytes + c * kBN * kSwizzleBytes, &tm_k, coords, k_full + s);
        }
        if (it >= kStages) wait_barrier(v_empty + s, parity);
        ptx::mbarrier_arrive_expect_tx(ptx::sem_release, ptx::scope_cta, ptx::space_shared, v_full + s, L::kKVBytes);
#pragma unroll
        for (int c = 0; c < L::kChunks; ++c) {
          const int32_t coords[4] = {c * 64, k_row + n * kBN, hk, bt};
          ptx::cp_async_bulk_tensor(ptx::space_cluster, ptx::space_global,
                                    smem + L::kV + s * L::kKVBytes + c * kBN * kSwizzleBytes, &tm_v, coords, v_full + s);
        }
      }
    }
    return;
  }

  // ---- consumer warpgroups ----
  regs_alloc<kConsumerRegs>();
  const int cwg = warp / 4 - 1;  // 0 or 1: query rows [64 cwg, 64 cwg + 64) of the block
  const int row0 = m0 + 64 * cwg + 16 * (warp % 4) + lane / 4;  // sequence row of s[.][0..1]; +8 for [2..3]
  const int wg_m0 = m0 + 64 * cwg;
  const int wg_m_last = max(wg_m0, min(wg_m0 + 63, m_last));

  OnlineSoftmax softmax;
  softmax.init();
  float o[kDT][4];
#pragma unroll
  for (int dt = 0; dt < kDT; ++dt) o[dt][0] = o[dt][1] = o[dt][2] = o[dt][3] = 0.0f;

  if (n_begin < n_end) wait_barrier(q_full, 0);
  const uint32_t q_addr = smem_base + L::kQ + 64 * cwg * kSwizzleBytes;
  for (int n = n_begin, it = 0; n < n_end; ++n, ++it) {
    const int s = it % kStages;
    const uint32_t parity = (it / kStages) & 1;

    // S = Q K_n^T: kD / 16 k-steps of m64 x n(kBN) x k16.
    float sacc[kNT][4];
    wait_barrier(k_full + s, parity);
    const uint32_t k_addr = smem_base + L::kK + s * L::kKVBytes;
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kD / 16; ++kk) {
      const uint32_t off = (kk % 4) * 32;  // 16 columns = 32 bytes into the 64-column tile
      const uint64_t da = make_desc(q_addr + (kk / 4) * kBM * kSwizzleBytes + off, 16, kAtomBytes);
      const uint64_t db = make_desc(k_addr + (kk / 4) * kBN * kSwizzleBytes + off, 16, kAtomBytes);
      wgmma_ss<T, 0>(sacc, da, db, kk > 0 ? 1 : 0);
    }
    wgmma_commit();
    wgmma_wait<0>();
    fence_operands(sacc);
    __syncwarp();
    if (lane == 0) ptx::mbarrier_arrive(k_empty + s);

    const int col0 = n * kBN + 2 * (lane % 4);
    const bool boundary = mod.block_needs_mask(wg_m0, wg_m_last, n * kBN, kBN);
    float alpha[2];
    if (kMods) {  // scores to log2 units here (softcap / ALiBi are not linear in the score)
      if (boundary)
        mod.apply<true, true>(sacc, row0, col0);
      else
        mod.apply<false, true>(sacc, row0, col0);
      softmax.update(sacc, alpha);
    } else {  // raw scores; the scale is folded into the exponent
      if (boundary) mod.apply_mask(sacc, row0, col0);
      softmax.update<true>(sacc, alpha, mod.scale_log2);
    }
    if (__any_sync(0xffffffffu, alpha[0] != 1.0f || alpha[1] != 1.0f)) {
#pragma unroll
      for (int dt = 0; dt < kDT; ++dt) {
        o[dt][0] *= alpha[0]; o[dt][1] *= alpha[0];
        o[dt][2] *= alpha[1]; o[dt][3] *= alpha[1];
      }
    }
    uint32_t pk[kBN / 16][4];  // P in the A-operand layout, 16 keys per k-step
#pragma unroll
    for (int kk = 0; kk < kBN / 16; ++kk) {
      pk[kk][0] = pack2<T>(sacc[2 * kk][0], sacc[2 * kk][1]);
      pk[kk][1] = pack2<T>(sacc[2 * kk][2], sacc[2 * kk][3]);
      pk[kk][2] = pack2<T>(sacc[2 * kk + 1][0], sacc[2 * kk + 1][1]);
      pk[kk][3] = pack2<T>(sacc[2 * kk + 1][2], sacc[2 * kk + 1][3]);
    }

    // O += P V_n: kBN / 16 k-steps of m64 x n(kD) x k16, V read N-major.
    wait_barrier(v_full + s, parity);
    const uint32_t v_addr = smem_base + L::kV + s * L::kKVBytes;
    fence_operands(o);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kBN / 16; ++kk) {
      const uint64_t db = make_desc(v_addr + kk * 16 * kSwizzleBytes, kBN * kSwizzleBytes, kAtomBytes);
      wgmma_rs<T, 1>(o, pk[kk], db, 1);
    }
    wgmma_commit();
    wgmma_wait<0>();
    fence_operands(o);
    __syncwarp();
    if (lane == 0) ptx::mbarrier_arrive(v_empty + s);
  }

  // Epilogue: O / l straight from the fragments (a quad writes 16 contiguous bytes of a row).
  float o_scale[2], lse[2];
  softmax.finalize(1.0f, o_scale, lse);
  T* gO = static_cast<T*>(p.out) + b * p.o_batch_stride + sb.q_row0 * p.o_row_stride + h * p.o_head_stride;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = row0 + 8 * r;
    if (row >= sb.sq) continue;
    T* dst = gO + int64_t(row) * p.o_row_stride;
#pragma unroll
    for (int dt = 0; dt < kDT; ++dt) {
      const int col = dt * 8 + 2 * (lane % 4);
      if (col < p.head_dim_v)
        *reinterpret_cast<uint32_t*>(dst + col) = pack2<T>(o[dt][2 * r] * o_scale[r], o[dt][2 * r + 1] * o_scale[r]);
    }
    if (p.lse != nullptr && lane % 4 == 0)
      p.lse[b * p.lse_batch_stride + h * p.lse_head_stride + sb.q_row0 + row] = lse[r];
  }
#else
  __trap();  // built for sm_90a only; dispatch never launches it elsewhere
#endif
}

template <class T, int kD, bool kMods>
cudaError_t launch_fwd_kernel(const Params& p, cudaStream_t stream, int m_blocks, const CUtensorMap& tq,
                              const CUtensorMap& tk, const CUtensorMap& tv) {
  constexpr int kSmem = FwdSmem<kD>::kBytes;
  auto kernel = fwd_kernel<T, kD, kMods>;
  // The opt-in to more than 48 KB of dynamic shared memory is per function and device: once per device.
  static std::atomic<uint64_t> configured{0};
  int device = 0;
  cudaError_t e = cudaGetDevice(&device);
  const uint64_t bit = device < 64 ? uint64_t(1) << device : 0;
  if (e == cudaSuccess && !(configured.load(std::memory_order_acquire) & bit)) {
    e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem);
    if (e == cudaSuccess) configured.fetch_or(bit, std::memory_order_release);
  }
  if (e != cudaSuccess) return e;
  kernel<<<dim3(m_blocks, p.heads_q, p.batch), kFwdThreads, kSmem, stream>>>(p, tq, tk, tv);
  return cudaGetLastError();
}

template <class T, int kD>
Status run_fwd(const Params& p, cudaStream_t stream) {
  constexpr int kBM = FwdTileFor<kD>::block_m;
  const int m_blocks = (p.seqlen_q + kBM - 1) / kBM;  // varlen: the longest sequence
  if (m_blocks == 0 || p.batch == 0) return Status::Ok();
  CUtensorMap tq, tk, tv;
  if (!encode_qkv_maps(p, kD, &tq, &tk, &tv))
    return Status{ErrorCode::Unsupported, "sm90 forward: the driver refused a tensor map for these strides"};
  const bool mods = p.softcap > 0.0f || p.alibi_slopes != nullptr;
  const cudaError_t e = mods ? launch_fwd_kernel<T, kD, true>(p, stream, m_blocks, tq, tk, tv)
                             : launch_fwd_kernel<T, kD, false>(p, stream, m_blocks, tq, tk, tv);
  if (e != cudaSuccess)
    return Status{ErrorCode::BackendError,
                  std::string("cuda forward (sm90, head dim ") + std::to_string(kD) + "): " + cudaGetErrorString(e)};
  return Status::Ok();
}

}  // namespace ioattn::cuda::sm90
