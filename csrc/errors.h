// The exception the driver raises for file-system failures (becomes OSError in Python).
#pragma once

#include <stdexcept>
#include <string>

namespace gpt2fast {

struct WriteError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// "<what> <path>: <strerror(errno)>" for the current errno.
std::string errno_message(const std::string& what, const std::string& path);

}  // namespace gpt2fast
