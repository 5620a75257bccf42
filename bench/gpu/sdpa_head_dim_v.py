# SDPA's backends with v narrower than q / k (head dims 192 / 128: DeepSeek's MLA prefill), at bench_variants.py's
# shapes (heads = 2048 // 192, batch x seqlen = 16384), bf16. Forward TFLOP/s = 2 B H S^2 (192 + 128) per
# second (halved causal), backward 2.5 x that (DESIGN.md's convention, as `ioattn run` counts), each from
# the median of 20 calls timed by CUDA events (the backward's events around `backward()` alone). SDPA's
# flash backend refuses v != q / k; each backend that refuses prints n/a. The peer columns of
# bench/results/variants-*-s27-fwd-mla.txt and -s28-mla-*.txt:
#   python3 bench/gpu/sdpa_head_dim_v.py [--backward]
import sys
import torch, torch.nn.functional as F
from torch.nn.attention import sdpa_kernel, SDPBackend

backward = "--backward" in sys.argv


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
