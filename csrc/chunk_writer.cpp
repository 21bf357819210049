#include "chunk_writer.h"

#include <algorithm>
#include <cstdlib>
#include <limits>
#include <vector>
#include <new>
#include <stdexcept>

#include "errors.h"

namespace gpt2fast {

namespace {

constexpr size_t kPageBytes = 4096;
constexpr int64_t kPieceFloats = 4 << 20;  // err2 is transposed and written 16 MiB at a time
constexpr int64_t kStepTile = 16;          // steps gathered per pass: one cache line per cell
constexpr int64_t kCellTile = 64;          // cells whose rows of the piece are filled together

HostBuffer allocate_floats(int64_t count) {
  if (count == 0) return HostBuffer(nullptr);
  size_t bytes = (static_cast<size_t>(count) * 4 + kPageBytes - 1) / kPageBytes * kPageBytes;
  void* pointer = nullptr;
  if (::posix_memalign(&pointer, kPageBytes, bytes) != 0) throw std::bad_alloc();
  return HostBuffer(static_cast<float*>(pointer));
}

}  // namespace

void AlignedFree::operator()(float* pointer) const { std::free(pointer); }

ChunkWriter::ChunkWriter(const RunShape& shape, const std::string& err_path,
                         const std::string& gram_path)
    : shape_(shape), gram_path_(gram_path) {
  err_file_ = std::make_unique<NpyFile>(err_path, shape.err_file_shape());
  if (shape.with_gram && !shape.gram_at_write) {
    gram_file_ = std::make_unique<NpyFile>(gram_path, shape.gram_file_shape(), shape.gram_element);
  }
  const int slots = shape.chunk_iterations < shape.n_iterations ? kSlots : 1;  // one chunk: one slot
  for (int slot = 0; slot < slots; ++slot) {
    err_[slot] = allocate_floats(shape.chunk_iterations * shape.err_floats());
    gram_[slot] = allocate_floats(shape.chunk_iterations * shape.gram_floats());
  }
  row_ = allocate_floats(shape.chunk_iterations * shape.n_layer * 2);
  if (shape.with_gram) {
    const int64_t matrix = shape.length * shape.length;
    piece_ = allocate_floats(std::min(kPieceFloats, matrix * shape.chunk_iterations * shape.n_layer) + matrix);
  }
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
  rethrow_failure();
  err_file_->close();
  if (gram_file_) gram_file_->close();
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
    err_file_->write((shape_.rows[p] * shape_.steps() + first * layers) * 2, row, count * layers * 2);
  }
}

void ChunkWriter::write_chunk(const Job& job) {
  write_err_rows(err_[job.slot].get(), job.first, job.count, row_.get());
  if (shape_.with_gram) write_gram(job);
}

void ChunkWriter::write_gram(const Job& job) {
  const int64_t prompts = shape_.n_prompts, layers = shape_.n_layer, length = shape_.length;
  const int64_t file_length = shape_.file_length, matrix = length * length;
  // The recorded steps j * every in [first_step, first_step + run_steps): j in [first, end).
  const int64_t first_step = job.first * layers, run_steps = job.count * layers;
  const int64_t every = shape_.gram_every, recorded = shape_.gram_steps();
  const int64_t first = (first_step + every - 1) / every, end = (first_step + run_steps + every - 1) / every;
  const int64_t count = end - first;
  if (count == 0) return;
  const bool pad = shape_.gram_at_write;  // the one chunk: whole rows, NaN after `count` steps
  if (pad && !gram_file_) {
    create_npy(gram_path_, shape_.gram_file_shape(), shape_.gram_element, false);
    gram_file_ = std::make_unique<NpyFile>(gram_path_, shape_.gram_file_shape(), shape_.gram_element);
  }
  const bool whole_rows = pad || count == recorded;  // each cell's run is its whole file row
  const int64_t stride = pad ? recorded : count;       // floats per cell in the piece
  // cells per piece: whole rows a of G where they are contiguous in the file, at least one cell
  int64_t cells = std::max<int64_t>(1, kPieceFloats / stride);
  if (whole_rows && length != file_length) cells = std::max<int64_t>(1, cells / length) * length;
  cells = std::min(cells, matrix);
  const float* gram = gram_[job.slot].get();
  float* piece = piece_.get();
  std::vector<const float*> sources(static_cast<size_t>(count));
  for (int64_t p = 0; p < prompts; ++p) {
    for (int64_t j = 0; j < count; ++j) {
      const int64_t local = (first + j) * every - first_step;  // step within the chunk
      sources[static_cast<size_t>(j)] = gram + ((local / layers * prompts + p) * layers + local % layers) * matrix;
    }
    const int64_t file_rows = shape_.rows[p] * file_length;  // file row of cell (0, 0)
    for (int64_t cell0 = 0; cell0 < matrix; cell0 += cells) {
      const int64_t width = std::min(cells, matrix - cell0);
      // piece[cell][j] = G_j[cell0 + cell], in tiles of kCellTile cells x kStepTile steps: each
      // cell's row of the piece is written a cache line at a time, kCellTile rows at once
      for (int64_t c0 = 0; c0 < width; c0 += kCellTile) {
        const int64_t cell_tile = std::min(kCellTile, width - c0);
        for (int64_t j0 = 0; j0 < count; j0 += kStepTile) {
          const int64_t step_tile = std::min(kStepTile, count - j0);
          for (int64_t cell = c0; cell < c0 + cell_tile; ++cell) {
            float* target = piece + cell * stride + j0;
            for (int64_t j = 0; j < step_tile; ++j) target[j] = sources[static_cast<size_t>(j0 + j)][cell0 + cell];
          }
        }
      }
      for (int64_t cell = 0; cell < width && stride > count; ++cell) {
        std::fill(piece + cell * stride + count, piece + (cell + 1) * stride, std::numeric_limits<float>::quiet_NaN());
      }
      if (whole_rows && length == file_length) {
        gram_file_->write((file_rows * file_length + cell0) * recorded, piece, width * recorded);
      } else if (whole_rows) {
        for (int64_t a = cell0 / length; a < (cell0 + width) / length; ++a) {
          gram_file_->write((file_rows + a) * file_length * recorded, piece + (a * length - cell0) * recorded,
                            length * recorded);
        }
      } else {
        for (int64_t cell = cell0; cell < cell0 + width; ++cell) {
          gram_file_->write(((file_rows + cell / length) * file_length + cell % length) * recorded + first,
                            piece + (cell - cell0) * count, count);
        }
      }
    }
  }
}

}  // namespace gpt2fast
