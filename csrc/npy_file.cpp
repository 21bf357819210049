#include "npy_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <limits>

#include "errors.h"

namespace gpt2fast {

namespace {
constexpr int64_t kFillBlockFloats = 4 << 20;  // 16 MiB of NaN per write while filling
constexpr int64_t kHeaderAlign = 64;
}  // namespace

std::string errno_message(const std::string& what, const std::string& path) {
  return what + " " + path + ": " + std::strerror(errno);
}

std::string npy_header(const std::vector<int64_t>& shape) {
  std::string dims;
  for (size_t k = 0; k < shape.size(); ++k) {
    dims += std::to_string(shape[k]);
    if (k + 1 < shape.size()) dims += ", ";
  }
  if (shape.size() == 1) dims += ",";  // numpy writes a 1-tuple as "(5,)"
  std::string dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + dims + "), }";
  const int64_t prefix = 10;  // magic (6) + version (2) + header length (2)
  int64_t total = prefix + static_cast<int64_t>(dict.size()) + 1;
  int64_t padded = (total + kHeaderAlign - 1) / kHeaderAlign * kHeaderAlign;
  dict.append(padded - total, ' ');
  dict.push_back('\n');
  const uint16_t length = static_cast<uint16_t>(dict.size());
  std::string header("\x93NUMPY\x01\x00", 8);
  header.push_back(static_cast<char>(length & 0xff));
  header.push_back(static_cast<char>(length >> 8));
  return header + dict;
}

NpyFile::NpyFile(const std::string& path, const std::vector<int64_t>& shape) : path_(path) {
  elements_ = 1;
  for (int64_t size : shape) elements_ *= size;
  const std::string header = npy_header(shape);
  header_bytes_ = static_cast<int64_t>(header.size());
  fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) throw WriteError(errno_message("cannot create", path));
  write_all(header.data(), header_bytes_, 0);
  const std::vector<float> nan_block(
      static_cast<size_t>(std::min(elements_, kFillBlockFloats)),
      std::numeric_limits<float>::quiet_NaN());
  for (int64_t first = 0; first < elements_; first += kFillBlockFloats) {
    write(first, nan_block.data(), std::min(kFillBlockFloats, elements_ - first));
  }
}

NpyFile::~NpyFile() {
  if (fd_ >= 0) ::close(fd_);
}

void NpyFile::write(int64_t first, const float* values, int64_t count) {
  if (fd_ < 0) throw WriteError("write after close: " + path_);
  if (first < 0 || count < 0 || first + count > elements_) {
    throw WriteError("write outside the array in " + path_);
  }
  write_all(reinterpret_cast<const char*>(values), count * 4, header_bytes_ + first * 4);
}

void NpyFile::write_all(const char* bytes, int64_t size, int64_t offset) {
  while (size > 0) {
    ssize_t written = ::pwrite(fd_, bytes, static_cast<size_t>(size), offset);
    if (written < 0) {
      if (errno == EINTR) continue;
      throw WriteError(errno_message("cannot write", path_));
    }
    bytes += written;
    offset += written;
    size -= written;
  }
}

void NpyFile::close() {
  if (fd_ < 0) return;
  const int fd = fd_;
  fd_ = -1;
  if (::fsync(fd) != 0 && errno != EINVAL && errno != EROFS) {
    const std::string message = errno_message("cannot flush", path_);
    ::close(fd);
    throw WriteError(message);
  }
  if (::close(fd) != 0) throw WriteError(errno_message("cannot close", path_));
}

}  // namespace gpt2fast
