"""Varlen (packed) flash-attn functions against the per-sequence float64 reference."""
import pytest
import torch

import ioattn
from conftest import DTYPES
from helpers import randn
from reference import check, fwd_bwd_ref


def _cu(lens):
    return torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32)


def _check_per_sequence(out, grads, q, k, v, dout, lens_q, lens_k, dtype, **kw):
    cq, ck = _cu(lens_q).tolist(), _cu(lens_k).tolist()
    for b in range(len(lens_q)):
        sl_q, sl_k = slice(cq[b], cq[b + 1]), slice(ck[b], ck[b + 1])
        if lens_q[b] == 0:
            continue
        args = [t.detach()[sl].unsqueeze(0) for t, sl in ((q, sl_q), (k, sl_k), (v, sl_k), (dout, sl_q))]
        r64, _, g64 = fwd_bwd_ref(*args, **kw)
        rstd, _, gstd = fwd_bwd_ref(*args, dtype=dtype, **kw)
        check(f"out[{b}]", out.detach()[sl_q].unsqueeze(0), r64, rstd, dtype)
        for name, g, r, s, sl in zip(("dq", "dk", "dv"), grads, g64, gstd, (sl_q, sl_k, sl_k)):
            check(f"{name}[{b}]", g[sl].unsqueeze(0), r, s, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("mask", [dict(), dict(causal=True), dict(window=(4, 2)), dict(causal=True, softcap=4.0)],
                         ids=["full", "causal", "window", "causal_softcap"])
def test_varlen_func(dtype, mask):
    # Includes an empty sequence, Sq != Sk per sequence, and GQA.
    lens_q, lens_k = [5, 0, 17, 9], [7, 3, 17, 30]
    hq, hk, d = 4, 2, 32
    q = randn(sum(lens_q), hq, d, dtype=dtype)
    k = randn(sum(lens_k), hk, d, dtype=dtype)
    v = randn(sum(lens_k), hk, d, dtype=dtype)
    window = mask.get("window", (-1, -1))
    out, lse, s = ioattn.flash_attn_varlen_func(q, k, v, _cu(lens_q), _cu(lens_k), max(lens_q), max(lens_k),
                                                causal=mask.get("causal", False), window_size=window,
                                                softcap=mask.get("softcap", 0.0), return_attn_probs=True)
    assert out.shape == (sum(lens_q), hq, d) and lse.shape == (hq, sum(lens_q)) and s.numel() == 0
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    _check_per_sequence(out, grads, q, k, v, dout, lens_q, lens_k, dtype, **mask)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_varlen_packed_variants(dtype):
    lens = [9, 1, 14]
    h, d = 3, 16
    qkv = randn(sum(lens), 3, h, d, dtype=dtype)
    out = ioattn.flash_attn_varlen_qkvpacked_func(qkv, _cu(lens), max(lens), causal=True)
    dout = torch.randn_like(out)
    (dqkv,) = torch.autograd.grad(out, (qkv,), dout)
    parts = [qkv.detach()[:, i] for i in range(3)]
    _check_per_sequence(out, [dqkv[:, i] for i in range(3)], *parts, dout, lens, lens, dtype, causal=True)

    lens_k = [4, 6, 20]
    q = randn(sum(lens), 6, d, dtype=dtype)
    kv = randn(sum(lens_k), 2, 2, d, dtype=dtype)
    out = ioattn.flash_attn_varlen_kvpacked_func(q, kv, _cu(lens), _cu(lens_k), max(lens), max(lens_k))
    dout = torch.randn_like(out)
    dq, dkv = torch.autograd.grad(out, (q, kv), dout)
    _check_per_sequence(out, [dq, dkv[:, 0], dkv[:, 1]], q, kv.detach()[:, 0], kv.detach()[:, 1], dout, lens,
                        lens_k, dtype)

