// The CPU kernels (flash_kernels.h) compiled for one instruction set.
// AVX-512 (F, BW, VL, DQ) with 512-bit vectors: 16-lane exp, max, sums and conversions.
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

#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,prefer-vector-width=512")
#define IOATTN_CPU_ISA avx512
#define IOATTN_CPU_AVX512 1
#define IOATTN_CPU_AVX2 1
#define IOATTN_CPU_BF16 0
#define IOATTN_CPU_ISA_NAME "avx512"
#include "cpu/flash_kernels.h"
