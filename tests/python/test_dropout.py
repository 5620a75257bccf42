"""Dropout: the mask is Philox-defined (DESIGN.md section 1), drawn from torch's default generator,
and the same in forward, backward and S_dmask."""
import pytest
import torch

import ioattn
from conftest import DTYPES
from helpers import randn
from reference import check, fwd_bwd_ref


def _keep(rng_seed_offset, p, b, h, sq, sk):
    seed, offset = rng_seed_offset
    return torch.stack([ioattn.dropout_mask(seed, offset, p, i, h, sq, sk) for i in range(b)])


def _rng_of_next_call():
    # attention() draws (seed, offset) with torch.randint from the default generator: replay it.
    state = torch.get_rng_state()
    pair = torch.randint(0, 2**62, (2,), dtype=torch.int64).tolist()
    torch.set_rng_state(state)
    return pair


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("causal", [False, True])
def test_dropout_forward_backward(dtype, causal):
    b, sq, sk, hq, hk, d, p = 2, 21, 35, 4, 2, 32, 0.3
    q, k, v = randn(b, sq, hq, d, dtype=dtype), randn(b, sk, hk, d, dtype=dtype), randn(b, sk, hk, d, dtype=dtype)
    pair = _rng_of_next_call()
    out, lse, s_dmask = ioattn.flash_attn_func(q, k, v, dropout_p=p, causal=causal, return_attn_probs=True)
    keep = _keep(pair, p, b, hq, sq, sk)
    assert 0.6 < keep.float().mean().item() < 0.8
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    kw = dict(causal=causal, keep=keep, dropout_p=p)
    args = (q.detach(), k.detach(), v.detach(), dout)
    r64, lse64, g64 = fwd_bwd_ref(*args, **kw)
    rstd, _, gstd = fwd_bwd_ref(*args, dtype=dtype, **kw)
    check("out", out.detach(), r64, rstd, dtype)
    for name, g, r, s in zip(("dq", "dk", "dv"), grads, g64, gstd):
        check(name, g, r, s, dtype)
    # S_dmask: probabilities (unscaled) with dropped entries negated.
    assert s_dmask.shape == (b, hq, sq, sk)
    probs = torch.exp(torch.einsum("bihd,bjhd->bhij", q.detach().double(),
                                   k.detach().double().repeat_interleave(2, 2)) * d ** -0.5 - lse64.unsqueeze(-1))
    if causal:
        probs = probs.masked_fill(torch.ones(sq, sk, dtype=torch.bool).triu(sk - sq + 1), 0.0)
    assert (s_dmask.double().abs() - probs).abs().max().item() < 1e-2
    visible = probs > 1e-3
    assert torch.equal((s_dmask >= 0)[visible], keep[visible])


def test_dropout_reproducible_with_manual_seed_and_varies_per_call():
    q, k, v = randn(1, 16, 2, 16), randn(1, 16, 2, 16), randn(1, 16, 2, 16)
    torch.manual_seed(123)
    a = ioattn.flash_attn_func(q, k, v, dropout_p=0.5)
    b = ioattn.flash_attn_func(q, k, v, dropout_p=0.5)
    torch.manual_seed(123)
    c = ioattn.flash_attn_func(q, k, v, dropout_p=0.5)
    assert torch.equal(a, c) and not torch.equal(a, b)


def test_dropout_varlen_matches_mask():
    lens = [6, 11]
    cu = torch.tensor([0, 6, 17], dtype=torch.int32)
    h, d, p = 2, 16, 0.25
    q, k, v = randn(17, h, d), randn(17, h, d), randn(17, h, d)
    pair = _rng_of_next_call()
    out = ioattn.flash_attn_varlen_func(q, k, v, cu, cu, 11, 11, dropout_p=p, causal=True)
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    for bi, (s0, s1) in enumerate(((0, 6), (6, 17))):
        n = s1 - s0
        keep = ioattn.dropout_mask(pair[0], pair[1], p, bi, h, n, n).unsqueeze(0)
        args = [t.detach()[s0:s1].unsqueeze(0) for t in (q, k, v, dout)]
        r64, _, g64 = fwd_bwd_ref(*args, causal=True, keep=keep, dropout_p=p)
        rstd, _, gstd = fwd_bwd_ref(*args, dtype=torch.float32, causal=True, keep=keep, dropout_p=p)
        check("out", out.detach()[s0:s1].unsqueeze(0), r64, rstd, torch.float32)
        for name, g, r, s in zip(("dq", "dk", "dv"), grads, g64, gstd):
            check(name, g[s0:s1].unsqueeze(0), r, s, torch.float32)
