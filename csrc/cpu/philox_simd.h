// Philox4x32-10 uniforms for a run of consecutive element indices, 16 (AVX-512) or 8 (AVX2)
// Philox blocks per step. Bit-identical to the scalar philox_block() in common/philox.h.
#pragma once
#include <cstdint>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#include "../common/philox.h"

namespace gencore {

namespace detail {
inline void philox_uniforms_scalar(PhiloxKey key, uint64_t block0, int64_t nblocks, float* out) {
  for (int64_t b = 0; b < nblocks; ++b) {
    const Philox4 r = philox_block(key, block0 + b);
    for (int w = 0; w < 4; ++w) out[4 * b + w] = uniform_open01(r.v[w]);
  }
}
}  // namespace detail

#if defined(__AVX512F__)
namespace detail {
// (hi, lo) of the 32x32-bit products of each lane of c with m.
inline void mulhilo16(__m512i c, __m512i m, __m512i& hi, __m512i& lo) {
  const __m512i even = _mm512_mul_epu32(c, m);
  const __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(c, 32), m);
  lo = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
  hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
}
inline __m512 to_uniform16(__m512i bits) {
  const __m512 k = _mm512_cvtepi32_ps(_mm512_srli_epi32(bits, 9));
  return _mm512_mul_ps(_mm512_add_ps(k, _mm512_set1_ps(0.5f)), _mm512_set1_ps(1.0f / 8388608.0f));
}
// Lane j of word vector w (as uniforms) goes to out[4 * j + w]: a 4 x 16 transpose.
inline void store_transposed16(__m512i w0, __m512i w1, __m512i w2, __m512i w3, float* o) {
  const __m512 a = to_uniform16(w0), bb = to_uniform16(w1);
  const __m512 c = to_uniform16(w2), d = to_uniform16(w3);
  const __m512 ab_lo = _mm512_unpacklo_ps(a, bb), ab_hi = _mm512_unpackhi_ps(a, bb);
  const __m512 cd_lo = _mm512_unpacklo_ps(c, d), cd_hi = _mm512_unpackhi_ps(c, d);
  const __m512 r0 = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(ab_lo), _mm512_castps_pd(cd_lo)));
  const __m512 r1 = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(ab_lo), _mm512_castps_pd(cd_lo)));
  const __m512 r2 = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(ab_hi), _mm512_castps_pd(cd_hi)));
  const __m512 r3 = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(ab_hi), _mm512_castps_pd(cd_hi)));
  const __m512 t0 = _mm512_shuffle_f32x4(r0, r1, 0x44), t1 = _mm512_shuffle_f32x4(r2, r3, 0x44);
  const __m512 t2 = _mm512_shuffle_f32x4(r0, r1, 0xEE), t3 = _mm512_shuffle_f32x4(r2, r3, 0xEE);
  _mm512_storeu_ps(o, _mm512_shuffle_f32x4(t0, t1, 0x88));
  _mm512_storeu_ps(o + 16, _mm512_shuffle_f32x4(t0, t1, 0xDD));
  _mm512_storeu_ps(o + 32, _mm512_shuffle_f32x4(t2, t3, 0x88));
  _mm512_storeu_ps(o + 48, _mm512_shuffle_f32x4(t2, t3, 0xDD));
}
}  // namespace detail

// out[4 * b + w] = uniform from word w of Philox block (block0 + b), for b < nblocks.
inline void philox_uniforms_blocks(PhiloxKey key, uint64_t block0, int64_t nblocks, float* out) {
  const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i m0 = _mm512_set1_epi64(kPhiloxM0), m1 = _mm512_set1_epi64(kPhiloxM1);
  const __m512i off_lo = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(key.offset)));
  const __m512i off_hi = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(key.offset >> 32)));
  // Two independent groups of 16 blocks per step: a Philox round is a chain of dependent
  // multiplies, and interleaving two chains keeps the multiplier busy.
  constexpr int G = 2;
  int64_t b = 0;
  for (; b + 16 * G <= nblocks; b += 16 * G) {
    __m512i c0[G], c1[G], c2[G], c3[G];
    for (int g = 0; g < G; ++g) {
      const uint64_t first = block0 + static_cast<uint64_t>(b + 16 * g);
      const __m512i base = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(first)));
      c0[g] = _mm512_add_epi32(base, iota);
      // Carry into the high word where the low word wrapped.
      const __mmask16 wrapped = _mm512_cmplt_epu32_mask(c0[g], base);
      const __m512i high = _mm512_set1_epi32(static_cast<int>(first >> 32));
      c1[g] = _mm512_mask_add_epi32(high, wrapped, high, _mm512_set1_epi32(1));
      c2[g] = off_lo;
      c3[g] = off_hi;
    }
    uint32_t k0 = static_cast<uint32_t>(key.seed), k1 = static_cast<uint32_t>(key.seed >> 32);
    for (int round = 0; round < 10; ++round) {
      const __m512i vk0 = _mm512_set1_epi32(static_cast<int>(k0));
      const __m512i vk1 = _mm512_set1_epi32(static_cast<int>(k1));
      for (int g = 0; g < G; ++g) {
        __m512i hi0, lo0, hi1, lo1;
        detail::mulhilo16(c0[g], m0, hi0, lo0);
        detail::mulhilo16(c2[g], m1, hi1, lo1);
        c0[g] = _mm512_ternarylogic_epi32(hi1, c1[g], vk0, 0x96);  // three-way xor
        c2[g] = _mm512_ternarylogic_epi32(hi0, c3[g], vk1, 0x96);
        c1[g] = lo1;
        c3[g] = lo0;
      }
      k0 += kPhiloxW0;
      k1 += kPhiloxW1;
    }
    for (int g = 0; g < G; ++g)
      detail::store_transposed16(c0[g], c1[g], c2[g], c3[g], out + 4 * (b + 16 * g));
  }
  detail::philox_uniforms_scalar(key, block0 + static_cast<uint64_t>(b), nblocks - b, out + 4 * b);
}

#elif defined(__AVX2__)
namespace detail {
inline void mulhilo8(__m256i c, __m256i m, __m256i& hi, __m256i& lo) {
  const __m256i even = _mm256_mul_epu32(c, m);
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(c, 32), m);
  lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
  hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
}
inline __m256 to_uniform8(__m256i bits) {
  const __m256 k = _mm256_cvtepi32_ps(_mm256_srli_epi32(bits, 9));
  return _mm256_mul_ps(_mm256_add_ps(k, _mm256_set1_ps(0.5f)), _mm256_set1_ps(1.0f / 8388608.0f));
}
}  // namespace detail

inline void philox_uniforms_blocks(PhiloxKey key, uint64_t block0, int64_t nblocks, float* out) {
  const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i m0 = _mm256_set1_epi64x(kPhiloxM0), m1 = _mm256_set1_epi64x(kPhiloxM1);
  const __m256i off_lo = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(key.offset)));
  const __m256i off_hi = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(key.offset >> 32)));
  const __m256i sign = _mm256_set1_epi32(static_cast<int>(0x80000000u));
  int64_t b = 0;
  for (; b + 8 <= nblocks; b += 8) {
    const uint64_t first = block0 + static_cast<uint64_t>(b);
    const __m256i base = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(first)));
    __m256i c0 = _mm256_add_epi32(base, iota);
    // Unsigned c0 < base (the low word wrapped) via signed compare of sign-flipped values.
    const __m256i wrapped = _mm256_cmpgt_epi32(_mm256_xor_si256(base, sign), _mm256_xor_si256(c0, sign));
    __m256i c1 = _mm256_sub_epi32(_mm256_set1_epi32(static_cast<int>(first >> 32)), wrapped);
    __m256i c2 = off_lo, c3 = off_hi;
    uint32_t k0 = static_cast<uint32_t>(key.seed), k1 = static_cast<uint32_t>(key.seed >> 32);
    for (int round = 0; round < 10; ++round) {
      __m256i hi0, lo0, hi1, lo1;
      detail::mulhilo8(c0, m0, hi0, lo0);
      detail::mulhilo8(c2, m1, hi1, lo1);
      c0 = _mm256_xor_si256(_mm256_xor_si256(hi1, c1), _mm256_set1_epi32(static_cast<int>(k0)));
      c2 = _mm256_xor_si256(_mm256_xor_si256(hi0, c3), _mm256_set1_epi32(static_cast<int>(k1)));
      c1 = lo1;
      c3 = lo0;
      k0 += kPhiloxW0;
      k1 += kPhiloxW1;
    }
    const __m256 a = detail::to_uniform8(c0), bb = detail::to_uniform8(c1);
    const __m256 c = detail::to_uniform8(c2), d = detail::to_uniform8(c3);
    const __m256 ab_lo = _mm256_unpacklo_ps(a, bb), ab_hi = _mm256_unpackhi_ps(a, bb);
    const __m256 cd_lo = _mm256_unpacklo_ps(c, d), cd_hi = _mm256_unpackhi_ps(c, d);
    const __m256 r0 = _mm256_castpd_ps(_mm256_unpacklo_pd(_mm256_castps_pd(ab_lo), _mm256_castps_pd(cd_lo)));
    const __m256 r1 = _mm256_castpd_ps(_mm256_unpackhi_pd(_mm256_castps_pd(ab_lo), _mm256_castps_pd(cd_lo)));
    const __m256 r2 = _mm256_castpd_ps(_mm256_unpacklo_pd(_mm256_castps_pd(ab_hi), _mm256_castps_pd(cd_hi)));
    const __m256 r3 = _mm256_castpd_ps(_mm256_unpackhi_pd(_mm256_castps_pd(ab_hi), _mm256_castps_pd(cd_hi)));
    float* o = out + 4 * b;
    _mm256_storeu_ps(o, _mm256_permute2f128_ps(r0, r1, 0x20));
    _mm256_storeu_ps(o + 8, _mm256_permute2f128_ps(r2, r3, 0x20));
    _mm256_storeu_ps(o + 16, _mm256_permute2f128_ps(r0, r1, 0x31));
    _mm256_storeu_ps(o + 24, _mm256_permute2f128_ps(r2, r3, 0x31));
  }
  detail::philox_uniforms_scalar(key, block0 + static_cast<uint64_t>(b), nblocks - b, out + 4 * b);
}

#else
inline void philox_uniforms_blocks(PhiloxKey key, uint64_t block0, int64_t nblocks, float* out) {
  detail::philox_uniforms_scalar(key, block0, nblocks, out);
}
#endif

}  // namespace gencore
