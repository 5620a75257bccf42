// The float64 reference: explicit scores, masks, softmax and products, written independently of the
// fast paths (its own mask and ALiBi rules, not src/core/mask.h), used as the test oracle and by
// `ioattn run --check`. Inputs are host TensorViews in any dtype (read and widened to double);
// results are contiguous double arrays. Row by row, so memory stays O(Sk + N·d) even for long
// sequences (the "chunked" reference).
#pragma once

#include <vector>

#include "ioattn/ioattn.h"

namespace ioattn::ref {

struct Result {
  // out: like the out tensor, contiguous (B, Sq, Hq, Dv) or (Tq, Hq, Dv).
  // lse: (B, Hq, Sq) or (Hq, Tq); -inf for rows that see no key.
  // dq, dk, dv: like q, k, v, contiguous (only from backward()).
  std::vector<double> out, lse, dq, dk, dv;
};

// Exact attention in float64. Uses the same Args as the library (scale, masks, softcap, ALiBi,
// dropout through Philox, GQA, varlen). `rows` (optional) restricts the query rows computed, as a
// stride: every rows-th row of each (b, h) sequence (others left NaN), for quick checks of long sequences.
Status forward(const TensorView& q, const TensorView& k, const TensorView& v, const Args& args, Result* r,
               int row_stride = 1);
// Gradients in float64 given dout (any dtype), recomputing the forward itself.
Status backward(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& dout,
                const Args& args, Result* r);

// Standard attention as frameworks compute it in the input dtype `dt` (the error baseline of
// DESIGN.md §1): S = Q Kᵀ accumulated in fp32 and rounded to dt, softmax in fp32 rounded to dt,
// O = P V accumulated in fp32 rounded to dt. For fp32 inputs everything is fp32. The backward
// rounds dP, dS, dQ, dK, dV likewise and takes D = dO·O from its own rounded O (DESIGN.md §1). Same outputs as
// forward()/backward() (as double arrays holding the low-precision values).
Status standard_forward(const TensorView& q, const TensorView& k, const TensorView& v, const Args& args,
                        Result* r, int row_stride = 1);
Status standard_backward(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& dout,
                         const Args& args, Result* r);

}  // namespace ioattn::ref
