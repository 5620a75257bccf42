// Placeholder until the CPU backend lands (replaced by src/cpu/*).
#include "core/backends.h"
namespace ioattn {
namespace cpu {
Status forward(const Params&) { return {ErrorCode::Unsupported, "cpu backend not built yet"}; }
Status backward(const Params&) { return {ErrorCode::Unsupported, "cpu backend not built yet"}; }
std::string features() { return ""; }
}  // namespace cpu
size_t cpu_peak_scratch_bytes() { return 0; }
void reset_cpu_peak_scratch_bytes() {}
}  // namespace ioattn
