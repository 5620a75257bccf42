// Hopper (sm_90a) building blocks of the sm90 kernels: wgmma shared-memory descriptors, the
// warpgroup fences, register reallocation, and the wgmma shapes themselves (wgmma_ops.inc,
// generated). TMA copies and mbarriers come from CCCL's cuda::ptx; it has no wgmma wrappers.
//
// Shared-memory tiles are kept in the layout TMA writes with CU_TENSOR_MAP_SWIZZLE_128B: a tile of
// R rows x 64 16-bit elements is R rows of 128 bytes, and the 16-byte chunk c of row r sits at
// chunk position c ^ (r % 8); 8-row groups (1024 bytes, the swizzle atom) follow each other. Wider
// rows (head dims 128, 256) are split into 64-column tiles placed one after the other. The tile
// bases are 1024-byte aligned, so the hardware's swizzle (a function of the address bits) matches.
#pragma once

#include <cstdint>

#include "wgmma_ops.inc"

namespace ioattn::cuda::sm90 {

constexpr int kSwizzleBytes = 128;  // one row of a 64-column tile
constexpr int kAtomBytes = 1024;    // 8 rows: the 128-byte swizzle's period

// wgmma matrix descriptor (PTX ISA, "Matrix Descriptor Format"): start address, leading and stride
// byte offsets (all >> 4), swizzle mode 1 = 128-byte.
//   K-major operand (Q as A, K as B: the reduction dim is the contiguous one): 8-row groups at
//   SBO = 1024; LBO is unused by the 128-byte swizzle (1 by convention). Successive 16-wide k-steps
//   inside a 64-column tile advance the start address by 32 bytes.
//   N-major operand (V as B of O += P V: head dim contiguous): the 64-column tiles of the head dim
//   at LBO = rows * 128 bytes, 8-key groups at SBO = 1024. k-steps of 16 keys advance by 2048 bytes.
__device__ __forceinline__ uint64_t make_desc(uint32_t smem_addr, uint32_t lbo_bytes, uint32_t sbo_bytes) {
  return uint64_t((smem_addr & 0x3FFFF) >> 4) | (uint64_t((lbo_bytes >> 4) & 0x3FFF) << 16) |
         (uint64_t((sbo_bytes >> 4) & 0x3FFF) << 32) | (uint64_t(1) << 62);
}
// The descriptor of the tile `bytes` further on: the start address field (bits 0-13) holds the
// address >> 4, and every shared-memory address fits it, so a plain add never carries out of it.
// Kernels make one descriptor per operand tile and add each k-step's offset (a constant): two integer
// adds instead of make_desc's masks and shifts on a run-time address per wgmma (the forward at d 192,
// 64-key blocks: +8%, H200 session 6).
__device__ __forceinline__ uint64_t desc_add(uint64_t desc, uint32_t bytes) { return desc + (bytes >> 4); }

// The dynamic shared memory rounded up to 1024 bytes (the 128-byte swizzle's atom). Computed as an
// offset from the __shared__ array, not through an integer cast, so the compiler still knows the
// pointer is shared memory and emits st.shared / ld.shared: the integer round trip made it emit
// generic stores and loads (ncu's SASS view of the backward showed ST.E / LD on the dS and dQ
// staging tiles).
__device__ __forceinline__ unsigned char* smem_align_1024(unsigned char* raw) {
  const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(raw));
  return raw + ((1024u - (a & 1023u)) & 1023u);
}

// Orders this warpgroup's register writes before the wgmma instructions that read them (the O
// rescale before O += P V, the P fragments).
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int kPending>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
}

// wgmma writes its accumulators asynchronously; the compiler sees them written at the issuing asm.
// Tying every accumulator register to an empty volatile asm after wgmma_wait (and before the
// issue) keeps the compiler from moving reads or writes of them across the wait (CUTLASS's
// warpgroup_fence_operand does the same).
template <int kR, int kC>
__device__ __forceinline__ void fence_operands(float (&x)[kR][kC]) {
#pragma unroll
  for (int i = 0; i < kR; ++i)
#pragma unroll
    for (int j = 0; j < kC; ++j) asm volatile("" : "+f"(x[i][j])::"memory");
}

// Register reallocation between warpgroups (setmaxnreg): the producer gives registers back, the
// consumers take them. Needs the kernel's register cap at entry (__launch_bounds__(threads, 1)).
template <int kRegs>
__device__ __forceinline__ void regs_dealloc() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}
template <int kRegs>
__device__ __forceinline__ void regs_alloc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}

// Generic-proxy shared-memory writes made visible to the async proxy: before wgmma reads them as an
// operand (the backward's dS^T) or a TMA bulk copy reads them (the backward's dQ parts, the
// forward's staged O).
__device__ __forceinline__ void fence_proxy_async_smem() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

}  // namespace ioattn::cuda::sm90
