// `ioattn run`. One problem, start to end:
//   1. random host inputs (problem.cpp) copied to the device;
//   2. outputs poisoned with 0xFF bytes (NaN in every float dtype), so anything the library fails to
//      write shows up in --check;
//   3. workspace sized by the library's own queries; one warm-up call, then --repeat timed calls
//      (median; on the GPU each behind an L2 flush, as do_bench times the PyTorch peers:
//      Device::time_ms), and the host time per call; backward is timed by itself, given the
//      forward's O and LSE;
//   4. peak extra memory: the backend's scratch plus the LSE, the O(N) the algorithm keeps;
//   5. with --check, the outputs against the float64 reference (check.cpp).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <optional>

#include "check.h"
#include "commands.h"
#include "device.h"

namespace ioattn_tool {
namespace {

using ioattn::DeviceType;
using ioattn::TensorView;
using json = nlohmann::ordered_json;  // keys in the order written

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Times `call` (one warm-up, then `repeat` runs): the medians of the device time (Device::time_ms)
// and of the host time the call takes to return (on the GPU: validation, tensor maps, launches, what
// a caller's thread spends per call; on the CPU the same as the device time).
struct Timing {
  double ms = 0, host_us = 0;
};
Timing time_call(Device& dev, int repeat, const std::string& what, const std::function<ioattn::Status()>& call) {
  throw_if_error(call(), what);  // warm-up; also the first place a library error surfaces
  std::vector<double> ms, host_us;
  for (int r = 0; r < repeat; ++r) {
    ioattn::Status s;
    ms.push_back(dev.time_ms([&] {
      const auto t0 = std::chrono::steady_clock::now();
      s = call();
      host_us.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
    }));
    throw_if_error(s, what);
  }
  return {median(ms), median(host_us)};
}

// A device tensor: its buffer and a contiguous view over it.
struct DeviceTensor {
  Buffer buf;
  TensorView view;
};

DeviceTensor alloc_tensor(Device& dev, ioattn::DType dt, const std::vector<int64_t>& shape) {
  DeviceTensor t;
  t.buf = Buffer(&dev, static_cast<size_t>(numel(shape)) * ioattn::dtype_size(dt));
  t.view = view_of(t.buf.data(), dt, shape, dev.type(), dev.index());
  return t;
}

DeviceTensor upload(Device& dev, ioattn::DType dt, const std::vector<int64_t>& shape, const void* host) {
  DeviceTensor t = alloc_tensor(dev, dt, shape);
  dev.to_device(t.buf.data(), host, t.buf.bytes());
  return t;
}

DeviceTensor poisoned(Device& dev, ioattn::DType dt, const std::vector<int64_t>& shape) {
  DeviceTensor t = alloc_tensor(dev, dt, shape);
  dev.fill_bytes(t.buf.data(), 0xFF, t.buf.bytes());
  return t;
}

std::vector<double> download(Device& dev, const DeviceTensor& t) {
  std::vector<unsigned char> host(t.buf.bytes());
  dev.to_host(host.data(), t.buf.data(), host.size());
  return widen(host.data(), t.view.dtype, static_cast<size_t>(t.view.numel()));
}

std::string bytes_str(double b) {
  const char* unit[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) { b /= 1024; ++u; }
  char s[32];
  std::snprintf(s, sizeof s, u ? "%.1f %s" : "%.0f %s", b, unit[u]);
  return s;
}

struct Measured {
  std::string device_name, choice;
  double fwd_flops = 0, fwd_ms = 0, fwd_host_us = 0;
  std::optional<double> bwd_ms, bwd_host_us;
  size_t scratch_bytes = 0, lse_bytes = 0;
  double score_matrix_bytes = 0;  // one N×N matrix of standard attention in this dtype
  std::optional<CheckReport> check;
};

json opt(const std::optional<double>& v) { return v ? json(*v) : json(nullptr); }
json err_json(const ErrorPair& e) { return e.measured ? json(e.err) : json(nullptr); }
json std_json(const ErrorPair& e) { return e.measured ? json(e.standard) : json(nullptr); }

void print_json(const RunConfig& c, const Measured& m) {
  const double tf = m.fwd_flops / (m.fwd_ms * 1e-3) / 1e12;
  std::optional<double> bwd_tf;
  if (m.bwd_ms) bwd_tf = 2.5 * m.fwd_flops / (*m.bwd_ms * 1e-3) / 1e12;
  json j;
  j["device"] = c.device == DeviceType::CPU ? "cpu" : "cuda";
  j["device_name"] = m.device_name;
  j["dtype"] = ioattn::dtype_name(c.dtype);
  j["batch"] = c.batch;
  j["heads"] = c.heads;
  j["kv_heads"] = c.kv_heads;
  j["seqlen_q"] = c.seqlen_q;
  j["seqlen_k"] = c.seqlen_k;
  j["head_dim"] = c.head_dim;
  j["head_dim_v"] = c.head_dim_v;
  j["causal"] = c.causal;
  j["window"] = {c.window_left, c.window_right};
  j["softcap"] = c.softcap;
  j["dropout"] = c.dropout;
  j["alibi"] = c.alibi;
  j["varlen"] = c.varlen;
  j["deterministic"] = c.deterministic;
  j["seed"] = c.seed;
  j["repeat"] = c.repeat;
  j["fwd_flops"] = m.fwd_flops;
  j["fwd_ms"] = m.fwd_ms;
  j["fwd_tflops"] = tf;
  j["bwd_ms"] = opt(m.bwd_ms);
  j["bwd_tflops"] = opt(bwd_tf);
  j["fwd_host_us"] = m.fwd_host_us;
  j["bwd_host_us"] = opt(m.bwd_host_us);
  j["peak_extra_bytes"] = m.scratch_bytes + m.lse_bytes;
  j["scratch_bytes"] = m.scratch_bytes;
  j["lse_bytes"] = m.lse_bytes;
  j["standard_score_matrix_bytes"] = m.score_matrix_bytes;
  j["choice"] = m.choice;
  const CheckReport* r = m.check ? &*m.check : nullptr;
  const ErrorPair none;
  j["max_abs_err"] = err_json(r ? r->out : none);
  j["standard_max_abs_err"] = std_json(r ? r->out : none);
  j["lse_max_abs_err"] = err_json(r ? r->lse : none);
  j["standard_lse_max_abs_err"] = std_json(r ? r->lse : none);
  for (const char* g : {"dq", "dk", "dv"}) {
    const ErrorPair& e = !r ? none : g[1] == 'q' ? r->dq : g[1] == 'k' ? r->dk : r->dv;
    j[std::string(g) + "_max_abs_err"] = err_json(e);
    j[std::string("standard_") + g + "_max_abs_err"] = std_json(e);
  }
  j["check_row_stride"] = r ? json(r->row_stride) : json(nullptr);
  j["check_backward"] = r ? json(r->backward_checked) : json(nullptr);
  j["check_note"] = r && !r->backward_note.empty() ? json(r->backward_note) : json(nullptr);
  j["pass"] = r ? json(r->pass()) : json(nullptr);
  std::printf("%s\n", j.dump(2).c_str());
}

void print_err_line(const char* name, const ErrorPair& e, const char* dtype) {
  std::printf("  %-4s max abs err %.3e   standard %s %.3e   limit %.3e   %s\n", name, e.err, dtype, e.standard,
              2 * e.standard + e.slack, e.pass() ? "ok" : "FAIL");
}

void print_text(const RunConfig& c, const Measured& m) {
  const char* dt = ioattn::dtype_name(c.dtype);
  std::printf("ioattn run  %s  %s  batch %d  heads %d", m.device_name.c_str(), dt, c.batch, c.heads);
  if (c.kv_heads != c.heads) std::printf(" (kv %d)", c.kv_heads);
  std::printf("  seqlen %d", c.seqlen_q);
  if (c.seqlen_k != c.seqlen_q) std::printf("x%d", c.seqlen_k);
  std::printf("  head dim %d", c.head_dim);
  if (c.head_dim_v != c.head_dim) std::printf(" (v %d)", c.head_dim_v);
  if (c.causal) std::printf("  causal");
  if (c.window_left >= 0 || c.window_right >= 0) std::printf("  window (%d,%d)", c.window_left, c.window_right);
  if (c.softcap > 0) std::printf("  softcap %g", c.softcap);
  if (c.alibi) std::printf("  alibi");
  if (c.dropout > 0) std::printf("  dropout %g", c.dropout);
  if (c.varlen) std::printf("  varlen");
  std::printf("\n  choice:   %s\n", m.choice.c_str());
  const double tf = m.fwd_flops / (m.fwd_ms * 1e-3) / 1e12;
  // The host time per call is shown for the GPU only (on the CPU it is the call).
  auto host = [&](double us) {
    return c.device != DeviceType::CPU ? "; host " + std::to_string(int(us + 0.5)) + " us per call" : std::string();
  };
  std::printf("  forward:  %10.3f ms  %8.3f TFLOP/s   (median of %d, %.3g GFLOP%s)\n", m.fwd_ms, tf, c.repeat,
              m.fwd_flops / 1e9, host(m.fwd_host_us).c_str());
  if (m.bwd_ms)
    std::printf("  backward: %10.3f ms  %8.3f TFLOP/s   (median of %d, 2.5x forward FLOPs%s)\n", *m.bwd_ms,
                2.5 * m.fwd_flops / (*m.bwd_ms * 1e-3) / 1e12, c.repeat, host(*m.bwd_host_us).c_str());
  std::printf("  extra memory: %s (scratch %s + LSE %s); standard attention stores %s per N×N matrix\n",
              bytes_str(double(m.scratch_bytes + m.lse_bytes)).c_str(), bytes_str(double(m.scratch_bytes)).c_str(),
              bytes_str(double(m.lse_bytes)).c_str(), bytes_str(m.score_matrix_bytes).c_str());
  if (!m.check) return;
  const CheckReport& r = *m.check;
  std::printf("  check against the float64 reference (%s):\n",
              r.row_stride == 1 ? "all query rows"
                                : ("1 in " + std::to_string(r.row_stride) + " query rows, for size").c_str());
  print_err_line("O", r.out, dt);
  print_err_line("LSE", r.lse, dt);
  if (r.backward_checked) {
    print_err_line("dQ", r.dq, dt);
    print_err_line("dK", r.dk, dt);
    print_err_line("dV", r.dv, dt);
  } else if (!r.backward_note.empty()) {
    std::printf("  backward check %s\n", r.backward_note.c_str());
  }
  std::printf("  %s  (rule: err <= 2 x standard err + max(eps/2, 4 fp32 ulp) x max(1, |ref|))\n", r.pass() ? "PASS" : "FAIL");
}

}  // namespace

int run_command(const RunConfig& c) {
  std::unique_ptr<Device> dev = c.device == DeviceType::CPU ? make_cpu_device() : make_cuda_device(c.device_index);
  const HostProblem hp = make_problem(c);
  Device& d = *dev;

  const auto qs = q_shape(c, hp), kvs = kv_shape(c, hp), ls = lse_shape(c, hp);
  const auto vs = v_shape(c, hp), os = o_shape(c, hp);  // v / out: head_dim_v
  DeviceTensor q = upload(d, c.dtype, qs, hp.q.data());
  DeviceTensor k = upload(d, c.dtype, kvs, hp.k.data());
  DeviceTensor v = upload(d, c.dtype, vs, hp.v.data());
  DeviceTensor out = poisoned(d, c.dtype, os);
  DeviceTensor lse = poisoned(d, ioattn::DType::F32, ls);

  ioattn::Args args = c.args();
  DeviceTensor slopes, cu_q, cu_k;
  if (c.alibi) {
    slopes = upload(d, ioattn::DType::F32, {c.heads}, hp.alibi_slopes.data());
    args.alibi_slopes = slopes.view;
  }
  if (c.varlen) {
    cu_q = upload(d, ioattn::DType::I32, {c.batch + 1}, hp.cu_q.data());
    cu_k = upload(d, ioattn::DType::I32, {c.batch + 1}, hp.cu_k.data());
    args.cu_seqlens_q = cu_q.view;
    args.cu_seqlens_k = cu_k.view;
    args.max_seqlen_q = hp.max_q;
    args.max_seqlen_k = hp.max_k;
  }

  Measured m;
  m.device_name = d.name();
  m.choice = ioattn::describe_forward_choice(q.view, k.view, v.view, args);
  m.fwd_flops = forward_flops(c, hp);
  m.lse_bytes = lse.buf.bytes();
  m.score_matrix_bytes = score_matrix_elements(c, hp) * ioattn::dtype_size(c.dtype);

  size_t ws_fwd = 0, ws_bwd = 0;
  throw_if_error(ioattn::forward_workspace_size(q.view, k.view, v.view, args, &ws_fwd), "forward_workspace_size");
  if (c.backward)
    throw_if_error(ioattn::backward_workspace_size(q.view, k.view, v.view, args, &ws_bwd), "backward_workspace_size");
  // Forward and backward run one after the other, so one buffer of the larger size serves both.
  Buffer workspace(&d, std::max(ws_fwd, ws_bwd));
  args.workspace = workspace.data();
  args.workspace_bytes = workspace.bytes();

  if (d.type() == DeviceType::CPU) ioattn::reset_cpu_peak_scratch_bytes();
  const Timing fwd = time_call(d, c.repeat, "forward",
                               [&] { return ioattn::forward(q.view, k.view, v.view, out.view, lse.view, args); });
  m.fwd_ms = fwd.ms;
  m.fwd_host_us = fwd.host_us;

  DeviceTensor dout, dq, dk, dv;
  if (c.backward) {
    dout = upload(d, c.dtype, os, hp.dout.data());
    dq = poisoned(d, c.dtype, qs);
    dk = poisoned(d, c.dtype, kvs);
    dv = poisoned(d, c.dtype, vs);
    const Timing bwd = time_call(d, c.repeat, "backward", [&] {
      return ioattn::backward(q.view, k.view, v.view, out.view, dout.view, lse.view, dq.view, dk.view, dv.view,
                              args);
    });
    m.bwd_ms = bwd.ms;
    m.bwd_host_us = bwd.host_us;
  }
  m.scratch_bytes = d.type() == DeviceType::CPU ? ioattn::cpu_peak_scratch_bytes() : workspace.bytes();

  if (c.check) {
    Outputs got;
    got.out = download(d, out);
    got.lse = download(d, lse);
    if (c.backward) {
      got.dq = download(d, dq);
      got.dk = download(d, dk);
      got.dv = download(d, dv);
    }
    m.check = check_against_reference(c, hp, got);
  }

  if (c.json) print_json(c, m);
  else print_text(c, m);
  return m.check && !m.check->pass() ? 1 : 0;
}

}  // namespace ioattn_tool
