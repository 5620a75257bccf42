// Thin wrappers over the sm80 instructions the kernels use (they run unchanged on sm_90):
//   mma.sync.m16n8k16 (fp16/bf16 in, fp32 accumulate), ldmatrix (.x4, plain and .trans) and
//   cp.async (16-byte, with zero-fill for ragged tails). Plus the 16-bit type traits.
//
// Fragment layouts of mma.m16n8k16 (PTX ISA "Matrix Fragments for mma.m16n8k16"), with
// g = lane / 4 and t = lane % 4:
//   C/D (16x8 fp32, 4 floats):  c[0], c[1] = (row g,     cols 2t, 2t+1)
//                               c[2], c[3] = (row g + 8, cols 2t, 2t+1)
//   A (16x16, 4 x 2 halves):    a[0] = (g, 2t..2t+1)   a[1] = (g+8, 2t..)   a[2] = (g, 2t+8..)   a[3] = (g+8, 2t+8..)
//   B (16x8,  2 x 2 halves):    b[0] = (k 2t..2t+1, n g)                    b[1] = (k 2t+8.., n g)
// so the C fragments of two adjacent 8-column tiles, converted to 16 bits, are exactly the A
// fragment of the next product (P stays in registers between S = QK^T and O += PV).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace ioattn::cuda {

// Per-dtype pieces: the packed pair type and conversions.
template <class T>
struct Half2Of;
template <>
struct Half2Of<__half> {
  using type = __half2;
  static __device__ __forceinline__ type from_floats(float lo, float hi) { return __floats2half2_rn(lo, hi); }
  static __device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
};
template <>
struct Half2Of<__nv_bfloat16> {
  using type = __nv_bfloat162;
  static __device__ __forceinline__ type from_floats(float lo, float hi) { return __floats2bfloat162_rn(lo, hi); }
  static __device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
};

// Two floats rounded to T and packed into one 32-bit register (lo in the low half).
template <class T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  auto h2 = Half2Of<T>::from_floats(lo, hi);
  return *reinterpret_cast<uint32_t*>(&h2);
}

// fp32 accumulator fragments of a 16-row tile (8 columns per fragment) -> 16-bit A-operand fragments
// of a product with K = those columns (16 per k-step). The mma.sync / wgmma accumulator layout is
// the A layout, so this is a rounding and packing, no data exchange between threads: how P (and dS)
// feed the next product straight from registers.
template <class T, int kK>
__device__ __forceinline__ void pack_a_fragments(const float (&acc)[2 * kK][4], uint32_t (&a)[kK][4]) {
#pragma unroll
  for (int kk = 0; kk < kK; ++kk) {
    a[kk][0] = pack2<T>(acc[2 * kk][0], acc[2 * kk][1]);
    a[kk][1] = pack2<T>(acc[2 * kk][2], acc[2 * kk][3]);
    a[kk][2] = pack2<T>(acc[2 * kk + 1][0], acc[2 * kk + 1][1]);
    a[kk][3] = pack2<T>(acc[2 * kk + 1][2], acc[2 * kk + 1][3]);
  }
}

// d += a * b on one 16x8x16 tile.
template <class T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);

template <>
__device__ __forceinline__ void mma_16816<__half>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <>
__device__ __forceinline__ void mma_16816<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                                         uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Four 8x8 16-bit matrices; lane l gives the address of row (l % 8) of matrix (l / 8) and receives
// element (l / 4, 2 (l % 4) .. +1) of each matrix in r[0..3].
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t smem_row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_row));
}
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* smem_row) {
  ldmatrix_x4(r, smem_addr(smem_row));
}

// The same, transposed: lane l receives elements (2 (l % 4) .. +1, l / 4) of each matrix.
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t smem_row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_row));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* smem_row) {
  ldmatrix_x4_trans(r, smem_addr(smem_row));
}

// The inverse of ldmatrix_x4 (sm_90): lane l gives the address of row (l % 8) of matrix (l / 8) and
// element (l / 4, 2 (l % 4) .. +1) of each matrix in r0..r3 (an mma / wgmma accumulator fragment,
// packed to 16 bits), and the four matrices' rows are stored, 16 bytes each.
__device__ __forceinline__ void stmatrix_x4(uint32_t smem_row, uint32_t r0, uint32_t r1, uint32_t r2, uint32_t r3) {
  asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1,%2,%3,%4};\n" ::"r"(smem_row), "r"(r0), "r"(r1),
               "r"(r2), "r"(r3)
               : "memory");
}

// stmatrix_x4 with .trans: matrix i's 8 x 8 fragment (register i: row lane / 4, columns 2 (lane % 4),
// + 1) stored transposed, so that the 16 bytes at lane l's address (row l % 8 of matrix l / 8)
// receive column l % 8 of matrix l / 8.
__device__ __forceinline__ void stmatrix_x4_trans(uint32_t smem_row, uint32_t r0, uint32_t r1, uint32_t r2, uint32_t r3) {
  asm volatile("stmatrix.sync.aligned.m8n8.x4.trans.shared.b16 [%0], {%1,%2,%3,%4};\n" ::"r"(smem_row), "r"(r0), "r"(r1),
               "r"(r2), "r"(r3)
               : "memory");
}

// 16-byte global -> shared copy that bypasses L1 (.cg). When !valid nothing is read (src-size 0)
// and the 16 bytes are zero-filled: ragged row tails and padded head-dim columns become zeros.
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, bool valid) {
  const int src_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(smem)), "l"(gmem),
               "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
// Wait until at most N committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

}  // namespace ioattn::cuda
