#!/usr/bin/env python3
"""Host-side cost per call of the Python API (eager mode), against PyTorch SDPA, on a shape small
enough that the GPU finishes each kernel long before the next call arrives: the time per call is
then the CPU's (Python, torch.library dispatch, validation, tensor-map encoding, launches). In a
training step of a small model these costs add up when the CPU is the bottleneck (the examples'
GPT: 6 layers, ms/step against SDPA's).

For each of ioattn.flash_attn_func and F.scaled_dot_product_attention: wall time per forward and
per forward + backward over --calls calls with one synchronisation at the end, then a
torch.profiler table of the CPU-side operators and CUDA runtime calls of 20 forward + backward
calls (sorted by CPU time: a cudaStreamSynchronize or cudaMalloc there would be a stall).

    python3 bench/gpu/bench_overhead.py [--calls 500] [--device cuda]
"""
import argparse
import time

import torch
import torch.nn.functional as F

import ioattn


def per_call_us(fn, calls, sync):
    for _ in range(20):
        fn()
    sync()
    t = time.perf_counter()
    for _ in range(calls):
        fn()
    sync()
    return (time.perf_counter() - t) / calls * 1e6


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=500)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    b, s, h, hk, d = 2, 128, 8, 2, 64  # GQA as in the GPT example
    q = torch.randn(b, s, h, d, device=dev, dtype=dtype, requires_grad=True)
    k = torch.randn(b, s, hk, d, device=dev, dtype=dtype, requires_grad=True)
    v = torch.randn(b, s, hk, d, device=dev, dtype=dtype, requires_grad=True)
    g = torch.randn(b, s, h, d, device=dev, dtype=dtype)

    def ours():
        return ioattn.flash_attn_func(q, k, v, causal=True)

    def sdpa():
        return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                              is_causal=True, enable_gqa=True).transpose(1, 2)

    print(f"device {torch.cuda.get_device_name(dev) if cuda else 'cpu'}, torch {torch.__version__}, "
          f"q {tuple(q.shape)} k/v {tuple(k.shape)} {dtype}, causal")
    print(f"{'':8s} {'fwd us/call':>12s} {'fwd+bwd us/call':>16s}")
    for name, fn in (("ioattn", ours), ("sdpa", sdpa)):
        with torch.no_grad():
            f_us = per_call_us(fn, args.calls, sync)
        fb_us = per_call_us(lambda: fn().backward(g), args.calls, sync)
        print(f"{name:8s} {f_us:12.1f} {fb_us:16.1f}")
    from torch.profiler import ProfilerActivity, profile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    for name, fn in (("ioattn", ours), ("sdpa", sdpa)):
        with profile(activities=acts) as prof:
            for _ in range(20):
                fn().backward(g)
            sync()
        print(f"profile of 20 forward + backward calls, {name}:")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


if __name__ == "__main__":
    main()
