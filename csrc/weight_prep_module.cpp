// gpt2fast._weight_prep: preparing the CPU's weights fast. The state of PyTorch's CPU
// generator after any number of draws (mt19937.h) and the pages of fresh tensors made
// present in one call (populate), for gpt2fast/seeded_randn.py; the XXH64 of a tensor's
// bytes (xxh64.h), for gpt2fast/weights.py; the panel packing of a
// Linear weight, in place where it can be (pack_panels.h), for
// gpt2fast/kernels/panel_linear.py. Tensors come in as data pointers; the Python side checks
// them. All release the GIL, so Python threads run them side by side.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

#include "mt19937.h"
#include "pack_panels.h"
#include "xxh64.h"

namespace py = pybind11;

namespace {

// (left, next, the 624 words as little-endian uint32 bytes) after `draws` draws from `seed`.
py::tuple mt19937_after(uint64_t seed, uint64_t draws) {
  gpt2fast::Mt19937State state;
  {
    py::gil_scoped_release release;
    state = gpt2fast::mt19937_after(seed, draws);
  }
  const py::bytes words(reinterpret_cast<const char*>(state.words.data()), sizeof(state.words));
  return py::make_tuple(state.left, state.next, words);
}

uint64_t xxh64(uintptr_t address, uint64_t bytes) {
  py::gil_scoped_release release;
  return gpt2fast::xxh64(reinterpret_cast<const void*>(address), bytes);
}

void pack_panels(uintptr_t weight, int64_t n, int64_t k, uintptr_t panels) {
  if (n < 1 || k < 1) throw std::invalid_argument("pack_panels: empty weight");
  if (weight == panels && n % gpt2fast::kPackWidth != 0) {
    throw std::invalid_argument("pack_panels: in place needs a multiple of 16 rows");
  }
  py::gil_scoped_release release;
  gpt2fast::pack_panels(reinterpret_cast<const float*>(weight), n, k, reinterpret_cast<float*>(panels));
}

// Makes the whole pages inside [address, address + bytes) present and writable at once
// (Linux 5.14+ MADV_POPULATE_WRITE): on a virtual machine a first write to each fresh page
// otherwise traps once per 4 KiB, which costs more than the kernel filling them in one go.
// Returns whether the kernel did; the memory is usable either way.
bool populate(uintptr_t address, uint64_t bytes) {
#if defined(__linux__) && defined(MADV_POPULATE_WRITE)
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t first = (address + page - 1) / page * page;
  const uintptr_t last = (address + bytes) / page * page;
  if (last <= first) return false;
  py::gil_scoped_release release;
  return madvise(reinterpret_cast<void*>(first), last - first, MADV_POPULATE_WRITE) == 0;
#else
  (void)address;
  (void)bytes;
  return false;
#endif
}

}  // namespace

PYBIND11_MODULE(_weight_prep, m) {
  m.doc() = "PyTorch's CPU generator state after d draws; populating pages; XXH64; 16-column weight panels";
  m.attr("MT_WORDS") = gpt2fast::kMtWords;
  m.attr("PANEL_WIDTH") = gpt2fast::kPackWidth;
  m.def("mt19937_after", &mt19937_after, py::arg("seed"), py::arg("draws"),
        "(left, next, words) of an MT19937 seeded with seed (its low 32 bits) after draws draws");
  m.def("populate", &populate, py::arg("address"), py::arg("bytes"),
        "Make the whole pages in [address, address + bytes) present at once; whether the kernel did");
  m.def("xxh64", &xxh64, py::arg("address"), py::arg("bytes"), "XXH64 (seed 0) of the bytes at address");
  m.def("pack_panels", &pack_panels, py::arg("weight"), py::arg("n"), py::arg("k"), py::arg("panels"),
        "Panels [ceil(n/16), k, 16] of the float32 weight [n, k] at address weight, written at panels "
        "(the same address when n % 16 == 0 packs in place)");
}
