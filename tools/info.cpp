// `ioattn info`: what this build can run on this machine.
#include <cstdio>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "commands.h"
#include "device.h"

namespace ioattn_tool {

int info_command(bool as_json) {
  const ioattn::BuildInfo b = ioattn::build_info();
  const unsigned threads = std::thread::hardware_concurrency();
  if (as_json) {
    nlohmann::ordered_json j;
    j["version"] = b.version;
    j["cpu"] = {{"compiled", true}, {"features", b.cpu_features}, {"hardware_threads", threads}};
    j["cuda"] = {{"compiled", b.cuda_compiled}, {"sm90_kernels", b.cuda_sm90_kernels}, {"device_count", b.cuda_device_count}, {"devices", b.cuda_devices}};
    std::printf("%s\n", j.dump(2).c_str());
    return 0;
  }
  std::printf("ioattn %s\n", b.version.c_str());
  std::printf("backends:\n");
  std::printf("  cpu   compiled      features: %s\n", b.cpu_features.empty() ? "(none reported)" : b.cpu_features.c_str());
  std::printf("  cuda  %s\n", !b.cuda_compiled         ? "not compiled (configure with -DIOATTN_WITH_CUDA=ON where nvcc is installed)"
                               : b.cuda_sm90_kernels ? "compiled      kernels: sm80 (mma.sync), sm90 (TMA + wgmma forward)"
                                                     : "compiled      kernels: sm80 (mma.sync)");
  std::printf("devices:\n");
  std::printf("  cpu   %u hardware threads\n", threads);
  if (b.cuda_compiled) {
    std::printf("  cuda  %d device(s)\n", b.cuda_device_count);
    std::istringstream lines(b.cuda_devices);
    for (std::string line; std::getline(lines, line);)
      if (!line.empty()) std::printf("        %s\n", line.c_str());
  }
  std::printf("default device for `ioattn run`: %s\n", b.cuda_device_count > 0 ? "cuda" : "cpu");
  return 0;
}

}  // namespace ioattn_tool
