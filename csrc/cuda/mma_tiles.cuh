// Warp-tile helpers on top of mma_sm80.cuh: tile loads into shared memory, A fragments, the two
// warp products (A B^T with B row-major in shared memory, A B through ldmatrix.trans), accumulator
// to A-operand conversion, and the coalesced store of accumulator rows. Torch-free.
//
// Shared-memory tiles are row-major, `cols` elements per row, row stride LD = cols + 8 elements: the
// 16-byte pad moves each row by 4 banks (rows of 144, 208, 272 bytes for 64, 96, 128 columns), so
// the 8 row addresses of each ldmatrix phase fall in 8 distinct 4-bank groups: no bank conflicts.
#pragma once
#include <cstdint>

#include "mma_sm80.cuh"

namespace gencore {
namespace mma {

template <int COLS>
inline constexpr int kPaddedLd = COLS + 8;

// Starts the async copy of rows [row0, row0 + ROWS) of a global matrix (row stride `stride`
// elements, COLS contiguous elements per row, 16-byte aligned) into `s`; rows >= n_rows are
// zero-filled.
template <int ROWS, int COLS, int THREADS, typename T>
__device__ __forceinline__ void load_rows_async(T* s, const T* g, int64_t stride, int row0, int n_rows, int tid) {
  constexpr int kChunks = COLS / 8, kTotal = ROWS * kChunks, LD = kPaddedLd<COLS>;
#pragma unroll
  for (int i = 0; i < (kTotal + THREADS - 1) / THREADS; ++i) {
    const int c = tid + i * THREADS;
    if (kTotal % THREADS == 0 || c < kTotal) {
      const int r = c / kChunks, k = c % kChunks;
      const bool ok = row0 + r < n_rows;
      cp_async_16(s + r * LD + k * 8, ok ? g + (int64_t)(row0 + r) * stride + k * 8 : g, ok);
    }
  }
}

// A fragments of the 16 x COLS block of `s` starting at row r0: f[ks] covers columns 16ks..16ks+15.
template <int COLS, typename T>
__device__ __forceinline__ void load_a_frags(uint32_t (&f)[COLS / 16][4], const T* s, int r0, int lane) {
  constexpr int LD = kPaddedLd<COLS>;
  const T* row = s + (r0 + (lane & 15)) * LD + (lane >> 4) * 8;
#pragma unroll
  for (int ks = 0; ks < COLS / 16; ++ks) ldmatrix_x4(f[ks], row + ks * 16);
}

// One 16-wide k-step of acc[m] (16 x 8kN) += A[m] B^T, where B is 8kN rows of shared memory
// (row-major, COLS per row) and `b_row` is this lane's ldmatrix row address (abt_b_row): the
// ldmatrix of B without .trans gives the B operand of A B^T directly. The kM row blocks of the warp
// share every B fragment.
template <int kM, int kN, int COLS, typename T>
__device__ __forceinline__ void mma_abt_kstep(float (&acc)[kM][kN][4], const uint32_t (&a)[kM][4], const T* b_row,
                                              int ks) {
  static_assert(kN % 2 == 0, "n-tiles come in pairs (one ldmatrix.x4)");
  constexpr int LD = kPaddedLd<COLS>;
#pragma unroll
  for (int np = 0; np < kN / 2; ++np) {
    uint32_t b[4];
    ldmatrix_x4(b, b_row + np * 16 * LD + ks * 16);
#pragma unroll
    for (int m = 0; m < kM; ++m) {
      mma_16816<T>(acc[m][2 * np], a[m], b[0], b[1]);
      mma_16816<T>(acc[m][2 * np + 1], a[m], b[2], b[3]);
    }
  }
}

// This lane's row address for the B side of mma_abt_kstep, B = rows n0.. of `s`. The matrices of
// one x4 are (rows 0-7, cols 0-7), (rows 0-7, cols 8-15), (rows 8-15, cols 0-7), (rows 8-15,
// cols 8-15) of a 16-row pair: b0, b1 of its first n-tile, then of its second.
template <int COLS, typename T>
__device__ __forceinline__ const T* abt_b_row(const T* s, int n0, int lane) {
  return s + (n0 + (lane & 7) + ((lane >> 4) << 3)) * kPaddedLd<COLS> + ((lane >> 3) & 1) * 8;
}

// acc[m] (16 x 8kN) += A[m] (16 x COLS, fragments in registers) * B^T, B = rows n0..n0+8kN of `s`.
template <int kM, int kN, int COLS, typename T>
__device__ __forceinline__ void mma_abt(float (&acc)[kM][kN][4], const uint32_t (&a)[kM][COLS / 16][4],
                                        const T* s, int n0, int lane) {
  const T* b_row = abt_b_row<COLS>(s, n0, lane);
#pragma unroll
  for (int ks = 0; ks < COLS / 16; ++ks) {
    uint32_t ak[kM][4];
#pragma unroll
    for (int m = 0; m < kM; ++m)
#pragma unroll
      for (int r = 0; r < 4; ++r) ak[m][r] = a[m][ks][r];
    mma_abt_kstep<kM, kN, COLS>(acc, ak, b_row, ks);
  }
}

// The same with A = rows a0..a0+16kM of `sa` read from shared memory one k-step at a time (for an
// A that does not fit in registers).
template <int kM, int kN, int COLS, typename T>
__device__ __forceinline__ void mma_abt_smem_a(float (&acc)[kM][kN][4], const T* sa, int a0, const T* s, int n0,
                                               int lane) {
  constexpr int LD = kPaddedLd<COLS>;
  const T* a_row = sa + (a0 + (lane & 15)) * LD + (lane >> 4) * 8;
  const T* b_row = abt_b_row<COLS>(s, n0, lane);
#pragma unroll
  for (int ks = 0; ks < COLS / 16; ++ks) {
    uint32_t ak[kM][4];
#pragma unroll
    for (int m = 0; m < kM; ++m) ldmatrix_x4(ak[m], a_row + 16 * m * LD + ks * 16);
    mma_abt_kstep<kM, kN, COLS>(acc, ak, b_row, ks);
  }
}

// acc[m] (16 x COLS) += A[m] (16 x 16, one fragment) * B, where B is rows k0..k0+15 of `s`
// (16 x COLS), through ldmatrix.trans.
template <int kM, int COLS, typename T>
__device__ __forceinline__ void mma_ab(float (&acc)[kM][COLS / 8][4], const uint32_t (&a)[kM][4], const T* s,
                                       int k0, int lane) {
  constexpr int LD = kPaddedLd<COLS>;
  // Matrices of one x4: (rows 0-7, cols 0-7), (rows 8-15, cols 0-7), (rows 0-7, cols 8-15),
  // (rows 8-15, cols 8-15): transposed, b0, b1 of n-tile 2dp, then of n-tile 2dp+1.
  const T* row = s + (k0 + (lane & 15)) * LD + (lane >> 4) * 8;
#pragma unroll
  for (int dp = 0; dp < COLS / 16; ++dp) {
    uint32_t b[4];
    ldmatrix_x4_trans(b, row + dp * 16);
#pragma unroll
    for (int m = 0; m < kM; ++m) {
      mma_16816<T>(acc[m][2 * dp], a[m], b[0], b[1]);
      mma_16816<T>(acc[m][2 * dp + 1], a[m], b[2], b[3]);
    }
  }
}

// Accumulators of columns 0-7 (c0) and 8-15 (c1) of a 16 x 16 tile, rounded to T, as the A
// fragment of that tile (the C and A layouts agree row for row).
template <typename T>
__device__ __forceinline__ void c_to_a(uint32_t (&a)[4], const float (&c0)[4], const float (&c1)[4]) {
  a[0] = pack2<T>(c0[0], c0[1]);
  a[1] = pack2<T>(c0[2], c0[3]);
  a[2] = pack2<T>(c1[0], c1[1]);
  a[3] = pack2<T>(c1[2], c1[3]);
}

// Stores a warp's accumulator rows (kM blocks of 16 rows x COLS) times mul[m][hi] (hi = 0 for row
// g, 1 for row g + 8 of block m), rounded to T, into rows [row0, row0 + 16kM) of a contiguous
// global matrix (COLS per row), skipping rows >= n_rows. The rows go through the warp's own 16kM
// shared-memory rows `s` so that the global stores are 16 bytes wide and coalesced.
template <int kM, int COLS, typename T>
__device__ __forceinline__ void store_rows(const float (&acc)[kM][COLS / 8][4], const float (&mul)[kM][2], T* s,
                                           T* g, int row0, int n_rows, int lane) {
  constexpr int LD = kPaddedLd<COLS>, kChunks = COLS / 8;
  const int r = lane / 4, c = 2 * (lane % 4);
#pragma unroll
  for (int m = 0; m < kM; ++m) {
#pragma unroll
    for (int n = 0; n < COLS / 8; ++n) {
      *reinterpret_cast<uint32_t*>(s + (16 * m + r) * LD + 8 * n + c) =
          pack2<T>(acc[m][n][0] * mul[m][0], acc[m][n][1] * mul[m][0]);
      *reinterpret_cast<uint32_t*>(s + (16 * m + r + 8) * LD + 8 * n + c) =
          pack2<T>(acc[m][n][2] * mul[m][1], acc[m][n][3] * mul[m][1]);
    }
  }
  __syncwarp();
#pragma unroll
  for (int i = lane; i < 16 * kM * kChunks; i += 32) {
    const int row = i / kChunks, k = i % kChunks;
    if (row0 + row < n_rows)
      *reinterpret_cast<uint4*>(g + (int64_t)(row0 + row) * COLS + k * 8) =
          *reinterpret_cast<const uint4*>(s + row * LD + k * 8);
  }
}

// The same with one multiplier for every row.
template <int kM, int COLS, typename T>
__device__ __forceinline__ void store_rows(const float (&acc)[kM][COLS / 8][4], float mul, T* s, T* g, int row0,
                                           int n_rows, int lane) {
  float rows[kM][2];
#pragma unroll
  for (int m = 0; m < kM; ++m) rows[m][0] = rows[m][1] = mul;
  store_rows<kM, COLS>(acc, rows, s, g, row0, n_rows, lane);
}

}  // namespace mma
}  // namespace gencore
