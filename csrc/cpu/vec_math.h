// Vector helpers of the softmax passes.
// exp_vec: on AVX-512 a shorter float exp than Sleef's (range reduction by ln 2, degree-6
// polynomial, scalef), <= 1 ulp like Sleef's expf_u10 and about 25% cheaper; elsewhere at::vec's.
// max_vec: the lane maximum in one instruction where at::vec::maximum takes three to propagate NaN;
// a NaN in b is dropped, so callers find NaN rows another way (their exp sum).
#pragma once
#include <ATen/cpu/vec/vec.h>

#include "../common/isa_namespace.h"

GENCORE_NAMESPACE_BEGIN

inline at::vec::Vectorized<double> exp_vec(const at::vec::Vectorized<double>& x) { return x.exp(); }

#if defined(CPU_CAPABILITY_AVX512)
inline at::vec::Vectorized<float> max_vec(const at::vec::Vectorized<float>& a,
                                          const at::vec::Vectorized<float>& b) {
  return _mm512_max_ps(a, b);
}

inline at::vec::Vectorized<float> exp_vec(const at::vec::Vectorized<float>& v) {
  // exp(x) = 2^n exp(r), n = round(x / ln 2), r = x - n ln 2 (two-part ln 2), |r| <= ln 2 / 2;
  // exp(r) = 1 + r + r^2 P(r), P of degree 4 (minimax, relative error 0.05 ulp).
  // Clamp below (exp = 0 there, -inf included); NaN stays NaN (max_ps returns its second operand).
  const __m512 x = _mm512_max_ps(_mm512_set1_ps(-104.0f), __m512(v));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(0x1.715476p+0f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0x1.62e4p-1f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0x1.7f7d1cp-20f), r);
  __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(0x1.6a244ap-10f), r, _mm512_set1_ps(0x1.1239d4p-7f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0x1.5558f2p-5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0x1.555492p-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0x1.fffffcp-2f));
  const __m512 t = _mm512_fmadd_ps(_mm512_mul_ps(r, r), p, r);
  return _mm512_scalef_ps(_mm512_add_ps(t, _mm512_set1_ps(1.0f)), n);
}
#else
inline at::vec::Vectorized<float> max_vec(const at::vec::Vectorized<float>& a,
                                          const at::vec::Vectorized<float>& b) {
  return at::vec::maximum(a, b);
}

inline at::vec::Vectorized<float> exp_vec(const at::vec::Vectorized<float>& x) { return x.exp(); }
#endif

GENCORE_NAMESPACE_END
