"""The PyTorch custom operators `ioattn::fwd` and `ioattn::bwd`, and `attention()`, the one entry
every public function (flash-attn API, SDPA, adapters) goes through.

Why custom operators: torch.compile(fullgraph=True) traces through them without graph breaks (the
fake implementations give output shapes and strides without running anything), AOTAutograd sees the
backward through register_autograd, and CUDA-graph capture works because the real implementations
launch on PyTorch's current stream, take their workspace from PyTorch's caching allocator and never
synchronise.

Layouts: the operators take flash-attn's BSHD (dense, 4-D) or packed THD (varlen, 3-D) tensors with
any strides; PyTorch's BHSD is served by passing `x.transpose(1, 2)` (a view, no copy). Outputs are
allocated with the memory order of their input (a BHSD-contiguous q gives a BHSD-contiguous output).

Dropout: a (seed, offset) pair is drawn from PyTorch's default CPU generator per call (so
torch.manual_seed makes runs reproducible) and travels as a 2-element int64 CPU tensor to the
backward, which regenerates the same Philox mask (DESIGN.md §1).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from torch.utils._python_dispatch import _get_current_dispatch_mode as _current_dispatch_mode

from . import _backend

_LIB = "ioattn"


# ---- allocation shared by the real and the fake implementations ---------------------------------
# Real and fake must agree on strides (torch.compile checks), so both call these.

def _alloc_like(t: Tensor, last: int, dtype: Optional[torch.dtype] = None) -> Tensor:
    """Empty tensor of t's shape with last dimension `last`, its leading dimensions laid out in
    memory in the order of t's strides (largest first), the last dimension contiguous."""
    nd = t.dim()
    shape = list(t.shape[:-1]) + [last]
    if t.is_contiguous():  # the common case: the natural order (and the same strides as below)
        return torch.empty(shape, dtype=dtype or t.dtype, device=t.device)
    order = sorted(range(nd - 1), key=lambda i: (-t.stride(i), i))
    buf = torch.empty([shape[i] for i in order] + [last], dtype=dtype or t.dtype, device=t.device)
    inverse = [0] * (nd - 1)
    for pos, i in enumerate(order):
        inverse[i] = pos
    return buf.permute(*inverse, nd - 1)


def _alloc_lse(q: Tensor, varlen: bool) -> Tensor:
    # Dense: (batch, heads_q, seqlen_q); varlen: (heads_q, total_q), as flash-attn returns them.
    shape = (q.shape[1], q.shape[0]) if varlen else (q.shape[0], q.shape[2], q.shape[1])
    return torch.empty(shape, dtype=torch.float32, device=q.device)


# ---- preparing inputs for the C++ core ---------------------------------------------------------

def _last_contiguous(t: Tensor) -> Tensor:
    return t if t.stride(-1) == 1 or t.shape[-1] <= 1 else t.contiguous()


def _gpu_ready(t: Tensor) -> bool:
    """The GPU kernels read rows in 16-byte vectors: head dims must be multiples of 8 and row
    starts 16-byte aligned."""
    vec = 16 // t.element_size()
    return (t.shape[-1] % 8 == 0 and t.data_ptr() % 16 == 0
            and all(int(s) % vec == 0 for s in t.stride()[:-1]))


def _gpu_pad(t: Tensor) -> Tensor:
    """Like flash-attn, zero-pad the head dim to a multiple of 8 (exact: zero columns change neither
    Q·K nor the softmax, and give zero output columns) and copy misaligned tensors."""
    d = t.shape[-1]
    if d % 8 != 0:
        return torch.nn.functional.pad(t, (0, 8 - d % 8))
    return t if _gpu_ready(t) else t.clone(memory_format=torch.contiguous_format)


def _needs_gpu_copy(*ts: Tensor) -> bool:
    return not all(_gpu_ready(t) for t in ts)


def _rng_pair(rng_state: Optional[Tensor]) -> Tuple[int, int]:
    if rng_state is None:
        return 0, 0
    seed, offset = rng_state.tolist()  # a CPU tensor: no device synchronisation
    return seed & 0xFFFFFFFFFFFFFFFF, offset & 0xFFFFFFFFFFFFFFFF


def _scalars(cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, alibi_slopes, rng_state, dropout_p,
             softmax_scale, causal, window_left, window_right, softcap, deterministic) -> dict:
    seed, offset = _rng_pair(rng_state)
    return dict(cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k, max_seqlen_q=max_seqlen_q,
                max_seqlen_k=max_seqlen_k, alibi_slopes=alibi_slopes, softmax_scale=softmax_scale, causal=causal,
                window_left=window_left, window_right=window_right, softcap=softcap, dropout_p=dropout_p,
                seed=seed, offset=offset, deterministic=deterministic)


# ---- the operators -----------------------------------------------------------------------------

def _fwd_impl(q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Optional[Tensor], cu_seqlens_k: Optional[Tensor],
              max_seqlen_q: int, max_seqlen_k: int, alibi_slopes: Optional[Tensor], rng_state: Optional[Tensor],
              dropout_p: float, softmax_scale: float, causal: bool, window_left: int, window_right: int,
              softcap: float, deterministic: bool) -> Tuple[Tensor, Tensor]:
    varlen = cu_seqlens_q is not None
    out = _alloc_like(q, v.shape[-1])
    lse = _alloc_lse(q, varlen)
    kw = _scalars(cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, alibi_slopes, rng_state, dropout_p,
                  softmax_scale, causal, window_left, window_right, softcap, deterministic)
    qc, kc, vc = (_last_contiguous(t) for t in (q, k, v))
    if q.device.type == "cuda" and _needs_gpu_copy(qc, kc, vc):
        qc, kc, vc = (_gpu_pad(t) for t in (qc, kc, vc))
        tmp = _alloc_like(qc, vc.shape[-1])
        _backend.forward(qc, kc, vc, tmp, lse, **kw)
        out.copy_(tmp[..., : out.shape[-1]])
    else:
        _backend.forward(qc, kc, vc, out, lse, **kw)
    return out, lse


_fwd = torch.library.custom_op(f"{_LIB}::fwd", mutates_args=())(_fwd_impl)


@_fwd.register_fake
def _fwd_fake(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, alibi_slopes, rng_state,
              dropout_p, softmax_scale, causal, window_left, window_right, softcap, deterministic):
    return _alloc_like(q, v.shape[-1]), _alloc_lse(q, cu_seqlens_q is not None)


def _bwd_impl(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, cu_seqlens_q: Optional[Tensor],
              cu_seqlens_k: Optional[Tensor], max_seqlen_q: int, max_seqlen_k: int, alibi_slopes: Optional[Tensor],
              rng_state: Optional[Tensor], dropout_p: float, softmax_scale: float, causal: bool, window_left: int,
              window_right: int, softcap: float, deterministic: bool) -> Tuple[Tensor, Tensor, Tensor]:
    dq = _alloc_like(q, q.shape[-1])
    dk = _alloc_like(k, k.shape[-1])
    dv = _alloc_like(v, v.shape[-1])
    kw = _scalars(cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, alibi_slopes, rng_state, dropout_p,
                  softmax_scale, causal, window_left, window_right, softcap, deterministic)
    ins = [_last_contiguous(t) for t in (q, k, v, out, dout)]
    lse = lse.contiguous()
    if q.device.type == "cuda" and _needs_gpu_copy(*ins):
        qc, kc, vc, oc, doc = (_gpu_pad(t) for t in ins)
        tq, tk, tv = (_alloc_like(t, t.shape[-1]) for t in (qc, kc, vc))
        _backend.backward(qc, kc, vc, oc, doc, lse, tq, tk, tv, **kw)
        for dst, src in ((dq, tq), (dk, tk), (dv, tv)):
            dst.copy_(src[..., : dst.shape[-1]])
    else:
        qc, kc, vc, oc, doc = ins
        _backend.backward(qc, kc, vc, oc, doc, lse, dq, dk, dv, **kw)
    return dq, dk, dv


_bwd = torch.library.custom_op(f"{_LIB}::bwd", mutates_args=())(_bwd_impl)


@_bwd.register_fake
def _bwd_fake(dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, alibi_slopes,
              rng_state, dropout_p, softmax_scale, causal, window_left, window_right, softcap, deterministic):
    return _alloc_like(q, q.shape[-1]), _alloc_like(k, k.shape[-1]), _alloc_like(v, v.shape[-1])


def _fwd_setup_context(ctx, inputs, output):
    (q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, alibi_slopes, rng_state, dropout_p,
     softmax_scale, causal, window_left, window_right, softcap, deterministic) = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, alibi_slopes, rng_state)
    ctx.scalars = (max_seqlen_q, max_seqlen_k, dropout_p, softmax_scale, causal, window_left, window_right,
                   softcap, deterministic)
    # flash-attn returns the LSE for inspection; gradients do not flow through it.
    ctx.mark_non_differentiable(lse)


def _backward_through(bwd, ctx, dout):
    q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, alibi_slopes, rng_state = ctx.saved_tensors
    (max_seqlen_q, max_seqlen_k, dropout_p, softmax_scale, causal, window_left, window_right, softcap,
     deterministic) = ctx.scalars
    dq, dk, dv = bwd(dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, alibi_slopes,
                     rng_state, dropout_p, softmax_scale, causal, window_left, window_right, softcap, deterministic)
    return dq, dk, dv, *([None] * 13)


def _fwd_backward(ctx, dout, dlse):
    return _backward_through(torch.ops.ioattn.bwd, ctx, dout)


_fwd.register_autograd(_fwd_backward, setup_context=_fwd_setup_context)


# ---- the eager fast path -----------------------------------------------------------------------
# torch.library's dispatch of a custom operator costs tens of microseconds per call in eager mode
# (argument defaulting, its autograd wrapper): several times the rest of our Python and C++ work for
# a call, and in a training step of a small model, where the CPU is the bottleneck, it made steps
# slower than SDPA's (examples/gpt: 20.2 against 13.9 ms/step on the H200 before this path, with
# ~0.4 ms of host time per ioattn call in torch.profiler). Outside torch.compile, and with plain
# tensors (no FakeTensor or other subclass) and no Python dispatch mode active, attention() runs the
# same implementations through this autograd.Function; compiled and traced code, and code under a
# dispatch mode (flop counters, op counters), keeps going through the registered operators.

class _EagerAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, *inputs):
        output = _fwd_impl(*inputs)
        _fwd_setup_context(ctx, inputs, output)
        # The LSE takes no gradient: without this autograd allocates and zero-fills one for it on every
        # backward (an aten::zeros and a fill kernel per call in the H200's torch.profiler table).
        ctx.set_materialize_grads(False)
        return output

    @staticmethod
    def backward(ctx, dout, dlse):
        if dout is None:  # the output took no part in what was differentiated
            return (None,) * len(ctx.needs_input_grad)
        return _backward_through(_bwd_impl, ctx, dout)


def _eager(*tensors) -> bool:
    # A Python dispatch mode (FlopCounterMode, a debugging or counting mode) must see the operators.
    # torch.jit.trace must record the operator, not a Python autograd.Function it cannot serialise.
    return (not torch.compiler.is_compiling() and not torch.jit.is_tracing() and _current_dispatch_mode() is None
            and all(t is None or type(t) is Tensor for t in tensors))


# ---- the entry every public function uses ------------------------------------------------------

def _check_tensor(name: str, t, ndim: Optional[int] = None) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions, got shape {tuple(t.shape)}")


def _window(window_size) -> Tuple[int, int]:
    try:
        left, right = window_size
        left, right = int(left), int(right)
    except (TypeError, ValueError):
        raise ValueError(f"window_size: expected a pair of ints (left, right), -1 for unbounded, "
                         f"got {window_size!r}") from None
    return left, right


def _scale(softmax_scale, head_dim: int) -> float:
    if softmax_scale is None:
        return 1.0 / math.sqrt(head_dim)
    s = float(softmax_scale)
    if not (s > 0.0) or math.isinf(s):
        raise ValueError(f"softmax_scale: expected a finite value > 0 (or None for 1/sqrt(head_dim)), got {s}")
    return s


def _draw_rng_state() -> Tensor:
    # Two draws from the default generator: the Philox seed and the offset. CPU-resident so the
    # operator reads them without synchronising a device.
    return torch.randint(0, 2**62, (2,), dtype=torch.int64, device="cpu")


def attention(q: Tensor, k: Tensor, v: Tensor, *, cu_seqlens_q: Optional[Tensor] = None,
              cu_seqlens_k: Optional[Tensor] = None, max_seqlen_q: int = 0, max_seqlen_k: int = 0,
              dropout_p: float = 0.0, softmax_scale: Optional[float] = None, causal: bool = False,
              window_size: Sequence[int] = (-1, -1), softcap: float = 0.0, alibi_slopes: Optional[Tensor] = None,
              deterministic: bool = False) -> Tuple[Tensor, Tensor, Optional[Tensor], float]:
    """Attention with autograd on BSHD (or varlen THD) tensors.

    Returns (out, softmax_lse, rng_state, softmax_scale): rng_state is the (seed, offset) pair drawn
    for dropout (None without dropout), softmax_scale the scale used."""
    varlen = cu_seqlens_q is not None or cu_seqlens_k is not None
    nd = 3 if varlen else 4
    _check_tensor("q", q, nd)
    _check_tensor("k", k, nd)
    _check_tensor("v", v, nd)
    if varlen:
        _check_tensor("cu_seqlens_q", cu_seqlens_q, 1)
        _check_tensor("cu_seqlens_k", cu_seqlens_k, 1)
        # The core reads them as plain arrays; a strided view (e.g. every other entry) is copied.
        cu_seqlens_q, cu_seqlens_k = cu_seqlens_q.contiguous(), cu_seqlens_k.contiguous()
    if alibi_slopes is not None:
        _check_tensor("alibi_slopes", alibi_slopes)
        alibi_slopes = alibi_slopes.contiguous()
    p = float(dropout_p)
    if not (0.0 <= p < 1.0):
        raise ValueError(f"dropout_p: expected 0 <= dropout_p < 1, got {dropout_p}")
    left, right = _window(window_size)
    if causal and right > 0:
        # flash-attn's kernels take causal as "right = 0" whatever window_size says, and callers rely
        # on it (Hugging Face passes causal=True, window_size=(w - 1, w - 1) for sliding windows).
        right = 0
    scale = _scale(softmax_scale, q.shape[-1])
    rng_state = _draw_rng_state() if p > 0.0 else None
    op = _EagerAttention.apply if _eager(q, k, v, cu_seqlens_q, cu_seqlens_k, alibi_slopes) else torch.ops.ioattn.fwd
    out, lse = op(q, k, v, cu_seqlens_q, cu_seqlens_k, int(max_seqlen_q), int(max_seqlen_k), alibi_slopes, rng_state, p,
                  scale, bool(causal), left, right, float(softcap), bool(deterministic))
    return out, lse, rng_state, scale
