// The CPU kernels (flash_kernels.h) compiled for one instruction set.
// Baseline x86-64 (SSE2): runs anywhere; fp16 conversions are scalar.
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

#define IOATTN_CPU_ISA generic
#define IOATTN_CPU_AVX512 0
#define IOATTN_CPU_AVX2 0
#define IOATTN_CPU_BF16 0
#define IOATTN_CPU_ISA_NAME "generic"
#include "cpu/flash_kernels.h"
