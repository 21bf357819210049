// gpt2fast._panel_linear: the Python face of panel_linear.h. Tensors come in as their data
// pointers and sizes; gpt2fast/kernels/panel_linear.py checks shapes, dtypes and layout and
// picks the variant before calling. Built for any CPU: `compiled()` names the variants this
// build has (none off x86-64, without OpenMP, or where the compiler lacks the ISA's flags),
// `variants()` those this CPU can also run, fastest first.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "panel_linear.h"

namespace py = pybind11;

namespace {

using Kernel = void (*)(const gpt2fast::PanelLinearArgs&);

struct Variant {
  const char* name;
  bool (*cpu_runs)();  // whether this CPU has the ISA the variant was compiled for
  Kernel kernel;
};

// Fastest first.
const std::vector<Variant>& compiled_variants() {
  static const std::vector<Variant> variants = {
#ifdef GPT2FAST_PANEL_LINEAR_AVX512
      {"avx512", [] { return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma"); },
       &gpt2fast::panel_linear_avx512},
#endif
#ifdef GPT2FAST_PANEL_LINEAR_AVX2
      {"avx2", [] { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); },
       &gpt2fast::panel_linear_avx2},
#endif
  };
  return variants;
}

std::vector<std::string> compiled() {
  std::vector<std::string> names;
  for (const Variant& variant : compiled_variants()) names.emplace_back(variant.name);
  return names;
}

std::vector<std::string> runnable() {
  std::vector<std::string> names;
  for (const Variant& variant : compiled_variants()) {
    if (variant.cpu_runs()) names.emplace_back(variant.name);
  }
  return names;
}

const float* as_floats(uintptr_t address) { return reinterpret_cast<const float*>(address); }

void linear(uintptr_t x, int64_t rows, int64_t in_features, uintptr_t panels, uintptr_t bias,
            int64_t out_features, bool gelu, uintptr_t residual, uintptr_t y, int threads,
            const std::string& variant) {
  if (threads < 1) throw std::invalid_argument("panel linear: threads must be at least 1");
  for (const Variant& candidate : compiled_variants()) {
    if (candidate.name != variant) continue;
    if (!candidate.cpu_runs()) {
      throw std::runtime_error("panel linear: this CPU cannot run the " + variant + " variant");
    }
    const gpt2fast::PanelLinearArgs args{as_floats(x), rows, in_features, as_floats(panels), as_floats(bias),
                                         out_features, gelu, as_floats(residual), reinterpret_cast<float*>(y),
                                         threads};
    py::gil_scoped_release release;
    candidate.kernel(args);
    return;
  }
  throw std::invalid_argument("panel linear: this build has no " + variant + " variant");
}

}  // namespace

PYBIND11_MODULE(_panel_linear, m) {
  m.doc() = "Float32 Linear for few rows on prepacked 16-column weight panels (csrc/panel_linear.h).";
  m.attr("PANEL_WIDTH") = gpt2fast::kPanelWidth;
  m.def("compiled", &compiled, "Names of the kernel variants built in, fastest first.");
  m.def("variants", &runnable, "Names of the variants built in that this CPU runs, fastest first.");
  m.def("linear", &linear, py::arg("x"), py::arg("rows"), py::arg("in_features"), py::arg("panels"),
        py::arg("bias"), py::arg("out_features"), py::arg("gelu"), py::arg("residual"), py::arg("y"),
        py::arg("threads"), py::arg("variant"),
        "y = gelu?(x·Wᵀ + bias) (+ residual, unless its address is 0), from data pointers of contiguous "
        "float32 tensors: x [rows, in], panels [ceil(out/16), in, 16], bias [out], y [rows, out] "
        "(y must not overlap x; it may be the residual), on `threads` OpenMP threads, by the named "
        "variant (one of variants()).");
}
