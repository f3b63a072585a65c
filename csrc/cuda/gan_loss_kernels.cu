// GAN losses, CUDA: the loss and the gradients with respect to both inputs. No torch headers (see
// DESIGN.md).
//
// The work is a few phases separated by grid-wide barriers: the loss terms and gradients with
// per-block partial sums, then the final sum (ragan: the means, the real side's derivative sum that
// couples the sides, the fake side, the real side). Sums are reduced per block in a fixed tree order
// into one slot per block and quantity, then over the blocks in a fixed order again: results are
// bit-identical run to run, with no float atomics, and do not depend on the GPU (G depends only on
// the sizes). Inputs of up to kOneBlock elements per side run every phase in ONE launch of one
// block (barriers are __syncthreads, partial sums in shared memory, no workspace); larger ones run
// one launch per phase (the launch boundary is the barrier) with a workspace from the caller. No
// cooperative launch, no device query, no host sync: safe to capture in a CUDA graph.
#include <cuda_runtime.h>

#include <cstdint>

#include "../common/cuda_math.cuh"
#include "../common/gan_loss.h"
#include "gan_loss_kernels.h"
#include "launch.cuh"

namespace gencore {
namespace cuda {
namespace {

using namespace gan;

constexpr int kThreads = 256;
constexpr int64_t kOneBlock = 16384;  // per side: one block does it all, in one launch
constexpr int kItemsPerThread = 8;    // G = ceil(n / (kThreads * kItemsPerThread)), capped
constexpr int kMaxBlocks = 2048;
constexpr int kSlots = 6;             // workspace doubles per block

// Loads widen to and stores round from the math type A = AccOf<T>::type (common/cuda_math.cuh);
// a double result (the loss) is rounded to A first.
template <typename T> using Acc = AccOf<T>;
template <typename T>
__device__ __forceinline__ T from_acc_d(double x) {
  return from_acc<T>(static_cast<typename AccOf<T>::type>(x));
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
  int blocks;  // G: blocks of the element phases
  double* ws;  // G * kSlots partial sums (unused when G == 1)
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

// Sum of ws[b * kSlots + slot] over the G blocks, in fixed order; same value in every thread and
// every block.
__device__ double grid_total(const double* ws, int blocks, int slot, double* smem) {
  double v = 0;
  for (int b = threadIdx.x; b < blocks; b += kThreads) v += ws[b * kSlots + slot];
  return block_sum<double>(v, smem);
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

// Phases: kTerms (every block: terms, gradients, partial sums), kTotal (one block: the loss);
// ragan: kMeans, kRealSums, kFakeSide, kRealSide (every block; block 0 also writes the loss).
enum Phase : int { kTerms = 0, kTotal = 1, kMeans = 0, kRealSums = 1, kFakeSide = 2, kRealSide = 3 };

template <typename T>
__device__ void run_phase(const Params& p, int phase, double* ws, double* smem_d,
                          typename Acc<T>::type* smem_a) {
  using A = typename Acc<T>::type;
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
  auto put = [&](int slot, A v) {  // block sum into this block's slot
    const A s = block_sum<A>(v, smem_a);
    if (threadIdx.x == 0) ws[blk * kSlots + slot] = static_cast<double>(s);
  };
  auto total = [&](int slot) { return grid_total(ws, p.blocks, slot, smem_d); };
  auto reduce = [&](double s, int64_t n) { return mean ? s / static_cast<double>(n) : s; };

  if (!P.average) {
    if (phase == kTotal) {  // one block
      const double L = P.paired || (none && P.uses_real)
                           ? reduce(total(0), p.nf)
                           : (P.uses_real ? reduce(total(0), p.nr) : 0.0) + reduce(total(1), p.nf);
      if (threadIdx.x == 0) *loss = from_acc_d<T>(L);
      return;
    }
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
      if (!none) put(0, lsum);
      return;
    }
    A lr = 0, dr = 0, lf = 0, df = 0;
    if (P.uses_real) side<T, A>(P.term_r, r, p.nr, A(0), cr, A(0), gr, static_cast<T*>(nullptr), lr, dr);
    side<T, A>(P.term_f, f, p.nf, A(0), cf, A(0), gf, none ? loss : static_cast<T*>(nullptr), lf, df);
    if (none) return;
    put(0, lr);
    put(1, lf);
    return;
  }

  // ragan.
  if (phase == kMeans) {
    A sr = 0, sf = 0, unused = 0;
    side<T, A>(kLinearPos, r, p.nr, A(0), A(1), A(0), static_cast<T*>(nullptr), static_cast<T*>(nullptr), sr, unused);
    side<T, A>(kLinearPos, f, p.nf, A(0), A(1), A(0), static_cast<T*>(nullptr), static_cast<T*>(nullptr), sf, unused);
    put(0, sr);
    put(1, sf);
    return;
  }
  const A mr = static_cast<A>(total(0) / static_cast<double>(p.nr));
  const A mf = static_cast<A>(total(1) / static_cast<double>(p.nf));
  if (phase == kRealSums) {  // the real side's loss and derivative sums (K_f needs the latter)
    A l = 0, d = 0;
    side<T, A>(P.term_r, r, p.nr, mf, cr, A(0), static_cast<T*>(nullptr), static_cast<T*>(nullptr), l, d);
    put(2, l);
    put(3, d);
    return;
  }
  const A Kf = static_cast<A>(-static_cast<double>(cr) * total(3) / static_cast<double>(p.nf));
  if (phase == kFakeSide) {  // the fake side, final gradients
    A l = 0, d = 0;
    side<T, A>(P.term_f, f, p.nf, mr, cf, Kf, gf, static_cast<T*>(nullptr), l, d);
    put(4, l);
    put(5, d);
    return;
  }
  // kRealSide: the real side, final gradients (recomputed rather than stored twice: one rounding).
  const A Kr = static_cast<A>(-static_cast<double>(cf) * total(5) / static_cast<double>(p.nr));
  {
    A l = 0, d = 0;
    side<T, A>(P.term_r, r, p.nr, mf, cr, Kr, gr, static_cast<T*>(nullptr), l, d);
  }
  if (blk == 0) {
    const double Lr = reduce(total(2), p.nr);
    const double Lf = reduce(total(4), p.nf);
    if (threadIdx.x == 0) *loss = from_acc_d<T>(Lr + Lf);
  }
}

// Runs phases first..last; more than one only in a single-block launch (the partial sums then live
// in shared memory).
template <typename T>
__global__ void __launch_bounds__(kThreads) gan_loss_kernel(Params p, int first, int last) {
  using A = typename Acc<T>::type;
  __shared__ double smem_d[kThreads / 32];
  __shared__ A smem_a[kThreads / 32];
  __shared__ double smem_ws[kSlots];
  double* ws = p.blocks == 1 ? smem_ws : p.ws;
  for (int phase = first; phase <= last; ++phase) {
    if (phase > first) __syncthreads();
    run_phase<T>(p, phase, ws, smem_d, smem_a);
  }
}

// G: one block up to kOneBlock elements per side, else about kItemsPerThread per thread.
int grid_size(const GanLossArgs& a) {
  const int64_t n = a.n_real > a.n_fake ? a.n_real : a.n_fake;
  if (n <= kOneBlock) return 1;
  const int64_t want = (n + kThreads * kItemsPerThread - 1) / (kThreads * kItemsPerThread);
  return static_cast<int>(want < kMaxBlocks ? want : kMaxBlocks);
}

template <typename T>
cudaError_t launch(const Params& p, cudaStream_t stream) {
  const bool ragan = p.plan.average;
  const bool none = p.reduction == kNoReduction;
  const int last = ragan ? kRealSide : (none ? kTerms : kTotal);
  if (p.blocks == 1) {
    return launch_kernel(gan_loss_kernel<T>, 1, kThreads, 0, stream, p, 0, last);
  }
  for (int phase = 0; phase <= last; ++phase) {
    const int grid = !ragan && phase == kTotal ? 1 : p.blocks;
    const cudaError_t err = launch_kernel(gan_loss_kernel<T>, grid, kThreads, 0, stream, p, phase, phase);
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

}  // namespace

size_t gan_loss_workspace_bytes(const GanLossArgs& a) {
  const int grid = grid_size(a);
  return grid == 1 ? 0 : static_cast<size_t>(grid) * kSlots * sizeof(double);
}

cudaError_t launch_gan_loss(const GanLossArgs& a, FloatType dtype, void* workspace,
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
  p.blocks = grid_size(a);
  switch (dtype) {
    case FloatType::kFloat32: return launch<float>(p, stream);
    case FloatType::kFloat64: return launch<double>(p, stream);
    case FloatType::kFloat16: return launch<__half>(p, stream);
    case FloatType::kBFloat16: return launch<__nv_bfloat16>(p, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace gencore
