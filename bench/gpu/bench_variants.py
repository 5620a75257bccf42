#!/usr/bin/env python3
"""A/B timing of kernel variants in one run on one device: builds of other git refs and / or
environment settings, side by side with the current build, alternating the variants within every
shape and repeating the whole sweep (--rounds), so the spread between rounds is visible next to the
differences between variants (METHOD.md: a difference smaller than the spread is noise).

Variants (the first column is always "base": --cli as it is):
  --ref NAME=GITREF      the ioattn CLI built from GITREF (a detached `git worktree` under --work-dir, or
                         GITREF itself when it is a directory holding a source tree, e.g. `git archive`
                         output carried to a GPU machine that has no .git;
                         CMake with CUDA on for sm_90a and only the head dims timed; the build reuses
                         IOATTN_DEPS_PREFIX like scripts/gpu_check.sh)
  --env NAME:VAR=v,...   the --cli build under environment settings (IOATTN_SM90=0: the sm80 kernels;
                         IOATTN_SM90_BWD=0: the sm80 backward)
  --ref-env NAME=GITREF:VAR=v,...   both
Before timing, every variant is checked against the float64 reference (`ioattn run --check`) on small
shapes that walk several tiles per persistent CTA (causal + varlen, window + GQA); a FAIL stops the run.

Shapes follow BENCHMARKS.md: bf16, heads = 2048 / d, batch x seqlen = 16384. Forward TFLOP/s, and with
--backward the backward's too (FLOPs: DESIGN.md's convention, backward = 2.5 x forward). --cudnn adds
PyTorch SDPA's cuDNN backend (forward) in the same run. Saves bench/results/variants-<device>-<date>.json.
Stopped by SIGTERM (`timeout`), it still prints the table and saves the JSON of the samples it took.

  python3 bench/gpu/bench_variants.py --cli build-gpu/tools/ioattn --ref old=HEAD~1 \\
      --env sm80:IOATTN_SM90=0 --head-dims 64,128 --seqlens 2048 --backward --rounds 3

The sm90 forward's schedule table (src/cuda/sm90/fwd_config.h) was chosen with this script's earlier
form and temporary environment knobs, since removed (bench/notes-sm90.md has the tables).
"""
import argparse
import datetime
import json
import os
import re
import statistics
import subprocess
import shlex
import signal
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))


def cli_cmd(cli, d, s, causal, repeat, b=None, h=None, extra=()):
    h = h or 2048 // d
    b = b or max(1, 16384 // s)
    return [cli, "run", "--device", "cuda", "--dtype", "bf16", "--batch", str(b), "--heads", str(h), "--seqlen",
            str(s), "--head-dim", str(d), "--json", "--repeat", str(repeat)] + (["--causal"] if causal else []) + list(extra)


def run_json(cmd, env, timeout=120):
    """(exit code, the CLI's JSON object or None, last output line). A kernel that hangs (a deadlocked
    barrier protocol) is killed after `timeout` seconds: exit code None."""
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env}, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, None, f"TIMEOUT after {timeout} s (hung kernel?)"
    except OSError as e:  # no such CLI
        return None, None, str(e)
    start = r.stdout.find("{")
    j = json.JSONDecoder().raw_decode(r.stdout[start:])[0] if start >= 0 else None
    out = (r.stderr or r.stdout).strip().splitlines()
    return r.returncode, j, (out[-1] if out else f"exit {r.returncode}")


def parse_env(assigns):
    return dict(a.split("=", 1) for a in assigns.split(",") if a)


def build_ref(name, ref, head_dims, work_dir, jobs, worktrees):
    """The path of the ioattn CLI built from git ref `ref` (a detached worktree, its own build; the
    worktree's path is appended to `worktrees` for removal at the end)."""
    src = os.path.join(work_dir, name)
    if os.path.isdir(ref):  # a source tree (e.g. `git archive` output carried to a machine without .git)
        src = os.path.abspath(ref)
    elif not os.path.isdir(src):
        subprocess.run(["git", "-C", REPO, "worktree", "add", "--detach", "--force", src, ref], check=True,
                       capture_output=True)
        worktrees.append(src)
    build = os.path.join(src, "build-variant")
    dims = ";".join(str(d) for d in sorted(set(head_dims)))
    cfg = ["cmake", "-S", src, "-B", build, "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release", "-DIOATTN_WITH_CUDA=ON",
           "-DCMAKE_CUDA_ARCHITECTURES=90a", f"-DIOATTN_CUDA_HEAD_DIMS={dims}", "-DIOATTN_BUILD_TESTS=OFF",
           "-DIOATTN_BUILD_TOOLS=ON", "-DIOATTN_BUILD_BENCH=OFF"]
    prefix = os.environ.get("IOATTN_DEPS_PREFIX")
    if prefix:  # what gpu_check.sh does with it: the GPU image lacks CLI11 / nlohmann-json / OpenBLAS
        cfg.append(f"-DCMAKE_PREFIX_PATH={prefix}")
        inc = f"{prefix}/include"
        if inc not in os.environ.get("CPATH", "").split(":"):  # once, not once per ref built
            os.environ["CPATH"] = inc + (":" + os.environ["CPATH"] if os.environ.get("CPATH") else "")
    t0 = time.time()
    for cmd in (cfg, ["cmake", "--build", build, "--target", "ioattn_cli", "-j", str(jobs)]):
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"variant {name} ({ref}): {' '.join(cmd[:3])} failed:\n{(r.stdout + r.stderr)[-3000:]}")
    print(f"built {name} = {ref} ({time.time() - t0:.0f} s)", flush=True)
    return os.path.join(build, "tools", "ioattn")


# Correctness shapes: 4 x 6 x ceil(700 / 128) = 144 query tiles (> 132 SMs, so persistent CTAs take
# several tiles, and barrier protocols run across tile boundaries); the causal tiles have 1 .. 6 key
# blocks, varlen adds tiles past a sequence's end (skipped), the window gives tiles whose key range
# starts past 0, GQA shares K/V heads. (About 2 s each: the float64 reference runs on one core.)
CHECK_SHAPES = [
    ("causal+varlen", ["--causal", "--varlen"]),
    ("window+gqa", ["--window=200,0", "--kv-heads", "2"]),
]


def check(cli, d, env, extra, backward):
    """(passed, one-line summary) of `ioattn run --check` (exit 1 on FAIL) on a small shape."""
    extra = list(extra) + ["--check"] + (["--backward"] if backward else [])
    rc, j, last = run_json(cli_cmd(cli, d, 700, False, 1, b=4, h=6, extra=extra), env, timeout=300)
    if j is None:
        return False, last
    return rc == 0 and j.get("pass") is True, f"{j.get('choice')}"


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
    worktrees = []
    try:
        run_variants(worktrees)
    finally:  # the repository's worktree list keeps no entries of this run
        for w in worktrees:
            subprocess.run(["git", "-C", REPO, "worktree", "remove", "--force", w], capture_output=True)


def run_variants(worktrees):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cli", default="build-gpu/tools/ioattn", help="the base build's CLI")
    ap.add_argument("--seqlens", default="2048,16384")
    ap.add_argument("--head-dims", default="64,128,256")
    ap.add_argument("--causal", default="0,1", help="0, 1 or 0,1")
    ap.add_argument("--repeat", type=int, default=20, help="timed calls per CLI run (median)")
    ap.add_argument("--rounds", type=int, default=2, help="sweeps over all shapes and variants")
    ap.add_argument("--backward", action="store_true", help="also time the backward")
    ap.add_argument("--ref", action="append", default=[], help="NAME=GITREF (repeatable)")
    ap.add_argument("--env", action="append", default=[], help="NAME:VAR=value,VAR=value (repeatable)")
    ap.add_argument("--ref-env", action="append", default=[], help="NAME=GITREF:VAR=value,... (repeatable)")
    ap.add_argument("--cudnn", action="store_true", help="also time SDPA's cuDNN backend (forward)")
    ap.add_argument("--cli-args", default="",
                    help="extra `ioattn run` arguments for every variant, checks included (e.g. \"--softcap 30\" or "
                         "\"--alibi\"; not with --cudnn, whose column would time plain attention)")
    ap.add_argument("--no-check", action="store_true", help="skip the correctness pass")
    ap.add_argument("--work-dir", default="/tmp/ioattn-variants", help="worktrees and builds of --ref")
    ap.add_argument("--build-head-dims", default=None,
                    help="head dims the --ref builds compile (default --head-dims; a superset lets two runs share one build)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 4)
    ap.add_argument("--out-dir", default="bench/results")
    args = ap.parse_args()
    t0 = time.time()
    head_dims = [int(x) for x in args.head_dims.split(",")]
    build_dims = [int(x) for x in (args.build_head_dims or args.head_dims).split(",")]
    seqlens = [int(x) for x in args.seqlens.split(",")]
    causals = [c == "1" for c in args.causal.split(",")]

    # variants: [(name, cli, env)]
    variants = [("base", args.cli, {})]
    built = {}
    for spec in args.ref + args.ref_env:
        name, _, rest = spec.partition("=")
        ref, _, assigns = rest.partition(":")
        if ref not in built:
            built[ref] = build_ref(re.sub(r"[^A-Za-z0-9_.-]", "_", name), ref, build_dims, args.work_dir, args.jobs,
                                   worktrees)
        variants.append((name, built[ref], parse_env(assigns)))
    for spec in args.env:
        name, _, assigns = spec.partition(":")
        variants.append((name, args.cli, parse_env(assigns)))

    cli_args = shlex.split(args.cli_args)
    if cli_args and args.cudnn:
        sys.exit("--cli-args with --cudnn: the cuDNN column would time plain attention")
    checks = []
    if not args.no_check:
        failed = False
        for d in head_dims:
            for name, cli, env in variants:
                for shape, extra in CHECK_SHAPES:
                    ok, last = check(cli, d, env, list(extra) + cli_args, args.backward)
                    checks.append({"head_dim": d, "variant": name, "shape": shape, "ok": ok, "last_line": last})
                    failed |= not ok
                    print(f"check d={d} {name:10} {shape:14} {'ok' if ok else 'FAIL'}  {last[:120]}", flush=True)
        print(f"checks: {sum(c['ok'] for c in checks)}/{len(checks)} passed ({time.time() - t0:.0f} s)", flush=True)
        if failed:
            sys.exit(1)

    keys = ["fwd_tflops"] + (["bwd_tflops"] if args.backward else [])
    shapes = [(d, s, c) for d in head_dims for s in seqlens for c in causals]
    samples = {(shape, name, key): [] for shape in shapes for name, _, _ in variants for key in keys}
    # A run stopped by SIGTERM (`timeout`, the GPU machine's per-call limit) still prints its table
    # and saves its JSON with the samples it has: the rounds done, and the shapes of the round it was
    # in (a device run that timed out used to leave nothing).
    def stop(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, stop)
    rounds_done, interrupted = 0, False
    try:
        for r in range(args.rounds):
            for shape in shapes:
                d, s, causal = shape
                # Alternate the variants' order between rounds, so neither always runs first (clocks, L2).
                for name, cli, env in (variants if r % 2 == 0 else variants[::-1]):
                    extra = (["--backward"] if args.backward else []) + cli_args
                    rc, j, last = run_json(cli_cmd(cli, d, s, causal, args.repeat, extra=extra), env)
                    if rc != 0 or j is None:
                        print(f"  d={d} s={s} causal={causal} {name}: {last[:160]}", file=sys.stderr)
                        continue
                    for key in keys:
                        if j.get(key):
                            samples[(shape, name, key)].append(j[key])
            rounds_done = r + 1
            print(f"round {r + 1}/{args.rounds} done ({time.time() - t0:.0f} s)", flush=True)
    except KeyboardInterrupt:
        interrupted = True
        print(f"interrupted after {rounds_done} of {args.rounds} rounds ({time.time() - t0:.0f} s): the table below "
              "has the samples taken so far", flush=True)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    cudnn = cudnn_timer() if args.cudnn and not interrupted else None

    names = [n for n, _, _ in variants]
    rows = []
    print("VARIANT TABLE")
    done = f"{args.rounds} rounds" if not interrupted else f"the samples of {rounds_done} + part of a round"
    print(f"TFLOP/s (median of {done}; spread = (max - min) / median over the rounds), bf16, "
          "heads = 2048/d, batch x seqlen = 16384; ratios to base" + (f"; {args.cli_args}" if cli_args else ""))
    for key in keys:
        head = (f"{key[:3]:>3} {'d':>4} {'seqlen':>6} {'causal':>6} | " + " | ".join(f"{n:>16}" for n in names) +
                (f" | {'cudnn':>6}" if cudnn and key == "fwd_tflops" else ""))
        print(head + "\n" + "-" * len(head))
        for shape in shapes:
            d, s, causal = shape
            row = {"head_dim": d, "seqlen": s, "causal": causal, "key": key}
            cells = []
            base = samples[(shape, "base", key)]
            base_med = statistics.median(base) if base else None
            for n in names:
                xs = samples[(shape, n, key)]
                row[n] = xs
                if not xs:
                    cells.append(f"{'n/a':>16}")
                    continue
                med = statistics.median(xs)
                spread = (max(xs) - min(xs)) / med if med else 0.0
                ratio = f" {med / base_med:4.2f}x" if n != "base" and base_med else "      "
                cells.append(f"{med:5.0f} ±{100 * spread:3.0f}%{ratio}")
            if cudnn and key == "fwd_tflops":
                row["cudnn"] = cudnn(d, s, causal)
                cells.append(f"{row['cudnn']:6.0f}" if row["cudnn"] else f"{'n/a':>6}")
            rows.append(row)
            print(f"{key[:3]:>3} {d:>4} {s:>6} {str(causal):>6} | " + " | ".join(cells), flush=True)
    print("END VARIANT TABLE")
    try:
        dev = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True).stdout.strip().splitlines()
    except FileNotFoundError:
        dev = []
    dname = re.sub(r"[^A-Za-z0-9]+", "-", dev[0] if dev else "gpu").strip("-").lower()
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    os.makedirs(args.out_dir, exist_ok=True)
    path = os.path.join(args.out_dir, f"variants-{dname}-{date}.json")
    n = 2
    while os.path.exists(path):  # several runs a day: never overwrite one
        path = os.path.join(args.out_dir, f"variants-{dname}-{date}-run{n}.json")
        n += 1
    with open(path, "w") as f:
        json.dump({"device": dev, "date": date, "rounds": args.rounds, "rounds_done": rounds_done,
                   "interrupted": interrupted, "repeat": args.repeat, "cli_args": cli_args,
                   "variants": [{"name": n, "cli": c, "env": e} for n, c, e in variants],
                   "checks": checks, "rows": rows}, f, indent=1)
    print(f"saved {path} ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
