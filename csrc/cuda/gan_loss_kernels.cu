// GAN losses, CUDA: the loss and the gradients with respect to both inputs in ONE kernel launch.
// No torch headers (see DESIGN.md).
//
// One persistent grid of G blocks (G from the size, capped at what fits on the device at once)
// walks the inputs with grid-stride loops. Sums are reduced per block in a fixed tree order into
// the workspace (one slot per block and quantity), then, after a grid-wide barrier, in a fixed
// order again: results are bit-identical run to run, with no float atomics. G == 1 (small inputs)
// is an ordinary launch whose barriers are __syncthreads(); G > 1 is a cooperative launch (all
// blocks resident, cooperative_groups grid sync). ragan needs three barriers (means, then the
// derivative sums that couple the sides); the other kinds one, and reduction none none.
#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>

#include "../common/gan_loss.h"
#include "gan_loss_kernels.h"

namespace gencore {
namespace cuda {
namespace {

namespace cg = cooperative_groups;
using namespace gan;

constexpr int kThreads = 256;
constexpr int kItemsPerThread = 4;  // G = ceil(n / (kThreads * kItemsPerThread)), capped
constexpr int kSlots = 6;           // workspace doubles per block

template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };

// Loads to and stores from the math type A = Acc<T>::type.
template <typename T> struct Conv;
template <> struct Conv<float> {
  static __device__ __forceinline__ float load(float x) { return x; }
  static __device__ __forceinline__ float store(float x) { return x; }
};
template <> struct Conv<double> {
  static __device__ __forceinline__ double load(double x) { return x; }
  static __device__ __forceinline__ double store(double x) { return x; }
};
template <> struct Conv<__half> {
  static __device__ __forceinline__ float load(__half x) { return __half2float(x); }
  static __device__ __forceinline__ __half store(float x) { return __float2half_rn(x); }
};
template <> struct Conv<__nv_bfloat16> {
  static __device__ __forceinline__ float load(__nv_bfloat16 x) { return __bfloat162float(x); }
  static __device__ __forceinline__ __nv_bfloat16 store(float x) { return __float2bfloat16_rn(x); }
};
template <typename T>
__device__ __forceinline__ typename Acc<T>::type to_acc(T x) { return Conv<T>::load(x); }
template <typename T>
__device__ __forceinline__ T from_acc(typename Acc<T>::type x) { return Conv<T>::store(x); }
template <typename T>
__device__ __forceinline__ T from_acc_d(double x) {
  return Conv<T>::store(static_cast<typename Acc<T>::type>(x));
}

__device__ __forceinline__ float ex(float x) { return expf(x); }
__device__ __forceinline__ double ex(double x) { return exp(x); }
__device__ __forceinline__ float l1p(float x) { return log1pf(x); }
__device__ __forceinline__ double l1p(double x) { return log1p(x); }

// T(x) and T'(x); softplus and sigmoid from one exp(-|y|), never overflowing; NaN propagates.
template <typename A>
__device__ __forceinline__ void term(int t, A x, A& l, A& d) {
  switch (t) {
    case kSoftplusNeg:
    case kSoftplusPos: {
      const A y = t == kSoftplusNeg ? -x : x;
      const A e = ex(-fabs(y));
      l = (y > A(0) ? y : A(0)) + l1p(e);
      const A r = A(1) / (A(1) + e);
      const A s = y >= A(0) ? r : e * r;
      d = t == kSoftplusNeg ? -s : s;
      break;
    }
    case kHingeNeg:
    case kHingePos: {
      const A y = t == kHingeNeg ? A(1) - x : A(1) + x;
      l = (y > A(0) || y != y) ? y : A(0);
      d = y > A(0) ? (t == kHingeNeg ? A(-1) : A(1)) : A(0);
      break;
    }
    case kLinearNeg:
      l = -x;
      d = A(-1);
      break;
    default:  // kLinearPos
      l = x;
      d = A(1);
      break;
  }
}

struct Params {
  const void* r;
  const void* f;
  void* gr;
  void* gf;
  void* loss;
  int64_t nr, nf;
  Plan plan;
  int reduction;
  double* ws;  // gridDim.x * kSlots
};

// Block sum of one value per thread, fixed tree order; the result is valid in every thread.
template <typename A>
__device__ A block_sum(A v, A* smem) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();  // smem reuse across calls
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < kThreads / 32 ? smem[lane] : A(0);
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    if (lane == 0) smem[0] = v;
  }
  __syncthreads();
  return smem[0];
}

// Sum of ws[b * kSlots + slot] over all blocks, in fixed order; same value in every thread and
// every block.
__device__ double grid_total(const double* ws, int slot, double* smem) {
  double v = 0;
  for (int b = threadIdx.x; b < static_cast<int>(gridDim.x); b += kThreads) v += ws[b * kSlots + slot];
  return block_sum<double>(v, smem);
}

__device__ __forceinline__ void grid_barrier() {
  if (gridDim.x == 1) {
    __syncthreads();
  } else {
    __threadfence();
    cg::this_grid().sync();
  }
}

// One side: sums of T(x - shift), T'(x - shift) over this thread's elements; writes
// g = c * T' + K when g is given, l = T when lout is given.
template <typename T, typename A>
__device__ void side(int term_id, const T* x, int64_t n, A shift, A c, A K, T* g, T* lout,
                     A& lsum, A& dsum) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < n; i += stride) {
    A l, d;
    term<A>(term_id, to_acc(x[i]) - shift, l, d);
    if (g) g[i] = from_acc<T>(d * c + K);
    if (lout) lout[i] = from_acc<T>(l);
    lsum += l;
    dsum += d;
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) gan_loss_kernel(Params p) {
  using A = typename Acc<T>::type;
  __shared__ double smem_d[kThreads / 32];
  __shared__ A smem_a[kThreads / 32];
  const T* r = static_cast<const T*>(p.r);
  const T* f = static_cast<const T*>(p.f);
  T* gr = static_cast<T*>(p.gr);
  T* gf = static_cast<T*>(p.gf);
  T* loss = static_cast<T*>(p.loss);
  const Plan& P = p.plan;
  const bool none = p.reduction == kNoReduction, mean = p.reduction == kMean;
  const A cr = mean ? A(1) / static_cast<A>(p.nr) : A(1);
  const A cf = mean ? A(1) / static_cast<A>(p.nf) : A(1);
  const int blk = blockIdx.x;
  double* ws = p.ws;
  auto put = [&](int slot, A v) {  // block sum into this block's slot
    const A s = block_sum<A>(v, smem_a);
    if (threadIdx.x == 0) ws[blk * kSlots + slot] = static_cast<double>(s);
  };
  auto reduce = [&](double s, int64_t n) { return mean ? s / static_cast<double>(n) : s; };

  if (P.paired || (none && P.uses_real)) {
    const int64_t n = p.nf;
    const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
    const A sign = static_cast<A>(P.sign), c = none ? A(1) : cf;
    A lsum = 0;
    for (int64_t i = static_cast<int64_t>(blk) * kThreads + threadIdx.x; i < n; i += stride) {
      const A ri = to_acc(r[i]), fi = to_acc(f[i]);
      A l, dr, df;
      if (P.paired) {
        A d;
        term<A>(kSoftplusNeg, (ri - fi) * sign, l, d);
        dr = d * c * sign;
        df = -dr;
      } else {
        A lr, lf;
        term<A>(P.term_r, ri, lr, dr);
        term<A>(P.term_f, fi, lf, df);
        l = lr + lf;
        dr *= c;
        df *= c;
      }
      gr[i] = from_acc<T>(dr);
      gf[i] = from_acc<T>(df);
      if (none) loss[i] = from_acc<T>(l);
      lsum += l;
    }
    if (none) return;
    put(0, lsum);
    grid_barrier();
    if (blk == 0) {
      const double L = reduce(grid_total(ws, 0, smem_d), n);
      if (threadIdx.x == 0) *loss = from_acc_d<T>(L);
    }
    return;
  }

  if (!P.average) {
    A lr = 0, dr = 0, lf = 0, df = 0;
    if (P.uses_real) side<T, A>(P.term_r, r, p.nr, A(0), cr, A(0), gr, static_cast<T*>(nullptr), lr, dr);
    side<T, A>(P.term_f, f, p.nf, A(0), cf, A(0), gf, none ? loss : static_cast<T*>(nullptr), lf, df);
    if (none) return;
    put(0, lr);
    put(1, lf);
    grid_barrier();
    if (blk == 0) {
      const double Lr = P.uses_real ? reduce(grid_total(ws, 0, smem_d), p.nr) : 0.0;
      const double Lf = reduce(grid_total(ws, 1, smem_d), p.nf);
      if (threadIdx.x == 0) *loss = from_acc_d<T>(Lr + Lf);
    }
    return;
  }

  // ragan. 1: means of both sides.
  {
    A sr = 0, sf = 0, unused = 0;
    side<T, A>(kLinearPos, r, p.nr, A(0), A(1), A(0), static_cast<T*>(nullptr), static_cast<T*>(nullptr), sr, unused);
    side<T, A>(kLinearPos, f, p.nf, A(0), A(1), A(0), static_cast<T*>(nullptr), static_cast<T*>(nullptr), sf, unused);
    put(0, sr);
    put(1, sf);
  }
  grid_barrier();
  const A mr = static_cast<A>(grid_total(ws, 0, smem_d) / static_cast<double>(p.nr));
  const A mf = static_cast<A>(grid_total(ws, 1, smem_d) / static_cast<double>(p.nf));
  // 2: the real side's loss and derivative sums (K_f needs the latter).
  {
    A l = 0, d = 0;
    side<T, A>(P.term_r, r, p.nr, mf, cr, A(0), static_cast<T*>(nullptr), static_cast<T*>(nullptr), l, d);
    put(2, l);
    put(3, d);
  }
  grid_barrier();
  const double Dr = grid_total(ws, 3, smem_d);
  const A Kf = static_cast<A>(-static_cast<double>(cr) * Dr / static_cast<double>(p.nf));
  // 3: the fake side, final gradients.
  {
    A l = 0, d = 0;
    side<T, A>(P.term_f, f, p.nf, mr, cf, Kf, gf, static_cast<T*>(nullptr), l, d);
    put(4, l);
    put(5, d);
  }
  grid_barrier();
  const double Df = grid_total(ws, 5, smem_d);
  const A Kr = static_cast<A>(-static_cast<double>(cf) * Df / static_cast<double>(p.nr));
  // 4: the real side, final gradients (recomputed rather than stored twice: one rounding).
  {
    A l = 0, d = 0;
    side<T, A>(P.term_r, r, p.nr, mf, cr, Kr, gr, static_cast<T*>(nullptr), l, d);
  }
  if (blk == 0) {
    const double Lr = reduce(grid_total(ws, 2, smem_d), p.nr);
    const double Lf = reduce(grid_total(ws, 4, smem_d), p.nf);
    if (threadIdx.x == 0) *loss = from_acc_d<T>(Lr + Lf);
  }
}

template <typename T>
int max_resident_blocks(int device) {
  static std::atomic<int> cache[64];
  if (device < 0 || device >= 64) device = 0;
  int v = cache[device].load(std::memory_order_relaxed);
  if (v > 0) return v;
  int per_sm = 0, sms = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, gan_loss_kernel<T>, kThreads, 0) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
    cudaGetLastError();  // clear; fall back to one block
    return 1;
  }
  v = per_sm * sms > 0 ? per_sm * sms : 1;
  cache[device].store(v, std::memory_order_relaxed);
  return v;
}

template <typename T>
int grid_size(const GanLossArgs& a, int device) {
  const int64_t n = a.n_real > a.n_fake ? a.n_real : a.n_fake;
  const int64_t per_block = static_cast<int64_t>(kThreads) * kItemsPerThread;
  const int64_t want = (n + per_block - 1) / per_block;
  if (want <= 1) return 1;
  const int64_t cap = max_resident_blocks<T>(device);
  return static_cast<int>(want < cap ? want : cap);
}

int grid_for(const GanLossArgs& a, GanDType dtype, int device) {
  switch (dtype) {
    case GanDType::kFloat: return grid_size<float>(a, device);
    case GanDType::kDouble: return grid_size<double>(a, device);
    case GanDType::kHalf: return grid_size<__half>(a, device);
    default: return grid_size<__nv_bfloat16>(a, device);
  }
}

template <typename T>
cudaError_t launch(const Params& p, int grid, cudaStream_t stream) {
  if (grid == 1) {
    gan_loss_kernel<T><<<1, kThreads, 0, stream>>>(p);
    return cudaGetLastError();
  }
  Params q = p;
  void* args[] = {&q};
  return cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(&gan_loss_kernel<T>), dim3(grid),
                                     dim3(kThreads), args, 0, stream);
}

}  // namespace

size_t gan_loss_workspace_bytes(const GanLossArgs& a, GanDType dtype, int device) {
  return static_cast<size_t>(grid_for(a, dtype, device)) * kSlots * sizeof(double);
}

cudaError_t launch_gan_loss(const GanLossArgs& a, GanDType dtype, void* workspace, int device,
                            cudaStream_t stream) {
  Params p;
  if (!make_plan(a.kind, a.role, &p.plan)) return cudaErrorInvalidValue;
  p.r = a.real;
  p.f = a.fake;
  p.gr = a.grad_real;
  p.gf = a.grad_fake;
  p.loss = a.loss;
  p.nr = a.n_real;
  p.nf = a.n_fake;
  p.reduction = a.reduction;
  p.ws = static_cast<double*>(workspace);
  const int grid = grid_for(a, dtype, device);
  switch (dtype) {
    case GanDType::kFloat: return launch<float>(p, grid, stream);
    case GanDType::kDouble: return launch<double>(p, grid, stream);
    case GanDType::kHalf: return launch<__half>(p, grid, stream);
    default: return launch<__nv_bfloat16>(p, grid, stream);
  }
}

}  // namespace cuda
}  // namespace gencore
