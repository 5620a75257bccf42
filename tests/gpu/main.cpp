// main() of ioattn_gpu_tests: every test needs a CUDA device. CI builds the CUDA backends wherever
// nvcc is found but has no GPU, and runs all ctest tests, so without a device every test is
// skipped (reported as such) instead of failing.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

namespace {

class RequireCudaDevice : public ::testing::Environment {
 public:
  void SetUp() override {
    int count = 0;
    const cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || count == 0) {
      cudaGetLastError();
      GTEST_SKIP() << "no CUDA device (" << cudaGetErrorString(e) << "): GPU tests skipped";
    }
  }
};

}  // namespace

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  ::testing::AddGlobalTestEnvironment(new RequireCudaDevice);  // owned by gtest
  return RUN_ALL_TESTS();
}
