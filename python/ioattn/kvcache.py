"""flash-attn 2's flash_attn_with_kvcache: decoding over a contiguous or paged KV cache, with
optional in-place append of new keys/values and rotary embedding (include/ioattn/ioattn.h,
"Decoding"). Inference only (no backward), as in flash-attn.

The operator `ioattn::fwd_kvcache` declares k_cache and v_cache as mutated, so torch.compile
functionalises the append; the index tensors stay on q's device.

`ioattn::fwd_paged` serves flash_attn_varlen_func(..., block_table=...): packed varlen queries over
a paged cache (the C++ forward_paged, run by the split-KV decode kernels reading the pages in
place). Forward only: flash-attn 2 has no backward for a paged call either (its varlen backward
rejects the 4-D cache). ioattn lets the forward run with inputs that require grad, as flash-attn
does, and raises NotImplementedError naming block_table when a backward reaches the operator.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from . import _backend
from .ops import _alloc_like, _alloc_lse, _check_tensor, _last_contiguous, _scale, _window


@torch.library.custom_op("ioattn::fwd_kvcache", mutates_args=("k_cache", "v_cache"))
def _fwd_kvcache(q: Tensor, k_cache: Tensor, v_cache: Tensor, k: Optional[Tensor], v: Optional[Tensor],
                 rotary_cos: Optional[Tensor], rotary_sin: Optional[Tensor], cache_seqlens: Optional[Tensor],
                 cache_seqlen: int, cache_batch_idx: Optional[Tensor], cache_leftpad: Optional[Tensor],
                 block_table: Optional[Tensor], alibi_slopes: Optional[Tensor], softmax_scale: float, causal: bool,
                 window_left: int, window_right: int, softcap: float, rotary_interleaved: bool,
                 num_splits: int) -> Tuple[Tensor, Tensor]:
    out = _alloc_like(q, v_cache.shape[-1])
    lse = torch.empty((q.shape[0], q.shape[2], q.shape[1]), dtype=torch.float32, device=q.device)
    _backend.forward_kvcache(
        _last_contiguous(q), k_cache, v_cache, out, lse, k=None if k is None else _last_contiguous(k),
        v=None if v is None else _last_contiguous(v), rotary_cos=rotary_cos, rotary_sin=rotary_sin,
        rotary_interleaved=rotary_interleaved, cache_seqlens=cache_seqlens, cache_seqlen=cache_seqlen,
        cache_batch_idx=cache_batch_idx, cache_leftpad=cache_leftpad, block_table=block_table,
        alibi_slopes=alibi_slopes, softmax_scale=softmax_scale, causal=causal, window_left=window_left,
        window_right=window_right, softcap=softcap, num_splits=num_splits)
    return out, lse


@_fwd_kvcache.register_fake
def _fwd_kvcache_fake(q, k_cache, v_cache, *args):
    lse = torch.empty((q.shape[0], q.shape[2], q.shape[1]), dtype=torch.float32, device=q.device)
    return _alloc_like(q, v_cache.shape[-1]), lse


def flash_attn_with_kvcache(q, k_cache, v_cache, k=None, v=None, rotary_cos=None, rotary_sin=None,
                            cache_seqlens: Optional[Union[int, Tensor]] = None, cache_batch_idx: Optional[Tensor] = None,
                            cache_leftpad: Optional[Tensor] = None, block_table: Optional[Tensor] = None,
                            softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                            rotary_interleaved=True, alibi_slopes=None, num_splits=0, return_softmax_lse=False):
    """q (B, Sq, Hq, D); k_cache/v_cache (B_cache, Smax, Hk, D) or paged (num_pages, page_size, Hk, D)
    with block_table (B, max_pages) int32; k/v (B, Snew, Hk, D) appended in place at cache_seqlens
    (int or int32 (B)). Returns out (B, Sq, Hq, D) (and softmax_lse (B, Hq, Sq) when
    return_softmax_lse). Masks are bottom-right aligned against each sequence's key count."""
    _check_tensor("q", q, 4)
    _check_tensor("k_cache", k_cache, 4)
    _check_tensor("v_cache", v_cache, 4)
    if (k is None) != (v is None):
        raise ValueError("k, v: expected both new keys and new values, or neither")
    for name, t in (("k", k), ("v", v), ("rotary_cos", rotary_cos), ("rotary_sin", rotary_sin),
                    ("cache_batch_idx", cache_batch_idx), ("cache_leftpad", cache_leftpad),
                    ("block_table", block_table), ("alibi_slopes", alibi_slopes)):
        if t is not None:
            _check_tensor(name, t)
    if isinstance(cache_seqlens, Tensor):
        seqlens_t, seqlen = cache_seqlens, 0
    elif cache_seqlens is None:
        # flash-attn: no lengths means the whole cache is valid.
        seqlens_t, seqlen = None, int(k_cache.shape[1]) if block_table is None else 0
        if block_table is not None:
            raise ValueError("cache_seqlens: expected the sequence lengths with a paged cache (block_table)")
    else:
        seqlens_t, seqlen = None, int(cache_seqlens)
    left, right = _window(window_size)
    if causal and right > 0:
        right = 0  # flash-attn's convention, as in flash_attn_func
    out, lse = torch.ops.ioattn.fwd_kvcache(
        q, k_cache, v_cache, k, v, rotary_cos, rotary_sin, seqlens_t, seqlen, cache_batch_idx, cache_leftpad,
        block_table, alibi_slopes, _scale(softmax_scale, q.shape[-1]), bool(causal), left, right, float(softcap),
        bool(rotary_interleaved), int(num_splits))
    return (out, lse) if return_softmax_lse else out


# ---- paged prefill: flash_attn_varlen_func(..., block_table=...) -------------------------------

@torch.library.custom_op("ioattn::fwd_paged", mutates_args=())
def _fwd_paged(q: Tensor, k_cache: Tensor, v_cache: Tensor, block_table: Tensor, cu_seqlens_q: Tensor,
               cu_seqlens_k: Tensor, max_seqlen_q: int, max_seqlen_k: int, alibi_slopes: Optional[Tensor],
               softmax_scale: float, causal: bool, window_left: int, window_right: int,
               softcap: float) -> Tuple[Tensor, Tensor]:
    out = _alloc_like(q, v_cache.shape[-1])
    lse = _alloc_lse(q, varlen=True)
    _backend.forward_paged(
        _last_contiguous(q), k_cache, v_cache, block_table, out, lse, cu_seqlens_q=cu_seqlens_q,
        cu_seqlens_k=cu_seqlens_k, max_seqlen_q=max_seqlen_q, max_seqlen_k=max_seqlen_k, alibi_slopes=alibi_slopes,
        softmax_scale=softmax_scale, causal=causal, window_left=window_left, window_right=window_right,
        softcap=softcap, dropout_p=0.0, seed=0, offset=0, deterministic=False)
    return out, lse


@_fwd_paged.register_fake
def _fwd_paged_fake(q, k_cache, v_cache, *args):
    return _alloc_like(q, v_cache.shape[-1]), _alloc_lse(q, varlen=True)


def _fwd_paged_setup_context(ctx, inputs, output):
    ctx.mark_non_differentiable(output[1])


def _fwd_paged_backward(ctx, dout, dlse):
    raise NotImplementedError(
        "block_table: flash_attn_varlen_func over a paged KV cache is forward-only (as in flash-attn); "
        "run it under torch.no_grad() / torch.inference_mode(), or pass packed k/v for training")


_fwd_paged.register_autograd(_fwd_paged_backward, setup_context=_fwd_paged_setup_context)


def varlen_paged(q, k_cache, v_cache, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, block_table, *,
                 dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                 alibi_slopes=None) -> Tuple[Tensor, Tensor]:
    """q (Tq, Hq, D) packed by cu_seqlens_q; sequence b's keys are the first
    cu_seqlens_k[b + 1] - cu_seqlens_k[b] positions of its pages block_table[b, :] in k_cache /
    v_cache (num_pages, page_size, Hk, D / Dv), page_size a multiple of 16. Returns (out (Tq, Hq, Dv),
    softmax_lse (Hq, Tq))."""
    _check_tensor("q", q, 3)
    _check_tensor("k", k_cache, 4)
    _check_tensor("v", v_cache, 4)
    _check_tensor("block_table", block_table, 2)
    if cu_seqlens_q is None or cu_seqlens_k is None:
        raise ValueError("cu_seqlens_q, cu_seqlens_k: expected int32 tensors of batch + 1 prefix sums, got None")
    _check_tensor("cu_seqlens_q", cu_seqlens_q, 1)
    _check_tensor("cu_seqlens_k", cu_seqlens_k, 1)
    if float(dropout_p) != 0.0:
        raise NotImplementedError(f"dropout_p: not supported with a paged KV cache (block_table), got {dropout_p}")
    if alibi_slopes is not None:
        _check_tensor("alibi_slopes", alibi_slopes)
        alibi_slopes = alibi_slopes.contiguous()
    left, right = _window(window_size)
    if causal and right > 0:
        right = 0  # flash-attn's convention, as in flash_attn_func
    return torch.ops.ioattn.fwd_paged(
        q, k_cache, v_cache, block_table.contiguous(), cu_seqlens_q.contiguous(), cu_seqlens_k.contiguous(),
        int(max_seqlen_q), int(max_seqlen_k), alibi_slopes, _scale(softmax_scale, q.shape[-1]), bool(causal), left,
        right, float(softcap))
