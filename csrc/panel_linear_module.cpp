// gpt2fast._panel_linear: the Python face of panel_linear.h. Tensors come in as their data
// pointers and sizes; gpt2fast/backends/cpu_panels.py checks shapes, dtypes and layout
// before calling. Built for any CPU: where the AVX-512 kernel is absent (not x86-64, or no
// OpenMP) or the CPU lacks AVX-512F, `supported()` is False and `linear` raises.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>

#include "panel_linear.h"

namespace py = pybind11;

namespace gpt2fast {

bool panel_linear_supported() {
#ifdef GPT2FAST_PANEL_LINEAR_AVX512
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f");
#else
  return false;
#endif
}

#ifndef GPT2FAST_PANEL_LINEAR_AVX512
void panel_linear(const float*, int64_t, int64_t, const float*, const float*, int64_t, bool, const float*, float*,
                  int) {
  throw std::runtime_error("panel linear: built without the AVX-512 kernel");
}
#endif

}  // namespace gpt2fast

namespace {

const float* as_floats(uintptr_t address) { return reinterpret_cast<const float*>(address); }

void linear(uintptr_t x, int64_t rows, int64_t in_features, uintptr_t panels, uintptr_t bias,
            int64_t out_features, bool gelu, uintptr_t residual, uintptr_t y, int threads) {
  if (!gpt2fast::panel_linear_supported()) {
    throw std::runtime_error("panel linear: this build or CPU has no AVX-512F kernel");
  }
  if (threads < 1) throw std::invalid_argument("panel linear: threads must be at least 1");
  py::gil_scoped_release release;
  gpt2fast::panel_linear(as_floats(x), rows, in_features, as_floats(panels), as_floats(bias), out_features, gelu,
                         as_floats(residual), reinterpret_cast<float*>(y), threads);
}

}  // namespace

PYBIND11_MODULE(_panel_linear, m) {
  m.doc() = "Float32 Linear for few rows on prepacked 16-column weight panels (csrc/panel_linear.h).";
  m.attr("PANEL_WIDTH") = gpt2fast::kPanelWidth;
  m.def("supported", &gpt2fast::panel_linear_supported,
        "Whether the AVX-512 kernel is built in and this CPU can run it.");
  m.def("linear", &linear, py::arg("x"), py::arg("rows"), py::arg("in_features"), py::arg("panels"),
        py::arg("bias"), py::arg("out_features"), py::arg("gelu"), py::arg("residual"), py::arg("y"),
        py::arg("threads"),
        "y = gelu?(x·Wᵀ + bias) (+ residual, unless its address is 0), from data pointers of contiguous "
        "float32 tensors: x [rows, in], panels [ceil(out/16), in, 16], bias [out], y [rows, out] "
        "(y must not overlap x; it may be the residual), on `threads` OpenMP threads.");
}
