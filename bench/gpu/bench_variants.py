#!/usr/bin/env python3
"""Forward TFLOP/s of the ioattn CLI under several environment settings, side by side: for choosing
between kernel variants exposed through environment knobs (IOATTN_SM90=0 selects the sm80 kernels
on Hopper; the sm90 schedule table in src/cuda/sm90/fwd_config.h was chosen with temporary knobs
IOATTN_SM90_PERSISTENT / IOATTN_SM90_OVERLAP, since removed).
Shapes follow BENCHMARKS.md (bf16, heads = 2048 / d, batch x seqlen = 16384). With --cudnn, PyTorch
SDPA's cuDNN backend is timed in the same run (bench_attn.py's timing); other peers: bench_attn.py.
Saves bench/results/variants-<device>-<date>.json.

  python3 bench/gpu/bench_variants.py --cli build-gpu/tools/ioattn \\
      --variant sm80:IOATTN_SM90=0

--preset pingpong (the sm90 forward's pingpong scheduling; needs the temporary knobs
IOATTN_SM90_FWD_VARIANT / IOATTN_SM90_FWD_PERSISTENT of commit d5f3a67's src/cuda/sm90/fwd_kernel.cuh,
removed once fwd_config.h's pingpong column was chosen with them: bring them back to re-measure) times, per head dim,
against the schedule of fwd_config.h's table (column "table"; about 80 s on an H200):
  pp       the table's schedule with pingpong
  pp~ov    pingpong with the table's overlap flipped
  pp~pers  pingpong with the table's persistent flipped
and cuDNN; d = 64 and 128, seqlen 2048 and 16384, causal and not. First it checks every pingpong
variant against the float64 reference (ioattn run --check) on small shapes that walk several tiles
per persistent CTA, with causal, varlen (skipped tiles), sliding-window and GQA masks; a FAIL stops
the run before timing.

  python3 bench/gpu/bench_variants.py --cli build-gpu/tools/ioattn --preset pingpong
"""
import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
FWD_CONFIG = os.path.join(HERE, "..", "..", "src", "cuda", "sm90", "fwd_config.h")


def cli_cmd(cli, d, s, causal, repeat, b=None, h=None, extra=()):
    h = h or 2048 // d
    b = b or max(1, 16384 // s)
    return [cli, "run", "--device", "cuda", "--dtype", "bf16", "--batch", str(b), "--heads", str(h), "--seqlen",
            str(s), "--head-dim", str(d), "--json", "--repeat", str(repeat)] + (["--causal"] if causal else []) + list(extra)


def run_json(cmd, env, timeout=60):
    """(exit code, the CLI's JSON object or None, last output line). A kernel that hangs (a deadlocked
    barrier protocol) is killed after `timeout` seconds: exit code None."""
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env}, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, None, f"TIMEOUT after {timeout} s (hung kernel?)"
    start = r.stdout.find("{")
    j = json.JSONDecoder().raw_decode(r.stdout[start:])[0] if start >= 0 else None
    out = (r.stderr or r.stdout).strip().splitlines()
    return r.returncode, j, (out[-1] if out else f"exit {r.returncode}")


def run(cli, d, s, causal, repeat, env):
    rc, j, last = run_json(cli_cmd(cli, d, s, causal, repeat), env)
    if rc != 0 or j is None:
        print(f"  d={d} s={s} causal={causal} {env}: {last[:160]}", file=sys.stderr)
        return None
    return j.get("fwd_tflops")


def table_schedule():
    """{head_dim: (persistent, overlap)} from fwd_config.h's kFwdTiles (fields: head_dim, block_m,
    block_n, stages, persistent, overlap, pingpong, why)."""
    rows = {}
    with open(FWD_CONFIG) as f:
        for m in re.finditer(r"\{\s*(\d+),\s*\d+,\s*\d+,\s*\d+,\s*(true|false),\s*(true|false),\s*(true|false),\s*\"",
                             f.read()):
            rows[int(m.group(1))] = (m.group(2) == "true", m.group(3) == "true")
    return rows


def pingpong_variants(sched):
    """[(column, {head_dim: env})] of --preset pingpong."""
    def overlap_flip(d):
        return "pingpong_nooverlap" if sched[d][1] else "pingpong_overlap"

    def pers_flip(d):
        return "0" if sched[d][0] else "1"
    return [("pp", {d: {"IOATTN_SM90_FWD_VARIANT": "pingpong"} for d in sched}),
            ("pp~ov", {d: {"IOATTN_SM90_FWD_VARIANT": overlap_flip(d)} for d in sched}),
            ("pp~pers", {d: {"IOATTN_SM90_FWD_VARIANT": "pingpong", "IOATTN_SM90_FWD_PERSISTENT": pers_flip(d)}
                         for d in sched})]


# Correctness shapes for --preset pingpong: 4 x 6 x ceil(700 / 128) = 144 query tiles (> 132 SMs, so
# persistent CTAs take several tiles, and the turn protocol runs across tile boundaries); the causal
# tiles have 1 .. 6 key blocks (0 .. 5 turns), varlen adds tiles past a sequence's end (skipped),
# the window gives tiles whose key range starts past 0, GQA shares K/V heads. (About 2 s each: the
# float64 reference runs on one core. Unmasked blocks: the interior ones of the causal tiles.)
CHECK_SHAPES = [
    ("causal+varlen", ["--causal", "--varlen"]),
    ("window+gqa", ["--window=200,0", "--kv-heads", "2"]),
]


def check(cli, d, env, extra):
    """(passed, one-line summary) of `ioattn run --check` (exit 1 on FAIL) on a small shape."""
    rc, j, last = run_json(cli_cmd(cli, d, 700, False, 1, b=4, h=6, extra=list(extra) + ["--check"]), env)
    if j is None:
        return False, last
    ok = rc == 0 and j.get("pass") is True and "sm90" in str(j.get("choice"))
    return ok, f"max abs err {j.get('max_abs_err')}, lse {j.get('lse_max_abs_err')}; {j.get('choice')}"


def cudnn_timer():
    """fn(d, s, causal) -> cuDNN forward TFLOP/s, or None without torch / CUDA."""
    try:
        sys.path.insert(0, HERE)
        import torch
        from bench_attn import PEERS, bench_ms, fwd_flops, sdpa
        attn = sdpa(PEERS["cudnn"])
        if not torch.cuda.is_available():
            raise RuntimeError("torch sees no CUDA device")
    except Exception as e:  # pragma: no cover - no torch on this machine
        print(f"warning: no cuDNN column ({e})", file=sys.stderr)
        return None

    def time_it(d, s, causal):
        h, b = 2048 // d, max(1, 16384 // s)
        torch.manual_seed(0)
        try:
            q, k, v = (torch.randn(b, h, s, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
            with torch.no_grad():
                ms = bench_ms(lambda: attn(q, k, v, causal))
            return fwd_flops(b, h, s, s, d, causal) / ms / 1e9
        except Exception as e:  # a shape the backend refuses
            print(f"  cudnn d={d} s={s} causal={causal}: {str(e).splitlines()[0][:160] if str(e) else e!r}",
                  file=sys.stderr)
            return None
        finally:
            q = k = v = None
            torch.cuda.empty_cache()
    return time_it


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cli", default="build-gpu/tools/ioattn")
    ap.add_argument("--seqlens", default=None, help="default 2048,16384")
    ap.add_argument("--head-dims", default=None, help="default 64,128,256 (64,128 with --preset pingpong)")
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--variant", action="append", default=[], help="name:VAR=value,VAR=value (repeatable)")
    ap.add_argument("--preset", choices=["pingpong"], help="the variants of a pending choice (see above)")
    ap.add_argument("--cudnn", action="store_true", help="also time SDPA's cuDNN backend (on with --preset)")
    ap.add_argument("--no-check", action="store_true", help="--preset: skip the correctness pass")
    ap.add_argument("--out-dir", default="bench/results")
    args = ap.parse_args()
    t0 = time.time()
    head_dims = [int(x) for x in (args.head_dims or ("64,128" if args.preset else "64,128,256")).split(",")]
    seqlens = [int(x) for x in (args.seqlens or "2048,16384").split(",")]

    # variants: [(name, {head_dim: env})]; "default" is the build's own choice (the table).
    variants = [("table" if args.preset else "default", {d: {} for d in head_dims})]
    if args.preset == "pingpong":
        sched = table_schedule()
        missing = [d for d in head_dims if d not in sched]
        if missing:
            sys.exit(f"{FWD_CONFIG}: no kFwdTiles row parsed for head dims {missing}")
        for d in head_dims:
            print(f"d={d}: table = {'persistent' if sched[d][0] else 'one CTA per tile'}, "
                  f"{'overlap' if sched[d][1] else 'no overlap'}")
        variants += [(n, {d: e[d] for d in head_dims}) for n, e in pingpong_variants(sched)]
    for v in args.variant:
        name, _, assigns = v.partition(":")
        env = dict(a.split("=", 1) for a in assigns.split(",") if a)
        variants.append((name, {d: env for d in head_dims}))

    checks = []
    if args.preset and not args.no_check:
        failed = False
        for d in head_dims:
            for name, envs in variants[1:]:
                for shape, extra in CHECK_SHAPES:
                    ok, last = check(args.cli, d, envs[d], extra)
                    checks.append({"head_dim": d, "variant": name, "shape": shape, "ok": ok, "last_line": last})
                    failed |= not ok
                    print(f"check d={d} {name:8} {shape:14} {'ok' if ok else 'FAIL'}  {last[:120]}", flush=True)
        print(f"checks: {sum(c['ok'] for c in checks)}/{len(checks)} passed ({time.time() - t0:.0f} s)", flush=True)
        if failed:
            sys.exit(1)

    cudnn = cudnn_timer() if (args.cudnn or args.preset) else None
    names = [n for n, _ in variants] + (["cudnn"] if cudnn else [])
    extra_cols = ["best/tab", "best/cudnn"] if args.preset and cudnn else []
    rows = []
    head = f"{'d':>4} {'seqlen':>6} {'causal':>6} | " + " | ".join(f"{n:>8}" for n in names + extra_cols)
    print("forward TFLOP/s, bf16, heads = 2048/d, batch x seqlen = 16384")
    print(head + "\n" + "-" * len(head), flush=True)
    for d in head_dims:
        for s in seqlens:
            for causal in (False, True):
                row = {"head_dim": d, "seqlen": s, "causal": causal}
                for name, envs in variants:
                    row[name] = run(args.cli, d, s, causal, args.repeat, envs[d])
                if cudnn:
                    row["cudnn"] = cudnn(d, s, causal)
                rows.append(row)
                cells = [f"{row[n]:8.0f}" if row[n] else f"{'n/a':>8}" for n in names]
                if extra_cols:
                    ours = [row[n] for n, _ in variants[1:] if row[n]]
                    best, tab, ref = max(ours, default=None), row[variants[0][0]], row.get("cudnn")
                    cells += [f"{best / tab:8.2f}" if best and tab else f"{'-':>8}",
                              f"{best / ref:8.2f}" if best and ref else f"{'-':>8}"]
                print(f"{d:>4} {s:>6} {str(causal):>6} | " + " | ".join(cells), flush=True)
    try:
        dev = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True).stdout.strip().splitlines()
    except FileNotFoundError:
        dev = []
    name = re.sub(r"[^A-Za-z0-9]+", "-", dev[0] if dev else "gpu").strip("-").lower()
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    os.makedirs(args.out_dir, exist_ok=True)
    path = os.path.join(args.out_dir, f"variants-{name}-{date}{'-' + args.preset if args.preset else ''}.json")
    with open(path, "w") as f:
        json.dump({"device": dev, "date": date, "variants": {n: {str(d): e for d, e in envs.items()}
                                                             for n, envs in variants},
                   "checks": checks, "rows": rows}, f, indent=1)
    print(f"saved {path} ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
