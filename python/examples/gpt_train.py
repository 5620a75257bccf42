"""A small GPT trained for a few steps with ioattn's flash-attn API (causal, GQA), then checked
against the same model on PyTorch's SDPA: the losses agree and the attention layer is a one-line swap.

    python python/examples/gpt_train.py                      # CPU, float32
    python python/examples/gpt_train.py --device cuda --dtype bfloat16 --compile
"""
import argparse
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import ioattn


class Attention(nn.Module):
    def __init__(self, dim, heads, kv_heads, backend):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim, self.backend = heads, kv_heads, dim // heads, backend
        self.qkv = nn.Linear(dim, (heads + 2 * kv_heads) * self.head_dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x):
        b, s, _ = x.shape
        q, k, v = self.qkv(x).split([self.heads * self.head_dim, self.kv_heads * self.head_dim,
                                     self.kv_heads * self.head_dim], dim=-1)
        q = q.view(b, s, self.heads, self.head_dim)          # (B, S, H, D): flash-attn's layout
        k = k.view(b, s, self.kv_heads, self.head_dim)
        v = v.view(b, s, self.kv_heads, self.head_dim)
        if self.backend == "ioattn":
            o = ioattn.flash_attn_func(q, k, v, causal=True)
        else:
            o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                               is_causal=True, enable_gqa=True).transpose(1, 2)
        return self.proj(o.reshape(b, s, -1))


class Block(nn.Module):
    def __init__(self, dim, heads, kv_heads, backend):
        super().__init__()
        self.n1, self.n2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, kv_heads, backend)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.n1(x))
        return x + self.mlp(self.n2(x))


class GPT(nn.Module):
    def __init__(self, vocab=256, dim=128, depth=4, heads=8, kv_heads=2, ctx=256, backend="ioattn"):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, dim), nn.Embedding(ctx, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, kv_heads, backend) for _ in range(depth))
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, vocab, bias=False)

    def forward(self, idx):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--compile", action="store_true")
    a = ap.parse_args()
    dtype = getattr(torch, a.dtype)
    # A learnable toy corpus: repeating byte patterns.
    text = torch.tensor(list(b"the quick brown fox jumps over the lazy dog. " * 400), dtype=torch.long)
    losses = {}
    for backend in ("ioattn", "sdpa"):
        torch.manual_seed(0)
        model = GPT(backend=backend).to(a.device, dtype)
        step_fn = torch.compile(model, fullgraph=True) if a.compile else model
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        gen = torch.Generator().manual_seed(1)
        t0 = time.time()
        for step in range(a.steps):
            starts = torch.randint(0, len(text) - 129, (16,), generator=gen)
            batch = torch.stack([text[s: s + 129] for s in starts]).to(a.device)
            logits = step_fn(batch[:, :-1])
            loss = F.cross_entropy(logits.float().reshape(-1, 256), batch[:, 1:].reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        losses[backend] = loss.item()
        print(f"{backend:6s}: loss {math.log(256):.2f} -> {loss.item():.3f} after {a.steps} steps "
              f"({time.time() - t0:.1f} s, compilation and first-call setup included)")
    print(f"difference of final losses: {abs(losses['ioattn'] - losses['sdpa']):.2e}")


if __name__ == "__main__":
    main()
