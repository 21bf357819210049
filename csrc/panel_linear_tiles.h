// The few-row Linear of panel_linear.h, written once over a vector ISA `V` and compiled per
// ISA: panel_linear_avx512.cpp and panel_linear_avx2.cpp each include this header with their
// own compiler flags and traits. Everything here has internal linkage, so no function
// compiled for one ISA can be merged by the linker into the other's object file.
//
// Why not oneDNN: at few rows (M = P·T ≲ 100) a consensus iteration streams every weight
// from memory once, and oneDNN's small-M GEMM overlaps that stream poorly with its FMAs
// (bench/RESULTS.md). Here each thread streams its own contiguous run of panels exactly
// once, prefetching ahead, and every weight vector it loads feeds up to V::kRowBlock rows
// at once from registers.
//
// Register tile: V::kRowBlock rows × V::kPanelBlock panels; a 16-column panel is
// kPanelWidth / V::kLanes vectors. Per k it loads the tile's weight vectors and broadcasts
// one x value per row. Summation runs over k in order, starting from the bias; then GELU,
// then the residual, as residual + gelu(x·Wᵀ + b).
//
// V provides: Reg, Mask, kLanes, kRowBlock, kPanelBlock; load, masked_load (zeros where the
// mask is off), masked_store, broadcast, fmadd, add, mask_of(columns) (the first `columns`
// lanes, all when columns >= kLanes), and gelu_tanh.
#pragma once

#include <array>
#include <cstdint>
#include <utility>

#include <immintrin.h>

#include "panel_linear.h"

namespace gpt2fast {
namespace {

constexpr int64_t kPrefetchSteps = 64;  // k steps ahead: 4 KiB of each panel's stream

// One register tile: rows [0, MR) of x against NR consecutive panels.
template <typename V>
struct Tile {
  const float* x;          // first row of the tile; row stride in_features
  int64_t in_features;
  const float* panels;     // first panel of the tile; panel stride in_features·16
  const float* bias;       // bias of the tile's first column
  const float* residual;   // null, or the residual at the tile's first row and column
  float* y;                // output at the tile's first row and column
  int64_t out_features;    // row stride of y and residual
  int tail_columns;        // columns of the tile's last panel that exist (1..16)
  bool gelu;               // apply GELU (tanh approximation) before the residual
};

template <typename V, int NR, int MR>
void run_tile(const Tile<V>& t) {
  constexpr int kVectorsPerPanel = kPanelWidth / V::kLanes;
  constexpr int NV = NR * kVectorsPerPanel;
  const int64_t k_count = t.in_features;
  const int64_t panel_stride = k_count * kPanelWidth;
  typename V::Mask masks[NV];
  for (int v = 0; v < NV; ++v) {
    const int in_panel = (v % kVectorsPerPanel) * V::kLanes;
    masks[v] = V::mask_of(v / kVectorsPerPanel == NR - 1 ? t.tail_columns - in_panel : V::kLanes);
  }
  const float* streams[NV];
  for (int v = 0; v < NV; ++v) {
    streams[v] = t.panels + (v / kVectorsPerPanel) * panel_stride + (v % kVectorsPerPanel) * V::kLanes;
  }

  typename V::Reg acc[MR][NV];
  for (int v = 0; v < NV; ++v) {
    const typename V::Reg bias = V::masked_load(t.bias + v * V::kLanes, masks[v]);
    for (int m = 0; m < MR; ++m) acc[m][v] = bias;
  }
  for (int64_t k = 0; k < k_count; ++k) {
    typename V::Reg weight[NV];
    for (int v = 0; v < NV; ++v) {
      const float* stream = streams[v] + k * kPanelWidth;
      // One prefetch per 64-byte line (a panel's k row); prefetches never fault, so
      // running past the end of the weight is harmless.
      if (v % kVectorsPerPanel == 0) {
        _mm_prefetch(reinterpret_cast<const char*>(stream + kPrefetchSteps * kPanelWidth), _MM_HINT_T0);
      }
      weight[v] = V::load(stream);
    }
    for (int m = 0; m < MR; ++m) {
      const typename V::Reg x = V::broadcast(t.x[m * k_count + k]);
      for (int v = 0; v < NV; ++v) acc[m][v] = V::fmadd(x, weight[v], acc[m][v]);
    }
  }
  for (int m = 0; m < MR; ++m) {
    for (int v = 0; v < NV; ++v) {
      const int64_t offset = m * t.out_features + v * V::kLanes;
      typename V::Reg value = t.gelu ? V::gelu_tanh(acc[m][v]) : acc[m][v];
      if (t.residual != nullptr) value = V::add(V::masked_load(t.residual + offset, masks[v]), value);
      V::masked_store(t.y + offset, masks[v], value);
    }
  }
}

template <typename V>
using TileFn = void (*)(const Tile<V>&);

template <typename V, int NR, int... MR>
constexpr std::array<TileFn<V>, V::kRowBlock> tiles_of_width(std::integer_sequence<int, MR...>) {
  return {&run_tile<V, NR, MR + 1>...};
}

// tile_table<V>()[nr - 1][mr - 1] computes a tile of mr rows and nr panels.
template <typename V, int... NR>
constexpr std::array<std::array<TileFn<V>, V::kRowBlock>, V::kPanelBlock> tile_table(
    std::integer_sequence<int, NR...>) {
  return {tiles_of_width<V, NR + 1>(std::make_integer_sequence<int, V::kRowBlock>{})...};
}

inline int64_t smaller(int64_t a, int64_t b) { return a < b ? a : b; }

template <typename V>
void panel_linear_on(const PanelLinearArgs& a) {
  static constexpr auto kTiles = tile_table<V>(std::make_integer_sequence<int, V::kPanelBlock>{});
  const int64_t n_panels = (a.out_features + kPanelWidth - 1) / kPanelWidth;
  const int64_t n_groups = (n_panels + V::kPanelBlock - 1) / V::kPanelBlock;
  const int tail_columns = static_cast<int>(a.out_features - (n_panels - 1) * kPanelWidth);

  // Tiles in order (panel group, then row block), split into contiguous runs: with more tiles
  // than threads each thread owns whole panel groups and streams their weights once, the
  // later row blocks reading them from its cache; with fewer groups than threads (many
  // cores), the row blocks of a group spread over threads too.
  const int64_t n_row_blocks = (a.rows + V::kRowBlock - 1) / V::kRowBlock;
#pragma omp parallel for schedule(static) num_threads(a.threads)
  for (int64_t index = 0; index < n_groups * n_row_blocks; ++index) {
    const int64_t first_panel = index / n_row_blocks * V::kPanelBlock;
    const int64_t row = index % n_row_blocks * V::kRowBlock;
    const int64_t width = smaller(V::kPanelBlock, n_panels - first_panel);
    const int64_t height = smaller(V::kRowBlock, a.rows - row);
    const int64_t column = first_panel * kPanelWidth;
    const bool holds_tail = first_panel + width == n_panels;
    const Tile<V> tile{a.x + row * a.in_features,
                       a.in_features,
                       a.panels + first_panel * a.in_features * kPanelWidth,
                       a.bias + column,
                       a.residual == nullptr ? nullptr : a.residual + row * a.out_features + column,
                       a.y + row * a.out_features + column,
                       a.out_features,
                       holds_tail ? tail_columns : kPanelWidth,
                       a.gelu};
    kTiles[width - 1][height - 1](tile);
  }
}

}  // namespace
}  // namespace gpt2fast
