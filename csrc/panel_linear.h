// A float32 Linear for few rows on x86-64 CPUs: y = x·Wᵀ + b, optionally through GPT-2's
// GELU, optionally plus a residual, in one variant per vector ISA (AVX-512F, AVX2 + FMA),
// chosen at run time.
//
// The weight is prepacked into 16-column panels, float32 [ceil(N/16), K, 16] (panel j holds
// output columns 16j..16j+15 for every k, zero-padded past N), so a kernel reads it as one
// sequential stream; every variant reads the same layout. See panel_linear_tiles.h for why
// this beats oneDNN at few rows.
#pragma once

#include <cstdint>

namespace gpt2fast {

constexpr int kPanelWidth = 16;

// y [rows, out_features] = x [rows, in_features] · Wᵀ + bias [out_features], then GELU (tanh
// approximation) if `gelu`, then plus residual [rows, out_features] when it is not null. All
// row-major, contiguous, float32; `panels` is the packed W; y must not overlap x (it may be
// the residual). Runs on `threads` OpenMP threads (the caller passes PyTorch's count, which
// OpenMP would otherwise only know on the thread that set it).
struct PanelLinearArgs {
  const float* x;
  int64_t rows;
  int64_t in_features;
  const float* panels;
  const float* bias;
  int64_t out_features;
  bool gelu;
  const float* residual;
  float* y;
  int threads;
};

// Each variant is defined only in builds that compile its file (CMake defines
// GPT2FAST_PANEL_LINEAR_AVX512 / _AVX2); call it only on a CPU with its ISA.
void panel_linear_avx512(const PanelLinearArgs& args);  // 9 rows × 3 panels of zmm
void panel_linear_avx2(const PanelLinearArgs& args);    // 6 rows × 1 panel (2 ymm)

}  // namespace gpt2fast
