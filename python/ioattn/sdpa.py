"""torch.nn.functional.scaled_dot_product_attention's signature and semantics, served by ioattn.

Layout: query (B, Hq, L, E), key (B, Hk, S, E), value (B, Hk, S, Ev) (or without the batch
dimension). They are handed to the kernels as `x.transpose(1, 2)`, a strided view: no copy.

is_causal follows PyTorch: the mask is aligned to the TOP-LEFT corner (query i sees keys j <= i),
while ioattn (like flash-attn) aligns masks bottom-right (query i sees j <= i + S - L + right):
  L >= S: top-left causal is the window (left = -1, right = L - S), not the causal flag;
  L <  S: keys j >= L are seen by no query, so attending to key[..., :L, :] with a bottom-right
          causal mask is the same function (their gradients are zero).
attn_mask: ioattn serves no explicit mask (only None); use is_causal, or call
torch.nn.functional.scaled_dot_product_attention for arbitrary masks.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .ops import _check_tensor, attention

_SUPPORTED = (torch.float16, torch.bfloat16, torch.float32)


def scaled_dot_product_attention(query: Tensor, key: Tensor, value: Tensor, attn_mask: Optional[Tensor] = None,
                                 dropout_p: float = 0.0, is_causal: bool = False, scale: Optional[float] = None,
                                 enable_gqa: bool = False) -> Tensor:
    """Drop-in for torch.nn.functional.scaled_dot_product_attention (see the module docstring)."""
    for name, t in (("query", query), ("key", key), ("value", value)):
        _check_tensor(name, t)
        if t.dim() not in (3, 4):
            raise ValueError(f"{name}: expected (batch, heads, seq, dim) or (heads, seq, dim), got shape "
                             f"{tuple(t.shape)}; use torch.nn.functional.scaled_dot_product_attention for "
                             f"other ranks")
        if t.dtype not in _SUPPORTED:
            raise TypeError(f"{name}: expected dtype float16, bfloat16 or float32, got {t.dtype}; use "
                            f"torch.nn.functional.scaled_dot_product_attention for other dtypes")
    if not (query.dim() == key.dim() == value.dim()):
        raise ValueError(f"key, value: expected {query.dim()} dimensions like query, got shapes "
                         f"{tuple(key.shape)} and {tuple(value.shape)}")
    if attn_mask is not None:
        raise ValueError("attn_mask: ioattn supports no explicit attention mask (only None, with is_causal for "
                         "causal attention); use torch.nn.functional.scaled_dot_product_attention for masks")
    hq, hk = query.shape[-3], key.shape[-3]
    if hq != hk and not enable_gqa:
        raise ValueError(f"key: expected {hq} heads like query (or enable_gqa=True for grouped-query "
                         f"attention), got {hk}")
    batched = query.dim() == 4
    q, k, v = (t if batched else t.unsqueeze(0) for t in (query, key, value))
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # BHSD viewed as BSHD: strides only
    lq, lk = q.shape[1], k.shape[1]
    window = (-1, -1)
    causal = False
    if is_causal:
        if lq >= lk:
            window = (-1, lq - lk)
        else:
            k, v = k[:, :lq], v[:, :lq]
            causal = True
    out, _, _, _ = attention(q, k, v, dropout_p=dropout_p, softmax_scale=scale, causal=causal, window_size=window)
    out = out.transpose(1, 2)
    return out if batched else out.squeeze(0)
