#include "problem.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <thread>

#include "core/half.h"

namespace ioattn_tool {
namespace {

using ioattn::DType;

// splitmix64: a fast, well-mixed stream; the inputs only need to be random-looking and
// reproducible from --seed, and std::normal_distribution would dominate start-up at 10^8 elements.
struct Rng {
  uint64_t s;
  uint64_t next() {
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  double uniform() { return (next() >> 11) * 0x1.0p-53; }  // [0, 1)
};

void store(DType dt, unsigned char* dst, size_t i, float x) {
  switch (dt) {
    case DType::F32: std::memcpy(dst + 4 * i, &x, 4); return;
    case DType::BF16: { const uint16_t h = ioattn::float_to_bf16(x); std::memcpy(dst + 2 * i, &h, 2); return; }
    case DType::F16: { const uint16_t h = ioattn::float_to_fp16(x); std::memcpy(dst + 2 * i, &h, 2); return; }
    case DType::I32: break;
  }
}

// n normal(0, 1) values (Box-Muller) in dtype dt. Pair j uses the stream's draws 2j and 2j+1, and
// splitmix64's state after k draws is s + k * gamma, so chunks of pairs run on their own threads and
// give the same values as one thread (10^8 elements took ~2 s of every timed CLI run on one core).
std::vector<unsigned char> random_normal(DType dt, int64_t n, Rng& rng) {
  std::vector<unsigned char> out(static_cast<size_t>(n) * ioattn::dtype_size(dt));
  constexpr double kTwoPi = 6.283185307179586;
  constexpr uint64_t kGamma = 0x9E3779B97F4A7C15ull;
  const int64_t pairs = (n + 1) / 2;
  auto fill = [&](int64_t p0, int64_t p1) {
    Rng r{rng.s + static_cast<uint64_t>(2 * p0) * kGamma};
    for (int64_t j = p0; j < p1; ++j) {
      const int64_t i = 2 * j;
      const double u1 = 1.0 - r.uniform();  // (0, 1]: log stays finite
      const double u2 = r.uniform();
      const double rad = std::sqrt(-2.0 * std::log(u1));
      store(dt, out.data(), i, static_cast<float>(rad * std::cos(kTwoPi * u2)));
      if (i + 1 < n) store(dt, out.data(), i + 1, static_cast<float>(rad * std::sin(kTwoPi * u2)));
    }
  };
  const int64_t threads = std::clamp<int64_t>(std::thread::hardware_concurrency(), 1, std::max<int64_t>(1, pairs >> 20));
  std::vector<std::thread> pool;
  for (int64_t t = 1; t < threads; ++t) pool.emplace_back(fill, pairs * t / threads, pairs * (t + 1) / threads);
  fill(0, pairs / threads);
  for (auto& th : pool) th.join();
  rng.s += static_cast<uint64_t>(2 * pairs) * kGamma;
  return out;
}

// batch random lengths summing to total: sorted uniform cut points (lengths of 0 can occur, and
// are legal in varlen mode).
std::vector<int> random_lengths(int batch, int64_t total, Rng& rng) {
  std::vector<int64_t> cuts(batch - 1);
  for (auto& c : cuts) c = static_cast<int64_t>(rng.uniform() * static_cast<double>(total + 1));
  std::sort(cuts.begin(), cuts.end());
  std::vector<int> len(batch);
  int64_t prev = 0;
  for (int b = 0; b < batch - 1; ++b) {
    len[b] = static_cast<int>(cuts[b] - prev);
    prev = cuts[b];
  }
  len[batch - 1] = static_cast<int>(total - prev);
  return len;
}

std::vector<int32_t> prefix_sums(const std::vector<int>& len) {
  std::vector<int32_t> cu(len.size() + 1, 0);
  for (size_t b = 0; b < len.size(); ++b) cu[b + 1] = cu[b] + len[b];
  return cu;
}

// Visible (query, key) pairs of one sequence under the bottom-right aligned window (DESIGN.md §1).
double visible_pairs(int sq, int sk, int left, int right) {
  double pairs = 0.0;
  for (int64_t i = 0; i < sq; ++i) {
    const int64_t diag = i + sk - sq;
    const int64_t lo = left < 0 ? 0 : std::max<int64_t>(0, diag - left);
    const int64_t hi = right < 0 ? sk - 1 : std::min<int64_t>(sk - 1, diag + right);
    if (hi >= lo) pairs += static_cast<double>(hi - lo + 1);
  }
  return pairs;
}

}  // namespace

ioattn::Args RunConfig::args() const {
  ioattn::Args a;
  a.causal = causal;
  a.window_left = window_left;
  a.window_right = window_right;
  a.softcap = softcap;
  a.dropout_p = dropout;
  a.seed = seed;
  a.offset = 0;
  a.deterministic = deterministic;
  return a;
}

int64_t numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}

ioattn::TensorView view_of(void* data, DType dt, const std::vector<int64_t>& shape, ioattn::DeviceType dev,
                           int index) {
  ioattn::TensorView t;
  t.data = data;
  t.dtype = dt;
  t.ndim = static_cast<int>(shape.size());
  int64_t st = 1;
  for (int d = t.ndim - 1; d >= 0; --d) {
    t.shape[d] = shape[d];
    t.stride[d] = st;
    st *= shape[d];
  }
  t.device = dev;
  t.device_index = index;
  return t;
}

// A tensor of `cols` columns in the API's layout: dense (B, seqlen, heads, cols), varlen (rows, heads, cols).
static std::vector<int64_t> api_shape(const RunConfig& c, int64_t rows, int seqlen, int heads, int cols) {
  if (c.varlen) return {rows, heads, cols};
  return {c.batch, seqlen, heads, cols};
}

std::vector<int64_t> q_shape(const RunConfig& c, const HostProblem& p) {
  return api_shape(c, p.rows_q, c.seqlen_q, c.heads, c.head_dim);
}
std::vector<int64_t> kv_shape(const RunConfig& c, const HostProblem& p) {
  return api_shape(c, p.rows_k, c.seqlen_k, c.kv_heads, c.head_dim);
}
std::vector<int64_t> v_shape(const RunConfig& c, const HostProblem& p) {
  return api_shape(c, p.rows_k, c.seqlen_k, c.kv_heads, c.head_dim_v);
}
std::vector<int64_t> o_shape(const RunConfig& c, const HostProblem& p) {
  return api_shape(c, p.rows_q, c.seqlen_q, c.heads, c.head_dim_v);
}

std::vector<int64_t> lse_shape(const RunConfig& c, const HostProblem& p) {
  if (c.varlen) return {c.heads, p.rows_q};
  return {c.batch, c.heads, c.seqlen_q};
}

ioattn::TensorView HostProblem::q_view(const RunConfig& c) const {
  return view_of(const_cast<unsigned char*>(q.data()), c.dtype, q_shape(c, *this));
}
ioattn::TensorView HostProblem::k_view(const RunConfig& c) const {
  return view_of(const_cast<unsigned char*>(k.data()), c.dtype, kv_shape(c, *this));
}
ioattn::TensorView HostProblem::v_view(const RunConfig& c) const {
  return view_of(const_cast<unsigned char*>(v.data()), c.dtype, v_shape(c, *this));
}
ioattn::TensorView HostProblem::dout_view(const RunConfig& c) const {
  return view_of(const_cast<unsigned char*>(dout.data()), c.dtype, o_shape(c, *this));
}

ioattn::Args HostProblem::host_args(const RunConfig& c) const {
  ioattn::Args a = c.args();
  if (!alibi_slopes.empty())
    a.alibi_slopes = view_of(const_cast<float*>(alibi_slopes.data()), DType::F32, {c.heads});
  if (c.varlen) {
    a.cu_seqlens_q = view_of(const_cast<int32_t*>(cu_q.data()), DType::I32, {c.batch + 1});
    a.cu_seqlens_k = view_of(const_cast<int32_t*>(cu_k.data()), DType::I32, {c.batch + 1});
    a.max_seqlen_q = max_q;
    a.max_seqlen_k = max_k;
  }
  return a;
}

HostProblem make_problem(const RunConfig& c) {
  HostProblem p;
  Rng rng{c.seed};
  if (c.varlen) {
    p.len_q = random_lengths(c.batch, int64_t{c.batch} * c.seqlen_q, rng);
    p.len_k = c.seqlen_k == c.seqlen_q ? p.len_q : random_lengths(c.batch, int64_t{c.batch} * c.seqlen_k, rng);
    p.cu_q = prefix_sums(p.len_q);
    p.cu_k = prefix_sums(p.len_k);
    p.max_q = *std::max_element(p.len_q.begin(), p.len_q.end());
    p.max_k = *std::max_element(p.len_k.begin(), p.len_k.end());
  } else {
    p.len_q.assign(c.batch, c.seqlen_q);
    p.len_k.assign(c.batch, c.seqlen_k);
    p.max_q = c.seqlen_q;
    p.max_k = c.seqlen_k;
  }
  p.rows_q = int64_t{c.batch} * c.seqlen_q;  // varlen lengths sum to the same totals
  p.rows_k = int64_t{c.batch} * c.seqlen_k;
  p.q = random_normal(c.dtype, numel(q_shape(c, p)), rng);
  p.k = random_normal(c.dtype, numel(kv_shape(c, p)), rng);
  p.v = random_normal(c.dtype, numel(v_shape(c, p)), rng);
  if (c.backward) p.dout = random_normal(c.dtype, numel(o_shape(c, p)), rng);
  if (c.alibi) {
    p.alibi_slopes.resize(c.heads);
    for (int h = 0; h < c.heads; ++h) p.alibi_slopes[h] = std::exp2(-8.0f * (h + 1) / c.heads);
  }
  return p;
}

double forward_flops(const RunConfig& c, const HostProblem& p) {
  // causal is the window (-1, 0); the library rejects causal with window_right > 0.
  const int left = c.window_left, right = c.causal ? 0 : c.window_right;
  const bool causal_only = left < 0 && right == 0;
  const bool masked = left >= 0 || right >= 0;
  double pairs = 0.0;
  for (int b = 0; b < c.batch; ++b) {
    const int sq = p.len_q[b], sk = p.len_k[b];
    if (!masked) pairs += double(sq) * sk;
    else if (causal_only && sq == sk) pairs += double(sq) * sk / 2;
    else pairs += visible_pairs(sq, sk, left, right);
  }
  return 2.0 * c.heads * (c.head_dim + c.head_dim_v) * pairs;
}

double score_matrix_elements(const RunConfig& c, const HostProblem& p) {
  double n = 0;
  for (int b = 0; b < c.batch; ++b) n += double(p.len_q[b]) * p.len_k[b];
  return n * c.heads;
}

}  // namespace ioattn_tool
