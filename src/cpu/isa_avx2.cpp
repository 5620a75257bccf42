// The CPU kernels (flash_kernels.h) compiled for one instruction set.
// AVX2 + FMA + F16C (every x86-64 since Haswell / Zen 1): 8-lane loops.
// All headers come before the target pragma, so library, std and libm code stay baseline and no
// symbol built for this instruction set can leak to other callers; see flash_kernels.h.
#include <cblas.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "core/half.h"
#include "core/mask.h"
#include "core/philox.h"
#include "cpu/kernels.h"

#pragma GCC target("avx2,fma,f16c")
#define IOATTN_CPU_ISA avx2
#define IOATTN_CPU_AVX512 0
#define IOATTN_CPU_AVX2 1
#define IOATTN_CPU_BF16 0
#define IOATTN_CPU_ISA_NAME "avx2"
#include "cpu/flash_kernels.h"
