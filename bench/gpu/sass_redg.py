#!/usr/bin/env python3
"""Static SASS metrics of kernel dumps (`cuobjdump --dump-sass --function NAME FILE > x.sass`; the
sm80 backward's dQ update, bench/notes-sm80.md, session 21): instructions, the longest loop's
instructions and some of its opcodes, how many HMMAs within 40 instructions after a REDG write a
register that REDG reads (a REDG reads its data late, so such an HMMA waits for it), and per REDG
how many instructions later its source registers are first rewritten. cuobjdump runs without a GPU:
`pip download --no-deps nvidia-cuda-cuobjdump`, unzip, nvidia/cu13/bin/cuobjdump.

  python3 bench/gpu/sass_redg.py main.sass branch.sass"""
import collections, re, sys
def load(f):
    ins = []
    for l in open(f):
        m = re.match(r'\s*/\*([0-9a-f]{4,})\*/\s+((?:@!?U?P\w+\s+)?)([A-Z][A-Z0-9_]*)(\S*)\s*(.*?);', l)
        if m: ins.append((int(m.group(1), 16), m.group(3), m.group(4), m.group(5)))
    return ins
for f in sys.argv[1:]:
    ins = load(f)
    loops = []
    for a, op, mod, args in ins:
        if op == 'BRA':
            m = re.search(r'0x([0-9a-f]+)', args)
            if m and int(m.group(1), 16) < a: loops.append((int(m.group(1), 16), a))
    lo, hi = max(loops, key=lambda x: x[1] - x[0]) if loops else (0, 0)
    body = [x for x in ins if lo <= x[0] <= hi]
    redg = [i for i, x in enumerate(ins) if x[1] in ('REDG', 'RED')]
    src = set()
    for i in redg:
        n = int(ins[i][3].split(',')[-1].strip()[1:]); src.update({n, n + 1})
    hits = tot = 0
    for i in redg:
        for j in range(i + 1, min(i + 40, len(ins))):
            if ins[j][1] == 'HMMA':
                tot += 1
                d = int(ins[j][3].split(',')[0].strip()[1:])
                hits += any(x in src for x in range(d, d + 4))
    c = collections.Counter(x[1] for x in body)
    dist = []  # per REDG: instructions to the first write of one of its source registers (around the loop)
    n = len(body)
    for i, x in enumerate(body):
        if x[1] not in ('REDG', 'RED'):
            continue
        r = int(x[3].split(',')[-1].strip()[1:])
        for k in range(1, n):
            y = body[(i + k) % n]
            m = re.match(r'R(\d+)', y[3].split(',')[0].strip()) if y[1] not in ('REDG', 'RED', 'STS', 'STG', 'LDGSTS') else None
            if m and {r, r + 1} & set(range(int(m.group(1)), int(m.group(1)) + (4 if y[1] == 'HMMA' else 1))):
                dist.append(k)
                break
    med = sorted(dist)[len(dist) // 2] if dist else None
    print(f"{f}: {len(ins)} instr, loop {len(body)} (HMMA {c['HMMA']}, REDG {c['REDG']}, BSSY {c['BSSY']}, "
          f"ISETP {c['ISETP']}), HMMAs after a REDG rewriting its sources: {hits} of {tot}, "
          f"instructions from a REDG to its sources' rewrite: median {med}")
