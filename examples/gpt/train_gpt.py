"""A small GPT (causal, grouped-query attention) trained on synthetic sequences twice: with
ioattn.flash_attn_func (flash-attn 2's API, (B, S, H, D) tensors) and with PyTorch's
scaled_dot_product_attention, from the same initial weights on the same batches. Prints the final
losses, the largest difference between the two loss curves, ms/step and peak memory, and saves the
curves (PNG) and the numbers (JSON).

    python examples/gpt/train_gpt.py                                  # cuda (bf16 autocast) if present, else cpu
    python examples/gpt/train_gpt.py --device cpu --steps 200 --out examples/gpt/loss-cpu.png \
        --json examples/gpt/results-cpu.json
    python examples/gpt/train_gpt.py --compile --seqlen 2048          # torch.compile, longer context

The data: each sequence is a walk of --period tokens on a fixed random Markov chain (4 successors
per token) repeated to the sequence's length. The first period can only be learned as bigrams (loss
log 4 there); the repeats are predicted exactly once attention learns to look back one period, so the
loss falls towards (period / seqlen) * log 4.
"""
import functools
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import backend_compare  # noqa: E402  (examples/backend_compare.py: the shared training harness)
import ioattn  # noqa: E402

DEFAULTS = {
    "cpu": dict(batch=8, seqlen=256, dim=128, depth=2, heads=4, kv_heads=2, vocab=256, lr=3e-3),
    "cuda": dict(batch=16, seqlen=1024, dim=512, depth=6, heads=8, kv_heads=2, vocab=512, lr=1e-3),
}


class CausalSelfAttention(nn.Module):
    def __init__(self, dim, heads, kv_heads, backend):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, dim // heads
        self.backend = backend
        self.qkv = nn.Linear(dim, (heads + 2 * kv_heads) * self.head_dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x):
        b, s, _ = x.shape
        hd = self.head_dim
        q, k, v = self.qkv(x).split([self.heads * hd, self.kv_heads * hd, self.kv_heads * hd], dim=-1)
        q = q.view(b, s, self.heads, hd)  # (B, S, H, D): flash-attn's layout, no copies
        k = k.view(b, s, self.kv_heads, hd)
        v = v.view(b, s, self.kv_heads, hd)
        if self.backend == "ioattn":  # the one-line switch between the two backends
            o = ioattn.flash_attn_func(q, k, v, causal=True)
        else:
            o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                               is_causal=True, enable_gqa=True).transpose(1, 2)
        return self.proj(o.reshape(b, s, -1))


class Block(nn.Module):
    def __init__(self, dim, heads, kv_heads, backend):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, heads, kv_heads, backend)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class GPT(nn.Module):
    def __init__(self, vocab, dim, depth, heads, kv_heads, ctx, backend):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, dim), nn.Embedding(ctx, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, kv_heads, backend) for _ in range(depth))
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, vocab, bias=False)

    def forward(self, idx):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x))


def build_model(args, backend):
    return GPT(args.vocab, args.dim, args.depth, args.heads, args.kv_heads, args.seqlen, backend)


@functools.lru_cache(maxsize=None)
def _successors(vocab, seed):
    return torch.randint(0, vocab, (vocab, 4), generator=torch.Generator().manual_seed(seed + 2))


def make_batch(args, step, gen):
    succ = _successors(args.vocab, args.seed)
    period = min(args.period, args.seqlen)
    tok = torch.empty(args.batch, period, dtype=torch.long)
    tok[:, 0] = torch.randint(0, args.vocab, (args.batch,), generator=gen)
    choice = torch.randint(0, 4, (args.batch, period), generator=gen)
    for t in range(1, period):
        tok[:, t] = succ[tok[:, t - 1], choice[:, t]]
    # The sequence holds seqlen + 1 tokens: the inputs and the targets shifted by one.
    seq = tok.repeat(1, args.seqlen // period + 2)[:, : args.seqlen + 1]
    return seq[:, :-1], seq[:, 1:]


def loss_fn(logits, targets):
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


def main(argv=None):
    ap = backend_compare.parser(__doc__.split("\n\n")[0], default_out=os.path.join(os.path.dirname(__file__),
                                                                                    "loss.png"))
    ap.add_argument("--kv-heads", dest="kv_heads", type=int, default=None, help="key/value heads (GQA)")
    ap.add_argument("--vocab", type=int, default=None, help="vocabulary size")
    ap.add_argument("--period", type=int, default=32, help="length of the repeated Markov walk (default 32)")
    args = backend_compare.resolve(ap, argv, DEFAULTS)
    config = {k: getattr(args, k) for k in ("batch", "seqlen", "dim", "depth", "heads", "kv_heads", "vocab", "period",
                                            "lr")}
    return backend_compare.main("GPT", args, build_model, make_batch, loss_fn, config)


if __name__ == "__main__":
    main()
