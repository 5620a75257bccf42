"""Shared-memory wavefronts of the sm90 backward's dQ staging stores, by a bank model (no GPU).

The consumer warpgroups store their fp32 dQ fragment (wgmma accumulator: lane 4 g + q holds row
g (+ 8) and columns 8 dt + 2 q, + 1) with 8-byte stores into TMA tiles. A 64-bit warp store is
served per half warp; a wavefront serves one 4-byte word per bank. Session 12's ncu counted 4
wavefronts per store for the fragment's order in 128-byte swizzled 32-column tiles (2 ideal); this
model gives the same, and prints the count for each order the kernel has tried:
  python3 bench/gpu/probes/dq_staging_banks.py
"""


def wavefronts(addrs):
    total = 0
    for half in (addrs[:16], addrs[16:]):
        banks = {}
        for a in half:
            for word in (a // 4, a // 4 + 1):
                banks.setdefault(word % 32, set()).add(word)
        total += max(len(words) for words in banks.values())
    return total


def swizzle128(off):  # TMA's 128-byte swizzle: 16-byte chunk bits [4:6] ^= row bits [7:9]
    return off ^ (((off >> 7) & 7) << 4)


def staging_addr(row, col, tile_cols, swizzled):
    tile, c = divmod(col, tile_cols)
    off = row * tile_cols * 4 + c * 4
    return tile * 64 * tile_cols * 4 + (swizzle128(off) if swizzled else off)


def counts(tile_cols, swizzled, rho_of_row):
    seen = set()
    for warp in range(4):
        for r in range(2):
            for dt0 in range(0, 16, 4):  # 4 column tiles of 8 at a time (a 32-column group)
                for i in range(4):
                    addrs = []
                    for lane in range(32):
                        row = 16 * warp + lane // 4 + 8 * r
                        dt = dt0 + (i ^ rho_of_row(row))
                        addrs.append(staging_addr(row, 8 * dt + 2 * (lane % 4), tile_cols, swizzled))
                    seen.add(wavefronts(addrs))
    return sorted(seen)


if __name__ == "__main__":
    print("32-column tiles, 128-byte swizzle, the fragment's order:", counts(32, True, lambda row: 0))
    print("  store i takes tile i ^ (row % 4) (two swaps):         ", counts(32, True, lambda row: row % 4))
    print("  store i takes tile i ^ 2 (row % 2) (one swap):        ", counts(32, True, lambda row: 2 * (row % 2)))
    print("8-column tiles, unswizzled, the fragment's order:       ", counts(8, False, lambda row: 0))
    print("(2 wavefronts per 8-byte warp store are the minimum)")
