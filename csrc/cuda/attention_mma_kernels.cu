// Flash attention on tensor cores: FlashAttention-2 structure on mma.sync m16n8k16 (bf16/fp16 in,
// f32 accumulate), sm_80+, head dims 64, 96, 128. Torch-free (see DESIGN.md); the primitives are in
// mma_sm80.cuh, the warp-tile helpers in mma_tiles.cuh.
//
// Layout of every kernel: a block owns BM rows (queries for the forward and dQ kernels, keys for
// the dK/dV kernel), 16 kM rows per warp, whose operand fragments (Q; dO; K and V) and output
// accumulators (O; dQ; dK and dV) stay in registers for the whole block. The other side streams
// through shared memory in tiles of BN rows, two stages: cp.async (16 bytes, zero-fill past the
// end) fills stage i+1 while the tensor cores work on stage i, one __syncthreads per tile. Scores,
// probabilities and their gradients never leave registers: an mma accumulator (C layout) converts
// to the A operand of the next product in place (c_to_a).
//
// Forward: S = Q K^T, online softmax in the log2 domain (scale * log2 e applied in float, exp2 on
// the SFU, row max/sum over the 4 lanes of a quad), O += P V with V through ldmatrix.trans, one
// normalisation at the end, lse = (m + log2 l) ln 2 in float32. Causal: key tiles past the last
// row's diagonal are not loaded; only tiles that cross the diagonal, stick out past S_k, or have a
// key_padding_mask are masked element by element. Rows that see no key: out 0, lse -inf. Query
// tiles run longest-first (causal rows near the end see the most keys).
//
// Backward: delta = rowsum(dO * O) first (attention_delta, one warp per row), then two kernels:
//   dK/dV: per (batch, kv head, key tile); for each query head of the GQA group and each query
//     tile that can see these keys: S^T = K Q^T and dP^T = V dO^T, P^T = exp2(S^T scale log2 e -
//     lse log2 e), dS^T = P^T (dP^T - delta), dV += P^T dO, dK += dS^T Q. Working in the
//     transposed products keeps each warp on its own key rows, so P^T and dS^T are the A operands
//     of the dV, dK products straight from registers.
//   dQ: per (batch, head, query tile), over the key tiles: S and dP again, dQ += dS K.
// The dQ choice: FA2 adds each key tile's dQ part into a float workspace with atomicAdd (5
// matrix products per tile pair instead of 7 here, but one red.global.add per dQ element per key
// tile, dS through shared memory, a zeroed workspace and a conversion pass, and results that
// change from run to run). The separate dQ kernel pays 2 recomputed products (40% more tensor-core
// work in the backward) for: no atomics, no workspace, dQ bit-identical across runs, and a dK/dV
// kernel without any shared-memory round trip. Predicted cost and the measurement plan are in
// benchmarks/ATTENTION_NOTES.md.
#include "attention_mma_kernels.h"

#include <cmath>
#include <cstdint>

#include "../common/cuda_math.cuh"
#include "mma_tiles.cuh"

// GENCORE_PLANT_BUG plants one bug of a class the CPU emulator must catch (only
// tests/test_attention_emulated.py sets it; 0, every real build, compiles the kernels as written):
// 1 reads delta one element past a row's end (AddressSanitizer finds it), 2 prefetches the
// forward's next K/V tile before the barrier that frees its stage (the "ahead" schedule does).
#ifndef GENCORE_PLANT_BUG
#define GENCORE_PLANT_BUG 0
#endif

namespace gencore {
namespace cuda {
namespace {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.69314718055994531f;

// kWarps warps, each owning kM blocks of 16 of the block's BM rows; the streamed side comes in
// tiles of BN rows.
template <int D_, int kWarps_, int kM_, int BN_>
struct Tile {
  static constexpr int D = D_, kWarps = kWarps_, kM = kM_, BN = BN_;
  static constexpr int kThreads = 32 * kWarps, BM = 16 * kM * kWarps, LD = mma::kPaddedLd<D>;
  static constexpr int kK = D / 16;  // 16-wide k-steps over the head dim
  static constexpr int kN = D / 8;   // 8-wide n-tiles over the head dim
  static_assert(D % 16 == 0 && BN % 16 == 0, "tile sizes");
};

// Tile choices (registers, shared memory and the predictions: benchmarks/ATTENTION_NOTES.md).
// Forward: 128 queries x 64 keys; at D = 64 4 warps of 32 rows (every K/V fragment feeds two row
// blocks), at D = 96, 128 8 warps of 16 rows (32 rows would not fit in 255 registers).
template <int D> struct FwdTile { using type = Tile<D, 8, 1, 64>; };
template <> struct FwdTile<64> { using type = Tile<64, 4, 2, 64>; };
// Backward, dQ: 128 queries x 64 keys; dK/dV: 128 keys x 64 queries; 8 warps of 16 rows (the dQ
// kernel with 32 rows per warp at D = 64 spills on sm_80).
template <int D> struct BwdTile { using type = Tile<D, 8, 1, 64>; };

// This thread's place: warp, lane, and the lane's fragment coordinates g = lane / 4 (row),
// t = lane % 4 (column pair).
struct LaneIds {
  int tid, warp, lane, g, t;
  __device__ LaneIds() : tid(threadIdx.x), warp(tid / 32), lane(tid % 32), g(lane / 4), t(lane % 4) {}
};

// Backward inputs of query row i of (batch, head) row block bh * S_q: the forward's lse in log2
// units, +inf where P must be 0 (rows past S_q, rows that saw no key), and delta (0 past S_q).
__device__ __forceinline__ float lse_log2(const AttentionBackwardParams& p, int64_t bh, int i) {
  const float l = i < p.Sq ? static_cast<const float*>(p.lse)[bh * p.Sq + i] : -INFINITY;
  return l == -INFINITY ? INFINITY : l * kLog2e;
}
__device__ __forceinline__ float delta_at(const AttentionBackwardParams& p, int64_t bh, int i) {
  const bool in = GENCORE_PLANT_BUG == 1 ? i <= p.Sq : i < p.Sq;
  return in ? static_cast<const float*>(p.delta)[bh * p.Sq + i] : 0.f;
}

// The key tiles [0, n) a block of query rows [q0, q0 + BM) needs, and whether tile `k0` needs the
// element mask (padding, past S_k, or crossing the causal diagonal of the block's first row).
struct KeyRange {
  int n_tiles;
  int offset;  // S_k - S_q: query i sees keys j <= i + offset when causal
  __device__ KeyRange(const AttentionParams& p, int q0, int BM, int BN) : offset(p.Sk - p.Sq) {
    const int q_last = min(q0 + BM, p.Sq) - 1;
    const int k_end = p.causal ? max(0, min(p.Sk, q_last + offset + 1)) : p.Sk;
    n_tiles = (k_end + BN - 1) / BN;
  }
  __device__ bool masked(const AttentionParams& p, int k0, int q0, int BN) const {
    return p.key_padding_mask != nullptr || k0 + BN > p.Sk || (p.causal && k0 + BN - 1 > q0 + offset);
  }
};

// Whether query i attends key j < S_k, given the block's key-skip bytes (padding or past S_k,
// present only with a key_padding_mask) for the tile starting at k0.
__device__ __forceinline__ bool key_visible(const AttentionParams& p, const unsigned char* skip, int k0, int i,
                                            int j, int offset) {
  const bool in = skip ? !skip[j - k0] : j < p.Sk;
  return in && (!p.causal || j <= i + offset);
}

// The streamed key/value tiles of the forward and dQ kernels: two stages of K, V (BN x LD) and,
// with a key_padding_mask, one byte per key (1 = padded or past S_k).
template <typename T, class C>
struct KvStages {
  T* k;
  T* v;
  unsigned char* skip;
  static constexpr size_t bytes() { return sizeof(T) * 4 * C::BN * C::LD + 2 * C::BN; }
  __device__ explicit KvStages(void* base)
      : k(static_cast<T*>(base)), v(k + 2 * C::BN * C::LD), skip(reinterpret_cast<unsigned char*>(v + 2 * C::BN * C::LD)) {}
  __device__ const T* k_at(int stage) const { return k + stage * C::BN * C::LD; }
  __device__ const T* v_at(int stage) const { return v + stage * C::BN * C::LD; }
  __device__ const unsigned char* skip_at(int stage, const bool* pad) const { return pad ? skip + stage * C::BN : nullptr; }

  // Starts loading key tile `tile` into stage tile % 2 (the caller commits the group).
  __device__ void load(int tile, const T* gk, const T* gv, const bool* pad, const AttentionParams& p, int tid) {
    const int stage = tile & 1, k0 = tile * C::BN;
    mma::load_rows_async<C::BN, C::D, C::kThreads>(k + stage * C::BN * C::LD, gk, p.k_stride[2], k0, p.Sk, tid);
    mma::load_rows_async<C::BN, C::D, C::kThreads>(v + stage * C::BN * C::LD, gv, p.v_stride[2], k0, p.Sk, tid);
    if (pad)
      for (int c = tid; c < C::BN; c += C::kThreads) skip[stage * C::BN + c] = k0 + c >= p.Sk || pad[k0 + c];
  }
};

// The per-(batch, head) base pointers of a query-row block.
template <typename T>
struct HeadPtrs {
  const T* q;
  const T* k;
  const T* v;
  const bool* pad;
  __device__ HeadPtrs(const AttentionParams& p, int b, int h) {
    const int hk = h / (p.H / p.Hkv);
    q = static_cast<const T*>(p.q) + b * p.q_stride[0] + h * p.q_stride[1];
    k = static_cast<const T*>(p.k) + b * p.k_stride[0] + hk * p.k_stride[1];
    v = static_cast<const T*>(p.v) + b * p.v_stride[0] + hk * p.v_stride[1];
    pad = p.key_padding_mask ? p.key_padding_mask + (int64_t)b * p.Sk : nullptr;
  }
};

// ------------------------------------------------------------------------------------------------
// Forward. Shared memory: Q (BM x LD; the output staging at the end), then KvStages.
template <typename T, class C>
__global__ void __launch_bounds__(C::kThreads) attention_forward_mma(const AttentionParams p) {
  constexpr int D = C::D, BM = C::BM, BN = C::BN, LD = C::LD, kM = C::kM;
  T* sQ = reinterpret_cast<T*>(dynamic_smem());
  KvStages<T, C> kv(sQ + BM * LD);
  const LaneIds id;
  const int tid = id.tid, lane = id.lane, g = id.g, t = id.t;
  const int q0 = (gridDim.x - 1 - blockIdx.x) * BM, h = blockIdx.y, b = blockIdx.z;
  const HeadPtrs<T> ptr(p, b, h);
  const KeyRange keys(p, q0, BM, BN);
  const float scale_log2 = static_cast<float>(p.scale) * kLog2e;

  mma::load_rows_async<BM, D, C::kThreads>(sQ, ptr.q, p.q_stride[2], q0, p.Sq, tid);
  mma::cp_async_commit();
  if (keys.n_tiles > 0) kv.load(0, ptr.k, ptr.v, ptr.pad, p, tid);
  mma::cp_async_commit();
  mma::cp_async_wait<1>();
  __syncthreads();

  const int wrow = id.warp * 16 * kM;  // the warp's first row in the block
  uint32_t qf[kM][C::kK][4];
#pragma unroll
  for (int m = 0; m < kM; ++m) mma::load_a_frags<D>(qf[m], sQ, wrow + 16 * m, lane);

  float o[kM][C::kN][4] = {};
  float row_max[kM][2], row_sum[kM][2];  // per row g / g + 8 of each block; row_sum is this lane's part
#pragma unroll
  for (int m = 0; m < kM; ++m) row_max[m][0] = row_max[m][1] = -INFINITY, row_sum[m][0] = row_sum[m][1] = 0.f;

  for (int tile = 0; tile < keys.n_tiles; ++tile) {
    mma::cp_async_wait<0>();
    if (GENCORE_PLANT_BUG != 2) __syncthreads();  // tile's K/V visible to all; every warp is done with the other stage
    if (tile + 1 < keys.n_tiles) kv.load(tile + 1, ptr.k, ptr.v, ptr.pad, p, tid);
    mma::cp_async_commit();
    if (GENCORE_PLANT_BUG == 2) __syncthreads();
    const int stage = tile & 1, k0 = tile * BN;

    float s[kM][BN / 8][4] = {};
    mma::mma_abt<kM, BN / 8, D>(s, qf, kv.k_at(stage), 0, lane);

    const bool masked = keys.masked(p, k0, q0, BN);
    const unsigned char* skip = kv.skip_at(stage, ptr.pad);
#pragma unroll
    for (int m = 0; m < kM; ++m) {
#pragma unroll
      for (int n = 0; n < BN / 8; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          float x = s[m][n][e] * scale_log2;
          if (masked) {
            const int i = q0 + wrow + 16 * m + g + 8 * (e >> 1), j = k0 + 8 * n + 2 * t + (e & 1);
            if (!key_visible(p, skip, k0, i, j, keys.offset)) x = -INFINITY;
          }
          s[m][n][e] = x;
        }
      }
    }
    // Online softmax, rows g (hi = 0) and g + 8 (hi = 1) of each block.
#pragma unroll
    for (int m = 0; m < kM; ++m) {
#pragma unroll
      for (int hi = 0; hi < 2; ++hi) {
        float mx = -INFINITY;
#pragma unroll
        for (int n = 0; n < BN / 8; ++n) mx = fmaxf(mx, fmaxf(s[m][n][2 * hi], s[m][n][2 * hi + 1]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float m_new = fmaxf(row_max[m][hi], mx);
        const float base = m_new == -INFINITY ? 0.f : m_new;  // a row with no key yet: p = 0, no NaN
        const float alpha = mma::fast_exp2(row_max[m][hi] - base);
        row_max[m][hi] = m_new;
        float sum = 0.f;
#pragma unroll
        for (int n = 0; n < BN / 8; ++n) {
#pragma unroll
          for (int e = 2 * hi; e < 2 * hi + 2; ++e) {
            s[m][n][e] = mma::fast_exp2(s[m][n][e] - base);
            sum += s[m][n][e];
          }
        }
        row_sum[m][hi] = row_sum[m][hi] * alpha + sum;
#pragma unroll
        for (int n = 0; n < C::kN; ++n) o[m][n][2 * hi] *= alpha, o[m][n][2 * hi + 1] *= alpha;
      }
    }
    // O += P V, 16 keys at a time.
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {
      uint32_t pa[kM][4];
#pragma unroll
      for (int m = 0; m < kM; ++m) mma::c_to_a<T>(pa[m], s[m][2 * kk], s[m][2 * kk + 1]);
      mma::mma_ab<kM, D>(o, pa, kv.v_at(stage), 16 * kk, lane);
    }
  }

  float* lse = static_cast<float*>(p.lse) + ((int64_t)b * p.H + h) * p.Sq;
  float inv[kM][2];
#pragma unroll
  for (int m = 0; m < kM; ++m) {
#pragma unroll
    for (int hi = 0; hi < 2; ++hi) {
      float l = row_sum[m][hi];
      l += __shfl_xor_sync(0xffffffffu, l, 1);
      l += __shfl_xor_sync(0xffffffffu, l, 2);
      inv[m][hi] = l > 0.f ? 1.f / l : 0.f;
      const int i = q0 + wrow + 16 * m + g + 8 * hi;
      if (t == 0 && i < p.Sq) lse[i] = l > 0.f ? (row_max[m][hi] + log2f(l)) * kLn2 : -INFINITY;
    }
  }
  T* out = static_cast<T*>(p.out) + ((int64_t)b * p.H + h) * p.Sq * D;
  mma::store_rows<kM, D>(o, inv, sQ + wrow * LD, out, q0 + wrow, p.Sq, lane);
}

// ------------------------------------------------------------------------------------------------
// Backward, dQ. Shared memory: Q and dO (BM x LD each; Q's rows stage dQ at the end), KvStages.
template <typename T, class C>
__global__ void __launch_bounds__(C::kThreads) attention_backward_dq_mma(const AttentionBackwardParams p) {
  constexpr int D = C::D, BM = C::BM, BN = C::BN, LD = C::LD, kM = C::kM;
  T* sQ = reinterpret_cast<T*>(dynamic_smem());
  T* sdO = sQ + BM * LD;
  KvStages<T, C> kv(sdO + BM * LD);
  const LaneIds id;
  const int tid = id.tid, lane = id.lane, g = id.g, t = id.t;
  const int q0 = (gridDim.x - 1 - blockIdx.x) * BM, h = blockIdx.y, b = blockIdx.z;
  const HeadPtrs<T> ptr(p, b, h);
  const KeyRange keys(p, q0, BM, BN);
  const float scale_log2 = static_cast<float>(p.scale) * kLog2e;
  const T* dout = static_cast<const T*>(p.dout) + b * p.dout_stride[0] + h * p.dout_stride[1];

  mma::load_rows_async<BM, D, C::kThreads>(sQ, ptr.q, p.q_stride[2], q0, p.Sq, tid);
  mma::load_rows_async<BM, D, C::kThreads>(sdO, dout, p.dout_stride[2], q0, p.Sq, tid);
  mma::cp_async_commit();
  if (keys.n_tiles > 0) kv.load(0, ptr.k, ptr.v, ptr.pad, p, tid);
  mma::cp_async_commit();

  // lse (log2 units) and delta of rows g / g + 8 of each block.
  const int wrow = id.warp * 16 * kM;
  const int64_t bh = (int64_t)b * p.H + h;
  float lse2[kM][2], delta[kM][2];
#pragma unroll
  for (int m = 0; m < kM; ++m) {
#pragma unroll
    for (int hi = 0; hi < 2; ++hi) {
      const int i = q0 + wrow + 16 * m + g + 8 * hi;
      lse2[m][hi] = lse_log2(p, bh, i);
      delta[m][hi] = delta_at(p, bh, i);
    }
  }
  mma::cp_async_wait<1>();
  __syncthreads();
  uint32_t qf[kM][C::kK][4], dof[kM][C::kK][4];
#pragma unroll
  for (int m = 0; m < kM; ++m) {
    mma::load_a_frags<D>(qf[m], sQ, wrow + 16 * m, lane);
    mma::load_a_frags<D>(dof[m], sdO, wrow + 16 * m, lane);
  }

  float dq[kM][C::kN][4] = {};
  for (int tile = 0; tile < keys.n_tiles; ++tile) {
    mma::cp_async_wait<0>();
    __syncthreads();
    if (tile + 1 < keys.n_tiles) kv.load(tile + 1, ptr.k, ptr.v, ptr.pad, p, tid);
    mma::cp_async_commit();
    const int stage = tile & 1, k0 = tile * BN;
    const bool masked = keys.masked(p, k0, q0, BN);
    const unsigned char* skip = kv.skip_at(stage, ptr.pad);
    // 16 keys at a time: S, dP (16 x 16 per row block) -> dS -> dQ += dS K.
#pragma unroll
    for (int kc = 0; kc < BN / 16; ++kc) {
      float s[kM][2][4] = {}, dp[kM][2][4] = {};
      mma::mma_abt<kM, 2, D>(s, qf, kv.k_at(stage), 16 * kc, lane);
      mma::mma_abt<kM, 2, D>(dp, dof, kv.v_at(stage), 16 * kc, lane);
      uint32_t dsa[kM][4];
#pragma unroll
      for (int m = 0; m < kM; ++m) {
#pragma unroll
        for (int n = 0; n < 2; ++n) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int i = q0 + wrow + 16 * m + g + 8 * (e >> 1), j = k0 + 16 * kc + 8 * n + 2 * t + (e & 1);
            const bool ok = !masked || key_visible(p, skip, k0, i, j, keys.offset);
            const float pr = ok ? mma::fast_exp2(s[m][n][e] * scale_log2 - lse2[m][e >> 1]) : 0.f;
            s[m][n][e] = pr * (dp[m][n][e] - delta[m][e >> 1]);
          }
        }
        mma::c_to_a<T>(dsa[m], s[m][0], s[m][1]);
      }
      mma::mma_ab<kM, D>(dq, dsa, kv.k_at(stage), 16 * kc, lane);
    }
  }

  mma::store_rows<kM, D>(dq, static_cast<float>(p.scale), sQ + wrow * LD, static_cast<T*>(p.dq) + bh * p.Sq * D, q0 + wrow, p.Sq, lane);
}

// ------------------------------------------------------------------------------------------------
// Backward, dK and dV. Shared memory: K, V (BM x LD each; they stage dK, dV at the end), then two
// stages of Q, dO (BN x LD each) and of lse (log2 units, +inf where P must be 0) and delta (BN
// floats each).
template <typename T, class C>
struct QStages {
  T* q;
  T* dout;
  float* lse2;
  float* delta;
  static constexpr size_t bytes() { return sizeof(T) * 4 * C::BN * C::LD + sizeof(float) * 4 * C::BN; }
  __device__ explicit QStages(void* base)
      : q(static_cast<T*>(base)), dout(q + 2 * C::BN * C::LD),
        lse2(reinterpret_cast<float*>(dout + 2 * C::BN * C::LD)), delta(lse2 + 2 * C::BN) {}
};

template <typename T, class C>
__global__ void __launch_bounds__(C::kThreads) attention_backward_dkdv_mma(const AttentionBackwardParams p) {
  constexpr int D = C::D, BM = C::BM, BN = C::BN, LD = C::LD, kM = C::kM;
  T* sK = reinterpret_cast<T*>(dynamic_smem());
  T* sV = sK + BM * LD;
  QStages<T, C> qs(sV + BM * LD);
  const LaneIds id;
  const int tid = id.tid, lane = id.lane, g = id.g, t = id.t;
  const int k0 = blockIdx.x * BM, hk = blockIdx.y, b = blockIdx.z, group = p.H / p.Hkv;
  const int offset = p.Sk - p.Sq;
  const T* gk = static_cast<const T*>(p.k) + b * p.k_stride[0] + hk * p.k_stride[1];
  const T* gv = static_cast<const T*>(p.v) + b * p.v_stride[0] + hk * p.v_stride[1];
  const bool* pad = p.key_padding_mask ? p.key_padding_mask + (int64_t)b * p.Sk : nullptr;
  const float scale_log2 = static_cast<float>(p.scale) * kLog2e;

  // Query tiles that can see a key of this block (causal: query i sees key k0 once i >= k0 - offset),
  // for each query head of the group: steps = group x n_q.
  const int q_first = p.causal ? max(0, k0 - offset) : 0;
  const int qt0 = q_first / BN, n_q = q_first < p.Sq ? (p.Sq - qt0 * BN + BN - 1) / BN : 0;
  const int n_steps = group * n_q;
  auto load_step = [&](int step) {
    const int h = hk * group + step / n_q, q0 = (qt0 + step % n_q) * BN, stage = step & 1;
    const T* gq = static_cast<const T*>(p.q) + b * p.q_stride[0] + h * p.q_stride[1];
    const T* gdo = static_cast<const T*>(p.dout) + b * p.dout_stride[0] + h * p.dout_stride[1];
    mma::load_rows_async<BN, D, C::kThreads>(qs.q + stage * BN * LD, gq, p.q_stride[2], q0, p.Sq, tid);
    mma::load_rows_async<BN, D, C::kThreads>(qs.dout + stage * BN * LD, gdo, p.dout_stride[2], q0, p.Sq, tid);
    const int64_t bh = (int64_t)b * p.H + h;
    for (int c = tid; c < BN; c += C::kThreads) {
      qs.lse2[stage * BN + c] = lse_log2(p, bh, q0 + c);
      qs.delta[stage * BN + c] = delta_at(p, bh, q0 + c);
    }
  };

  mma::load_rows_async<BM, D, C::kThreads>(sK, gk, p.k_stride[2], k0, p.Sk, tid);
  mma::load_rows_async<BM, D, C::kThreads>(sV, gv, p.v_stride[2], k0, p.Sk, tid);
  mma::cp_async_commit();
  if (n_steps > 0) load_step(0);
  mma::cp_async_commit();
  mma::cp_async_wait<1>();
  __syncthreads();

  // K and V fragments stay in registers, except V at D = 128 (that spills at 255 registers): it is
  // read again from shared memory, one k-step at a time, for each 16 queries.
  constexpr bool kVInRegs = D <= 96;
  const int wrow = id.warp * 16 * kM;
  uint32_t kf[kM][C::kK][4], vf[kM][kVInRegs ? C::kK : 1][4];
  bool key_in[kM][2];  // rows g / g + 8: key < S_k and not padded
#pragma unroll
  for (int m = 0; m < kM; ++m) {
    mma::load_a_frags<D>(kf[m], sK, wrow + 16 * m, lane);
    if constexpr (kVInRegs) mma::load_a_frags<D>(vf[m], sV, wrow + 16 * m, lane);
#pragma unroll
    for (int hi = 0; hi < 2; ++hi) {
      const int j = k0 + wrow + 16 * m + g + 8 * hi;
      key_in[m][hi] = j < p.Sk && !(pad && pad[j]);
    }
  }

  float dk[kM][C::kN][4] = {}, dv[kM][C::kN][4] = {};
  for (int step = 0; step < n_steps; ++step) {
    mma::cp_async_wait<0>();
    __syncthreads();
    if (step + 1 < n_steps) load_step(step + 1);
    mma::cp_async_commit();
    const int stage = step & 1, q0 = (qt0 + step % n_q) * BN;
    const T* sQ = qs.q + stage * BN * LD;
    const T* sdO = qs.dout + stage * BN * LD;
    const float* lse2 = qs.lse2 + stage * BN;
    const float* delta = qs.delta + stage * BN;
    const bool diagonal = p.causal && k0 + BM - 1 > q0 + offset;
    // 16 queries at a time: S^T, dP^T (16 x 16 per key block) -> P^T, dS^T -> dV, dK. Not
    // unrolled: the chunks share no registers, and unrolling only raises the register pressure.
#pragma unroll 1
    for (int qc = 0; qc < BN / 16; ++qc) {
      float st[kM][2][4] = {}, dpt[kM][2][4] = {};
      mma::mma_abt<kM, 2, D>(st, kf, sQ, 16 * qc, lane);
      if constexpr (kVInRegs) {
        mma::mma_abt<kM, 2, D>(dpt, vf, sdO, 16 * qc, lane);
      } else {
        mma::mma_abt_smem_a<kM, 2, D>(dpt, sV, wrow, sdO, 16 * qc, lane);
      }
      uint32_t pa[kM][4], dsa[kM][4];
#pragma unroll
      for (int m = 0; m < kM; ++m) {
#pragma unroll
        for (int n = 0; n < 2; ++n) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int c = 16 * qc + 8 * n + 2 * t + (e & 1);  // query row in the tile
            const int j = k0 + wrow + 16 * m + g + 8 * (e >> 1);
            const bool ok = key_in[m][e >> 1] && (!diagonal || j <= q0 + c + offset);
            const float pr = ok ? mma::fast_exp2(st[m][n][e] * scale_log2 - lse2[c]) : 0.f;
            st[m][n][e] = pr;
            dpt[m][n][e] = pr * (dpt[m][n][e] - delta[c]);
          }
        }
        mma::c_to_a<T>(pa[m], st[m][0], st[m][1]);
        mma::c_to_a<T>(dsa[m], dpt[m][0], dpt[m][1]);
      }
      mma::mma_ab<kM, D>(dv, pa, sdO, 16 * qc, lane);
      mma::mma_ab<kM, D>(dk, dsa, sQ, 16 * qc, lane);
    }
  }

  const int64_t bhk = ((int64_t)b * p.Hkv + hk) * p.Sk * D;
  mma::store_rows<kM, D>(dk, static_cast<float>(p.scale), sK + wrow * LD, static_cast<T*>(p.dk) + bhk, k0 + wrow,
                         p.Sk, lane);
  mma::store_rows<kM, D>(dv, 1.f, sV + wrow * LD, static_cast<T*>(p.dv) + bhk, k0 + wrow, p.Sk, lane);
}

// ------------------------------------------------------------------------------------------------
// Backward, delta[row] = sum_d dO * O in float32: one warp per (batch, head, query) row.
constexpr int kDeltaRowsPerBlock = 8;

template <typename T>
__global__ void __launch_bounds__(32 * kDeltaRowsPerBlock) attention_delta(const AttentionBackwardParams p) {
  const int64_t row = (int64_t)blockIdx.x * kDeltaRowsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= (int64_t)p.B * p.H * p.Sq) return;  // the whole warp leaves
  const int i = row % p.Sq, h = (row / p.Sq) % p.H, b = row / ((int64_t)p.Sq * p.H);
  const T* go = static_cast<const T*>(p.dout) + b * p.dout_stride[0] + h * p.dout_stride[1] + i * p.dout_stride[2];
  const T* o = static_cast<const T*>(p.out) + row * p.D;
  float acc = 0.f;
  for (int d = lane; d < p.D; d += 32) acc += to_acc(go[d]) * to_acc(o[d]);
  acc = warp_sum(acc);
  if (lane == 0) static_cast<float*>(p.delta)[row] = acc;
}

template <typename T, class C>
cudaError_t forward_tiles(const AttentionParams& p, cudaStream_t stream) {
  const size_t smem = sizeof(T) * C::BM * C::LD + KvStages<T, C>::bytes();
  const dim3 grid((p.Sq + C::BM - 1) / C::BM, p.H, p.B);
  return mma::launch(attention_forward_mma<T, C>, grid, dim3(C::kThreads), smem, stream, p);
}

template <typename T, class C>
cudaError_t backward_tiles(const AttentionBackwardParams& p, cudaStream_t stream) {
  const size_t dq_smem = sizeof(T) * 2 * C::BM * C::LD + KvStages<T, C>::bytes();
  const dim3 dq_grid((p.Sq + C::BM - 1) / C::BM, p.H, p.B);
  cudaError_t err = mma::launch(attention_backward_dq_mma<T, C>, dq_grid, dim3(C::kThreads), dq_smem, stream, p);
  if (err != cudaSuccess) return err;
  const size_t kv_smem = sizeof(T) * 2 * C::BM * C::LD + QStages<T, C>::bytes();
  const dim3 kv_grid((p.Sk + C::BM - 1) / C::BM, p.Hkv, p.B);
  return mma::launch(attention_backward_dkdv_mma<T, C>, kv_grid, dim3(C::kThreads), kv_smem, stream, p);
}

template <typename T>
cudaError_t forward_typed(const AttentionParams& p, cudaStream_t stream) {
  switch (p.D) {
    case 64: return forward_tiles<T, FwdTile<64>::type>(p, stream);
    case 96: return forward_tiles<T, FwdTile<96>::type>(p, stream);
    case 128: return forward_tiles<T, FwdTile<128>::type>(p, stream);
    default: return cudaErrorInvalidValue;
  }
}

template <typename T>
cudaError_t backward_typed(const AttentionBackwardParams& p, cudaStream_t stream) {
  switch (p.D) {
    case 64: return backward_tiles<T, BwdTile<64>::type>(p, stream);
    case 96: return backward_tiles<T, BwdTile<96>::type>(p, stream);
    case 128: return backward_tiles<T, BwdTile<128>::type>(p, stream);
    default: return cudaErrorInvalidValue;
  }
}

// cp.async moves 16 bytes: the base 16-byte aligned, every stride that is used a multiple of 8
// elements (a stride of a size-1 dim is never used).
bool rows_aligned(const void* ptr, const int64_t (&stride)[3], int n0, int n1, int n2) {
  return reinterpret_cast<uintptr_t>(ptr) % 16 == 0 && (n0 == 1 || stride[0] % 8 == 0) &&
         (n1 == 1 || stride[1] % 8 == 0) && (n2 == 1 || stride[2] % 8 == 0);
}

}  // namespace

bool attention_mma_covers(FloatType dtype, int head_dim) {
  return (dtype == FloatType::kBFloat16 || dtype == FloatType::kFloat16) &&
         (head_dim == 64 || head_dim == 96 || head_dim == 128);
}

bool attention_mma_supported(const AttentionParams& p, FloatType dtype) {
  return attention_mma_covers(dtype, p.D) &&
         rows_aligned(p.q, p.q_stride, p.B, p.H, p.Sq) && rows_aligned(p.k, p.k_stride, p.B, p.Hkv, p.Sk) &&
         rows_aligned(p.v, p.v_stride, p.B, p.Hkv, p.Sk);
}

bool attention_backward_mma_supported(const AttentionBackwardParams& p, FloatType dtype) {
  return attention_mma_supported(p, dtype) && rows_aligned(p.dout, p.dout_stride, p.B, p.H, p.Sq);
}

cudaError_t launch_attention_forward_mma(const AttentionParams& p, FloatType dtype, cudaStream_t stream) {
  if ((int64_t)p.B * p.H * p.Sq == 0) return cudaSuccess;
  if (dtype == FloatType::kBFloat16) return forward_typed<__nv_bfloat16>(p, stream);
  if (dtype == FloatType::kFloat16) return forward_typed<__half>(p, stream);
  return cudaErrorInvalidValue;
}

cudaError_t launch_attention_delta(const AttentionBackwardParams& p, FloatType dtype, cudaStream_t stream) {
  const int64_t rows = (int64_t)p.B * p.H * p.Sq;
  if (rows == 0) return cudaSuccess;
  const dim3 grid((unsigned)((rows + kDeltaRowsPerBlock - 1) / kDeltaRowsPerBlock));
  const dim3 block(32 * kDeltaRowsPerBlock);
  if (dtype == FloatType::kBFloat16) return launch_kernel(attention_delta<__nv_bfloat16>, grid, block, 0, stream, p);
  if (dtype == FloatType::kFloat16) return launch_kernel(attention_delta<__half>, grid, block, 0, stream, p);
  return cudaErrorInvalidValue;
}

cudaError_t launch_attention_backward_mma(const AttentionBackwardParams& p, FloatType dtype, cudaStream_t stream) {
  if ((int64_t)p.B * p.H * p.Sq == 0 || p.Sk == 0) return cudaSuccess;
  if (dtype == FloatType::kBFloat16) return backward_typed<__nv_bfloat16>(p, stream);
  if (dtype == FloatType::kFloat16) return backward_typed<__half>(p, stream);
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace gencore
