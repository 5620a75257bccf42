#!/usr/bin/env python3
"""Static SASS metrics of kernel dumps (`cuobjdump --dump-sass --function NAME FILE > x.sass`; the
sm80 backward's dQ update, bench/notes-sm80.md, session 21): instructions, the longest loop's
instructions and some of its opcodes, how many HMMAs within 40 instructions after a REDG write a
register that some REDG reads (a REDG reads its data late, so such an HMMA waits for it), and per
REDG how many instructions later its source registers are first rewritten. cuobjdump runs without a
GPU: `pip download --no-deps nvidia-cuda-cuobjdump`, unzip, nvidia/cu13/bin/cuobjdump.

  python3 bench/gpu/sass_redg.py main.sass branch.sass"""
import collections
import re
import sys

REDS = ('REDG', 'RED')


def load(path):
    """(address, opcode, modifiers, operands) per instruction."""
    ins = []
    for line in open(path):
        m = re.match(r'\s*/\*([0-9a-f]{4,})\*/\s+((?:@!?U?P\w+\s+)?)([A-Z][A-Z0-9_]*)(\S*)\s*(.*?);', line)
        if m:
            ins.append((int(m.group(1), 16), m.group(3), m.group(4), m.group(5)))
    return ins


def red_sources(x):
    """The two data registers of a REDG / RED (its last operand, F32x2 or a pair)."""
    r = int(x[3].split(',')[-1].strip()[1:])
    return {r, r + 1}


def written(y):
    """Registers an instruction writes (its first operand; HMMA's accumulator is 4 wide), or none."""
    if y[1] in REDS + ('STS', 'STG', 'LDGSTS'):
        return set()
    m = re.match(r'R(\d+)', y[3].split(',')[0].strip())
    return set(range(int(m.group(1)), int(m.group(1)) + (4 if y[1] == 'HMMA' else 1))) if m else set()


def report(path):
    ins = load(path)
    loops = []
    for a, op, _, args in ins:
        m = re.search(r'0x([0-9a-f]+)', args) if op == 'BRA' else None
        if m and int(m.group(1), 16) < a:
            loops.append((int(m.group(1), 16), a))
    lo, hi = max(loops, key=lambda x: x[1] - x[0]) if loops else (0, 0)
    body = [x for x in ins if lo <= x[0] <= hi]
    redg = [i for i, x in enumerate(ins) if x[1] in REDS]
    src = set().union(*(red_sources(ins[i]) for i in redg))
    hmma = [ins[j] for i in redg for j in range(i + 1, min(i + 40, len(ins))) if ins[j][1] == 'HMMA']
    hits = sum(bool(written(y) & src) for y in hmma)
    dist = []  # per REDG of the loop: instructions to the first write of its sources (around the loop)
    for i, x in enumerate(body):
        if x[1] in REDS:
            regs = red_sources(x)
            k = next((k for k in range(1, len(body)) if written(body[(i + k) % len(body)]) & regs), None)
            if k is not None:
                dist.append(k)
    med = sorted(dist)[len(dist) // 2] if dist else None
    c = collections.Counter(x[1] for x in body)
    print(f"{path}: {len(ins)} instr, loop {len(body)} (HMMA {c['HMMA']}, REDG {c['REDG']}, BSSY {c['BSSY']}, "
          f"ISETP {c['ISETP']}), HMMAs after a REDG rewriting its sources: {hits} of {len(hmma)}, "
          f"instructions from a REDG to its sources' rewrite: median {med}")


if __name__ == '__main__':
    for p in sys.argv[1:]:
        report(p)
