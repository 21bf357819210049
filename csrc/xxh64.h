// XXH64 (Yann Collet's xxHash, 64-bit, as its specification defines it: doc/xxhash_spec.md
// in github.com/Cyan4973/xxHash): a fast non-cryptographic hash, here of a tensor's bytes,
// so that random weights are identified per tensor at memory speed (SHA-256 would cost
// about as much as drawing them). Reads are little-endian, as the specification's.
#pragma once

#include <cstdint>
#include <cstring>

namespace gpt2fast {

constexpr uint64_t kXxPrime1 = 0x9E3779B185EBCA87ull;
constexpr uint64_t kXxPrime2 = 0xC2B2AE3D27D4EB4Full;
constexpr uint64_t kXxPrime3 = 0x165667B19E3779F9ull;
constexpr uint64_t kXxPrime4 = 0x85EBCA77C2B2AE63ull;
constexpr uint64_t kXxPrime5 = 0x27D4EB2F165667C5ull;

inline uint64_t xx_rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

// A little-endian uint32_t or uint64_t at p, whatever the host's byte order.
template <typename Word>
inline Word xx_read(const unsigned char* p) {
  Word v;
  std::memcpy(&v, p, sizeof v);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  if constexpr (sizeof v == 8) v = __builtin_bswap64(v); else v = __builtin_bswap32(v);
#endif
  return v;
}

inline uint64_t xx_round(uint64_t acc, uint64_t lane) { return xx_rotl(acc + lane * kXxPrime2, 31) * kXxPrime1; }

inline uint64_t xx_merge(uint64_t acc, uint64_t lane) { return (acc ^ xx_round(0, lane)) * kXxPrime1 + kXxPrime4; }

inline uint64_t xxh64(const void* data, uint64_t length, uint64_t seed = 0) {
  const unsigned char* p = static_cast<const unsigned char*>(data);
  const unsigned char* const end = p + length;
  uint64_t h;
  if (length >= 32) {  // four lanes over 32-byte stripes
    uint64_t v1 = seed + kXxPrime1 + kXxPrime2, v2 = seed + kXxPrime2, v3 = seed, v4 = seed - kXxPrime1;
    for (; p + 32 <= end; p += 32) {
      v1 = xx_round(v1, xx_read<uint64_t>(p));
      v2 = xx_round(v2, xx_read<uint64_t>(p + 8));
      v3 = xx_round(v3, xx_read<uint64_t>(p + 16));
      v4 = xx_round(v4, xx_read<uint64_t>(p + 24));
    }
    h = xx_rotl(v1, 1) + xx_rotl(v2, 7) + xx_rotl(v3, 12) + xx_rotl(v4, 18);
    h = xx_merge(xx_merge(xx_merge(xx_merge(h, v1), v2), v3), v4);
  } else {
    h = seed + kXxPrime5;
  }
  h += length;
  for (; p + 8 <= end; p += 8) h = xx_rotl(h ^ xx_round(0, xx_read<uint64_t>(p)), 27) * kXxPrime1 + kXxPrime4;
  if (p + 4 <= end) {
    h = xx_rotl(h ^ (uint64_t{xx_read<uint32_t>(p)} * kXxPrime1), 23) * kXxPrime2 + kXxPrime3;
    p += 4;
  }
  for (; p < end; ++p) h = xx_rotl(h ^ (uint64_t{*p} * kXxPrime5), 11) * kXxPrime1;
  h ^= h >> 33;  // avalanche
  h *= kXxPrime2;
  h ^= h >> 29;
  h *= kXxPrime3;
  h ^= h >> 32;
  return h;
}

}  // namespace gpt2fast
