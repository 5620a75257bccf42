// IOATTN_HD marks math shared by the CPU backend, the reference and CUDA kernels.
#pragma once
#if defined(__CUDACC__)
#define IOATTN_HD __host__ __device__ __forceinline__
#else
#define IOATTN_HD inline
#endif
