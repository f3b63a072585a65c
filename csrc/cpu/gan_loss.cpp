// GAN losses, CPU: one pass per side computes the loss terms and the gradients together (ragan:
// a mean pass first). Vectorized with at::vec; float32 math (float64 for float64).
//
// Deterministic: the inputs are cut into fixed chunks of kChunk elements (independent of the thread
// count); each chunk sums its terms in a fixed lane order, and the chunk sums are added in chunk
// order in double. The same inputs give bit-identical results with any number of threads.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/SmallVector.h>

#include <algorithm>
#include <optional>
#include <type_traits>

#include "../checks.h"
#include "kernels.h"

GENCORE_NAMESPACE_BEGIN
namespace {

using at::vec::Vectorized;
using namespace gan;

constexpr int64_t kChunk = 2048;       // elements per chunk (fixed: part of the summation order)
constexpr int64_t kGrainChunks = 16;   // chunks per task: parallel from 32K elements on

// T(x) and T'(x) for one vector.
template <int TERM, typename acc_t>
inline void term_vec(const Vectorized<acc_t>& x, Vectorized<acc_t>& l, Vectorized<acc_t>& d) {
  using Vec = Vectorized<acc_t>;
  const Vec zero(0), one(1);
  if constexpr (TERM == kSoftplusNeg || TERM == kSoftplusPos) {
    const Vec y = TERM == kSoftplusNeg ? x.neg() : x;
    const Vec e = y.abs().neg().exp_u20();  // in (0, 1]: never overflows
    l = at::vec::maximum(y, zero) + e.log1p();
    const Vec r = one / (one + e);
    Vec s = Vec::blendv(e * r, r, y >= zero);  // sigmoid(y)
    s = Vec::blendv(s, y, y != y);              // NaN in, NaN out (exp_u20 drops NaN)
    d = TERM == kSoftplusNeg ? s.neg() : s;
  } else if constexpr (TERM == kHingeNeg) {
    const Vec y = one - x;
    l = at::vec::maximum(y, zero);
    d = Vec::blendv(zero, Vec(-1), y > zero);
  } else if constexpr (TERM == kHingePos) {
    const Vec y = one + x;
    l = at::vec::maximum(y, zero);
    d = Vec::blendv(zero, one, y > zero);
  } else if constexpr (TERM == kLinearNeg) {
    l = x.neg();
    d = Vec(-1);
  } else {
    static_assert(TERM == kLinearPos, "unknown term");
    l = x;
    d = one;
  }
}

template <typename acc_t>
inline Vectorized<acc_t> load(const acc_t* p, int64_t m) {
  using Vec = Vectorized<acc_t>;
  return m == Vec::size() ? Vec::loadu(p) : Vec::loadu(p, m);
}

template <typename acc_t>
inline void store(const Vectorized<acc_t>& v, acc_t* p, int64_t m) {
  if (m == Vectorized<acc_t>::size()) v.store(p); else v.store(p, m);
}

template <typename acc_t>
inline acc_t hsum(const Vectorized<acc_t>& v) {
  return at::vec::vec_reduce_all<acc_t>(
      [](Vectorized<acc_t>& a, Vectorized<acc_t>& b) { return a + b; }, v);
}

// One side: sums T(x - shift) and T'(x - shift); writes g = c * T' + K and (reduction none) l = T.
template <int TERM, typename acc_t>
void side_chunk(const acc_t* x, int64_t n, acc_t shift, acc_t c, acc_t K, acc_t* g, acc_t* lout,
                acc_t* lsum, acc_t* dsum) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t W = Vec::size();
  const Vec vshift(shift), vc(c), vK(K), zero(0);
  Vec vl(0), vd(0);
  for (int64_t j = 0; j < n; j += W) {
    const int64_t m = std::min<int64_t>(W, n - j);
    Vec l, d;
    term_vec<TERM, acc_t>(load(x + j, m) - vshift, l, d);
    if (g) store(d * vc + vK, g + j, m);
    if (lout) store(l, lout + j, m);
    if (m < W) {
      l = Vec::set(zero, l, m);
      d = Vec::set(zero, d, m);
    }
    vl = vl + l;
    vd = vd + d;
  }
  *lsum = hsum(vl);
  *dsum = hsum(vd);
}

// Both sides elementwise over matching shapes. REL (rsgan): T = softplus(-x), x = s * (r - f),
// g_r = s * c * T', g_f = -g_r. Else (reduction none of an unpaired kind): l = T_r(r) + T_f(f).
template <int TR, int TF, bool REL, typename acc_t>
void pair_chunk(const acc_t* r, const acc_t* f, int64_t n, acc_t sign, acc_t c, acc_t* gr,
                acc_t* gf, acc_t* lout, acc_t* lsum) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t W = Vec::size();
  const Vec vs(sign), vc(c), zero(0);
  Vec vl(0);
  for (int64_t j = 0; j < n; j += W) {
    const int64_t m = std::min<int64_t>(W, n - j);
    Vec l;
    if constexpr (REL) {
      Vec d;
      term_vec<kSoftplusNeg, acc_t>((load(r + j, m) - load(f + j, m)) * vs, l, d);
      const Vec g = d * vc * vs;
      store(g, gr + j, m);
      store(g.neg(), gf + j, m);
    } else {
      Vec lr, dr, lf, df;
      term_vec<TR, acc_t>(load(r + j, m), lr, dr);
      term_vec<TF, acc_t>(load(f + j, m), lf, df);
      l = lr + lf;
      store(dr * vc, gr + j, m);
      store(df * vc, gf + j, m);
    }
    if (lout) store(l, lout + j, m);
    if (m < W) l = Vec::set(zero, l, m);
    vl = vl + l;
  }
  *lsum = hsum(vl);
}

// Runs body over fixed chunks of [0, n) in parallel, converting the (up to two) inputs to acc_t and
// the (up to three) outputs back to scalar_t where the types differ. Returns the two per-chunk sums
// that body reports, added in chunk order in double.
template <typename scalar_t, typename acc_t, typename Body>
std::pair<double, double> run_chunks(int64_t n, const scalar_t* a, const scalar_t* b,
                                     scalar_t* o0, scalar_t* o1, scalar_t* o2, const Body& body) {
  constexpr bool same = std::is_same_v<scalar_t, acc_t>;
  const int64_t nchunks = (n + kChunk - 1) / kChunk;
  c10::SmallVector<acc_t, 32> part(2 * nchunks);
  at::parallel_for(0, nchunks, kGrainChunks, [&](int64_t c0, int64_t c1) {
    constexpr int64_t B = same ? 1 : kChunk;
    alignas(64) acc_t buf[5][B];
    for (int64_t ci = c0; ci < c1; ++ci) {
      const int64_t s = ci * kChunk, m = std::min(kChunk, n - s);
      const acc_t *pa = nullptr, *pb = nullptr;
      acc_t *q[3] = {nullptr, nullptr, nullptr};
      scalar_t* outs[3] = {o0, o1, o2};
      if constexpr (same) {
        pa = a ? a + s : nullptr;
        pb = b ? b + s : nullptr;
        for (int k = 0; k < 3; ++k) q[k] = outs[k] ? outs[k] + s : nullptr;
      } else {
        if (a) { at::vec::convert(a + s, buf[0], m); pa = buf[0]; }
        if (b) { at::vec::convert(b + s, buf[1], m); pb = buf[1]; }
        for (int k = 0; k < 3; ++k) q[k] = outs[k] ? buf[2 + k] : nullptr;
      }
      acc_t s0 = 0, s1 = 0;
      body(pa, pb, m, q[0], q[1], q[2], &s0, &s1);
      if constexpr (!same) {
        for (int k = 0; k < 3; ++k)
          if (outs[k]) at::vec::convert(buf[2 + k], outs[k] + s, m);
      }
      part[2 * ci] = s0;
      part[2 * ci + 1] = s1;
    }
  });
  double t0 = 0, t1 = 0;
  for (int64_t ci = 0; ci < nchunks; ++ci) {
    t0 += static_cast<double>(part[2 * ci]);
    t1 += static_cast<double>(part[2 * ci + 1]);
  }
  return {t0, t1};
}

template <typename F>
void with_term(int t, const F& f) {
  switch (t) {
    case kSoftplusNeg: f(std::integral_constant<int, kSoftplusNeg>{}); break;
    case kSoftplusPos: f(std::integral_constant<int, kSoftplusPos>{}); break;
    case kHingeNeg: f(std::integral_constant<int, kHingeNeg>{}); break;
    case kHingePos: f(std::integral_constant<int, kHingePos>{}); break;
    case kLinearNeg: f(std::integral_constant<int, kLinearNeg>{}); break;
    case kLinearPos: f(std::integral_constant<int, kLinearPos>{}); break;
    default: TORCH_CHECK(false, "gan_loss: internal error: bad term ", t);
  }
}

// Sums over one side (and writes its gradients/loss terms): returns (sum T, sum T').
template <typename scalar_t, typename acc_t>
std::pair<double, double> side_pass(int term, const scalar_t* x, int64_t n, acc_t shift, acc_t c,
                                    acc_t K, scalar_t* g, scalar_t* l) {
  std::pair<double, double> out;
  with_term(term, [&](auto T) {
    out = run_chunks<scalar_t, acc_t>(
        n, x, nullptr, g, l, nullptr,
        [&](const acc_t* px, const acc_t*, int64_t m, acc_t* pg, acc_t* pl, acc_t*, acc_t* s0,
            acc_t* s1) { side_chunk<decltype(T)::value, acc_t>(px, m, shift, c, K, pg, pl, s0, s1); });
  });
  return out;
}

template <typename scalar_t, typename acc_t>
void gan_loss_impl(const Plan& p, int64_t reduction, const scalar_t* r, int64_t nr,
                   const scalar_t* f, int64_t nf, scalar_t* loss, scalar_t* gr, scalar_t* gf) {
  const bool none = reduction == kNoReduction, mean = reduction == kMean;
  // Scales of each side's sum: 1/count for mean.
  const acc_t cr = mean ? acc_t(1) / static_cast<acc_t>(nr) : acc_t(1);
  const acc_t cf = mean ? acc_t(1) / static_cast<acc_t>(nf) : acc_t(1);
  auto reduce = [&](double s, int64_t n) { return mean ? s / static_cast<double>(n) : s; };
  double L = 0;
  if (p.paired || (none && p.uses_real)) {
    const acc_t c = none ? acc_t(1) : cf;
    double s = 0;
    if (p.paired) {
      const acc_t sign = static_cast<acc_t>(p.sign);
      s = run_chunks<scalar_t, acc_t>(
              nf, r, f, gr, gf, none ? loss : nullptr,
              [&](const acc_t* a, const acc_t* b, int64_t m, acc_t* q0, acc_t* q1, acc_t* q2,
                  acc_t* s0, acc_t*) {
                pair_chunk<kSoftplusNeg, kSoftplusPos, true, acc_t>(a, b, m, sign, c, q0, q1, q2, s0);
              }).first;
    } else {
      // Unpaired discriminator terms come as (Neg, Pos) pairs: term_f == term_r + 1.
      TORCH_CHECK(p.term_f == p.term_r + 1, "gan_loss: internal error: unexpected term pair");
      with_term(p.term_r, [&](auto T) {
        constexpr int TR = decltype(T)::value;
        if constexpr (TR == kSoftplusNeg || TR == kHingeNeg || TR == kLinearNeg) {
          s = run_chunks<scalar_t, acc_t>(
                  nf, r, f, gr, gf, loss,
                  [&](const acc_t* a, const acc_t* b, int64_t m, acc_t* q0, acc_t* q1, acc_t* q2,
                      acc_t* s0, acc_t*) {
                    pair_chunk<TR, TR + 1, false, acc_t>(a, b, m, acc_t(1), c, q0, q1, q2, s0);
                  }).first;
        }
      });
    }
    L = reduce(s, nf);
  } else if (!p.average) {
    if (p.uses_real) L += reduce(side_pass<scalar_t, acc_t>(p.term_r, r, nr, 0, cr, 0, gr, nullptr).first, nr);
    L += reduce(side_pass<scalar_t, acc_t>(p.term_f, f, nf, 0, cf, 0, gf, none ? loss : nullptr).first, nf);
  } else {
    // ragan: means, then the real side's derivative sum (for K_f), the fake side (final), the real
    // side (final, with K_r).
    const acc_t mr = static_cast<acc_t>(side_pass<scalar_t, acc_t>(kLinearPos, r, nr, 0, 1, 0, nullptr, nullptr).first / static_cast<double>(nr));
    const acc_t mf = static_cast<acc_t>(side_pass<scalar_t, acc_t>(kLinearPos, f, nf, 0, 1, 0, nullptr, nullptr).first / static_cast<double>(nf));
    const auto sr = side_pass<scalar_t, acc_t>(p.term_r, r, nr, mf, cr, 0, nullptr, nullptr);
    const acc_t Kf = static_cast<acc_t>(-static_cast<double>(cr) * sr.second / static_cast<double>(nf));
    const auto sf = side_pass<scalar_t, acc_t>(p.term_f, f, nf, mr, cf, Kf, gf, nullptr);
    const acc_t Kr = static_cast<acc_t>(-static_cast<double>(cf) * sf.second / static_cast<double>(nr));
    side_pass<scalar_t, acc_t>(p.term_r, r, nr, mf, cr, Kr, gr, nullptr);
    L = reduce(sr.first, nr) + reduce(sf.first, nf);
  }
  if (!none) *loss = static_cast<scalar_t>(static_cast<acc_t>(L));
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> gan_loss_cpu(const std::optional<at::Tensor>& real,
                                                            const at::Tensor& fake, int64_t kind,
                                                            int64_t role, int64_t reduction) {
  const Plan p = check_gan_loss(real, fake, kind, role, reduction, c10::DeviceType::CPU);
  const at::Tensor f = fake.contiguous();
  const at::Tensor r = p.uses_real ? real->contiguous() : at::Tensor();
  const bool none = reduction == kNoReduction;
  at::Tensor loss = none ? at::empty(f.sizes(), f.options()) : at::empty({}, f.options());
  at::Tensor gf = at::empty(f.sizes(), f.options());
  at::Tensor gr = p.uses_real ? at::empty(r.sizes(), r.options()) : at::empty({0}, f.options());
  const int64_t nf = f.numel(), nr = p.uses_real ? r.numel() : 0;
  AT_DISPATCH_SWITCH(f.scalar_type(), "gan_loss_cpu",
      AT_DISPATCH_CASE(at::kFloat, [&] {
        gan_loss_impl<float, float>(p, reduction, p.uses_real ? r.const_data_ptr<float>() : nullptr, nr,
            f.const_data_ptr<float>(), nf, loss.mutable_data_ptr<float>(),
            p.uses_real ? gr.mutable_data_ptr<float>() : nullptr, gf.mutable_data_ptr<float>());
      })
      AT_DISPATCH_CASE(at::kDouble, [&] {
        gan_loss_impl<double, double>(p, reduction, p.uses_real ? r.const_data_ptr<double>() : nullptr, nr,
            f.const_data_ptr<double>(), nf, loss.mutable_data_ptr<double>(),
            p.uses_real ? gr.mutable_data_ptr<double>() : nullptr, gf.mutable_data_ptr<double>());
      })
      AT_DISPATCH_CASE(at::kBFloat16, [&] {
        using T = at::BFloat16;
        gan_loss_impl<T, float>(p, reduction, p.uses_real ? r.const_data_ptr<T>() : nullptr, nr,
            f.const_data_ptr<T>(), nf, loss.mutable_data_ptr<T>(),
            p.uses_real ? gr.mutable_data_ptr<T>() : nullptr, gf.mutable_data_ptr<T>());
      })
      AT_DISPATCH_CASE(at::kHalf, [&] {
        using T = at::Half;
        gan_loss_impl<T, float>(p, reduction, p.uses_real ? r.const_data_ptr<T>() : nullptr, nr,
            f.const_data_ptr<T>(), nf, loss.mutable_data_ptr<T>(),
            p.uses_real ? gr.mutable_data_ptr<T>() : nullptr, gf.mutable_data_ptr<T>());
      }));
  return {loss, gr, gf};
}

GENCORE_NAMESPACE_END
