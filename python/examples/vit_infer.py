"""A Vision Transformer whose attention is ioattn.scaled_dot_product_attention (PyTorch's SDPA
signature, BHSD, no mask), compared with the same weights on torch's SDPA, forward and backward.

    python python/examples/vit_infer.py
    python python/examples/vit_infer.py --device cuda --dtype float16 --image 224
"""
import argparse
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import ioattn


class ViTBlock(nn.Module):
    def __init__(self, dim, heads, sdpa):
        super().__init__()
        self.heads, self.sdpa = heads, sdpa
        self.n1, self.n2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(self.n1(x)).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        o = self.sdpa(qkv[0], qkv[1], qkv[2])  # (B, H, N, D) strided views of one projection
        x = x + self.proj(o.transpose(1, 2).reshape(b, n, c))
        return x + self.mlp(self.n2(x))


class ViT(nn.Module):
    def __init__(self, sdpa, image=224, patch=16, dim=192, depth=6, heads=3, classes=1000):
        super().__init__()
        self.embed = nn.Conv2d(3, dim, patch, patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, (image // patch) ** 2 + 1, dim) * 0.02)
        self.blocks = nn.ModuleList(ViTBlock(dim, heads, sdpa) for _ in range(depth))
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, classes)

    def forward(self, img):
        x = self.embed(img).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x[:, 0]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--image", type=int, default=128)
    ap.add_argument("--batch", type=int, default=4)
    a = ap.parse_args()
    dtype = getattr(torch, a.dtype)
    torch.manual_seed(0)
    ours = ViT(ioattn.scaled_dot_product_attention, image=a.image).to(a.device, dtype)
    ref = ViT(F.scaled_dot_product_attention, image=a.image).to(a.device, dtype)
    ref.load_state_dict(ours.state_dict())
    img = torch.randn(a.batch, 3, a.image, a.image, device=a.device, dtype=dtype)
    sync = torch.cuda.synchronize if img.is_cuda else (lambda: None)
    for name, model in (("ioattn", ours), ("torch ", ref)):
        for rep in range(4):  # the first pass is warm-up (kernel loading, allocator); time the next three
            if rep == 1:
                sync()
                t0 = time.time()
            model.zero_grad(set_to_none=True)
            model(img).float().logsumexp(-1).sum().backward()
        sync()
        print(f"{name}: forward + backward {(time.time() - t0) / 3 * 1e3:.1f} ms, "
              f"{(img.shape[-1] // 16) ** 2 + 1} tokens (whole model, not a kernel benchmark)")
    d_logits = (ours(img) - ref(img)).abs().max().item()
    d_grad = (ours.blocks[0].qkv.weight.grad - ref.blocks[0].qkv.weight.grad).abs().max().item()
    print(f"max |logits difference| {d_logits:.2e}, max |qkv weight grad difference| {d_grad:.2e}")


if __name__ == "__main__":
    main()
