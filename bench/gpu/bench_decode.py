#!/usr/bin/env python3
"""Decoding benchmark (the issue "Decoding: KV cache, paged cache, rotary append and split-KV"),
by /work/shared/BENCHMARKS.md's protocol.

Shapes: one new query token per sequence (seqlen_q = 1), batch 1 ... 64, seqlen_k 1k ... 128k
(every sequence holds seqlen_k keys), 32 query heads over 8 kv heads (GQA), head dim 128, bf16.
In one run, on one device:

  ioattn      ioattn.flash_attn_with_kvcache (the Python package) over a contiguous cache
              (B, seqlen_k, 8, 128) and over paged caches of page size 16 and 256 (the contiguous
              cache's memory viewed as (B·seqlen_k / page, page, 8, 128) with a shuffled block table,
              so pages are visited out of order), cache_seqlens an int32 tensor; with
              --layouts ...,headmajor also a contiguous cache stored in the peers' memory order
              (B, 8, seqlen_k, 128) and passed as its (B, seqlen_k, 8, 128) strided view
  SDPA peers  torch.nn.functional.scaled_dot_product_attention pinned to each backend (FLASH_ATTENTION,
              CUDNN_ATTENTION, EFFICIENT_ATTENTION, MATH) on BHSD tensors q (B, 32, 1, 128),
              k / v (B, 8, seqlen_k, 128) with enable_gqa=True. A backend that rejects
              enable_gqa gets K/V expanded to 32 heads by repeat_interleave *outside* the timed
              region (the JSON says which, "gqa" per peer); SDPA has no paged cache, so the paged
              rows are compared against the peers' contiguous times on the same shape.
  copy        torch.clone of a 4 GiB tensor (--copy-gib): device-to-device copy bandwidth, bytes
              read + written, measured in the same run.

Metric: achieved K/V read bandwidth = bytes of K and V read (B·seqlen_k·8·128·2 bytes·2) / time,
and its fraction of the copy bandwidth (target >= 80% at seqlen_k >= 8k); time ratios
peer / ioattn (target > 1 for every peer at every shape).

Timing: every call is captured in a CUDA graph and the graph replay is timed (--eager times plain
calls instead: the Python and validation overhead of each call then counts, and ioattn's validation
of device-resident lengths copies them to the host), so what is compared is GPU time, as a decode
loop under CUDA graphs sees it. triton.testing.do_bench median (it empties the L2 cache before
every timed call, so small caches are read from HBM, not L2); without triton, CUDA events around
each call with the same L2 flush (a 256 MB write) before it, median of --repeat.

--device cpu runs tiny shapes on the CPU (a smoke test of the script; times by perf_counter median).

Writes bench/results/decode-<device>-<date>.json (device, date, versions, every measurement) and
prints a table between BENCH TABLE / END TABLE lines.
"""
import argparse
import datetime
import json
import os
import re
import statistics
import sys
import time
import warnings

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import ioattn

try:
    from triton.testing import do_bench
except ImportError:  # pragma: no cover - triton ships with CUDA builds of torch
    do_bench = None

HQ, HK, D = 32, 8, 128
DTYPE = torch.bfloat16
PEERS = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "math": SDPBackend.MATH,
}
LAYOUTS = ("contiguous", "paged16", "paged256")
EXTRA_LAYOUTS = ("headmajor",)  # --layouts only: a contiguous cache in the peers' BHSD memory order
FULL = dict(batches="1,4,16,64", seqlens="1024,4096,8192,16384,32768,65536,131072")
QUICK = dict(batches="1,8,64", seqlens="1024,8192,32768,131072")
CPU = dict(batches="1,2", seqlens="256,1024")


# ---- timing ------------------------------------------------------------------------------------

class Timer:
    def __init__(self, device, repeat, graphs):
        self.device, self.repeat, self.graphs = device, repeat, graphs and device == "cuda"
        self.flush = torch.empty(256 * 2**20 // 4, dtype=torch.int32, device=device) if device == "cuda" else None

    def ms(self, fn):
        """Median milliseconds of fn() (CUDA: of a graph replaying fn unless graphs are off)."""
        if self.device != "cuda":
            fn()
            ts = []
            for _ in range(self.repeat):
                t0 = time.perf_counter()
                fn()
                ts.append((time.perf_counter() - t0) * 1e3)
            return statistics.median(ts)
        run = fn
        if self.graphs:
            run = self._graph(fn)
        if do_bench is not None:
            return do_bench(run, return_mode="median")
        run()
        ts = []
        for _ in range(self.repeat):
            self.flush.zero_()  # what do_bench does: the L2 holds nothing of the inputs
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            run()
            e.record()
            torch.cuda.synchronize()
            ts.append(s.elapsed_time(e))
        return statistics.median(ts)

    @staticmethod
    def _graph(fn):
        # Warm-up on a side stream (lazy initialisation, workspace sizes), then capture.
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            fn()
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            fn()
        torch.cuda.synchronize()
        return g.replay


def copy_bandwidth(timer, device, gib):
    """Bytes read + written per second by torch.clone of a `gib` GiB tensor (not graphed: after the
    first call the caching allocator hands the same block back, and a 4 GiB copy dwarfs any launch
    overhead)."""
    n = int(gib * 2**30) // 2
    x = torch.empty(n, dtype=torch.bfloat16, device=device).random_()
    ms = Timer(device, timer.repeat, False).ms(lambda: x.clone())
    del x
    return 2.0 * n * 2 / (ms * 1e-3), ms


def launch_floor(timer, device):
    """Milliseconds of the smallest timed call: a one-element in-place add replayed from a graph and
    timed like every row (do_bench with its L2 flush). No decode call can measure below this, so
    it is part of each row's floor; it matters at batch 1 and short caches, where the K/V read
    itself takes a few microseconds."""
    x = torch.zeros(1, device=device)
    return timer.ms(lambda: x.add_(1.0))


def short_error(e):
    msg = str(e).strip().splitlines()
    return (msg[0] if msg else type(e).__name__)[:200]


def free_bytes(device):
    if device != "cuda":
        return 1 << 62
    torch.cuda.empty_cache()
    return torch.cuda.mem_get_info()[0]


# ---- the two sides -----------------------------------------------------------------------------

def time_ioattn(timer, q, k, v, b, sk, layout, device):
    """q (B, 1, Hq, D), k/v (B, Sk, Hk, D) contiguous caches. Returns (ms, out, same_keys): same_keys
    is False when a paged layout could not get a copy of the keys (see page_pool)."""
    lens = torch.full((b,), sk, dtype=torch.int32, device=device)
    same = True
    if layout == "contiguous":
        kc, vc, table = k, v, None
    elif layout == "headmajor":  # the peers' memory order (B, Hk, Sk, D), passed as a strided (B, Sk, Hk, D) view
        kc, vc, table = k.transpose(1, 2).contiguous().transpose(1, 2), v.transpose(1, 2).contiguous().transpose(1, 2), None
    else:
        page = int(layout[len("paged"):])
        g = torch.Generator(device="cpu").manual_seed(1)
        table = torch.randperm(b * sk // page, generator=g).to(torch.int32).view(b, sk // page).to(device)
        kc, vc, same = page_pool(k, v, table, page)

    def call():
        return ioattn.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=lens, block_table=table)

    out = call()
    ms = timer.ms(call)
    del kc, vc
    return ms, out, same


def page_pool(k, v, table, page):
    """Page pools where page table[s, n] holds keys [n·page, +page) of sequence s of k / v: the same
    keys as the contiguous cache, visited through a shuffled table. Without memory for the copies,
    the contiguous caches' own memory is the pool (same bytes and access pattern, other key order:
    the output is then not compared)."""
    pages = table.numel()
    need = 2 * k.numel() * k.element_size()
    if need > 0.8 * free_bytes(k.device.type):
        return k.view(pages, page, HK, D), v.view(pages, page, HK, D), False
    flat = table.view(-1).long()
    pools = []
    for x in (k, v):
        pool = torch.empty((pages, page, HK, D), dtype=x.dtype, device=x.device)
        pool.index_copy_(0, flat, x.reshape(pages, page, HK, D))
        pools.append(pool)
    return pools[0], pools[1], True


def time_peer(timer, name, q_bhsd, k_bhsd, v_bhsd, device):
    """Returns (dict with ms / gqa mode or error, out in BSHD or None)."""
    backend = PEERS[name]

    def sdpa(kk, vv, gqa):
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q_bhsd, kk, vv, enable_gqa=gqa)

    try:
        out = sdpa(k_bhsd, v_bhsd, True)
        return {"ms": timer.ms(lambda: sdpa(k_bhsd, v_bhsd, True)), "gqa": "enable_gqa"}, out.transpose(1, 2)
    except Exception as e:  # a backend without GQA support (or without this shape)
        first = short_error(e)
    rep = HQ // HK
    need = 2 * k_bhsd.numel() * k_bhsd.element_size() * rep
    if need > 0.8 * free_bytes(device):
        return {"error": f"enable_gqa: {first}; repeat_interleave would need {need / 2**30:.0f} GiB"}, None
    try:
        kr, vr = k_bhsd.repeat_interleave(rep, dim=1), v_bhsd.repeat_interleave(rep, dim=1)
        out = sdpa(kr, vr, False)
        res = {"ms": timer.ms(lambda: sdpa(kr, vr, False)),
               "gqa": "repeat_interleave outside the timed region", "enable_gqa_error": first}
        del kr, vr
        return res, out.transpose(1, 2)
    except Exception as e:
        return {"error": f"enable_gqa: {first}; repeated K/V: {short_error(e)}"}, None


# ---- the run -----------------------------------------------------------------------------------

def measure_shape(timer, b, sk, peers, layouts, copy_bps, device):
    kv_bytes = 2 * b * sk * HK * D * 2  # K and V, bf16
    flops = 4 * b * HQ * 1 * sk * D      # QK^T and PV, the FlashAttention count
    row = {"batch": b, "seqlen_k": sk, "heads_q": HQ, "heads_k": HK, "head_dim": D, "dtype": "bf16",
           "kv_bytes": kv_bytes, "flops": flops,
           # The two floors (BENCHMARKS.md / METHOD.md): bytes over the copy bandwidth measured in
           # this run, and FLOPs over the H200's dense bf16 rate (~790 TFLOP/s measured on this
           # workplace's machines); decode is bytes-bound by 30-60x.
           "floor_bytes_ms": kv_bytes / copy_bps * 1e3, "floor_flops_ms": flops / 790e12 * 1e3}
    torch.manual_seed(0)
    q = torch.randn(b, 1, HQ, D, device=device, dtype=DTYPE)
    k = torch.randn(b, sk, HK, D, device=device, dtype=DTYPE)
    v = torch.randn(b, sk, HK, D, device=device, dtype=DTYPE)
    outs, same_keys = {}, {}
    for layout in layouts:
        try:
            ms, out, same = time_ioattn(timer, q, k, v, b, sk, layout, device)
            gbps = kv_bytes / (ms * 1e-3)
            row[layout] = {"ms": ms, "kv_gbps": gbps / 1e9, "of_copy": gbps / copy_bps}
            outs[layout], same_keys[layout] = out, same
        except Exception as e:
            row[layout] = {"error": short_error(e)}
        free_bytes(device)
    ref = outs.get("contiguous")
    if ref is not None:
        for layout, out in outs.items():
            if layout != "contiguous" and same_keys[layout]:
                row[layout]["max_abs_diff_vs_contiguous"] = (out.float() - ref.float()).abs().max().item()
    # Peers: BHSD copies of the same keys when memory allows (then outputs are compared with
    # ioattn's), else fresh random tensors of the same shape after freeing ioattn's.
    same = ref is not None and 2 * k.numel() * k.element_size() < 0.6 * free_bytes(device)
    if same:
        kb, vb = k.transpose(1, 2).contiguous(), v.transpose(1, 2).contiguous()
    del k, v
    if not same:
        free_bytes(device)
        kb = torch.randn(b, HK, sk, D, device=device, dtype=DTYPE)
        vb = torch.randn(b, HK, sk, D, device=device, dtype=DTYPE)
    qb = q.transpose(1, 2).contiguous()
    for name in peers:
        # (A backend that cannot take a call raises, and its error is recorded; PyTorch's
        # UserWarnings saying why would only repeat that, for every shape, in the output.)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            res, out = time_peer(timer, name, qb, kb, vb, device)
        if same and out is not None:
            res["max_abs_diff_vs_ioattn"] = (out.float() - ref.float()).abs().max().item()
        row[name] = res
        del out
        free_bytes(device)
    for layout in layouts:
        t = row[layout].get("ms")
        if t:
            row[layout]["speedup"] = {n: row[n]["ms"] / t for n in peers if row[n].get("ms")}
    del q, kb, vb, outs, ref
    free_bytes(device)
    return row


def fmt_row(r, peers, layouts):
    lines = []
    for layout in layouts:
        x = r[layout]
        head = f"{r['batch']:>5} {r['seqlen_k']:>7} {layout:>10} |"
        if "ms" not in x:
            lines.append(head + f" error: {x['error']}")
            continue
        cells = [f"{r['floor_bytes_ms'] * 1e3:8.1f}", f"{x['ms'] * 1e3:9.1f}", f"{x['kv_gbps']:8.1f}",
                 f"{100 * x['of_copy']:6.1f}%"]
        for n in peers:
            s = x["speedup"].get(n)
            cells.append(f"{s:8.2f}" if s else f"{'n/a':>8}")
        lines.append(head + " ".join(cells))
    return lines


def header(peers):
    h = (f"{'batch':>5} {'seqlen':>7} {'layout':>10} | {'floor us':>8} {'ioattn us':>9} {'GB/s':>8} {'%copy':>7} " +
         " ".join(f"{'x' + n:>8}" for n in peers))
    return h + "\n" + "-" * len(h)


def summary(rows, peers, layouts):
    out = []
    bw = [(r, l) for r in rows for l in layouts if r["seqlen_k"] >= 8192 and "ms" in r[l]]
    ok = [x for x in bw if x[0][x[1]]["of_copy"] >= 0.8]
    if bw:
        worst = min(bw, key=lambda x: x[0][x[1]]["of_copy"])
        out.append(f"bandwidth target (>= 80% of copy at seqlen_k >= 8k): {len(ok)}/{len(bw)} rows; lowest "
                   f"{100 * worst[0][worst[1]]['of_copy']:.1f}% (batch {worst[0]['batch']}, seqlen_k "
                   f"{worst[0]['seqlen_k']}, {worst[1]})")
    for n in peers:
        pairs = [(r, l, r[l]["speedup"][n]) for r in rows for l in layouts if "ms" in r[l] and n in r[l]["speedup"]]
        if not pairs:
            out.append(f"vs {n}: no comparable rows")
            continue
        slower = [p for p in pairs if p[2] < 1.0]
        worst = min(pairs, key=lambda p: p[2])
        out.append(f"vs {n}: faster on {len(pairs) - len(slower)}/{len(pairs)} rows; lowest speedup {worst[2]:.2f}x "
                   f"(batch {worst[0]['batch']}, seqlen_k {worst[0]['seqlen_k']}, {worst[1]})")
    return out


def result_path(out_dir, device_name):
    name = re.sub(r"[^A-Za-z0-9]+", "-", device_name).strip("-").lower()
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    path = os.path.join(out_dir, f"decode-{name}-{date}.json")
    n = 2
    while os.path.exists(path):  # keep earlier runs of the day
        path = os.path.join(out_dir, f"decode-{name}-{date}-run{n}.json")
        n += 1
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--quick", action="store_true", help=f"batches {QUICK['batches']}, seqlens {QUICK['seqlens']}")
    ap.add_argument("--batches", help=f"comma list (default {FULL['batches']}; cpu {CPU['batches']})")
    ap.add_argument("--seqlens", help=f"comma list of seqlen_k (default {FULL['seqlens']}; cpu {CPU['seqlens']})")
    ap.add_argument("--layouts", default=",".join(LAYOUTS))
    ap.add_argument("--peers", default=",".join(PEERS))
    ap.add_argument("--eager", action="store_true", help="time plain calls instead of CUDA-graph replays")
    ap.add_argument("--copy-gib", type=float, help="copy-bandwidth tensor size (default 4 GiB; cpu 0.25)")
    ap.add_argument("--repeat", type=int, default=50, help="timed calls without triton / on the CPU")
    ap.add_argument("--out-dir", default="bench/results")
    args = ap.parse_args()

    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device (use --device cpu for a smoke test)")
    preset = CPU if device == "cpu" else (QUICK if args.quick else FULL)
    batches = [int(x) for x in (args.batches or preset["batches"]).split(",")]
    seqlens = [int(x) for x in (args.seqlens or preset["seqlens"]).split(",")]
    layouts = [x for x in args.layouts.split(",") if x]
    peers = [x for x in args.peers.split(",") if x]
    for x in layouts:
        if x not in LAYOUTS + EXTRA_LAYOUTS:
            sys.exit(f"--layouts: unknown {x!r} (choose from {', '.join(LAYOUTS + EXTRA_LAYOUTS)})")
    for x in peers:
        if x not in PEERS:
            sys.exit(f"--peers: unknown {x!r} (choose from {', '.join(PEERS)})")
    for s in seqlens:
        if any(x.startswith("paged") and s % int(x[len('paged'):]) for x in layouts):
            sys.exit(f"--seqlens: {s} is not a multiple of every page size")

    timer = Timer(device, args.repeat, not args.eager)
    copy_gib = args.copy_gib or (0.25 if device == "cpu" else 4.0)
    copy_bps, copy_ms = copy_bandwidth(timer, device, copy_gib)
    if device == "cuda":
        dev = torch.cuda.get_device_properties(0)
        device_name, extra = dev.name, {"sm_count": dev.multi_processor_count, "cuda": torch.version.cuda,
                                        "cudnn": torch.backends.cudnn.version()}
    else:
        device_name, extra = "cpu", {"threads": torch.get_num_threads()}
    floor_ms = launch_floor(timer, device)
    print(f"device {device_name}; copy bandwidth {copy_bps / 1e9:.1f} GB/s (clone of {copy_gib:g} GiB, read + write, "
          f"{copy_ms:.2f} ms); timing: {'CUDA-graph replay' if timer.graphs else 'plain calls'}, "
          f"{'do_bench median' if device == 'cuda' and do_bench else 'median of ' + str(args.repeat)}; "
          f"launch floor (a one-element add timed the same way) {floor_ms * 1e3:.1f} us", flush=True)

    os.makedirs(args.out_dir, exist_ok=True)
    path = result_path(args.out_dir, device_name)
    rows = []
    meta = {"device": device_name, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "torch": torch.__version__, "ioattn": ioattn.build_info().get("version"), **extra,
            "timing": ("CUDA-graph replay, " if timer.graphs else "plain calls, ") +
                      ("triton do_bench median (L2 flushed per call)" if device == "cuda" and do_bench
                       else f"median of {args.repeat}"),
            "copy": {"gib": copy_gib, "ms": copy_ms, "bytes_per_s": copy_bps}, "launch_floor_ms": floor_ms,
            "protocol": "BENCHMARKS.md decoding: bf16, Hq 32 / Hk 8, D 128, seqlen_q 1",
            "layouts": layouts, "peers": peers, "rows": rows}

    def save():  # after every shape, so a run cut short keeps what it measured
        with open(path, "w") as f:
            json.dump(meta, f, indent=1)

    print(header(peers), flush=True)
    for b in batches:
        for sk in seqlens:
            row = measure_shape(timer, b, sk, peers, layouts, copy_bps, device)
            rows.append(row)
            save()
            for ln in fmt_row(row, peers, layouts):
                print(ln, flush=True)

    print("BENCH TABLE")
    print(f"decode bf16, q heads {HQ} / kv heads {HK}, head dim {D}, seqlen_q 1; GB/s = K/V bytes read / time; "
          f"%copy of {copy_bps / 1e9:.0f} GB/s; xPEER = PEER time / ioattn time (> 1: ioattn faster)")
    print(header(peers))
    for r in rows:
        for ln in fmt_row(r, peers, layouts):
            print(ln)
    notes = sorted({f"{n}: {r[n]['gqa']}" for r in rows for n in peers if r[n].get("gqa")})
    errors = sorted({f"{n}: {r[n]['error']}" for r in rows for n in peers if r[n].get("error")})
    for ln in summary(rows, peers, layouts) + ["GQA in the peers: " + "; ".join(notes)] + \
            [f"peer error ({e})" for e in errors]:
        print(ln)
    print("END TABLE")

    save()
    print(f"saved {path}")


if __name__ == "__main__":
    main()
