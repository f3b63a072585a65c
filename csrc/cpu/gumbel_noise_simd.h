// Gumbel noise on CPU vectors, from the bit vectors of philox_visit (philox_simd.h): log32 and
// gumbel_noise of common/gumbel_noise.h, lane by lane the same operations in the same order, so
// bit-identical to the scalar, CUDA and reference versions (tests/test_gumbel_softmax.py checks every
// uniform). minus_gumbel returns -g = log(-log(u)): callers subtract it, which is exactly adding g.
#pragma once
#include <cstdint>

#include "../common/gumbel_noise.h"
#include "../common/isa_namespace.h"
#include "philox_simd.h"

GENCORE_NAMESPACE_BEGIN

// The bits of log32's reduction for x, or for -x when kNegated (folded into the integer subtraction:
// (ix ^ sign) - c == ix - (c + sign) mod 2^32): t = bits(+-x) - bits(sqrt(1/2)), then
// k = t >> 23 and m = bits(+-x) - (k << 23) = (t & 0x7fffff) + bits(sqrt(1/2)).
template <bool kNegated>
constexpr int32_t kLog32Offset =
    static_cast<int32_t>(static_cast<uint32_t>(log32_consts::kSqrtHalfBits) + (kNegated ? 0x80000000u : 0u));

#if defined(__AVX512F__) || defined(__AVX2__)
// The vector operations log32 needs, on this build's float lanes (16 or 8).
struct Lanes {
#if defined(__AVX512F__)
  using F = __m512;
  using I = __m512i;
  static F set(float v) { return _mm512_set1_ps(v); }
  static I set(int32_t v) { return _mm512_set1_epi32(v); }
  static I add(I a, I b) { return _mm512_add_epi32(a, b); }
  static I sub(I a, I b) { return _mm512_sub_epi32(a, b); }
  static I bit_and(I a, I b) { return _mm512_and_si512(a, b); }
  static I shift_right(I a) { return _mm512_srai_epi32(a, 23); }
  static I bits(F a) { return _mm512_castps_si512(a); }
  static F from_bits(I a) { return _mm512_castsi512_ps(a); }
  static F to_float(I a) { return _mm512_cvtepi32_ps(a); }
  static F sub(F a, F b) { return _mm512_sub_ps(a, b); }
  static F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  static F fma(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
#else
  using F = __m256;
  using I = __m256i;
  static F set(float v) { return _mm256_set1_ps(v); }
  static I set(int32_t v) { return _mm256_set1_epi32(v); }
  static I add(I a, I b) { return _mm256_add_epi32(a, b); }
  static I sub(I a, I b) { return _mm256_sub_epi32(a, b); }
  static I bit_and(I a, I b) { return _mm256_and_si256(a, b); }
  static I shift_right(I a) { return _mm256_srai_epi32(a, 23); }
  static I bits(F a) { return _mm256_castps_si256(a); }
  static F from_bits(I a) { return _mm256_castsi256_ps(a); }
  static F to_float(I a) { return _mm256_cvtepi32_ps(a); }
  static F sub(F a, F b) { return _mm256_sub_ps(a, b); }
  static F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  static F fma(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
#endif
};

template <bool kNegated>
Lanes::F log32(Lanes::F x) {
  using namespace log32_consts;
  using L = Lanes;
  const L::I t = L::sub(L::bits(x), L::set(kLog32Offset<kNegated>));
  const L::I mbits = L::add(L::bit_and(t, L::set(int32_t{0x7fffff})), L::set(kSqrtHalfBits));
  const L::F f = L::sub(L::from_bits(mbits), L::set(1.0f));
  L::F q = L::fma(L::set(kC8), f, L::set(kC7));
  q = L::fma(q, f, L::set(kC6));
  q = L::fma(q, f, L::set(kC5));
  q = L::fma(q, f, L::set(kC4));
  q = L::fma(q, f, L::set(kC3));
  q = L::fma(q, f, L::set(kC2));
  q = L::fma(q, f, L::set(kC1));
  q = L::fma(q, f, L::set(kC0));
  const L::F y = L::fma(L::mul(f, f), q, f);
  return L::fma(L::to_float(L::shift_right(t)), L::set(kLn2), y);
}

inline Lanes::F minus_gumbel(Lanes::I bits) {
  return log32<true>(log32<false>(UniformMap{}(bits)));
}
#endif

GENCORE_NAMESPACE_END
