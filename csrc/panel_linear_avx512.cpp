// The AVX-512 kernel of panel_linear.h (this file alone is compiled with -mavx512f).
//
// Why not oneDNN: at few rows (M = P·T ≲ 100) a consensus iteration streams every weight
// from memory once, and oneDNN's small-M GEMM overlaps that stream poorly with its FMAs
// (about 150 GFLOP/s for gpt2 at M = 27 on the 2-core development machine, where a hot
// weight gives 250 and the memory alone allows about 25 GB/s). Here each thread streams its
// own contiguous run of panels exactly once, prefetching ahead, and every weight vector it
// loads feeds up to kRowBlock rows at once from registers (bench/RESULTS.md has the numbers).
//
// Register tile: kRowBlock rows × kPanelBlock panels = 27 zmm accumulators; per k it loads
// kPanelBlock weight vectors and broadcasts kRowBlock x values. Summation runs over k in
// order, starting from the bias; then GELU, then the residual, as residual + gelu(x·Wᵀ + b).
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
  bool gelu;               // apply GELU (tanh approximation) before the residual
};

// e^a, to about 2 ulp: a = n·ln 2 + r with |r| <= ln 2 / 2, e^r by its degree-7 Taylor
// polynomial (truncation below 1e-8), times 2^n by scalef (which overflows to inf and
// underflows to 0 as e^a does).
__m512 exp_ps(__m512 a) {
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(a, _mm512_set1_ps(1.44269504f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145752f), a);  // ln 2, high bits
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860677e-6f), r);        // ln 2, the rest
  __m512 p = _mm512_set1_ps(1.0f / 5040);
  for (const float c : {1.0f / 720, 1.0f / 120, 1.0f / 24, 1.0f / 6, 0.5f, 1.0f, 1.0f}) {
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
  }
  return _mm512_scalef_ps(p, n);
}

// GPT-2's GELU, 0.5·v·(1 + tanh(u)) with u = sqrt(2/π)·(v + 0.044715·v³), written as
// v / (1 + e^(-2u)) (the same function; no cancellation where tanh(u) is near -1).
__m512 gelu_tanh_ps(__m512 v) {
  const __m512 cube = _mm512_mul_ps(_mm512_mul_ps(v, v), v);
  const __m512 u = _mm512_mul_ps(_mm512_set1_ps(0.797884561f), _mm512_fmadd_ps(_mm512_set1_ps(0.044715f), cube, v));
  const __m512 clamped = _mm512_max_ps(_mm512_mul_ps(u, _mm512_set1_ps(-2.0f)), _mm512_set1_ps(-100.0f));
  return _mm512_div_ps(v, _mm512_add_ps(_mm512_set1_ps(1.0f), exp_ps(_mm512_min_ps(clamped, _mm512_set1_ps(100.0f)))));
}

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
      __m512 value = t.gelu ? gelu_tanh_ps(acc[m][n]) : acc[m][n];
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
                  const float* bias, int64_t out_features, bool gelu, const float* residual, float* y,
                  int threads) {
  const int64_t n_panels = (out_features + kPanelWidth - 1) / kPanelWidth;
  const int64_t n_groups = (n_panels + kPanelBlock - 1) / kPanelBlock;
  const int tail_columns = static_cast<int>(out_features - (n_panels - 1) * kPanelWidth);
  const __mmask16 tail_mask = static_cast<__mmask16>((1u << tail_columns) - 1u);

  // Tiles in order (panel group, then row block), split into contiguous runs: with more tiles
  // than threads each thread owns whole panel groups and streams their weights once, the
  // later row blocks reading them from its cache; with fewer groups than threads (many
  // cores), the row blocks of a group spread over threads too.
  const int64_t n_row_blocks = (rows + kRowBlock - 1) / kRowBlock;
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t index = 0; index < n_groups * n_row_blocks; ++index) {
    const int64_t first_panel = index / n_row_blocks * kPanelBlock;
    const int64_t row = index % n_row_blocks * kRowBlock;
    const int64_t width = std::min<int64_t>(kPanelBlock, n_panels - first_panel);
    const int64_t height = std::min<int64_t>(kRowBlock, rows - row);
    const int64_t column = first_panel * kPanelWidth;
    const bool holds_tail = first_panel + width == n_panels;
    const Tile tile{x + row * in_features,
                    in_features,
                    panels + first_panel * in_features * kPanelWidth,
                    bias + column,
                    residual == nullptr ? nullptr : residual + row * out_features + column,
                    y + row * out_features + column,
                    out_features,
                    holds_tail ? tail_mask : __mmask16(0xFFFF),
                    gelu};
    kTiles[width - 1][height - 1](tile);
  }
}

}  // namespace gpt2fast
