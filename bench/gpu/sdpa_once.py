"""One benchmark shape through one PyTorch SDPA backend, twice (the first call warms up), for a
profiler to catch the second: scripts/ncu_profile.sh profiles flash-attn 2 (SDPA's flash backend)
beside our kernels this way, e.g.
  scripts/ncu_profile.sh OUT 'fwd256_fa2|flash_fwd|python3 bench/gpu/sdpa_once.py --head-dim 256 --seqlen 2048'
Shapes follow BENCHMARKS.md: bf16, heads = 2048 / d, batch x seqlen = 16384, layout (B, H, S, D)."""
import argparse

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--head-dim", type=int, default=128)
ap.add_argument("--seqlen", type=int, default=2048)
ap.add_argument("--causal", action="store_true")
ap.add_argument("--backward", action="store_true")
ap.add_argument("--backend", default="flash", choices=["flash", "cudnn", "efficient"])
a = ap.parse_args()
backend = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
           "efficient": SDPBackend.EFFICIENT_ATTENTION}[a.backend]
h, b = 2048 // a.head_dim, 16384 // a.seqlen
q, k, v = (torch.randn(b, h, a.seqlen, a.head_dim, device="cuda", dtype=torch.bfloat16, requires_grad=a.backward)
           for _ in range(3))
g = torch.randn(b, h, a.seqlen, a.head_dim, device="cuda", dtype=torch.bfloat16)
with sdpa_kernel(backend):
    for _ in range(2):
        o = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=a.causal)
        if a.backward:
            o.backward(g)
torch.cuda.synchronize()
