// Validation of every entry point (DESIGN.md §3): shapes, dtypes, devices, strides, index ranges.
// Runs before any backend is reached, so nothing is written when it fails. Fills the Params.
#include "validate.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <sstream>
#include <vector>

#include "backends.h"
#include "checks.h"
#include "philox.h"

namespace ioattn {

Status validate(const Inputs& in, bool backward, Params* p_out) {
  const TensorView& q = in.q;
  const TensorView& k = in.k;
  const TensorView& v = in.v;
  const Args& a = in.args;
  IOATTN_TRY(check_query(q));

  const bool varlen = a.cu_seqlens_q.defined() || a.cu_seqlens_k.defined();
  if (varlen && !(a.cu_seqlens_q.defined() && a.cu_seqlens_k.defined()))
    return make_error(ErrorCode::InvalidShape, a.cu_seqlens_q.defined() ? "cu_seqlens_k" : "cu_seqlens_q",
               ": varlen mode needs both cu_seqlens_q and cu_seqlens_k");
  const int nd = varlen ? 3 : 4;
  const int row = varlen ? 0 : 1;  // the sequence (token) dimension
  IOATTN_TRY(check_tensor("q", q, nd, q.dtype, q, false));
  IOATTN_TRY(check_tensor("k", k, nd, q.dtype, q, false));
  IOATTN_TRY(check_tensor("v", v, nd, q.dtype, q, false));

  const int64_t D = q.shape[nd - 1], Dv = v.shape[nd - 1];
  const int64_t Hq = q.shape[nd - 2], Hk = k.shape[nd - 2];
  IOATTN_TRY(check_heads(D, Dv, Hq, Hk, "k", "v"));
  IOATTN_TRY(expect_dim("k", k, nd - 1, D, "head_dim", "q"));
  IOATTN_TRY(expect_dim("v", v, nd - 2, Hk, "heads", "k"));
  IOATTN_TRY(expect_dim("v", v, row, k.shape[row], varlen ? "total_k" : "seqlen_k", "k"));
  if (!varlen) {
    IOATTN_TRY(expect_dim("k", k, 0, q.shape[0], "batch", "q"));
    IOATTN_TRY(expect_dim("v", v, 0, q.shape[0], "batch", "q"));
  }

  // Outputs, shaped like their inputs.
  const TensorView& out = in.out;
  IOATTN_TRY(check_tensor("out", out, nd, q.dtype, q, !backward));
  for (int i = 0; i < nd - 1; ++i) IOATTN_TRY(expect_dim("out", out, i, q.shape[i], "size", "q"));
  IOATTN_TRY(expect_dim("out", out, nd - 1, Dv, "head_dim", "v"));

  int64_t batch = varlen ? a.cu_seqlens_q.shape[0] - 1 : q.shape[0];
  if (varlen) {
    for (auto [name, cu] : {std::pair<const char*, const TensorView*>{"cu_seqlens_q", &a.cu_seqlens_q},
                            {"cu_seqlens_k", &a.cu_seqlens_k}}) {
      IOATTN_TRY(check_tensor(name, *cu, 1, DType::I32, q, false));
      if (cu->shape[0] < 1) return make_error(ErrorCode::InvalidShape, name, ": expected batch + 1 >= 1 entries, got 0");
    }
    if (a.cu_seqlens_k.shape[0] != a.cu_seqlens_q.shape[0])
      return make_error(ErrorCode::InvalidShape, "cu_seqlens_k: expected ", a.cu_seqlens_q.shape[0],
                 " entries like cu_seqlens_q, got ", a.cu_seqlens_k.shape[0]);
    if (a.max_seqlen_q < 0) return make_error(ErrorCode::InvalidValue, "max_seqlen_q: expected >= 0, got ", a.max_seqlen_q);
    if (a.max_seqlen_k < 0) return make_error(ErrorCode::InvalidValue, "max_seqlen_k: expected >= 0, got ", a.max_seqlen_k);
  }

  // LSE: fp32, contiguous. Optional in forward, required in backward.
  const TensorView& lse = in.lse;
  if (lse.defined() || backward) {
    IOATTN_TRY(check_tensor("lse", lse, varlen ? 2 : 3, DType::F32, q, !backward));
    if (varlen) {
      IOATTN_TRY(expect_dim("lse", lse, 0, Hq, "heads", "q"));
      IOATTN_TRY(expect_dim("lse", lse, 1, q.shape[0], "total_q", "q"));
    } else {
      IOATTN_TRY(expect_dim("lse", lse, 0, batch, "batch", "q"));
      IOATTN_TRY(expect_dim("lse", lse, 1, Hq, "heads", "q"));
      IOATTN_TRY(expect_dim("lse", lse, 2, q.shape[1], "seqlen_q", "q"));
    }
    if (!lse.is_contiguous()) return make_error(ErrorCode::InvalidStride, "lse: expected a contiguous tensor");
  }

  if (backward) {
    IOATTN_TRY(check_tensor("dout", in.dout, nd, q.dtype, q, false));
    for (int i = 0; i < nd; ++i) IOATTN_TRY(expect_dim("dout", in.dout, i, out.shape[i], "size", "out"));
    const std::pair<const char*, const TensorView*> grads[] = {{"dq", &in.dq}, {"dk", &in.dk}, {"dv", &in.dv}};
    const TensorView* likes[] = {&q, &k, &v};
    const char* like_names[] = {"q", "k", "v"};
    for (int g = 0; g < 3; ++g) {
      IOATTN_TRY(check_tensor(grads[g].first, *grads[g].second, nd, q.dtype, q, true));
      for (int i = 0; i < nd; ++i)
        IOATTN_TRY(expect_dim(grads[g].first, *grads[g].second, i, likes[g]->shape[i], "size", like_names[g]));
    }
    // Gradients are written while inputs are read.
    IOATTN_TRY(check_disjoint({{"dq", &in.dq}, {"dk", &in.dk}, {"dv", &in.dv}},
                              {{"q", &q}, {"k", &k}, {"v", &v}, {"out", &out}, {"dout", &in.dout}, {"lse", &lse}}));
  } else {
    IOATTN_TRY(check_disjoint({{"out", &out}, {"lse", &lse}}, {{"q", &q}, {"k", &k}, {"v", &v}}));
  }

  // Scalars.
  const ScoreArgs scores{a.softmax_scale, a.causal, a.window_left, a.window_right, a.softcap, a.alibi_slopes};
  IOATTN_TRY(check_scores(scores, batch, Hq, q));
  if (!(a.dropout_p >= 0.0f && a.dropout_p < 1.0f))
    return make_error(ErrorCode::InvalidValue, "dropout_p: expected 0 <= p < 1, got ", a.dropout_p);

  Params p{};
  fill_problem(q, batch, Hq, Hk, D, Dv, &p);
  p.varlen = varlen;
  p.seqlen_q = varlen ? a.max_seqlen_q : static_cast<int>(q.shape[1]);
  p.seqlen_k = varlen ? a.max_seqlen_k : static_cast<int>(k.shape[1]);
  p.cu_seqlens_q = varlen ? static_cast<const int32_t*>(a.cu_seqlens_q.data) : nullptr;
  p.cu_seqlens_k = varlen ? static_cast<const int32_t*>(a.cu_seqlens_k.data) : nullptr;
  p.total_q = varlen ? static_cast<int>(q.shape[0]) : 0;
  p.total_k = varlen ? static_cast<int>(k.shape[0]) : 0;

  p.q = q.data; row_strides(q, &p.q_batch_stride, &p.q_row_stride, &p.q_head_stride);
  p.k = k.data; row_strides(k, &p.k_batch_stride, &p.k_row_stride, &p.k_head_stride);
  p.v = v.data; row_strides(v, &p.v_batch_stride, &p.v_row_stride, &p.v_head_stride);
  p.out = out.data; row_strides(out, &p.o_batch_stride, &p.o_row_stride, &p.o_head_stride);
  p.lse = static_cast<float*>(lse.data);
  p.lse_batch_stride = varlen ? 0 : Hq * q.shape[1];
  p.lse_head_stride = varlen ? q.shape[0] : q.shape[1];
  if (backward) {
    p.dout = in.dout.data; row_strides(in.dout, &p.do_batch_stride, &p.do_row_stride, &p.do_head_stride);
    p.dq = in.dq.data; row_strides(in.dq, &p.dq_batch_stride, &p.dq_row_stride, &p.dq_head_stride);
    p.dk = in.dk.data; row_strides(in.dk, &p.dk_batch_stride, &p.dk_row_stride, &p.dk_head_stride);
    p.dv = in.dv.data; row_strides(in.dv, &p.dv_batch_stride, &p.dv_row_stride, &p.dv_head_stride);
  }

  fill_scores(scores, D, &p);
  p.dropout_p = a.dropout_p;
  p.rp_dropout = 1.0f / (1.0f - a.dropout_p);
  p.dropout_threshold = dropout_threshold(a.dropout_p);
  p.seed = a.seed;
  p.offset = a.offset;
  p.deterministic = a.deterministic;
  fill_launch(a.stream, a.workspace, a.workspace_bytes, &p);

  // Varlen index ranges. Host-resident prefix sums are checked here; device-resident ones by the
  // CUDA backend (it must copy them).
  if (varlen) {
    const int total_q = static_cast<int>(q.shape[0]), total_k = static_cast<int>(k.shape[0]);
    if (q.device == DeviceType::CPU) {
      IOATTN_TRY(check_cu_seqlens_host(p, total_q, total_k));
    } else {
      if (q.device != DeviceType::CUDA) return make_error(ErrorCode::DeviceMismatch, "q: unsupported device");
      IOATTN_TRY(check_cu_seqlens_device(p, total_q, total_k));
    }
  }
  *p_out = p;
  return Status::Ok();
}

Status check_cu_seqlens_host(const Params& p, int total_q, int total_k) {
  const std::pair<const char*, const int32_t*> cus[] = {{"cu_seqlens_q", p.cu_seqlens_q},
                                                       {"cu_seqlens_k", p.cu_seqlens_k}};
  const int totals[] = {total_q, total_k};
  const int maxes[] = {p.seqlen_q, p.seqlen_k};
  const char* max_names[] = {"max_seqlen_q", "max_seqlen_k"};
  for (int t = 0; t < 2; ++t) {
    const int32_t* cu = cus[t].second;
    if (cu[0] != 0) return make_error(ErrorCode::InvalidIndex, cus[t].first, ": expected to start at 0, got ", cu[0]);
    for (int b = 0; b < p.batch; ++b) {
      const int64_t len = static_cast<int64_t>(cu[b + 1]) - cu[b];
      if (len < 0)
        return make_error(ErrorCode::InvalidIndex, cus[t].first, ": expected non-decreasing prefix sums, got ", cu[b],
                   " then ", cu[b + 1], " at index ", b);
      if (len > maxes[t])
        return make_error(ErrorCode::InvalidIndex, max_names[t], ": sequence ", b, " has length ", len,
                   ", more than ", max_names[t], " = ", maxes[t]);
    }
    if (cu[p.batch] > totals[t])
      return make_error(ErrorCode::InvalidIndex, cus[t].first, ": last entry ", cu[p.batch], " exceeds the ", totals[t],
                 " rows of ", t == 0 ? "q" : "k");
  }
  return Status::Ok();
}

}  // namespace ioattn
