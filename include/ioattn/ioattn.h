// IOAttention public C++ API.
//
// Exact softmax attention computed the IO-aware ("flash") way. The contract (math, layouts, masks,
// errors) is the one in DESIGN.md; every backend (CPU, CUDA sm80, ...) keeps it.
//
// Layers, top to bottom (the folders match):
//   include/ioattn/  this API: tensor views, the argument struct, entry points, Status. No CUDA or
//                    framework header leaks from here.
//   src/core/        validation (every check, before anything is written), the Params struct that
//                    flows to every backend, dispatch (which backend serves a call), shared math
//                    (mask predicate, Philox, online-softmax state).
//   src/cpu/         the CPU backend.        src/cuda/  the GPU backends, one folder per arch family.
//   src/reference/   the float64 oracle used by tests and `ioattn run --check`.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string>

namespace ioattn {

enum class DType : int { F32 = 0, F16 = 1, BF16 = 2, I32 = 3 };
enum class DeviceType : int { CPU = 0, CUDA = 1 };

const char* dtype_name(DType t);
size_t dtype_size(DType t);

// A non-owning view of a strided tensor. Strides are in elements (not bytes), like PyTorch.
// `data == nullptr` means "absent" for optional arguments.
struct TensorView {
  static constexpr int kMaxDims = 4;
  void* data = nullptr;
  DType dtype = DType::F32;
  int ndim = 0;
  int64_t shape[kMaxDims] = {0, 0, 0, 0};
  int64_t stride[kMaxDims] = {0, 0, 0, 0};
  DeviceType device = DeviceType::CPU;
  int device_index = 0;

  bool defined() const { return data != nullptr; }
  int64_t numel() const;
  bool is_contiguous() const;
  // Contiguous (row-major) view over `data` with the given shape.
  static TensorView contiguous(void* data, DType dtype, std::initializer_list<int64_t> shape,
                               DeviceType device = DeviceType::CPU, int device_index = 0);
};

// Error codes name the class of failure; the message names the argument and what was expected,
// e.g. "k: expected head_dim 128 like q, got 64".
enum class ErrorCode : int {
  Ok = 0,
  InvalidShape,      // a dimension or rank is wrong
  InvalidDType,      // a dtype is wrong or tensors disagree
  InvalidStride,     // last dimension not contiguous, overlapping outputs, ...
  Misaligned,        // pointer or stride alignment a backend needs (GPU: 16 bytes)
  DeviceMismatch,    // tensors on different devices
  InvalidValue,      // a scalar argument out of range (dropout p, window, softcap, scale, ...)
  InvalidIndex,      // cu_seqlens not monotone / out of bounds, ...
  Unsupported,       // valid call that no compiled backend serves (e.g. head dim 512 on the GPU)
  WorkspaceTooSmall, // caller-given workspace is smaller than workspace_size() says
  BackendError,      // a runtime failure inside a backend (CUDA launch error, out of memory)
};
const char* error_code_name(ErrorCode c);

struct Status {
  ErrorCode code = ErrorCode::Ok;
  std::string message;
  bool ok() const { return code == ErrorCode::Ok; }
  static Status Ok() { return {}; }
};

// Everything about a call that is not a tensor of the problem itself.
struct Args {
  // Softmax scale; <= 0 or NaN means 1/sqrt(head_dim).
  float softmax_scale = 0.0f;
  // Masks align bottom-right: query i sees keys j with
  //   i + Sk - Sq - window_left <= j <= i + Sk - Sq + window_right, -1 = unbounded.
  // causal == true is window (-1, 0) (and may not be combined with window_right > 0).
  bool causal = false;
  int window_left = -1;
  int window_right = -1;
  // softcap > 0: S = softcap * tanh(S / softcap).
  float softcap = 0.0f;
  // ALiBi: fp32, shape (heads_q) or (batch, heads_q); S -= slope * |i + Sk - Sq - j|.
  TensorView alibi_slopes;
  // Dropout on P (training): keep with probability 1 - p, scale by 1 / (1 - p). The mask is a pure
  // function of (seed, offset, b, h, i, j) through Philox 4x32-10 (src/core/philox.h).
  float dropout_p = 0.0f;
  uint64_t seed = 0;
  uint64_t offset = 0;
  // Variable length (packed) mode: q is (total_q, heads_q, d), k/v (total_k, heads_k, d), and these
  // are int32 (batch + 1) prefix sums on the tensors' device. max_seqlen_* must bound every length
  // (GPU grids are sized from them without reading device memory).
  TensorView cu_seqlens_q;
  TensorView cu_seqlens_k;
  int max_seqlen_q = 0;
  int max_seqlen_k = 0;
  // Backward: bitwise-identical dq/dk/dv run after run (may be slower on the GPU).
  bool deterministic = false;
  // GPU only: the cudaStream_t to run on (nullptr = the default stream), and caller-provided device
  // scratch of at least workspace_size() bytes (nullptr with a nonzero requirement is an error), so
  // calls never allocate and can be captured in CUDA graphs. The CPU backend allocates its own
  // O(N) scratch when workspace is null.
  void* stream = nullptr;
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
};

// Forward. Dense: q (B, Sq, Hq, D), k (B, Sk, Hk, D), v (B, Sk, Hk, Dv), out (B, Sq, Hq, Dv) in the
// input dtype, lse (B, Hq, Sq) fp32 (optional: lse.data may be null).
// Varlen (args.cu_seqlens_q/k set): q (Tq, Hq, D), k/v (Tk, Hk, D), out (Tq, Hq, Dv), lse (Hq, Tq).
// Any strides except a contiguous last dimension.
Status forward(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& out,
               const TensorView& lse, const Args& args);

// Backward: given dout (like out), out and lse from forward, writes dq, dk, dv (like q, k, v).
// With GQA, dk/dv hold the sum over the query heads of each group.
Status backward(const TensorView& q, const TensorView& k, const TensorView& v,
                const TensorView& out, const TensorView& dout, const TensorView& lse,
                const TensorView& dq, const TensorView& dk, const TensorView& dv,
                const Args& args);

// Device scratch bytes that forward()/backward() need in args.workspace for these arguments (0 on
// the CPU; the forward needs a few bytes for varlen calls on Hopper, else none). Validates like the
// call itself; on error returns the Status and sets *bytes = 0.
Status forward_workspace_size(const TensorView& q, const TensorView& k, const TensorView& v,
                              const Args& args, size_t* bytes);
Status backward_workspace_size(const TensorView& q, const TensorView& k, const TensorView& v,
                               const Args& args, size_t* bytes);

// Which backend/kernel dispatch would pick for this forward call, and why (for `ioattn run`).
std::string describe_forward_choice(const TensorView& q, const TensorView& k, const TensorView& v,
                                    const Args& args);

// Backends compiled in and devices found (for `ioattn info`).
struct BuildInfo {
  bool cuda_compiled = false;
  bool cuda_sm90_kernels = false;  // the Hopper (sm_90a: TMA + wgmma) forward kernels are built in
  int cuda_device_count = 0;
  std::string cpu_features;  // e.g. "avx2 fma avx512f avx512bf16"
  std::string cuda_devices;  // one line per device
  std::string version;
};
BuildInfo build_info();

// Peak bytes of scratch the CPU backend allocated since the last reset (for `ioattn run`).
size_t cpu_peak_scratch_bytes();
void reset_cpu_peak_scratch_bytes();

// ---- Decoding: attention over a KV cache (flash-attn 2's flash_attn_with_kvcache) --------------
//
// q (B, Sq, Hq, D) attends to the keys of a cache that optionally first receives new keys/values:
//   cache layouts  contiguous  k_cache (B_cache, max_seqlen, Hk, D), v_cache (B_cache, max_seqlen, Hk, Dv);
//                              batch row b reads cache row cache_batch_idx[b] (default b).
//                  paged       k_cache (num_pages, page_size, Hk, D), v_cache likewise, page_size a
//                              multiple of 16; block_table (B, max_pages_per_seq) int32 maps the
//                              logical page n of sequence b to block_table[b, n].
//   lengths        cache_seqlens[b] (int32, (B)) = keys already in the cache *before* this call (or
//                  the scalar cache_seqlen when the tensor is absent). With k_new/v_new
//                  (B, Snew, Hk, D/Dv), those rows are written in place to cache positions
//                  [cache_seqlens[b], cache_seqlens[b] + Snew) first (the cache tensors are outputs
//                  too), then attention runs over cache positions [cache_leftpad[b], cache_seqlens[b] + Snew).
//                  cache_leftpad[b] (int32, optional, contiguous caches only) is the first valid
//                  position: Sk_b = cache_seqlens[b] + Snew - cache_leftpad[b] keys are visible.
//   rotary         rotary_cos / rotary_sin (seqlen_ro, rotary_dim / 2), dtype of q, rotary_dim <= D
//                  (any even size), seqlen_ro >= the cache capacity: new key row j is
//                  rotated at position cache_seqlens[b] + j; query row i at cache_seqlens[b] + i when
//                  causal or windowed, else at cache_seqlens[b] (every query is "the next token").
//                  interleaved = true rotates pairs (0, 1), (2, 3), ...; false rotates (i, i + rotary_dim/2)
//                  (GPT-NeoX). Computed in fp32 and rounded to the dtype (q and the written keys).
//   masks          causal / window / softcap / ALiBi / GQA as in forward(), bottom-right aligned
//                  against Sk_b: query i of Sq sees keys j <= i + Sk_b - Sq under causal.
//   outputs        out (B, Sq, Hq, Dv); lse (B, Hq, Sq) fp32 optional.
//   split-KV       num_splits = 0 picks the number of key-range splits from the shape and the
//                  processor count (GPU: multiprocessors, CPU: threads); n > 0 forces (at most) n.
// Index tensors (cache_seqlens, cache_batch_idx, cache_leftpad, block_table) live on q's device.
// Validation rejects, with named errors and before anything is written: lengths past the cache
// capacity, leftpad > cache_seqlens, batch indices outside the cache, block-table entries (of the
// pages a sequence uses) outside [0, num_pages). On the GPU those checks copy the index tensors to
// the host unless the stream is being captured; kernels clamp every index they read regardless.
// Two sequences appending to one contiguous cache row are rejected; with a paged cache the pages a
// call writes must not be shared between sequences (not checked: shared prefix pages are read-only).
// GPU: fp16/bf16, head dims multiples of 8 up to 256, cache base 16-byte aligned and its used
// strides multiples of 8 elements (Misaligned otherwise); CPU: fp32 too, any head dim.
struct KVCacheArgs {
  TensorView k_new, v_new;           // optional, both or neither
  TensorView rotary_cos, rotary_sin; // optional, both or neither; without k_new only q is rotated
  bool rotary_interleaved = true;    // flash-attn 2's default (GPT-J pairs)
  TensorView cache_seqlens;          // int32 (B); absent: every sequence has cache_seqlen keys
  int cache_seqlen = 0;
  TensorView cache_batch_idx;        // int32 (B), optional, contiguous caches only
  TensorView cache_leftpad;          // int32 (B), optional, contiguous caches only
  TensorView block_table;            // int32 (B, max_pages_per_seq): paged cache
  float softmax_scale = 0.0f;        // <= 0: 1/sqrt(D)
  bool causal = false;
  int window_left = -1, window_right = -1;
  float softcap = 0.0f;
  TensorView alibi_slopes;           // fp32 (Hq) or (B, Hq)
  int num_splits = 0;                // 0 = heuristic
  // GPU: stream and caller workspace of forward_kvcache_workspace_size() bytes, as in Args.
  void* stream = nullptr;
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
};

Status forward_kvcache(const TensorView& q, const TensorView& k_cache, const TensorView& v_cache,
                       const TensorView& out, const TensorView& lse, const KVCacheArgs& args);
// Device scratch forward_kvcache needs (split-KV partial results; 0 on the CPU). Validates like the
// call (the index tensors' contents included).
Status forward_kvcache_workspace_size(const TensorView& q, const TensorView& k_cache, const TensorView& v_cache,
                                      const KVCacheArgs& args, size_t* bytes);
// The number of key splits and kernel forward_kvcache would use (for tools and tests).
std::string describe_kvcache_choice(const TensorView& q, const TensorView& k_cache, const TensorView& v_cache,
                                    const KVCacheArgs& args);

// ---- Paged prefill (flash-attn 2's flash_attn_varlen_func with block_table) -------------------
// q (Tq, Hq, D) packed as in forward() (args.cu_seqlens_q, args.max_seqlen_q); the keys of sequence
// b are the first cu_seqlens_k[b + 1] - cu_seqlens_k[b] positions of its pages: k_cache / v_cache
// (num_pages, page_size, Hk, D / Dv), page_size a multiple of 16, block_table (B, max_pages) int32
// (only the pages a sequence uses must be valid). Every key count must be <= args.max_seqlen_k and
// <= max_pages x page_size. Masks (bottom-right per sequence), softcap, ALiBi and GQA as forward();
// no dropout (Unsupported). out (Tq, Hq, Dv), lse (Hq, Tq) optional. Runs on the split-KV decode
// kernels (forward_kvcache's), so the cache is read in place, page by page.
Status forward_paged(const TensorView& q, const TensorView& k_cache, const TensorView& v_cache,
                     const TensorView& block_table, const TensorView& out, const TensorView& lse, const Args& args);
Status forward_paged_workspace_size(const TensorView& q, const TensorView& k_cache, const TensorView& v_cache,
                                    const TensorView& block_table, const Args& args, size_t* bytes);

}  // namespace ioattn
