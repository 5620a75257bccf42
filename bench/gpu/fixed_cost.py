#!/usr/bin/env python3
"""Forward time of ioattn (its CLI) and cuDNN (PyTorch SDPA) from a single tile up to the benchmark's
short rows, to tell a fixed per-call cost (launch, prologue, tail) from per-tile throughput: a gap that
stays constant as the batch grows is fixed cost, one that grows with it is throughput.

Run on the GPU machine from the repository root after building the CLI, e.g.
  python3 bench/gpu/fixed_cost.py --cli build-gpu/tools/ioattn --rounds 2
cuDNN is timed as in bench_attn.py (triton's do_bench, BHSD tensors); at one or a few tiles its times are
its host overhead (the GPU waits for the launch), so compare there only where both are GPU-bound.
Prints one line per shape and round (bf16); save the output under bench/results/ with a header line.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch  # noqa: E402
from bench_attn import PEERS, bench_ms, fwd_flops, sdpa  # noqa: E402
from bench_variants import cli_cmd, run_json  # noqa: E402

# (head dim, causal, batch, heads, seqlen): one tile, one wave, and the benchmark rows near the bars.
SHAPES = [(64, True, 1, 1, 128), (64, True, 1, 32, 128), (64, True, 1, 32, 512), (64, True, 4, 32, 512),
          (64, True, 16, 32, 512), (64, True, 32, 32, 512), (64, False, 1, 1, 128), (64, False, 32, 32, 512),
          (256, False, 1, 1, 128), (256, False, 1, 8, 512), (256, False, 8, 8, 512), (256, False, 32, 8, 512),
          (256, True, 32, 8, 512), (128, False, 1, 1, 128), (128, True, 32, 16, 512)]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cli", default="build-gpu/tools/ioattn")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    attn = sdpa(PEERS["cudnn"])
    for rnd in range(args.rounds):
        for d, causal, b, h, s in SHAPES:
            _, j, last = run_json(cli_cmd(args.cli, d, s, causal, 30, b=b, h=h), {})
            ours = j["fwd_ms"] * 1e3 if j else float("nan")
            q, k, v = (torch.randn(b, h, s, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
            with torch.no_grad():
                peer = bench_ms(lambda: attn(q, k, v, causal)) * 1e3
            fl = fwd_flops(b, h, s, s, d, causal)
            print(f"round {rnd} d {d:3d} {'causal' if causal else 'plain '} B {b:2d} H {h:2d} S {s:4d}: "
                  f"ioattn {ours:8.2f} us ({fl / ours / 1e6:6.1f} TFLOP/s)  cudnn {peer:8.2f} us "
                  f"({fl / peer / 1e6:6.1f})  diff {ours - peer:+7.2f} us" + ("" if j else f"  [{last}]"), flush=True)


if __name__ == "__main__":
    main()
