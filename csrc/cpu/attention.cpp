// Flash-style attention, CPU. Layout (B, H, S, D), any strides; GQA (k/v with H_kv heads);
// bottom-right aligned causal mask; bool key padding mask (True = ignore).
//
// Forward: one task per (batch, head, chunk of query blocks) under at::parallel_for. Per task the
// keys are packed once as K^T (contiguous D x 64 panels) and, per query block of BQ rows, the
// online softmax walks key blocks of BKF columns: S = (scale Q) K^T, running row max m and sum l,
// O = O * alpha + P V. Memory: one BQ x BKF score tile and O(S D) packed operands per thread,
// never S x S. Saves the row logsumexp (-inf for rows that see no key).
// With 1-4 query rows (decoding with a KV cache) the forward takes forward_rows instead: no
// packing, no score tiles, threads only when the work pays for them.
//
// Backward (FlashAttention-2): one task per (batch, kv head, key chunk); for each query head of
// its group, key blocks outer, query blocks inner; P is recomputed from the saved logsumexp,
// dV += P^T dO, dP = dO V^T, dS = P (dP - rowsum(dO O)), dQ += dS K, dK += dS^T (scale Q).
// dK/dV accumulate in per-task buffers over the group's heads (no races, no atomics); keys are
// split into chunks only when batch x kv heads cannot keep the threads busy, and then the chunks'
// dQ partial sums are added in a second pass.
//
// All products go through one register-blocked micro-kernel, C (+)= A B with A read through
// arbitrary (row, col) strides (so A^T costs nothing) and B row-major with N a multiple of the
// vector width; broadcast-FMA form on at::vec::Vectorized (16 floats on AVX-512).
// Math in float32 (float64 for float64 inputs).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <tuple>
#include <array>
#include <utility>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "../checks.h"
#include "kernels.h"
#include "philox_simd.h"

GENCORE_NAMESPACE_BEGIN
namespace {

using at::vec::Vectorized;

constexpr bool kWideVec = sizeof(Vectorized<float>) >= 64;  // AVX-512: 32 vector registers
constexpr int kMR = kWideVec ? 6 : 3;                        // rows of the register tile
constexpr int kNV = kWideVec ? 4 : 3;                        // vectors per row of the register tile
constexpr int64_t BQ = 64;                                   // query rows per block
constexpr int64_t BK = 64;                                   // key columns per block (backward)
constexpr int64_t BQB = 128;  // backward query block
constexpr int64_t BKF = 256;  // forward key block: fewer online-softmax steps per row

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// C[MR x NV*W] (+)= sum_k A(m, k) B[k, :], A(m, k) = A[m * sam + k * sak].
template <typename T, int MR, int NV>
void micro_kernel(int64_t K, const T* A, int64_t sam, int64_t sak, const T* B, int64_t ldb, T* C,
                  int64_t ldc, bool accumulate) {
  using Vec = Vectorized<T>;
  constexpr int W = Vec::size();
  Vec c[MR][NV];
  if (accumulate) {
    for (int m = 0; m < MR; ++m)
      for (int v = 0; v < NV; ++v) c[m][v] = Vec::loadu(C + m * ldc + v * W);
  } else {
    for (int m = 0; m < MR; ++m)
      for (int v = 0; v < NV; ++v) c[m][v] = Vec(T(0));
  }
  for (int64_t k = 0; k < K; ++k) {
    Vec b[NV];
    for (int v = 0; v < NV; ++v) b[v] = Vec::loadu(B + k * ldb + v * W);
    const T* a = A + k * sak;
    for (int m = 0; m < MR; ++m) {
      const Vec am(a[m * sam]);
      for (int v = 0; v < NV; ++v) c[m][v] = at::vec::fmadd(am, b[v], c[m][v]);
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int v = 0; v < NV; ++v) c[m][v].store(C + m * ldc + v * W);
}

template <typename T>
using MicroFn = void (*)(int64_t, const T*, int64_t, int64_t, const T*, int64_t, T*, int64_t, bool);

template <typename T, int MR, int... NVs>
constexpr std::array<MicroFn<T>, sizeof...(NVs)> row_table(std::integer_sequence<int, NVs...>) {
  return {&micro_kernel<T, MR, NVs + 1>...};
}

template <typename T, int... MRs>
constexpr std::array<std::array<MicroFn<T>, kNV>, sizeof...(MRs)> micro_table(
    std::integer_sequence<int, MRs...>) {
  return {row_table<T, MRs + 1>(std::make_integer_sequence<int, kNV>{})...};
}

// C[M x N] (+)= A[M x K] B[K x N]; N must be a multiple of the vector width.
template <typename T>
void gemm(int64_t M, int64_t N, int64_t K, const T* A, int64_t sam, int64_t sak, const T* B,
          int64_t ldb, T* C, int64_t ldc, bool accumulate) {
  static constexpr auto table = micro_table<T>(std::make_integer_sequence<int, kMR>{});
  constexpr int64_t W = Vectorized<T>::size();
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    if (!accumulate)
      for (int64_t m = 0; m < M; ++m) std::fill(C + m * ldc, C + m * ldc + N, T(0));
    return;
  }
  for (int64_t n0 = 0; n0 < N; n0 += kNV * W) {
    const int64_t nv = std::min<int64_t>(kNV, (N - n0) / W);
    for (int64_t m0 = 0; m0 < M; m0 += kMR) {
      const int64_t mr = std::min<int64_t>(kMR, M - m0);
      table[mr - 1][nv - 1](K, A + m0 * sam, sam, sak, B + n0, ldb, C + m0 * ldc + n0, ldc,
                            accumulate);
    }
  }
}

// exp for the softmax: float math uses ATen's exp_u20 (about 20 ulp, maps -inf to 0; what SDPA's
// CPU kernel uses). It keeps the float32 results within 2x of the reference's error (tests);
// the sums over keys/queries are per-tile partial sums for that reason (see add_tile).
template <typename scalar_t, typename T>
inline Vectorized<T> vexp(const Vectorized<T>& x) {
  if constexpr (std::is_same_v<T, float>) {
    return x.exp_u20();
  } else {
    return x.exp();
  }
}

// dst[0..n) = mul * src[0, stride, ..., (n-1) stride] as T, zeros up to n_pad.
template <typename S, typename T>
inline void load_row(const S* src, int64_t stride, int64_t n, int64_t n_pad, T mul, T* dst) {
  if (stride == 1) {
    at::vec::convert(src, dst, n);
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<T>(src[i * stride]);
  }
  if (mul != T(1))
    for (int64_t i = 0; i < n; ++i) dst[i] *= mul;
  for (int64_t i = n; i < n_pad; ++i) dst[i] = T(0);
}

template <typename T, typename S>
inline void store_row(const T* src, int64_t n, T mul, S* dst, int64_t stride) {
  if (stride == 1 && mul == T(1)) {
    at::vec::convert(src, dst, n);
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i * stride] = static_cast<S>(src[i] * mul);
  }
}

// dst[r, :] = dst[r, :] * (alpha ? alpha[r] : 1) + src[r, :], rows x n (n a multiple of the vector
// width), both with leading dimension n. Products of one tile go to a scratch tile first and are
// added here, so long sums are sums of per-tile partial sums (a float32 accuracy matter: a single
// running FMA chain over S = 1000 terms misses the 2x-reference error rule).
template <typename T>
inline void add_tile(T* dst, const T* src, int64_t rows, int64_t n, const T* alpha) {
  using Vec = Vectorized<T>;
  for (int64_t r = 0; r < rows; ++r) {
    T* d = dst + r * n;
    const T* x = src + r * n;
    if (alpha != nullptr && alpha[r] != T(1)) {
      const Vec a(alpha[r]);
      for (int64_t j = 0; j < n; j += Vec::size())
        at::vec::fmadd(Vec::loadu(d + j), a, Vec::loadu(x + j)).store(d + j);
    } else {
      for (int64_t j = 0; j < n; j += Vec::size()) (Vec::loadu(d + j) + Vec::loadu(x + j)).store(d + j);
    }
  }
}


struct Strides4 {
  int64_t b, h, s, d;
  explicit Strides4(const at::Tensor& t) : b(t.stride(0)), h(t.stride(1)), s(t.stride(2)), d(t.stride(3)) {}
};

// Additive key bias per batch row: 0, or -inf for padded keys and for the padding columns >= S_k.
template <typename T>
std::vector<T> key_bias(const c10::optional<at::Tensor>& mask, int64_t B, int64_t Sk, int64_t Skp) {
  std::vector<T> bias(B * Skp, T(0));
  const T ninf = -std::numeric_limits<T>::infinity();
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t j = Sk; j < Skp; ++j) bias[b * Skp + j] = ninf;
    if (mask.has_value()) {
      const bool* m = mask->const_data_ptr<bool>() + b * Sk;
      for (int64_t j = 0; j < Sk; ++j)
        if (m[j]) bias[b * Skp + j] = ninf;
    }
  }
  return bias;
}

// K^T of one (b, kv head) in panels of KP keys: panel p holds keys [p KP, (p+1) KP) as a contiguous
// D x KP block (columns past `rows` zero). Contiguous panels keep the micro-kernel's B reads in
// consecutive cache lines; a plain D x S_k layout strides them S_k floats apart, which aliases
// into one L1 set and thrashes for long sequences.
constexpr int64_t KP = 64;

template <typename S, typename T>
void pack_panels(const S* k, const Strides4& st, int64_t rows, int64_t D, T* kt) {
  const int64_t npanels = (rows + KP - 1) / KP;
  for (int64_t pnl = 0; pnl < npanels; ++pnl) {
    T* dst = kt + pnl * D * KP;
    const int64_t j0 = pnl * KP, jn = std::min(KP, rows - j0);
    for (int64_t d = 0; d < D; ++d) {
      const S* src = k + j0 * st.s + d * st.d;
      T* row = dst + d * KP;
      for (int64_t j = 0; j < jn; ++j) row[j] = static_cast<T>(src[j * st.s]);
      std::fill(row + jn, row + KP, T(0));
    }
  }
}

inline int64_t panels_size(int64_t rows, int64_t D) { return (rows + KP - 1) / KP * KP * D; }

// S[0..qn) x [0..knp) = A K^T for keys k0 .. k0 + knp (k0 a multiple of KP), ld of S = lds.
template <typename T>
void scores(int64_t qn, int64_t knp, int64_t D, const T* A, int64_t lda, const T* kt, int64_t k0,
            T* S, int64_t lds) {
  for (int64_t n = 0; n < knp; n += KP)
    gemm<T>(qn, std::min(KP, knp - n), D, A, lda, 1, kt + (k0 + n) / KP * D * KP, KP, S + n, lds, false);
}

// Row-major rows x Dp copy of one (b, kv head) of k or v, or the tensor itself when it already is
// one (float type, unit last stride, D a multiple of the vector width). Returns (pointer, ld).
template <typename S, typename T>
std::pair<const T*, int64_t> rows_operand(const S* x, const Strides4& st, int64_t rows, int64_t D,
                                          int64_t Dp, std::vector<T>& buf) {
  if constexpr (std::is_same_v<S, T>) {
    if (st.d == 1 && D == Dp) return {x, st.s};
  }
  buf.resize(rows * Dp);
  for (int64_t j = 0; j < rows; ++j) load_row(x + j * st.s, st.d, D, Dp, T(1), buf.data() + j * Dp);
  return {buf.data(), Dp};
}

// Which keys each query sees beyond the key padding bias: causal, window, documents, attn_mask
// (the reference's visible_keys), plus softcap and dropout. Per (batch, query row) an interval
// [lo, hi) of keys from causal, window and documents whose ids form contiguous runs; what no
// interval expresses (attn_mask, documents whose ids recur after another document) is applied
// element by element. Tiles outside every row's interval, and tiles in which attn_mask has no
// True entry (a map at 64 x 64 granularity), are skipped, forward and backward.
struct Visibility {
  int64_t B = 0, H = 0, Sq = 0, Sk = 0;
  std::vector<int64_t> lo, hi;  // (B, Sq): row i of batch b may see keys [lo, hi) only
  bool elementwise_docs = false;
  std::vector<uint8_t> doc_runs;  // per batch: 1 when its document ids form contiguous runs
  const int64_t* doc = nullptr;   // (B, S) contiguous
  const bool* am = nullptr;       // attn_mask, read through strides (0 on broadcast dims)
  int64_t am_sb = 0, am_sh = 0, am_si = 0, am_sj = 0, am_B = 1, am_H = 1;
  static constexpr int64_t MB = 64;  // attn_mask map block
  int64_t am_nqb = 0, am_nkb = 0;
  std::vector<uint8_t> am_any;  // (am_B, am_H, am_nqb, am_nkb): any True in that block

  bool elementwise(int64_t b) const { return am != nullptr || (doc != nullptr && !doc_runs[b]); }

  // Union [klo, khi) of the intervals of rows [i0, i1) of batch b (klo >= khi: no key).
  std::pair<int64_t, int64_t> rows_range(int64_t b, int64_t i0, int64_t i1) const {
    int64_t klo = Sk, khi = 0;
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t l = lo[b * Sq + i], h = hi[b * Sq + i];
      if (l < h) {
        klo = std::min(klo, l);
        khi = std::max(khi, h);
      }
    }
    return {klo, khi};
  }

  // Whether attn_mask has any True entry for query rows [i0, i1) x keys [j0, j1) of (b, h).
  bool mask_tile_any(int64_t b, int64_t h, int64_t i0, int64_t i1, int64_t j0, int64_t j1) const {
    if (am == nullptr) return true;
    const int64_t bm = am_B == 1 ? 0 : b, hm = am_H == 1 ? 0 : h;
    const uint8_t* m = am_any.data() + (bm * am_H + hm) * am_nqb * am_nkb;
    for (int64_t qb = i0 / MB; qb <= (i1 - 1) / MB; ++qb)
      for (int64_t kb = j0 / MB; kb <= (j1 - 1) / MB; ++kb)
        if (m[qb * am_nkb + kb]) return true;
    return false;
  }

  // Marks the keys [j0, j0 + n) that row i of (b, h) does not see (element-wise conditions
  // only): s[j] = fill for them.
  template <typename T>
  void apply_elementwise(int64_t b, int64_t h, int64_t i, int64_t j0, int64_t n, T* s, T fill) const {
    if (doc != nullptr && !doc_runs[b]) {
      const int64_t* d = doc + b * Sk;
      const int64_t di = d[i];
      for (int64_t j = 0; j < n; ++j)
        if (d[j0 + j] != di) s[j] = fill;
    }
    if (am != nullptr) {
      const bool* m = am + (am_B == 1 ? 0 : b * am_sb) + (am_H == 1 ? 0 : h * am_sh) + i * am_si +
                      j0 * am_sj;
      for (int64_t j = 0; j < n; ++j)
        if (!m[j * am_sj]) s[j] = fill;
    }
  }
};

Visibility make_visibility(const AttentionGeometry& g, bool causal, int64_t left, int64_t right,
                           const c10::optional<at::Tensor>& document_ids,
                           const c10::optional<at::Tensor>& attn_mask) {
  Visibility vis;
  vis.B = g.B, vis.H = g.H, vis.Sq = g.Sq, vis.Sk = g.Sk;
  vis.lo.resize(g.B * g.Sq);
  vis.hi.resize(g.B * g.Sq);
  if (document_ids.has_value()) {
    vis.doc = document_ids->const_data_ptr<int64_t>();
    vis.doc_runs.assign(g.B, 1);
  }
  const int64_t off = g.offset();
  std::vector<int64_t> run_start, run_end;
  for (int64_t b = 0; b < g.B; ++b) {
    if (vis.doc != nullptr) {  // contiguous runs of one id, and whether each id has only one
      const int64_t* d = vis.doc + b * g.Sk;
      run_start.assign(g.Sk, 0);
      run_end.assign(g.Sk, g.Sk);
      std::vector<int64_t> starts;
      for (int64_t j = 0; j < g.Sk; ++j) {
        if (j > 0 && d[j] == d[j - 1]) {
          run_start[j] = run_start[j - 1];
        } else {
          run_start[j] = j;
          starts.push_back(d[j]);
        }
      }
      for (int64_t j = g.Sk - 1; j >= 0; --j)
        run_end[j] = (j + 1 < g.Sk && d[j + 1] == d[j]) ? run_end[j + 1] : j + 1;
      std::sort(starts.begin(), starts.end());
      if (std::adjacent_find(starts.begin(), starts.end()) != starts.end()) vis.doc_runs[b] = 0;
    }
    for (int64_t i = 0; i < g.Sq; ++i) {
      const int64_t pos = i + off;  // query i in the causal frame
      int64_t l = 0, h = g.Sk;
      if (causal) h = std::min(h, pos + 1);
      if (right >= 0) h = std::min(h, pos + right + 1);
      if (left >= 0) l = std::max(l, pos - left);
      if (vis.doc != nullptr && vis.doc_runs[b]) {
        l = std::max(l, run_start[i]);
        h = std::min(h, run_end[i]);
      }
      l = std::clamp<int64_t>(l, 0, g.Sk);
      h = std::clamp<int64_t>(h, l, g.Sk);
      vis.lo[b * g.Sq + i] = l;
      vis.hi[b * g.Sq + i] = h;
    }
  }
  if (attn_mask.has_value()) {
    const at::Tensor& m = *attn_mask;
    vis.am = m.const_data_ptr<bool>();
    vis.am_B = m.size(0), vis.am_H = m.size(1);
    vis.am_sb = m.stride(0), vis.am_sh = m.stride(1), vis.am_si = m.stride(2), vis.am_sj = m.stride(3);
    vis.am_nqb = (g.Sq + Visibility::MB - 1) / Visibility::MB;
    vis.am_nkb = (g.Sk + Visibility::MB - 1) / Visibility::MB;
    vis.am_any.assign(vis.am_B * vis.am_H * vis.am_nqb * vis.am_nkb, 0);
    // One task per (mask batch, mask head, block of MB rows): each owns its map entries.
    at::parallel_for(0, vis.am_B * vis.am_H * vis.am_nqb, 1, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const int64_t bh = t / vis.am_nqb, qb = t % vis.am_nqb, bm = bh / vis.am_H, hm = bh % vis.am_H;
        uint8_t* any = vis.am_any.data() + t * vis.am_nkb;
        for (int64_t i = qb * Visibility::MB; i < std::min(g.Sq, (qb + 1) * Visibility::MB); ++i) {
          const bool* row = vis.am + bm * vis.am_sb + hm * vis.am_sh + i * vis.am_si;
          for (int64_t j = 0; j < g.Sk; ++j)
            if (row[j * vis.am_sj]) any[j / Visibility::MB] = 1;
        }
      }
    });
  }
  return vis;
}

// softcap, dropout: what the score and probability tiles need besides visibility.
struct ScoreMods {
  double softcap = 0.0;    // 0: none
  double dropout_p = 0.0;  // 0: none
  PhiloxKey key{};
};

// s[0..n) = c tanh(s / c); with dt, dt[j] = 1 - tanh^2 (the derivative), for the backward.
template <typename T>
inline void cap_row(T* s, int64_t n, T c, T* dt) {
  using Vec = Vectorized<T>;
  const Vec vc(c), vinv(T(1) / c), one(T(1));
  for (int64_t j = 0; j < n; j += Vec::size()) {
    const Vec t = (Vec::loadu(s + j) * vinv).tanh();
    (t * vc).store(s + j);
    if (dt != nullptr) (one - t * t).store(dt + j);
  }
}

// keep[j] = r or 0 for the n keys from element index `first` (r = 1 / (1 - p); zeros to n_pad):
// the reference's dropout_keep, uniform >= p in float32.
template <typename T>
inline void keep_row(const ScoreMods& mods, int64_t first, int64_t n, int64_t n_pad, float* u, T* keep) {
  philox_map(mods.key, first, 1, n, u, UniformMap{});
  const float p = static_cast<float>(mods.dropout_p);
  const T r = static_cast<T>(1.0 / (1.0 - mods.dropout_p));
  for (int64_t j = 0; j < n; ++j) keep[j] = u[j] >= p ? r : T(0);
  for (int64_t j = n; j < n_pad; ++j) keep[j] = T(0);
}

// What both forward paths read: strides, data pointers, and the additive key bias (rows of Skp).
template <typename scalar_t, typename T>
struct ForwardOperands {
  Strides4 sq, sk, sv, so;
  const scalar_t *q, *k, *v;
  scalar_t* out;
  T* lse;
  std::vector<T> bias;
};

template <typename scalar_t, typename T>
ForwardOperands<scalar_t, T> forward_operands(const at::Tensor& q, const at::Tensor& k,
                                              const at::Tensor& v,
                                              const c10::optional<at::Tensor>& mask,
                                              const AttentionGeometry& g, int64_t Skp,
                                              at::Tensor& out, at::Tensor& lse) {
  return {Strides4(q), Strides4(k), Strides4(v), Strides4(out),
          q.const_data_ptr<scalar_t>(), k.const_data_ptr<scalar_t>(), v.const_data_ptr<scalar_t>(),
          out.mutable_data_ptr<scalar_t>(), lse.mutable_data_ptr<T>(),
          key_bias<T>(mask, g.B, g.Sk, Skp)};
}

template <typename scalar_t, typename T>
void forward_impl(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                  const c10::optional<at::Tensor>& mask, const Visibility& vis,
                  const ScoreMods& mods, double scale, const AttentionGeometry& g, at::Tensor& out,
                  at::Tensor& lse, const T* sinks) {
  using Vec = Vectorized<T>;
  constexpr int64_t W = Vec::size();
  const int64_t D = g.D, Dp = round_up(D, W), Skp = round_up(g.Sk, W);
  const auto [sq, sk, sv, so, qp, kp, vp, op, lp, bias] =
      forward_operands<scalar_t, T>(q, k, v, mask, g, Skp, out, lse);
  const T ninf = -std::numeric_limits<T>::infinity();
  const T softcap = static_cast<T>(mods.softcap);
  const bool dropout = mods.dropout_p > 0;

  // Query chunks: enough tasks to keep every thread busy, few enough to pack K once per chunk.
  const int64_t nqb = (g.Sq + BQ - 1) / BQ;
  const int64_t heads = g.B * g.H;
  const int64_t want_chunks = std::max<int64_t>(1, (4 * at::get_num_threads() + heads - 1) / heads);
  const int64_t nchunks = std::min(nqb, want_chunks);
  const int64_t blocks_per_chunk = (nqb + nchunks - 1) / nchunks;

  at::parallel_for(0, heads * nchunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> kt, vbuf, qbuf(BQ * Dp), obuf(BQ * Dp), tbuf(BQ * Dp), sbuf(BQ * BKF), m(BQ),
        l(BQ), alpha(BQ), keep(dropout ? BKF : 0);
    std::vector<float> ubuf(dropout ? BKF : 0);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bh = task / nchunks;
      // Zig-zag the chunks so that a contiguous range of tasks mixes short and long causal rows.
      const int64_t t = task % nchunks;
      const int64_t c = (t % 2 == 0) ? t / 2 : nchunks - 1 - t / 2;
      const int64_t b = bh / g.H, h = bh % g.H, hk = h / g.group();
      const int64_t qb_begin = c * blocks_per_chunk, qb_end = std::min(nqb, qb_begin + blocks_per_chunk);
      if (qb_begin >= qb_end) continue;
      // The keys this chunk's rows may see: [kbase, kend_chunk), kbase on a panel boundary.
      auto [klo_chunk, kend_chunk] = vis.rows_range(b, qb_begin * BQ, std::min(g.Sq, qb_end * BQ));
      const int64_t kbase = klo_chunk < kend_chunk ? klo_chunk / KP * KP : 0;
      kend_chunk = std::max(kend_chunk, kbase);
      const scalar_t* kh = kp + b * sk.b + hk * sk.h + kbase * sk.s;
      const scalar_t* vh = vp + b * sv.b + hk * sv.h + kbase * sv.s;
      kt.resize(panels_size(kend_chunk - kbase, D));
      pack_panels(kh, sk, kend_chunk - kbase, D, kt.data());
      auto [vop, ldv] = rows_operand<scalar_t, T>(vh, sv, kend_chunk - kbase, D, Dp, vbuf);
      const T* bias_b = bias.data() + b * Skp;
      const bool elementwise = vis.elementwise(b);
      const int64_t* lo_b = vis.lo.data() + b * g.Sq;
      const int64_t* hi_b = vis.hi.data() + b * g.Sq;

      for (int64_t qb = qb_begin; qb < qb_end; ++qb) {
        const int64_t q0 = qb * BQ, qn = std::min(BQ, g.Sq - q0);
        const scalar_t* qh = qp + b * sq.b + h * sq.h + q0 * sq.s;
        for (int64_t i = 0; i < qn; ++i)
          load_row(qh + i * sq.s, sq.d, D, Dp, static_cast<T>(scale), qbuf.data() + i * Dp);
        // An attention sink starts every row's running softmax: max = sink, sum = exp(0) = 1, and
        // no value (it never enters P V).
        const T sink = sinks != nullptr ? sinks[h] : ninf;
        std::fill(m.begin(), m.end(), sink);
        std::fill(l.begin(), l.end(), sink == ninf ? T(0) : T(1));
        std::fill(obuf.begin(), obuf.end(), T(0));
        const auto [klo, khi] = vis.rows_range(b, q0, q0 + qn);
        for (int64_t k0 = klo < khi ? klo / KP * KP : khi; k0 < khi; k0 += BKF) {
          const int64_t kn = std::min(BKF, khi - k0), knp = round_up(kn, W);
          if (!vis.mask_tile_any(b, h, q0, q0 + qn, k0, k0 + kn)) continue;  // attn_mask empties it
          scores<T>(qn, knp, D, qbuf.data(), Dp, kt.data(), k0 - kbase, sbuf.data(), BKF);
          for (int64_t i = 0; i < qn; ++i) {
            T* s = sbuf.data() + i * BKF;
            if (softcap > T(0)) cap_row(s, knp, softcap, static_cast<T*>(nullptr));
            const int64_t a = std::clamp<int64_t>(lo_b[q0 + i] - k0, 0, kn);
            const int64_t e = std::clamp<int64_t>(hi_b[q0 + i] - k0, a, kn);
            Vec vmax(ninf);
            for (int64_t j = 0; j < knp; j += W) {
              Vec x = Vec::loadu(s + j) + Vec::loadu(bias_b + k0 + j);
              x.store(s + j);
            }
            std::fill(s, s + a, ninf);
            std::fill(s + e, s + knp, ninf);
            if (elementwise) vis.apply_elementwise(b, h, q0 + i, k0 + a, e - a, s + a, ninf);
            for (int64_t j = 0; j < knp; j += W) vmax = at::vec::maximum(vmax, Vec::loadu(s + j));
            const T mx = at::vec::vec_reduce_all<T>(
                [](Vec& a, Vec& bb) { return at::vec::maximum(a, bb); }, vmax);
            const T m_new = std::max(m[i], mx);
            alpha[i] = T(1);
            if (m_new == ninf) {  // nothing visible yet: P row is zero
              std::fill(s, s + knp, T(0));
              continue;
            }
            alpha[i] = std::exp(m[i] - m_new);  // 0 when m[i] = -inf
            const Vec vm(m_new);
            Vec vsum(T(0));
            for (int64_t j = 0; j < knp; j += W) {
              Vec p = vexp<scalar_t, T>(Vec::loadu(s + j) - vm);
              p.store(s + j);
              vsum = vsum + p;
            }
            const T sum = at::vec::vec_reduce_all<T>([](Vec& a, Vec& bb) { return a + bb; }, vsum);
            l[i] = l[i] * alpha[i] + sum;
            m[i] = m_new;
            if (dropout) {  // the softmax's sum counts every key; P V only the kept ones, x 1/(1-p)
              keep_row(mods, ((b * g.H + h) * g.Sq + q0 + i) * g.Sk + k0, kn, knp, ubuf.data(), keep.data());
              for (int64_t j = 0; j < knp; j += W)
                (Vec::loadu(s + j) * Vec::loadu(keep.data() + j)).store(s + j);
            }
          }
          // O = O * alpha + P V
          gemm<T>(qn, Dp, kn, sbuf.data(), BKF, 1, vop + (k0 - kbase) * ldv, ldv, tbuf.data(), Dp, false);
          add_tile(obuf.data(), tbuf.data(), qn, Dp, alpha.data());
        }
        scalar_t* oh = op + b * so.b + h * so.h + q0 * so.s;
        T* lh = lp + (b * g.H + h) * g.Sq + q0;
        for (int64_t i = 0; i < qn; ++i) {
          if (l[i] > T(0)) {
            store_row(obuf.data() + i * Dp, D, T(1) / l[i], oh + i * so.s, so.d);
            lh[i] = m[i] + std::log(l[i]);
          } else {  // no visible key: zeros, logsumexp -inf
            for (int64_t d = 0; d < D; ++d) oh[i * so.s + d * so.d] = scalar_t(0);
            lh[i] = ninf;
          }
        }
      }
    }
  });
}

template <typename scalar_t, typename T>
void backward_impl(const at::Tensor& go, const at::Tensor& q, const at::Tensor& k,
                   const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
                   const c10::optional<at::Tensor>& mask, const Visibility& vis,
                   const ScoreMods& mods, double scale, const AttentionGeometry& g, at::Tensor& dq,
                   at::Tensor& dk, at::Tensor& dv, const T* grad_lse) {
  using Vec = Vectorized<T>;
  constexpr int64_t W = Vec::size();
  const int64_t D = g.D, Dp = round_up(D, W), Skp = round_up(g.Sk, W);
  const Strides4 sgo(go), sq(q), sk(k), sv(v), so(out), sdq(dq), sdk(dk), sdv(dv);
  const scalar_t* gop = go.const_data_ptr<scalar_t>();
  const scalar_t* qp = q.const_data_ptr<scalar_t>();
  const scalar_t* kp = k.const_data_ptr<scalar_t>();
  const scalar_t* vp = v.const_data_ptr<scalar_t>();
  const scalar_t* op = out.const_data_ptr<scalar_t>();
  const T* lp = lse.const_data_ptr<T>();
  scalar_t* dqp = dq.mutable_data_ptr<scalar_t>();
  scalar_t* dkp = dk.mutable_data_ptr<scalar_t>();
  scalar_t* dvp = dv.mutable_data_ptr<scalar_t>();
  const std::vector<T> bias = key_bias<T>(mask, g.B, g.Sk, Skp);
  const T ninf = -std::numeric_limits<T>::infinity(), tscale = static_cast<T>(scale);
  const T softcap = static_cast<T>(mods.softcap);
  const bool dropout = mods.dropout_p > 0;
  const int64_t nqbb = (g.Sq + BQB - 1) / BQB;

  // Tasks: (batch, kv head, key chunk). One chunk per (b, kv head) when those keep every thread
  // busy; otherwise the keys are split and each chunk leaves its dQ partial sum in a workspace
  // (O(S D) per chunk) that a second pass adds up.
  const int64_t nkb = (g.Sk + BK - 1) / BK, kvheads = g.B * g.Hkv;
  const int64_t threads = at::get_num_threads();
  const int64_t nkc = kvheads >= 2 * threads ? 1 : std::min(nkb, (2 * threads + kvheads - 1) / kvheads);
  const int64_t kb_per_chunk = (nkb + nkc - 1) / nkc;
  std::vector<T> dq_part(nkc > 1 ? nkc * g.B * g.H * g.Sq * Dp : 0, T(0));

  at::parallel_for(0, kvheads * nkc, 1, [&](int64_t begin, int64_t end) {
    const int64_t kmax = std::min(g.Sk, kb_per_chunk * BK);
    std::vector<T> kt(panels_size(kmax, D)), vt(panels_size(kmax, D)), kbuf, qs(g.Sq * Dp),
        dob(g.Sq * Dp), dqa(g.Sq * Dp), dka(kmax * Dp), dva(kmax * Dp), delta(g.Sq), lrow(g.Sq),
        pbuf(BQB * BK), dsbuf(BQB * BK), orow(Dp), tile(std::max(BQB, BK) * Dp),
        dtbuf(softcap > T(0) ? BQB * BK : 0), keep(dropout ? BQB * BK : 0), pdbuf(dropout ? BQB * BK : 0);
    std::vector<float> ubuf(dropout ? BK : 0);
    std::vector<std::pair<int64_t, int64_t>> qblk(nqbb);  // keys each query block may see
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bhk = task / nkc, t = task % nkc;
      const int64_t c = (t % 2 == 0) ? t / 2 : nkc - 1 - t / 2;  // zig-zag: mix long and short
      const int64_t b = bhk / g.Hkv, hk = bhk % g.Hkv;
      const int64_t kbeg = c * kb_per_chunk * BK, kend = std::min(g.Sk, kbeg + kb_per_chunk * BK);
      if (kbeg >= kend) continue;
      const int64_t klen = kend - kbeg;
      // The query blocks that may see this key chunk: [qb_first, qb_last].
      int64_t qb_first = nqbb, qb_last = -1;
      for (int64_t qb = 0; qb < nqbb; ++qb) {
        qblk[qb] = vis.rows_range(b, qb * BQB, std::min(g.Sq, (qb + 1) * BQB));
        if (qblk[qb].first < std::min(qblk[qb].second, kend) && qblk[qb].second > kbeg) {
          qb_first = std::min(qb_first, qb);
          qb_last = qb;
        }
      }
      const scalar_t* kh = kp + b * sk.b + hk * sk.h + kbeg * sk.s;
      const scalar_t* vh = vp + b * sv.b + hk * sv.h + kbeg * sv.s;
      std::fill(dka.begin(), dka.end(), T(0));
      std::fill(dva.begin(), dva.end(), T(0));
      const T* kop = nullptr;
      int64_t ldk = 0;
      if (qb_first <= qb_last) {
        pack_panels(kh, sk, klen, D, kt.data());
        pack_panels(vh, sv, klen, D, vt.data());
        std::tie(kop, ldk) = rows_operand<scalar_t, T>(kh, sk, klen, D, Dp, kbuf);
      }
      const T* bias_b = bias.data() + b * Skp + kbeg;
      const bool elementwise = vis.elementwise(b);
      const int64_t* lo_b = vis.lo.data() + b * g.Sq;
      const int64_t* hi_b = vis.hi.data() + b * g.Sq;
      const int64_t row_begin = qb_first * BQB, row_end = std::min(g.Sq, (qb_last + 1) * BQB);
      for (int64_t h = hk * g.group(); h < (hk + 1) * g.group(); ++h) {
        const scalar_t* qh = qp + b * sq.b + h * sq.h;
        const scalar_t* goh = gop + b * sgo.b + h * sgo.h;
        const scalar_t* oh = op + b * so.b + h * so.h;
        const T* lh = lp + (b * g.H + h) * g.Sq;
        for (int64_t i = row_begin; i < row_end; ++i) {
          load_row(qh + i * sq.s, sq.d, D, Dp, tscale, qs.data() + i * Dp);
          T* d_o = dob.data() + i * Dp;
          load_row(goh + i * sgo.s, sgo.d, D, Dp, T(1), d_o);
          load_row(oh + i * so.s, so.d, D, Dp, T(1), orow.data());
          Vec acc(T(0));
          for (int64_t d = 0; d < Dp; d += W) acc = at::vec::fmadd(Vec::loadu(d_o + d), Vec::loadu(orow.data() + d), acc);
          delta[i] = at::vec::vec_reduce_all<T>([](Vec& a, Vec& bb) { return a + bb; }, acc);
          // d lse / d s = P: a gradient of the returned lse joins dS = P (dP - delta) as -grad_lse.
          if (grad_lse != nullptr) delta[i] -= grad_lse[(b * g.H + h) * g.Sq + i];
          // Rows that saw no key: +inf makes every P entry exp(-inf) = 0.
          lrow[i] = lh[i] == ninf ? std::numeric_limits<T>::infinity() : lh[i];
        }
        std::fill(dqa.begin(), dqa.end(), T(0));
        for (int64_t k0 = 0; k0 < klen; k0 += BK) {  // k0: offset in the chunk
          const int64_t kn = std::min(BK, klen - k0), knp = round_up(kn, W), kg = kbeg + k0;
          for (int64_t qb = qb_first; qb <= qb_last; ++qb) {
            const int64_t q0 = qb * BQB, qn = std::min(BQB, g.Sq - q0);
            if (!(qblk[qb].first < std::min(qblk[qb].second, kg + kn) && qblk[qb].second > kg)) continue;
            if (!vis.mask_tile_any(b, h, q0, q0 + qn, kg, kg + kn)) continue;
            T* p = pbuf.data();
            T* ds = dsbuf.data();
            scores<T>(qn, knp, D, qs.data() + q0 * Dp, Dp, kt.data(), k0, p, BK);
            for (int64_t i = 0; i < qn; ++i) {
              T* s = p + i * BK;
              if (softcap > T(0)) cap_row(s, knp, softcap, dtbuf.data() + i * BK);
              const int64_t a = std::clamp<int64_t>(lo_b[q0 + i] - kg, 0, kn);
              const int64_t e = std::clamp<int64_t>(hi_b[q0 + i] - kg, a, kn);
              const Vec vl(lrow[q0 + i]);
              for (int64_t j = 0; j < knp; j += W)
                vexp<scalar_t, T>(Vec::loadu(s + j) + Vec::loadu(bias_b + k0 + j) - vl).store(s + j);
              std::fill(s, s + a, T(0));
              std::fill(s + e, s + knp, T(0));
              if (elementwise) vis.apply_elementwise(b, h, q0 + i, kg + a, e - a, s + a, T(0));
              if (dropout) {
                T* kr = keep.data() + i * BK;
                keep_row(mods, ((b * g.H + h) * g.Sq + q0 + i) * g.Sk + kg, kn, knp, ubuf.data(), kr);
                T* pd = pdbuf.data() + i * BK;
                for (int64_t j = 0; j < knp; j += W) (Vec::loadu(s + j) * Vec::loadu(kr + j)).store(pd + j);
              }
            }
            // dV += P^T dO (P with dropout applied)
            gemm<T>(kn, Dp, qn, dropout ? pdbuf.data() : p, 1, BK, dob.data() + q0 * Dp, Dp, tile.data(), Dp, false);
            add_tile(dva.data() + k0 * Dp, tile.data(), kn, Dp, static_cast<const T*>(nullptr));
            // dP = dO V^T (times the keep-mask), then dS = P (dP - delta) (times 1 - tanh^2)
            scores<T>(qn, knp, D, dob.data() + q0 * Dp, Dp, vt.data(), k0, ds, BK);
            for (int64_t i = 0; i < qn; ++i) {
              const Vec vd(delta[q0 + i]);
              T* dsr = ds + i * BK;
              const T* pr = p + i * BK;
              if (dropout) {
                const T* kr = keep.data() + i * BK;
                for (int64_t j = 0; j < knp; j += W)
                  (Vec::loadu(pr + j) * (Vec::loadu(dsr + j) * Vec::loadu(kr + j) - vd)).store(dsr + j);
              } else {
                for (int64_t j = 0; j < knp; j += W)
                  (Vec::loadu(pr + j) * (Vec::loadu(dsr + j) - vd)).store(dsr + j);
              }
              if (softcap > T(0)) {
                const T* dt = dtbuf.data() + i * BK;
                for (int64_t j = 0; j < knp; j += W) (Vec::loadu(dsr + j) * Vec::loadu(dt + j)).store(dsr + j);
              }
            }
            // dQ += dS K ; dK += dS^T (scale Q)
            gemm<T>(qn, Dp, kn, ds, BK, 1, kop + k0 * ldk, ldk, tile.data(), Dp, false);
            add_tile(dqa.data() + q0 * Dp, tile.data(), qn, Dp, static_cast<const T*>(nullptr));
            gemm<T>(kn, Dp, qn, ds, 1, BK, qs.data() + q0 * Dp, Dp, tile.data(), Dp, false);
            add_tile(dka.data() + k0 * Dp, tile.data(), kn, Dp, static_cast<const T*>(nullptr));
          }
        }
        if (nkc == 1) {
          scalar_t* dqh = dqp + b * sdq.b + h * sdq.h;
          for (int64_t i = 0; i < g.Sq; ++i) store_row(dqa.data() + i * Dp, D, tscale, dqh + i * sdq.s, sdq.d);
        } else {
          std::copy(dqa.begin(), dqa.end(), dq_part.begin() + ((c * g.B + b) * g.H + h) * g.Sq * Dp);
        }
      }
      scalar_t* dkh = dkp + b * sdk.b + hk * sdk.h + kbeg * sdk.s;
      scalar_t* dvh = dvp + b * sdv.b + hk * sdv.h + kbeg * sdv.s;
      for (int64_t j = 0; j < klen; ++j) {
        store_row(dka.data() + j * Dp, D, T(1), dkh + j * sdk.s, sdk.d);
        store_row(dva.data() + j * Dp, D, T(1), dvh + j * sdv.s, sdv.d);
      }
    }
  });

  if (nkc == 1) return;
  const int64_t rows = g.B * g.H * g.Sq, chunk_stride = rows * Dp;
  at::parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
    std::vector<T> acc(Dp);
    for (int64_t r = begin; r < end; ++r) {
      std::copy_n(dq_part.begin() + r * Dp, Dp, acc.begin());
      for (int64_t c = 1; c < nkc; ++c) add_tile(acc.data(), dq_part.data() + c * chunk_stride + r * Dp, 1, Dp, static_cast<const T*>(nullptr));
      const int64_t i = r % g.Sq, h = (r / g.Sq) % g.H, b = r / (g.Sq * g.H);
      store_row(acc.data(), D, tscale, dqp + b * sdq.b + h * sdq.h + i * sdq.s, sdq.d);
    }
  });
}

// A few query rows against the keys (decoding with a KV cache: one new token per step). Packing
// all of K into panels and zeroing BQ x BKF score tiles cost more than the math for one row, so
// each (batch, head, row) takes its scores NB x W keys at a time, an exact softmax, and P V in
// blocks of KP keys (per-block partial sums, for float32 accuracy as in add_tile). Threads only
// when there is enough work to pay for waking them.
constexpr int64_t kRowsMaxSq = 4;

// acc[c] = sum over d in order of q[d] * key(d, c), c < NB: NB independent FMA chains, each lane
// one key, so per key exactly the micro-kernel's sequence.
template <typename T, int NB, typename KeyVec>
inline void dot_blocks(const T* q, int64_t D, Vectorized<T>* acc, KeyVec key) {
  for (int c = 0; c < NB; ++c) acc[c] = Vectorized<T>(T(0));
  for (int64_t d = 0; d < D; ++d) {
    const Vectorized<T> qd(q[d]);
    for (int c = 0; c < NB; ++c) acc[c] = at::vec::fmadd(qd, key(d, c), acc[c]);
  }
}

template <typename scalar_t, typename T>
void forward_rows(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                  const c10::optional<at::Tensor>& mask, bool causal, double scale,
                  const AttentionGeometry& g, at::Tensor& out, at::Tensor& lse) {
  using Vec = Vectorized<T>;
  constexpr int64_t W = Vec::size();
  constexpr int NB = 8;  // key blocks of W per step of the scores loop (8 chains in flight)
  const int64_t D = g.D, Dp = round_up(D, W), Skp = round_up(g.Sk, W), off = g.offset();
  const auto [sq, sk, sv, so, qp, kp, vp, op, lp, bias] =
      forward_operands<scalar_t, T>(q, k, v, mask, g, Skp, out, lse);
  const T ninf = -std::numeric_limits<T>::infinity();
  // Rows of V are read in place when they already are padded T rows; else converted. Keys: see
  // the scores loop.
  const bool direct = std::is_same_v<scalar_t, T> && D == Dp;
  const bool key_major = std::is_same_v<scalar_t, T> && sk.s == 1;
  const bool row_major = std::is_same_v<scalar_t, T> && sk.d == 1 && !key_major;
  const int64_t rows = g.B * g.H * g.Sq;
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 14) / std::max<int64_t>(1, g.Sk * D));

  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    std::vector<T> qrow(Dp), xrow(Dp), orow(Dp), s(Skp), kt(D * NB * W);
    auto row = [&](const scalar_t* x, int64_t stride_d) -> const T* {
      if constexpr (std::is_same_v<scalar_t, T>) {
        if (direct && stride_d == 1) return x;
      }
      load_row(x, stride_d, D, Dp, T(1), xrow.data());
      return xrow.data();
    };
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / (g.H * g.Sq), h = (r / g.Sq) % g.H, i = r % g.Sq;
      const int64_t hk = h / g.group();
      const int64_t kend = causal ? std::clamp<int64_t>(i + off + 1, 0, g.Sk) : g.Sk;
      const scalar_t* kh = kp + b * sk.b + hk * sk.h;
      const scalar_t* vh = vp + b * sv.b + hk * sv.h;
      const T* kh_t = reinterpret_cast<const T*>(kh);  // read as T only when scalar_t is T
      const T* bias_b = bias.data() + b * Skp;
      load_row(qp + b * sq.b + h * sq.h + i * sq.s, sq.d, D, Dp, static_cast<T>(scale), qrow.data());

      // s_j = scale q . k_j + bias_j, NB x W keys at a time (NB independent FMA chains), per key
      // the same FMA sequence over d as the tiled path's micro-kernel, so the backward, which
      // recomputes the scores that way, finds exactly the saved logsumexp's scores. The keys'
      // coordinate d is a vector load when keys are contiguous along S (KVCache's transposed
      // keys), else it comes from a D x NB W tile transposed in registers (keys contiguous along
      // D) or element by element.
      for (int64_t j0 = 0; j0 < kend; j0 += NB * W) {
        const int64_t jn = std::min(NB * W, kend - j0);
        Vec acc[NB];
        if (key_major && jn == NB * W) {
          dot_blocks<T, NB>(qrow.data(), D, acc,
                            [&](int64_t d, int c) { return Vec::loadu(kh_t + d * sk.d + j0 + c * W); });
        } else if (key_major) {
          for (int c = 0; c * W < jn; ++c) {
            const int64_t cn = std::min(W, jn - c * W);
            dot_blocks<T, 1>(qrow.data(), D, acc + c,
                             [&](int64_t d, int) { return Vec::loadu(kh_t + d * sk.d + j0 + c * W, cn); });
          }
        } else {
          if (jn < NB * W) std::fill(kt.begin(), kt.end(), T(0));
          if (row_major) {
            at::vec::transpose_mxn<T>(kh_t + j0 * sk.s, sk.s, kt.data(), NB * W,
                                      static_cast<int>(jn), static_cast<int>(D));
          } else {
            for (int64_t jj = 0; jj < jn; ++jj)
              for (int64_t d = 0; d < D; ++d)
                kt[d * NB * W + jj] = static_cast<T>(kh[(j0 + jj) * sk.s + d * sk.d]);
          }
          dot_blocks<T, NB>(qrow.data(), D, acc,
                            [&](int64_t d, int c) { return Vec::loadu(kt.data() + d * NB * W + c * W); });
        }
        for (int c = 0; c * W < jn; ++c)
          (acc[c] + Vec::loadu(bias_b + j0 + c * W)).store(s.data() + j0 + c * W);
      }
      std::fill(s.begin() + kend, s.end(), ninf);
      Vec vmax(ninf);
      for (int64_t j = 0; j < Skp; j += W) vmax = at::vec::maximum(vmax, Vec::loadu(s.data() + j));
      const T mx = at::vec::vec_reduce_all<T>([](Vec& a, Vec& bb) { return at::vec::maximum(a, bb); }, vmax);
      scalar_t* orow_out = op + b * so.b + h * so.h + i * so.s;
      T* lrow = lp + (b * g.H + h) * g.Sq + i;
      if (mx == ninf) {  // no visible key: zeros, logsumexp -inf
        for (int64_t d = 0; d < D; ++d) orow_out[d * so.d] = scalar_t(0);
        *lrow = ninf;
        continue;
      }
      const Vec vm(mx);
      Vec vsum(T(0));
      for (int64_t j = 0; j < Skp; j += W) {
        Vec pj = vexp<scalar_t, T>(Vec::loadu(s.data() + j) - vm);
        pj.store(s.data() + j);
        vsum = vsum + pj;
      }
      const T sum = at::vec::vec_reduce_all<T>([](Vec& a, Vec& bb) { return a + bb; }, vsum);

      // O = P V over blocks of KP keys; per block, up to 4 vectors of the output row in registers
      // and two keys in flight (even and odd keys into separate accumulators, added at the end).
      std::fill(orow.begin(), orow.end(), T(0));
      for (int64_t j0 = 0; j0 < kend; j0 += KP) {
        const int64_t j1 = std::min(kend, j0 + KP);
        for (int64_t dc = 0; dc < Dp; dc += 4 * W) {
          const int nv = static_cast<int>(std::min<int64_t>(4, (Dp - dc) / W));
          Vec o[2][4];
          for (int e = 0; e < 2; ++e)
            for (int c = 0; c < 4; ++c) o[e][c] = Vec(T(0));
          for (int64_t j = j0; j < j1; ++j) {
            if (s[j] == T(0)) continue;  // padded key
            const T* vr = row(vh + j * sv.s, sv.d) + dc;
            const Vec pj(s[j]);
            Vec* oe = o[j & 1];
            for (int c = 0; c < nv; ++c) oe[c] = at::vec::fmadd(pj, Vec::loadu(vr + c * W), oe[c]);
          }
          for (int c = 0; c < nv; ++c)
            (Vec::loadu(orow.data() + dc + c * W) + (o[0][c] + o[1][c])).store(orow.data() + dc + c * W);
        }
      }
      store_row(orow.data(), D, T(1) / sum, orow_out, so.d);
      *lrow = mx + std::log(sum);
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> attention_cpu(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const c10::optional<at::Tensor>& key_padding_mask, bool causal, double scale,
    int64_t window_left, int64_t window_right, double softcap,
    const c10::optional<at::Tensor>& document_ids, const c10::optional<at::Tensor>& attn_mask,
    double dropout_p, const c10::optional<at::Tensor>& seed_offset,
    const c10::optional<at::Tensor>& sinks_in) {
  const AttentionGeometry g = check_attention_inputs(q, k, v, key_padding_mask, scale, "attention");
  const AttentionFeatures f = check_attention_features(q, g, window_left, window_right, softcap,
                                                       document_ids, attn_mask, dropout_p,
                                                       seed_offset, "attention");
  const auto acc = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor out = at::empty({g.B, g.H, g.Sq, g.D}, q.options());
  at::Tensor lse = at::empty({g.B, g.H, g.Sq}, q.options().dtype(acc));
  const at::Tensor sinks = check_attention_sinks(sinks_in, q, g.H, acc, "attention");
  if (out.numel() == 0) return {out, lse};
  if (g.Sk == 0) {
    out.zero_();
    if (sinks.defined()) lse.copy_(sinks.view({1, g.H, 1}).expand({g.B, g.H, g.Sq}));
    else lse.fill_(-std::numeric_limits<double>::infinity());
    return {out, lse};
  }
  c10::optional<at::Tensor> mask, docs;
  if (key_padding_mask.has_value()) mask = key_padding_mask->contiguous();
  if (document_ids.has_value()) docs = document_ids->to(at::kLong).contiguous();
  // The few-rows path knows causal and key padding only.
  const bool rows = g.Sq <= kRowsMaxSq && !f.any() && !sinks.defined();
  const Visibility vis = rows ? Visibility{} : make_visibility(g, causal, f.left, f.right, docs, attn_mask);
  const ScoreMods mods{f.softcap, f.dropout_p, f.key};
  AT_DISPATCH_SWITCH(q.scalar_type(), "attention_cpu",
      AT_DISPATCH_CASE(at::kFloat, [&] {
        if (rows) forward_rows<float, float>(q, k, v, mask, causal, scale, g, out, lse);
        else forward_impl<float, float>(q, k, v, mask, vis, mods, scale, g, out, lse, sinks.defined() ? sinks.const_data_ptr<float>() : nullptr); })
      AT_DISPATCH_CASE(at::kDouble, [&] {
        if (rows) forward_rows<double, double>(q, k, v, mask, causal, scale, g, out, lse);
        else forward_impl<double, double>(q, k, v, mask, vis, mods, scale, g, out, lse, sinks.defined() ? sinks.const_data_ptr<double>() : nullptr); })
      AT_DISPATCH_CASE(at::kBFloat16, [&] {
        if (rows) forward_rows<at::BFloat16, float>(q, k, v, mask, causal, scale, g, out, lse);
        else forward_impl<at::BFloat16, float>(q, k, v, mask, vis, mods, scale, g, out, lse, sinks.defined() ? sinks.const_data_ptr<float>() : nullptr); })
      AT_DISPATCH_CASE(at::kHalf, [&] {
        if (rows) forward_rows<at::Half, float>(q, k, v, mask, causal, scale, g, out, lse);
        else forward_impl<at::Half, float>(q, k, v, mask, vis, mods, scale, g, out, lse, sinks.defined() ? sinks.const_data_ptr<float>() : nullptr); }));
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, const c10::optional<at::Tensor>& key_padding_mask,
    bool causal, double scale, int64_t window_left, int64_t window_right, double softcap,
    const c10::optional<at::Tensor>& document_ids, const c10::optional<at::Tensor>& attn_mask,
    double dropout_p, const c10::optional<at::Tensor>& seed_offset,
    const c10::optional<at::Tensor>& grad_lse) {
  const AttentionGeometry g = check_attention_inputs(q, k, v, key_padding_mask, scale, "attention_backward");
  const AttentionFeatures f = check_attention_features(q, g, window_left, window_right, softcap,
                                                       document_ids, attn_mask, dropout_p,
                                                       seed_offset, "attention_backward");
  TORCH_CHECK(grad_out.sizes() == out.sizes() && out.sizes() == q.sizes(),
              "attention_backward: grad_out ", grad_out.sizes(), " and out ", out.sizes(),
              " must have the shape of q ", q.sizes());
  const auto acc = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(lse.scalar_type() == acc && lse.dim() == 3 && lse.size(0) == g.B &&
                  lse.size(1) == g.H && lse.size(2) == g.Sq,
              "attention_backward: lse must be ", acc, " of shape (", g.B, ", ", g.H, ", ", g.Sq,
              "), got ", lse.scalar_type(), " ", lse.sizes());
  at::Tensor dq = at::empty(q.sizes(), q.options());
  at::Tensor dk = at::empty(k.sizes(), k.options());
  at::Tensor dv = at::empty(v.sizes(), v.options());
  if (q.numel() == 0 || k.numel() == 0) {
    dq.zero_(); dk.zero_(); dv.zero_();
    return {dq, dk, dv};
  }
  const at::Tensor go = grad_out.to(q.scalar_type());
  const at::Tensor l = lse.contiguous();
  at::Tensor gl;
  if (grad_lse.has_value()) {
    TORCH_CHECK(grad_lse->sizes() == lse.sizes() && grad_lse->device() == lse.device(),
                "attention_backward: grad_lse must have lse's shape ", lse.sizes(), " on ",
                lse.device(), ", got ", grad_lse->sizes(), " on ", grad_lse->device());
    gl = grad_lse->to(acc).contiguous();
  }
  c10::optional<at::Tensor> mask, docs;
  if (key_padding_mask.has_value()) mask = key_padding_mask->contiguous();
  if (document_ids.has_value()) docs = document_ids->to(at::kLong).contiguous();
  const Visibility vis = make_visibility(g, causal, f.left, f.right, docs, attn_mask);
  const ScoreMods mods{f.softcap, f.dropout_p, f.key};
  AT_DISPATCH_SWITCH(q.scalar_type(), "attention_backward_cpu",
      AT_DISPATCH_CASE(at::kFloat, [&] { backward_impl<float, float>(go, q, k, v, out, l, mask, vis, mods, scale, g, dq, dk, dv, gl.defined() ? gl.const_data_ptr<float>() : nullptr); })
      AT_DISPATCH_CASE(at::kDouble, [&] { backward_impl<double, double>(go, q, k, v, out, l, mask, vis, mods, scale, g, dq, dk, dv, gl.defined() ? gl.const_data_ptr<double>() : nullptr); })
      AT_DISPATCH_CASE(at::kBFloat16, [&] { backward_impl<at::BFloat16, float>(go, q, k, v, out, l, mask, vis, mods, scale, g, dq, dk, dv, gl.defined() ? gl.const_data_ptr<float>() : nullptr); })
      AT_DISPATCH_CASE(at::kHalf, [&] { backward_impl<at::Half, float>(go, q, k, v, out, l, mask, vis, mods, scale, g, dq, dk, dv, gl.defined() ? gl.const_data_ptr<float>() : nullptr); }));
  return {dq, dk, dv};
}

GENCORE_NAMESPACE_END
