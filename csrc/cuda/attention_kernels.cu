// Flash-style attention, CUDA kernels (FlashAttention-2 structure). Torch-free (see DESIGN.md).
//
// The legacy kernels: the CUDA path for float32/float64 and for the head dims and strides that the
// tensor-core kernels (attention_mma_kernels.cu) do not take, and the GENCORE_ATTENTION_KERNEL=legacy
// fallback for all of them.
//
// Forward, bfloat16/float16, head dims 16..128 in steps of 16, sm_80+: tensor cores through
// nvcuda::wmma (16x16x16, float accumulation). One block of 4 warps per 64-query tile; K/V tiles
// of 64 keys go through shared memory; each warp owns 16 query rows: S = Q K^T on tensor cores,
// online softmax on its rows (float), O += P V on tensor cores. O lives in shared memory (float)
// because the wmma accumulator layout is opaque and the softmax rescale is per row.
//
// Forward, every other case (float32, float64, other head dims up to 256): the same tiling on
// CUDA cores, 4 threads per query row.
//
// Backward (all dtypes): one block per (batch, kv head, 32-key tile); for each query head of the
// group and each query tile, P is recomputed from the saved logsumexp, dV += P^T dO and
// dK += dS^T (scale Q) accumulate in shared memory (no atomics), dQ += scale dS K is added to a
// float workspace with atomicAdd and converted at the end. Delta = rowsum(dO * O) comes from a
// small kernel first.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "attention_kernels.h"

namespace gencore {
namespace cuda {
namespace {

template <typename T> __device__ __forceinline__ float to_acc(T x);
template <> __device__ __forceinline__ float to_acc<float>(float x) { return x; }
template <> __device__ __forceinline__ float to_acc<__half>(__half x) { return __half2float(x); }
template <> __device__ __forceinline__ float to_acc<__nv_bfloat16>(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// Loads and stores through the accumulation type A (float, or double for double).
template <typename A, typename T> __device__ __forceinline__ A load_as(const T* p) {
  return static_cast<A>(to_acc<T>(*p));
}
template <> __device__ __forceinline__ double load_as<double, double>(const double* p) { return *p; }
template <typename A, typename T> __device__ __forceinline__ void store_as(T* p, A x) {
  *p = from_float<T>(static_cast<float>(x));
}
template <> __device__ __forceinline__ void store_as<double, double>(double* p, double x) { *p = x; }

template <typename A> __device__ __forceinline__ A exp_acc(A x);
template <> __device__ __forceinline__ float exp_acc<float>(float x) { return __expf(x); }
template <> __device__ __forceinline__ double exp_acc<double>(double x) { return exp(x); }

template <typename A> __device__ __forceinline__ A neg_inf() { return -INFINITY; }

__device__ __forceinline__ void atomic_add(float* p, float x) { atomicAdd(p, x); }
__device__ __forceinline__ void atomic_add(double* p, double x) { atomicAdd(p, x); }

// Last key (exclusive bound) visible to query row i: keys j < i + Sk - Sq + 1.
__device__ __forceinline__ int key_limit(bool causal, int i, int Sq, int Sk) {
  if (!causal) return Sk;
  const int lim = i + Sk - Sq + 1;
  return lim < 0 ? 0 : (lim > Sk ? Sk : lim);
}

// ------------------------------------------------------------------------------------------------
// Forward on CUDA cores: 128 threads, BQ query rows, BK keys per tile, 4 threads per row.
template <typename T, typename A, int BQ, int BK>
__global__ void __launch_bounds__(BQ * 4)
attention_forward_simt(AttentionParams p) {
  extern __shared__ __align__(128) unsigned char smem_raw[];
  A* sQ = reinterpret_cast<A*>(smem_raw);      // BQ x D (scaled)
  A* sK = sQ + BQ * p.D;                        // BK x D
  A* sV = sK + BK * p.D;                        // BK x D
  A* sO = sV + BK * p.D;                        // BQ x D
  A* sS = sO + BQ * p.D;                        // BQ x BK
  const int D = p.D;
  const int tid = threadIdx.x, row = tid / 4, sub = tid % 4;
  const int q0 = blockIdx.x * BQ, h = blockIdx.y, b = blockIdx.z, hk = h / (p.H / p.Hkv);
  const T* q = static_cast<const T*>(p.q) + b * p.q_stride[0] + h * p.q_stride[1];
  const T* k = static_cast<const T*>(p.k) + b * p.k_stride[0] + hk * p.k_stride[1];
  const T* v = static_cast<const T*>(p.v) + b * p.v_stride[0] + hk * p.v_stride[1];
  const bool* mask = p.key_padding_mask ? p.key_padding_mask + (int64_t)b * p.Sk : nullptr;
  const A scale = static_cast<A>(p.scale);

  for (int e = tid; e < BQ * D; e += blockDim.x) {
    const int r = e / D, d = e % D;
    sQ[e] = (q0 + r < p.Sq) ? load_as<A>(q + (int64_t)(q0 + r) * p.q_stride[2] + d) * scale : A(0);
    sO[e] = A(0);
  }
  const int qi = q0 + row;
  const int lim = qi < p.Sq ? key_limit(p.causal, qi, p.Sq, p.Sk) : 0;
  const int last_row = min(q0 + BQ, p.Sq) - 1;
  const int kend = key_limit(p.causal, last_row, p.Sq, p.Sk);
  A m = neg_inf<A>(), l = A(0);
  __syncthreads();

  for (int k0 = 0; k0 < kend; k0 += BK) {
    for (int e = tid; e < BK * D; e += blockDim.x) {
      const int r = e / D, d = e % D;
      const bool ok = k0 + r < p.Sk;
      sK[e] = ok ? load_as<A>(k + (int64_t)(k0 + r) * p.k_stride[2] + d) : A(0);
      sV[e] = ok ? load_as<A>(v + (int64_t)(k0 + r) * p.v_stride[2] + d) : A(0);
    }
    __syncthreads();
    A mx = neg_inf<A>();
    for (int c = sub; c < BK; c += 4) {
      const int j = k0 + c;
      A s = neg_inf<A>();
      if (j < lim && !(mask && mask[j])) {
        s = A(0);
        for (int d = 0; d < D; ++d) s += sQ[row * D + d] * sK[c * D + d];
      }
      sS[row * BK + c] = s;
      mx = s > mx ? s : mx;
    }
    for (int o = 1; o < 4; o <<= 1) {
      const A other = __shfl_xor_sync(0xffffffffu, mx, o, 4);
      mx = other > mx ? other : mx;
    }
    const A m_new = mx > m ? mx : m;
    A alpha = A(1), sum = A(0);
    if (m_new != neg_inf<A>()) {
      alpha = exp_acc<A>(m - m_new);
      for (int c = sub; c < BK; c += 4) {
        const A e = exp_acc<A>(sS[row * BK + c] - m_new);
        sS[row * BK + c] = e;
        sum += e;
      }
    } else {
      for (int c = sub; c < BK; c += 4) sS[row * BK + c] = A(0);
    }
    for (int o = 1; o < 4; o <<= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o, 4);
    l = l * alpha + sum;
    m = m_new;
    __syncwarp();
    for (int d = sub; d < D; d += 4) {
      A acc = sO[row * D + d] * alpha;
      for (int c = 0; c < BK; ++c) acc += sS[row * BK + c] * sV[c * D + d];
      sO[row * D + d] = acc;
    }
    __syncthreads();
  }
  if (qi < p.Sq) {
    T* out = static_cast<T*>(p.out) + (((int64_t)b * p.H + h) * p.Sq + qi) * D;
    const A inv = l > A(0) ? A(1) / l : A(0);
    for (int d = sub; d < D; d += 4) store_as<A>(out + d, sO[row * D + d] * inv);
    if (sub == 0) {
      A* lse = static_cast<A*>(p.lse) + ((int64_t)b * p.H + h) * p.Sq + qi;
      *lse = l > A(0) ? m + log(l) : neg_inf<A>();
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Forward on tensor cores (bf16/fp16): 4 warps, 64 query rows (16 per warp), 64 keys per tile.
template <typename T, int D>
__global__ void __launch_bounds__(128)
attention_forward_wmma(AttentionParams p) {
  using namespace nvcuda;
  constexpr int BQ = 64, BK = 64, LDT = D + 8, LDS = BK + 4, LDP = BK + 8, LDO = D + 4;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);                 // BQ x LDT
  T* sK = sQ + BQ * LDT;                                   // BK x LDT
  T* sV = sK + BK * LDT;                                   // BK x LDT
  T* sP = sV + BK * LDT;                                   // BQ x LDP
  float* sS = reinterpret_cast<float*>(sP + BQ * LDP);     // BQ x LDS
  float* sO = sS + BQ * LDS;                               // BQ x LDO

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int q0 = blockIdx.x * BQ, h = blockIdx.y, b = blockIdx.z, hk = h / (p.H / p.Hkv);
  const T* q = static_cast<const T*>(p.q) + b * p.q_stride[0] + h * p.q_stride[1];
  const T* k = static_cast<const T*>(p.k) + b * p.k_stride[0] + hk * p.k_stride[1];
  const T* v = static_cast<const T*>(p.v) + b * p.v_stride[0] + hk * p.v_stride[1];
  const bool* mask = p.key_padding_mask ? p.key_padding_mask + (int64_t)b * p.Sk : nullptr;
  const float scale = static_cast<float>(p.scale);
  const T zero = from_float<T>(0.f);

  for (int e = tid; e < BQ * D; e += 128) {
    const int r = e / D, d = e % D;
    sQ[r * LDT + d] = (q0 + r < p.Sq) ? q[(int64_t)(q0 + r) * p.q_stride[2] + d] : zero;
    sO[r * LDO + d] = 0.f;
  }
  // Row owned by this lane pair inside the warp's 16 rows; each lane of the pair takes 32 columns.
  const int wrow = warp * 16 + lane / 2, half_id = lane % 2;
  const int qi = q0 + wrow;
  const int lim = qi < p.Sq ? key_limit(p.causal, qi, p.Sq, p.Sk) : 0;
  const int kend = key_limit(p.causal, min(q0 + BQ, p.Sq) - 1, p.Sq, p.Sk);
  float m = -INFINITY, l = 0.f;
  __syncthreads();

  for (int k0 = 0; k0 < kend; k0 += BK) {
    for (int e = tid; e < BK * D; e += 128) {
      const int r = e / D, d = e % D;
      const bool ok = k0 + r < p.Sk;
      sK[r * LDT + d] = ok ? k[(int64_t)(k0 + r) * p.k_stride[2] + d] : zero;
      sV[r * LDT + d] = ok ? v[(int64_t)(k0 + r) * p.v_stride[2] + d] : zero;
    }
    __syncthreads();
    // S_w (16 x 64) = Q_w K^T
    {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[BK / 16];
      for (int n = 0; n < BK / 16; ++n) wmma::fill_fragment(acc[n], 0.f);
      for (int kk = 0; kk < D; kk += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa;
        wmma::load_matrix_sync(fa, sQ + warp * 16 * LDT + kk, LDT);
        for (int n = 0; n < BK / 16; ++n) {
          wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> fb;  // K^T
          wmma::load_matrix_sync(fb, sK + n * 16 * LDT + kk, LDT);
          wmma::mma_sync(acc[n], fa, fb, acc[n]);
        }
      }
      for (int n = 0; n < BK / 16; ++n)
        wmma::store_matrix_sync(sS + warp * 16 * LDS + n * 16, acc[n], LDS, wmma::mem_row_major);
    }
    __syncwarp();
    // Online softmax on this lane's half row.
    float* srow = sS + wrow * LDS + half_id * 32;
    float mx = -INFINITY;
    for (int c = 0; c < 32; ++c) {
      const int j = k0 + half_id * 32 + c;
      float s = srow[c] * scale;
      if (j >= lim || (mask && mask[j])) s = -INFINITY;
      srow[c] = s;
      mx = fmaxf(mx, s);
    }
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    const float m_new = fmaxf(m, mx);
    float alpha = 1.f, sum = 0.f;
    T* prow = sP + wrow * LDP + half_id * 32;
    if (m_new != -INFINITY) {
      alpha = __expf(m - m_new);
      for (int c = 0; c < 32; ++c) {
        const float e = __expf(srow[c] - m_new);
        // Sum what P V will use: the rounded probabilities.
        const T et = from_float<T>(e);
        prow[c] = et;
        sum += to_acc<T>(et);
      }
    } else {
      for (int c = 0; c < 32; ++c) prow[c] = zero;
    }
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    l = l * alpha + sum;
    m = m_new;
    for (int d = half_id * (D / 2); d < (half_id + 1) * (D / 2); ++d) sO[wrow * LDO + d] *= alpha;
    __syncwarp();
    // O_w (16 x D) += P_w (16 x 64) V (64 x D)
    for (int n = 0; n < D / 16; ++n) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      wmma::load_matrix_sync(acc, sO + warp * 16 * LDO + n * 16, LDO, wmma::mem_row_major);
      for (int kk = 0; kk < BK; kk += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> fb;
        wmma::load_matrix_sync(fa, sP + warp * 16 * LDP + kk, LDP);
        wmma::load_matrix_sync(fb, sV + kk * LDT + n * 16, LDT);
        wmma::mma_sync(acc, fa, fb, acc);
      }
      wmma::store_matrix_sync(sO + warp * 16 * LDO + n * 16, acc, LDO, wmma::mem_row_major);
    }
    __syncthreads();
  }
  __syncwarp();
  if (qi < p.Sq) {
    T* out = static_cast<T*>(p.out) + (((int64_t)b * p.H + h) * p.Sq + qi) * D;
    const float inv = l > 0.f ? 1.f / l : 0.f;
    for (int d = half_id * (D / 2); d < (half_id + 1) * (D / 2); ++d)
      out[d] = from_float<T>(sO[wrow * LDO + d] * inv);
    if (half_id == 0)
      static_cast<float*>(p.lse)[((int64_t)b * p.H + h) * p.Sq + qi] = l > 0.f ? m + logf(l) : -INFINITY;
  }
}

// ------------------------------------------------------------------------------------------------
// Backward. delta[b, h, i] = sum_d dO * O, one warp per row.
template <typename T, typename A>
__global__ void attention_delta(AttentionBackwardParams p) {
  const int64_t row = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int64_t rows = (int64_t)p.B * p.H * p.Sq;
  if (row >= rows) return;
  const int i = row % p.Sq, h = (row / p.Sq) % p.H, b = row / ((int64_t)p.Sq * p.H);
  const T* go = static_cast<const T*>(p.dout) + b * p.dout_stride[0] + h * p.dout_stride[1] +
                i * p.dout_stride[2];
  const T* o = static_cast<const T*>(p.out) + row * p.D;
  A acc = A(0);
  for (int d = lane; d < p.D; d += 32) acc += load_as<A>(go + d) * load_as<A>(o + d);
  for (int s = 16; s > 0; s >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, s);
  if (lane == 0) static_cast<A*>(p.delta)[row] = acc;
}

template <typename T, typename A, int BQ, int BK>
__global__ void __launch_bounds__(128)
attention_backward_simt(AttentionBackwardParams p) {
  extern __shared__ __align__(128) unsigned char smem_raw[];
  const int D = p.D;
  A* sK = reinterpret_cast<A*>(smem_raw);  // BK x D
  A* sV = sK + BK * D;                      // BK x D
  A* sdK = sV + BK * D;                     // BK x D
  A* sdV = sdK + BK * D;                    // BK x D
  A* sQ = sdV + BK * D;                     // BQ x D (scaled)
  A* sdO = sQ + BQ * D;                     // BQ x D
  A* sP = sdO + BQ * D;                     // BQ x BK
  A* sdS = sP + BQ * BK;                    // BQ x BK
  A* sL = sdS + BQ * BK;                    // BQ: lse (+inf for rows without keys)
  A* sDelta = sL + BQ;                      // BQ
  const int tid = threadIdx.x, nt = blockDim.x;
  const int k0 = blockIdx.x * BK, hk = blockIdx.y, b = blockIdx.z, group = p.H / p.Hkv;
  const A scale = static_cast<A>(p.scale);
  const T* k = static_cast<const T*>(p.k) + b * p.k_stride[0] + hk * p.k_stride[1];
  const T* v = static_cast<const T*>(p.v) + b * p.v_stride[0] + hk * p.v_stride[1];
  const bool* mask = p.key_padding_mask ? p.key_padding_mask + (int64_t)b * p.Sk : nullptr;
  for (int e = tid; e < BK * D; e += nt) {
    const int r = e / D, d = e % D;
    const bool ok = k0 + r < p.Sk;
    sK[e] = ok ? load_as<A>(k + (int64_t)(k0 + r) * p.k_stride[2] + d) : A(0);
    sV[e] = ok ? load_as<A>(v + (int64_t)(k0 + r) * p.v_stride[2] + d) : A(0);
    sdK[e] = A(0);
    sdV[e] = A(0);
  }
  // First query row that sees key k0: i + Sk - Sq >= k0.
  const int qfirst = p.causal ? max(0, k0 - (p.Sk - p.Sq)) : 0;
  for (int h = hk * group; h < (hk + 1) * group; ++h) {
    const T* q = static_cast<const T*>(p.q) + b * p.q_stride[0] + h * p.q_stride[1];
    const T* go = static_cast<const T*>(p.dout) + b * p.dout_stride[0] + h * p.dout_stride[1];
    const A* lse = static_cast<const A*>(p.lse) + ((int64_t)b * p.H + h) * p.Sq;
    const A* delta = static_cast<const A*>(p.delta) + ((int64_t)b * p.H + h) * p.Sq;
    A* dq = static_cast<A*>(p.dq_accum) + ((int64_t)b * p.H + h) * p.Sq * D;
    for (int q0 = qfirst / BQ * BQ; q0 < p.Sq; q0 += BQ) {
      __syncthreads();
      for (int e = tid; e < BQ * D; e += nt) {
        const int r = e / D, d = e % D;
        const bool ok = q0 + r < p.Sq;
        sQ[e] = ok ? load_as<A>(q + (int64_t)(q0 + r) * p.q_stride[2] + d) * scale : A(0);
        sdO[e] = ok ? load_as<A>(go + (int64_t)(q0 + r) * p.dout_stride[2] + d) : A(0);
      }
      for (int r = tid; r < BQ; r += nt) {
        const bool ok = q0 + r < p.Sq;
        const A lv = ok ? lse[q0 + r] : neg_inf<A>();
        sL[r] = lv == neg_inf<A>() ? -neg_inf<A>() : lv;
        sDelta[r] = ok ? delta[q0 + r] : A(0);
      }
      __syncthreads();
      for (int e = tid; e < BQ * BK; e += nt) {
        const int r = e / BK, c = e % BK, i = q0 + r, j = k0 + c;
        A pv = A(0), ds = A(0);
        if (i < p.Sq && j < key_limit(p.causal, i, p.Sq, p.Sk) && !(mask && mask[j])) {
          A s = A(0), dp = A(0);
          for (int d = 0; d < D; ++d) {
            s += sQ[r * D + d] * sK[c * D + d];
            dp += sdO[r * D + d] * sV[c * D + d];
          }
          pv = exp_acc<A>(s - sL[r]);
          ds = pv * (dp - sDelta[r]);
        }
        sP[e] = pv;
        sdS[e] = ds;
      }
      __syncthreads();
      for (int e = tid; e < BK * D; e += nt) {
        const int c = e / D, d = e % D;
        A dv = A(0), dk = A(0);
        for (int r = 0; r < BQ; ++r) {
          dv += sP[r * BK + c] * sdO[r * D + d];
          dk += sdS[r * BK + c] * sQ[r * D + d];
        }
        sdV[e] += dv;
        sdK[e] += dk;
      }
      for (int e = tid; e < BQ * D; e += nt) {
        const int r = e / D, d = e % D;
        if (q0 + r >= p.Sq) continue;
        A acc = A(0);
        for (int c = 0; c < BK; ++c) acc += sdS[r * BK + c] * sK[c * D + d];
        if (acc != A(0)) atomic_add(dq + (int64_t)(q0 + r) * D + d, acc * scale);
      }
    }
  }
  __syncthreads();
  T* dk = static_cast<T*>(p.dk) + (((int64_t)b * p.Hkv + hk) * p.Sk) * D;
  T* dv = static_cast<T*>(p.dv) + (((int64_t)b * p.Hkv + hk) * p.Sk) * D;
  for (int e = tid; e < BK * D; e += nt) {
    const int r = e / D;
    if (k0 + r >= p.Sk) continue;
    store_as<A>(dk + (int64_t)k0 * D + e, sdK[e]);
    store_as<A>(dv + (int64_t)k0 * D + e, sdV[e]);
  }
}

template <typename T, typename A>
__global__ void convert_dq(const A* acc, T* dq, int64_t n) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    store_as<A>(dq + i, acc[i]);
}

// ------------------------------------------------------------------------------------------------
template <typename T, typename A, int BQ, int BK>
cudaError_t forward_simt_tiles(const AttentionParams& p, cudaStream_t stream) {
  const size_t smem = sizeof(A) * ((size_t)(3 * BQ + 2 * BK) * p.D + BQ * BK);
  auto kernel = attention_forward_simt<T, A, BQ, BK>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
  if (err != cudaSuccess) return err;
  const dim3 grid((p.Sq + BQ - 1) / BQ, p.H, p.B);
  kernel<<<grid, BQ * 4, smem, stream>>>(p);
  return cudaGetLastError();
}

// Tiles that keep Q, K, V, O in shared memory for head dims up to 256 (A100: 163 KiB per block).
template <typename T, typename A>
cudaError_t forward_simt(const AttentionParams& p, cudaStream_t stream) {
  if (sizeof(A) * p.D <= 512) return forward_simt_tiles<T, A, 32, 32>(p, stream);
  return forward_simt_tiles<T, A, 16, 16>(p, stream);
}

template <typename T, int D>
cudaError_t forward_wmma(const AttentionParams& p, cudaStream_t stream) {
  constexpr int BQ = 64, BK = 64, LDT = D + 8, LDS = BK + 4, LDP = BK + 8, LDO = D + 4;
  const size_t smem = sizeof(T) * ((size_t)(BQ + 2 * BK) * LDT + BQ * LDP) +
                      sizeof(float) * ((size_t)BQ * LDS + BQ * LDO);
  auto kernel = attention_forward_wmma<T, D>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
  if (err != cudaSuccess) return err;
  const dim3 grid((p.Sq + BQ - 1) / BQ, p.H, p.B);
  kernel<<<grid, 128, smem, stream>>>(p);
  return cudaGetLastError();
}

template <typename T>
cudaError_t forward_half(const AttentionParams& p, cudaStream_t stream) {
  int dev = 0, major = 0;
  cudaGetDevice(&dev);
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
  if (major >= 8) {
    switch (p.D) {
      case 16: return forward_wmma<T, 16>(p, stream);
      case 32: return forward_wmma<T, 32>(p, stream);
      case 48: return forward_wmma<T, 48>(p, stream);
      case 64: return forward_wmma<T, 64>(p, stream);
      case 80: return forward_wmma<T, 80>(p, stream);
      case 96: return forward_wmma<T, 96>(p, stream);
      case 112: return forward_wmma<T, 112>(p, stream);
      case 128: return forward_wmma<T, 128>(p, stream);
      default: break;
    }
  }
  return forward_simt<T, float>(p, stream);
}

template <typename T, typename A>
cudaError_t delta_typed(const AttentionBackwardParams& p, cudaStream_t stream) {
  const int64_t rows = (int64_t)p.B * p.H * p.Sq;
  attention_delta<T, A><<<(unsigned)((rows + 7) / 8), 256, 0, stream>>>(p);
  return cudaGetLastError();
}

template <typename T, typename A>
cudaError_t backward_typed(const AttentionBackwardParams& p, cudaStream_t stream) {
  const int64_t rows = (int64_t)p.B * p.H * p.Sq;
  cudaError_t err = cudaMemsetAsync(p.dq_accum, 0, sizeof(A) * rows * p.D, stream);
  if (err != cudaSuccess) return err;
  if ((err = delta_typed<T, A>(p, stream)) != cudaSuccess) return err;
  // Tiles small enough that K, V, dK, dV, Q, dO fit in shared memory for D up to 256.
  const int bytes_per_row = (int)sizeof(A) * p.D;
  auto launch = [&](auto kernel, int bq, int bk) {
    const size_t smem = sizeof(A) * ((size_t)(4 * bk + 2 * bq) * p.D + 2 * bq * bk + 2 * bq);
    cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (e != cudaSuccess) return e;
    const dim3 grid((p.Sk + bk - 1) / bk, p.Hkv, p.B);
    kernel<<<grid, 128, smem, stream>>>(p);
    return cudaGetLastError();
  };
  if (bytes_per_row <= 512) err = launch(attention_backward_simt<T, A, 32, 32>, 32, 32);
  else if (bytes_per_row <= 1024) err = launch(attention_backward_simt<T, A, 16, 16>, 16, 16);
  else err = launch(attention_backward_simt<T, A, 8, 8>, 8, 8);
  if (err != cudaSuccess) return err;
  const int64_t n = rows * p.D;
  const unsigned blocks = (unsigned)std::min<int64_t>((n + 255) / 256, 65535);
  convert_dq<T, A><<<blocks, 256, 0, stream>>>(static_cast<const A*>(p.dq_accum), static_cast<T*>(p.dq), n);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_attention_forward(const AttentionParams& p, AttnDtype dtype, cudaStream_t stream) {
  if ((int64_t)p.B * p.H * p.Sq == 0) return cudaSuccess;
  switch (dtype) {
    case AttnDtype::kFloat32: return forward_simt<float, float>(p, stream);
    case AttnDtype::kFloat64: return forward_simt<double, double>(p, stream);
    case AttnDtype::kFloat16: return forward_half<__half>(p, stream);
    case AttnDtype::kBFloat16: return forward_half<__nv_bfloat16>(p, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t launch_attention_delta(const AttentionBackwardParams& p, AttnDtype dtype, cudaStream_t stream) {
  if ((int64_t)p.B * p.H * p.Sq == 0) return cudaSuccess;
  switch (dtype) {
    case AttnDtype::kFloat32: return delta_typed<float, float>(p, stream);
    case AttnDtype::kFloat64: return delta_typed<double, double>(p, stream);
    case AttnDtype::kFloat16: return delta_typed<__half, float>(p, stream);
    case AttnDtype::kBFloat16: return delta_typed<__nv_bfloat16, float>(p, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t launch_attention_backward(const AttentionBackwardParams& p, AttnDtype dtype,
                                      cudaStream_t stream) {
  if ((int64_t)p.B * p.H * p.Sq == 0 || p.Sk == 0) return cudaSuccess;
  switch (dtype) {
    case AttnDtype::kFloat32: return backward_typed<float, float>(p, stream);
    case AttnDtype::kFloat64: return backward_typed<double, double>(p, stream);
    case AttnDtype::kFloat16: return backward_typed<__half, float>(p, stream);
    case AttnDtype::kBFloat16: return backward_typed<__nv_bfloat16, float>(p, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace gencore
