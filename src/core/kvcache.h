// Where the keys of sequence b live in a KV cache and how rotary embedding turns a row, shared by
// the CPU and GPU decode paths (host + device, IOATTN_HD). Every index read from the caller's index
// tensors is clamped here, so device-resident tensors that could not be checked on the host (stream
// capture) give wrong values for that sequence, never an out-of-bounds access.
#pragma once

#include <cstdint>

#include "hostdevice.h"
#include "params.h"

namespace ioattn {

IOATTN_HD int clamp_int(int x, int lo, int hi) { return x < lo ? lo : (x > hi ? hi : x); }

struct KVSeq {
  int64_t q0;     // first query row: 0 (dense q, the batch stride applies) or cu_seqlens_q[b] (paged varlen)
  int sq;         // query rows of the sequence
  int cache_row;  // contiguous cache: the cache batch row (cache_batch_idx[b] or b)
  int start;      // first visible cache position (cache_leftpad[b])
  int old_len;    // cache_seqlens[b]: position where the new rows go
  int end;        // one past the last visible position: old_len + seqlen_new
  int sk;         // visible keys: end - start
};

// Dense decode (forward_kvcache): lengths from cache_seqlens. Paged varlen prefill
// (forward_paged, p.varlen): query rows and key counts from the prefix sums cu_seqlens_q / _k.
IOATTN_HD KVSeq kv_seq(const Params& p, int b) {
  const int capacity = p.seqlen_k;
  KVSeq s;
  if (p.varlen) {
    const int q0 = clamp_int(p.cu_seqlens_q[b], 0, p.total_q), q1 = clamp_int(p.cu_seqlens_q[b + 1], q0, p.total_q);
    const int64_t keys = static_cast<int64_t>(p.cu_seqlens_k[b + 1]) - p.cu_seqlens_k[b];
    s.q0 = q0;
    s.sq = q1 - q0 < p.seqlen_q ? q1 - q0 : p.seqlen_q;
    s.cache_row = b;
    s.start = 0;
    s.old_len = keys < 0 ? 0 : (keys > capacity ? capacity : static_cast<int>(keys));
    s.end = s.old_len;
    s.sk = s.old_len;
    return s;
  }
  const int room = capacity - p.seqlen_new > 0 ? capacity - p.seqlen_new : 0;
  s.q0 = 0;
  s.sq = p.seqlen_q;
  s.cache_row = p.cache_batch_idx ? clamp_int(p.cache_batch_idx[b], 0, p.cache_batch - 1) : b;
  s.old_len = clamp_int(p.cache_seqlens ? p.cache_seqlens[b] : p.cache_seqlen, 0, room);
  s.start = p.cache_leftpad ? clamp_int(p.cache_leftpad[b], 0, s.old_len) : 0;
  s.end = s.old_len + p.seqlen_new;
  if (s.end > capacity) s.end = capacity;
  s.sk = s.end - s.start;
  return s;
}

// Cache position pos of sequence b as (outer index, row): outer is the cache batch row
// (contiguous) or the page (paged); the element offset is outer * batch_stride + row * row_stride.
struct KVLoc {
  int64_t outer;
  int row;
};
IOATTN_HD KVLoc kv_loc(const Params& p, int b, const KVSeq& s, int pos) {
  if (p.page_size > 0) {
    const int n = clamp_int(pos / p.page_size, 0, p.max_pages - 1);
    const int page = clamp_int(p.block_table[b * p.block_table_batch_stride + n], 0, p.cache_batch - 1);
    return KVLoc{page, pos % p.page_size};
  }
  return KVLoc{s.cache_row, clamp_int(pos, 0, p.seqlen_k - 1)};
}

// Rotary embedding of element d of a row x at a position whose cos/sin row is given: the element
// and its partner rotate together,
//   interleaved      pairs (2i, 2i+1), angle i:  x'_2i = x_2i cos - x_2i+1 sin,  x'_2i+1 = x_2i+1 cos + x_2i sin
//   non-interleaved  pairs (i, i+R/2), angle i:  x'_i = x_i cos - x_i+R/2 sin,   x'_i+R/2 = x_i+R/2 cos + x_i sin
// Elements d >= rotary_dim pass through.
struct RotaryIndex {
  int partner;  // index of the element paired with d
  int angle;    // column of cos/sin
  float sign;   // -1 for the first of a pair, +1 for the second
};
IOATTN_HD RotaryIndex rotary_index(int d, int rotary_dim, bool interleaved) {
  if (interleaved) return RotaryIndex{d ^ 1, d / 2, (d & 1) ? 1.0f : -1.0f};
  const int half = rotary_dim / 2;
  return d < half ? RotaryIndex{d + half, d, -1.0f} : RotaryIndex{d - half, d - half, 1.0f};
}
IOATTN_HD float rotate(float x, float partner, float c, float s, float sign) { return x * c + sign * (partner * s); }

// Position whose rotation query row i receives: cache_seqlens[b] + i when causal or windowed (row i
// is the (i+1)-th new token), else cache_seqlens[b] for every row (flash-attn 2's convention).
IOATTN_HD int rotary_q_position(const Params& p, const KVSeq& s, int i) {
  const bool local = p.window_left >= 0 || p.window_right >= 0;
  return s.old_len + (local ? i : 0);
}

}  // namespace ioattn
