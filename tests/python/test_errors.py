"""Bad inputs raise ValueError / TypeError / RuntimeError naming the argument; nothing crashes."""
import pytest
import torch

import ioattn
from helpers import randn


def q_k_v(b=1, sq=8, sk=8, hq=2, hk=2, d=16, dtype=torch.float32):
    return (randn(b, sq, hq, d, dtype=dtype, requires_grad=False), randn(b, sk, hk, d, dtype=dtype, requires_grad=False),
            randn(b, sk, hk, d, dtype=dtype, requires_grad=False))


CASES = [
    # (description, call, exception, message regex)
    ("head dim mismatch", lambda: ioattn.flash_attn_func(randn(1, 8, 2, 16), randn(1, 8, 2, 32), randn(1, 8, 2, 32)),
     ValueError, r"^k: expected head_dim 16 like q, got 32"),
    ("heads not dividing", lambda: ioattn.flash_attn_func(*q_k_v(hq=3, hk=2)), ValueError, r"^k: expected heads"),
    ("batch mismatch", lambda: ioattn.flash_attn_func(randn(2, 8, 2, 16), *q_k_v()[1:]), ValueError,
     r"^k: expected batch 2 like q"),
    ("v seqlen", lambda: ioattn.flash_attn_func(*q_k_v()[:2], randn(1, 9, 2, 16)), ValueError, r"^v: expected seqlen_k"),
    ("float64", lambda: ioattn.flash_attn_func(*(t.double() for t in q_k_v())), TypeError, r"^q: expected dtype"),
    ("int tensor", lambda: ioattn.flash_attn_func(torch.ones(1, 8, 2, 16, dtype=torch.int64), *q_k_v()[1:]), TypeError,
     r"^q: expected dtype"),
    ("mixed dtypes", lambda: ioattn.flash_attn_func(q_k_v()[0], *(t.half() for t in q_k_v()[1:])), TypeError,
     r"^k: expected dtype fp32"),
    ("not a tensor", lambda: ioattn.flash_attn_func([1.0], *q_k_v()[1:]), TypeError, r"^q: expected a torch.Tensor"),
    ("wrong rank", lambda: ioattn.flash_attn_func(randn(8, 2, 16), *q_k_v()[1:]), ValueError, r"^q: expected 4 dim"),
    ("dropout 1", lambda: ioattn.flash_attn_func(*q_k_v(), dropout_p=1.0), ValueError, r"^dropout_p"),
    ("negative scale", lambda: ioattn.flash_attn_func(*q_k_v(), softmax_scale=-1.0), ValueError, r"^softmax_scale"),
    ("bad window", lambda: ioattn.flash_attn_func(*q_k_v(), window_size=(-3, 0)), ValueError, r"^window_left"),
    ("window not a pair", lambda: ioattn.flash_attn_func(*q_k_v(), window_size=5), ValueError, r"^window_size"),
    ("negative softcap", lambda: ioattn.flash_attn_func(*q_k_v(), softcap=-1.0), ValueError, r"^softcap"),
    ("alibi heads", lambda: ioattn.flash_attn_func(*q_k_v(), alibi_slopes=torch.ones(3)), ValueError,
     r"^alibi_slopes: expected heads 2"),
    ("alibi dtype", lambda: ioattn.flash_attn_func(*q_k_v(), alibi_slopes=torch.ones(2, dtype=torch.float16)),
     TypeError, r"^alibi_slopes: expected dtype fp32"),
    ("cu_seqlens not monotone", lambda: ioattn.flash_attn_varlen_func(
        randn(8, 2, 16), randn(8, 2, 16), randn(8, 2, 16), torch.tensor([0, 5, 3], dtype=torch.int32),
        torch.tensor([0, 4, 8], dtype=torch.int32), 5, 4), ValueError, r"^cu_seqlens_q: expected non-decreasing"),
    ("cu_seqlens past the end", lambda: ioattn.flash_attn_varlen_func(
        randn(8, 2, 16), randn(8, 2, 16), randn(8, 2, 16), torch.tensor([0, 4, 9], dtype=torch.int32),
        torch.tensor([0, 4, 8], dtype=torch.int32), 5, 4), ValueError, r"^cu_seqlens_q: last entry 9 exceeds"),
    ("max_seqlen too small", lambda: ioattn.flash_attn_varlen_func(
        randn(8, 2, 16), randn(8, 2, 16), randn(8, 2, 16), torch.tensor([0, 4, 8], dtype=torch.int32),
        torch.tensor([0, 4, 8], dtype=torch.int32), 3, 4), ValueError, r"^max_seqlen_q"),
    ("cu_seqlens dtype", lambda: ioattn.flash_attn_varlen_func(
        randn(8, 2, 16), randn(8, 2, 16), randn(8, 2, 16), torch.tensor([0, 4, 8]), torch.tensor([0, 4, 8]), 4, 4),
     TypeError, r"^cu_seqlens_q: expected dtype int32"),
    ("packed qkv shape", lambda: ioattn.flash_attn_qkvpacked_func(randn(1, 8, 2, 2, 16)), ValueError,
     r"^qkv: expected size 3 in dimension 2"),
]


@pytest.mark.parametrize("call,exc,msg", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_inputs_raise(call, exc, msg):
    with pytest.raises(exc, match=msg):
        call()


def test_non_contiguous_last_dim_is_accepted():
    q, k, v = q_k_v(d=16)
    qt = torch.randn(1, 8, 2, 32)[..., ::2]
    assert qt.stride(-1) == 2
    out = ioattn.flash_attn_func(qt, k, v)
    ref = ioattn.flash_attn_func(qt.contiguous(), k, v)
    assert torch.equal(out, ref)


def test_empty_batch_and_zero_length_keys():
    q, k, v = q_k_v(b=0)
    assert ioattn.flash_attn_func(q, k, v).shape == (0, 8, 2, 16)
    q, k, v = q_k_v(sk=0)
    out, lse, _ = ioattn.flash_attn_func(q, k, v, return_attn_probs=True)
    assert torch.all(out == 0) and torch.all(torch.isneginf(lse))
