// Two staging slots of metrics and a thread that writes full slots into the .npy files.
//
// A slot holds c iterations: err [c, P, L, 2] and G [c, P, L, T, T] (float32, page-aligned
// host memory; a run of one chunk has one slot). The files keep the original layouts, err (P_f, L*N, 2) and err2
// (P_f, T_f, T_f, L*N) (RunShape: the run's prompts may be some rows of a file padded to a
// longer T), so the writer transposes each chunk: the run's row of err and every (p, a, b)
// row of err2 receive one contiguous run of c*L steps, transposed in tiles into a piece of at
// most 4 MiB at a time (a chunk of every step writes whole rows: one write per piece) by two
// threads in turn, so that one transposes while the other's writes copy into the page cache.
// An err2 the writer makes (RunShape::gram_at_write) is sparse until written: after a stop,
// NaN goes over the steps not reached.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "cuda_api.h"
#include "npy_file.h"
#include "run_shape.h"

namespace gpt2fast {

struct AlignedFree {
  void operator()(float* pointer) const;
};
using HostBuffer = std::unique_ptr<float[], AlignedFree>;

class ChunkWriter {
 public:
  static constexpr int kSlots = 2;
  static constexpr int kWriteThreads = 2;  // threads that transpose and write a chunk's err2 pieces

  // Writes into `err` and `gram` (files create_npy made, or arrays in memory; gram null
  // without err2), except that with shape.gram_at_write it makes err2 itself, the file
  // `gram_path`, at the first chunk.
  ChunkWriter(const RunShape& shape, std::unique_ptr<ArrayTarget> err, std::unique_ptr<ArrayTarget> gram,
              const std::string& gram_path);
  ~ChunkWriter();
  ChunkWriter(const ChunkWriter&) = delete;
  ChunkWriter& operator=(const ChunkWriter&) = delete;

  float* err_slot(int slot) const { return err_[slot].get(); }
  float* gram_slot(int slot) const { return gram_[slot].get(); }
  int64_t err_slot_bytes() const { return shape_.chunk_iterations * shape_.err_floats() * sizeof(float); }
  int64_t gram_slot_bytes() const { return shape_.chunk_iterations * shape_.gram_floats() * sizeof(float); }

  // Blocks until `slot` is no longer being written out; rethrows a writer failure.
  void acquire(int slot);
  // Queues `slot`, holding iterations [first, first + count), for writing. When `ready` is
  // not null the writer first waits for that CUDA event (the copies into the slot).
  void submit(int slot, int64_t first, int64_t count, CUevent ready, CUcontext context);
  // Writes everything queued and closes the files; rethrows a writer failure. Idempotent.
  // err2 the writer makes (shape.gram_at_write) is written under gram_path + ".tmp", its
  // unwritten steps NaN-filled after a stop, and renamed to gram_path here, once complete and
  // flushed (removed instead after a failure).
  void finish();
  // Writes err (not err2) of iterations [first, first + count) of `slot` now, from the
  // calling thread: a slot still filling keeps its err on the disk every few seconds.
  void write_err(int slot, int64_t first, int64_t count);

 private:
  struct Job {
    int slot;
    int64_t first;
    int64_t count;
    CUevent ready;
    CUcontext context;
  };

  void run();
  void write_chunk(const Job& job);
  void write_gram(const Job& job);
  // Writes NaN over the recorded steps past the last one written, in an err2 the writer makes
  // (a stopped run's unwritten steps; its other chunks left them as holes).
  void write_gram_tail();
  // Transposes recorded steps [first, first + count) of `gram` (a slot whose first row is run
  // step first_step) into pieces of `stride` floats per cell, NaN after `count`, and writes
  // each cell's piece at its step `first` (whole rows when stride is every recorded step).
  void transpose_and_write(const float* gram, int64_t first_step, int64_t first, int64_t count, int64_t stride);
  // Writes each prompt's err rows of iterations [first, first + count) of `err`, gathered in `row`.
  void write_err_rows(const float* err, int64_t first, int64_t count, float* row);
  void rethrow_failure();  // caller holds mutex_

  RunShape shape_;
  std::string gram_path_;
  std::unique_ptr<ArrayTarget> err_target_;
  std::unique_ptr<ArrayTarget> gram_target_;
  HostBuffer err_[kSlots];
  HostBuffer gram_[kSlots];
  HostBuffer row_;    // one prompt's err rows of a chunk, gathered before they are written
  // parts of one prompt's err2 of a chunk, cell-major [cells, steps of the chunk], one per write thread
  HostBuffer pieces_[kWriteThreads];
  int64_t piece_floats_[kWriteThreads] = {0, 0};  // their sizes, grown to the largest piece asked
  int64_t gram_written_ = 0;                       // recorded steps [0, gram_written_) are in err2

  std::mutex mutex_;
  std::condition_variable changed_;
  std::deque<Job> queue_;
  bool busy_[kSlots] = {false, false};
  bool closing_ = false;
  bool finished_ = false;
  std::string failure_;
  std::thread thread_;
};

}  // namespace gpt2fast
