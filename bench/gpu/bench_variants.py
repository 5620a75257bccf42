#!/usr/bin/env python3
"""Forward TFLOP/s of the ioattn CLI under several environment settings, side by side: for choosing
between kernel variants exposed through environment knobs (IOATTN_SM90=0 selects the sm80 kernels
on Hopper; the sm90 schedule table in src/cuda/sm90/fwd_config.h was chosen with temporary knobs
IOATTN_SM90_PERSISTENT / IOATTN_SM90_OVERLAP, since removed).
Shapes follow BENCHMARKS.md (bf16, heads = 2048 / d, batch x seqlen = 16384). Peers are timed by
bench_attn.py, not here. Saves bench/results/variants-<device>-<date>.json.

  python3 bench/gpu/bench_variants.py --cli build-gpu/tools/ioattn \\
      --variant sm80:IOATTN_SM90=0
"""
import argparse
import datetime
import json
import os
import re
import subprocess


def run(cli, d, s, causal, repeat, env):
    h, b = 2048 // d, max(1, 16384 // s)
    cmd = [cli, "run", "--device", "cuda", "--dtype", "bf16", "--batch", str(b), "--heads", str(h), "--seqlen",
           str(s), "--head-dim", str(d), "--json", "--repeat", str(repeat)] + (["--causal"] if causal else [])
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env})
    start = r.stdout.find("{")
    if r.returncode != 0 or start < 0:
        return None
    return json.JSONDecoder().raw_decode(r.stdout[start:])[0].get("fwd_tflops")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cli", default="build-gpu/tools/ioattn")
    ap.add_argument("--seqlens", default="2048,16384")
    ap.add_argument("--head-dims", default="64,128,256")
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--variant", action="append", default=[], help="name:VAR=value,VAR=value (repeatable)")
    ap.add_argument("--out-dir", default="bench/results")
    args = ap.parse_args()
    variants = [("default", {})]
    for v in args.variant:
        name, _, assigns = v.partition(":")
        variants.append((name, dict(a.split("=", 1) for a in assigns.split(",") if a)))
    rows = []
    print(f"{'d':>4} {'seqlen':>6} {'causal':>6} | " + " | ".join(f"{n:>12}" for n, _ in variants), flush=True)
    for d in [int(x) for x in args.head_dims.split(",")]:
        for s in [int(x) for x in args.seqlens.split(",")]:
            for causal in (False, True):
                row = {"head_dim": d, "seqlen": s, "causal": causal}
                for name, env in variants:
                    row[name] = run(args.cli, d, s, causal, args.repeat, env)
                rows.append(row)
                cells = " | ".join(f"{row[n]:12.0f}" if row[n] else f"{'n/a':>12}" for n, _ in variants)
                print(f"{d:>4} {s:>6} {str(causal):>6} | {cells}", flush=True)
    dev = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                         text=True).stdout.strip().splitlines()
    name = re.sub(r"[^A-Za-z0-9]+", "-", dev[0] if dev else "gpu").strip("-").lower()
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    os.makedirs(args.out_dir, exist_ok=True)
    path = os.path.join(args.out_dir, f"variants-{name}-{date}.json")
    with open(path, "w") as f:
        json.dump({"device": dev, "date": date, "variants": dict(variants), "rows": rows}, f, indent=1)
    print(f"saved {path}")


if __name__ == "__main__":
    main()
