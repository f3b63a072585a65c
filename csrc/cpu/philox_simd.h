// Philox4x32-10 random bits for a run of element indices, many Philox blocks per step on AVX-512
// (32 blocks) and AVX2 (16 blocks). Bit-identical to the scalar philox_block() in common/philox.h.
//
// philox_visit() hands the bits to a visitor in element order: f(j, bits) with bits a uint32_t for
// one element, or a vector (__m512i: 16 elements, __m256i: 8) for elements j, j + 1, ...; the
// vector width is that of at::vec::Vectorized<float> in the same build.
#pragma once
#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#include "../common/isa_namespace.h"
#include "../common/philox.h"

GENCORE_NAMESPACE_BEGIN

namespace detail {
template <typename F>
void philox_visit_scalar(PhiloxKey key, uint64_t block0, int64_t nblocks, int64_t j0, F& f) {
  for (int64_t b = 0; b < nblocks; ++b) {
    const Philox4 r = philox_block(key, block0 + static_cast<uint64_t>(b));
    for (int w = 0; w < 4; ++w) f(j0 + 4 * b + w, r.v[w]);
  }
}
}  // namespace detail

// Both paths keep eight (AVX-512) or four (AVX2) blocks per vector, one per 64-bit lane:
// mul_epu32 reads the low 32 bits of each lane and returns the full 64-bit product (hi word in the
// high half), so a round costs two multiplies, two shifts and two xors; the high halves of the words
// are don't-cares. G groups in flight hide the multiply latency.
#if defined(__AVX512F__)
// Blocks first_block + [0, 8G): each group of 8 blocks' 32 words as two vectors in element order,
// to emit(j, vector) for elements j, j + 1, ... (j0 the first block's first element).
template <int G, typename Emit>
inline void philox_groups(PhiloxKey key, uint64_t first_block, int64_t j0, Emit&& emit) {
  const __m512i iota = _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7);
  const __m512i m0 = _mm512_set1_epi64(kPhiloxM0), m1 = _mm512_set1_epi64(kPhiloxM1);
  const __m512i off_lo = _mm512_set1_epi64(static_cast<uint32_t>(key.offset));
  const __m512i off_hi = _mm512_set1_epi64(static_cast<uint32_t>(key.offset >> 32));
  // (w0 w1) and (w2 w3) pairs of blocks 0-3, then of blocks 4-7: element order.
  const __m512i first_half = _mm512_setr_epi64(0, 8, 1, 9, 2, 10, 3, 11);
  const __m512i second_half = _mm512_setr_epi64(4, 12, 5, 13, 6, 14, 7, 15);
  __m512i c0[G], c1[G], c2[G], c3[G];
  for (int g = 0; g < G; ++g) {
    const uint64_t first = first_block + static_cast<uint64_t>(8 * g);
    const __m512i block = _mm512_add_epi64(_mm512_set1_epi64(static_cast<long long>(first)), iota);
    c0[g] = block;
    c1[g] = _mm512_srli_epi64(block, 32);
    c2[g] = off_lo;
    c3[g] = off_hi;
  }
  uint32_t k0 = static_cast<uint32_t>(key.seed), k1 = static_cast<uint32_t>(key.seed >> 32);
  for (int round = 0; round < 10; ++round) {
    const __m512i vk0 = _mm512_set1_epi32(static_cast<int>(k0));
    const __m512i vk1 = _mm512_set1_epi32(static_cast<int>(k1));
    for (int g = 0; g < G; ++g) {
      const __m512i p0 = _mm512_mul_epu32(c0[g], m0);  // (lo0, hi0)
      const __m512i p1 = _mm512_mul_epu32(c2[g], m1);  // (lo1, hi1)
      c0[g] = _mm512_ternarylogic_epi32(_mm512_srli_epi64(p1, 32), c1[g], vk0, 0x96);  // xor
      c2[g] = _mm512_ternarylogic_epi32(_mm512_srli_epi64(p0, 32), c3[g], vk1, 0x96);
      c1[g] = p1;
      c3[g] = p0;
    }
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  for (int g = 0; g < G; ++g) {
    const __m512i w01 = _mm512_mask_blend_epi32(0xAAAA, c0[g], _mm512_slli_epi64(c1[g], 32));
    const __m512i w23 = _mm512_mask_blend_epi32(0xAAAA, c2[g], _mm512_slli_epi64(c3[g], 32));
    emit(j0 + 32 * g, _mm512_permutex2var_epi64(w01, first_half, w23));
    emit(j0 + 32 * g + 16, _mm512_permutex2var_epi64(w01, second_half, w23));
  }
}
constexpr int kBlocksPerGroup = 8;
using PhiloxVec = __m512i;

#elif defined(__AVX2__)
// Blocks first_block + [0, 4G): each group of 4 blocks' 16 words as two vectors in element order.
template <int G, typename Emit>
inline void philox_groups(PhiloxKey key, uint64_t first_block, int64_t j0, Emit&& emit) {
  const __m256i iota = _mm256_setr_epi64x(0, 1, 2, 3);
  const __m256i m0 = _mm256_set1_epi64x(kPhiloxM0), m1 = _mm256_set1_epi64x(kPhiloxM1);
  const __m256i off_lo = _mm256_set1_epi64x(static_cast<uint32_t>(key.offset));
  const __m256i off_hi = _mm256_set1_epi64x(static_cast<uint32_t>(key.offset >> 32));
  __m256i c0[G], c1[G], c2[G], c3[G];
  for (int g = 0; g < G; ++g) {
    const uint64_t first = first_block + static_cast<uint64_t>(4 * g);
    const __m256i block = _mm256_add_epi64(_mm256_set1_epi64x(static_cast<long long>(first)), iota);
    c0[g] = block;
    c1[g] = _mm256_srli_epi64(block, 32);
    c2[g] = off_lo;
    c3[g] = off_hi;
  }
  uint32_t k0 = static_cast<uint32_t>(key.seed), k1 = static_cast<uint32_t>(key.seed >> 32);
  for (int round = 0; round < 10; ++round) {
    const __m256i vk0 = _mm256_set1_epi32(static_cast<int>(k0));
    const __m256i vk1 = _mm256_set1_epi32(static_cast<int>(k1));
    for (int g = 0; g < G; ++g) {
      const __m256i p0 = _mm256_mul_epu32(c0[g], m0);
      const __m256i p1 = _mm256_mul_epu32(c2[g], m1);
      c0[g] = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(p1, 32), c1[g]), vk0);
      c2[g] = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(p0, 32), c3[g]), vk1);
      c1[g] = p1;
      c3[g] = p0;
    }
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  for (int g = 0; g < G; ++g) {
    const __m256i w01 = _mm256_blend_epi32(c0[g], _mm256_slli_epi64(c1[g], 32), 0xAA);
    const __m256i w23 = _mm256_blend_epi32(c2[g], _mm256_slli_epi64(c3[g], 32), 0xAA);
    const __m256i lo = _mm256_unpacklo_epi64(w01, w23), hi = _mm256_unpackhi_epi64(w01, w23);
    emit(j0 + 16 * g, _mm256_permute2x128_si256(lo, hi, 0x20));      // blocks 0, 1
    emit(j0 + 16 * g + 8, _mm256_permute2x128_si256(lo, hi, 0x31));  // blocks 2, 3
  }
}
constexpr int kBlocksPerGroup = 4;
using PhiloxVec = __m256i;
#endif

#if defined(__AVX512F__) || defined(__AVX2__)
// Visits the 4 * nblocks elements of blocks block0, block0 + 1, ... as j0, j0 + 1, ...: four groups
// in flight while they last, then one, then a last group whose words past the end go unused (a row
// of 100 floats is 25 blocks: without it, every one of them took the scalar path).
template <typename F>
void philox_visit_blocks(PhiloxKey key, uint64_t block0, int64_t nblocks, int64_t j0, F& f) {
  constexpr int64_t kGroup = kBlocksPerGroup, kLanes = sizeof(PhiloxVec) / 4;
  int64_t b = 0;
  for (; b + 4 * kGroup <= nblocks; b += 4 * kGroup) philox_groups<4>(key, block0 + b, j0 + 4 * b, f);
  for (; b + kGroup <= nblocks; b += kGroup) philox_groups<1>(key, block0 + b, j0 + 4 * b, f);
  if (b == nblocks) return;
  const int64_t j = j0 + 4 * b, valid = 4 * (nblocks - b);
  alignas(64) uint32_t words[4 * kGroup];
  philox_groups<1>(key, block0 + b, j, [&](int64_t jj, PhiloxVec v) {
    std::memcpy(words + (jj - j), &v, sizeof v);
  });
  int64_t k = 0;
  if (valid >= kLanes) {
    PhiloxVec v;
    std::memcpy(&v, words, sizeof v);
    f(j, v);
    k = kLanes;
  }
  for (; k < valid; ++k) f(j + k, words[k]);
}

#else
template <typename F>
void philox_visit_blocks(PhiloxKey key, uint64_t block0, int64_t nblocks, int64_t j0, F& f) {
  detail::philox_visit_scalar(key, block0, nblocks, j0, f);
}
#endif

// Visits elements j < len of the run first, first + stride, ...: whole Philox blocks through
// philox_visit_blocks where the run is contiguous, single words at its ends or when strided.
template <typename F>
void philox_visit(PhiloxKey key, int64_t first, int64_t stride, int64_t len, F&& f) {
  auto one = [&](int64_t j) {
    const uint64_t idx = static_cast<uint64_t>(first + j * stride);
    f(j, philox_block(key, idx >> 2).v[idx & 3]);
  };
  if (stride != 1) {
    for (int64_t j = 0; j < len; ++j) one(j);
    return;
  }
  int64_t j = 0;
  for (; j < len && ((first + j) & 3) != 0; ++j) one(j);  // up to a block boundary
  const int64_t nblocks = (len - j) / 4;
  philox_visit_blocks(key, static_cast<uint64_t>(first + j) >> 2, nblocks, j, f);
  for (j += 4 * nblocks; j < len; ++j) one(j);
}

// 32 random bits -> uniform_open01, per lane.
struct UniformMap {
  float operator()(uint32_t bits) const { return uniform_open01(bits); }
#if defined(__AVX512F__)
  __m512 operator()(__m512i bits) const {  // k * 2^-23 + 2^-24: exact, as (k + 0.5) * 2^-23
    const __m512 k = _mm512_cvtepi32_ps(_mm512_srli_epi32(bits, 9));
    return _mm512_fmadd_ps(k, _mm512_set1_ps(0x1p-23f), _mm512_set1_ps(0x1p-24f));
  }
#elif defined(__AVX2__)
  __m256 operator()(__m256i bits) const {
    const __m256 k = _mm256_cvtepi32_ps(_mm256_srli_epi32(bits, 9));
    return _mm256_fmadd_ps(k, _mm256_set1_ps(0x1p-23f), _mm256_set1_ps(0x1p-24f));
  }
#endif
};

// out[j] = map(bits of element j) for the run of philox_visit.
template <typename Map>
void philox_map(PhiloxKey key, int64_t first, int64_t stride, int64_t len, float* out,
                const Map& map) {
  philox_visit(key, first, stride, len, [&](int64_t j, auto bits) {
    if constexpr (std::is_same_v<decltype(bits), uint32_t>) {
      out[j] = map(bits);
    } else {
#if defined(__AVX512F__)
      _mm512_storeu_ps(out + j, map(bits));
#elif defined(__AVX2__)
      _mm256_storeu_ps(out + j, map(bits));
#endif
    }
  });
}

GENCORE_NAMESPACE_END
