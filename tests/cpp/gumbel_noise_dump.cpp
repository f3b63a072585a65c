// Writes the CPU kernel's Gumbel noise for every uniform the kernels can draw (the 2^23 values
// u = (k + 0.5) 2^-23), twice: from the scalar path (common/gumbel_noise.h) and from the vector path
// of this build's ISA (cpu/gumbel_noise_simd.h), as raw float32 to stdout. Built and compared with
// the reference by tests/test_gumbel_noise.py.
#include <cstdint>
#include <cstdio>
#include <vector>

#include "cpu/gumbel_noise_simd.h"

int main() {
  using namespace gencore;
  const int64_t n = int64_t(1) << 23;
  std::vector<float> scalar(n), vec(n);
  for (int64_t k = 0; k < n; ++k) scalar[k] = gumbel_noise(static_cast<uint32_t>(k) << 9);
#if defined(__AVX512F__)
  const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  for (int64_t k = 0; k < n; k += 16) {
    const __m512i bits = _mm512_slli_epi32(_mm512_add_epi32(_mm512_set1_epi32(int(k)), iota), 9);
    _mm512_storeu_ps(&vec[k], _mm512_sub_ps(_mm512_setzero_ps(), minus_gumbel(bits)));
  }
#elif defined(__AVX2__)
  const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (int64_t k = 0; k < n; k += 8) {
    const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_set1_epi32(int(k)), iota), 9);
    _mm256_storeu_ps(&vec[k], _mm256_sub_ps(_mm256_setzero_ps(), minus_gumbel(bits)));
  }
#else
  vec = scalar;
#endif
  std::fwrite(scalar.data(), sizeof(float), n, stdout);
  std::fwrite(vec.data(), sizeof(float), n, stdout);
  return 0;
}
