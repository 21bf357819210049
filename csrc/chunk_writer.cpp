#include "chunk_writer.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <limits>
#include <new>
#include <stdexcept>
#include <thread>
#include <vector>

#include <sys/mman.h>

#include "errors.h"

namespace gpt2fast {

namespace {

constexpr size_t kPageBytes = 4096;
constexpr size_t kHugePageBytes = 2 << 20;
constexpr int64_t kPieceFloats = 1 << 20;  // err2 is transposed and written 4 MiB at a time (in cache)
constexpr int64_t kStepTile = 16;          // steps gathered per pass: one cache line per cell
constexpr int64_t kCellTile = 256;         // cells read per step and pass: 1 KiB, 16 lines

// Page-aligned memory; buffers of a huge page or more are aligned to it and asked to be backed
// by huge pages (the first touch of a 1 GiB slot then costs 512 faults instead of 262144).
HostBuffer allocate_floats(int64_t count) {
  if (count == 0) return HostBuffer(nullptr);
  const size_t wanted = static_cast<size_t>(count) * sizeof(float);
  const size_t align = wanted >= kHugePageBytes ? kHugePageBytes : kPageBytes;
  const size_t bytes = (wanted + align - 1) / align * align;
  void* pointer = nullptr;
  if (::posix_memalign(&pointer, align, bytes) != 0) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
  if (align == kHugePageBytes) ::madvise(pointer, bytes, MADV_HUGEPAGE);  // advice only: failure is harmless
#endif
  return HostBuffer(static_cast<float*>(pointer));
}

}  // namespace

void AlignedFree::operator()(float* pointer) const { std::free(pointer); }

ChunkWriter::ChunkWriter(const RunShape& shape, std::unique_ptr<ArrayTarget> err,
                         std::unique_ptr<ArrayTarget> gram, const std::string& gram_path)
    : shape_(shape), gram_path_(gram_path), err_target_(std::move(err)), gram_target_(std::move(gram)) {
  const int slots = shape.chunk_iterations < shape.n_iterations ? kSlots : 1;  // one chunk: one slot
  for (int slot = 0; slot < slots; ++slot) {
    err_[slot] = allocate_floats(shape.chunk_iterations * shape.err_floats());
    gram_[slot] = allocate_floats(shape.chunk_iterations * shape.gram_floats());
  }
  row_ = allocate_floats(shape.chunk_iterations * shape.n_layer * 2);
  thread_ = std::thread([this] { run(); });
}

ChunkWriter::~ChunkWriter() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    closing_ = true;
  }
  changed_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void ChunkWriter::rethrow_failure() {
  if (!failure_.empty()) throw WriteError(failure_);
}

void ChunkWriter::acquire(int slot) {
  std::unique_lock<std::mutex> lock(mutex_);
  changed_.wait(lock, [&] { return !busy_[slot] || !failure_.empty(); });
  rethrow_failure();
}

void ChunkWriter::submit(int slot, int64_t first, int64_t count, CUevent ready,
                         CUcontext context) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    rethrow_failure();
    busy_[slot] = true;
    queue_.push_back(Job{slot, first, count, ready, context});
  }
  changed_.notify_all();
}

void ChunkWriter::finish() {
  if (finished_) return;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    closing_ = true;
  }
  changed_.notify_all();
  if (thread_.joinable()) thread_.join();
  finished_ = true;
  try {
    rethrow_failure();
    write_gram_tail();
    err_target_->close();
    if (gram_target_) gram_target_->close();
    if (gram_target_ && shape_.gram_at_write &&
        std::rename(writing_path(gram_path_).c_str(), gram_path_.c_str()) != 0) {
      throw WriteError(errno_message("cannot rename to", gram_path_));
    }
  } catch (...) {
    if (shape_.gram_at_write) std::remove(writing_path(gram_path_).c_str());  // incomplete: of no use
    throw;
  }
}

void ChunkWriter::run() {
  for (;;) {
    Job job;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      changed_.wait(lock, [&] { return !queue_.empty() || closing_; });
      if (queue_.empty()) return;
      job = queue_.front();
      queue_.pop_front();
    }
    std::string failure;
    try {
      if (job.ready != nullptr) {
        const CudaApi& api = cuda_api();
        api.check(api.cuCtxSetCurrent(job.context), "cuCtxSetCurrent");
        api.check(api.cuEventSynchronize(job.ready), "cuEventSynchronize");
      }
      write_chunk(job);
    } catch (const std::exception& error) {
      failure = error.what();
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      busy_[job.slot] = false;
      if (!failure.empty()) {
        failure_ = failure;
        for (const Job& dropped : queue_) busy_[dropped.slot] = false;
        queue_.clear();
      }
    }
    changed_.notify_all();
    if (!failure.empty()) return;
  }
}

void ChunkWriter::write_err(int slot, int64_t first, int64_t count) {
  std::vector<float> row(static_cast<size_t>(count * shape_.n_layer * 2));  // row_ is the writer thread's
  write_err_rows(err_[slot].get(), first, count, row.data());
}

void ChunkWriter::write_err_rows(const float* err, int64_t first, int64_t count, float* row) {
  const int64_t prompts = shape_.n_prompts, layers = shape_.n_layer;
  for (int64_t p = 0; p < prompts; ++p) {
    for (int64_t k = 0; k < count; ++k) {
      const float* source = err + (k * prompts + p) * layers * 2;
      for (int64_t i = 0; i < layers * 2; ++i) row[k * layers * 2 + i] = source[i];
    }
    err_target_->write((shape_.rows[p] * shape_.steps() + first * layers) * 2, row, count * layers * 2);
  }
}

void ChunkWriter::write_chunk(const Job& job) {
  write_err_rows(err_[job.slot].get(), job.first, job.count, row_.get());
  if (shape_.with_gram) write_gram(job);
}

namespace {

// One chunk's err2: the recorded steps it holds (slot positions) and how its pieces map onto
// the file. Piece i covers cells [cell0, cell0 + width) of prompt i / per_prompt.
struct GramChunk {
  const RunShape& shape;
  const float* gram;        // the slot: [c, P, L, T, T]
  int64_t first_step;       // run step of the slot's first row
  int64_t first;            // index of the first recorded step in the chunk
  int64_t count;            // recorded steps in the chunk
  bool whole_rows;          // each cell's run is its whole file row
  int64_t stride;           // floats per cell in a piece and run (> count: NaN after `count` steps)
  int64_t cells;            // cells per piece
  int64_t per_prompt;       // pieces per prompt

  int64_t matrix() const { return shape.length * shape.length; }

  // Where recorded step first + j of prompt p lies in the slot.
  const float* source(int64_t p, int64_t j) const {
    const int64_t local = (first + j) * shape.gram_every - first_step, layers = shape.n_layer;
    return gram + ((local / layers * shape.n_prompts + p) * layers + local % layers) * matrix();
  }

  // piece[cell][j] = G_j[cell0 + cell], in tiles of kCellTile cells x kStepTile steps
  // transposed through a tile in L1: each step's cells are read as whole cache lines at once,
  // then each cell's steps are written as one line (the matrices lie a power of two apart, so
  // reading the steps cell by cell would thrash the caches' sets).
  void transpose(const std::vector<const float*>& sources, int64_t cell0, int64_t width, float* piece) const {
    alignas(64) float tile[kCellTile * kStepTile];
    for (int64_t c0 = 0; c0 < width; c0 += kCellTile) {
      const int64_t cell_tile = std::min(kCellTile, width - c0);
      for (int64_t j0 = 0; j0 < count; j0 += kStepTile) {
        const int64_t step_tile = std::min(kStepTile, count - j0);
        for (int64_t j = 0; j < step_tile; ++j) {
          const float* from = sources[static_cast<size_t>(j0 + j)] + cell0 + c0;
          if (j0 + kStepTile + j < count) {  // the next pass's lines: each step's run is too short to prefetch itself
            const float* next = sources[static_cast<size_t>(j0 + kStepTile + j)] + cell0 + c0;
            for (int64_t line = 0; line < cell_tile; line += 16) __builtin_prefetch(next + line);
          }
          for (int64_t cell = 0; cell < cell_tile; ++cell) tile[cell * kStepTile + j] = from[cell];
        }
        for (int64_t cell = 0; cell < cell_tile; ++cell) {
          std::copy_n(tile + cell * kStepTile, step_tile, piece + (c0 + cell) * stride + j0);
        }
      }
    }
    for (int64_t cell = 0; cell < width && stride > count; ++cell) {
      std::fill(piece + cell * stride + count, piece + (cell + 1) * stride, std::numeric_limits<float>::quiet_NaN());
    }
  }

  // Writes piece `piece` (cells [cell0, cell0 + width) of prompt p) to its places in `target`.
  void write(ArrayTarget& target, int64_t p, int64_t cell0, int64_t width, const float* piece) const {
    const int64_t length = shape.length, file_length = shape.file_length, recorded = shape.gram_steps();
    const int64_t file_rows = shape.rows[static_cast<size_t>(p)] * file_length;  // file row of cell (0, 0)
    if (whole_rows && length == file_length) {
      target.write((file_rows * file_length + cell0) * recorded, piece, width * recorded);
    } else if (whole_rows) {
      for (int64_t a = cell0 / length; a < (cell0 + width) / length; ++a) {
        target.write((file_rows + a) * file_length * recorded, piece + (a * length - cell0) * recorded,
                   length * recorded);
      }
    } else {
      for (int64_t cell = cell0; cell < cell0 + width; ++cell) {
        target.write(((file_rows + cell / length) * file_length + cell % length) * recorded + first,
                   piece + (cell - cell0) * stride, stride);
      }
    }
  }

  // Transposes and writes pieces worker, worker + workers, ... through the buffer `piece`,
  // one piece's writes at a time under `writing` (the kernel serialises a file's writes anyway;
  // interleaved per cell, the waiting thread would spin in the kernel instead of transposing).
  void write_share(ArrayTarget& target, int64_t worker, int64_t workers, float* piece, std::mutex& writing) const {
    std::vector<const float*> sources(static_cast<size_t>(count));
    int64_t sources_of = -1;
    for (int64_t i = worker; i < shape.n_prompts * per_prompt; i += workers) {
      const int64_t p = i / per_prompt, cell0 = i % per_prompt * cells;
      if (p != sources_of) {
        for (int64_t j = 0; j < count; ++j) sources[static_cast<size_t>(j)] = source(p, j);
        sources_of = p;
      }
      const int64_t width = std::min(cells, matrix() - cell0);
      transpose(sources, cell0, width, piece);
      std::lock_guard<std::mutex> lock(writing);
      write(target, p, cell0, width, piece);
    }
  }
};

}  // namespace

void ChunkWriter::write_gram(const Job& job) {
  const int64_t layers = shape_.n_layer;
  // The recorded steps j * every in [first_step, first_step + run_steps): j in [first, end).
  const int64_t first_step = job.first * layers, run_steps = job.count * layers;
  const int64_t every = shape_.gram_every, recorded = shape_.gram_steps();
  const int64_t first = (first_step + every - 1) / every, end = (first_step + run_steps + every - 1) / every;
  if (end == first) return;
  if (shape_.gram_at_write && !gram_target_) {  // under a temporary name until complete (finish renames it)
    create_npy(writing_path(gram_path_), shape_.gram_file_shape(), shape_.gram_element, false);
    gram_target_ = std::make_unique<NpyFile>(writing_path(gram_path_), shape_.gram_file_shape(), shape_.gram_element);
  }
  // a run of one chunk made by the writer writes whole rows, NaN past a stop
  const bool pad = shape_.gram_at_write && shape_.chunk_iterations >= shape_.n_iterations;
  transpose_and_write(gram_[job.slot].get(), first_step, first, end - first, pad ? recorded : end - first);
  gram_written_ = end;
}

void ChunkWriter::write_gram_tail() {
  const int64_t recorded = shape_.gram_steps();
  if (gram_target_ && shape_.gram_at_write && gram_written_ < recorded) {
    transpose_and_write(nullptr, 0, gram_written_, 0, recorded - gram_written_);  // NaN over the steps a stop left out
  }
}

void ChunkWriter::transpose_and_write(const float* gram, int64_t first_step, int64_t first, int64_t count,
                                      int64_t stride) {
  const int64_t length = shape_.length, matrix = length * length;
  const bool whole_rows = stride == shape_.gram_steps();
  // cells per piece: whole rows a of G where they are contiguous in the file, at least one cell
  int64_t cells = std::max<int64_t>(1, kPieceFloats / stride);
  if (whole_rows && length != shape_.file_length) cells = std::max<int64_t>(1, cells / length) * length;
  cells = std::min(cells, matrix);
  const GramChunk chunk{shape_, gram, first_step, first, count, whole_rows, stride, cells,
                        (matrix + cells - 1) / cells};
  for (int worker = 0; worker < kWriteThreads; ++worker) {
    if (piece_floats_[worker] < cells * stride) {
      pieces_[worker] = allocate_floats(cells * stride);
      piece_floats_[worker] = cells * stride;
    }
  }
  // kWriteThreads threads take turns: one transposes its next piece while another's write runs
  const int64_t workers = std::min<int64_t>(ChunkWriter::kWriteThreads, shape_.n_prompts * chunk.per_prompt);
  std::vector<std::exception_ptr> failures(static_cast<size_t>(workers));
  std::vector<std::thread> helpers;
  std::mutex writing;
  for (int64_t worker = 0; worker < workers; ++worker) {
    auto share = [&, worker] {
      try {
        chunk.write_share(*gram_target_, worker, workers, pieces_[worker].get(), writing);
      } catch (...) {
        failures[static_cast<size_t>(worker)] = std::current_exception();
      }
    };
    if (worker + 1 < workers) {
      helpers.emplace_back(share);
    } else {
      share();
    }
  }
  for (std::thread& helper : helpers) helper.join();
  for (const std::exception_ptr& failure : failures) {
    if (failure) std::rethrow_exception(failure);
  }
}

}  // namespace gpt2fast
