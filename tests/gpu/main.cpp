// main() of ioattn_gpu_tests: every test needs a CUDA device. Without one the binary fails loudly
// (a skipped GPU suite must never read as a pass); CI, which has no GPU, leaves it out with
// `ctest -LE GPU`, and scripts/gpu_check.sh runs it on the GPU machine.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstdio>

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count == 0) {
    std::fprintf(stderr, "ioattn_gpu_tests: no CUDA device (%s); these tests need a GPU (scripts/gpu_check.sh)\n",
                 cudaGetErrorString(e));
    return 1;
  }
  return RUN_ALL_TESTS();
}
