"""ioattn.scaled_dot_product_attention against torch.nn.functional.scaled_dot_product_attention
run in float64 (PyTorch's own semantics: BHSD, top-left causal, enable_gqa)."""
import pytest
import torch
import torch.nn.functional as F

import ioattn
from conftest import DTYPES
from helpers import randn
from reference import check


def _torch_sdpa(q, k, v, dtype, **kw):
    qr, kr, vr = (t.detach().to(dtype).requires_grad_() for t in (q, k, v))
    return qr, kr, vr, F.scaled_dot_product_attention(qr, kr, vr, **kw)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("lq,lk", [(32, 32), (40, 13), (9, 50), (1, 20)])
@pytest.mark.parametrize("is_causal", [False, True])
def test_sdpa_matches_torch(dtype, lq, lk, is_causal):
    b, hq, hk, e = 2, 4, 2, 32
    q, k, v = randn(b, hq, lq, e, dtype=dtype), randn(b, hk, lk, e, dtype=dtype), randn(b, hk, lk, e, dtype=dtype)
    out = ioattn.scaled_dot_product_attention(q, k, v, is_causal=is_causal, scale=0.2, enable_gqa=True)
    assert out.shape == (b, hq, lq, e) and out.dtype == dtype
    assert out.is_contiguous(), "BHSD-contiguous inputs give a BHSD-contiguous output"
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    kw = dict(is_causal=is_causal, scale=0.2, enable_gqa=True)
    res = {}
    for rdt in (torch.float64, dtype):
        qr, kr, vr, o = _torch_sdpa(q, k, v, rdt, **kw)
        g = torch.autograd.grad(o, (qr, kr, vr), dout.to(rdt))
        res[rdt] = (o.detach(), g)
    # Rows that see no key: PyTorch gives NaN (top-left causal never leaves a row empty, so none here).
    check("out", out.detach(), res[torch.float64][0], res[dtype][0], dtype)
    for name, g, r, s in zip(("dq", "dk", "dv"), grads, res[torch.float64][1], res[dtype][1]):
        check(name, g, r, s, dtype)


def test_sdpa_unbatched_and_bshd_memory():
    # (H, L, E) inputs, and BHSD views of BSHD memory (what transformers passes).
    q = randn(3, 10, 16)
    k = randn(3, 12, 16)
    v = randn(3, 12, 16)
    out = ioattn.scaled_dot_product_attention(q, k, v)
    ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
    assert out.shape == (3, 10, 16) and (out.double() - ref).abs().max() < 1e-5
    q4 = randn(2, 10, 3, 16).transpose(1, 2)
    out4 = ioattn.scaled_dot_product_attention(q4, q4, q4, is_causal=True)
    assert out4.transpose(1, 2).is_contiguous()
    ref4 = F.scaled_dot_product_attention(q4.double(), q4.double(), q4.double(), is_causal=True)
    assert (out4.double() - ref4).abs().max() < 1e-5


def test_sdpa_rejects_what_it_cannot_serve():
    q = randn(1, 2, 4, 8)
    with pytest.raises(ValueError, match="attn_mask.*torch.nn.functional.scaled_dot_product_attention"):
        ioattn.scaled_dot_product_attention(q, q, q, attn_mask=torch.ones(4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="enable_gqa"):
        ioattn.scaled_dot_product_attention(q, randn(1, 1, 4, 8), randn(1, 1, 4, 8))
    with pytest.raises(TypeError, match="query: expected dtype"):
        ioattn.scaled_dot_product_attention(q.double(), q.double(), q.double())
    with pytest.raises(ValueError, match="query: expected"):
        ioattn.scaled_dot_product_attention(randn(2, 1, 2, 4, 8), q, q)
