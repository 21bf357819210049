#include "npy_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>

#include "errors.h"

namespace gpt2fast {

namespace {
constexpr int64_t kFillBlockElements = 4 << 20;  // NaN per write while filling (16 MiB of float32)
constexpr int64_t kHeaderAlign = 64;
}  // namespace

std::string errno_message(const std::string& what, const std::string& path) {
  return what + " " + path + ": " + std::strerror(errno);
}

std::string writing_path(const std::string& path) { return path + ".tmp"; }

std::string npy_header(const std::vector<int64_t>& shape, Element element) {
  std::string dims;
  for (size_t k = 0; k < shape.size(); ++k) {
    dims += std::to_string(shape[k]);
    if (k + 1 < shape.size()) dims += ", ";
  }
  if (shape.size() == 1) dims += ",";  // numpy writes a 1-tuple as "(5,)"
  const std::string descr = element == Element::kFloat16 ? "<f2" : "<f4";
  std::string dict = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': (" + dims + "), }";
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

namespace {

void write_fully(int fd, const char* bytes, int64_t size, int64_t offset, const std::string& path) {
  while (size > 0) {
    ssize_t written = ::pwrite(fd, bytes, static_cast<size_t>(size), offset);
    if (written < 0) {
      if (errno == EINTR) continue;
      throw WriteError(errno_message("cannot write", path));
    }
    bytes += written;
    offset += written;
    size -= written;
  }
}

// fsync, then close; a file system without fsync (EINVAL, EROFS) is not a failure.
void flush_and_close(int fd, const std::string& path) {
  if (::fsync(fd) != 0 && errno != EINVAL && errno != EROFS) {
    const std::string message = errno_message("cannot flush", path);
    ::close(fd);
    throw WriteError(message);
  }
  if (::close(fd) != 0) throw WriteError(errno_message("cannot close", path));
}

int64_t element_count(const std::vector<int64_t>& shape) {
  int64_t elements = 1;
  for (int64_t size : shape) elements *= size;
  return elements;
}

}  // namespace

void create_npy(const std::string& path, const std::vector<int64_t>& shape, Element element, bool fill) {
  const int64_t elements = element_count(shape), bytes = element_bytes(element);
  const std::string header = npy_header(shape, element);
  // a filled file appears at `path` only once every element is NaN (killed while filling, a
  // run leaves writing_path(path), which the next run removes; never zeros that read as values)
  const std::string made = fill ? writing_path(path) : path;
  const int fd = ::open(made.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw WriteError(errno_message("cannot create", path));
  try {
    write_fully(fd, header.data(), static_cast<int64_t>(header.size()), 0, path);
    // full size first: a full disk or a file-size limit is found before any filling
    if (::ftruncate(fd, static_cast<off_t>(header.size()) + elements * bytes) != 0) {
      throw WriteError(errno_message("cannot size", path));
    }
    if (!fill) {
      ::close(fd);
      return;
    }
    const float nan = std::numeric_limits<float>::quiet_NaN();
    const uint16_t half_nan = float_to_half(nan);
    std::vector<char> nan_block(static_cast<size_t>(std::min(elements, kFillBlockElements) * bytes));
    for (size_t at = 0; at < nan_block.size(); at += static_cast<size_t>(bytes)) {
      std::memcpy(nan_block.data() + at, bytes == 2 ? static_cast<const void*>(&half_nan) : &nan,
                  static_cast<size_t>(bytes));
    }
    for (int64_t first = 0; first < elements; first += kFillBlockElements) {
      write_fully(fd, nan_block.data(), std::min(kFillBlockElements, elements - first) * bytes,
                  static_cast<int64_t>(header.size()) + first * bytes, path);
    }
  } catch (...) {
    ::close(fd);
    ::unlink(made.c_str());
    throw;
  }
  flush_and_close(fd, path);
  if (std::rename(made.c_str(), path.c_str()) != 0) throw WriteError(errno_message("cannot rename to", path));
}

NpyFile::NpyFile(const std::string& path, const std::vector<int64_t>& shape, Element element)
    : path_(path), element_(element) {
  elements_ = element_count(shape);
  const std::string header = npy_header(shape, element);
  header_bytes_ = static_cast<int64_t>(header.size());
  fd_ = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd_ < 0) throw WriteError(errno_message("cannot open", path));
  std::string found(header.size(), '\0');
  struct stat status {};
  if (::pread(fd_, found.data(), found.size(), 0) != static_cast<ssize_t>(found.size()) || found != header ||
      ::fstat(fd_, &status) != 0 || status.st_size != header_bytes_ + elements_ * element_bytes(element)) {
    ::close(fd_);
    fd_ = -1;
    throw WriteError(path + " is not the array this run created (another run replaced it?)");
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
  if (element_ == Element::kFloat32) {
    write_fully(fd_, reinterpret_cast<const char*>(values), count * 4, header_bytes_ + first * 4, path_);
    return;
  }
  thread_local std::vector<uint16_t> halves;  // per thread: writers may share the file
  halves.resize(static_cast<size_t>(count));
  floats_to_halves(values, count, halves.data());
  write_fully(fd_, reinterpret_cast<const char*>(halves.data()), count * 2, header_bytes_ + first * 2, path_);
}

void NpyFile::close() {
  if (fd_ < 0) return;
  const int fd = fd_;
  fd_ = -1;
  flush_and_close(fd, path_);
}

}  // namespace gpt2fast
