// gpt2fast._driver: the N-iteration loop of a consensus run, in C++.
//
// The backend supplies one iteration as an opaque step: a Python callable (CPU, or any
// device) that writes the iteration's metrics into a staging slot, or a captured CUDA graph
// that writes them to fixed device buffers, which the driver copies into pinned slots with
// no Python per iteration (a graph may start at a later iteration, the earlier ones then
// running through the callable). Full slots go to the ChunkWriter's thread while the next
// chunk computes. A stop request (the first Ctrl-C / SIGTERM) ends the loop at the next iteration
// with everything computed so far written.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <future>
#include <memory>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "array_target.h"
#include "chunk_writer.h"
#include "cuda_api.h"
#include "errors.h"
#include "npy_file.h"
#include "run_shape.h"

namespace py = pybind11;

namespace gpt2fast {

namespace {

constexpr unsigned int kEventDisableTiming = 0x2;

Element element_named(const std::string& dtype) {
  if (dtype == "float32") return Element::kFloat32;
  if (dtype == "float16") return Element::kFloat16;
  throw std::invalid_argument("dtype must be float32 or float16, got " + dtype);
}

RunShape checked_shape(const RunShape& shape) {
  if (shape.gram_every < 1) throw std::invalid_argument("gram_every must be at least 1");
  if (shape.gram_at_write && (shape.file_prompts != shape.n_prompts || shape.file_length != shape.length)) {
    throw std::invalid_argument("gram_at_write needs a run that fills every row of the files");
  }
  std::set<int64_t> seen;
  for (int64_t row : shape.rows) {
    if (row < 0 || row >= shape.file_prompts || !seen.insert(row).second) {
      throw std::invalid_argument("rows must be distinct rows of the file, in [0, file_prompts)");
    }
  }
  if (static_cast<int64_t>(shape.rows.size()) != shape.n_prompts || shape.file_length < shape.length) {
    throw std::invalid_argument("rows must give one file row per prompt, and file_length must be >= length");
  }
  return shape;
}

// Pinned registration of the staging slots and the events that mark them filled, for the
// length of one graph-driven run.
class CudaStaging {
 public:
  CudaStaging(const CudaApi& api, ChunkWriter& writer, std::vector<int64_t>& iteration_values,
              CUstream stream)
      : api_(api), stream_(stream) {
    api.check(api.cuCtxGetCurrent(&context_), "cuCtxGetCurrent");
    for (int slot = 0; slot < ChunkWriter::kSlots; ++slot) {
      pin(writer.err_slot(slot), writer.err_slot_bytes());
      pin(writer.gram_slot(slot), writer.gram_slot_bytes());
      api.check(api.cuEventCreate(&events_[slot], kEventDisableTiming), "cuEventCreate");
    }
    pin(iteration_values.data(), static_cast<int64_t>(iteration_values.size() * sizeof(int64_t)));
  }
  ~CudaStaging() {
    for (void* pointer : pinned_) api_.cuMemHostUnregister(pointer);
    for (CUevent event : events_) {
      if (event != nullptr) api_.cuEventDestroy(event);
    }
  }
  CudaStaging(const CudaStaging&) = delete;
  CudaStaging& operator=(const CudaStaging&) = delete;

  CUevent event(int slot) const { return events_[slot]; }
  CUcontext context() const { return context_; }
  CUstream stream() const { return stream_; }

 private:
  void pin(void* pointer, int64_t bytes) {
    if (pointer == nullptr || bytes == 0) return;
    api_.check(api_.cuMemHostRegister(pointer, static_cast<size_t>(bytes), 0), "cuMemHostRegister");
    pinned_.push_back(pointer);
  }

  const CudaApi& api_;
  CUstream stream_;
  CUcontext context_ = nullptr;
  CUevent events_[ChunkWriter::kSlots] = {nullptr, nullptr};
  std::vector<void*> pinned_;
};

// Where the writer puts an array: the .npy file at a path, or a numpy array of the file's
// shape and element type (C-contiguous, writable) filled in memory. Null for None.
std::unique_ptr<ArrayTarget> open_target(const py::object& where, const std::vector<int64_t>& shape,
                                         Element element) {
  if (where.is_none()) return nullptr;
  if (py::isinstance<py::str>(where)) return std::make_unique<NpyFile>(where.cast<std::string>(), shape, element);
  if (!py::isinstance<py::array>(where)) throw std::invalid_argument("an output must be a path or a numpy array");
  auto array = where.cast<py::array>();
  const bool half = element == Element::kFloat16;
  const bool fits = (half ? array.dtype().is(py::dtype("float16")) : array.dtype().is(py::dtype::of<float>())) &&
                    (array.flags() & py::array::c_style) && array.writeable() &&
                    std::vector<int64_t>(array.shape(), array.shape() + array.ndim()) == shape;
  if (!fits) {
    throw std::invalid_argument(std::string("an in-memory output must be a writable C-contiguous ") +
                                (half ? "float16" : "float32") + " array of the file's shape");
  }
  return std::make_unique<MemoryArray>(array.mutable_data(), static_cast<int64_t>(array.size()), element);
}

// The path of the err2 file the writer makes itself (gram_at_write); a file only.
std::string gram_path(const py::object& gram, bool gram_at_write) {
  if (!gram_at_write) return "";
  if (!py::isinstance<py::str>(gram)) throw std::invalid_argument("gram_at_write needs err2 as a file path");
  return gram.cast<std::string>();
}

}  // namespace

class Driver {
 public:
  // err and gram: a path (str) of a file create_array made, or a C-contiguous numpy array of
  // the file's shape and dtype to fill in memory; gram None without err2.
  Driver(int64_t n_prompts, int64_t n_layer, int64_t length, int64_t n_iterations,
         int64_t chunk_iterations, const py::object& err, const py::object& gram,
         double flush_seconds, const std::vector<int64_t>& rows, int64_t file_prompts, int64_t file_length,
         int64_t gram_every, const std::string& gram_dtype, bool gram_at_write)
      : shape_{checked_shape({n_prompts, n_layer, length, n_iterations, chunk_iterations, !gram.is_none(),
                              rows, file_prompts, file_length, gram_every, element_named(gram_dtype),
                              gram_at_write})},
        arrays_{err, gram},
        writer_(shape_, open_target(err, shape_.err_file_shape(), Element::kFloat32),
                shape_.gram_at_write ? nullptr : open_target(gram, shape_.gram_file_shape(), shape_.gram_element),
                gram_path(gram, shape_.gram_at_write)),
        flush_interval_(std::chrono::duration<double>(flush_seconds)) {}

  const RunShape& shape() const { return shape_; }
  ChunkWriter& writer() { return writer_; }
  void request_stop() { stop_.store(true); }
  bool stop_requested() const { return stop_.load(); }

  // Runs the loop with `step(iteration, slot, index_in_chunk)` filling the slot row.
  int64_t run_callable(const py::function& step, const py::function& decode,
                       const std::set<int64_t>& decode_iterations, const py::function& on_progress) {
    return loop(decode, decode_iterations, on_progress, nullptr,
                [&](int64_t iteration, int slot, int64_t row) { step(iteration, slot, row); });
  }

  // Runs the loop by launching `graph_exec` on `stream` for iterations `first_graph_iteration`
  // onwards (the earlier ones through `step`, as in run_callable); the graph leaves one
  // iteration's err [P, L, 2] at `current_err` and G [P, L, T, T] at `current_gram` (device
  // pointers). When `iteration_pointer` is not 0, the iteration index (int64) is copied
  // there first.
  int64_t run_graph(uintptr_t graph_exec, uintptr_t stream, uintptr_t current_err,
                    uintptr_t current_gram, uintptr_t iteration_pointer, int64_t first_graph_iteration,
                    const py::function& step, const py::function& decode,
                    const std::set<int64_t>& decode_iterations, const py::function& on_progress) {
    const CudaApi& api = cuda_api();
    std::vector<int64_t> iteration_values(static_cast<size_t>(shape_.n_iterations));
    for (int64_t i = 0; i < shape_.n_iterations; ++i) iteration_values[static_cast<size_t>(i)] = i;
    auto cu_stream = reinterpret_cast<CUstream>(stream);
    CudaStaging staging(api, writer_, iteration_values, cu_stream);
    const int64_t err_bytes = shape_.err_floats() * sizeof(float), gram_bytes = shape_.gram_floats() * sizeof(float);
    auto launch = [&](int64_t iteration, int slot, int64_t row) {
      if (iteration < first_graph_iteration) {
        step(iteration, slot, row);
        return;
      }
      if (iteration_pointer != 0) {
        api.check(api.cuMemcpyHtoDAsync(iteration_pointer, &iteration_values[static_cast<size_t>(iteration)],
                                        8, cu_stream), "cuMemcpyHtoDAsync");
      }
      api.check(api.cuGraphLaunch(reinterpret_cast<CUgraphExec>(graph_exec), cu_stream), "cuGraphLaunch");
      api.check(api.cuMemcpyDtoHAsync(writer_.err_slot(slot) + row * shape_.err_floats(), current_err,
                                      static_cast<size_t>(err_bytes), cu_stream), "cuMemcpyDtoHAsync");
      if (gram_bytes > 0) {
        api.check(api.cuMemcpyDtoHAsync(writer_.gram_slot(slot) + row * shape_.gram_floats(), current_gram,
                                        static_cast<size_t>(gram_bytes), cu_stream), "cuMemcpyDtoHAsync");
      }
    };
    int64_t completed = 0;
    try {
      completed = loop(decode, decode_iterations, on_progress, &staging, launch);
    } catch (...) {
      drain(api, cu_stream);
      throw;
    }
    drain(api, cu_stream);
    return completed;
  }

  void finish() {
    while_handling_signals([&] { writer_.finish(); });
  }

 private:
  template <typename Launch>
  int64_t loop(const py::function& decode, const std::set<int64_t>& decode_iterations,
               const py::function& on_progress, const CudaStaging* staging, Launch&& launch) {
    const int64_t chunk = shape_.chunk_iterations;
    int slot = 0;
    int64_t chunk_start = 0;
    int64_t completed = 0;
    writer_.acquire(slot);
    auto flushed = std::chrono::steady_clock::now();
    for (int64_t iteration = 0; iteration < shape_.n_iterations; ++iteration) {
      const int64_t row = iteration - chunk_start;
      launch(iteration, slot, row);
      if (decode_iterations.count(iteration) != 0) decode(iteration);
      completed = iteration + 1;
      if (staging == nullptr) on_progress(completed);
      if (PyErr_CheckSignals() != 0) throw py::error_already_set();
      const bool stopping = stop_.load();
      const auto now = std::chrono::steady_clock::now();
      // a slot goes to the writer when full, at the end and at a stop; a slot still filling
      // puts its err on the disk every flush_interval_ (a killed run keeps all but the last
      // few seconds of err, and of err2 all but its last chunk)
      if (row + 1 == chunk || completed == shape_.n_iterations || stopping) {
        CUevent ready = nullptr;
        CUcontext context = nullptr;
        if (staging != nullptr) {
          ready = staging->event(slot);
          context = staging->context();
          const CudaApi& api = cuda_api();
          api.check(api.cuEventRecord(ready, staging->stream()), "cuEventRecord");
        }
        writer_.submit(slot, chunk_start, row + 1, ready, context);
        if (staging != nullptr) on_progress(completed);
        slot ^= static_cast<int>(chunk < shape_.n_iterations);  // a run of one chunk has one slot
        chunk_start = completed;
        flushed = now;
        if (completed < shape_.n_iterations && !stopping) while_handling_signals([&] { writer_.acquire(slot); });
      } else if (now - flushed >= flush_interval_) {
        if (staging != nullptr) {
          const CudaApi& api = cuda_api();
          api.check(api.cuStreamSynchronize(staging->stream()), "cuStreamSynchronize");
          on_progress(completed);
        }
        py::gil_scoped_release release;
        writer_.write_err(slot, chunk_start, row + 1);
        flushed = now;
      }
      if (stopping) break;
    }
    return completed;
  }

  // Runs `wait` (a wait for the writer: seconds or minutes for a large err2) on another
  // thread, running Python's signal handlers every 100 ms meanwhile: a Ctrl-C is heard while
  // the writer works (the first asks for a stop, a second ends the process at once).
  template <typename Wait>
  static void while_handling_signals(Wait&& wait) {
    std::future<void> done;
    {
      py::gil_scoped_release release;
      done = std::async(std::launch::async, std::forward<Wait>(wait));
    }
    for (;;) {
      {
        py::gil_scoped_release release;
        if (done.wait_for(std::chrono::milliseconds(100)) == std::future_status::ready) break;
      }
      if (PyErr_CheckSignals() != 0) {
        py::error_already_set raised;  // a handler raised (KeyboardInterrupt): after the wait ends
        {
          py::gil_scoped_release release;
          done.wait();
        }
        throw raised;
      }
    }
    done.get();
  }

  // Waits for every queued copy and write that uses the pinned slots.
  void drain(const CudaApi& api, CUstream stream) {
    api.cuStreamSynchronize(stream);
    while_handling_signals([&] {
      try {
        for (int slot = 0; slot < ChunkWriter::kSlots; ++slot) writer_.acquire(slot);
      } catch (const WriteError&) {
        // Reported by finish(); here only the waiting matters.
      }
    });
  }

  RunShape shape_;
  py::object arrays_[2];  // in-memory err / err2 the writer fills, kept alive while it may
  ChunkWriter writer_;
  std::atomic<bool> stop_{false};
  std::chrono::duration<double> flush_interval_;
};

}  // namespace gpt2fast

namespace {

py::array_t<float> slot_view(py::object owner, float* data, std::vector<int64_t> shape) {
  return py::array_t<float>(shape, data, owner);
}

}  // namespace

PYBIND11_MODULE(_driver, m) {
  using gpt2fast::Driver;
  m.doc() = "The C++ loop driver of gpt2fast consensus runs (see csrc/driver.cpp).";
  py::register_exception<gpt2fast::WriteError>(m, "WriteError", PyExc_OSError);

  py::class_<Driver>(m, "Driver")
      .def(py::init<int64_t, int64_t, int64_t, int64_t, int64_t, const py::object&, const py::object&, double,
                    const std::vector<int64_t>&, int64_t, int64_t, int64_t, const std::string&, bool>(),
           py::arg("n_prompts"), py::arg("n_layer"), py::arg("length"), py::arg("n_iterations"),
           py::arg("chunk_iterations"), py::arg("err"), py::arg("gram"), py::arg("flush_seconds"),
           py::arg("rows"), py::arg("file_prompts"), py::arg("file_length"), py::arg("gram_every") = 1,
           py::arg("gram_dtype") = "float32", py::arg("gram_at_write") = false,
           "Open the outputs, err and gram (None: no err2): files create_array made, or NaN-filled numpy "
           "arrays of their shape and dtype to fill in memory (file_prompts rows of file_length tokens; err2 "
           "with G after steps 0, gram_every, ... as gram_dtype), and two staging slots; prompt p goes to "
           "file row rows[p]; with gram_at_write (a run holding every file row) the writer makes err2 under a "
           "temporary name, renamed when complete. A slot is "
           "written when full, at the end and at a stop; err also every flush_seconds.")
      .def("err_slot", [](py::object self, int slot) {
             Driver& driver = self.cast<Driver&>();
             const auto& s = driver.shape();
             return slot_view(self, driver.writer().err_slot(slot),
                              {s.chunk_iterations, s.n_prompts, s.n_layer, 2});
           }, "Staging slot `slot` for err: float32 [c, P, L, 2], a view that the loop fills.")
      .def("gram_slot", [](py::object self, int slot) -> py::object {
             Driver& driver = self.cast<Driver&>();
             const auto& s = driver.shape();
             if (!s.with_gram) return py::none();
             return slot_view(self, driver.writer().gram_slot(slot),
                              {s.chunk_iterations, s.n_prompts, s.n_layer, s.length, s.length});
           }, "Staging slot for G: float32 [c, P, L, T, T], or None without an err2 file.")
      .def("request_stop", &Driver::request_stop, "End the loop after the current iteration.")
      .def_property_readonly("stop_requested", &Driver::stop_requested)
      .def("run_callable", &Driver::run_callable, py::arg("step"), py::arg("decode"),
           py::arg("decode_iterations"), py::arg("on_progress"),
           "Run step(iteration, slot, position in the chunk) for each iteration; returns iterations completed.")
      .def("run_graph", &Driver::run_graph, py::arg("graph_exec"), py::arg("stream"),
           py::arg("current_err"), py::arg("current_gram"), py::arg("iteration_pointer"),
           py::arg("first_graph_iteration"), py::arg("step"), py::arg("decode"),
           py::arg("decode_iterations"), py::arg("on_progress"),
           "Launch a captured CUDA graph per iteration from first_graph_iteration on (the earlier ones "
           "through step, as run_callable); returns iterations completed.")
      .def("finish", &Driver::finish, "Write all queued chunks and close the files.");

  m.def("create_array", [](const std::string& path, const std::vector<int64_t>& shape, const std::string& dtype) {
          const gpt2fast::Element element = gpt2fast::element_named(dtype);
          py::gil_scoped_release release;
          gpt2fast::create_npy(path, shape, element);
        }, py::arg("path"), py::arg("shape"), py::arg("dtype") = "float32",
        "Create (or truncate) a float32 or float16 .npy file of `shape`, every element NaN, flushed to the disk.");
  m.def("float_to_half", [](float value) { return gpt2fast::float_to_half(value); }, py::arg("value"),
        "The float16 bits the writer stores for `value` (round to nearest even).");

  m.def("cuda_driver_available", [] {
    try {
      gpt2fast::cuda_api();
      return true;
    } catch (const std::exception&) {
      return false;
    }
  }, "Whether libcuda can be loaded on this machine.");
}
