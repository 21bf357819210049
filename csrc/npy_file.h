// A float32 .npy file written in place: created with its header and every element NaN
// (create_npy), then opened by each writer (several, for disjoint parts) for positioned writes.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace gpt2fast {

class NpyFile {
 public:
  // Opens the existing `path`, which must be what create_npy made for `shape`.
  NpyFile(const std::string& path, const std::vector<int64_t>& shape);
  ~NpyFile();
  NpyFile(const NpyFile&) = delete;
  NpyFile& operator=(const NpyFile&) = delete;

  // Writes `count` floats at flat element index `first` (C order). Throws WriteError.
  void write(int64_t first, const float* values, int64_t count);
  // Flushes to the disk and closes; later writes are refused.
  void close();

  const std::string& path() const { return path_; }
  int64_t header_bytes() const { return header_bytes_; }

 private:
  std::string path_;
  int fd_ = -1;
  int64_t header_bytes_ = 0;
  int64_t elements_ = 0;
};

// Creates (or truncates) `path` as a C-order float32 array of `shape`, every element NaN,
// flushed to the disk. Throws WriteError.
void create_npy(const std::string& path, const std::vector<int64_t>& shape);

// The .npy v1.0 header (magic, version, length, dict) padded to a multiple of 64 bytes.
std::string npy_header(const std::vector<int64_t>& shape);

}  // namespace gpt2fast
