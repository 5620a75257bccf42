"""The eager fast path (ops.py: attention() calls the operator implementations through an
autograd.Function instead of torch.library's dispatch when nothing needs the dispatch): the same
bits as the registered operators, and taken only when it should be. Its host time per call against
the dispatch and SDPA: bench/gpu/bench_overhead.py."""
import pytest
import torch

import ioattn
from helpers import CountIoattnOps, randn


def _fwd_bwd(q, k, v, dout, **kw):
    out = ioattn.flash_attn_func(q, k, v, **kw)
    return (out, *torch.autograd.grad(out, (q, k, v), dout))


@pytest.mark.parametrize("kw", [dict(causal=True), dict(window_size=(3, 0), softcap=5.0), dict(dropout_p=0.3)])
def test_eager_path_equals_operators(kw):
    q, k, v = randn(2, 9, 4, 16), randn(2, 12, 2, 16), randn(2, 12, 2, 16)
    dout = torch.randn(2, 9, 4, 16)
    torch.manual_seed(5)
    eager = _fwd_bwd(q, k, v, dout, **kw)
    assert "_EagerAttention" in type(eager[0].grad_fn).__name__
    torch.manual_seed(5)  # the same dropout draw
    with CountIoattnOps() as count:  # a dispatch mode sends the call through the registered operators
        ops = _fwd_bwd(q, k, v, dout, **kw)
    assert count.counts == {"ioattn.fwd": 1, "ioattn.bwd": 1}
    for name, a, b in zip(("out", "dq", "dk", "dv"), eager, ops):
        assert torch.equal(a, b), name


def test_eager_backward_allocates_no_lse_gradient():
    """The LSE output takes no gradient, so the backward must not have autograd materialise a
    zero-filled one for it (it did: one aten::zeros + fill kernel per call, seen on the H200)."""
    from torch.profiler import ProfilerActivity, profile
    q, k, v = randn(2, 9, 4, 16), randn(2, 12, 2, 16), randn(2, 12, 2, 16)
    dout = torch.randn(2, 9, 4, 16)
    out = ioattn.flash_attn_func(q, k, v, causal=True)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        grads = torch.autograd.grad(out, (q, k, v), dout)
    names = [e.key for e in prof.key_averages()]
    assert not any(n in ("aten::zeros", "aten::zeros_like") for n in names), names
    assert all(g is not None and g.shape == t.shape for g, t in zip(grads, (q, k, v)))


def test_jit_trace_records_the_operator():
    """Under torch.jit.trace the registered operator is recorded (a Python autograd.Function would
    not be serialisable), and the trace replays to the same bits."""
    q, k, v = (randn(1, 4, 2, 8, requires_grad=False) for _ in range(3))
    traced = torch.jit.trace(lambda q, k, v: ioattn.flash_attn_func(q, k, v, causal=True), (q, k, v),
                             check_trace=False)
    assert "ioattn::fwd" in str(traced.graph)
    assert torch.equal(traced(q, k, v), ioattn.flash_attn_func(q, k, v, causal=True))
