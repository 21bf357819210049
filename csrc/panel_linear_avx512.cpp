// The AVX-512 kernel of panel_linear.h (this file alone is compiled with -mavx512f).
//
// Why not oneDNN: at few rows (M = P·T ≲ 48) a consensus iteration streams every weight
// from memory once, and oneDNN's small-M GEMM overlaps that stream poorly with its FMAs
// (about 150 GFLOP/s for gpt2 at M = 27 on the 2-core development machine, where a hot
// weight gives 250 and the memory alone allows about 25 GB/s). Here each thread streams its
// own contiguous run of panels exactly once, prefetching ahead, and every weight vector it
// loads feeds up to kRowBlock rows at once from registers (bench/RESULTS.md has the numbers).
//
// Register tile: kRowBlock rows × kPanelBlock panels = 27 zmm accumulators; per k it loads
// kPanelBlock weight vectors and broadcasts kRowBlock x values. Summation runs over k in
// order, starting from the bias; the residual is added last, as residual + (x·Wᵀ + b).
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <utility>

#include "panel_linear.h"

namespace gpt2fast {

namespace {

constexpr int kRowBlock = 9;
constexpr int kPanelBlock = 3;
constexpr int64_t kPrefetchSteps = 64;  // k steps ahead: 4 KiB of each panel's stream

// One register tile: rows [0, MR) of x against NR consecutive panels.
struct Tile {
  const float* x;          // first row of the tile; row stride in_features
  int64_t in_features;
  const float* panels;     // first panel of the tile; panel stride in_features·16
  const float* bias;       // bias of the tile's first column
  const float* residual;   // null, or the residual at the tile's first row and column
  float* y;                // output at the tile's first row and column
  int64_t out_features;    // row stride of y and residual
  __mmask16 last_mask;     // columns of the tile's last panel that exist (< N)
};

template <int NR, int MR>
void run_tile(const Tile& t) {
  const int64_t k_count = t.in_features;
  const int64_t panel_stride = k_count * kPanelWidth;
  __mmask16 masks[NR];
  for (int n = 0; n < NR; ++n) masks[n] = n == NR - 1 ? t.last_mask : __mmask16(0xFFFF);

  __m512 acc[MR][NR];
  for (int n = 0; n < NR; ++n) {
    const __m512 bias = _mm512_maskz_loadu_ps(masks[n], t.bias + n * kPanelWidth);
    for (int m = 0; m < MR; ++m) acc[m][n] = bias;
  }
  for (int64_t k = 0; k < k_count; ++k) {
    __m512 weight[NR];
    for (int n = 0; n < NR; ++n) {
      const float* stream = t.panels + n * panel_stride + k * kPanelWidth;
      // Prefetches never fault, so running past the end of the weight is harmless.
      _mm_prefetch(reinterpret_cast<const char*>(stream + kPrefetchSteps * kPanelWidth), _MM_HINT_T0);
      weight[n] = _mm512_loadu_ps(stream);
    }
    for (int m = 0; m < MR; ++m) {
      const __m512 x = _mm512_set1_ps(t.x[m * k_count + k]);
      for (int n = 0; n < NR; ++n) acc[m][n] = _mm512_fmadd_ps(x, weight[n], acc[m][n]);
    }
  }
  for (int m = 0; m < MR; ++m) {
    for (int n = 0; n < NR; ++n) {
      const int64_t offset = m * t.out_features + n * kPanelWidth;
      __m512 value = acc[m][n];
      if (t.residual != nullptr) value = _mm512_add_ps(_mm512_maskz_loadu_ps(masks[n], t.residual + offset), value);
      _mm512_mask_storeu_ps(t.y + offset, masks[n], value);
    }
  }
}

using TileFn = void (*)(const Tile&);

template <int NR, int... MR>
constexpr std::array<TileFn, kRowBlock> tiles_of_width(std::integer_sequence<int, MR...>) {
  return {&run_tile<NR, MR + 1>...};
}

// kTiles[nr - 1][mr - 1] computes a tile of mr rows and nr panels.
constexpr std::array<std::array<TileFn, kRowBlock>, kPanelBlock> kTiles = {
    tiles_of_width<1>(std::make_integer_sequence<int, kRowBlock>{}),
    tiles_of_width<2>(std::make_integer_sequence<int, kRowBlock>{}),
    tiles_of_width<3>(std::make_integer_sequence<int, kRowBlock>{}),
};

}  // namespace

void panel_linear(const float* x, int64_t rows, int64_t in_features, const float* panels,
                  const float* bias, int64_t out_features, const float* residual, float* y) {
  const int64_t n_panels = (out_features + kPanelWidth - 1) / kPanelWidth;
  const int64_t n_groups = (n_panels + kPanelBlock - 1) / kPanelBlock;
  const int tail_columns = static_cast<int>(out_features - (n_panels - 1) * kPanelWidth);
  const __mmask16 tail_mask = static_cast<__mmask16>((1u << tail_columns) - 1u);

  // Each thread takes a contiguous run of panel groups and streams its weights once.
#pragma omp parallel for schedule(static)
  for (int64_t group = 0; group < n_groups; ++group) {
    const int64_t first_panel = group * kPanelBlock;
    const int64_t width = std::min<int64_t>(kPanelBlock, n_panels - first_panel);
    const int64_t column = first_panel * kPanelWidth;
    const bool holds_tail = first_panel + width == n_panels;
    for (int64_t row = 0; row < rows; row += kRowBlock) {
      const int64_t height = std::min<int64_t>(kRowBlock, rows - row);
      const Tile tile{x + row * in_features,
                      in_features,
                      panels + first_panel * in_features * kPanelWidth,
                      bias + column,
                      residual == nullptr ? nullptr : residual + row * out_features + column,
                      y + row * out_features + column,
                      out_features,
                      holds_tail ? tail_mask : __mmask16(0xFFFF)};
      kTiles[width - 1][height - 1](tile);
    }
  }
}

}  // namespace gpt2fast
