#!/usr/bin/env python3
"""GPU time of one forward + backward call, kernel by kernel (torch.profiler / CUPTI), for ioattn
and SDPA's cuDNN and flash backends, on bench_attn.py's protocol (bf16, heads = 2048 / head dim,
batch x seqlen = 16384): how much of the backward is outside its main kernel (our bwd_preprocess,
which also zeroes the fp32 dQ accumulator, and bwd_convert_dq: a fixed ~470 MB of memory traffic at
this protocol, so a larger share at short sequences), and how the peers split theirs.

  PYTHONPATH=<ioattn package> python3 bench/gpu/profile_bwd.py --shapes 512:128,512:128:causal,2048:128
With a `pip install --target` package on PYTHONPATH the GPU machine's run of the script from
bench/gpu found an `ioattn` without flash_attn_func (session 11, cause not found); from the repo root
through runpy it works:
  PYTHONPATH=<package>:bench/gpu python3 -c "import runpy; runpy.run_path('bench/gpu/profile_bwd.py', run_name='__main__')"
"""
import argparse

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import ioattn
from profile_decode import print_kernels


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="512:64,512:128,512:128:causal,1024:128,2048:128,2048:128:causal,512:256",
                    help="SEQLEN:HEAD_DIM[:causal] list")
    ap.add_argument("--calls", type=int, default=10)
    ap.add_argument("--peers", default="cudnn,flash")
    args = ap.parse_args()
    no_flush = torch.empty(1, device="cuda")  # (kernels_per_call's flush; prefill inputs dwarf the L2)
    for shape in args.shapes.split(","):
        parts = shape.split(":")
        s, d, causal = int(parts[0]), int(parts[1]), len(parts) > 2 and parts[2] == "causal"
        b, h = 16384 // s, 2048 // d
        torch.manual_seed(0)
        q, k, v, do = (torch.randn(b, s, h, d, device="cuda", dtype=torch.bfloat16) for _ in range(4))
        q.requires_grad_(), k.requires_grad_(), v.requires_grad_()
        qt, kt, vt = (x.detach().transpose(1, 2).contiguous().requires_grad_() for x in (q, k, v))
        dot = do.transpose(1, 2).contiguous()

        def ours():
            ioattn.flash_attn_func(q, k, v, causal=causal).backward(do)

        impls = {"ioattn": ours}
        backends = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}
        for name in (x for x in args.peers.split(",") if x):
            def peer(be=backends[name]):
                with sdpa_kernel(be):
                    F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal).backward(dot)
            impls[name] = peer
        flops = 4 * b * h * s * s * d * (0.5 if causal else 1.0)  # forward; backward 2.5x
        print(f"== seqlen {s}, head dim {d}, {'causal' if causal else 'non-causal'}: batch {b}, heads {h}; "
              f"forward {flops / 1e9:.0f} GFLOP, backward {2.5 * flops / 1e9:.0f}")
        for name, fn in impls.items():
            print_kernels(name, fn, no_flush, args.calls, min_us=0.5)
        del q, k, v, do, qt, kt, vt, dot
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
