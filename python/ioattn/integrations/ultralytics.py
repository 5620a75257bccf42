"""Ultralytics' YOLO12 area attention (AAttn) on ioattn.

    import ioattn.integrations.ultralytics as yolo_ioattn
    yolo_ioattn.install()                # before or after `import ultralytics`; every AAttn, built or not
    model = YOLO("yolo12n.yaml")         # its area attention now runs on ioattn.flash_attn_func

PyPI's `ultralytics` (8.3.78 onwards, the releases with YOLO12) never imports flash_attn: AAttn.forward
computes softmax(q^T k / sqrt(d)) with two matmuls, an (N, N) matrix per head and area kept for the
backward. Only the YOLOv12 authors' own repository imports flash_attn (which
ioattn.integrations.flash_attn_shim serves). install() replaces AAttn.forward by one that computes the
same function (the same convolutions, area split, heads and scale) through ioattn.flash_attn_func, on
(B * area, N / area, heads, head_dim) strided views of the qkv convolution's output (transposed to
tokens-major once): no (N, N) matrix, and no separate copies of q, k, v.

It takes the ioattn path wherever ioattn serves the attention's dtype: CPU tensors in float32, float16
or bfloat16, and CUDA tensors in float16 or bfloat16 (Ultralytics' AMP training and half=True
inference). It keeps Ultralytics' own forward where ioattn cannot or should not serve: float32 on
CUDA (ioattn's CUDA kernels are half precision, as flash-attn's are, and rounding a float32 model's
attention to half would change its results), other devices, and tracing or ONNX export (an exported
graph must not carry ioattn's custom operator).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from ..flash_attn_interface import flash_attn_func

_SERVED = {"cpu": (torch.float32, torch.float16, torch.bfloat16), "cuda": (torch.float16, torch.bfloat16)}
_original: Optional[Callable] = None


def _aattn_class():
    try:
        from ultralytics.nn.modules.block import AAttn
    except ImportError as e:
        raise ImportError("ioattn.integrations.ultralytics needs the `ultralytics` package (pip install ultralytics)") from e
    return AAttn


def served(x: torch.Tensor) -> bool:
    """Whether AAttn's attention on the feature map x runs on ioattn (see the module docstring)."""
    if torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export():
        return False
    device = x.device.type
    if device not in _SERVED:
        return False
    # The qkv convolution's output dtype: the autocast dtype under autocast (AMP training), else x's.
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
    return dtype in _SERVED[device]


def _forward(self, x: torch.Tensor) -> torch.Tensor:
    """AAttn.forward with the attention on ioattn; Ultralytics' own forward where ioattn does not serve."""
    if not served(x):
        return _original(self, x)
    b, _, h, w = x.shape
    heads, hd = self.num_heads, self.head_dim
    c = heads * hd
    # (B, N, 3C), token t of the map in row t: one copy out of the convolution's (B, 3C, N), after which
    # q, k, v are views with unit head-dim stride (what the kernels read; flash-attn asks the same). With
    # areas, area a is tokens [a*N/area, (a+1)*N/area), folded into the batch as AAttn does; channels are
    # (head, [q | k | v], head_dim), as AAttn's view splits them.
    qkv = self.qkv(x).flatten(2).transpose(1, 2).contiguous()
    if self.area > 1:
        qkv = qkv.reshape(b * self.area, h * w // self.area, 3 * c)
    q, k, v = qkv.unflatten(2, (heads, 3 * hd)).split(hd, dim=3)  # (B', N', heads, hd) views, flash-attn's layout
    out = flash_attn_func(q, k, v)  # softmax scale head_dim ** -0.5, AAttn's
    out = out.reshape(b, h, w, c).permute(0, 3, 1, 2).contiguous()
    v = v.reshape(b, h, w, c).permute(0, 3, 1, 2).contiguous()
    return self.proj(out + self.pe(v))


def install() -> None:
    """Route every AAttn's attention (existing and future instances) to ioattn (idempotent)."""
    global _original
    cls = _aattn_class()
    if cls.forward is _forward:
        return
    _original = cls.forward
    cls.forward = _forward


def uninstall() -> None:
    """Give AAttn back Ultralytics' own forward."""
    global _original
    cls = _aattn_class()
    if cls.forward is _forward:
        cls.forward = _original
    _original = None


def is_installed() -> bool:
    try:
        return _aattn_class().forward is _forward
    except ImportError:
        return False
