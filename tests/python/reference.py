"""The test oracle for the Python package: standard attention written directly in PyTorch, run in
float64 (the reference) or in the input dtype (the "standard attention" baseline of the error rule).
Masks, softcap and ALiBi are implemented here independently of the package (bottom-right aligned,
DESIGN.md section 1).

Error rule (FlashAttention's): the error of ioattn against the float64 reference may be at most
twice the error of standard attention computed in the input dtype, plus a small absolute slack.
"""
from __future__ import annotations

import torch

SLACK = {torch.float32: 2e-5, torch.bfloat16: 2e-3, torch.float16: 2e-4}


def attention_ref(q, k, v, *, causal=False, window=(-1, -1), softcap=0.0, alibi=None, scale=None, keep=None,
                  dropout_p=0.0, dtype=torch.float64):
    """q (B, Sq, Hq, D), k (B, Sk, Hk, D), v (B, Sk, Hk, Dv) -> out (B, Sq, Hq, Dv), lse (B, Hq, Sq) float64.
    keep: bool (B, Hq, Sq, Sk) dropout keep mask (elements kept are scaled by 1 / (1 - dropout_p))."""
    b, sq, hq, d = q.shape
    sk, hk = k.shape[1], k.shape[2]
    g = hq // hk
    qf = q.to(dtype)
    kf = k.to(dtype).repeat_interleave(g, dim=2)
    vf = v.to(dtype).repeat_interleave(g, dim=2)
    scale = d ** -0.5 if scale is None else scale
    s = torch.einsum("bihd,bjhd->bhij", qf, kf) * scale
    if softcap > 0:
        s = softcap * torch.tanh(s / softcap)
    i = torch.arange(sq).view(sq, 1)
    j = torch.arange(sk).view(1, sk)
    diag = i + sk - sq
    if alibi is not None:
        slopes = alibi.to(dtype).view(b if alibi.dim() == 2 else 1, hq, 1, 1)
        s = s - slopes * (diag - j).abs().to(dtype)
    left, right = window
    if causal:
        right = 0
    allowed = torch.ones(sq, sk, dtype=torch.bool)
    if left >= 0:
        allowed &= j >= diag - left
    if right >= 0:
        allowed &= j <= diag + right
    s = s.masked_fill(~allowed, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    safe = torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)
    p = torch.exp(s - safe.unsqueeze(-1))
    if keep is not None:
        p = p * keep.to(dtype) / (1.0 - dropout_p)
    out = torch.einsum("bhij,bjhd->bihd", p, vf)
    return out, lse.double()


def fwd_bwd_ref(q, k, v, dout, dtype=torch.float64, **kw):
    """Reference out, lse and (dq, dk, dv) computed in `dtype`."""
    qr, kr, vr = (t.detach().to(dtype).requires_grad_() for t in (q, k, v))
    out, lse = attention_ref(qr, kr, vr, dtype=dtype, **kw)
    grads = torch.autograd.grad(out, (qr, kr, vr), dout.to(dtype))
    return out.detach(), lse.detach(), grads


def max_err(a, b) -> float:
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def check(name, got, ref64, std, dtype):
    """The error rule. got/std: results in the input dtype; ref64: float64 reference."""
    err, base = max_err(got, ref64), max_err(std, ref64)
    bound = 2 * base + SLACK[dtype]
    assert err <= bound, f"{name}: max error {err:.3g} > 2 x standard attention's {base:.3g} + {SLACK[dtype]:g}"
    return err, base
