// Sizes of one consensus run and of its staging chunks.
#pragma once

#include <cstdint>
#include <vector>

#include "npy_file.h"

namespace gpt2fast {

struct RunShape {
  int64_t n_prompts;         // P
  int64_t n_layer;           // L
  int64_t length;            // T, the longest prompt
  int64_t n_iterations;      // N
  int64_t chunk_iterations;  // c, iterations per staging chunk
  bool with_gram;            // whether err2 (the T x T matrices) is recorded
  // Where the run's prompts sit in the files, which may hold more prompts (other batches,
  // other ranks) padded to a longer T: prompt p is row rows[p] of file_prompts rows, each
  // of file_length x file_length cells in err2 (file_length >= length).
  std::vector<int64_t> rows;
  int64_t file_prompts;
  int64_t file_length;
  // err2 keeps G after steps 0, every, 2 * every, ... only, as gram_element.
  int64_t gram_every = 1;
  Element gram_element = Element::kFloat32;
  // The writer makes err2 (a run holding every file row), under writing_path until complete:
  // one chunk writes whole rows, NaN past the last iteration of a stopped run; more chunks
  // fill a sparse file run by run, then the unwritten steps of a stopped run with NaN. A
  // killed run leaves no err2 file (only its temporary, cleared by the next run).
  bool gram_at_write = false;

  int64_t steps() const { return n_layer * n_iterations; }
  // Floats one iteration adds to a chunk: err [P, L, 2] and G [P, L, T, T].
  int64_t err_floats() const { return n_prompts * n_layer * 2; }
  int64_t gram_floats() const { return with_gram ? n_prompts * n_layer * length * length : 0; }
  std::vector<int64_t> err_file_shape() const { return {file_prompts, steps(), 2}; }
  int64_t gram_steps() const { return (steps() + gram_every - 1) / gram_every; }  // recorded in err2
  std::vector<int64_t> gram_file_shape() const { return {file_prompts, file_length, file_length, gram_steps()}; }
};

}  // namespace gpt2fast
