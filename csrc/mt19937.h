// MT19937 (Matsumoto & Nishimura 1998) as PyTorch's CPU generator runs it (at::mt19937), so a
// torch.Generator can be set to the state it would reach after any number of draws without
// making them: gpt2fast/seeded_randn.py draws many tensors of one seeded stream at once that
// way.
//
// The state is 624 words; a draw returns the next word tempered, and every 624 draws the words
// are regenerated ("twisted"). PyTorch's bookkeeping, kept here: after seeding, left = 1 and
// next = 0; a draw first decrements left and regenerates when it reaches 0 (then left = 624,
// next = 0), and returns word next++. So after d >= 1 draws the words have been regenerated
// ceil(d / 624) times, next = (d - 1) % 624 + 1 and left = 625 - next. Skipping needs no
// tempering: only the words and the two counters.
#pragma once

#include <array>
#include <cstdint>

namespace gpt2fast {

constexpr int kMtWords = 624;       // n
constexpr int kMtMiddle = 397;      // m
constexpr uint32_t kMtMatrixA = 0x9908b0dfu;

struct Mt19937State {
  std::array<uint32_t, kMtWords> words;
  int32_t left;   // draws until the next regeneration, plus one
  uint32_t next;  // index of the word the next draw returns
};

// Word i's recurrence: the top bit of u and the low 31 bits of v, shifted, xor A if v is odd.
inline uint32_t mt_twist(uint32_t u, uint32_t v) {
  const uint32_t mixed = (u & 0x80000000u) | (v & 0x7fffffffu);
  return (mixed >> 1) ^ (kMtMatrixA & (0u - (v & 1u)));
}

// init_genrand: PyTorch seeds with the low 32 bits of its 64-bit seed.
inline void mt_seed(std::array<uint32_t, kMtWords>& w, uint64_t seed) {
  w[0] = static_cast<uint32_t>(seed);
  for (uint32_t i = 1; i < kMtWords; ++i) w[i] = 1812433253u * (w[i - 1] ^ (w[i - 1] >> 30)) + i;
}

// One regeneration of all 624 words, in place: words i < n - m read the old word i + m, the
// others the new word i + m - n. Split so that each loop vectorises.
inline void mt_regenerate(std::array<uint32_t, kMtWords>& w) {
  int i = 0;
  for (; i < kMtWords - kMtMiddle; ++i) w[i] = w[i + kMtMiddle] ^ mt_twist(w[i], w[i + 1]);
  for (; i < kMtWords - 1; ++i) w[i] = w[i + kMtMiddle - kMtWords] ^ mt_twist(w[i], w[i + 1]);
  w[kMtWords - 1] = w[kMtMiddle - 1] ^ mt_twist(w[kMtWords - 1], w[0]);
}

// The state of a generator seeded with `seed` after `draws` 32-bit draws.
inline Mt19937State mt19937_after(uint64_t seed, uint64_t draws) {
  Mt19937State state{};
  mt_seed(state.words, seed);
  if (draws == 0) {
    state.left = 1;
    state.next = 0;
    return state;
  }
  const uint64_t regenerations = (draws - 1) / kMtWords + 1;
  for (uint64_t r = 0; r < regenerations; ++r) mt_regenerate(state.words);
  state.next = static_cast<uint32_t>((draws - 1) % kMtWords + 1);
  state.left = static_cast<int32_t>(kMtWords + 1 - state.next);
  return state;
}

}  // namespace gpt2fast
