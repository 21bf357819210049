#include "chunk_writer.h"

#include <cstdlib>
#include <new>
#include <stdexcept>

#include "errors.h"

namespace gpt2fast {

namespace {

constexpr size_t kPageBytes = 4096;

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
    : shape_(shape) {
  err_file_ = std::make_unique<NpyFile>(err_path, shape.err_file_shape());
  if (shape.with_gram) {
    gram_file_ = std::make_unique<NpyFile>(gram_path, shape.gram_file_shape(), shape.gram_element);
  }
  for (int slot = 0; slot < kSlots; ++slot) {
    err_[slot] = allocate_floats(shape.chunk_iterations * shape.err_floats());
    gram_[slot] = allocate_floats(shape.chunk_iterations * shape.gram_floats());
  }
  row_ = allocate_floats(shape.chunk_iterations * shape.n_layer * 2);
  if (shape.with_gram) {
    block_ = allocate_floats(shape.chunk_iterations * shape.n_layer * shape.length * shape.length);
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

void ChunkWriter::write_chunk(const Job& job) {
  const int64_t prompts = shape_.n_prompts, layers = shape_.n_layer, length = shape_.length;
  const int64_t steps = shape_.steps(), file_length = shape_.file_length;
  const int64_t first_step = job.first * layers;
  const int64_t run_steps = job.count * layers;
  const float* err = err_[job.slot].get();
  float* row = row_.get();
  for (int64_t p = 0; p < prompts; ++p) {
    for (int64_t k = 0; k < job.count; ++k) {
      const float* source = err + (k * prompts + p) * layers * 2;
      for (int64_t i = 0; i < layers * 2; ++i) row[k * layers * 2 + i] = source[i];
    }
    err_file_->write((shape_.rows[p] * steps + first_step) * 2, row, run_steps * 2);
  }
  if (!gram_file_) return;
  // The recorded steps j * every in [first_step, first_step + run_steps): j in [first, end).
  const int64_t every = shape_.gram_every, recorded = shape_.gram_steps();
  const int64_t first = (first_step + every - 1) / every, end = (first_step + run_steps + every - 1) / every;
  const int64_t count = end - first;
  if (count == 0) return;
  const float* gram = gram_[job.slot].get();
  const int64_t matrix = length * length;
  float* block = block_.get();
  for (int64_t p = 0; p < prompts; ++p) {
    for (int64_t j = 0; j < count; ++j) {  // cell-major: block[cell * count + j]
      const int64_t local = (first + j) * every - first_step;  // step within the chunk
      const float* source = gram + ((local / layers * prompts + p) * layers + local % layers) * matrix;
      for (int64_t cell = 0; cell < matrix; ++cell) block[cell * count + j] = source[cell];
    }
    const int64_t file_rows = shape_.rows[p] * file_length;  // file row of cell (0, 0)
    if (count == recorded) {  // the chunk holds every recorded step: each row a of G is one contiguous run
      if (length == file_length) {
        gram_file_->write(file_rows * file_length * recorded, block, matrix * recorded);
        continue;
      }
      for (int64_t a = 0; a < length; ++a) {
        gram_file_->write((file_rows + a) * file_length * recorded, block + a * length * recorded,
                          length * recorded);
      }
      continue;
    }
    for (int64_t a = 0; a < length; ++a) {
      for (int64_t b = 0; b < length; ++b) {
        gram_file_->write(((file_rows + a) * file_length + b) * recorded + first,
                          block + (a * length + b) * count, count);
      }
    }
  }
}

}  // namespace gpt2fast
