#!/usr/bin/env python3
"""Side-by-side GPU attention benchmark, by /work/shared/BENCHMARKS.md's protocol.

Shapes: bf16, model width 2048 (heads = 2048 / head_dim), batch x seqlen = 16384 tokens, seqlen
512 ... 16384, head dim 64 / 128 / 256, causal and not. In one run, on one device:

  ioattn         through the `ioattn` CLI (`ioattn run --device cuda --json --backward`): CUDA events,
                 one warm-up call, median of --repeat calls, each behind a 256 MiB memset as do_bench
                 flushes L2 for the peers (tools/device.h); backward timed by itself. The CLI's JSON
                 also has the host time per call (fwd_host_us / bwd_host_us)
  SDPA backends  PyTorch scaled_dot_product_attention pinned to FLASH_ATTENTION (flash-attn 2),
                 CUDNN_ATTENTION and EFFICIENT_ATTENTION; triton.testing.do_bench median;
                 backward = time(forward + backward) - time(forward)
  FlexAttention  torch.compile'd flex_attention (only with --flex: compiling costs minutes)

--rounds N measures every shape N times (each round times every implementation once, the rounds one
after the other) and reports the medians, with each round's times and their spread in the JSON: the
long non-causal rows move by 5-11% between single sweeps on an H200 (bench/notes-sm90.md, "Session 22").

TFLOP/s as the FlashAttention papers count: forward 4·B·H·Sq·Sk·d (halved for causal),
backward 2.5x forward. Peak extra memory of forward + backward at the longest seqlen: for the
PyTorch peers torch.cuda.max_memory_allocated() minus the inputs (so out, lse and gradients count);
for ioattn the CLI's scratch + LSE plus the same out + gradient bytes, so the two are comparable.

Writes bench/results/gpu-<device>-<date>.json (device, date, torch / CUDA / cuDNN versions, every
measurement) and prints a table between BENCH TABLE / END TABLE lines (scripts/gpu_check.sh shows it).
"""
import argparse
import datetime
import json
import os
import re
import shutil
import statistics
import subprocess
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

try:
    from triton.testing import do_bench
except ImportError:  # pragma: no cover - triton ships with CUDA builds of torch
    do_bench = None

PEERS = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
}
WIDTH, TOKENS = 2048, 16384


def fwd_flops(b, h, sq, sk, d, causal):
    f = 4.0 * b * h * sq * sk * d
    return f / 2 if causal else f


def bench_ms(fn, grad_to_none=None):
    if do_bench is not None:
        return do_bench(fn, grad_to_none=grad_to_none, return_mode="median")
    # Fallback: CUDA events, warm-up, median of 30.
    for _ in range(3):
        fn()
    ts = []
    for _ in range(30):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        ts.append(s.elapsed_time(e))
    return sorted(ts)[len(ts) // 2]


def time_torch(attn, q, k, v, causal, measure_memory):
    """attn(q, k, v, causal) on BHSD tensors -> (fwd_ms, bwd_ms, peak_extra_bytes or None)."""
    with torch.no_grad():
        fwd = bench_ms(lambda: attn(q, k, v, causal))
    qg, kg, vg = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    dout = torch.randn_like(q)

    def fwd_bwd():
        attn(qg, kg, vg, causal).backward(dout)

    both = bench_ms(fwd_bwd, grad_to_none=[qg, kg, vg])
    peak = None
    if measure_memory:
        qg.grad = kg.grad = vg.grad = None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fwd_bwd()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    return fwd, max(both - fwd, 0.0), peak


def sdpa(backend):
    def attn(q, k, v, causal):
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    return attn


def flex():
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    compiled = torch.compile(flex_attention)
    masks = {}

    def attn(q, k, v, causal):
        if not causal:
            return compiled(q, k, v)
        key = (q.shape[-2], k.shape[-2])
        if key not in masks:
            masks[key] = create_block_mask(lambda b, h, qi, ki: qi >= ki, None, None, key[0], key[1])
        return compiled(q, k, v, block_mask=masks[key])
    return attn


def run_ioattn(cli, b, h, s, d, causal, repeat, env=None, extra=()):
    """One CLI run (fwd + bwd; fwd only if the build has no CUDA backward). Returns its JSON.
    env: extra environment variables (IOATTN_SM90=0 times the sm80 kernels on a Hopper GPU);
    extra: more CLI arguments (--kv-heads N, --varlen)."""
    base = [cli, "run", "--device", "cuda", "--dtype", "bf16", "--batch", str(b), "--heads", str(h),
            "--seqlen", str(s), "--head-dim", str(d), "--json", "--repeat", str(repeat), *extra]
    if causal:
        base.append("--causal")
    for cmd in (base + ["--backward"], base):
        r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
        start = r.stdout.find("{")  # the CLI prints one (indented, multi-line) JSON object
        if r.returncode == 0 and start >= 0:
            return json.JSONDecoder().raw_decode(r.stdout[start:])[0]
        err = (r.stderr or r.stdout).strip().splitlines()
        last_err = err[-1] if err else f"exit {r.returncode}"
    return {"error": last_err}


def tf(r, name, key):
    x = r.get(name, {})
    return x.get(key) if isinstance(x, dict) else None


def header(peers, extra=()):
    h = (f"{'d':>4} {'seqlen':>6} {'causal':>6} | {'ioattn':>11} | " + " | ".join(f"{n:>11}" for n in list(peers) + list(extra)) +
         " | ratio/best  ratio/flash")
    return h + "\n" + "-" * len(h)


def table_line(r, peers, extra=()):
    """One table row (TFLOP/s fwd/bwd per implementation, ratios against the peers; `extra` columns,
    such as ioattn-sm80, are shown but not compared with); also stores the ratios in r."""
    cells = []
    for name in ["ioattn"] + list(peers) + list(extra):
        f, bw = tf(r, name, "fwd_tflops"), tf(r, name, "bwd_tflops")
        cells.append(f"{f:5.0f}/{bw:5.0f}" if f and bw else (f"{f:5.0f}/  -  " if f else f"{'n/a':>11}"))
    ratios = {}
    for key in ("fwd_tflops", "bwd_tflops"):
        mine = tf(r, "ioattn", key)
        best = max([tf(r, n, key) or 0 for n in peers] or [0])
        fl = tf(r, "flash", key)
        ratios[key] = (mine / best if mine and best else None, mine / fl if mine and fl else None)
    r["ratio"] = {"fwd_vs_best": ratios["fwd_tflops"][0], "fwd_vs_flash": ratios["fwd_tflops"][1],
                  "bwd_vs_best": ratios["bwd_tflops"][0], "bwd_vs_flash": ratios["bwd_tflops"][1]}

    def fmt(x):
        return f"{x:4.2f}" if x else " -  "
    rb = f"{fmt(ratios['fwd_tflops'][0])}/{fmt(ratios['bwd_tflops'][0])}"
    rf = f"{fmt(ratios['fwd_tflops'][1])}/{fmt(ratios['bwd_tflops'][1])}"
    return (f"{r['head_dim']:>4} {r['seqlen']:>6} {str(r['causal']):>6} | " + " | ".join(cells) +
            f" | {rb:>10}  {rf:>10}")


def shape_checks(cli, repeat):
    """The issue's per-FLOP checks: GQA (32 query heads over 8 kv heads) and varlen batches (random
    lengths summing to the same tokens; FLOPs counted from the real lengths by the CLI) against the
    dense case of the same shape, head dim 128, B*S = 16384, ioattn alone (TFLOP/s fwd / bwd); and the
    deterministic backward's TFLOP/s on the default path and on the sm80 kernels (IOATTN_SM90_BWD=0).
    Returns rows and prints them between SHAPE TABLE / END SHAPE TABLE."""
    rows = []
    for s in (2048, 8192):
        b = TOKENS // s
        for causal in (False, True):
            row = {"seqlen": s, "batch": b, "heads": 32, "head_dim": 128, "causal": causal}
            for name, extra, env in (("dense", (), None), ("gqa_32_8", ("--kv-heads", "8"), None),
                                     ("varlen", ("--varlen",), None), ("deterministic", ("--deterministic",), None),
                                     ("deterministic_sm80", ("--deterministic",), {"IOATTN_SM90_BWD": "0"})):
                row[name] = run_ioattn(cli, b, 32, s, 128, causal, repeat, env=env, extra=extra)
            rows.append(row)
    print("SHAPE TABLE")
    print("ioattn TFLOP/s fwd / bwd, bf16, 32 query heads, head dim 128, batch x seqlen = 16384; "
          "ratios to dense per FLOP (target >= 0.90)")
    hdr = (f"{'seqlen':>6} {'causal':>6} | {'dense':>11} | {'gqa 32/8':>11} | {'varlen':>11} | "
           f"{'gqa/dense':>11} | {'varlen/dense':>12} | {'det bwd':>7} {'det sm80':>8}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        def cell(name):
            return f"{fmt_tf(r, name, 'fwd_tflops')}/{fmt_tf(r, name, 'bwd_tflops')}"

        def ratio(name):
            out = []
            for key in ("fwd_tflops", "bwd_tflops"):
                a, d = tf(r, name, key), tf(r, "dense", key)
                out.append(f"{a / d:4.2f}" if a and d else " -  ")
            return "/".join(out)
        print(f"{r['seqlen']:>6} {str(r['causal']):>6} | {cell('dense'):>11} | {cell('gqa_32_8'):>11} | "
              f"{cell('varlen'):>11} | {ratio('gqa_32_8'):>11} | {ratio('varlen'):>12} | "
              f"{fmt_tf(r, 'deterministic', 'bwd_tflops'):>7} {fmt_tf(r, 'deterministic_sm80', 'bwd_tflops'):>8}")
    print("END SHAPE TABLE")
    return rows


def fmt_tf(r, name, key):
    x = tf(r, name, key)
    return f"{x:5.0f}" if x else "  -  "


def measure_row(args, have_cli, peers, b, h, s, d, causal, flops, mem):
    """One round of one shape: every peer (in this process), then ioattn (the CLI, when there is one,
    and with --sm80-column its sm80 kernels). Returns {implementation: result dict}."""
    out = {}
    torch.manual_seed(0)
    q, k, v = (torch.randn(b, h, s, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    for name, attn in peers.items():
        try:
            fwd, bwd, peak = time_torch(attn, q, k, v, causal, mem)
            out[name] = {"fwd_ms": fwd, "bwd_ms": bwd, "fwd_tflops": flops / fwd / 1e9,
                         "bwd_tflops": 2.5 * flops / bwd / 1e9 if bwd > 0 else None, "peak_extra_bytes": peak}
        except Exception as e:  # a backend that does not support the shape
            out[name] = {"error": str(e).splitlines()[0][:200] if str(e) else type(e).__name__}
        torch.cuda.empty_cache()
    del q, k, v
    torch.cuda.empty_cache()
    if have_cli:
        j = run_ioattn(args.cli, b, h, s, d, causal, args.repeat)
        if "error" not in j:
            tensor_bytes = b * s * h * d * 2
            j["peak_extra_bytes_with_outputs"] = j.get("peak_extra_bytes", 0) + tensor_bytes * (
                4 if j.get("bwd_ms") is not None else 1)
        out["ioattn"] = j
        if args.sm80_column:
            out["ioattn-sm80"] = run_ioattn(args.cli, b, h, s, d, causal, args.repeat, {"IOATTN_SM90": "0"})
    return out


def merge_rounds(rounds, flops):
    """One result per implementation from several rounds: the first round's record (its memory
    figures, the CLI's fields) with fwd_ms / bwd_ms the medians over the rounds that succeeded and the
    TFLOP/s recomputed from them; each round's times under "rounds", and "spread" = (max - min) /
    median of the forward and backward times (bench_variants.py's measure of run-to-run noise)."""
    if len(rounds) == 1:
        return rounds[0]
    merged = {}
    for name, first in rounds[0].items():
        ok = [r[name] for r in rounds if "error" not in r.get(name, {"error": 1})]
        if "error" in first or len(ok) < len(rounds):
            merged[name] = first if "error" in first else {"error": "failed in a later round"}
            continue
        x = dict(first)
        x["rounds"] = [{"fwd_ms": r["fwd_ms"], "bwd_ms": r.get("bwd_ms")} for r in ok]
        spread = {}
        for key, tkey, scale in (("fwd_ms", "fwd_tflops", 1.0), ("bwd_ms", "bwd_tflops", 2.5)):
            ts = sorted(r[key] for r in ok if r.get(key))
            if len(ts) != len(ok):
                continue
            med = statistics.median(ts)
            x[key], x[tkey] = med, scale * flops / med / 1e9
            spread[key] = (ts[-1] - ts[0]) / med
        x["spread"] = spread
        merged[name] = x
    return merged


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cli", default=shutil.which("ioattn") or "build-gpu/tools/ioattn", help="the ioattn CLI")
    ap.add_argument("--seqlens", default="512,1024,2048,4096,8192,16384")
    ap.add_argument("--head-dims", default="64,128,192,256")
    ap.add_argument("--causal", default="0,1", help="0, 1 or 0,1")
    ap.add_argument("--peers", default="flash,cudnn,efficient")
    ap.add_argument("--flex", action="store_true", help="also FlexAttention (torch.compile; slow to start)")
    ap.add_argument("--repeat", type=int, default=30, help="ioattn CLI timed repetitions")
    ap.add_argument("--rounds", type=int, default=1,
                    help="measure every shape this many times (all implementations each round) and report "
                         "the medians; the JSON keeps each round's times and their spread")
    ap.add_argument("--out-dir", default="bench/results")
    ap.add_argument("--shape-checks", action="store_true",
                    help="also the GQA (32/8 heads) and varlen per-FLOP checks against dense (ioattn only)")
    ap.add_argument("--sm80-column", action="store_true",
                    help="also time ioattn with IOATTN_SM90=0 (its sm80 kernels) as column ioattn-sm80")
    args = ap.parse_args()

    dev = torch.cuda.get_device_properties(0)
    seqlens = [int(x) for x in args.seqlens.split(",")]
    head_dims = [int(x) for x in args.head_dims.split(",")]
    causals = [bool(int(x)) for x in args.causal.split(",")]
    peers = {n: sdpa(PEERS[n]) for n in args.peers.split(",") if n}
    extra = ["ioattn-sm80"] if args.sm80_column else []
    if args.flex:
        peers["flex"] = flex()
    have_cli = os.path.exists(args.cli)
    if not have_cli:
        print(f"warning: {args.cli} not found; ioattn is not timed", file=sys.stderr)

    rows = []
    longest = max(seqlens)
    for d in head_dims:
        h = WIDTH // d
        for s in seqlens:
            b = max(1, TOKENS // s)
            for causal in causals:
                flops = fwd_flops(b, h, s, s, d, causal)
                row = {"head_dim": d, "seqlen": s, "batch": b, "heads": h, "causal": causal, "fwd_flops": flops}
                # Every implementation once per round, the rounds one after the other, so that each
                # sees the same drift of the machine (clocks, temperature, where the inputs land).
                rounds = [measure_row(args, have_cli, peers, b, h, s, d, causal, flops, mem=(s == longest and r == 0))
                          for r in range(args.rounds)]
                row.update(merge_rounds(rounds, flops))
                rows.append(row)
                if len(rows) == 1:
                    print(header(peers, extra), flush=True)
                print(table_line(row, peers, extra), flush=True)

    print("BENCH TABLE")
    print("TFLOP/s fwd/bwd, bf16, heads = 2048/d, batch x seqlen = 16384")
    for ln in [header(peers, extra)] + [table_line(r, peers, extra) for r in rows]:
        print(ln)
    mem_lines = []
    for r in rows:
        if r["seqlen"] != longest:
            continue
        parts = []
        for name in ["ioattn"] + list(peers):
            x = r.get(name, {})
            pk = x.get("peak_extra_bytes_with_outputs", x.get("peak_extra_bytes")) if isinstance(x, dict) else None
            parts.append(f"{name} {pk / 2**20:.0f} MiB" if pk is not None else f"{name} n/a")
        mem_lines.append(f"peak extra fwd+bwd memory d={r['head_dim']} seqlen={r['seqlen']} causal={r['causal']}: " +
                         ", ".join(parts))

    for ln in mem_lines:
        print(ln)
    if args.rounds > 1:  # the noise the ratios above sit in
        for name in ["ioattn"] + list(peers) + extra:
            worst = max(((sp, key, r) for r in rows for key, sp in r.get(name, {}).get("spread", {}).items()),
                        default=None, key=lambda t: t[0])
            if worst:
                sp, key, r = worst
                print(f"largest spread over {args.rounds} rounds, {name}: {100 * sp:.1f}% ({key[:3]}, "
                      f"d={r['head_dim']} seqlen={r['seqlen']} causal={r['causal']})")
    print("END TABLE")
    shape_rows = shape_checks(args.cli, args.repeat) if args.shape_checks and have_cli else []

    name = re.sub(r"[^A-Za-z0-9]+", "-", dev.name).strip("-").lower()
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    os.makedirs(args.out_dir, exist_ok=True)
    path = os.path.join(args.out_dir, f"gpu-{name}-{date}.json")
    meta = {"device": dev.name, "sm_count": dev.multi_processor_count, "date": datetime.datetime.now(
        datetime.timezone.utc).isoformat(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(), "protocol": "BENCHMARKS.md: bf16, heads=2048/d, B*S=16384",
        "rounds": args.rounds,
        "rows": rows, "shape_checks": shape_rows}
    with open(path, "w") as f:
        json.dump(meta, f, indent=1)
    print(f"saved {path}")


if __name__ == "__main__":
    main()
