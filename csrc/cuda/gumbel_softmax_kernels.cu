// Gumbel-softmax CUDA kernels. No torch: raw pointers, sizes, a stream.
//
// Forward: GROUP threads per row (a warp for rows up to 1024 wide, else 256). Pass 1 draws the
// Philox noise, forms z = (x + g) / tau, keeps z in shared memory where the row fits, and keeps a
// per-thread online (max, sum of exp) and first argmax; a group reduction combines them. Pass 2
// writes exp(z - max) / sum, read back from shared memory, or recomputed from the logits for rows
// too wide to cache (the noise is a pure function of the element index, so recomputing is exact).
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "../common/cuda_math.cuh"
#include "../common/philox.h"
#include "gumbel_softmax_kernels.h"

namespace gencore {
namespace {

constexpr int kBlock = 256;

template <typename A>
struct RowState {
  A m;          // running max of z
  A s;          // sum of exp(z - m)
  int64_t arg;  // first index of the max
  int bad;      // saw NaN or +inf
};

template <typename A>
__device__ __forceinline__ A exp_acc(A x) { return exp(x); }
template <>
__device__ __forceinline__ float exp_acc<float>(float x) { return expf(x); }
template <typename A>
__device__ __forceinline__ A log_acc(A x) { return log(x); }
template <>
__device__ __forceinline__ float log_acc<float>(float x) { return logf(x); }  // accurate near 1

template <typename A>
__device__ __forceinline__ void push(RowState<A>& st, A z, int64_t j) {
  if (z != z || z == INFINITY) { st.bad = 1; return; }
  if (z == -INFINITY) return;  // contributes exp(-inf) = 0
  if (z > st.m) {
    st.s = st.s * exp_acc<A>(st.m - z) + A(1);
    st.m = z;
    st.arg = j;
  } else {
    st.s += exp_acc<A>(z - st.m);
  }
}

template <typename A>
__device__ __forceinline__ RowState<A> combine(const RowState<A>& a, const RowState<A>& b) {
  RowState<A> r;
  r.bad = a.bad | b.bad;
  r.m = a.m > b.m ? a.m : b.m;
  const A sa = a.m == -INFINITY ? A(0) : a.s * exp_acc<A>(a.m - r.m);
  const A sb = b.m == -INFINITY ? A(0) : b.s * exp_acc<A>(b.m - r.m);
  r.s = sa + sb;
  if (a.m > b.m) r.arg = a.arg;
  else if (b.m > a.m) r.arg = b.arg;
  else r.arg = a.arg < b.arg ? a.arg : b.arg;
  return r;
}

template <typename A>
__device__ __forceinline__ RowState<A> shfl_state(const RowState<A>& st, int lane_mask) {
  RowState<A> o;
  o.m = __shfl_xor_sync(0xffffffffu, st.m, lane_mask);
  o.s = __shfl_xor_sync(0xffffffffu, st.s, lane_mask);
  o.arg = __shfl_xor_sync(0xffffffffu, st.arg, lane_mask);
  o.bad = __shfl_xor_sync(0xffffffffu, st.bad, lane_mask);
  return o;
}

// Reduces the states of the GROUP threads of a row; every thread of the group gets the result.
template <int GROUP, typename A>
__device__ RowState<A> group_reduce(RowState<A> st) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) st = combine(st, shfl_state(st, o));
  if (GROUP == 32) return st;
  __shared__ RowState<A> partial[GROUP / 32];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) partial[warp] = st;
  __syncthreads();
  RowState<A> r = partial[0];
  for (int w = 1; w < GROUP / 32; ++w) r = combine(r, partial[w]);
  __syncthreads();  // partial[] is reused by the next row
  return r;
}

template <typename A>
__device__ __forceinline__ A noise_z(A x, uint32_t bits, A inv_tau) {
  const A u = static_cast<A>(uniform_open01(bits));
  return (x + (-log_acc<A>(-log_acc<A>(u)))) * inv_tau;
}

// Calls f(j, bits) for each element j of the row whose first logical index is `first`, spread
// over the GROUP threads: one Philox block per 4 consecutive indices when the row is contiguous.
template <int GROUP, typename F>
__device__ __forceinline__ void for_each_noise(PhiloxKey key, int64_t first, int64_t n,
                                               int64_t inner, int t, F&& f) {
  if (inner == 1) {
    const uint64_t b0 = static_cast<uint64_t>(first) >> 2;
    const uint64_t b1 = static_cast<uint64_t>(first + n - 1) >> 2;
    for (uint64_t b = b0 + t; b <= b1; b += GROUP) {
      const Philox4 r = philox_block(key, b);
#pragma unroll
      for (int w = 0; w < 4; ++w) {
        const int64_t j = static_cast<int64_t>(4 * b + w) - first;
        if (j >= 0 && j < n) f(j, r.v[w]);
      }
    }
  } else {
    for (int64_t j = t; j < n; j += GROUP) {
      const uint64_t idx = static_cast<uint64_t>(first + j * inner);
      f(j, philox_block(key, idx >> 2).v[idx & 3]);
    }
  }
}

template <typename T, int GROUP>
__global__ void __launch_bounds__(kBlock)
gumbel_forward_kernel(const T* __restrict__ x, T* __restrict__ out, T* __restrict__ soft,
                      int64_t rows, int64_t n, int64_t inner, PhiloxKey key,
                      typename AccOf<T>::type inv_tau, bool hard, bool cached) {
  using A = typename AccOf<T>::type;
  extern __shared__ unsigned char smem_raw[];
  constexpr int kRowsPerBlock = kBlock / GROUP;
  const int t = threadIdx.x % GROUP, slot = threadIdx.x / GROUP;
  A* zcache = reinterpret_cast<A*>(smem_raw) + static_cast<int64_t>(slot) * n;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + slot; ;
       row += static_cast<int64_t>(gridDim.x) * kRowsPerBlock) {
    // Whole groups leave together (GROUP > 32 uses __syncthreads in the reduction).
    const bool live = row < rows;
    if (GROUP > 32 && __syncthreads_or(live) == 0) break;
    if (GROUP == 32 && !live) break;
    const int64_t o = row / inner, i = row % inner;
    const int64_t first = o * n * inner + i;
    RowState<A> st{-INFINITY, A(0), 0, 0};
    if (live) {
      for_each_noise<GROUP>(key, first, n, inner, t, [&](int64_t j, uint32_t bits) {
        const A z = noise_z<A>(to_acc(x[first + j * inner]), bits, inv_tau);
        if (cached) zcache[j] = z;
        push(st, z, j);
      });
    }
    st = group_reduce<GROUP>(st);
    if (!live) continue;
    if (GROUP == 32) __syncwarp(); else __syncthreads();  // zcache written by other threads
    const bool nan_row = st.bad || st.m == -INFINITY;
    const A inv_sum = A(1) / st.s;
    auto write = [&](int64_t j, A z) {
      const int64_t at = first + j * inner;
      const A y = nan_row ? A(NAN) : exp_acc<A>(z - st.m) * inv_sum;
      if (hard) {
        soft[at] = from_acc<T>(y);
        out[at] = from_acc<T>(nan_row ? A(NAN) : (j == st.arg ? A(1) : A(0)));
      } else {
        out[at] = from_acc<T>(y);
      }
    };
    if (cached) {
      for (int64_t j = t; j < n; j += GROUP) write(j, zcache[j]);
    } else {
      for_each_noise<GROUP>(key, first, n, inner, t, [&](int64_t j, uint32_t bits) {
        write(j, noise_z<A>(to_acc(x[first + j * inner]), bits, inv_tau));
      });
    }
    if (GROUP == 32) __syncwarp(); else __syncthreads();  // before zcache is reused
  }
}

// dx = y * (g - <g, y>) / tau, GROUP threads per row.
template <typename T, int GROUP>
__global__ void __launch_bounds__(kBlock)
gumbel_backward_kernel(const T* __restrict__ g, const T* __restrict__ y, T* __restrict__ dx,
                       int64_t rows, int64_t n, int64_t inner, typename AccOf<T>::type inv_tau) {
  using A = typename AccOf<T>::type;
  constexpr int kRowsPerBlock = kBlock / GROUP;
  __shared__ A partial[GROUP / 32 > 0 ? kBlock / 32 : 1];
  const int t = threadIdx.x % GROUP, slot = threadIdx.x / GROUP;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + slot; ;
       row += static_cast<int64_t>(gridDim.x) * kRowsPerBlock) {
    const bool live = row < rows;
    if (GROUP > 32 && __syncthreads_or(live) == 0) break;
    if (GROUP == 32 && !live) break;
    const int64_t o = row / inner, i = row % inner;
    const int64_t first = o * n * inner + i;
    A dot = 0;
    if (live)
      for (int64_t j = t; j < n; j += GROUP)
        dot += to_acc(g[first + j * inner]) * to_acc(y[first + j * inner]);
    dot = warp_sum(dot);
    if (GROUP > 32) {
      if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = dot;
      __syncthreads();
      dot = 0;
      for (int w = 0; w < GROUP / 32; ++w) dot += partial[w];
      __syncthreads();
    }
    if (!live) continue;
    for (int64_t j = t; j < n; j += GROUP) {
      const int64_t at = first + j * inner;
      dx[at] = from_acc<T>(to_acc(y[at]) * (to_acc(g[at]) - dot) * inv_tau);
    }
  }
}

int grid_for(int64_t rows, int rows_per_block) {
  const int64_t blocks = (rows + rows_per_block - 1) / rows_per_block;
  return static_cast<int>(blocks < 65535 * 32 ? blocks : 65535 * 32);
}

template <typename T, int GROUP>
cudaError_t forward_typed(const void* x, void* out, void* soft, int64_t rows, int64_t n,
                          int64_t inner, PhiloxKey key, double tau, bool hard, cudaStream_t s) {
  using A = typename AccOf<T>::type;
  constexpr int kRowsPerBlock = kBlock / GROUP;
  int device = 0, max_smem = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  err = cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (err != cudaSuccess) return err;
  const size_t want = static_cast<size_t>(kRowsPerBlock) * n * sizeof(A);
  // Leave room for the static shared memory of the reduction.
  const bool cached = want + 1024 <= static_cast<size_t>(max_smem);
  const size_t smem = cached ? want : 0;
  auto kernel = gumbel_forward_kernel<T, GROUP>;
  if (smem > 48 * 1024) {
    err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               static_cast<int>(smem));
    if (err != cudaSuccess) return err;
  }
  kernel<<<grid_for(rows, kRowsPerBlock), kBlock, smem, s>>>(
      static_cast<const T*>(x), static_cast<T*>(out), static_cast<T*>(soft), rows, n, inner, key,
      static_cast<A>(1.0 / tau), hard, cached);
  return cudaGetLastError();
}

template <typename T>
cudaError_t forward_dispatch_group(const void* x, void* out, void* soft, int64_t rows, int64_t n,
                                   int64_t inner, PhiloxKey key, double tau, bool hard,
                                   cudaStream_t s) {
  if (n <= 1024) return forward_typed<T, 32>(x, out, soft, rows, n, inner, key, tau, hard, s);
  return forward_typed<T, kBlock>(x, out, soft, rows, n, inner, key, tau, hard, s);
}

template <typename T>
cudaError_t backward_typed(const void* g, const void* y, void* dx, int64_t rows, int64_t n,
                           int64_t inner, double tau, cudaStream_t s) {
  using A = typename AccOf<T>::type;
  if (n <= 1024) {
    gumbel_backward_kernel<T, 32><<<grid_for(rows, kBlock / 32), kBlock, 0, s>>>(
        static_cast<const T*>(g), static_cast<const T*>(y), static_cast<T*>(dx), rows, n, inner,
        static_cast<A>(1.0 / tau));
  } else {
    gumbel_backward_kernel<T, kBlock><<<grid_for(rows, 1), kBlock, 0, s>>>(
        static_cast<const T*>(g), static_cast<const T*>(y), static_cast<T*>(dx), rows, n, inner,
        static_cast<A>(1.0 / tau));
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_gumbel_softmax_forward(FloatType dtype, const void* logits, void* out, void* soft,
                                          int64_t outer, int64_t n, int64_t inner, uint64_t seed,
                                          uint64_t offset, double tau, bool hard,
                                          cudaStream_t stream) {
  const int64_t rows = outer * inner;
  if (rows == 0 || n == 0) return cudaSuccess;
  const PhiloxKey key{seed, offset};
  switch (dtype) {
    case FloatType::kFloat32:
      return forward_dispatch_group<float>(logits, out, soft, rows, n, inner, key, tau, hard, stream);
    case FloatType::kFloat64:
      return forward_dispatch_group<double>(logits, out, soft, rows, n, inner, key, tau, hard, stream);
    case FloatType::kBFloat16:
      return forward_dispatch_group<__nv_bfloat16>(logits, out, soft, rows, n, inner, key, tau, hard, stream);
    case FloatType::kFloat16:
      return forward_dispatch_group<__half>(logits, out, soft, rows, n, inner, key, tau, hard, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t launch_gumbel_softmax_backward(FloatType dtype, const void* grad, const void* soft,
                                           void* grad_logits, int64_t outer, int64_t n,
                                           int64_t inner, double tau, cudaStream_t stream) {
  const int64_t rows = outer * inner;
  if (rows == 0 || n == 0) return cudaSuccess;
  switch (dtype) {
    case FloatType::kFloat32:
      return backward_typed<float>(grad, soft, grad_logits, rows, n, inner, tau, stream);
    case FloatType::kFloat64:
      return backward_typed<double>(grad, soft, grad_logits, rows, n, inner, tau, stream);
    case FloatType::kBFloat16:
      return backward_typed<__nv_bfloat16>(grad, soft, grad_logits, rows, n, inner, tau, stream);
    case FloatType::kFloat16:
      return backward_typed<__half>(grad, soft, grad_logits, rows, n, inner, tau, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace gencore
