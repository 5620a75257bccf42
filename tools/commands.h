// The subcommands of `ioattn` (main.cpp parses the flags into these).
#pragma once

#include "problem.h"

namespace ioattn_tool {

// `ioattn run`: solve one problem on random inputs, time it, report TFLOP/s, memory, the dispatch
// choice and (with --check) the error against the float64 reference. Returns the exit code.
int run_command(const RunConfig& c);

// `ioattn info`: backends compiled in, devices found, CPU features.
int info_command(bool json);

}  // namespace ioattn_tool
