"""flash_attn_varlen_func(..., block_table=...) on CPU tensors: packed varlen queries over a paged KV
cache, against the float64 reference built by gathering each sequence's pages, and against the
contiguous varlen call on the same keys. Forward only (as in flash-attn)."""
import pytest
import torch

import ioattn
from conftest import DTYPES
from reference import attention_ref, check


def _cu(lens, device="cpu"):
    return torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32, device=device)


def paged_pool(k, v, lens_k, page, spare_pages=3, spare_cols=1):
    """Scatters packed k/v (Tk, Hk, D) into a shuffled page pool (num_pages, page, Hk, D) with
    spare_pages pages no sequence uses (random contents), and returns (k_pool, v_pool, block_table).
    The table has spare_cols columns beyond the longest sequence's pages; entries a sequence does
    not use are -1 (flash-attn leaves them undefined, and so may the caller)."""
    pages = [(n + page - 1) // page for n in lens_k]
    cols = max(pages) + spare_cols
    num = sum(pages) + spare_pages
    perm = torch.randperm(num, device=k.device).to(torch.int32)
    k_pool = torch.randn(num, page, *k.shape[1:], device=k.device).to(k.dtype)
    v_pool = torch.randn(num, page, *v.shape[1:], device=v.device).to(v.dtype)
    table = torch.full((len(lens_k), cols), -1, dtype=torch.int32, device=k.device)
    start, used = 0, 0
    for b, n in enumerate(lens_k):
        for j in range(pages[b]):
            p = int(perm[used])
            used += 1
            table[b, j] = p
            rows = slice(start + j * page, start + min((j + 1) * page, n))
            cnt = rows.stop - rows.start
            k_pool[p, :cnt] = k[rows]
            v_pool[p, :cnt] = v[rows]
        start += n
    return k_pool, v_pool, table


def gather_pages(pool, table, b, n):
    """The first n key rows of sequence b, read through the block table (the reference's view)."""
    page = pool.shape[1]
    idx = torch.arange(n, device=pool.device)
    return pool[table[b, idx // page].long(), idx % page]


def check_against_reference(out, lse, q, k_pool, v_pool, table, lens_q, lens_k, dtype, **mask):
    cq = _cu(lens_q).tolist()
    for b in range(len(lens_q)):
        if lens_q[b] == 0:
            continue
        qb = q[cq[b]: cq[b + 1]].unsqueeze(0).cpu()
        kb = gather_pages(k_pool, table, b, lens_k[b]).unsqueeze(0).cpu()
        vb = gather_pages(v_pool, table, b, lens_k[b]).unsqueeze(0).cpu()
        r64, lse64 = attention_ref(qb, kb, vb, **mask)
        std, _ = attention_ref(qb, kb, vb, dtype=dtype, **mask)
        check(f"out[{b}]", out[cq[b]: cq[b + 1]].unsqueeze(0).cpu(), r64, std, dtype)
        got_lse = lse[:, cq[b]: cq[b + 1]].cpu().double()
        ref_lse = lse64[0]
        finite = torch.isfinite(ref_lse)
        assert torch.equal(torch.isfinite(got_lse), finite), f"lse[{b}]: -inf rows differ from the reference"
        if finite.any():
            assert (got_lse[finite] - ref_lse[finite]).abs().max().item() <= 1e-3, f"lse[{b}]"


MASKS = [dict(), dict(causal=True), dict(window=(5, 3)), dict(causal=True, softcap=4.0)]
MASK_IDS = ["full", "causal", "window", "causal_softcap"]


def _call(q, k_pool, v_pool, table, lens_q, lens_k, mask, **kw):
    return ioattn.flash_attn_varlen_func(
        q, k_pool, v_pool, _cu(lens_q, q.device), _cu(lens_k, q.device), max(lens_q), max(lens_k),
        causal=mask.get("causal", False), window_size=mask.get("window", (-1, -1)), softcap=mask.get("softcap", 0.0),
        block_table=table, **kw)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("mask", MASKS, ids=MASK_IDS)
@pytest.mark.parametrize("page", [16, 32])
def test_paged_varlen_matches_reference(dtype, mask, page):
    # An empty query sequence, Sq < Sk and Sq == Sk, key counts on and off page boundaries, a
    # sequence with no keys, and GQA (4 query heads over 2 kv heads).
    lens_q, lens_k = [5, 0, 17, 9, 3], [7, 3, 17, 64, 0]
    hq, hk, d = 4, 2, 32
    q = torch.randn(sum(lens_q), hq, d).to(dtype)
    k = torch.randn(sum(lens_k), hk, d).to(dtype)
    v = torch.randn(sum(lens_k), hk, d).to(dtype)
    kp, vp, table = paged_pool(k, v, lens_k, page)
    out, lse, s = _call(q, kp, vp, table, lens_q, lens_k, mask, return_attn_probs=True)
    assert out.shape == (sum(lens_q), hq, d) and out.dtype == dtype
    assert lse.shape == (hq, sum(lens_q)) and lse.dtype == torch.float32 and s.numel() == 0
    check_against_reference(out, lse, q, kp, vp, table, lens_q, lens_k, dtype, **mask)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("mask", MASKS, ids=MASK_IDS)
def test_paged_equals_contiguous_varlen(dtype, mask):
    lens_q, lens_k = [1, 12, 6], [40, 12, 33]
    hq, hk, d = 6, 3, 64
    q = torch.randn(sum(lens_q), hq, d).to(dtype)
    k = torch.randn(sum(lens_k), hk, d).to(dtype)
    v = torch.randn(sum(lens_k), hk, d).to(dtype)
    kp, vp, table = paged_pool(k, v, lens_k, 16)
    out_p = _call(q, kp, vp, table, lens_q, lens_k, mask)
    out_c = ioattn.flash_attn_varlen_func(q, k, v, _cu(lens_q), _cu(lens_k), max(lens_q), max(lens_k),
                                          causal=mask.get("causal", False), window_size=mask.get("window", (-1, -1)),
                                          softcap=mask.get("softcap", 0.0))
    # Two different kernels (split-KV decode vs. tiled forward), both fp32 inside: equal up to the
    # rounding of the output dtype.
    atol = {torch.float32: 1e-5, torch.bfloat16: 1.6e-2, torch.float16: 2e-3}[dtype]
    torch.testing.assert_close(out_p, out_c, rtol=0, atol=atol)


def test_paged_gqa_alibi_and_scale():
    lens_q, lens_k = [4, 2], [20, 50]
    hq, hk, d = 8, 2, 16
    q = torch.randn(sum(lens_q), hq, d)
    k, v = torch.randn(sum(lens_k), hk, d), torch.randn(sum(lens_k), hk, d)
    kp, vp, table = paged_pool(k, v, lens_k, 16)
    slopes = torch.rand(hq) * 0.5
    out, lse, _ = ioattn.flash_attn_varlen_func(q, kp, vp, _cu(lens_q), _cu(lens_k), 4, 50, softmax_scale=0.3,
                                                causal=True, alibi_slopes=slopes, block_table=table,
                                                return_attn_probs=True)
    check_against_reference(out, lse, q, kp, vp, table, lens_q, lens_k, torch.float32, causal=True,
                            alibi=slopes, scale=0.3)


def test_paged_forward_runs_with_grad_but_backward_raises():
    # flash-attn runs the forward of a paged varlen call on inputs that require grad and has no
    # backward for it; ioattn does the same and names the reason.
    lens = [5, 9]
    q = torch.randn(sum(lens), 2, 16, requires_grad=True)
    k, v = torch.randn(sum(lens), 2, 16), torch.randn(sum(lens), 2, 16)
    kp, vp, table = paged_pool(k, v, lens, 16)
    kp.requires_grad_()
    out = _call(q, kp, vp, table, lens, lens, dict(causal=True))
    assert out.requires_grad
    with pytest.raises(NotImplementedError, match="block_table"):
        out.sum().backward()
    with torch.no_grad():
        assert not _call(q, kp, vp, table, lens, lens, dict()).requires_grad


def test_paged_bad_block_table_raises():
    lens = [20, 7]
    q = torch.randn(sum(lens), 2, 16)
    k, v = torch.randn(sum(lens), 2, 16), torch.randn(sum(lens), 2, 16)
    kp, vp, table = paged_pool(k, v, lens, 16, spare_cols=0)
    cq = _cu(lens)

    def run(tab, lens_k=lens):
        return ioattn.flash_attn_varlen_func(q, kp, vp, cq, _cu(lens_k), max(lens), max(lens_k), block_table=tab)

    run(table)  # the valid table works
    for bad_page in (kp.shape[0], -1, 1 << 30):
        bad = table.clone()
        bad[0, 1] = bad_page  # a page sequence 0 uses
        with pytest.raises(ValueError, match="block_table"):
            run(bad)
    with pytest.raises(ValueError, match="block_table"):
        run(table[:1])  # one row for two sequences
    with pytest.raises(ValueError, match="block_table"):
        run(table[:, 0])  # 1-D
    with pytest.raises((TypeError, ValueError), match="block_table"):
        run(table.to(torch.int64))
    with pytest.raises(ValueError):
        run(table, lens_k=[33, 7])  # more keys than the table's pages hold (2 x 16)
    bad_pages = kp[:, :15]  # page size not a multiple of 16
    with pytest.raises(ValueError, match="page"):
        ioattn.flash_attn_varlen_func(q, bad_pages, bad_pages, cq, cq, 20, 20, block_table=table)
    with pytest.raises(NotImplementedError, match="dropout"):
        ioattn.flash_attn_varlen_func(q, kp, vp, cq, cq, 20, 20, dropout_p=0.1, block_table=table)


def test_paged_opcheck_and_compile():
    lens_q, lens_k = [3, 6], [19, 40]
    q = torch.randn(sum(lens_q), 4, 16)
    k, v = torch.randn(sum(lens_k), 2, 16), torch.randn(sum(lens_k), 2, 16)
    kp, vp, table = paged_pool(k, v, lens_k, 16)
    table.clamp_(min=0)  # opcheck reruns the op with perturbed-free but copied inputs; keep every entry valid
    args = (q, kp, vp, table, _cu(lens_q), _cu(lens_k), 6, 40, None, 0.25, True, -1, -1, 0.0)
    torch.library.opcheck(torch.ops.ioattn.fwd_paged.default, args,
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))

    torch._dynamo.reset()

    def step(x, kp, vp, table, cq, ck):
        o = ioattn.flash_attn_varlen_func(x * 2, kp, vp, cq, ck, 6, 40, causal=True, block_table=table)
        return o.float().sum(-1)

    compiled = torch.compile(step, fullgraph=True, backend="inductor")
    got = compiled(q, kp, vp, table, _cu(lens_q), _cu(lens_k))
    want = step(q, kp, vp, table, _cu(lens_q), _cu(lens_k))
    torch.testing.assert_close(got, want)
