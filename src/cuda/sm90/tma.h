// Host side of the Tensor Memory Accelerator: tensor maps (CUtensorMap) describing q, k, v in
// global memory for the sm90 kernels' bulk tensor copies (cp.async.bulk.tensor).
//
// cuTensorMapEncodeTiled is a driver-API function; it is reached through the runtime's
// cudaGetDriverEntryPointByVersion so that libioattn links only libcudart (no -lcuda).
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>
#include <cudaTypedefs.h>

#include <cstdint>

#include "core/params.h"
#include "fwd_config.h"
#include "wgmma.cuh"

namespace ioattn::cuda::sm90 {

// One (batch or varlen) tensor of 16-bit rows as TMA sees it: 4 dims, innermost first:
// (head-dim column, row, head, batch). Strides in elements; a dim of extent 1 may carry any stride.
struct TensorDesc {
  const void* base;
  int cols;            // head_dim: columns past it (up to the box) read as zeros
  int64_t rows;        // seqlen (dense) or total rows (varlen)
  int heads, batch;    // batch = 1 in varlen mode (the row index carries the sequence)
  int64_t row_stride, head_stride, batch_stride;
};

// Whether the encoder exists (a driver of CUDA 12 or newer); nullptr if not.
inline PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult q{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess) {
      cudaGetLastError();
      f = nullptr;
    }
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(f);
  }();
  return fn;
}

// Encodes `t` for boxes of box_bytes of columns (by default 128 bytes: 64 16-bit or 32 fp32
// elements) x box_rows rows x 1 head x 1 batch, by default 128-byte swizzled in shared memory (the
// layout wgmma.cuh describes), out-of-range elements read as zeros (and skipped by reductions).
// Returns false if the driver refuses (strides not multiples of 16 bytes, and the like).
inline bool encode_tensor_map(CUtensorMap* map, const TensorDesc& t, int box_rows, CUtensorMapDataType type,
                              int elem_bytes = 2, int box_bytes = kSwizzleBytes,
                              CUtensorMapSwizzle swizzle = CU_TENSOR_MAP_SWIZZLE_128B) {
  PFN_cuTensorMapEncodeTiled_v12000 encode = tensor_map_encoder();
  if (encode == nullptr) return false;
  // Strides of extent-1 dims are free; give them a legal value (a multiple of 16 bytes).
  auto stride = [](int64_t extent, int64_t s, int64_t fallback) { return extent > 1 ? s : fallback; };
  const int64_t fallback = 16 / elem_bytes;
  const int64_t rs = stride(t.rows, t.row_stride, fallback), hs = stride(t.heads, t.head_stride, fallback),
                bs = stride(t.batch, t.batch_stride, fallback);
  cuuint64_t dims[4] = {cuuint64_t(t.cols), cuuint64_t(t.rows), cuuint64_t(t.heads), cuuint64_t(t.batch)};
  cuuint64_t strides[3] = {cuuint64_t(rs * elem_bytes), cuuint64_t(hs * elem_bytes), cuuint64_t(bs * elem_bytes)};
  cuuint32_t box[4] = {cuuint32_t(box_bytes / elem_bytes), cuuint32_t(box_rows), 1, 1};
  cuuint32_t elem_strides[4] = {1, 1, 1, 1};
  const CUresult r = encode(map, type, 4, const_cast<void*>(t.base), dims, strides, box, elem_strides,
                            CU_TENSOR_MAP_INTERLEAVE_NONE, swizzle,
                            CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return r == CUDA_SUCCESS;
}

inline CUtensorMapDataType map_type(const Params& p) {
  return p.dtype == DType::BF16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
}

// The forward's three maps: Q in boxes of the query block, K and V in boxes of the key block
// (a row of fwd_config.h's kFwdTiles). False if the driver refuses any of them.
inline bool encode_qkv_maps(const Params& p, const FwdTile& tile, CUtensorMap* tq, CUtensorMap* tk, CUtensorMap* tv) {
  const CUtensorMapDataType type = map_type(p);
  const int batch = p.varlen ? 1 : p.batch;
  const int64_t rows_q = p.varlen ? p.total_q : p.seqlen_q, rows_k = p.varlen ? p.total_k : p.seqlen_k;
  return encode_tensor_map(tq, {p.q, p.head_dim, rows_q, p.heads_q, batch, p.q_row_stride, p.q_head_stride, p.q_batch_stride},
                           tile.block_m, type) &&
         encode_tensor_map(tk, {p.k, p.head_dim, rows_k, p.heads_k, batch, p.k_row_stride, p.k_head_stride, p.k_batch_stride},
                           tile.block_n, type) &&
         encode_tensor_map(tv, {p.v, p.head_dim_v, rows_k, p.heads_k, batch, p.v_row_stride, p.v_head_stride, p.v_batch_stride},
                           tile.block_n, type);
}

// The forward's O map for its TMA epilogue: boxes of 64 rows (one consumer warpgroup's), columns
// past head_dim_v and rows past the (dense) sequence clipped. False if the driver refuses it.
inline bool encode_o_map(const Params& p, CUtensorMap* to) {
  const int batch = p.varlen ? 1 : p.batch;
  const int64_t rows = p.varlen ? p.total_q : p.seqlen_q;
  return encode_tensor_map(to, {p.out, p.head_dim_v, rows, p.heads_q, batch, p.o_row_stride, p.o_head_stride, p.o_batch_stride},
                           64, map_type(p));
}

}  // namespace ioattn::cuda::sm90
