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
#include "../common/philox.h"
#include "mma_tiles.cuh"

// GENCORE_PLANT_BUG plants one bug of a class the CPU emulator must catch (only the emulator
// tests' builds set it, tests/_emulator.py; 0, every real build, compiles the kernels as written):
// 1 reads delta one element past a row's end (AddressSanitizer finds it), 2 prefetches the
// forward's next K/V tile before the barrier that frees its stage (the "ahead" schedule does), 3
// moves the window's lower bound one key up (the flash rule against the reference does).
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

// The keyword features' key interval (kFeat kernels): query i sees keys [lo(i), hi(i)) from
// causal and the window, in the causal frame (query i at key position i + S_k - S_q). Both ends
// grow with i, so rows [i0, i1] need keys [lo(i0), hi(i1)) at most.
struct Frame {
  int offset, Sk, left, right;
  bool causal;
  __device__ explicit Frame(const AttentionParams& p)
      : offset(p.Sk - p.Sq), Sk(p.Sk), left(p.window_left), right(p.window_right), causal(p.causal) {}
  __device__ int lo(int i) const { return left >= 0 ? max(0, i + offset - left + (GENCORE_PLANT_BUG == 3)) : 0; }
  __device__ int hi(int i) const {
    int h = Sk;
    if (causal) h = min(h, i + offset + 1);
    if (right >= 0) h = min(h, i + offset + right + 1);
    return max(h, 0);
  }
};

// document_ids and attn_mask, element by element (kFeat kernels): whether query i of (b, h) may
// see key j < S_k beyond the interval. Rows i >= S_q see nothing (and read nothing).
__device__ __forceinline__ bool elementwise_visible(const AttentionParams& p, int b, int h, int i, int j) {
  if (i >= p.Sq) return false;
  if (p.document_ids) {
    const int64_t* d = p.document_ids + (int64_t)b * p.Sk;
    if (d[i] != d[j]) return false;
  }
  return !p.attn_mask || p.attn_mask[b * p.am_stride[0] + h * p.am_stride[1] + i * p.am_stride[2] + j];
}

// Tile skipping for documents and attn_mask (kFeat kernels), from attention_tile_info: per kG
// keys of batch b the smallest and largest document id, per kG x kG block of attn_mask (of its
// batch, head) whether it has a True entry. Tiles are multiples of kG rows and keys.
constexpr int kG = 64;
__host__ __device__ inline int granules(int n) { return (n + kG - 1) / kG; }
__host__ __device__ inline size_t doc_info_count(const AttentionParams& p) {
  return p.document_ids ? (size_t)p.B * granules(p.Sk) * 2 : 0;  // int64 (min, max) pairs
}

// Whether rows [i0, i1) x keys [j0, j1) of (b, h) see no key through documents or attn_mask
// (ranges clipped to S_q, S_k; the same answer in every thread of a block).
__device__ bool tile_empty(const AttentionParams& p, int b, int h, int i0, int i1, int j0, int j1) {
  i1 = min(i1, p.Sq), j1 = min(j1, p.Sk);
  if (i0 >= i1 || j0 >= j1) return true;
  if (p.document_ids) {
    const int64_t* r = static_cast<const int64_t*>(p.tile_info) + (size_t)b * granules(p.Sk) * 2;
    int64_t qmin = INT64_MAX, qmax = INT64_MIN, kmin = INT64_MAX, kmax = INT64_MIN;
    for (int gi = i0 / kG; gi <= (i1 - 1) / kG; ++gi) qmin = min(qmin, r[2 * gi]), qmax = max(qmax, r[2 * gi + 1]);
    for (int gj = j0 / kG; gj <= (j1 - 1) / kG; ++gj) kmin = min(kmin, r[2 * gj]), kmax = max(kmax, r[2 * gj + 1]);
    if (qmax < kmin || kmax < qmin) return true;  // no id in common
  }
  if (p.attn_mask) {
    const int nq = granules(p.Sq), nk = granules(p.Sk);
    const unsigned char* any = reinterpret_cast<const unsigned char*>(static_cast<const int64_t*>(p.tile_info) + doc_info_count(p)) +
                               ((size_t)(p.am_B == 1 ? 0 : b) * p.am_H + (p.am_H == 1 ? 0 : h)) * nq * nk;
    bool some = false;
    for (int gi = i0 / kG; gi <= (i1 - 1) / kG; ++gi)
      for (int gj = j0 / kG; gj <= (j1 - 1) / kG; ++gj) some = some || any[gi * nk + gj];
    if (!some) return true;
  }
  return false;
}

// Fills the tile info: one warp per (batch, kG keys) of document ids, then per (mask batch, mask
// head, kG x kG block) of attn_mask.
constexpr int kInfoWarps = 8;
__global__ void __launch_bounds__(32 * kInfoWarps) attention_tile_info(const AttentionParams p) {
  const int64_t item = (int64_t)blockIdx.x * kInfoWarps + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int nk = granules(p.Sk), nq = granules(p.Sq);
  const int64_t n_doc = p.document_ids ? (int64_t)p.B * nk : 0;
  const int64_t n_mask = p.attn_mask ? (int64_t)p.am_B * p.am_H * nq * nk : 0;
  if (item >= n_doc + n_mask) return;  // the whole warp leaves
  if (item < n_doc) {
    const int b = item / nk, j0 = (item % nk) * kG;
    const int64_t* d = p.document_ids + (int64_t)b * p.Sk;
    long long lo = INT64_MAX, hi = INT64_MIN;
    for (int j = j0 + lane; j < min(j0 + kG, p.Sk); j += 32) lo = min(lo, (long long)d[j]), hi = max(hi, (long long)d[j]);
#pragma unroll
    for (int o = 16; o > 0; o /= 2) {
      lo = min(lo, __shfl_xor_sync(0xffffffffu, lo, o));
      hi = max(hi, __shfl_xor_sync(0xffffffffu, hi, o));
    }
    if (lane == 0) {
      int64_t* r = static_cast<int64_t*>(p.tile_info) + 2 * item;
      r[0] = lo, r[1] = hi;
    }
    return;
  }
  const int64_t m = item - n_doc;  // ((mask batch * am_H + mask head) * nq + gi) * nk + gj
  const int gj = m % nk, gi = (m / nk) % nq, hm = (m / ((int64_t)nk * nq)) % p.am_H, bm = m / ((int64_t)nk * nq * p.am_H);
  const bool* mask = p.attn_mask + bm * p.am_stride[0] + hm * p.am_stride[1];
  int some = 0;
  for (int i = gi * kG + lane; i < min(gi * kG + kG, p.Sq); i += 32)
    for (int j = gj * kG; j < min(gj * kG + kG, p.Sk); ++j) some |= mask[i * p.am_stride[2] + j] ? 1 : 0;
#pragma unroll
  for (int o = 16; o > 0; o /= 2) some |= __shfl_xor_sync(0xffffffffu, some, o);
  if (lane == 0) reinterpret_cast<unsigned char*>(static_cast<int64_t*>(p.tile_info) + doc_info_count(p))[m] = some;
}

cudaError_t launch_tile_info(const AttentionParams& p, cudaStream_t stream) {
  if (!p.document_ids && !p.attn_mask) return cudaSuccess;
  const int64_t items = (p.document_ids ? (int64_t)p.B * granules(p.Sk) : 0) +
                        (p.attn_mask ? (int64_t)p.am_B * p.am_H * granules(p.Sq) * granules(p.Sk) : 0);
  const dim3 grid((unsigned)((items + kInfoWarps - 1) / kInfoWarps));
  return launch_kernel(attention_tile_info, grid, dim3(32 * kInfoWarps), 0, stream, p);
}

// The key tiles [first, end) a block of query rows [q0, q0 + BM) needs, and whether tile `k0`
// needs the element mask (padding, past S_k, crossing the causal diagonal of the block's first
// row; with kFeat also crossing the window's lower edge of its last row, documents, attn_mask).
template <bool kFeat>
struct KeyRange {
  int first = 0, end;
  int offset;  // S_k - S_q: query i sees keys j <= i + offset when causal
  int lo_last = 0, hi_first = 0;  // kFeat: the interval's lower end for the last row, upper for the first
  __device__ KeyRange(const AttentionParams& p, int q0, int BM, int BN) : offset(p.Sk - p.Sq) {
    const int q_last = min(q0 + BM, p.Sq) - 1;
    if constexpr (!kFeat) {
      const int k_end = p.causal ? max(0, min(p.Sk, q_last + offset + 1)) : p.Sk;
      end = (k_end + BN - 1) / BN;
    } else {
      const Frame f(p);
      const int k_lo = f.lo(q0), k_hi = f.hi(q_last);
      first = k_lo / BN;
      end = k_hi > k_lo ? (k_hi + BN - 1) / BN : first;
      lo_last = f.lo(q_last);
      hi_first = f.hi(q0);
    }
  }
  __device__ bool masked(const AttentionParams& p, int k0, int q0, int BN) const {
    if constexpr (!kFeat) {
      return p.key_padding_mask != nullptr || k0 + BN > p.Sk || (p.causal && k0 + BN - 1 > q0 + offset);
    } else {
      return p.key_padding_mask != nullptr || k0 + BN > p.Sk || k0 < lo_last || k0 + BN > hi_first ||
             p.document_ids != nullptr || p.attn_mask != nullptr;
    }
  }
};

// Whether query i of (b, h) attends key j < S_k, given the block's key-skip bytes (padding or
// past S_k, present only with a key_padding_mask) for the tile starting at k0.
template <bool kFeat>
__device__ __forceinline__ bool key_visible(const AttentionParams& p, const unsigned char* skip, int k0, int i,
                                            int j, int offset, int b, int h) {
  const bool in = skip ? !skip[j - k0] : j < p.Sk;
  if constexpr (!kFeat) {
    return in && (!p.causal || j <= i + offset);
  } else {
    const Frame f(p);
    return in && j >= f.lo(i) && j < f.hi(i) && elementwise_visible(p, b, h, i, j);
  }
}

// Dropout's factor for P[i, j] of row block bh = b H + h (kFeat kernels): 1 / (1 - p) where the
// Philox uniform of element ((b H + h) S_q + i) S_k + j is >= p, else 0: the reference's
// dropout_keep and the CPU kernel's keep_row, bit for bit.
__device__ __forceinline__ float dropout_factor(const AttentionParams& p, int64_t bh, int i, int j) {
  const uint64_t idx = ((uint64_t)bh * (uint64_t)p.Sq + (uint64_t)i) * (uint64_t)p.Sk + (uint64_t)j;
  const PhiloxKey key = p.seed_offset_dev == nullptr
                           ? PhiloxKey{p.seed, p.rng_offset}
                           : PhiloxKey{(uint64_t)p.seed_offset_dev[0], (uint64_t)p.seed_offset_dev[1]};
  const Philox4 r = philox_block(key, idx >> 2);
  const int w = static_cast<int>(idx & 3);
  const uint32_t bits = w == 0 ? r.v[0] : w == 1 ? r.v[1] : w == 2 ? r.v[2] : r.v[3];  // no local memory
  return uniform_open01(bits) >= p.dropout_p ? p.dropout_scale : 0.f;
}

// Scores in the log2 domain: x = s scale log2 e, or with kFeat and a softcap c,
// x = c log2 e tanh(s scale / c), and dtanh = 1 - tanh^2 (the backward's factor; 1 without cap).
struct ScoreMap {
  float scale_log2, scale_over_cap, cap_log2;
  bool capped;
  __device__ explicit ScoreMap(const AttentionParams& p)
      : scale_log2(static_cast<float>(p.scale) * kLog2e), scale_over_cap(0.f), cap_log2(0.f), capped(p.softcap > 0.f) {
    if (capped) scale_over_cap = static_cast<float>(p.scale) / p.softcap, cap_log2 = p.softcap * kLog2e;
  }
  template <bool kFeat>
  __device__ __forceinline__ float operator()(float s, float& dtanh) const {
    if constexpr (kFeat) {
      if (capped) {
        const float th = tanhf(s * scale_over_cap);
        dtanh = 1.f - th * th;
        return cap_log2 * th;
      }
    }
    dtanh = 1.f;
    return s * scale_log2;
  }
};

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
template <typename T, class C, bool kFeat>
__global__ void __launch_bounds__(C::kThreads) attention_forward_mma(const AttentionParams p) {
  constexpr int D = C::D, BM = C::BM, BN = C::BN, LD = C::LD, kM = C::kM;
  T* sQ = reinterpret_cast<T*>(dynamic_smem());
  KvStages<T, C> kv(sQ + BM * LD);
  const LaneIds id;
  const int tid = id.tid, lane = id.lane, g = id.g, t = id.t;
  const int q0 = (gridDim.x - 1 - blockIdx.x) * BM, h = blockIdx.y, b = blockIdx.z;
  const HeadPtrs<T> ptr(p, b, h);
  const KeyRange<kFeat> keys(p, q0, BM, BN);
  const ScoreMap smap(p);
  const bool dropout = kFeat && p.dropout_p > 0.f;
  const int64_t bh = (int64_t)b * p.H + h;

  mma::load_rows_async<BM, D, C::kThreads>(sQ, ptr.q, p.q_stride[2], q0, p.Sq, tid);
  mma::cp_async_commit();
  if (keys.first < keys.end) kv.load(keys.first, ptr.k, ptr.v, ptr.pad, p, tid);
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

  for (int tile = keys.first; tile < keys.end; ++tile) {
    mma::cp_async_wait<0>();
    if (GENCORE_PLANT_BUG != 2) __syncthreads();  // tile's K/V visible to all; every warp is done with the other stage
    if (tile + 1 < keys.end) kv.load(tile + 1, ptr.k, ptr.v, ptr.pad, p, tid);
    mma::cp_async_commit();
    if (GENCORE_PLANT_BUG == 2) __syncthreads();
    const int stage = tile & 1, k0 = tile * BN;
    if (kFeat && (p.document_ids || p.attn_mask) && tile_empty(p, b, h, q0, q0 + BM, k0, k0 + BN)) continue;

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
          float dtanh;
          float x = smap.template operator()<kFeat>(s[m][n][e], dtanh);
          if (masked) {
            const int i = q0 + wrow + 16 * m + g + 8 * (e >> 1), j = k0 + 8 * n + 2 * t + (e & 1);
            if (!key_visible<kFeat>(p, skip, k0, i, j, keys.offset, b, h)) x = -INFINITY;
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
    // Dropout: the softmax's sum counts every key, P V only the kept ones, times 1 / (1 - p).
    if (dropout) {
#pragma unroll
      for (int m = 0; m < kM; ++m)
#pragma unroll
        for (int n = 0; n < BN / 8; ++n)
#pragma unroll
          for (int e = 0; e < 4; ++e)
            s[m][n][e] *= dropout_factor(p, bh, q0 + wrow + 16 * m + g + 8 * (e >> 1), k0 + 8 * n + 2 * t + (e & 1));
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

  float* lse = static_cast<float*>(p.lse) + bh * p.Sq;
  float inv[kM][2];
#pragma unroll
  for (int m = 0; m < kM; ++m) {
#pragma unroll
    for (int hi = 0; hi < 2; ++hi) {
      float l = row_sum[m][hi];
      l += __shfl_xor_sync(0xffffffffu, l, 1);
      l += __shfl_xor_sync(0xffffffffu, l, 2);
      float mx = row_max[m][hi], rescale = 1.f;
      if (p.sinks != nullptr) {  // the head's sink logit joins the softmax's sum (not P V)
        const float s2 = p.sinks[h] * kLog2e, mn = fmaxf(mx, s2);
        if (mn != -INFINITY) {
          rescale = mx == -INFINITY ? 0.f : mma::fast_exp2(mx - mn);
          l = l * rescale + mma::fast_exp2(s2 - mn);
          mx = mn;
        }
      }
      inv[m][hi] = l > 0.f ? rescale / l : 0.f;
      const int i = q0 + wrow + 16 * m + g + 8 * hi;
      if (t == 0 && i < p.Sq) lse[i] = l > 0.f ? (mx + log2f(l)) * kLn2 : -INFINITY;
    }
  }
  T* out = static_cast<T*>(p.out) + bh * p.Sq * D;
  mma::store_rows<kM, D>(o, inv, sQ + wrow * LD, out, q0 + wrow, p.Sq, lane);
}

// ------------------------------------------------------------------------------------------------
// Backward, dQ. Shared memory: Q and dO (BM x LD each; Q's rows stage dQ at the end), KvStages.
template <typename T, class C, bool kFeat>
__global__ void __launch_bounds__(C::kThreads) attention_backward_dq_mma(const AttentionBackwardParams p) {
  constexpr int D = C::D, BM = C::BM, BN = C::BN, LD = C::LD, kM = C::kM;
  T* sQ = reinterpret_cast<T*>(dynamic_smem());
  T* sdO = sQ + BM * LD;
  KvStages<T, C> kv(sdO + BM * LD);
  const LaneIds id;
  const int tid = id.tid, lane = id.lane, g = id.g, t = id.t;
  const int q0 = (gridDim.x - 1 - blockIdx.x) * BM, h = blockIdx.y, b = blockIdx.z;
  const HeadPtrs<T> ptr(p, b, h);
  const KeyRange<kFeat> keys(p, q0, BM, BN);
  const ScoreMap smap(p);
  const bool dropout = kFeat && p.dropout_p > 0.f;
  const T* dout = static_cast<const T*>(p.dout) + b * p.dout_stride[0] + h * p.dout_stride[1];

  mma::load_rows_async<BM, D, C::kThreads>(sQ, ptr.q, p.q_stride[2], q0, p.Sq, tid);
  mma::load_rows_async<BM, D, C::kThreads>(sdO, dout, p.dout_stride[2], q0, p.Sq, tid);
  mma::cp_async_commit();
  if (keys.first < keys.end) kv.load(keys.first, ptr.k, ptr.v, ptr.pad, p, tid);
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
  for (int tile = keys.first; tile < keys.end; ++tile) {
    mma::cp_async_wait<0>();
    __syncthreads();
    if (tile + 1 < keys.end) kv.load(tile + 1, ptr.k, ptr.v, ptr.pad, p, tid);
    mma::cp_async_commit();
    const int stage = tile & 1, k0 = tile * BN;
    if (kFeat && (p.document_ids || p.attn_mask) && tile_empty(p, b, h, q0, q0 + BM, k0, k0 + BN)) continue;
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
            const bool ok = !masked || key_visible<kFeat>(p, skip, k0, i, j, keys.offset, b, h);
            float dtanh;
            const float x = smap.template operator()<kFeat>(s[m][n][e], dtanh);
            const float pr = ok ? mma::fast_exp2(x - lse2[m][e >> 1]) : 0.f;
            if constexpr (kFeat) {  // dS = P (dP keep / (1 - p) - delta) (1 - tanh^2)
              const float dpk = dropout ? dp[m][n][e] * dropout_factor(p, bh, i, j) : dp[m][n][e];
              s[m][n][e] = pr * (dpk - delta[m][e >> 1]) * dtanh;
            } else {
              s[m][n][e] = pr * (dp[m][n][e] - delta[m][e >> 1]);
            }
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

template <typename T, class C, bool kFeat>
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
  const ScoreMap smap(p);
  const bool dropout = kFeat && p.dropout_p > 0.f;

  // Query tiles that can see a key of this block (causal: query i sees key k0 once i >= k0 - offset;
  // with kFeat also the window: i >= k0 - offset - right, and i + offset - left < k0 + BM), for
  // each query head of the group: steps = group x n_q.
  int q_first = p.causal ? max(0, k0 - offset) : 0, q_end = p.Sq;
  if constexpr (kFeat) {
    if (p.window_right >= 0) q_first = max(q_first, k0 - offset - p.window_right);
    if (p.window_left >= 0)
      q_end = (int)min((int64_t)p.Sq, (int64_t)k0 + BM - offset + p.window_left);
  }
  const int qt0 = q_first / BN, n_q = q_first < q_end ? (q_end - qt0 * BN + BN - 1) / BN : 0;
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
    const int h = hk * group + step / n_q;
    const int64_t bh = (int64_t)b * p.H + h;
    if (kFeat && (p.document_ids || p.attn_mask) && tile_empty(p, b, h, q0, q0 + BN, k0, k0 + BM)) continue;
    bool diagonal = p.causal && k0 + BM - 1 > q0 + offset;
    if constexpr (kFeat) {  // the element mask where the block crosses an interval's end, documents, attn_mask
      const Frame f(p);
      diagonal = f.lo(q0 + BN - 1) > k0 || f.hi(q0) < k0 + BM || p.document_ids != nullptr || p.attn_mask != nullptr;
    }
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
            float dtanh;
            const float x = smap.template operator()<kFeat>(st[m][n][e], dtanh);
            if constexpr (!kFeat) {
              const bool ok = key_in[m][e >> 1] && (!diagonal || j <= q0 + c + offset);
              const float pr = ok ? mma::fast_exp2(x - lse2[c]) : 0.f;
              st[m][n][e] = pr;
              dpt[m][n][e] = pr * (dpt[m][n][e] - delta[c]);
            } else {  // dV takes P keep / (1 - p); dS = P (dP keep / (1 - p) - delta) (1 - tanh^2)
              const int i = q0 + c;
              const Frame f(p);
              const bool ok = key_in[m][e >> 1] &&
                              (!diagonal || (j >= f.lo(i) && j < f.hi(i) && elementwise_visible(p, b, h, i, j)));
              const float pr = ok ? mma::fast_exp2(x - lse2[c]) : 0.f;
              const float keep = dropout ? dropout_factor(p, bh, i, j) : 1.f;
              st[m][n][e] = pr * keep;
              dpt[m][n][e] = pr * (dpt[m][n][e] * keep - delta[c]) * dtanh;
            }
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
// Backward, delta[row] = sum_d dO * O - grad_lse[row] in float32: one warp per (batch, head, query)
// row. The lse's gradient enters dS = P (dP - delta) through delta, since d lse / d s = P.
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
  if (lane == 0) static_cast<float*>(p.delta)[row] = p.grad_lse != nullptr ? acc - p.grad_lse[row] : acc;
}

template <typename T, class C>
cudaError_t forward_tiles(const AttentionParams& p, cudaStream_t stream) {
  const size_t smem = sizeof(T) * C::BM * C::LD + KvStages<T, C>::bytes();
  const dim3 grid((p.Sq + C::BM - 1) / C::BM, p.H, p.B);
  if (p.has_features()) return mma::launch(attention_forward_mma<T, C, true>, grid, dim3(C::kThreads), smem, stream, p);
  return mma::launch(attention_forward_mma<T, C, false>, grid, dim3(C::kThreads), smem, stream, p);
}

template <typename T, class C>
cudaError_t backward_tiles(const AttentionBackwardParams& p, cudaStream_t stream) {
  const size_t dq_smem = sizeof(T) * 2 * C::BM * C::LD + KvStages<T, C>::bytes();
  const dim3 dq_grid((p.Sq + C::BM - 1) / C::BM, p.H, p.B);
  const size_t kv_smem = sizeof(T) * 2 * C::BM * C::LD + QStages<T, C>::bytes();
  const dim3 kv_grid((p.Sk + C::BM - 1) / C::BM, p.Hkv, p.B);
  if (p.has_features()) {
    cudaError_t err = mma::launch(attention_backward_dq_mma<T, C, true>, dq_grid, dim3(C::kThreads), dq_smem, stream, p);
    if (err != cudaSuccess) return err;
    return mma::launch(attention_backward_dkdv_mma<T, C, true>, kv_grid, dim3(C::kThreads), kv_smem, stream, p);
  }
  cudaError_t err = mma::launch(attention_backward_dq_mma<T, C, false>, dq_grid, dim3(C::kThreads), dq_smem, stream, p);
  if (err != cudaSuccess) return err;
  return mma::launch(attention_backward_dkdv_mma<T, C, false>, kv_grid, dim3(C::kThreads), kv_smem, stream, p);
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

size_t attention_tile_info_bytes(const AttentionParams& p) {
  return sizeof(int64_t) * doc_info_count(p) + (p.attn_mask ? (size_t)p.am_B * p.am_H * granules(p.Sq) * granules(p.Sk) : 0);
}

cudaError_t launch_attention_forward_mma(const AttentionParams& p, FloatType dtype, cudaStream_t stream) {
  if ((int64_t)p.B * p.H * p.Sq == 0) return cudaSuccess;
  if (const cudaError_t err = launch_tile_info(p, stream); err != cudaSuccess) return err;
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
  if (const cudaError_t err = launch_tile_info(p, stream); err != cudaSuccess) return err;
  if (dtype == FloatType::kBFloat16) return backward_typed<__nv_bfloat16>(p, stream);
  if (dtype == FloatType::kFloat16) return backward_typed<__half>(p, stream);
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace gencore
