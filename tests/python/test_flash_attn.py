"""flash-attn 2 API on CPU tensors: forward and backward against the float64 reference."""
import math

import pytest
import torch

import ioattn
from conftest import DTYPES
from helpers import compare, randn
from reference import attention_ref, check, fwd_bwd_ref

# (batch, seqlen_q, seqlen_k, heads_q, heads_k, head_dim): tile edges, Sq != Sk both ways, GQA, MQA,
# seqlen 1, head dims that are not multiples of 8.
SHAPES = [
    (2, 33, 33, 4, 4, 32),
    (1, 17, 70, 4, 2, 64),
    (2, 65, 20, 6, 2, 40),
    (1, 1, 37, 4, 1, 16),
    (2, 40, 40, 2, 2, 20),
]
# (causal, window, softcap, alibi)
MASKS = [
    (False, (-1, -1), 0.0, False),
    (True, (-1, -1), 0.0, False),
    (False, (8, 3), 0.0, False),
    (True, (12, -1), 0.0, False),
    (False, (-1, -1), 5.0, False),
    (True, (-1, -1), 0.0, True),
    (False, (5, 5), 2.0, True),
]


def _alibi(b, h, per_batch):
    slopes = torch.tensor([2.0 ** (-8.0 * (i + 1) / h) for i in range(h)])
    return slopes.repeat(b, 1) + 0.01 * torch.arange(b).view(b, 1) if per_batch else slopes


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("mask", MASKS, ids=lambda m: f"c{int(m[0])}w{m[1][0]}_{m[1][1]}s{m[2]:g}a{int(m[3])}")
def test_flash_attn_func(dtype, shape, mask):
    b, sq, sk, hq, hk, d = shape
    causal, window, softcap, use_alibi = mask
    q, k, v = randn(b, sq, hq, d, dtype=dtype), randn(b, sk, hk, d, dtype=dtype), randn(b, sk, hk, d, dtype=dtype)
    alibi = _alibi(b, hq, per_batch=(sq % 2 == 1)) if use_alibi else None
    scale = 0.7 / math.sqrt(d) if softcap else None

    def call(q, k, v):
        out, lse, s = ioattn.flash_attn_func(q, k, v, softmax_scale=scale, causal=causal, window_size=window,
                                             softcap=softcap, alibi_slopes=alibi, return_attn_probs=True)
        assert s.numel() == 0  # no dropout: flash-attn returns an empty S_dmask
        return out, lse

    compare(call, q, k, v, dtype, dict(causal=causal, window=window, softcap=softcap, alibi=alibi, scale=scale))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_bhsd_views_and_strided_batch_heads(dtype):
    """q as a transposed BHSD tensor, k with a head stride of 2 * d, v a head slice (batch stride
    (h + 3) * d): served through strides, gradients land in the right places of the leaves."""
    b, s, h, d = 2, 24, 4, 32
    q_bhsd = randn(b, h, s, d, dtype=dtype)
    k_big = randn(b, s, 2 * h, d, dtype=dtype)
    v_big = randn(b, s, h + 3, d, dtype=dtype)
    q, k, v = q_bhsd.transpose(1, 2), k_big[:, :, ::2], v_big[:, :, 1: h + 1]
    assert not (q.is_contiguous() or k.is_contiguous() or v.is_contiguous())
    out = ioattn.flash_attn_func(q, k, v, causal=True)
    assert out.transpose(1, 2).is_contiguous(), "a BHSD-contiguous q gives a BHSD-contiguous output"
    dout = torch.randn_like(out)
    dq, dk, dv = torch.autograd.grad(out, (q_bhsd, k_big, v_big), dout)
    args = (q.detach(), k.detach(), v.detach(), dout)
    r64, _, g64 = fwd_bwd_ref(*args, causal=True)
    rstd, _, gstd = fwd_bwd_ref(*args, dtype=dtype, causal=True)
    check("out", out.detach(), r64, rstd, dtype)
    check("dq", dq.transpose(1, 2), g64[0], gstd[0], dtype)
    check("dk", dk[:, :, ::2], g64[1], gstd[1], dtype)
    check("dv", dv[:, :, 1: h + 1], g64[2], gstd[2], dtype)
    assert torch.all(dk[:, :, 1::2] == 0) and torch.all(dv[:, :, 0] == 0) and torch.all(dv[:, :, h + 1:] == 0)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_qkvpacked_and_kvpacked(dtype):
    b, s, h, d = 2, 19, 3, 24
    qkv = randn(b, s, 3, h, d, dtype=dtype)
    out = ioattn.flash_attn_qkvpacked_func(qkv, causal=True)
    ref, _ = attention_ref(*(qkv.detach()[:, :, i] for i in range(3)), causal=True)
    std, _ = attention_ref(*(qkv.detach()[:, :, i] for i in range(3)), causal=True, dtype=dtype)
    check("out", out.detach(), ref, std, dtype)
    dout = torch.randn_like(out)
    (dqkv,) = torch.autograd.grad(out, (qkv,), dout)
    parts = [qkv.detach()[:, :, i] for i in range(3)]
    _, _, g64 = fwd_bwd_ref(*parts, dout, causal=True)
    _, _, gstd = fwd_bwd_ref(*parts, dout, dtype=dtype, causal=True)
    for i, name in enumerate(("dq", "dk", "dv")):
        check(name, dqkv[:, :, i], g64[i], gstd[i], dtype)

    q = randn(b, 11, 4, d, dtype=dtype)
    kv = randn(b, s, 2, 2, d, dtype=dtype)
    out = ioattn.flash_attn_kvpacked_func(q, kv, causal=True, window_size=(4, 0))
    dout = torch.randn_like(out)
    dq, dkv = torch.autograd.grad(out, (q, kv), dout)
    args = (q.detach(), kv.detach()[:, :, 0], kv.detach()[:, :, 1], dout)
    r64, _, g64 = fwd_bwd_ref(*args, causal=True, window=(4, 0))
    rstd, _, gstd = fwd_bwd_ref(*args, dtype=dtype, causal=True, window=(4, 0))
    check("out", out.detach(), r64, rstd, dtype)
    check("dq", dq, g64[0], gstd[0], dtype)
    check("dk", dkv[:, :, 0], g64[1], gstd[1], dtype)
    check("dv", dkv[:, :, 1], g64[2], gstd[2], dtype)


def test_fully_masked_rows_give_zero_and_minus_inf():
    # Sq > Sk with causal: the first Sq - Sk rows see no key (bottom-right alignment).
    q, k, v = randn(1, 6, 2, 16), randn(1, 3, 2, 16), randn(1, 3, 2, 16)
    out, lse, _ = ioattn.flash_attn_func(q, k, v, causal=True, return_attn_probs=True)
    assert torch.all(out[:, :3] == 0) and torch.all(torch.isneginf(lse[:, :, :3]))
    assert torch.isfinite(lse[:, :, 3:]).all()
    dq, dk, dv = torch.autograd.grad(out.sum(), (q, k, v))
    assert torch.all(dq[:, :3] == 0) and torch.isfinite(dk).all() and torch.isfinite(dv).all()


def test_deterministic_backward_is_bitwise_repeatable():
    q, k, v = randn(2, 30, 4, 32), randn(2, 30, 2, 32), randn(2, 30, 2, 32)
    grads = []
    for _ in range(2):
        out = ioattn.flash_attn_func(q, k, v, causal=True, deterministic=True)
        grads.append(torch.autograd.grad(out.sum(), (q, k, v)))
    for a, b in zip(*grads):
        assert torch.equal(a, b)
