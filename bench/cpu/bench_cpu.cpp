// CPU benchmark of ioattn, side by side with its ceilings and peers in one run:
//   (a) OpenBLAS fp32 SGEMM (all threads): the compute ceiling of this machine;
//   (b) standard attention with explicit N×N matrices through the same BLAS (standard_attention.h);
//   (c) ioattn forward and backward, fp32 and bf16, causal and not;
//   (d) the extra memory of ioattn's forward + backward at a long sequence, against standard
//       attention's N² bytes.
// Shapes: batch 1, 16 heads, seqlen 512 … 8192, head dim 64 and 128 (--quick: a subset).
// FLOPs as the FlashAttention papers count them: forward 4·B·H·N²·d, halved for causal; backward
// 2.5× forward. Standard attention computes every score even when causal, and is credited the same
// FLOPs, as PyTorch's math path is in the GPU tables. Timing: one warm-up, then the median of at
// least 3 runs and until 1 s has passed (at most 10). Backward times are of the backward alone:
// ioattn's backward call (given O and LSE); standard attention's backward products given its P.
// Raw results go to bench/results/cpu-<date>.json; a table with ratios goes to stdout.
#include <cblas.h>
#include <omp.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "core/half.h"
#include "ioattn/ioattn.h"
#include "standard_attention.h"

extern "C" char* openblas_get_config(void);  // declared by OpenBLAS's cblas.h too; not by every cblas.h
extern "C" char* openblas_get_corename(void);

namespace {

using json = nlohmann::ordered_json;
using ioattn::DType;
using ioattn::TensorView;

constexpr int kBatch = 1;
constexpr int kHeads = 16;

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Median over at least 3 runs and at least 1 s (at most 10), after one warm-up, of what `run`
// returns: the seconds of the part it times.
double median_s(const std::function<double()>& run) {
  run();
  std::vector<double> t;
  double total = 0;
  while (t.size() < 3 || (total < 1.0 && t.size() < 10)) {
    t.push_back(run());
    total += t.back();
  }
  std::sort(t.begin(), t.end());
  return t.size() % 2 ? t[t.size() / 2] : 0.5 * (t[t.size() / 2 - 1] + t[t.size() / 2]);
}

// Median wall seconds of fn (as above).
double time_s(const std::function<void()>& fn) {
  return median_s([&] {
    const double t0 = now_s();
    fn();
    return now_s() - t0;
  });
}

std::string cpu_model() {
  std::ifstream f("/proc/cpuinfo");
  for (std::string line; std::getline(f, line);)
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown CPU";
}

std::string utc_date() {
  const std::time_t t = std::time(nullptr);
  char s[16];
  std::strftime(s, sizeof s, "%Y-%m-%d", std::gmtime(&t));
  return s;
}

double attn_fwd_flops(int seqlen, int d, bool causal) {
  return 4.0 * kBatch * kHeads * double(seqlen) * seqlen * d / (causal ? 2 : 1);
}

std::vector<float> random_normal(size_t n, std::mt19937& rng) {
  std::normal_distribution<float> dist;
  std::vector<float> x(n);
  for (auto& e : x) e = dist(rng);
  return x;
}

std::vector<uint16_t> to_bf16(const std::vector<float>& x) {
  std::vector<uint16_t> y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = ioattn::float_to_bf16(x[i]);
  return y;
}

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, double(std::fabs(a[i] - b[i])));
  return std::isnan(m) ? HUGE_VAL : m;
}

json sgemm_bench(int n) {
  std::mt19937 rng(1);
  const std::vector<float> a = random_normal(size_t(n) * n, rng), b = random_normal(size_t(n) * n, rng);
  std::vector<float> c(size_t(n) * n);
  const double s = time_s([&] {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n);
  });
  return {{"m", n}, {"n", n}, {"k", n}, {"ms", s * 1e3}, {"gflops", 2.0 * n * n * double(n) / s / 1e9}};
}

// Inputs of one (seqlen, head dim) shape, fp32 and bf16 copies, and outputs for every run on it.
struct Shape {
  int seqlen, d;
  std::vector<float> q, k, v, dout;            // (1, N, H, d) fp32
  std::vector<uint16_t> qb, kb, vb, doutb;     // the same rounded to bf16
  std::vector<float> out, dq, dk, dv;          // ioattn outputs (fp32 runs) / scratch for bf16 runs
  std::vector<float> lse;                      // (1, H, N)
  std::vector<float> s_out, s_dq, s_dk, s_dv;  // standard attention outputs

  Shape(int n, int dim, std::mt19937& rng) : seqlen(n), d(dim) {
    const size_t e = size_t(n) * kHeads * dim;
    q = random_normal(e, rng); k = random_normal(e, rng); v = random_normal(e, rng); dout = random_normal(e, rng);
    qb = to_bf16(q); kb = to_bf16(k); vb = to_bf16(v); doutb = to_bf16(dout);
    for (auto* o : {&out, &dq, &dk, &dv, &s_out, &s_dq, &s_dk, &s_dv}) o->resize(e);
    lse.resize(size_t(n) * kHeads);
  }
  TensorView view(void* p, DType dt) const { return TensorView::contiguous(p, dt, {kBatch, seqlen, kHeads, d}); }
};

// ioattn forward and backward on one shape; bf16 outputs go to the same buffers (2-byte elements).
json ioattn_bench(Shape& s, DType dt, bool causal) {
  const bool f32 = dt == DType::F32;
  void* q = f32 ? (void*)s.q.data() : (void*)s.qb.data();
  void* k = f32 ? (void*)s.k.data() : (void*)s.kb.data();
  void* v = f32 ? (void*)s.v.data() : (void*)s.vb.data();
  void* dout = f32 ? (void*)s.dout.data() : (void*)s.doutb.data();
  const TensorView tq = s.view(q, dt), tk = s.view(k, dt), tv = s.view(v, dt), tdo = s.view(dout, dt);
  const TensorView to = s.view(s.out.data(), dt), tdq = s.view(s.dq.data(), dt), tdk = s.view(s.dk.data(), dt),
                   tdv = s.view(s.dv.data(), dt);
  const TensorView lse = TensorView::contiguous(s.lse.data(), DType::F32, {kBatch, kHeads, s.seqlen});
  ioattn::Args args;
  args.causal = causal;
  json r = {{"impl", "ioattn"}, {"dtype", ioattn::dtype_name(dt)}, {"batch", kBatch}, {"heads", kHeads},
            {"seqlen", s.seqlen}, {"head_dim", s.d}, {"causal", causal}};
  ioattn::Status st;
  const double fwd = time_s([&] { if (st.ok()) st = ioattn::forward(tq, tk, tv, to, lse, args); });
  if (!st.ok()) {
    r["error"] = std::string(ioattn::error_code_name(st.code)) + ": " + st.message;
    return r;
  }
  const double bwd = time_s([&] {
    if (st.ok()) st = ioattn::backward(tq, tk, tv, to, tdo, lse, tdq, tdk, tdv, args);
  });
  if (!st.ok()) r["error"] = std::string(ioattn::error_code_name(st.code)) + ": " + st.message;
  const double flops = attn_fwd_flops(s.seqlen, s.d, causal);
  r["fwd_ms"] = fwd * 1e3;
  r["fwd_gflops"] = flops / fwd / 1e9;
  if (st.ok()) {
    r["bwd_ms"] = bwd * 1e3;
    r["bwd_gflops"] = 2.5 * flops / bwd / 1e9;
  }
  return r;
}

json standard_bench(Shape& s, bool causal) {
  bench::StandardProblem p;
  p.heads = kHeads; p.seqlen = s.seqlen; p.head_dim = s.d; p.causal = causal;
  p.q = s.q.data(); p.k = s.k.data(); p.v = s.v.data(); p.dout = s.dout.data();
  p.out = s.s_out.data(); p.dq = s.s_dq.data(); p.dk = s.s_dk.data(); p.dv = s.s_dv.data();
  bench::StandardAttention attn;
  const double fwd = time_s([&] { attn.forward(p); });
  const double bwd = median_s([&] { return attn.forward_backward(p); });
  const double flops = attn_fwd_flops(s.seqlen, s.d, causal);
  return {{"impl", "standard_blas"}, {"dtype", "fp32"}, {"batch", kBatch}, {"heads", kHeads}, {"seqlen", s.seqlen},
          {"head_dim", s.d}, {"causal", causal}, {"fwd_ms", fwd * 1e3}, {"fwd_gflops", flops / fwd / 1e9},
          {"bwd_ms", bwd * 1e3}, {"bwd_gflops", 2.5 * flops / bwd / 1e9},
          {"saved_bytes", bench::standard_saved_bytes(kBatch, kHeads, s.seqlen)}};
}

// Peak extra memory of one forward + backward at a long sequence, bf16 (one head: the O(N) vs O(N²)
// contrast needs no more), run once each.
json memory_bench(int n, int d) {
  constexpr DType dt = DType::BF16;
  std::mt19937 rng(7);
  const size_t e = size_t(n) * d;
  std::vector<uint16_t> xb[4];
  for (auto& t : xb) t = to_bf16(random_normal(e, rng));
  std::vector<uint16_t> o(e), dq(e), dk(e), dv(e);
  std::vector<float> lse(n);
  auto view = [&](void* p) { return TensorView::contiguous(p, dt, {1, n, 1, d}); };
  const TensorView lv = TensorView::contiguous(lse.data(), DType::F32, {1, 1, n});
  ioattn::Args args;
  args.causal = true;
  ioattn::reset_cpu_peak_scratch_bytes();
  double t0 = now_s();
  ioattn::Status st = ioattn::forward(view(xb[0].data()), view(xb[1].data()), view(xb[2].data()), view(o.data()), lv, args);
  const double fwd = now_s() - t0;
  t0 = now_s();
  if (st.ok())
    st = ioattn::backward(view(xb[0].data()), view(xb[1].data()), view(xb[2].data()), view(o.data()), view(xb[3].data()),
                          lv, view(dq.data()), view(dk.data()), view(dv.data()), args);
  const double bwd = now_s() - t0;
  json r = {{"batch", 1}, {"heads", 1}, {"seqlen", n}, {"head_dim", d}, {"dtype", ioattn::dtype_name(dt)},
            {"causal", true}};
  if (!st.ok()) {
    r["error"] = std::string(ioattn::error_code_name(st.code)) + ": " + st.message;
    return r;
  }
  r["fwd_ms"] = fwd * 1e3;
  r["bwd_ms"] = bwd * 1e3;
  r["ioattn_peak_scratch_bytes"] = ioattn::cpu_peak_scratch_bytes();
  r["ioattn_lse_bytes"] = lse.size() * sizeof(float);
  r["input_bytes"] = 4 * e * ioattn::dtype_size(dt);
  r["standard_saved_bytes_fp32"] = bench::standard_saved_bytes(1, 1, n);
  return r;
}

std::string gf(const json& r, const char* key) {
  char s[16];
  if (!r.contains(key)) return "-";
  std::snprintf(s, sizeof s, "%.0f", r[key].get<double>());
  return s;
}

double get(const json& r, const char* key) { return r.contains(key) ? r[key].get<double>() : NAN; }

// The results as a Markdown table (readable in a terminal too, and pasted into the README as is).
void print_table(const json& res) {
  const double gemm = res["sgemm"]["gflops"];
  std::printf("%s, %d threads, OpenBLAS %s core, %s. SGEMM fp32 %d³: **%.0f GFLOP/s**.\n\n",
              res["device"].get<std::string>().c_str(), res["threads"].get<int>(),
              res["openblas_core"].get<std::string>().c_str(), res["date"].get<std::string>().c_str(),
              res["sgemm"]["m"].get<int>(), gemm);
  std::printf("GFLOP/s forward / backward, batch %d, %d heads. Standard = explicit N×N matrices through the same "
              "BLAS, fp32.\n\n", kBatch, kHeads);
  std::printf("| head dim | seqlen | causal | ioattn fp32 | ioattn bf16 | standard fp32 | best ioattn / standard "
              "(fwd, bwd) | ioattn fp32 fwd / SGEMM |\n|---|---|---|---|---|---|---|---|\n");
  const json& rows = res["attention"];
  for (const json& r : rows) {
    if (r["impl"] != "ioattn" || r["dtype"] != "fp32") continue;
    auto find = [&](const char* impl, const char* dt) -> json {
      for (const json& x : rows)
        if (x["impl"] == impl && x["dtype"] == dt && x["seqlen"] == r["seqlen"] && x["head_dim"] == r["head_dim"] &&
            x["causal"] == r["causal"])
          return x;
      return json::object();
    };
    const json b = find("ioattn", "bf16"), s = find("standard_blas", "fp32");
    const double best_f = std::fmax(get(r, "fwd_gflops"), get(b, "fwd_gflops"));
    const double best_b = std::fmax(get(r, "bwd_gflops"), get(b, "bwd_gflops"));
    std::printf("| %d | %d | %s | %s / %s | %s / %s | %s / %s | %.1fx, %.1fx | %.2f |\n", r["head_dim"].get<int>(),
                r["seqlen"].get<int>(), r["causal"].get<bool>() ? "yes" : "no", gf(r, "fwd_gflops").c_str(),
                gf(r, "bwd_gflops").c_str(), gf(b, "fwd_gflops").c_str(), gf(b, "bwd_gflops").c_str(),
                gf(s, "fwd_gflops").c_str(), gf(s, "bwd_gflops").c_str(), best_f / get(s, "fwd_gflops"),
                best_b / get(s, "bwd_gflops"), get(r, "fwd_gflops") / gemm);
  }
  const json& m = res["memory"];
  if (m.contains("ioattn_peak_scratch_bytes")) {
    std::printf("\nExtra memory of one forward + backward at batch 1, 1 head, seqlen %d, head dim %d, %s, causal: "
                "ioattn **%.2f MiB** (scratch %.2f MiB + LSE %.2f MiB); standard attention saves P, %.0f MiB in fp32.\n",
                m["seqlen"].get<int>(), m["head_dim"].get<int>(), m["dtype"].get<std::string>().c_str(),
                (get(m, "ioattn_peak_scratch_bytes") + get(m, "ioattn_lse_bytes")) / 1048576.0,
                get(m, "ioattn_peak_scratch_bytes") / 1048576.0, get(m, "ioattn_lse_bytes") / 1048576.0,
                get(m, "standard_saved_bytes_fp32") / 1048576.0);
  } else if (m.contains("error")) {
    std::printf("\nmemory run failed: %s\n", m["error"].get<std::string>().c_str());
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"ioattn CPU benchmark: ioattn vs standard attention (BLAS) vs SGEMM, one run"};
  bool quick = false;
  std::string out;
  app.add_flag("--quick", quick, "a subset: seqlen 512 and 2048, head dim 128, memory at seqlen 16384 (~1 min)");
  app.add_option("--out", out, "result file (default: bench/results/cpu-<date>[-quick].json in the source tree)");
  std::string from;
  app.add_option("--table-from", from, "print the table of an earlier result file and exit");
  CLI11_PARSE(app, argc, argv);
  if (!from.empty()) {
    std::ifstream f(from);
    if (!f) {
      std::fprintf(stderr, "cannot read %s\n", from.c_str());
      return 2;
    }
    print_table(json::parse(f));
    return 0;
  }

  const std::vector<int> seqlens = quick ? std::vector<int>{512, 2048} : std::vector<int>{512, 1024, 2048, 4096, 8192};
  const std::vector<int> dims = quick ? std::vector<int>{128} : std::vector<int>{64, 128};
  const std::string date = utc_date();
  if (out.empty()) out = std::string(IOATTN_BENCH_RESULTS_DIR) + "/cpu-" + date + (quick ? "-quick" : "") + ".json";

  const ioattn::BuildInfo info = ioattn::build_info();
  json res;
  res["device"] = cpu_model();
  res["date"] = date;
  res["threads"] = omp_get_max_threads();
  res["openblas_core"] = openblas_get_corename();
  res["openblas_config"] = openblas_get_config();
  if (const char* core = std::getenv("OPENBLAS_CORETYPE")) res["openblas_coretype_env"] = core;
  res["ioattn_version"] = info.version;
  res["ioattn_cpu_features"] = info.cpu_features;
  res["compiler"] = __VERSION__;
  res["quick"] = quick;
  res["flops_convention"] = "forward 4*B*H*N^2*d, halved for causal; backward 2.5x forward";

  std::fprintf(stderr, "SGEMM ...\n");
  res["sgemm"] = sgemm_bench(quick ? 2048 : 4096);
  res["attention"] = json::array();
  std::mt19937 rng(42);
  for (int d : dims) {
    for (int n : seqlens) {
      Shape s(n, d, rng);
      for (bool causal : {false, true}) {
        std::fprintf(stderr, "d %d seqlen %d causal %d ...\n", d, n, int(causal));
        json std_row = standard_bench(s, causal);
        json f32 = ioattn_bench(s, DType::F32, causal);
        // Same inputs, both fp32: ioattn's outputs should match standard attention's to fp32 rounding.
        if (!f32.contains("error")) {
          f32["max_abs_diff_out_vs_standard"] = max_abs_diff(s.out, s.s_out);
          f32["max_abs_diff_dq_vs_standard"] = max_abs_diff(s.dq, s.s_dq);
        }
        res["attention"].push_back(f32);
        res["attention"].push_back(ioattn_bench(s, DType::BF16, causal));
        res["attention"].push_back(std_row);
      }
    }
  }
  std::fprintf(stderr, "memory ...\n");
  res["memory"] = memory_bench(quick ? 16384 : 65536, 64);

  std::ofstream f(out);
  f << res.dump(2) << "\n";
  if (!f) std::fprintf(stderr, "could not write %s\n", out.c_str());
  print_table(res);
  std::printf("\nraw results: %s\n", out.c_str());
  return 0;
}
