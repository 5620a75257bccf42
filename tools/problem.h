// One attention problem of `ioattn run`: its configuration (resolved from the flags), its random
// host inputs, and the FLOP count it is credited with.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ioattn/ioattn.h"

namespace ioattn_tool {

struct RunConfig {
  ioattn::DeviceType device = ioattn::DeviceType::CPU;
  int device_index = 0;
  ioattn::DType dtype = ioattn::DType::F32;
  int batch = 0, heads = 0, kv_heads = 0, seqlen_q = 0, seqlen_k = 0, head_dim = 0, head_dim_v = 0;
  bool causal = false;
  int window_left = -1, window_right = -1;  // -1: unbounded on that side
  float softcap = 0.0f, dropout = 0.0f;
  bool alibi = false, varlen = false, backward = false, check = false, json = false, deterministic = false;
  int repeat = 10;
  uint64_t seed = 0;

  // The library's Args for this configuration, without tensors (slopes, cu_seqlens, workspace).
  ioattn::Args args() const;
};

// Host copies of the inputs, in the run's dtype, laid out contiguously: dense q (B, Sq, Hq, D),
// k (B, Sk, Hk, D), v (B, Sk, Hk, Dv), dout (B, Sq, Hq, Dv), or packed (Tq / Tk rows) in varlen mode.
struct HostProblem {
  std::vector<unsigned char> q, k, v, dout;
  std::vector<float> alibi_slopes;   // (Hq), empty without --alibi
  std::vector<int32_t> cu_q, cu_k;   // (B + 1) prefix sums, empty unless --varlen
  std::vector<int> len_q, len_k;     // per-sequence lengths (all Sq / Sk when dense)
  int max_q = 0, max_k = 0;
  int64_t rows_q = 0, rows_k = 0;    // B*Sq and B*Sk, or Tq and Tk

  // Contiguous host views of the inputs (shapes as the API expects them for this mode).
  ioattn::TensorView q_view(const RunConfig& c) const;
  ioattn::TensorView k_view(const RunConfig& c) const;
  ioattn::TensorView v_view(const RunConfig& c) const;
  ioattn::TensorView dout_view(const RunConfig& c) const;
  // Args with host-side slopes and cu_seqlens (for the float64 reference).
  ioattn::Args host_args(const RunConfig& c) const;
};

// Random inputs: normal(0, 1) entries (never zeros), ALiBi slopes 2^(-8(h+1)/Hq), and with --varlen
// random lengths that sum to batch*seqlen_q (and batch*seqlen_k; the same lengths when Sq == Sk).
HostProblem make_problem(const RunConfig& c);

// Forward FLOPs as the FlashAttention papers count them: 4·Sq·Sk·D per (sequence, head) (2·Sq·Sk·(D + Dv)
// where v's head dim differs), halved for
// causal when Sq == Sk. Other masks (a sliding window, causal with Sq != Sk) are credited with the
// (query, key) pairs they actually leave visible. Backward is 2.5× this. Varlen sums per sequence.
double forward_flops(const RunConfig& c, const HostProblem& p);

// Elements of one N×N matrix (S or P) of standard attention: Σ over sequences of Hq·Sq·Sk.
double score_matrix_elements(const RunConfig& c, const HostProblem& p);

// Shapes of q / k, v and out / dout in the API's layout for this configuration.
std::vector<int64_t> q_shape(const RunConfig& c, const HostProblem& p);
std::vector<int64_t> kv_shape(const RunConfig& c, const HostProblem& p);
std::vector<int64_t> v_shape(const RunConfig& c, const HostProblem& p);
std::vector<int64_t> o_shape(const RunConfig& c, const HostProblem& p);
std::vector<int64_t> lse_shape(const RunConfig& c, const HostProblem& p);

// A contiguous view of `shape` over data (TensorView::contiguous with a runtime shape).
ioattn::TensorView view_of(void* data, ioattn::DType dt, const std::vector<int64_t>& shape,
                           ioattn::DeviceType dev = ioattn::DeviceType::CPU, int index = 0);

int64_t numel(const std::vector<int64_t>& shape);

}  // namespace ioattn_tool
