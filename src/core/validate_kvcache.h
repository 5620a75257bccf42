// Validation of forward_kvcache (DESIGN.md §3 for the KV cache): shapes, dtypes, devices, strides,
// aliasing and the contents of the index tensors, before anything is written. Fills the Params.
#pragma once

#include "params.h"

namespace ioattn {

struct KVCacheInputs {
  TensorView q, k_cache, v_cache, out, lse;
  KVCacheArgs args;
};

Status validate_kvcache(const KVCacheInputs& in, Params* p);

// forward_paged: varlen q over a paged cache (prefill through a block table).
struct PagedInputs {
  TensorView q, k_cache, v_cache, block_table, out, lse;
  Args args;
};
Status validate_paged(const PagedInputs& in, Params* p);

// Contents of host-resident index tensors (lengths within the capacity, batch indices and pages
// in range, leftpad <= length, distinct cache rows when appending). With p.varlen (forward_paged)
// the key lengths come from cu_seqlens_k (checked with check_cu_seqlens_host first).
Status check_kvcache_indices_host(const Params& p);
// forward_paged's host-resident indices: cu_seqlens_q / _k (against max_seqlen_q / max_seqlen_k),
// then key counts within the capacity and their pages in range.
Status check_paged_indices_host(const Params& p, int max_seqlen_k);

}  // namespace ioattn
