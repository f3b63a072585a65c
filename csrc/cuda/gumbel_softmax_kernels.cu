// Gumbel-softmax CUDA kernels. No torch: raw pointers, sizes, a stream.
//
// Noise: gumbel_noise() of common/gumbel_noise.h from the Philox bits of each element's logical
// index, bit-identical to the CPU kernel and the reference, so the same seed gives the same samples
// on every device (float64: the uniforms' logs in double, as the reference).
//
// RowKernel (contiguous rows of more than 1024 elements, 16-byte aligned; the common case): one block
// per row, logits read once and the sample written once. The row is cut into chunks of 16 bytes of
// logits (C elements, one or two Philox blocks); thread t owns chunks t, t + THREADS, ... and keeps
// the z values of its first RC chunks in registers and the rest in shared memory (a 32000-wide
// float32 row needs 95 KB, so two rows run per SM and one's writes overlap the other's noise):
//   sweep 1  16-byte loads, noise, z = (x + g) / tau, running max and first argmax;
//   sweep 2  e = exp(z - max) in place, sum;
//   sweep 3  16-byte stores of e / sum (hard: and the one-hot).
// A NaN anywhere makes the sum NaN, which is how NaN rows are found (+inf: inf - inf; only -inf:
// -inf - -inf).
//
// GroupKernel (strided, narrow or very wide rows): GROUP threads per row (a warp up to 1024
// elements, else 256); an online max / sum of exp with the first argmax; z cached in shared memory
// where the row fits, else recomputed in the write pass (the noise is a pure function of the index).
#include <cuda_runtime.h>

#include <climits>
#include <cmath>
#include <cstdint>

#include "../common/cuda_math.cuh"
#include "../common/gumbel_noise.h"
#include "gumbel_softmax_kernels.h"
#include "launch.cuh"

namespace gencore {
namespace {

template <typename A>
__device__ __forceinline__ A exp_acc(A x) { return exp(x); }
template <>
__device__ __forceinline__ float exp_acc<float>(float x) { return expf(x); }

// Gumbel noise in the accumulation type (see the file comment).
template <typename A>
__device__ __forceinline__ A gumbel(uint32_t bits);
template <>
__device__ __forceinline__ float gumbel<float>(uint32_t bits) { return gumbel_noise(bits); }
template <>
__device__ __forceinline__ double gumbel<double>(uint32_t bits) {
  return -log(-log(static_cast<double>(uniform_open01(bits))));
}

// ---- block reductions ---------------------------------------------------------------------------

// (max, first index of the max): larger value wins, ties go to the smaller index.
template <typename A>
__device__ __forceinline__ void max_arg_merge(A& m, int& i, A m2, int i2) {
  if (m2 > m || (m2 == m && i2 < i)) {
    m = m2;
    i = i2;
  }
}

template <typename A, int THREADS>
__device__ void block_max_arg(A& m, int& arg, A* sm, int* si) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1)
    max_arg_merge(m, arg, __shfl_xor_sync(0xffffffffu, m, o), __shfl_xor_sync(0xffffffffu, arg, o));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
    sm[warp] = m;
    si[warp] = arg;
  }
  __syncthreads();
  m = sm[0];
  arg = si[0];
#pragma unroll
  for (int w = 1; w < THREADS / 32; ++w) max_arg_merge(m, arg, sm[w], si[w]);
  __syncthreads();  // sm/si are reused
}

template <typename A, int THREADS>
__device__ A block_sum(A s, A* sm) {
  s = warp_sum(s);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) sm[warp] = s;
  __syncthreads();
  s = 0;
#pragma unroll
  for (int w = 0; w < THREADS / 32; ++w) s += sm[w];
  __syncthreads();
  return s;
}

// ---- 16-byte chunks of logits -------------------------------------------------------------------

// C elements of T (16 bytes; 32 for double, so that a chunk is whole Philox blocks), widened to A.
template <typename T> struct Chunk {  // __nv_bfloat16, __half
  static constexpr int C = 8;
  static __device__ __forceinline__ void load(const T* p, float* v) {
    const uint4 raw = *reinterpret_cast<const uint4*>(p);
    const T* h = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int e = 0; e < C; ++e) v[e] = to_acc(h[e]);
  }
  static __device__ __forceinline__ void store(T* p, const float* v) {
    uint4 raw;
    T* h = reinterpret_cast<T*>(&raw);
#pragma unroll
    for (int e = 0; e < C; ++e) h[e] = from_acc<T>(v[e]);
    *reinterpret_cast<uint4*>(p) = raw;
  }
};
template <> struct Chunk<float> {
  static constexpr int C = 4;
  static __device__ __forceinline__ void load(const float* p, float* v) {
    const float4 q = *reinterpret_cast<const float4*>(p);
    v[0] = q.x; v[1] = q.y; v[2] = q.z; v[3] = q.w;
  }
  static __device__ __forceinline__ void store(float* p, const float* v) {
    *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
  }
};
template <> struct Chunk<double> {
  static constexpr int C = 4;
  static __device__ __forceinline__ void load(const double* p, double* v) {
    const double2 a = reinterpret_cast<const double2*>(p)[0], b = reinterpret_cast<const double2*>(p)[1];
    v[0] = a.x; v[1] = a.y; v[2] = b.x; v[3] = b.y;
  }
  static __device__ __forceinline__ void store(double* p, const double* v) {
    reinterpret_cast<double2*>(p)[0] = make_double2(v[0], v[1]);
    reinterpret_cast<double2*>(p)[1] = make_double2(v[2], v[3]);
  }
};

// ---- RowKernel ------------------------------------------------------------------------------------

// A row as whole chunks: row element j (0 <= j < n) is element j + lead of the span of `chunks`
// chunks that starts at the tensor's chunk c0. Indices inside a row are 32-bit (n < 2^31).
template <int C>
struct RowSpan {
  int64_t c0;
  int lead, chunks;
  __device__ RowSpan(int64_t row, int n) {
    const int64_t first = row * n;
    c0 = first / C;
    lead = static_cast<int>(first - c0 * C);
    chunks = (lead + n + C - 1) / C;
  }
  __device__ int index(int q, int e) const { return q * C + e - lead; }  // row index of (q, e)
  __device__ bool full(int q, int n) const { return q * C >= lead && (q + 1) * C - lead <= n; }
};

// z values of this many chunks per thread stay in registers (16 floats, 4 doubles).
template <typename T>
constexpr int reg_chunks() {
  return (sizeof(typename AccOf<T>::type) == 4 ? 16 : 4) / Chunk<T>::C;
}

// Calls f(q, v) for each chunk q (of the row's span) that this thread owns, v its C values:
// registers for the first RC chunks, shared memory (planes of 4 values, conflict-free) for the
// rest, read first when kRead and written back when kWrite.
template <bool kRead, bool kWrite, typename A, int C, int THREADS, int RC, typename F>
__device__ __forceinline__ void for_own_chunks(int chunks, A (&reg)[RC][C], A* smem, int slots,
                                               F&& f) {
  const int t = threadIdx.x;
#pragma unroll
  for (int k = 0; k < RC; ++k) {
    const int q = t + k * THREADS;
    if (q < chunks) f(q, reg[k]);
  }
  for (int q = t + RC * THREADS, slot = t; q < chunks; q += THREADS, slot += THREADS) {
    A v[C];
    if (kRead) {
#pragma unroll
      for (int h = 0; h < C / 4; ++h)
#pragma unroll
        for (int e = 0; e < 4; ++e) v[4 * h + e] = smem[(h * slots + slot) * 4 + e];
    }
    f(q, v);
    if (kWrite) {
#pragma unroll
      for (int h = 0; h < C / 4; ++h)
#pragma unroll
        for (int e = 0; e < 4; ++e) smem[(h * slots + slot) * 4 + e] = v[4 * h + e];
    }
  }
}

// The Philox key: by value, or read from device memory at the kernel's start (drawn on the device
// under CUDA-graph capture, gencore/ops/rng.py: each replay then draws fresh noise).
struct KeySource {
  PhiloxKey key;
  const int64_t* dev;  // [seed, offset] on the device, or null
  __device__ __forceinline__ PhiloxKey get() const {
    return dev == nullptr ? key : PhiloxKey{static_cast<uint64_t>(dev[0]), static_cast<uint64_t>(dev[1])};
  }
};

template <typename T, int THREADS, int RC, int MIN_BLOCKS>
__global__ void __launch_bounds__(THREADS, MIN_BLOCKS)
gumbel_row_kernel(const T* __restrict__ x, T* __restrict__ out, T* __restrict__ soft, int64_t rows,
                  int n, int slots, KeySource key_src, typename AccOf<T>::type inv_tau, bool hard) {
  using A = typename AccOf<T>::type;
  const PhiloxKey key = key_src.get();
  constexpr int C = Chunk<T>::C;
  A* smem = reinterpret_cast<A*>(dynamic_smem());  // C / 4 planes of `slots` x 4 values
  __shared__ A red_a[THREADS / 32];
  __shared__ int red_i[THREADS / 32];
  A reg[RC][C];
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const RowSpan<C> rs(row, n);
    const T* xs = x + rs.c0 * C;
    const uint64_t block0 = static_cast<uint64_t>(rs.c0) * (C / 4);  // Philox block of chunk 0
    // Sweep 1: z, max and first argmax.
    A m = -INFINITY;
    int arg = INT_MAX;
    for_own_chunks<false, true, A, C, THREADS, RC>(rs.chunks, reg, smem, slots, [&](int q, A* v) {
      const bool full = rs.full(q, n);
      if (full) {
        Chunk<T>::load(xs + q * C, v);
      } else {
#pragma unroll
        for (int e = 0; e < C; ++e) {
          const int j = rs.index(q, e);
          v[e] = (j >= 0 && j < n) ? to_acc(xs[q * C + e]) : A(-INFINITY);
        }
      }
#pragma unroll
      for (int b = 0; b < C / 4; ++b) {
        const Philox4 r = philox_block(key, block0 + static_cast<uint64_t>(q * (C / 4) + b));
#pragma unroll
        for (int w = 0; w < 4; ++w) {
          const int e = 4 * b + w, j = rs.index(q, e);
          if (full || (j >= 0 && j < n)) v[e] = (v[e] + gumbel<A>(r.v[w])) * inv_tau;
          if (v[e] > m) {  // strict: the first maximum in this thread's (increasing) order
            m = v[e];
            arg = j;
          }
        }
      }
    });
    block_max_arg<A, THREADS>(m, arg, red_a, red_i);
    // Sweep 2: e = exp(z - m), in place, and the sum. Out-of-row values are -inf: e = 0.
    A s = 0;
    for_own_chunks<true, true, A, C, THREADS, RC>(rs.chunks, reg, smem, slots, [&](int, A* v) {
#pragma unroll
      for (int e = 0; e < C; ++e) {
        v[e] = exp_acc<A>(v[e] - m);
        s += v[e];
      }
    });
    s = block_sum<A, THREADS>(s, red_a);
    // Sweep 3: the sample.
    const bool nan_row = !(s == s);
    const A inv_s = A(1) / s;
    T* ys = (hard ? soft : out) + rs.c0 * C;
    T* hs = out + rs.c0 * C;
    for_own_chunks<true, false, A, C, THREADS, RC>(rs.chunks, reg, smem, slots, [&](int q, A* v) {
      A y[C], h[C];
#pragma unroll
      for (int e = 0; e < C; ++e) {
        y[e] = nan_row ? A(NAN) : v[e] * inv_s;
        h[e] = nan_row ? A(NAN) : (rs.index(q, e) == arg ? A(1) : A(0));
      }
      if (rs.full(q, n)) {
        Chunk<T>::store(ys + q * C, y);
        if (hard) Chunk<T>::store(hs + q * C, h);
      } else {
#pragma unroll
        for (int e = 0; e < C; ++e) {
          const int j = rs.index(q, e);
          if (j < 0 || j >= n) continue;
          ys[q * C + e] = from_acc<T>(y[e]);
          if (hard) hs[q * C + e] = from_acc<T>(h[e]);
        }
      }
    });
  }
}

// ---- GroupKernel ----------------------------------------------------------------------------------

template <typename A>
struct RowState {
  A m;          // running max of z
  A s;          // sum of exp(z - m)
  int64_t arg;  // first index of the max
  int bad;      // saw NaN or +inf
};

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

constexpr int kGroupBlock = 256;

template <typename T, int GROUP>
__global__ void __launch_bounds__(kGroupBlock)
gumbel_group_kernel(const T* __restrict__ x, T* __restrict__ out, T* __restrict__ soft,
                    int64_t rows, int64_t n, int64_t inner, KeySource key_src,
                    typename AccOf<T>::type inv_tau, bool hard, bool cached) {
  using A = typename AccOf<T>::type;
  const PhiloxKey key = key_src.get();
  constexpr int kRowsPerBlock = kGroupBlock / GROUP;
  const int t = threadIdx.x % GROUP, slot = threadIdx.x / GROUP;
  A* zcache = reinterpret_cast<A*>(dynamic_smem()) + static_cast<int64_t>(slot) * n;
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
        const A z = (to_acc(x[first + j * inner]) + gumbel<A>(bits)) * inv_tau;
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
        write(j, (to_acc(x[first + j * inner]) + gumbel<A>(bits)) * inv_tau);
      });
    }
    if (GROUP == 32) __syncwarp(); else __syncthreads();  // before zcache is reused
  }
}

// ---- backward -------------------------------------------------------------------------------------

// dx = y * (g - <g, y>) / tau, GROUP threads per row.
template <typename T, int GROUP>
__global__ void __launch_bounds__(kGroupBlock)
gumbel_backward_kernel(const T* __restrict__ g, const T* __restrict__ y, T* __restrict__ dx,
                       int64_t rows, int64_t n, int64_t inner, typename AccOf<T>::type inv_tau) {
  using A = typename AccOf<T>::type;
  constexpr int kRowsPerBlock = kGroupBlock / GROUP;
  __shared__ A partial[GROUP / 32 > 0 ? kGroupBlock / 32 : 1];
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

// The same for contiguous, 16-byte aligned rows: one block of THREADS per row, 16-byte loads and
// stores; the second read of g and y comes from L2 (a block's row is at most a few hundred KB).
template <typename T, int THREADS>
__global__ void __launch_bounds__(THREADS)
gumbel_backward_row_kernel(const T* __restrict__ g, const T* __restrict__ y, T* __restrict__ dx,
                           int64_t rows, int n, typename AccOf<T>::type inv_tau) {
  using A = typename AccOf<T>::type;
  constexpr int C = Chunk<T>::C;
  __shared__ A red[THREADS / 32];
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const RowSpan<C> rs(row, n);
    const T* gs = g + rs.c0 * C;
    const T* ys = y + rs.c0 * C;
    T* ds = dx + rs.c0 * C;
    // Loads chunk q of g and y, zeros outside the row; returns whether it is whole.
    auto load = [&](int q, A* gv, A* yv) {
      if (rs.full(q, n)) {
        Chunk<T>::load(gs + q * C, gv);
        Chunk<T>::load(ys + q * C, yv);
        return true;
      }
#pragma unroll
      for (int e = 0; e < C; ++e) {
        const int j = rs.index(q, e);
        const bool in = j >= 0 && j < n;
        gv[e] = in ? to_acc(gs[q * C + e]) : A(0);
        yv[e] = in ? to_acc(ys[q * C + e]) : A(0);
      }
      return false;
    };
    A dot = 0;
    for (int q = threadIdx.x; q < rs.chunks; q += THREADS) {
      A gv[C], yv[C];
      load(q, gv, yv);
#pragma unroll
      for (int e = 0; e < C; ++e) dot += gv[e] * yv[e];
    }
    dot = block_sum<A, THREADS>(dot, red);
    for (int q = threadIdx.x; q < rs.chunks; q += THREADS) {
      A gv[C], yv[C], dv[C];
      const bool full = load(q, gv, yv);
#pragma unroll
      for (int e = 0; e < C; ++e) dv[e] = yv[e] * (gv[e] - dot) * inv_tau;
      if (full) {
        Chunk<T>::store(ds + q * C, dv);
      } else {
#pragma unroll
        for (int e = 0; e < C; ++e) {
          const int j = rs.index(q, e);
          if (j >= 0 && j < n) ds[q * C + e] = from_acc<T>(dv[e]);
        }
      }
    }
  }
}

// ---- launchers ------------------------------------------------------------------------------------

int grid_for(int64_t rows, int rows_per_block) {
  const int64_t blocks = (rows + rows_per_block - 1) / rows_per_block;
  return static_cast<int>(blocks < 65535 * 32 ? blocks : 65535 * 32);
}

bool aligned16(const void* a, const void* b, const void* c) {
  const uintptr_t bits = reinterpret_cast<uintptr_t>(a) | reinterpret_cast<uintptr_t>(b) |
                         reinterpret_cast<uintptr_t>(c);
  return bits % 16 == 0;
}

// Device facts read once per device (not per call: these queries are not free, and a launcher that
// only launches is safe to capture in a CUDA graph).
struct DeviceLimits {
  int smem_optin = 0;  // max dynamic + static shared memory per block (opt-in)
  int smem_per_sm = 0;
};
cudaError_t device_limits(DeviceLimits* out) {
  static DeviceLimits cache[64];
  int dev = 0;
  cudaError_t err = cudaGetDevice(&dev);
  if (err != cudaSuccess) return err;
  if (dev < 0 || dev >= 64) return cudaErrorInvalidDevice;
  DeviceLimits& d = cache[dev];
  if (d.smem_optin == 0) {
    DeviceLimits q;
    err = cudaDeviceGetAttribute(&q.smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
    if (err == cudaSuccess)
      err = cudaDeviceGetAttribute(&q.smem_per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, dev);
    if (err != cudaSuccess) return err;
    d = q;
  }
  *out = d;
  return cudaSuccess;
}

// Raises Kernel's dynamic shared memory limit to `bytes` (once per kernel, size and device).
template <auto Kernel>
cudaError_t allow_smem(size_t bytes) {
  if (bytes <= 48 * 1024) return cudaSuccess;
  static int done[64];  // the largest size already allowed, per device
  int dev = 0;
  cudaError_t err = cudaGetDevice(&dev);
  if (err != cudaSuccess) return err;
  if (dev < 0 || dev >= 64) return cudaErrorInvalidDevice;
  if (static_cast<size_t>(done[dev]) >= bytes) return cudaSuccess;
  err = cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
  if (err == cudaSuccess) done[dev] = static_cast<int>(bytes);
  return err;
}

template <typename T, int THREADS, int MIN_BLOCKS>
cudaError_t launch_rows(const void* x, void* out, void* soft, int64_t rows, int64_t n,
                        KeySource key, double tau, bool hard, size_t smem, int slots,
                        cudaStream_t s) {
  using A = typename AccOf<T>::type;
  constexpr auto kernel = gumbel_row_kernel<T, THREADS, reg_chunks<T>(), MIN_BLOCKS>;
  cudaError_t err = allow_smem<kernel>(smem);
  if (err != cudaSuccess) return err;
  return launch_kernel(kernel, grid_for(rows, 1), THREADS, smem, s, static_cast<const T*>(x),
                       static_cast<T*>(out), static_cast<T*>(soft), rows, static_cast<int>(n), slots,
                       key, static_cast<A>(1.0 / tau), hard);
}

// RowKernel when it applies (contiguous rows of more than 1024 elements, aligned, fitting in
// registers + shared memory); returns cudaErrorNotSupported otherwise.
template <typename T>
cudaError_t try_rows(const void* x, void* out, void* soft, int64_t rows, int64_t n, int64_t inner,
                     KeySource key, double tau, bool hard, cudaStream_t s) {
  using A = typename AccOf<T>::type;
  constexpr int C = Chunk<T>::C;
  if (inner != 1 || n <= 1024 || n > (1 << 30) || !aligned16(x, out, soft)) return cudaErrorNotSupported;
  DeviceLimits lim;
  cudaError_t err = device_limits(&lim);
  if (err != cudaSuccess) return err;
  const int threads = n <= 8192 ? 256 : 512;
  constexpr int RC = reg_chunks<T>();
  const int64_t chunks = (n + 2 * C - 2) / C;  // most chunks a row touches (unaligned start)
  const int64_t per_thread = (chunks + threads - 1) / threads;
  const int64_t slots = per_thread > RC ? (per_thread - RC) * threads : 0;
  const size_t smem = static_cast<size_t>(slots) * C * sizeof(A);
  const size_t static_smem = threads / 32 * (sizeof(A) + sizeof(int64_t));
  if (smem + static_smem > static_cast<size_t>(lim.smem_optin)) return cudaErrorNotSupported;
  if (threads == 256)
    return launch_rows<T, 256, 4>(x, out, soft, rows, n, key, tau, hard, smem, static_cast<int>(slots), s);
  return launch_rows<T, 512, 2>(x, out, soft, rows, n, key, tau, hard, smem, static_cast<int>(slots), s);
}

template <typename T, int GROUP>
cudaError_t launch_group(const void* x, void* out, void* soft, int64_t rows, int64_t n,
                         int64_t inner, KeySource key, double tau, bool hard, cudaStream_t s) {
  using A = typename AccOf<T>::type;
  constexpr int kRowsPerBlock = kGroupBlock / GROUP;
  DeviceLimits lim;
  cudaError_t err = device_limits(&lim);
  if (err != cudaSuccess) return err;
  const size_t want = static_cast<size_t>(kRowsPerBlock) * n * sizeof(A);
  // Leave room for the static shared memory of the reduction.
  const bool cached = want + 1024 <= static_cast<size_t>(lim.smem_optin);
  const size_t smem = cached ? want : 0;
  constexpr auto kernel = gumbel_group_kernel<T, GROUP>;
  err = allow_smem<kernel>(smem);
  if (err != cudaSuccess) return err;
  return launch_kernel(kernel, grid_for(rows, kRowsPerBlock), kGroupBlock, smem, s,
                       static_cast<const T*>(x), static_cast<T*>(out), static_cast<T*>(soft), rows, n,
                       inner, key, static_cast<A>(1.0 / tau), hard, cached);
}

template <typename T>
cudaError_t forward_typed(const void* x, void* out, void* soft, int64_t rows, int64_t n,
                          int64_t inner, KeySource key, double tau, bool hard, cudaStream_t s) {
  const cudaError_t err = try_rows<T>(x, out, soft, rows, n, inner, key, tau, hard, s);
  if (err != cudaErrorNotSupported) return err;
  if (n <= 1024) return launch_group<T, 32>(x, out, soft, rows, n, inner, key, tau, hard, s);
  return launch_group<T, kGroupBlock>(x, out, soft, rows, n, inner, key, tau, hard, s);
}

template <typename T>
cudaError_t backward_typed(const void* g, const void* y, void* dx, int64_t rows, int64_t n,
                           int64_t inner, double tau, cudaStream_t s) {
  using A = typename AccOf<T>::type;
  const A inv_tau = static_cast<A>(1.0 / tau);
  const T* gp = static_cast<const T*>(g);
  const T* yp = static_cast<const T*>(y);
  T* dp = static_cast<T*>(dx);
  if (inner == 1 && n > 1024 && n <= (1 << 30) && aligned16(g, y, dx)) {
    const int ni = static_cast<int>(n);
    if (n <= 8192) return launch_kernel(gumbel_backward_row_kernel<T, 256>, grid_for(rows, 1), 256, 0, s, gp, yp, dp, rows, ni, inv_tau);
    return launch_kernel(gumbel_backward_row_kernel<T, 1024>, grid_for(rows, 1), 1024, 0, s, gp, yp, dp, rows, ni, inv_tau);
  }
  if (n <= 1024)
    return launch_kernel(gumbel_backward_kernel<T, 32>, grid_for(rows, kGroupBlock / 32), kGroupBlock, 0, s, gp, yp,
                         dp, rows, n, inner, inv_tau);
  return launch_kernel(gumbel_backward_kernel<T, kGroupBlock>, grid_for(rows, 1), kGroupBlock, 0, s, gp, yp, dp,
                       rows, n, inner, inv_tau);
}

}  // namespace

cudaError_t launch_gumbel_softmax_forward(FloatType dtype, const void* logits, void* out, void* soft,
                                          int64_t outer, int64_t n, int64_t inner, uint64_t seed,
                                          uint64_t offset, double tau, bool hard,
                                          cudaStream_t stream, const int64_t* seed_offset_dev) {
  const int64_t rows = outer * inner;
  if (rows == 0 || n == 0) return cudaSuccess;
  const KeySource key{PhiloxKey{seed, offset}, seed_offset_dev};
  // soft is unused in soft mode: pass out so the alignment test sees only real pointers.
  void* soft_or_out = hard ? soft : out;
  switch (dtype) {
    case FloatType::kFloat32:
      return forward_typed<float>(logits, out, soft_or_out, rows, n, inner, key, tau, hard, stream);
    case FloatType::kFloat64:
      return forward_typed<double>(logits, out, soft_or_out, rows, n, inner, key, tau, hard, stream);
    case FloatType::kBFloat16:
      return forward_typed<__nv_bfloat16>(logits, out, soft_or_out, rows, n, inner, key, tau, hard, stream);
    case FloatType::kFloat16:
      return forward_typed<__half>(logits, out, soft_or_out, rows, n, inner, key, tau, hard, stream);
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
