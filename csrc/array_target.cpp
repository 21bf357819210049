#include "array_target.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "errors.h"

namespace gpt2fast {

int element_bytes(Element element) { return element == Element::kFloat16 ? 2 : 4; }

uint16_t float_to_half(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, 4);
  const uint32_t sign = (bits >> 16) & 0x8000u, magnitude = bits & 0x7fffffffu;
  if (magnitude > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u | ((magnitude >> 13) & 0x3ffu));
  if (magnitude >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // >= 65520: infinity
  if (magnitude < 0x38800000u) {  // below 2^-14: a multiple of 2^-24, exact after scaling, rounded here
    float scaled;
    std::memcpy(&scaled, &magnitude, 4);
    return static_cast<uint16_t>(sign | static_cast<uint32_t>(std::nearbyint(scaled * 16777216.0f)));
  }
  const uint32_t rebased = magnitude - 0x38000000u;  // exponent bias 127 -> 15
  return static_cast<uint16_t>(sign | ((rebased + 0xfffu + ((rebased >> 13) & 1u)) >> 13));
}

void floats_to_halves(const float* values, int64_t count, uint16_t* halves) {
  for (int64_t i = 0; i < count; ++i) halves[i] = float_to_half(values[i]);
}

void MemoryArray::write(int64_t first, const float* values, int64_t count) {
  if (closed_) throw WriteError("write after close: an in-memory array");
  if (first < 0 || count < 0 || first + count > elements_) throw WriteError("write outside an in-memory array");
  if (element_ == Element::kFloat32) {
    std::copy_n(values, count, static_cast<float*>(data_) + first);
    return;
  }
  floats_to_halves(values, count, static_cast<uint16_t*>(data_) + first);
}

}  // namespace gpt2fast
