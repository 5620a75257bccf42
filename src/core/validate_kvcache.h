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

// Contents of host-resident index tensors (lengths within the capacity, batch indices and pages
// in range, leftpad <= length, distinct cache rows when appending).
Status check_kvcache_indices_host(const Params& p);

}  // namespace ioattn
