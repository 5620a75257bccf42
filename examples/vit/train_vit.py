"""A small Vision Transformer classifying synthetic images, trained twice: with
ioattn.scaled_dot_product_attention (PyTorch's SDPA signature, (B, H, N, D), no mask) and with
torch.nn.functional.scaled_dot_product_attention, from the same initial weights on the same
batches. Prints the final losses, the largest difference between the two loss curves, ms/step and
peak memory, and saves the curves (PNG) and the numbers (JSON).

    python examples/vit/train_vit.py                                  # cuda (bf16 autocast) if present, else cpu
    python examples/vit/train_vit.py --device cpu --steps 200 --out examples/vit/loss-cpu.png \
        --json examples/vit/results-cpu.json
    python examples/vit/train_vit.py --seqlen 1024 --compile          # 32x32 patches, torch.compile

--seqlen is the number of patch tokens (a square number; the class token makes it seqlen + 1, a
length that is not a multiple of any kernel tile). The data: each class has a fixed random
low-frequency template; an image is its class's template under a random contrast plus Gaussian noise
(--noise sets how hard the task is).
"""
import functools
import math
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import backend_compare  # noqa: E402  (examples/backend_compare.py: the shared training harness)
import ioattn  # noqa: E402

DEFAULTS = {
    "cpu": dict(batch=16, seqlen=256, patch=4, dim=128, depth=2, heads=4, classes=10, lr=1e-3),
    "cuda": dict(batch=64, seqlen=576, patch=8, dim=384, depth=6, heads=6, classes=100, lr=5e-4),
}


class Block(nn.Module):
    def __init__(self, dim, heads, backend):
        super().__init__()
        self.heads = heads
        # The one-line switch between the two backends: both take (B, H, N, D) tensors.
        self.sdpa = ioattn.scaled_dot_product_attention if backend == "ioattn" else F.scaled_dot_product_attention
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        o = self.sdpa(qkv[0], qkv[1], qkv[2])  # strided (B, H, N, D) views of one projection: no copies
        x = x + self.proj(o.transpose(1, 2).reshape(b, n, c))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    def __init__(self, image, patch, dim, depth, heads, classes, backend):
        super().__init__()
        self.embed = nn.Conv2d(3, dim, patch, patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, (image // patch) ** 2 + 1, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, heads, backend) for _ in range(depth))
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, classes)

    def forward(self, img):
        x = self.embed(img).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x[:, 0]))


def build_model(args, backend):
    return ViT(args.image, args.patch, args.dim, args.depth, args.heads, args.classes, backend)


@functools.lru_cache(maxsize=None)
def _templates(classes, image, seed):
    """One smooth random image per class: 8x8 noise upsampled, so classes differ in layout, not pixels."""
    g = torch.Generator().manual_seed(seed + 2)
    coarse = torch.randn(classes, 3, 8, 8, generator=g)
    return F.interpolate(coarse, size=(image, image), mode="bilinear", align_corners=False)


def make_batch(args, step, gen):
    templates = _templates(args.classes, args.image, args.seed)
    labels = torch.randint(0, args.classes, (args.batch,), generator=gen)
    contrast = 0.5 + torch.rand(args.batch, 1, 1, 1, generator=gen)
    noise = torch.randn(args.batch, 3, args.image, args.image, generator=gen)
    return templates[labels] * contrast + args.noise * noise, labels


def loss_fn(logits, labels):
    return F.cross_entropy(logits.float(), labels)


def main(argv=None):
    ap = backend_compare.parser(__doc__.split("\n\n")[0], default_out=os.path.join(os.path.dirname(__file__),
                                                                                    "loss.png"))
    ap.add_argument("--patch", type=int, default=None, help="patch side in pixels")
    ap.add_argument("--classes", type=int, default=None, help="image classes")
    ap.add_argument("--noise", type=float, default=4.0,
                    help="noise std (templates have std ~1): the task's difficulty (default 4)")
    args = backend_compare.resolve(ap, argv, DEFAULTS)
    side = math.isqrt(args.seqlen)
    if side * side != args.seqlen:
        ap.error(f"--seqlen must be a square number of patches, got {args.seqlen}")
    args.image = side * args.patch
    config = {k: getattr(args, k) for k in ("batch", "seqlen", "image", "patch", "dim", "depth", "heads", "classes",
                                            "noise", "lr")}
    return backend_compare.main("ViT", args, build_model, make_batch, loss_fn, config)


if __name__ == "__main__":
    main()
