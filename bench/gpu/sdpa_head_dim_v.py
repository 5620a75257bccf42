# SDPA's backends with v narrower than q / k (head dims 192 / 128: DeepSeek's MLA prefill), at bench_variants.py's
# shapes (heads = 2048 // 192, batch x seqlen = 16384), bf16, TFLOP/s = 2 B H S^2 (192 + 128) per
# second (halved causal) from the median of 20 calls timed by CUDA events. SDPA's flash backend
# refuses v != q / k; each backend that refuses prints n/a. Used for the peer column of
# bench/results/variants-*-s27-fwd-mla.txt: python3 bench/gpu/sdpa_head_dim_v.py
import torch, torch.nn.functional as F
from torch.nn.attention import sdpa_kernel, SDPBackend
for S in (1024, 2048, 4096, 16384):
    for causal in (False, True):
        H, B = 2048 // 192, 16384 // S
        q = torch.randn(B, H, S, 192, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(B, H, S, 192, device="cuda", dtype=torch.bfloat16)
        v = torch.randn(B, H, S, 128, device="cuda", dtype=torch.bfloat16)
        flops = 2 * B * H * S * S * (192 + 128) / (2 if causal else 1)
        row = f"sdpa 192/128 S={S:5d} causal={int(causal)}"
        for name, be in (("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION), ("efficient", SDPBackend.EFFICIENT_ATTENTION)):
            try:
                with sdpa_kernel(be):
                    for _ in range(3): F.scaled_dot_product_attention(q, k, v, is_causal=causal)
                    ts = []
                    for _ in range(20):
                        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                        a.record(); F.scaled_dot_product_attention(q, k, v, is_causal=causal); b.record()
                        torch.cuda.synchronize(); ts.append(a.elapsed_time(b))
                ts.sort()
                row += f"  {name} {flops / (ts[len(ts)//2] * 1e-3) / 1e12:6.1f}"
            except Exception as e:
                row += f"  {name} n/a ({type(e).__name__})"
        print(row, flush=True)
