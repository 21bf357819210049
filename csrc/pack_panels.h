// A Linear weight W [n, k] (row-major float32) as the panels the panel kernel reads
// (panel_linear.h): [ceil(n/16), k, 16], panel j holding rows 16j..16j+15 of W (output
// columns) for every k, zero past n. Panel j occupies exactly the bytes of W's rows
// 16j..16j+15, so when n is a multiple of 16 the panels may overwrite W itself: each panel's
// rows are copied aside first (16·k floats).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

namespace gpt2fast {

constexpr int64_t kPackWidth = 16;

// `panels` is either `weight` (n % 16 == 0) or memory that does not overlap it.
inline void pack_panels(const float* weight, int64_t n, int64_t k, float* panels) {
  std::vector<float> rows(kPackWidth * k);
  const int64_t n_panels = (n + kPackWidth - 1) / kPackWidth;
  for (int64_t j = 0; j < n_panels; ++j) {
    const int64_t filled = std::min(kPackWidth, n - j * kPackWidth);
    std::memcpy(rows.data(), weight + j * kPackWidth * k, sizeof(float) * filled * k);
    std::fill(rows.begin() + filled * k, rows.end(), 0.0f);
    float* panel = panels + j * kPackWidth * k;
    for (int64_t c = 0; c < k; ++c) {  // sequential writes, 16 sequential read streams
      for (int64_t r = 0; r < kPackWidth; ++r) panel[c * kPackWidth + r] = rows[r * k + c];
    }
  }
}

}  // namespace gpt2fast
