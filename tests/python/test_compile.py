"""The custom operators under torch.library.opcheck and torch.compile(fullgraph=True)."""
import pytest
import torch

import ioattn
from helpers import randn


def _fwd_args(q, k, v, rng=None, p=0.0, causal=True):
    return (q, k, v, None, None, 0, 0, None, rng, p, q.shape[-1] ** -0.5, causal, -1, -1, 0.0, False)


def test_opcheck_fwd_and_bwd():
    q, k, v = randn(2, 9, 4, 16), randn(2, 12, 2, 16), randn(2, 12, 2, 16)
    bhsd = randn(2, 4, 9, 16).transpose(1, 2)  # strided input: fake and real must agree on strides
    rng = torch.tensor([7, 11], dtype=torch.int64)
    for args in (_fwd_args(q, k, v), _fwd_args(bhsd, k, v, rng, 0.2)):
        torch.library.opcheck(torch.ops.ioattn.fwd.default, args)
    out, lse = torch.ops.ioattn.fwd(*_fwd_args(q.detach(), k.detach(), v.detach()))
    dout = torch.randn_like(out)
    torch.library.opcheck(torch.ops.ioattn.bwd.default,
                          (dout, q.detach(), k.detach(), v.detach(), out, lse, None, None, 0, 0, None, None, 0.0,
                           0.25, True, -1, -1, 0.0, False), test_utils=("test_schema", "test_faketensor"))


def test_torch_compile_fullgraph_forward_backward():
    torch._dynamo.reset()

    def block(x, wq, wkv):
        b, s, _ = x.shape
        q = (x @ wq).view(b, s, 4, 16)
        kv = (x @ wkv).view(b, s, 2, 2, 16)
        o1 = ioattn.flash_attn_kvpacked_func(q, kv, causal=True)
        o2 = ioattn.scaled_dot_product_attention(q.transpose(1, 2), kv[:, :, 0].transpose(1, 2),
                                                 kv[:, :, 1].transpose(1, 2), is_causal=True, enable_gqa=True)
        return (o1 + o2.transpose(1, 2)).sum()

    x = randn(2, 24, 32, requires_grad=False)
    wq, wkv = randn(32, 64), randn(32, 64)
    compiled = torch.compile(block, fullgraph=True, backend="inductor")
    got = compiled(x, wq, wkv)
    g_got = torch.autograd.grad(got, (wq, wkv))
    want = block(x, wq, wkv)
    g_want = torch.autograd.grad(want, (wq, wkv))
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4)
    for a, b in zip(g_got, g_want):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-4)
