"""flash_attn_with_kvcache on CPU tensors: in-place append, contiguous and paged caches, rotary,
cache_batch_idx / cache_leftpad, against the float64 reference."""
import pytest
import torch

import ioattn
from conftest import DTYPES
from reference import attention_ref, check


def _rotate(x, cos, sin, pos, interleaved):
    """x (S, H, D) rotated at positions pos (S,) with cos/sin (seqlen_ro, rd / 2)."""
    rd = cos.shape[1] * 2
    c, s = cos[pos].unsqueeze(1).double(), sin[pos].unsqueeze(1).double()  # (S, 1, rd/2)
    x = x.double().clone()
    if interleaved:
        x0, x1 = x[..., 0:rd:2].clone(), x[..., 1:rd:2].clone()
        x[..., 0:rd:2], x[..., 1:rd:2] = x0 * c - x1 * s, x0 * s + x1 * c
    else:
        h = rd // 2
        x0, x1 = x[..., :h].clone(), x[..., h:rd].clone()
        x[..., :h], x[..., h:rd] = x0 * c - x1 * s, x0 * s + x1 * c
    return x


def _expected(q, kc0, vc0, kn, vn, lens, dtype, *, causal, window=(-1, -1), rotary=None, batch_idx=None,
              leftpad=None):
    """Per sequence: the cache after the append, and (ref64, std) outputs (1, Sq, Hq, Dv)."""
    res = []
    for b in range(q.shape[0]):
        row = b if batch_idx is None else int(batch_idx[b])
        n0 = int(lens[b])
        k_rows, v_rows = kc0[row].double().clone(), vc0[row].double().clone()
        qb = q[b].double()
        if kn is not None:
            knb = kn[b].double()
            if rotary is not None:
                cos, sin, inter = rotary
                knb = _rotate(kn[b], cos, sin, torch.arange(n0, n0 + kn.shape[1]), inter)
            k_rows[n0: n0 + kn.shape[1]] = knb.to(kc0.dtype).double()
            v_rows[n0: n0 + vn.shape[1]] = vn[b].double()
            n0 += kn.shape[1]
        if rotary is not None:
            cos, sin, inter = rotary
            base = int(lens[b])
            pos = (base + torch.arange(q.shape[1])) if (causal or window != (-1, -1)) else torch.full((q.shape[1],), base)
            qb = _rotate(q[b], cos, sin, pos, inter).to(q.dtype).double()
        lo = 0 if leftpad is None else int(leftpad[b])
        k_vis, v_vis = k_rows[lo:n0].unsqueeze(0), v_rows[lo:n0].unsqueeze(0)
        r64, _ = attention_ref(qb.unsqueeze(0), k_vis, v_vis, causal=causal, window=window)
        std, _ = attention_ref(qb.to(dtype).unsqueeze(0), k_vis.to(dtype), v_vis.to(dtype), causal=causal,
                               window=window, dtype=dtype)
        res.append((row, k_rows, v_rows, n0, r64, std))
    return res


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("snew,sq,causal", [(0, 1, True), (1, 1, True), (3, 3, True), (4, 2, False)])
def test_contiguous_cache_append(dtype, snew, sq, causal):
    b, smax, hq, hk, d = 3, 48, 4, 2, 32
    kc = torch.randn(b, smax, hk, d).to(dtype)
    vc = torch.randn(b, smax, hk, d).to(dtype)
    q = torch.randn(b, sq, hq, d).to(dtype)
    kn = torch.randn(b, snew, hk, d).to(dtype) if snew else None
    vn = torch.randn(b, snew, hk, d).to(dtype) if snew else None
    lens = torch.tensor([0, 9, 40], dtype=torch.int32)
    kc0, vc0 = kc.clone(), vc.clone()
    out = ioattn.flash_attn_with_kvcache(q, kc, vc, kn, vn, cache_seqlens=lens, causal=causal)
    for bi, (row, k_rows, v_rows, n, r64, std) in enumerate(_expected(q, kc0, vc0, kn, vn, lens, dtype,
                                                                      causal=causal)):
        assert torch.equal(kc[row].double(), k_rows) and torch.equal(vc[row].double(), v_rows), "cache append"
        check(f"out[{bi}]", out[bi: bi + 1], r64, std, dtype)


def test_int_cache_seqlens_window_and_lse():
    kc, vc = torch.randn(2, 32, 2, 16), torch.randn(2, 32, 2, 16)
    q = torch.randn(2, 1, 2, 16)
    out, lse = ioattn.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=20, window_size=(6, 0),
                                              return_softmax_lse=True)
    r64, lse64 = attention_ref(q, kc[:, :20], vc[:, :20], window=(6, 0))
    std, _ = attention_ref(q, kc[:, :20], vc[:, :20], window=(6, 0), dtype=torch.float32)
    check("out", out, r64, std, torch.float32)
    assert (lse.double() - lse64).abs().max() < 1e-4


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_paged_cache_matches_contiguous(dtype):
    b, page, pages_per_seq, hk, hq, d = 2, 16, 4, 2, 4, 32
    smax = page * pages_per_seq
    kc = torch.randn(b, smax, hk, d).to(dtype)
    vc = torch.randn(b, smax, hk, d).to(dtype)
    perm = torch.randperm(b * pages_per_seq)
    block_table = perm.view(b, pages_per_seq).to(torch.int32)
    kp = torch.empty(b * pages_per_seq, page, hk, d, dtype=dtype)
    vp = torch.empty_like(kp)
    for s in range(b):
        for n in range(pages_per_seq):
            kp[block_table[s, n]] = kc[s, n * page: (n + 1) * page]
            vp[block_table[s, n]] = vc[s, n * page: (n + 1) * page]
    q = torch.randn(b, 2, hq, d).to(dtype)
    kn, vn = torch.randn(b, 2, hk, d).to(dtype), torch.randn(b, 2, hk, d).to(dtype)
    lens = torch.tensor([15, 33], dtype=torch.int32)
    out_c = ioattn.flash_attn_with_kvcache(q, kc, vc, kn, vn, cache_seqlens=lens, causal=True)
    out_p = ioattn.flash_attn_with_kvcache(q, kp, vp, kn, vn, cache_seqlens=lens, block_table=block_table,
                                           causal=True)
    torch.testing.assert_close(out_p, out_c, rtol=0, atol=1e-5 if dtype == torch.float32 else 1e-2)
    for s in range(b):  # the append went through the block table
        for j, pos in enumerate(range(int(lens[s]), int(lens[s]) + 2)):
            assert torch.equal(kp[block_table[s, pos // page], pos % page], kn[s, j])


@pytest.mark.parametrize("interleaved", [True, False])
@pytest.mark.parametrize("causal", [True, False])
def test_rotary(interleaved, causal):
    b, smax, h, d, rd = 2, 40, 2, 32, 16
    kc, vc = torch.randn(b, smax, h, d), torch.randn(b, smax, h, d)
    q, kn, vn = torch.randn(b, 2, h, d), torch.randn(b, 2, h, d), torch.randn(b, 2, h, d)
    theta = torch.arange(smax).view(-1, 1) * (10000 ** (-torch.arange(rd // 2) / (rd // 2))).view(1, -1)
    cos, sin = theta.cos(), theta.sin()
    lens = torch.tensor([3, 20], dtype=torch.int32)
    kc0, vc0 = kc.clone(), vc.clone()
    out = ioattn.flash_attn_with_kvcache(q, kc, vc, kn, vn, rotary_cos=cos, rotary_sin=sin, cache_seqlens=lens,
                                         causal=causal, rotary_interleaved=interleaved)
    exp = _expected(q, kc0, vc0, kn, vn, lens, torch.float32, causal=causal, rotary=(cos, sin, interleaved))
    for bi, (row, k_rows, _, n, r64, std) in enumerate(exp):
        assert (kc[row].double() - k_rows).abs().max() < 1e-5, "rotated keys written to the cache"
        check(f"out[{bi}]", out[bi: bi + 1], r64, std, torch.float32)


def test_batch_idx_and_leftpad():
    kc, vc = torch.randn(4, 32, 2, 16), torch.randn(4, 32, 2, 16)
    q, kn, vn = torch.randn(2, 1, 2, 16), torch.randn(2, 1, 2, 16), torch.randn(2, 1, 2, 16)
    lens = torch.tensor([10, 25], dtype=torch.int32)
    idx = torch.tensor([3, 1], dtype=torch.int32)
    leftpad = torch.tensor([4, 0], dtype=torch.int32)
    kc0, vc0 = kc.clone(), vc.clone()
    out = ioattn.flash_attn_with_kvcache(q, kc, vc, kn, vn, cache_seqlens=lens, cache_batch_idx=idx,
                                         cache_leftpad=leftpad, causal=True)
    exp = _expected(q, kc0, vc0, kn, vn, lens, torch.float32, causal=True, batch_idx=idx, leftpad=leftpad)
    for bi, (row, k_rows, _, n, r64, std) in enumerate(exp):
        assert torch.equal(kc[row].double(), k_rows)
        check(f"out[{bi}]", out[bi: bi + 1], r64, std, torch.float32)
    assert torch.equal(kc[0], kc0[0]) and torch.equal(kc[2], kc0[2]), "rows not in cache_batch_idx untouched"


def test_kvcache_errors():
    kc, vc = torch.randn(2, 8, 2, 16), torch.randn(2, 8, 2, 16)
    q, kn = torch.randn(2, 1, 2, 16), torch.randn(2, 2, 2, 16)
    with pytest.raises(ValueError, match="cache_seqlens"):
        ioattn.flash_attn_with_kvcache(q, kc, vc, kn, kn, cache_seqlens=torch.tensor([7, 1], dtype=torch.int32))
    with pytest.raises(ValueError, match="^k, v"):
        ioattn.flash_attn_with_kvcache(q, kc, vc, kn, None, cache_seqlens=1)
    with pytest.raises(TypeError, match="cache_seqlens: expected dtype int32"):
        ioattn.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=torch.tensor([1, 2]))
    assert torch.equal(kc, kc.clone())


def test_kvcache_compiles_fullgraph():
    torch._dynamo.reset()
    kc, vc = torch.randn(2, 16, 2, 16), torch.randn(2, 16, 2, 16)
    lens = torch.tensor([3, 7], dtype=torch.int32)

    def step(q, kn, vn, kc, vc):
        return ioattn.flash_attn_with_kvcache(q, kc, vc, kn, vn, cache_seqlens=lens, causal=True)

    q, kn, vn = torch.randn(2, 1, 2, 16), torch.randn(2, 1, 2, 16), torch.randn(2, 1, 2, 16)
    kc2, vc2 = kc.clone(), vc.clone()
    got = torch.compile(step, fullgraph=True, backend="aot_eager")(q, kn, vn, kc, vc)
    want = step(q, kn, vn, kc2, vc2)
    assert torch.equal(got, want) and torch.equal(kc, kc2) and torch.equal(vc, vc2)
