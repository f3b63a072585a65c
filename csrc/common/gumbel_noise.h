// Gumbel noise g = -log(-log(u)) in float32, from Philox bits: the one definition that the CPU
// kernel (scalar and SIMD), the CUDA kernel and the PyTorch reference (reference/gumbel_softmax.py,
// `log32`) compute bit for bit, so all three draw the same samples and hard one-hots agree exactly.
// Host and device; no torch.
//
// log32 replaces the libm/Sleef log (about twice its cost in the CPU kernel): split x = 2^k * m
// with m in [sqrt(1/2), sqrt(2)) by integer arithmetic on the bits, then
//     log(x) = k ln2 + f + f^2 P(f),   f = m - 1 (exact),   P of degree 8 fitted to (log1p(f) - f)/f^2,
// every step a single rounding (fma or one IEEE operation). Error <= 0.93 ulp for every positive
// normal float (tests/test_gumbel_softmax.py checks it against float64 over every input the noise
// can see). Only positive normal inputs: u lies in [2^-24, 1) and -log(u) in [6e-8, 16.7].
#pragma once
#include <cstdint>
#include <cstring>

#include "philox.h"
#include "isa_namespace.h"

GENCORE_NAMESPACE_BEGIN

namespace log32_consts {
constexpr int32_t kSqrtHalfBits = 0x3f3504f3;  // float bits of sqrt(1/2), rounded down
// P(f) = c0 + c1 f + ... + c8 f^8 (float32, minimax for the relative error of log1p).
constexpr float kC0 = -0x1.fffff8p-2f, kC1 = 0x1.55555p-2f, kC2 = -0x1.000428p-2f;
constexpr float kC3 = 0x1.99a402p-3f, kC4 = -0x1.54274ap-3f, kC5 = 0x1.22709ap-3f;
constexpr float kC6 = -0x1.0f376p-3f, kC7 = 0x1.084e14p-3f, kC8 = -0x1.383dacp-4f;
constexpr float kLn2 = 0x1.62e43p-1f;  // ln 2 rounded: |k| * 2e-9 error, < 0.03 ulp of k ln2
}  // namespace log32_consts

// One rounding each, never contracted or reassociated by the compiler.
GENCORE_HD float fma32(float a, float b, float c) {
#if defined(__CUDA_ARCH__)
  return __fmaf_rn(a, b, c);
#else
  return __builtin_fmaf(a, b, c);
#endif
}
GENCORE_HD float mul32(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

// float(k) for |k| < 2^22, exact; on the GPU without the int-to-float conversion unit (a quarter of
// the FMA rate): the bits of 1.5 * 2^23 + k, minus 1.5 * 2^23.
GENCORE_HD float small_int_to_float(int32_t k) {
#if defined(__CUDA_ARCH__)
  return __int_as_float(0x4B400000 + k) - 12582912.0f;
#else
  return static_cast<float>(k);
#endif
}

GENCORE_HD float log32(float x) {
  using namespace log32_consts;
  int32_t ix;
  memcpy(&ix, &x, sizeof ix);
  const int32_t k = (ix - kSqrtHalfBits) >> 23;  // arithmetic shift: k < 0 below sqrt(1/2)
  const int32_t mbits = ix - static_cast<int32_t>(static_cast<uint32_t>(k) << 23);
  float m;
  memcpy(&m, &mbits, sizeof m);
  const float f = m - 1.0f;
  float q = fma32(kC8, f, kC7);
  q = fma32(q, f, kC6);
  q = fma32(q, f, kC5);
  q = fma32(q, f, kC4);
  q = fma32(q, f, kC3);
  q = fma32(q, f, kC2);
  q = fma32(q, f, kC1);
  q = fma32(q, f, kC0);
  const float y = fma32(mul32(f, f), q, f);
  return fma32(small_int_to_float(k), kLn2, y);
}

// Gumbel(0, 1) noise from 32 random bits: -log(-log(u)), u = uniform_open01(bits).
GENCORE_HD float gumbel_noise(uint32_t bits) {
  return -log32(-log32(uniform_open01(bits)));
}

GENCORE_NAMESPACE_END
