#!/usr/bin/env python3
"""GPU time per decode call, kernel by kernel (torch.profiler / CUPTI), for ioattn and SDPA's cuDNN
and flash backends on bench_decode.py's shapes: what a call's time is made of beyond its kernels'
durations (launch and dependency gaps), and which kernel of ours is slower than the peer's.

Every call is preceded by a 256 MB write (the L2 flush bench_decode's timing does); the flush
kernel is left out of the table. Prints, per shape and implementation, the mean device time per
call of every kernel and their sum.

  PYTHONPATH=<ioattn package> python3 bench/gpu/profile_decode.py --shapes 1x1024,1x8192,8x8192
"""
import argparse
import collections

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import ProfilerActivity, profile

import ioattn

HQ, HK, D = 32, 8, 128


def kernels_per_call(fn, flush, calls):
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            flush.zero_()
            fn()
        torch.cuda.synchronize()
    per = collections.defaultdict(float)
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA and e.device_time_total > 0:
            per[e.name] += e.device_time_total / calls
    flush_names = [n for n in per if "fill" in n.lower() or "zero" in n.lower() and "Memset" not in n]
    return {n: t for n, t in per.items() if n not in flush_names}


def print_kernels(name, fn, flush, calls, min_us=0.0):
    """One line: the implementation's device time per call and its kernels' (from kernels_per_call),
    or the error of a backend that rejects the shape."""
    try:
        per = kernels_per_call(fn, flush, calls)
    except Exception as e:  # a backend that rejects the shape
        print(f"  {name:17} error: {str(e).splitlines()[0][:120]}")
        return
    total = sum(per.values())
    parts = "; ".join(f"{n[:70]} {t:.1f}" for n, t in sorted(per.items(), key=lambda x: -x[1]) if t >= min_us)
    print(f"  {name:17} {total:8.1f} us  [{parts}]")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="1x1024,1x8192,8x1024,8x8192,64x8192", help="BATCHxSEQLEN_K list")
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--splits", default="0", help="ioattn's num_splits values to time (0: its heuristic)")
    ap.add_argument("--plain", action="store_true", help="only call (flush, call) x --calls, no profiler: under ncu")
    ap.add_argument("--impls", default="", help="only these (comma list of the names printed), e.g. for ncu")
    args = ap.parse_args()
    flush = torch.empty(256 * 2**20 // 4, dtype=torch.int32, device="cuda")
    for shape in args.shapes.split(","):
        b, sk = (int(x) for x in shape.split("x"))
        torch.manual_seed(0)
        q = torch.randn(b, 1, HQ, D, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(b, sk, HK, D, device="cuda", dtype=torch.bfloat16)
        v = torch.randn(b, sk, HK, D, device="cuda", dtype=torch.bfloat16)
        lens = torch.full((b,), sk, dtype=torch.int32, device="cuda")
        kh, vh = k.transpose(1, 2).contiguous(), v.transpose(1, 2).contiguous()
        qb = q.transpose(1, 2).contiguous()
        impls = {}
        for ns in (int(x) for x in args.splits.split(",")):
            tag = "" if ns == 0 else f"-s{ns}"
            impls["ioattn" + tag] = lambda ns=ns: ioattn.flash_attn_with_kvcache(q, k, v, cache_seqlens=lens, num_splits=ns)
            impls["ioattn-headmajor" + tag] = lambda ns=ns: ioattn.flash_attn_with_kvcache(
                q, kh.transpose(1, 2), vh.transpose(1, 2), cache_seqlens=lens, num_splits=ns)
        for name, be in (("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION)):
            def call(be=be):
                with sdpa_kernel(be):
                    return F.scaled_dot_product_attention(qb, kh, vh, enable_gqa=True)
            impls[name] = call
        print(f"== batch {b}, seqlen_k {sk}: K/V {2 * b * sk * HK * D * 2 / 2**20:.1f} MiB")
        only = [x for x in args.impls.split(",") if x]
        for name, fn in impls.items():
            if only and name not in only:
                continue
            if args.plain:
                for _ in range(args.calls):
                    flush.zero_()
                    fn()
                torch.cuda.synchronize()
                continue
            print_kernels(name, fn, flush, args.calls)
        del q, k, v, kh, vh, qb
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
