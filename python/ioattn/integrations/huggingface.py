"""Hugging Face transformers: `attn_implementation="ioattn"`.

    import ioattn.integrations.huggingface as hf_ioattn
    hf_ioattn.register()
    model = AutoModelForCausalLM.from_pretrained(name, attn_implementation="ioattn")

register() adds "ioattn" to transformers' AttentionInterface (the attention function) and to its
AttentionMaskInterface with the flash-attention mask builder, so models hand us what they hand
flash-attn: no mask when every token is real (causality comes from the module's is_causal), or a 2-D
(batch, kv_len) padding mask, served by unpadding into ioattn's varlen call. Sliding windows, softcap,
grouped-query heads and dropout are passed through; padding-free packed batches (cu_seq_lens_q/k
kwargs) use varlen directly.

Unpadding reads the sequence lengths on the host (max_seqlen), as transformers' flash-attention path
does; batches without padding never synchronise.
"""
from __future__ import annotations

import warnings
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..flash_attn_interface import flash_attn_func, flash_attn_varlen_func

NAME = "ioattn"


def _flash_kwargs(module, query_len: int, key_len: int, dropout: float, scaling: Optional[float],
                  sliding_window: Optional[int], softcap: Optional[float], is_causal: Optional[bool]) -> dict:
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    kw = dict(dropout_p=float(dropout), softmax_scale=scaling, causal=bool(causal))
    # transformers counts a window of w tokens including the current one: (w - 1) to each side,
    # the right side cut to 0 by causality (flash-attn's convention, which ioattn follows).
    if sliding_window is not None and key_len > sliding_window:
        kw["window_size"] = (sliding_window - 1, sliding_window - 1)
    if softcap is not None and softcap > 0:
        kw["softcap"] = float(softcap)
    return kw


def _unpad(x: Tensor, mask: Tensor) -> Tuple[Tensor, Tensor, Tensor, int]:
    """x (B, S, H, D), mask (B, S) bool -> (x_unpad (T, H, D), indices (T,), cu_seqlens (B+1,) int32, max_len)."""
    seqlens = mask.sum(dim=-1, dtype=torch.int32)
    indices = torch.nonzero(mask.flatten(), as_tuple=False).flatten()
    max_len = int(seqlens.max().item()) if seqlens.numel() else 0
    cu = F.pad(torch.cumsum(seqlens, dim=0, dtype=torch.int32), (1, 0))
    return x.reshape(-1, *x.shape[2:])[indices], indices, cu, max_len


def _padded_call(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, kw: dict) -> Tensor:
    """q (B, Sq, H, D), k/v (B, Sk, Hk, D), mask (B, Sk) (1 = real token). Returns (B, Sq, H, Dv)."""
    batch, sq = q.shape[0], q.shape[1]
    mask = mask.to(torch.bool)
    k_u, idx_k, cu_k, max_k = _unpad(k, mask)
    v_u = v.reshape(-1, *v.shape[2:])[idx_k]
    if sq == mask.shape[1]:
        q_u, idx_q, cu_q, max_q = q.reshape(-1, *q.shape[2:])[idx_k], idx_k, cu_k, max_k
    elif sq == 1:
        # Decoding: one query per sequence.
        q_u = q.reshape(-1, *q.shape[2:])
        idx_q = torch.arange(batch, device=q.device)
        cu_q = torch.arange(batch + 1, dtype=torch.int32, device=q.device)
        max_q = 1
    else:
        # Chunked prefill with a cache: the queries are the last sq positions of the mask.
        q_u, idx_q, cu_q, max_q = _unpad(q, mask[:, -sq:])
    out_u = flash_attn_varlen_func(q_u, k_u, v_u, cu_q, cu_k, max_q, max_k, **kw)
    out = out_u.new_zeros(batch * sq, *out_u.shape[1:])
    out[idx_q] = out_u
    return out.view(batch, sq, *out_u.shape[1:])


def ioattn_attention_forward(module: torch.nn.Module, query: Tensor, key: Tensor, value: Tensor,
                             attention_mask: Optional[Tensor], dropout: float = 0.0, scaling: Optional[float] = None,
                             sliding_window: Optional[int] = None, softcap: Optional[float] = None,
                             is_causal: Optional[bool] = None, **kwargs) -> Tuple[Tensor, None]:
    """transformers' attention-function signature: query (B, H, Sq, D), key/value (B, Hk, Sk, D);
    returns (attn_output (B, Sq, H, Dv), None)."""
    if kwargs.get("s_aux") is not None:
        raise NotImplementedError("s_aux: attention sinks are not supported by ioattn; use "
                                  "attn_implementation='eager' or 'flex_attention' for this model")
    if kwargs.get("output_attentions", False):
        warnings.warn("ioattn does not return attention weights (output_attentions=True); use 'eager'", stacklevel=2)
    q, k, v = (t.transpose(1, 2) for t in (query, key, value))  # BSHD views, no copy
    kw = _flash_kwargs(module, q.shape[1], k.shape[1], dropout, scaling, sliding_window, softcap, is_causal)
    cu_q, cu_k = kwargs.get("cu_seq_lens_q"), kwargs.get("cu_seq_lens_k")
    max_q, max_k = kwargs.get("max_length_q"), kwargs.get("max_length_k")
    if attention_mask is not None and attention_mask.dim() == 2:
        out = _padded_call(q, k, v, attention_mask, kw)
    elif attention_mask is not None:
        # A 4-D mask means transformers built a dense mask for us (an older version without the mask
        # interface, or a model with a custom mask): serve it exactly, through PyTorch.
        warnings.warn("ioattn: got a 4-D attention mask; falling back to torch.nn.functional."
                      "scaled_dot_product_attention for this call", stacklevel=2)
        groups = query.shape[1] // key.shape[1]
        kk, vv = (t.repeat_interleave(groups, dim=1) for t in (key, value))
        mask = attention_mask if attention_mask.dtype == torch.bool else attention_mask.to(query.dtype)
        out = F.scaled_dot_product_attention(query, kk, vv, attn_mask=mask, dropout_p=kw["dropout_p"],
                                             scale=scaling).transpose(1, 2)
    elif all(x is not None for x in (cu_q, cu_k, max_q, max_k)):
        # Padding-free packed batch (B = 1, sequences back to back).
        batch = q.shape[0]
        out = flash_attn_varlen_func(q.reshape(-1, *q.shape[2:]), k.reshape(-1, *k.shape[2:]),
                                     v.reshape(-1, *v.shape[2:]), cu_q.to(torch.int32), cu_k.to(torch.int32),
                                     int(max_q), int(max_k), **kw)
        out = out.view(batch, -1, *out.shape[1:])
    else:
        out = flash_attn_func(q, k, v, **kw)
    return out, None


def register(name: str = NAME) -> None:
    """Registers `name` (default "ioattn") with transformers' AttentionInterface and, where the
    installed transformers has it, AttentionMaskInterface."""
    try:
        from transformers import AttentionInterface
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("ioattn.integrations.huggingface.register: transformers >= 4.48 with "
                          "AttentionInterface is required (pip install -U transformers)") from e
    AttentionInterface.register(name, ioattn_attention_forward)
    try:
        from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask
    except ImportError:
        return  # older transformers: models pass 4-D masks, served by the fallback above
    AttentionMaskInterface.register(name, flash_attention_mask)
