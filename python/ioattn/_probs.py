"""Dense attention probabilities and the dropout mask, in PyTorch: what flash-attn returns as
S_dmask with return_attn_probs=True (for tests only; O(N^2) memory), and `dropout_mask()`, the keep
mask the kernels apply, regenerated from the Philox 4x32-10 definition in src/core/philox.h.

Philox on int64 tensors: every word is a uint32 stored in an int64, and the 32x32 -> 64-bit
products are split in 16-bit halves so no intermediate exceeds 2^49 (int64 has no unsigned type).
"""
from __future__ import annotations

import struct
from typing import Optional

import torch
from torch import Tensor

_M0, _M1 = 0xD2511F53, 0xCD9E8D57  # round multipliers
_W0, _W1 = 0x9E3779B9, 0xBB67AE85  # Weyl key increments
_U32 = 0xFFFFFFFF


def _mulhilo(m: int, c: Tensor):
    a = m * (c & 0xFFFF)             # < 2^48
    b = m * (c >> 16)                # < 2^48
    t = a + ((b & 0xFFFF) << 16)     # < 2^49
    return ((t >> 32) + (b >> 16)) & _U32, t & _U32


def _philox(c0: Tensor, c1: Tensor, c2: Tensor, c3: Tensor, k0: int, k1: int):
    for _ in range(10):
        hi0, lo0 = _mulhilo(_M0, c0)
        hi1, lo1 = _mulhilo(_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + _W0) & _U32
        k1 = (k1 + _W1) & _U32
    return c0, c1, c2, c3


def _float32(x: float) -> float:
    return struct.unpack("f", struct.pack("f", x))[0]


def dropout_threshold(p: float) -> int:
    """floor(p * 2^32) with p rounded to float32 first, as the kernels receive it."""
    t = _float32(p) * 4294967296.0
    return 0xFFFFFFFF if t >= 4294967295.0 else int(t)


def dropout_mask(seed: int, offset: int, dropout_p: float, batch_index: int, heads_q: int, seqlen_q: int,
                 seqlen_k: int, device="cpu") -> Tensor:
    """Keep mask (heads_q, seqlen_q, seqlen_k), bool, of sequence `batch_index`: element (b, h, i, j)
    is kept iff Philox word j % 4 of counter (j / 4, i, b * heads_q + h, offset_lo) under key
    (seed_lo, seed_hi ^ offset_hi) is >= floor(p * 2^32)."""
    seed &= 0xFFFFFFFFFFFFFFFF
    offset &= 0xFFFFFFFFFFFFFFFF
    j4 = (seqlen_k + 3) // 4
    shape = (heads_q, seqlen_q, j4)
    c0 = torch.arange(j4, dtype=torch.int64, device=device).view(1, 1, j4).expand(shape)
    c1 = torch.arange(seqlen_q, dtype=torch.int64, device=device).view(1, seqlen_q, 1).expand(shape)
    c2 = (batch_index * heads_q + torch.arange(heads_q, dtype=torch.int64, device=device)).view(heads_q, 1, 1)
    c2 = c2.expand(shape) & _U32
    c3 = torch.full(shape, offset & _U32, dtype=torch.int64, device=device)
    words = _philox(c0, c1, c2, c3, seed & _U32, (seed >> 32) ^ (offset >> 32))
    w = torch.stack(words, dim=-1).reshape(heads_q, seqlen_q, 4 * j4)[..., :seqlen_k]
    return w >= dropout_threshold(dropout_p)


def _probs_one(q: Tensor, k: Tensor, lse: Tensor, scale: float, causal: bool, window_size, softcap: float,
               slopes: Optional[Tensor]) -> Tensor:
    """P (Hq, Sq, Sk) in float32 for one sequence: q (Sq, Hq, D), k (Sk, Hk, D), lse (Hq, Sq)."""
    sq, hq = q.shape[0], q.shape[1]
    sk, hk = k.shape[0], k.shape[1]
    kk = k.float().repeat_interleave(hq // hk, dim=1)
    s = torch.einsum("ihd,jhd->hij", q.float(), kk) * scale
    if softcap > 0:
        s = softcap * torch.tanh(s / softcap)
    i = torch.arange(sq, device=q.device).view(sq, 1)
    j = torch.arange(sk, device=q.device).view(1, sk)
    diag = i + sk - sq  # the bottom-right aligned diagonal
    if slopes is not None:
        s = s - slopes.float().view(hq, 1, 1) * (diag - j).abs()
    left, right = window_size
    if causal:
        right = 0
    allowed = torch.ones(sq, sk, dtype=torch.bool, device=q.device)
    if left >= 0:
        allowed &= j >= diag - left
    if right >= 0:
        allowed &= j <= diag + right
    p = torch.exp(s - lse.view(hq, sq, 1))
    return torch.where(allowed & torch.isfinite(lse).view(hq, sq, 1), p, torch.zeros_like(p))


def attn_probs_with_dropout(q, k, lse, rng_state, dropout_p, scale, causal, window_size, softcap, alibi_slopes,
                            cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=0, max_seqlen_k=0) -> Tensor:
    """flash-attn's S_dmask: P (B, Hq, Sq, Sk) in q's dtype, dropped entries negated."""
    seed, offset = (int(x) for x in rng_state.tolist())
    hq = q.shape[-2]
    if cu_seqlens_q is None:
        batch, sq, sk = q.shape[0], q.shape[1], k.shape[1]
        spans = [(b, b, 0, sq, b, 0, sk) for b in range(batch)]
        res = torch.zeros(batch, hq, sq, sk, dtype=torch.float32, device=q.device)
    else:
        cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
        batch = len(cq) - 1
        spans = [(b, None, cq[b], cq[b + 1], None, ck[b], ck[b + 1]) for b in range(batch)]
        res = torch.zeros(batch, hq, max_seqlen_q, max_seqlen_k, dtype=torch.float32, device=q.device)
    for b, qb, q0, q1, kb, k0, k1 in spans:
        qs = q[qb, q0:q1] if qb is not None else q[q0:q1]
        ks = k[kb, k0:k1] if kb is not None else k[k0:k1]
        ls = lse[b] if cu_seqlens_q is None else lse[:, q0:q1]
        slopes = None
        if alibi_slopes is not None:
            slopes = alibi_slopes if alibi_slopes.dim() == 1 else alibi_slopes[b]
        p = _probs_one(qs, ks, ls, scale, causal, window_size, softcap, slopes)
        keep = dropout_mask(seed, offset, dropout_p, b, hq, q1 - q0, k1 - k0, device=q.device)
        res[b, :, : q1 - q0, : k1 - k0] = torch.where(keep, p, -p)
    return res.to(q.dtype)
