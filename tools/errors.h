// How `ioattn` fails. Exit codes: 0 success; 2 a bad flag or value, or a call the library rejects
// (validation, Unsupported); 1 a failure while running (BackendError, CUDA runtime, allocation, a
// failed --check).
#pragma once

#include <stdexcept>
#include <string>

#include "ioattn/ioattn.h"

namespace ioattn_tool {

struct RuntimeFailure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// A library call returned an error Status; `what` names the call.
struct StatusError : std::runtime_error {
  StatusError(const std::string& what, ioattn::Status s)
      : std::runtime_error(what + ": " + ioattn::error_code_name(s.code) + ": " + s.message), status(std::move(s)) {}
  int exit_code() const { return status.code == ioattn::ErrorCode::BackendError ? 1 : 2; }
  ioattn::Status status;
};

inline void throw_if_error(const ioattn::Status& s, const std::string& what) {
  if (!s.ok()) throw StatusError(what, s);
}

}  // namespace ioattn_tool
