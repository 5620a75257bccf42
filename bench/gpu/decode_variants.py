#!/usr/bin/env python3
"""A/B timing of decode (forward_kvcache) kernel variants: bench_decode.py run once per Python package
and round, the packages alternating within every round, then one table of ioattn's time per shape and
layout for every package (median over the rounds, with the spread (max - min) / median), and the
peers' times from the same runs.

The packages are directories that `pip install --target DIR` filled, e.g. on the GPU machine
    CMAKE_ARGS="-DIOATTN_WITH_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90a -DIOATTN_CUDA_HEAD_DIMS=128" \\
      python3 -m pip install --no-build-isolation --no-deps --target pkg-main . -C build-dir=pyb-main
(and the same from another source tree, e.g. `scripts/ab_prepare.sh`'s build-src-NAME, into pkg-NAME).
Each run is a fresh process with PYTHONPATH=DIR, bench_decode.py loaded through runpy from the repository
root (a plain `python3 bench/gpu/bench_decode.py` with a --target package on PYTHONPATH once failed to
find ioattn.build_info: bench/notes-decode.md, session 10). Arguments after `--` go to bench_decode.py:

  python3 bench/gpu/decode_variants.py --pkg main=pkg-main --pkg new=pkg-new --rounds 2 -- \\
      --batches 1,8 --seqlens 1024,8192 --layouts contiguous,paged16 --peers cudnn

A package may carry environment variables for its runs (NAME=DIR:VAR=VALUE,...), so one build can be
compared with itself under different run-time knobs, e.g. --pkg base=pkg:IOATTN_DECODE_CLUSTER=1
--pkg global=pkg:IOATTN_DECODE_CLUSTER=0.

Prints a table between VARIANT TABLE / END VARIANT TABLE and writes the runs' JSON and the table to
--out-dir (default bench/results) as decode-variants-<device>-<date>.{json,txt}.
"""
import argparse
import datetime
import glob
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_once(pkg_dir, bench_args, work_dir, extra_env=None):
    """One bench_decode.py run with pkg_dir first on the path (and extra_env set); returns its JSON."""
    out = tempfile.mkdtemp(dir=work_dir)
    env = dict(os.environ)
    env.update(extra_env or {})
    env["PYTHONPATH"] = os.path.abspath(pkg_dir) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    code = ("import runpy, sys; sys.argv = ['bench_decode.py'] + sys.argv[1:]; "
            "runpy.run_path('bench/gpu/bench_decode.py', run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code, *bench_args, "--out-dir", out], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"bench_decode.py failed with {pkg_dir}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    files = glob.glob(os.path.join(out, "decode-*.json"))
    if len(files) != 1:
        sys.exit(f"expected one result file in {out}, found {files}")
    with open(files[0]) as f:
        return json.load(f)


def spread(xs):
    return (max(xs) - min(xs)) / statistics.median(xs) if len(xs) > 1 else 0.0


def table(names, runs):
    """runs[name] = list of bench_decode JSONs (one per round). One line per (batch, seqlen_k, layout)."""
    first = runs[names[0]][0]
    layouts, peers = first["layouts"], first["peers"]  # as bench_decode.py ran them
    unit = "us"
    cols = [f"{n:>19}" for n in names] + [f"{p:>9}" for p in peers]
    lines = [f"ioattn time per call ({unit}, median of {len(runs[names[0]])} rounds +- spread; ratio to {names[0]}), "
             f"(> 1: faster); the peers' median over all runs",
             f"batch  seqlen     layout | " + " | ".join(cols), "-" * (28 + 22 * len(names) + 12 * len(peers))]
    for i, row in enumerate(first["rows"]):
        for layout in layouts:
            cells, base = [], None
            for n in names:
                ts = [run["rows"][i][layout]["ms"] * 1e3 for run in runs[n] if "ms" in run["rows"][i][layout]]
                if not ts:
                    cells.append(f"{'error':>19}")
                    continue
                t = statistics.median(ts)
                base = t if base is None else base
                ratio = "" if n == names[0] else f" {base / t:4.2f}x"
                cells.append(f"{t:7.1f} +-{100 * spread(ts):2.0f}%{ratio:>6}")
            for p in peers:
                ts = [run["rows"][i][p]["ms"] * 1e3 for n in names for run in runs[n] if run["rows"][i].get(p, {}).get("ms")]
                cells.append(f"{statistics.median(ts):9.1f}" if ts else f"{'n/a':>9}")
            lines.append(f"{row['batch']:>5} {row['seqlen_k']:>7} {layout:>10} | " + " | ".join(cells))
    return lines


def main():
    argv = sys.argv[1:]
    bench_args = []
    if "--" in argv:
        k = argv.index("--")
        argv, bench_args = argv[:k], argv[k + 1:]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pkg", action="append", required=True,
                    help="NAME=DIR[:VAR=VALUE,...] (repeatable; the first is the base): the package, and environment "
                         "variables set for its runs (the same DIR may run under several names with different ones)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out-dir", default="bench/results")
    args = ap.parse_args(argv)
    pkgs = []
    for spec in args.pkg:
        name, sep, rest = spec.partition("=")
        d, _, env_spec = rest.partition(":")
        extra = dict(kv.split("=", 1) for kv in env_spec.split(",") if "=" in kv)
        if not sep or not name or not os.path.isdir(d):
            sys.exit(f"--pkg {spec!r}: want NAME=DIR[:VAR=VALUE,...] with an existing DIR")
        pkgs.append((name, d, extra))
    names = [n for n, _, _ in pkgs]
    if len(set(names)) != len(names):
        sys.exit("--pkg: names must differ")
    runs = {n: [] for n in names}
    with tempfile.TemporaryDirectory() as work:
        for r in range(args.rounds):
            order = pkgs if r % 2 == 0 else pkgs[::-1]  # alternate which package runs first
            for name, d, extra in order:
                runs[name].append(run_once(d, bench_args, work, extra))
                print(f"round {r + 1}: {name} done", flush=True)
    lines = table(names, runs)
    print("VARIANT TABLE")
    print("\n".join(lines))
    print("END VARIANT TABLE")
    meta = runs[names[0]][0]
    dev = re.sub(r"[^A-Za-z0-9]+", "-", meta.get("device", "device")).strip("-").lower()
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    os.makedirs(args.out_dir, exist_ok=True)
    base = os.path.join(args.out_dir, f"decode-variants-{dev}-{date}")
    n = 2
    path = base
    while os.path.exists(path + ".json"):
        path = f"{base}-run{n}"
        n += 1
    with open(path + ".json", "w") as f:
        json.dump({"packages": {n: {"dir": d, "env": e} for n, d, e in pkgs}, "bench_args": bench_args, "runs": runs}, f, indent=1)
    with open(path + ".txt", "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"saved {path}.json / .txt")


if __name__ == "__main__":
    main()
