#pragma once

#include "params.h"

namespace ioattn {

// The arguments of one call, as the API received them (backward fields unset in forward).
struct Inputs {
  TensorView q, k, v, out, lse;
  TensorView dout, dq, dk, dv;
  Args args;
};

// Checks everything DESIGN.md §3 asks before a backend runs and fills *p. Never writes outputs.
Status validate(const Inputs& in, bool backward, Params* p);

// Varlen prefix sums: start at 0, non-decreasing, each length <= max_seqlen, last <= rows.
Status check_cu_seqlens_host(const Params& p, int total_q, int total_k);
// The same for device-resident prefix sums (src/core/api.cpp routes it to the CUDA backend).
Status check_cu_seqlens_device(const Params& p, int total_q, int total_k);

}  // namespace ioattn
