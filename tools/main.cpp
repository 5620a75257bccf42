// `ioattn`: the command-line program of IOAttention.
//   ioattn info                  backends compiled in, devices, CPU features
//   ioattn run [flags]           solve one attention problem on random inputs: time, TFLOP/s,
//                                extra memory, dispatch choice; --check compares with float64
// This file parses flags (CLI11) and resolves defaults; run.cpp does the work.
#include <CLI/CLI.hpp>
#include <cmath>
#include <cstdio>
#include <limits>
#include <new>

#include "commands.h"
#include "device.h"

namespace ioattn_tool {
namespace {

using ioattn::DeviceType;
using ioattn::DType;

struct RunFlags {
  std::string device, dtype, window;
  int64_t batch = 0, heads = 0, kv_heads = 0, seqlen_q = 0, seqlen_k = 0, head_dim = 0, head_dim_v = 0, repeat = 0;
  double softcap = 0.0, dropout = 0.0;
  uint64_t seed = 0;
  RunConfig cfg;  // the boolean flags land here directly
  // Which size flags were given (CLI11 counts them); the others get the device's default problem.
  CLI::Option *o_batch, *o_heads, *o_kv_heads, *o_seqlen_q, *o_seqlen_k, *o_head_dim, *o_head_dim_v, *o_repeat;
};

// Default problems. CPU: small enough that a run takes seconds on a laptop. CUDA: the FlashAttention
// papers' shape (model width 2048 = 16 heads x 128, 16k tokens per batch).
struct Defaults {
  int batch, heads, seqlen, head_dim, repeat;
};
constexpr Defaults kCpuDefaults{2, 16, 1024, 128, 10};
constexpr Defaults kCudaDefaults{4, 16, 4096, 128, 50};

int to_int(const char* flag, int64_t v, int64_t min) {
  if (v < min) throw UsageError(std::string(flag) + ": expected a value >= " + std::to_string(min) + ", got " + std::to_string(v));
  if (v > std::numeric_limits<int32_t>::max())
    throw UsageError(std::string(flag) + ": " + std::to_string(v) + " exceeds 2^31 - 1");
  return static_cast<int>(v);
}

// "L,R" with L, R >= -1 (-1 = unbounded on that side).
void parse_window(const std::string& s, int* left, int* right) {
  const size_t comma = s.find(',');
  auto parse = [&](const std::string& part) {
    size_t used = 0;
    long long v = 0;
    try {
      v = std::stoll(part, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (part.empty() || used != part.size() || v < -1 || v > std::numeric_limits<int32_t>::max())
      throw UsageError("--window: expected L,R with integers >= -1 (-1 = unbounded), got '" + s + "'");
    return static_cast<int>(v);
  };
  if (comma == std::string::npos) parse("");  // throws with the message above
  *left = parse(s.substr(0, comma));
  *right = parse(s.substr(comma + 1));
}

RunConfig resolve(RunFlags& f) {
  RunConfig c = f.cfg;
  const ioattn::BuildInfo info = ioattn::build_info();
  if (f.device.empty()) {
    c.device = info.cuda_device_count > 0 ? DeviceType::CUDA : DeviceType::CPU;
  } else if (f.device == "cpu") {
    c.device = DeviceType::CPU;
  } else if (f.device == "cuda" || f.device.rfind("cuda:", 0) == 0) {
    c.device = DeviceType::CUDA;
    if (f.device.size() > 5) {
      const std::string idx = f.device.substr(5);
      if (idx.find_first_not_of("0123456789") != std::string::npos || idx.size() > 4)
        throw UsageError("--device: expected cpu, cuda or cuda:N, got '" + f.device + "'");
      c.device_index = std::stoi(idx);
    }
  } else {
    throw UsageError("--device: expected cpu, cuda or cuda:N, got '" + f.device + "'");
  }
  const bool cuda = c.device == DeviceType::CUDA;
  const Defaults& d = cuda ? kCudaDefaults : kCpuDefaults;

  if (f.dtype.empty()) c.dtype = cuda ? DType::BF16 : DType::F32;
  else if (f.dtype == "fp32") c.dtype = DType::F32;
  else if (f.dtype == "bf16") c.dtype = DType::BF16;
  else if (f.dtype == "fp16") c.dtype = DType::F16;
  else throw UsageError("--dtype: expected fp32, bf16 or fp16, got '" + f.dtype + "'");

  c.batch = f.o_batch->count() ? to_int("--batch", f.batch, 1) : d.batch;
  c.heads = f.o_heads->count() ? to_int("--heads", f.heads, 1) : d.heads;
  c.kv_heads = f.o_kv_heads->count() ? to_int("--kv-heads", f.kv_heads, 1) : c.heads;
  if (c.heads % c.kv_heads != 0)
    throw UsageError("--kv-heads: expected a divisor of --heads " + std::to_string(c.heads) + " (GQA/MQA), got " +
                     std::to_string(c.kv_heads));
  c.seqlen_q = f.o_seqlen_q->count() ? to_int("--seqlen-q", f.seqlen_q, 1) : d.seqlen;
  c.seqlen_k = f.o_seqlen_k->count() ? to_int("--seqlen-k", f.seqlen_k, 1) : c.seqlen_q;
  c.head_dim = f.o_head_dim->count() ? to_int("--head-dim", f.head_dim, 1) : d.head_dim;
  c.head_dim_v = f.o_head_dim_v->count() ? to_int("--head-dim-v", f.head_dim_v, 1) : c.head_dim;
  c.repeat = f.o_repeat->count() ? to_int("--repeat", f.repeat, 1) : d.repeat;
  if (!f.window.empty()) parse_window(f.window, &c.window_left, &c.window_right);
  if (!std::isfinite(f.softcap) || f.softcap < 0)
    throw UsageError("--softcap: expected a finite value >= 0 (0 = off), got " + std::to_string(f.softcap));
  if (!(f.dropout >= 0 && f.dropout < 1))
    throw UsageError("--dropout: expected a probability in [0, 1), got " + std::to_string(f.dropout));
  c.softcap = static_cast<float>(f.softcap);
  c.dropout = static_cast<float>(f.dropout);
  c.seed = f.seed;
  return c;
}

void add_run_flags(CLI::App* run, RunFlags& f) {
  // A flag given twice takes its last value, so scripts can append overrides to a base command.
  run->option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  run->add_option("--device", f.device, "cpu, cuda or cuda:N (default: cuda when a GPU is found, else cpu)");
  run->add_option("--dtype", f.dtype, "fp32, bf16 or fp16 (default: bf16 on cuda, fp32 on cpu)");
  f.o_batch = run->add_option("--batch", f.batch, "sequences (default: 2 on cpu, 4 on cuda)");
  f.o_heads = run->add_option("--heads", f.heads, "query heads (default 16)");
  f.o_kv_heads = run->add_option("--kv-heads", f.kv_heads, "key/value heads, dividing --heads (default: --heads)");
  f.o_seqlen_q = run->add_option("--seqlen-q,--seqlen", f.seqlen_q, "query length (default: 1024 on cpu, 4096 on cuda)");
  f.o_seqlen_k = run->add_option("--seqlen-k", f.seqlen_k, "key length (default: --seqlen-q)");
  f.o_head_dim = run->add_option("--head-dim", f.head_dim, "head dim (default 128)");
  f.o_head_dim_v = run->add_option("--head-dim-v", f.head_dim_v, "head dim of v and out (default: --head-dim)");
  run->add_flag("--causal", f.cfg.causal, "causal mask (bottom-right aligned)");
  run->add_option("--window", f.window, "sliding window L,R (-1 = unbounded), e.g. --window=256,0");
  run->add_option("--softcap", f.softcap, "score soft cap (0 = off)");
  run->add_flag("--alibi", f.cfg.alibi, "ALiBi with slopes 2^(-8(h+1)/heads)");
  run->add_option("--dropout", f.dropout, "dropout probability on P, in [0, 1)");
  run->add_flag("--varlen", f.cfg.varlen, "packed sequences of random lengths summing to batch x seqlen");
  run->add_flag("--backward", f.cfg.backward, "also time the backward pass");
  run->add_flag("--deterministic", f.cfg.deterministic, "bitwise-reproducible backward");
  run->add_flag("--check", f.cfg.check, "compare with the float64 reference and standard attention (exit 1 on FAIL)");
  run->add_flag("--json", f.cfg.json, "print one JSON object instead of text");
  f.o_repeat = run->add_option("--repeat", f.repeat, "timed repetitions after one warm-up; median reported "
                                                     "(default: 10 on cpu, 50 on cuda)");
  run->add_option("--seed", f.seed, "seed of the random inputs and of dropout (default 0)");
}

}  // namespace
}  // namespace ioattn_tool

int main(int argc, char** argv) {
  using namespace ioattn_tool;
  CLI::App app{"ioattn: exact IO-aware (flash) attention on CPU and GPU"};
  app.set_version_flag("--version", ioattn::build_info().version);
  app.require_subcommand(1);
  bool info_json = false;
  CLI::App* info = app.add_subcommand("info", "backends compiled in, devices found, CPU features");
  info->add_flag("--json", info_json, "print one JSON object");
  RunFlags flags;
  CLI::App* run = app.add_subcommand("run", "solve one attention problem on random inputs and report time, "
                                            "TFLOP/s, extra memory and (with --check) accuracy");
  add_run_flags(run, flags);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);  // prints help/version (code 0) or the parse error
    return code == 0 ? 0 : 2;
  }
  try {
    if (info->parsed()) return info_command(info_json);
    return run_command(resolve(flags));
  } catch (const UsageError& e) {
    std::fprintf(stderr, "ioattn: error: %s\n", e.what());
    return 2;
  } catch (const StatusError& e) {
    std::fprintf(stderr, "ioattn: error: %s\n", e.what());
    return e.exit_code();
  } catch (const RuntimeFailure& e) {
    std::fprintf(stderr, "ioattn: error: %s\n", e.what());
    return 1;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "ioattn: error: out of host memory\n");
    return 1;
  }
}
