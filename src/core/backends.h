// What each backend offers to dispatch (src/core/api.cpp). A backend receives a validated Params
// (src/core/validate.cpp): shapes, dtypes, devices, strides and index ranges are already checked,
// and nothing was written. It adds only the checks of its own limits (GPU head dims, alignment).
#pragma once

#include <cstddef>
#include <string>

#include "params.h"

namespace ioattn {

namespace cpu {
Status forward(const Params& p);
Status backward(const Params& p);
std::string features();  // CPU features the backend found and uses, e.g. "avx2 fma avx512f avx512bf16"
}  // namespace cpu

namespace cuda {
// Compiled in only with IOATTN_WITH_CUDA; src/core/api.cpp reports Unsupported otherwise.
// select() is the one selector: it answers "can it run?" (ok or a named error) and "which kernel?"
// (its description), so support checks and the launch never disagree.
Status select(const Params& p, bool backward, std::string* kernel_name);
size_t workspace_size(const Params& p, bool backward);
Status forward(const Params& p);
Status backward(const Params& p);
// Varlen index checks for device-resident cu_seqlens (copies them to the host when the stream is
// not being captured; see the CUDA backend).
Status check_cu_seqlens(const Params& p, int total_q, int total_k);
int device_count();
std::string devices();
}  // namespace cuda

// ---- Decoding over a KV cache (forward_kvcache; Params.kvcache set) ----
namespace cpu {
// Appends k_new/v_new (with rotary) and runs split-KV attention over the cache (src/cpu/decode.cpp).
Status forward_kvcache(const Params& p);
}  // namespace cpu
namespace cuda {
// "can it run / which kernel" for decode; *splits gets the split count it will use.
Status select_kvcache(const Params& p, std::string* kernel_name, int* splits);
size_t kvcache_workspace_size(const Params& p);
Status forward_kvcache(const Params& p);
// Copies the index tensors (cache_seqlens, cache_batch_idx, cache_leftpad, block_table) to the
// host and checks them, unless the stream is capturing (then kernels' clamping is the guard).
Status check_kvcache_indices(const Params& p);
// forward_paged: copies cu_seqlens_q/k and the block table to the host and checks them (prefix
// sums, key counts within the capacity, pages in range), unless the stream is capturing.
Status check_paged_indices(const Params& p, int max_seqlen_k);
}  // namespace cuda

}  // namespace ioattn
