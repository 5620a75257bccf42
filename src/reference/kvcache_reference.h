// The float64 reference of forward_kvcache (decode semantics of flash-attn 2's
// flash_attn_with_kvcache), written independently of the fast paths: its own cache addressing
// (page table, batch index, leftpad), its own rotary formulas, then the visible keys of each
// sequence gathered into a dense tensor and handed to ref::forward / ref::standard_forward.
#pragma once

#include <vector>

#include "ioattn/ioattn.h"

namespace ioattn::ref {

struct KVCacheResult {
  // out (B, Sq, Hq, Dv), lse (B, Hq, Sq) as in Result; k_cache / v_cache: the expected contents of
  // the whole cache after the append, in the logical row-major order of the cache tensors (rows
  // that are not written keep their input values), as doubles holding dtype values.
  std::vector<double> out, lse, k_cache, v_cache;
};

// Host tensors only (index tensors too). Rotary is applied in float64 and rounded to the dtype
// (the library applies it in fp32 and rounds; both give the dtype value of the exact rotation up
// to one rounding). `standard` = true computes the attention as standard_forward does (the error
// baseline) instead of exactly. Arguments are assumed valid (the library validates).
Status forward_kvcache(const TensorView& q, const TensorView& k_cache, const TensorView& v_cache,
                       const KVCacheArgs& args, KVCacheResult* r, bool standard = false);

}  // namespace ioattn::ref
