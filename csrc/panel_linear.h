// A float32 Linear for few rows on x86-64 CPUs with AVX-512: y = x·Wᵀ + b, optionally
// through GPT-2's GELU, optionally plus a residual.
//
// The weight is prepacked into 16-column panels, float32 [ceil(N/16), K, 16] (panel j holds
// output columns 16j..16j+15 for every k, zero-padded past N), so a kernel reads it as one
// sequential stream. See panel_linear_avx512.cpp for why this beats oneDNN at few rows.
#pragma once

#include <cstdint>

namespace gpt2fast {

constexpr int kPanelWidth = 16;

// Whether this build has the kernel and the CPU runs AVX-512F.
bool panel_linear_supported();

// y [rows, out_features] = x [rows, in_features] · Wᵀ + bias [out_features], then GELU (tanh
// approximation) if `gelu`, then plus residual [rows, out_features] when it is not null. All
// row-major, contiguous, float32; `panels` is the packed W; y must not overlap x (it may be
// the residual). Runs on `threads` OpenMP threads (the caller passes PyTorch's count, which
// OpenMP would otherwise only know on the thread that set it). Call only where
// panel_linear_supported().
void panel_linear(const float* x, int64_t rows, int64_t in_features, const float* panels,
                  const float* bias, int64_t out_features, bool gelu, const float* residual, float* y,
                  int threads);

}  // namespace gpt2fast
