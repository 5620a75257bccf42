// The building blocks of validation, shared by validate.cpp (forward/backward),
// validate_kvcache.cpp (decode, paged prefill) and the CUDA backend's own checks: one way to build a
// named error, one tensor check, one aliasing test, one check of the score modifiers.
#pragma once

#include <sstream>
#include <initializer_list>
#include <string>
#include <utility>

#include "params.h"

namespace ioattn {

// Status{code, "part1part2..."}: messages name the argument first ("k: expected ...").
template <class... T>
Status make_error(ErrorCode c, T&&... parts) {
  std::ostringstream os;
  (os << ... << parts);
  return Status{c, os.str()};
}

#define IOATTN_TRY(expr)     \
  do {                       \
    Status s_ = (expr);      \
    if (!s_.ok()) return s_; \
  } while (0)

std::string shape_str(const TensorView& t);

// Present, rank, dtype, device like `like`, non-negative sizes (< 2^31) and strides, contiguous last
// dimension; for outputs also that no two elements share memory.
Status check_tensor(const char* name, const TensorView& t, int ndim, DType dtype, const TensorView& like,
                    bool output);
// t.shape[dim] == want, else "name: expected <what> <want> like <like>, got ...".
Status expect_dim(const char* name, const TensorView& t, int dim, int64_t want, const char* what, const char* like);
// Do the byte ranges of two views intersect? (Absent views overlap nothing.)
bool overlaps(const TensorView& a, const TensorView& b);
// Outputs are written while inputs are read: no output may overlap an input or another output.
// "<output>: must not overlap <input>"; between outputs the later-named one is blamed.
using NamedView = std::pair<const char*, const TensorView*>;
Status check_disjoint(std::initializer_list<NamedView> outputs, std::initializer_list<NamedView> inputs);

// What q itself must be before anything is compared with it: present, fp16/bf16/fp32, a known device.
Status check_query(const TensorView& q);
// Head dims and head counts > 0, and GQA/MQA grouping; `k` and `v` name the key/value tensors.
Status check_heads(int64_t head_dim, int64_t head_dim_v, int64_t heads_q, int64_t heads_k, const char* k,
                   const char* v);
// Batch, row and head strides of a (B, S, H, D) view, or of a packed (T, H, D) one (batch stride 0).
void row_strides(const TensorView& t, int64_t* batch, int64_t* row, int64_t* head);
// The launch fields every entry point copies from its arguments.
inline void fill_launch(void* stream, void* workspace, size_t workspace_bytes, Params* p) {
  p->stream = stream;
  p->workspace = workspace;
  p->workspace_bytes = workspace_bytes;
}
// The Params fields every entry point fills the same way: dtype, device, sizes, GQA group.
void fill_problem(const TensorView& q, int64_t batch, int64_t heads_q, int64_t heads_k, int64_t head_dim,
                  int64_t head_dim_v, Params* p);

// The score modifiers every entry point shares (softmax scale, masks, softcap, ALiBi).
struct ScoreArgs {
  float softmax_scale;
  bool causal;
  int window_left, window_right;
  float softcap;
  const TensorView& alibi_slopes;
};
Status check_scores(const ScoreArgs& a, int64_t batch, int64_t heads_q, const TensorView& q);
// Fills scale, scale_log2, softcap, window (causal folded into window_right = 0), ALiBi.
void fill_scores(const ScoreArgs& a, int64_t head_dim, Params* p);

}  // namespace ioattn
