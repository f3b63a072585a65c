// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11): a
// counter-based generator, so element i's random bits depend only on (key, counter(i)) and every
// thread, vector lane or device can produce them independently and identically.
// Host and device; no torch. The pure-PyTorch twin is gencore/ops/reference/philox.py.
#pragma once
#include <cstdint>
#include "isa_namespace.h"

#if defined(__CUDACC__)
#define GENCORE_HD __host__ __device__ __forceinline__
#else
#define GENCORE_HD inline
#endif

GENCORE_NAMESPACE_BEGIN

constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;  // golden ratio
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;  // sqrt(3) - 1

struct Philox4 {
  uint32_t v[4];
};

GENCORE_HD void philox_mulhilo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  const uint64_t p = static_cast<uint64_t>(a) * b;
  hi = static_cast<uint32_t>(p >> 32);
  lo = static_cast<uint32_t>(p);
}

// Ten rounds on counter (c0..c3) with key (k0, k1).
GENCORE_HD Philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0,
                                 uint32_t k1) {
#pragma unroll
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    philox_mulhilo(kPhiloxM0, c0, hi0, lo0);
    philox_mulhilo(kPhiloxM1, c2, hi1, lo1);
    const uint32_t n0 = hi1 ^ c1 ^ k0;
    const uint32_t n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  return Philox4{{c0, c1, c2, c3}};
}

// gencore's keying: element `index` (its position in the tensor's logical, row-major order) takes
// word (index % 4) of the block at counter (index / 4 as 64 bits, offset as 64 bits), key = seed.
struct PhiloxKey {
  uint64_t seed;
  uint64_t offset;
};

GENCORE_HD Philox4 philox_block(PhiloxKey key, uint64_t block) {
  return philox4x32_10(static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32),
                       static_cast<uint32_t>(key.offset), static_cast<uint32_t>(key.offset >> 32),
                       static_cast<uint32_t>(key.seed), static_cast<uint32_t>(key.seed >> 32));
}

// A uniform float strictly inside (0, 1) from 32 random bits: the top 23 bits k give
// (k + 0.5) * 2^-23, exact in float32, so u is never 0 or 1 and -log(-log(u)) is always finite.
GENCORE_HD float uniform_open01(uint32_t bits) {
#if defined(__CUDA_ARCH__)
  // The same value without an int-to-float conversion: (1 + k 2^-23) - (1 - 2^-24), exact.
  return __uint_as_float((bits >> 9) | 0x3F800000u) - 0x1.fffffep-1f;
#else
  return (static_cast<float>(bits >> 9) + 0.5f) * (1.0f / 8388608.0f);
#endif
}

GENCORE_NAMESPACE_END
