# SDPA's backends with v narrower than q / k (head dims 192 / 128: DeepSeek's MLA prefill), at bench_variants.py's
# shapes (heads = 2048 // 192, batch x seqlen = 16384), bf16. Forward TFLOP/s = 2 B H S^2 (192 + 128) per
# second (halved causal), backward 2.5 x that (DESIGN.md's convention, as `ioattn run` counts), each from
# the median of 20 calls timed by CUDA events (the backward's events around `backward()` alone). SDPA's
# flash backend refuses v != q / k; each backend that refuses prints n/a. The peer columns of
# bench/results/variants-*-s27-fwd-mla.txt and -s28-mla-*.txt:
#   python3 bench/gpu/sdpa_head_dim_v.py [--backward] [--check]
# (--check first compares each backend's O, dQ, dK, dV with the math backend's in float64.)
import sys
import torch, torch.nn.functional as F
from torch.nn.attention import sdpa_kernel, SDPBackend

backward = "--backward" in sys.argv


def check():
    """Each backend's output and gradients against the math backend in float64, on one small shape per
    mask (B 2, H 4, S 1024): the max abs error of O, dQ, dK, dV, each over the max abs of its reference."""
    torch.manual_seed(0)
    B, H, S = 2, 4, 1024
    q = torch.randn(B, H, S, 192, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(B, H, S, 192, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(B, H, S, 128, device="cuda", dtype=torch.bfloat16)
    do = torch.randn(B, H, S, 128, device="cuda", dtype=torch.bfloat16)
    for causal in (False, True):
        def run(be, dtype):
            x = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
            with sdpa_kernel(be):
                o = F.scaled_dot_product_attention(*x, is_causal=causal)
            o.backward(do.to(dtype))
            return [o.detach().double()] + [t.grad.double() for t in x]
        ref = run(SDPBackend.MATH, torch.float64)
        row = f"check 192/128 B={B} H={H} S={S} causal={int(causal)} (max abs err / max abs ref: O dQ dK dV)"
        for name, be in (("cudnn", SDPBackend.CUDNN_ATTENTION), ("efficient", SDPBackend.EFFICIENT_ATTENTION),
                         ("math-bf16", SDPBackend.MATH)):
            try:
                got = run(be, torch.bfloat16)
                row += f"  {name} " + " ".join(f"{((g - r).abs().max() / r.abs().max()).item():.1e}" for g, r in zip(got, ref))
            except Exception as e:
                row += f"  {name} n/a ({type(e).__name__})"
        print(row, flush=True)


if "--check" in sys.argv:
    check()


def median_ms(fn, pre=None):
    for _ in range(3):
        if pre: pre()
        fn()
    ts = []
    for _ in range(20):
        if pre: pre()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); fn(); b.record()
        torch.cuda.synchronize(); ts.append(a.elapsed_time(b))
    ts.sort()
    return ts[len(ts) // 2]


for S in (1024, 2048, 4096, 16384):
    for causal in (False, True):
        H, B = 2048 // 192, 16384 // S
        q = torch.randn(B, H, S, 192, device="cuda", dtype=torch.bfloat16, requires_grad=backward)
        k = torch.randn(B, H, S, 192, device="cuda", dtype=torch.bfloat16, requires_grad=backward)
        v = torch.randn(B, H, S, 128, device="cuda", dtype=torch.bfloat16, requires_grad=backward)
        do = torch.randn(B, H, S, 128, device="cuda", dtype=torch.bfloat16)
        flops = 2 * B * H * S * S * (192 + 128) / (2 if causal else 1)
        row = f"sdpa 192/128 S={S:5d} causal={int(causal)}"
        for name, be in (("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION), ("efficient", SDPBackend.EFFICIENT_ATTENTION)):
            try:
                with sdpa_kernel(be):
                    fwd = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal)
                    with torch.no_grad():
                        row += f"  {name} {flops / (median_ms(fwd) * 1e-3) / 1e12:6.1f}"
                    if backward:
                        state = {}
                        def pre():
                            q.grad = k.grad = v.grad = None
                            state["o"] = fwd()
                        ms = median_ms(lambda: state["o"].backward(do), pre)
                        row += f" bwd {2.5 * flops / (ms * 1e-3) / 1e12:6.1f}"
            except Exception as e:
                row += f"  {name} n/a ({type(e).__name__})"
        print(row, flush=True)
