// A float32 .npy file written in place: header, NaN fill, then positioned writes.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace gpt2fast {

class NpyFile {
 public:
  // Creates (or truncates) `path` as a C-order float32 array of `shape`, every element NaN.
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
  void write_all(const char* bytes, int64_t size, int64_t offset);

  std::string path_;
  int fd_ = -1;
  int64_t header_bytes_ = 0;
  int64_t elements_ = 0;
};

// The .npy v1.0 header (magic, version, length, dict) padded to a multiple of 64 bytes.
std::string npy_header(const std::vector<int64_t>& shape);

}  // namespace gpt2fast
