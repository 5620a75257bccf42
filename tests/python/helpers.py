"""Shared test helpers: random inputs, and one comparison of an ioattn call against the reference."""
from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from reference import check, fwd_bwd_ref


def randn(*shape, dtype=torch.float32, device="cpu", requires_grad=True):
    t = torch.randn(*shape, dtype=torch.float32, device=device).to(dtype)
    return t.requires_grad_(requires_grad)


def compare(call, q, k, v, dtype, ref_kw=None, to_bshd=lambda t: t, check_lse=None):
    """call(q, k, v) -> out (or (out, lse)) from ioattn with autograd. q, k, v are leaf tensors in
    whatever layout `call` takes; to_bshd maps a tensor of that layout to the BSHD reference layout.
    Checks out (and lse when given) and dq, dk, dv with the error rule."""
    ref_kw = ref_kw or {}
    res = call(q, k, v)
    out, lse = res if isinstance(res, tuple) else (res, None)
    assert out.dtype == q.dtype and bool(torch.isfinite(out).all()), "out: non-finite values"
    dout = torch.randn_like(out)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), dout)
    qb, kb, vb, db = (to_bshd(t.detach()) for t in (q, k, v, dout))
    ref, ref_lse, ref_g = fwd_bwd_ref(qb, kb, vb, db, torch.float64, **ref_kw)
    std, _, std_g = fwd_bwd_ref(qb, kb, vb, db, dtype, **ref_kw)
    check("out", to_bshd(out.detach()), ref, std, dtype)
    if lse is not None:
        finite = torch.isfinite(ref_lse)
        assert torch.equal(torch.isfinite(lse), finite), "lse: -inf rows differ from the reference"
        assert (lse.double()[finite] - ref_lse[finite]).abs().max().item() <= 1e-3 if finite.any() else True
    for name, got, r, s in zip(("dq", "dk", "dv"), (dq, dk, dv), ref_g, std_g):
        check(name, to_bshd(got), r, s, dtype)
    return out, (dq, dk, dv)


class CountIoattnOps(TorchDispatchMode):
    """Counts ioattn's custom operators (torch.ops.ioattn.fwd / bwd) as they are dispatched."""

    def __init__(self):
        super().__init__()
        self.counts = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket)
        if name.startswith("ioattn."):
            self.counts[name] = self.counts.get(name, 0) + 1
        return func(*args, **(kwargs or {}))
