// Where the writer puts an output array: a .npy file on the disk (NpyFile) or an array in
// memory that the caller owns (MemoryArray: the API's in-memory results, no file at all).
#pragma once

#include <cstdint>

namespace gpt2fast {

enum class Element { kFloat32, kFloat16 };

int element_bytes(Element element);

// IEEE binary16 bits of `value`, rounded to nearest even (overflow to infinity, NaN quiet).
uint16_t float_to_half(float value);

// halves[i] = float_to_half(values[i]) for i < count.
void floats_to_halves(const float* values, int64_t count, uint16_t* halves);

class ArrayTarget {
 public:
  virtual ~ArrayTarget() = default;
  // Writes `count` float32 values at flat element index `first` (C order), in the target's
  // element type (float16: rounded to nearest even). Threads may write disjoint parts at
  // once. Throws WriteError.
  virtual void write(int64_t first, const float* values, int64_t count) = 0;
  // Flushes what was written (to the disk, for a file); later writes are refused.
  virtual void close() = 0;
};

// `elements` values of `element` at `data`, owned by the caller, who keeps them alive and
// NaN-filled beforehand (the writer writes only what the run computes).
class MemoryArray : public ArrayTarget {
 public:
  MemoryArray(void* data, int64_t elements, Element element) : data_(data), elements_(elements), element_(element) {}
  void write(int64_t first, const float* values, int64_t count) override;
  void close() override { closed_ = true; }

 private:
  void* data_;
  int64_t elements_;
  Element element_;
  bool closed_ = false;
};

}  // namespace gpt2fast
