"""Several Nsight Compute profiles side by side (scripts/ncu_profile.sh's files: NAME.txt, the details
page, and NAME-sass.csv.gz, the source page): key metrics, the executed SASS opcode mix, and the warp
stall samples by reason. Used in session 15 to set our sm80 kernels beside flash-attn 2's on the same
shapes (bench/notes-sm80.md).
  python3 bench/gpu/ncu_compare.py DIR fwd256_ours fwd256_fa2 [--ops 30]"""
import argparse
import collections
import csv
import gzip
import os
import re

METRICS = ["Duration", "Registers Per Thread", "Block Size", "Dynamic Shared Memory Per Block",
           "Achieved Occupancy", "Executed Instructions", "Issue Slots Busy", "Executed Ipc Active",
           "L2 Hit Rate", "DRAM Throughput"]
STALLS = ["stall_wait", "stall_short_sb", "stall_long_sb", "stall_mio", "stall_math", "stall_barrier",
          "stall_branch_resolving", "stall_selected", "stall_not_selected", "stall_dispatch", "stall_no_inst",
          "stall_lg", "stall_drain"]


def details(path):
    out = {}
    for line in open(path, errors="replace"):
        for m in METRICS:
            if m not in out and re.match(r"\s*" + re.escape(m) + r"\s", line):
                parts = line.split()
                out[m] = parts[-2] + " " + parts[-1] if m == "Duration" else parts[-1]
    return out


def sass(path):
    rows = list(csv.reader(gzip.open(path, "rt")))
    hdr = rows[1]
    col = {h: i for i, h in enumerate(hdr)}
    ops, stalls = collections.Counter(), collections.Counter()
    for r in rows[2:]:
        if len(r) < len(hdr):
            continue
        words = r[col["Source"]].split()
        op = words[1] if words[0].startswith("@") else words[0]
        ops[op.split(".")[0]] += int(r[col["Instructions Executed"]] or 0)
        for s in STALLS:
            stalls[s] += int(r[col[s]] or 0) if s in col else 0
    return ops, stalls


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir")
    ap.add_argument("names", nargs="+")
    ap.add_argument("--ops", type=int, default=25, help="opcodes shown (most executed first)")
    a = ap.parse_args()
    names = a.names
    det = {n: details(os.path.join(a.dir, n + ".txt")) for n in names}
    prof = {n: sass(os.path.join(a.dir, n + "-sass.csv.gz")) for n in names}
    w = max(12, max(len(n) for n in names) + 1)
    head = lambda title: print(f"{title:32s}" + "".join(f"{n:>{w}s}" for n in names))
    head("metric")
    for m in METRICS:
        print(f"{m:32s}" + "".join(f"{det[n].get(m, '-'):>{w}s}" for n in names))
    print()
    head("executed instructions by opcode")
    total = collections.Counter()
    for n in names:
        total.update(prof[n][0])
    for op, _ in total.most_common(a.ops):
        print(f"{op:32s}" + "".join(f"{prof[n][0][op]:>{w}d}" for n in names))
    print(f"{'(all)':32s}" + "".join(f"{sum(prof[n][0].values()):>{w}d}" for n in names))
    print()
    head("stall samples by reason")
    for s in STALLS:
        print(f"{s:32s}" + "".join(f"{prof[n][1][s]:>{w}d}" for n in names))
    print(f"{'(all)':32s}" + "".join(f"{sum(prof[n][1].values()):>{w}d}" for n in names))


if __name__ == "__main__":
    main()
