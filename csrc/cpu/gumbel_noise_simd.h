// Gumbel noise on CPU vectors, from the bit vectors of philox_visit (philox_simd.h): log32 and
// gumbel_noise of common/gumbel_noise.h, lane by lane the same operations in the same order, so
// bit-identical to the scalar, CUDA and reference versions (tests/test_gumbel_softmax.py checks every
// uniform). minus_gumbel returns -g = log(-log(u)): callers subtract it, which is exactly adding g.
#pragma once
#include <cstdint>

#include "../common/gumbel_noise.h"
#include "philox_simd.h"

namespace gencore {

// The bits of log32's reduction for x, or for -x when kNegated (folded into the integer subtraction:
// (ix ^ sign) - c == ix - (c + sign) mod 2^32): t = bits(+-x) - bits(sqrt(1/2)), then
// k = t >> 23 and m = bits(+-x) - (k << 23) = (t & 0x7fffff) + bits(sqrt(1/2)).
template <bool kNegated>
constexpr int32_t kLog32Offset =
    static_cast<int32_t>(static_cast<uint32_t>(log32_consts::kSqrtHalfBits) + (kNegated ? 0x80000000u : 0u));

#if defined(__AVX512F__)
template <bool kNegated>
__m512 log32(__m512 x) {
  using namespace log32_consts;
  const __m512i t = _mm512_sub_epi32(_mm512_castps_si512(x), _mm512_set1_epi32(kLog32Offset<kNegated>));
  const __m512i mbits = _mm512_add_epi32(_mm512_and_si512(t, _mm512_set1_epi32(0x7fffff)),
                                         _mm512_set1_epi32(kSqrtHalfBits));
  const __m512 f = _mm512_sub_ps(_mm512_castsi512_ps(mbits), _mm512_set1_ps(1.0f));
  __m512 q = _mm512_fmadd_ps(_mm512_set1_ps(kC8), f, _mm512_set1_ps(kC7));
  q = _mm512_fmadd_ps(q, f, _mm512_set1_ps(kC6));
  q = _mm512_fmadd_ps(q, f, _mm512_set1_ps(kC5));
  q = _mm512_fmadd_ps(q, f, _mm512_set1_ps(kC4));
  q = _mm512_fmadd_ps(q, f, _mm512_set1_ps(kC3));
  q = _mm512_fmadd_ps(q, f, _mm512_set1_ps(kC2));
  q = _mm512_fmadd_ps(q, f, _mm512_set1_ps(kC1));
  q = _mm512_fmadd_ps(q, f, _mm512_set1_ps(kC0));
  const __m512 y = _mm512_fmadd_ps(_mm512_mul_ps(f, f), q, f);
  const __m512 kf = _mm512_cvtepi32_ps(_mm512_srai_epi32(t, 23));
  return _mm512_fmadd_ps(kf, _mm512_set1_ps(kLn2), y);
}

inline __m512 minus_gumbel(__m512i bits) { return log32<true>(log32<false>(UniformMap{}(bits))); }

#elif defined(__AVX2__)
template <bool kNegated>
__m256 log32(__m256 x) {
  using namespace log32_consts;
  const __m256i t = _mm256_sub_epi32(_mm256_castps_si256(x), _mm256_set1_epi32(kLog32Offset<kNegated>));
  const __m256i mbits = _mm256_add_epi32(_mm256_and_si256(t, _mm256_set1_epi32(0x7fffff)),
                                         _mm256_set1_epi32(kSqrtHalfBits));
  const __m256 f = _mm256_sub_ps(_mm256_castsi256_ps(mbits), _mm256_set1_ps(1.0f));
  __m256 q = _mm256_fmadd_ps(_mm256_set1_ps(kC8), f, _mm256_set1_ps(kC7));
  q = _mm256_fmadd_ps(q, f, _mm256_set1_ps(kC6));
  q = _mm256_fmadd_ps(q, f, _mm256_set1_ps(kC5));
  q = _mm256_fmadd_ps(q, f, _mm256_set1_ps(kC4));
  q = _mm256_fmadd_ps(q, f, _mm256_set1_ps(kC3));
  q = _mm256_fmadd_ps(q, f, _mm256_set1_ps(kC2));
  q = _mm256_fmadd_ps(q, f, _mm256_set1_ps(kC1));
  q = _mm256_fmadd_ps(q, f, _mm256_set1_ps(kC0));
  const __m256 y = _mm256_fmadd_ps(_mm256_mul_ps(f, f), q, f);
  const __m256 kf = _mm256_cvtepi32_ps(_mm256_srai_epi32(t, 23));
  return _mm256_fmadd_ps(kf, _mm256_set1_ps(kLn2), y);
}

inline __m256 minus_gumbel(__m256i bits) { return log32<true>(log32<false>(UniformMap{}(bits))); }
#endif

}  // namespace gencore
