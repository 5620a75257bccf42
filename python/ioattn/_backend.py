"""torch.Tensor -> the plain descriptors ioattn._C takes, and the calls into it.

The C++ core sees raw pointers, shapes, strides (in elements), dtype and device codes, the CUDA
stream as an integer and a workspace allocated here from PyTorch's caching allocator. Nothing here
synchronises the device or allocates outside PyTorch, so the calls can be captured in CUDA graphs.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import _C

_DTYPE_CODES = {
    torch.float32: _C.DTYPE_F32,
    torch.float16: _C.DTYPE_F16,
    torch.bfloat16: _C.DTYPE_BF16,
    torch.int32: _C.DTYPE_I32,
}
# What each argument holds, for error messages on dtypes the C++ core has no code for (the core
# checks the rest: int32 where float16 belongs, ...).
_EXPECTED_DTYPE = {name: "int32" for name in ("cu_seqlens_q", "cu_seqlens_k", "cache_seqlens", "cache_batch_idx",
                                               "cache_leftpad", "block_table")}
_EXPECTED_DTYPE["alibi_slopes"] = "float32"


def describe(name: str, t: Optional[torch.Tensor]):
    """The 6-tuple ioattn._C reads as a TensorView, or None for an absent tensor. (On every call's
    path, up to 20 times per forward + backward: kept to a few attribute reads.)"""
    if t is None:
        return None
    code = _DTYPE_CODES.get(t.dtype)
    if code is None:
        raise TypeError(f"{name}: expected dtype {_EXPECTED_DTYPE.get(name, 'float16, bfloat16 or float32')}, "
                        f"got {t.dtype}")
    if t.is_cuda:
        dev, index = _C.DEVICE_CUDA, t.get_device()
    elif t.is_cpu:
        dev, index = _C.DEVICE_CPU, 0
    else:
        raise ValueError(f"{name}: expected a CPU or CUDA tensor, got device {t.device}")
    nd = t.dim()
    if nd == 0 or nd > 4:
        raise ValueError(f"{name}: expected 1 to 4 dimensions, got shape {tuple(t.shape)}")
    return (t.data_ptr(), code, t.shape, t.stride(), dev, index)  # torch.Size is a tuple


# Workspace sizes of dense (non-varlen) calls by everything but the pointers: a training loop asks
# for the same few shapes every step, and each _C.workspace_size call validates the whole call once
# more. Varlen calls are not cached (their sizes may depend on the index arrays' contents).
_WORKSPACE_SIZES: dict = {}


def _stream_and_workspace(backward: bool, q, k, v, args: tuple):
    """The CUDA stream PyTorch is issuing work on and a workspace the size the call asks for."""
    if q.device.type != "cuda":
        return 0, None
    stream = torch.cuda.current_stream(q.device).cuda_stream
    key = None
    if args[0] is None and args[1] is None:
        key = (backward, q.dtype, q.device.index, tuple(q.shape), tuple(k.shape), tuple(v.shape), args[4] is None,
               *args[2:4], *args[5:11], args[13])
        nbytes = _WORKSPACE_SIZES.get(key)
        if nbytes is not None:
            return stream, torch.empty(nbytes, dtype=torch.uint8, device=q.device) if nbytes > 0 else None
    nbytes = _C.workspace_size(backward, describe("q", q), describe("k", k), describe("v", v), *args, stream, 0, 0)
    if key is not None:
        if len(_WORKSPACE_SIZES) >= 1024:
            _WORKSPACE_SIZES.clear()
        _WORKSPACE_SIZES[key] = nbytes
    ws = torch.empty(nbytes, dtype=torch.uint8, device=q.device) if nbytes > 0 else None
    return stream, ws


def _args(cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, alibi_slopes, softmax_scale, causal,
          window_left, window_right, softcap, dropout_p, seed, offset, deterministic) -> tuple:
    return (describe("cu_seqlens_q", cu_seqlens_q), describe("cu_seqlens_k", cu_seqlens_k), int(max_seqlen_q),
            int(max_seqlen_k), describe("alibi_slopes", alibi_slopes), float(softmax_scale), bool(causal),
            int(window_left), int(window_right), float(softcap), float(dropout_p), int(seed), int(offset),
            bool(deterministic))


def forward(q, k, v, out, lse, **kw) -> None:
    """Writes out and lse (caller-allocated). kw: the Args fields, see _args."""
    args = _args(**kw)
    stream, ws = _stream_and_workspace(False, q, k, v, args)
    with _device_guard(q):
        _C.forward(describe("q", q), describe("k", k), describe("v", v), describe("out", out), describe("lse", lse),
                   *args, stream, ws.data_ptr() if ws is not None else 0, ws.numel() if ws is not None else 0)


def backward(q, k, v, out, dout, lse, dq, dk, dv, **kw) -> None:
    """Writes dq, dk and dv (caller-allocated)."""
    args = _args(**kw)
    stream, ws = _stream_and_workspace(True, q, k, v, args)
    with _device_guard(q):
        _C.backward(describe("q", q), describe("k", k), describe("v", v), describe("out", out),
                    describe("dout", dout), describe("lse", lse), describe("dq", dq), describe("dk", dk),
                    describe("dv", dv), *args, stream, ws.data_ptr() if ws is not None else 0,
                    ws.numel() if ws is not None else 0)


def describe_forward_choice(q, k, v, **kw) -> str:
    return _C.describe_forward_choice(describe("q", q), describe("k", k), describe("v", v), *_args(**kw), 0, 0, 0)


class _NullGuard:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _device_guard(t: torch.Tensor):
    # Kernels launch on the current CUDA device; make it the tensors' device for the call.
    if t.device.type == "cuda" and t.device.index is not None and t.device.index != torch.cuda.current_device():
        return torch.cuda.device(t.device.index)
    return _NullGuard()


def _kv_args(k, v, rotary_cos, rotary_sin, rotary_interleaved, cache_seqlens, cache_seqlen, cache_batch_idx,
             cache_leftpad, block_table, alibi_slopes, softmax_scale, causal, window_left, window_right, softcap,
             num_splits) -> tuple:
    return (describe("k", k), describe("v", v), describe("rotary_cos", rotary_cos), describe("rotary_sin", rotary_sin),
            bool(rotary_interleaved), describe("cache_seqlens", cache_seqlens), int(cache_seqlen),
            describe("cache_batch_idx", cache_batch_idx), describe("cache_leftpad", cache_leftpad),
            describe("block_table", block_table), describe("alibi_slopes", alibi_slopes), float(softmax_scale),
            bool(causal), int(window_left), int(window_right), float(softcap), int(num_splits))


def forward_kvcache(q, k_cache, v_cache, out, lse, **kw) -> None:
    """Decoding over a KV cache: writes out and lse, and appends kw['k'] / kw['v'] to the cache."""
    args = _kv_args(**kw)
    stream, ws = 0, None
    if q.device.type == "cuda":
        stream = torch.cuda.current_stream(q.device).cuda_stream
        nbytes = _C.kvcache_workspace_size(describe("q", q), describe("k_cache", k_cache),
                                           describe("v_cache", v_cache), *args, stream, 0, 0)
        ws = torch.empty(nbytes, dtype=torch.uint8, device=q.device) if nbytes > 0 else None
    with _device_guard(q):
        _C.forward_kvcache(describe("q", q), describe("k_cache", k_cache), describe("v_cache", v_cache),
                           describe("out", out), describe("lse", lse), *args, stream,
                           ws.data_ptr() if ws is not None else 0, ws.numel() if ws is not None else 0)


def forward_paged(q, k_cache, v_cache, block_table, out, lse, **kw) -> None:
    """Varlen queries over a paged KV cache (flash_attn_varlen_func with block_table): writes out
    and lse. kw: the Args fields, see _args (dropout must be 0)."""
    args = _args(**kw)
    views = (describe("q", q), describe("k_cache", k_cache), describe("v_cache", v_cache),
             describe("block_table", block_table))
    stream, ws = 0, None
    if q.device.type == "cuda":
        stream = torch.cuda.current_stream(q.device).cuda_stream
        nbytes = _C.paged_workspace_size(*views, *args, stream, 0, 0)
        ws = torch.empty(nbytes, dtype=torch.uint8, device=q.device) if nbytes > 0 else None
    with _device_guard(q):
        _C.forward_paged(*views, describe("out", out), describe("lse", lse), *args, stream,
                         ws.data_ptr() if ws is not None else 0, ws.numel() if ws is not None else 0)
