// A float32 or float16 .npy file written in place: created with its header and every element
// NaN (create_npy), then opened by each writer (several, for disjoint parts) for positioned
// writes of float32 values (rounded to nearest even for a float16 file).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "array_target.h"

namespace gpt2fast {

class NpyFile : public ArrayTarget {
 public:
  // Opens the existing `path`, which must be what create_npy made for `shape` and `element`.
  NpyFile(const std::string& path, const std::vector<int64_t>& shape, Element element = Element::kFloat32);
  ~NpyFile() override;
  NpyFile(const NpyFile&) = delete;
  NpyFile& operator=(const NpyFile&) = delete;

  void write(int64_t first, const float* values, int64_t count) override;
  void close() override;  // flushes to the disk and closes

  const std::string& path() const { return path_; }
  int64_t header_bytes() const { return header_bytes_; }

 private:
  std::string path_;
  Element element_;
  int fd_ = -1;
  int64_t header_bytes_ = 0;
  int64_t elements_ = 0;
};

// Creates (or replaces) `path` as a C-order array of `shape`, every element NaN, flushed to
// the disk (filled under writing_path(path), then renamed); without `fill`, only its header and
// its size (a sparse file, for a writer that writes every element). Throws WriteError.
void create_npy(const std::string& path, const std::vector<int64_t>& shape, Element element = Element::kFloat32,
                bool fill = true);

// Where a file is written until complete, then renamed to `path`: path + ".tmp" (the Python
// side's outputs.temporary_path, which a run clears before it starts).
std::string writing_path(const std::string& path);

// The .npy v1.0 header (magic, version, length, dict) padded to a multiple of 64 bytes.
std::string npy_header(const std::vector<int64_t>& shape, Element element = Element::kFloat32);

}  // namespace gpt2fast
