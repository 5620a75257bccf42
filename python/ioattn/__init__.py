"""IOAttention: exact IO-aware ("flash") attention on CPU and CUDA.

Drop-in APIs:
  flash-attn 2:   ioattn.flash_attn_func, flash_attn_qkvpacked_func, flash_attn_kvpacked_func,
                  flash_attn_varlen_func, flash_attn_varlen_qkvpacked_func, flash_attn_varlen_kvpacked_func,
                  flash_attn_with_kvcache
                  (same arguments, defaults, layouts and returns; see ioattn.flash_attn_interface)
  PyTorch SDPA:   ioattn.scaled_dot_product_attention (torch.nn.functional's signature, BHSD, top-left causal)
Both run as the PyTorch custom operators torch.ops.ioattn.fwd / torch.ops.ioattn.bwd (autograd,
torch.compile(fullgraph=True), CUDA graphs). Adapters: ioattn.integrations.huggingface,
ioattn.integrations.flash_attn_shim.
"""
from __future__ import annotations

import torch  # noqa: F401  (load torch's shared libraries before the extension)

from . import _C
from ._probs import dropout_mask
from .flash_attn_interface import (
    flash_attn_func,
    flash_attn_kvpacked_func,
    flash_attn_qkvpacked_func,
    flash_attn_varlen_func,
    flash_attn_varlen_kvpacked_func,
    flash_attn_varlen_qkvpacked_func,
    flash_attn_with_kvcache,
)
from .ops import attention
from .sdpa import scaled_dot_product_attention

__version__ = "0.1.0"


def build_info() -> dict:
    """Backends compiled in and devices found: version, cuda_compiled, cuda_device_count,
    cpu_features, cuda_devices."""
    return _C.build_info()


def describe_forward_choice(q, k, v, **kwargs) -> str:
    """Which backend and kernel would serve flash_attn_func(q, k, v, **kwargs), and why. kwargs are
    flash_attn_func's (and cu_seqlens_q/k, max_seqlen_q/k for varlen); those that do not change the
    choice (deterministic, return_attn_probs) are ignored."""
    from . import _backend
    from .ops import _scale, _window

    left, right = _window(kwargs.pop("window_size", (-1, -1)))
    causal = bool(kwargs.pop("causal", False))
    return _backend.describe_forward_choice(
        q, k, v, cu_seqlens_q=kwargs.pop("cu_seqlens_q", None), cu_seqlens_k=kwargs.pop("cu_seqlens_k", None),
        max_seqlen_q=kwargs.pop("max_seqlen_q", 0), max_seqlen_k=kwargs.pop("max_seqlen_k", 0),
        alibi_slopes=kwargs.pop("alibi_slopes", None),
        softmax_scale=_scale(kwargs.pop("softmax_scale", None), q.shape[-1]), causal=causal, window_left=left,
        window_right=0 if causal else right, softcap=kwargs.pop("softcap", 0.0),
        dropout_p=kwargs.pop("dropout_p", 0.0), seed=0, offset=0, deterministic=False)


__all__ = [
    "attention",
    "build_info",
    "describe_forward_choice",
    "dropout_mask",
    "flash_attn_func",
    "flash_attn_kvpacked_func",
    "flash_attn_qkvpacked_func",
    "flash_attn_varlen_func",
    "flash_attn_varlen_kvpacked_func",
    "flash_attn_varlen_qkvpacked_func",
    "flash_attn_with_kvcache",
    "scaled_dot_product_attention",
]
