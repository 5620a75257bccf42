"""flash-attn 2's Python API (flash_attn.flash_attn_interface), served by ioattn.

Same names, argument names, defaults, layouts and return values as flash-attn 2.x:
  flash_attn_func(q, k, v, ...)                      q (B, Sq, Hq, D), k/v (B, Sk, Hk, D)
  flash_attn_qkvpacked_func(qkv, ...)                qkv (B, S, 3, H, D)
  flash_attn_kvpacked_func(q, kv, ...)               kv (B, Sk, 2, Hk, D)
  flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, ...)
                                                     q (Tq, Hq, D), k/v (Tk, Hk, D)
  flash_attn_varlen_qkvpacked_func(qkv, cu_seqlens, max_seqlen, ...)      qkv (T, 3, H, D)
  flash_attn_varlen_kvpacked_func(q, kv, cu_seqlens_q, cu_seqlens_k, ...) kv (Tk, 2, Hk, D)
Masks align to the bottom-right corner (flash-attn >= 2.1). Gradients flow to q, k, v (qkv, kv).
CPU tensors (float32, float16, bfloat16) work as well as CUDA ones (float16, bfloat16).

return_attn_probs=True returns (out, softmax_lse, S_dmask), softmax_lse (B, Hq, Sq) dense or
(Hq, Tq) varlen in float32. As in flash-attn, S_dmask is an empty tensor unless dropout_p > 0; with
dropout it is the probability matrix (B, Hq, Sq, Sk) (varlen: (B, Hq, max_seqlen_q, max_seqlen_k),
zero outside each sequence; flash-attn rounds the last two sizes up to 128, ioattn does not), with
dropped entries negated. It is computed densely from the LSE (O(N^2) memory): for tests only.

flash_attn_with_kvcache (decoding over a contiguous or paged KV cache) is ioattn.kvcache's.

flash_attn_varlen_func(..., block_table=...) reads k/v as paged caches (num_pages, page_size, Hk, D)
(page_size a multiple of 16; flash-attn asks for multiples of 256) and is forward-only, as in
flash-attn: a backward through it raises NotImplementedError naming block_table.
"""
from __future__ import annotations

import torch

from . import _probs
from .kvcache import flash_attn_with_kvcache, varlen_paged
from .ops import _check_tensor, attention

__all__ = [
    "flash_attn_func",
    "flash_attn_qkvpacked_func",
    "flash_attn_kvpacked_func",
    "flash_attn_varlen_func",
    "flash_attn_varlen_qkvpacked_func",
    "flash_attn_varlen_kvpacked_func",
    "flash_attn_with_kvcache",
]


def _result(q, k, v, out, lse, rng_state, scale, dropout_p, causal, window_size, softcap, alibi_slopes,
            return_attn_probs, cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=0, max_seqlen_k=0):
    if not return_attn_probs:
        return out
    if rng_state is None:
        s_dmask = torch.empty((0,), dtype=q.dtype, device=q.device)
    else:
        with torch.no_grad():
            s_dmask = _probs.attn_probs_with_dropout(
                q, k, lse, rng_state, dropout_p, scale, causal, window_size, softcap, alibi_slopes,
                cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
    return out, lse, s_dmask


def _unbind(packed: torch.Tensor, name: str, dim: int, n: int):
    if packed.shape[dim] != n:
        raise ValueError(f"{name}: expected size {n} in dimension {dim}, got shape {tuple(packed.shape)}")
    return packed.unbind(dim)


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                    alibi_slopes=None, deterministic=False, return_attn_probs=False):
    """q (B, Sq, Hq, D), k/v (B, Sk, Hk, D) with Hq % Hk == 0 -> out (B, Sq, Hq, Dv)."""
    out, lse, rng, scale = attention(q, k, v, dropout_p=dropout_p, softmax_scale=softmax_scale, causal=causal,
                                     window_size=window_size, softcap=softcap, alibi_slopes=alibi_slopes,
                                     deterministic=deterministic)
    return _result(q, k, v, out, lse, rng, scale, dropout_p, causal, window_size, softcap, alibi_slopes,
                   return_attn_probs)


def flash_attn_qkvpacked_func(qkv, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                              softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False):
    """qkv (B, S, 3, H, D) -> out (B, S, H, D). q, k and v are read in place (strided views)."""
    _check_tensor("qkv", qkv, 5)
    q, k, v = _unbind(qkv, "qkv", 2, 3)
    return flash_attn_func(q, k, v, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes,
                           deterministic, return_attn_probs)


def flash_attn_kvpacked_func(q, kv, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                             softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False):
    """q (B, Sq, Hq, D), kv (B, Sk, 2, Hk, D) -> out (B, Sq, Hq, D)."""
    _check_tensor("kv", kv, 5)
    k, v = _unbind(kv, "kv", 2, 2)
    return flash_attn_func(q, k, v, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes,
                           deterministic, return_attn_probs)


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                           softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                           deterministic=False, return_attn_probs=False, block_table=None):
    """q (Tq, Hq, D), k/v (Tk, Hk, D), cu_seqlens_* int32 (B + 1) on q's device -> out (Tq, Hq, Dv).
    With block_table (B, max_pages) int32, k/v are paged caches (num_pages, page_size, Hk, D) and
    sequence b's keys are the first cu_seqlens_k[b + 1] - cu_seqlens_k[b] positions of its pages
    (forward only)."""
    if block_table is not None:
        _check_tensor("block_table", block_table)
        out, lse = varlen_paged(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, block_table,
                                dropout_p=dropout_p, softmax_scale=softmax_scale, causal=causal,
                                window_size=window_size, softcap=softcap, alibi_slopes=alibi_slopes)
        return (out, lse, torch.empty((0,), dtype=q.dtype, device=q.device)) if return_attn_probs else out
    if cu_seqlens_q is None or cu_seqlens_k is None:
        raise ValueError("cu_seqlens_q, cu_seqlens_k: expected int32 tensors of batch + 1 prefix sums, got None")
    out, lse, rng, scale = attention(q, k, v, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
                                     max_seqlen_q=max_seqlen_q, max_seqlen_k=max_seqlen_k, dropout_p=dropout_p,
                                     softmax_scale=softmax_scale, causal=causal, window_size=window_size,
                                     softcap=softcap, alibi_slopes=alibi_slopes, deterministic=deterministic)
    return _result(q, k, v, out, lse, rng, scale, dropout_p, causal, window_size, softcap, alibi_slopes,
                   return_attn_probs, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)


def flash_attn_varlen_qkvpacked_func(qkv, cu_seqlens, max_seqlen, dropout_p=0.0, softmax_scale=None, causal=False,
                                     window_size=(-1, -1), softcap=0.0, alibi_slopes=None, deterministic=False,
                                     return_attn_probs=False):
    """qkv (T, 3, H, D), cu_seqlens int32 (B + 1) -> out (T, H, D)."""
    _check_tensor("qkv", qkv, 4)
    q, k, v = _unbind(qkv, "qkv", 1, 3)
    return flash_attn_varlen_func(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, dropout_p, softmax_scale,
                                  causal, window_size, softcap, alibi_slopes, deterministic, return_attn_probs)


def flash_attn_varlen_kvpacked_func(q, kv, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                                    softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                                    alibi_slopes=None, deterministic=False, return_attn_probs=False):
    """q (Tq, Hq, D), kv (Tk, 2, Hk, D) -> out (Tq, Hq, D)."""
    _check_tensor("kv", kv, 4)
    k, v = _unbind(kv, "kv", 1, 2)
    return flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p,
                                  softmax_scale, causal, window_size, softcap, alibi_slopes, deterministic,
                                  return_attn_probs)
