// Gumbel-softmax, CPU: one parallel pass over rows; per row, the Philox noise drawn a chunk at a
// time into L1 and added to the logits (z and its max), then exp-sum and the normalised write, in
// the output row (or a thread-local buffer) that stays in cache: logits read once, output written
// once. Vectorized with at::vec; float32 math (float64 for float64).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "../checks.h"
#include "gumbel_noise_simd.h"
#include "kernels.h"
#include "vec_math.h"

GENCORE_NAMESPACE_BEGIN
namespace {

using at::vec::Vectorized;

// z[j] = (x[j] + g_j) / tau for the row's n elements (element j has logical index
// first + j * stride; g_j its Gumbel noise); returns the max of the z[j] that are not NaN (-inf if
// none). float: the noise is computed in registers from each vector of Philox bits
// (gumbel_noise_simd.h, bit-identical to the reference).
float noisy_logits(const float* x, PhiloxKey key, int64_t first, int64_t stride, float inv_tau,
                   int64_t n, float* z) {
  using Vec = Vectorized<float>;
  const Vec vinv(inv_tau);
  Vec vmax(-std::numeric_limits<float>::infinity());
  float m = -std::numeric_limits<float>::infinity();
  philox_visit(key, first, stride, n, [&](int64_t j, auto bits) {
    if constexpr (std::is_same_v<decltype(bits), uint32_t>) {
      const float zj = (x[j] + gumbel_noise(bits)) * inv_tau;
      z[j] = zj;
      m = zj > m ? zj : m;
    } else {
      const Vec vz = (Vec::loadu(x + j) - Vec(minus_gumbel(bits))) * vinv;
      vz.store(z + j);
      vmax = max_vec(vmax, vz);
    }
  });
  return at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return max_vec(a, b); },
                                        max_vec(vmax, Vec(m)));
}

// double: the uniforms' logs in double, a chunk of uniforms at a time.
double noisy_logits(const double* x, PhiloxKey key, int64_t first, int64_t stride, double inv_tau,
                    int64_t n, double* z) {
  using Vec = Vectorized<double>;
  constexpr int64_t W = Vec::size(), kChunk = 256;
  const Vec vinv(inv_tau);
  Vec vmax(-std::numeric_limits<double>::infinity());
  alignas(64) float u[kChunk];
  for (int64_t c = 0; c < n; c += kChunk) {
    const int64_t len = std::min(kChunk, n - c);
    philox_map(key, first + c * stride, stride, len, u, UniformMap{});
    for (int64_t j = 0; j < len; j += W) {  // a partial vector for the tail, as torch.log
      const int64_t m = std::min(W, len - j);
      const Vec vu = at::vec::convert<double>(Vectorized<float>::loadu(u + j, m));
      const Vec vz = (Vec::loadu(x + c + j, m) + vu.log().neg().log().neg()) * vinv;
      vz.store(z + c + j, m);
      vmax = at::vec::maximum(vmax, m == W ? vz : Vec::set(Vec(vmax), vz, m));
    }
  }
  return at::vec::vec_reduce_all<double>([](Vec& a, Vec& b) { return at::vec::maximum(a, b); }, vmax);
}

// Index of the first element of z[0..n) equal to m (which is present).
template <typename acc_t>
int64_t first_equal(const acc_t* z, acc_t m, int64_t n) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t W = Vec::size();
  const Vec vm(m);
  int64_t j = 0;
  for (; j + W <= n; j += W) {
    const int eq = (Vec::loadu(z + j) != vm).zero_mask();  // bit k set where lane k equals m
    if (eq) return j + __builtin_ctz(static_cast<unsigned>(eq));
  }
  while (j < n && z[j] != m) ++j;
  return j;
}

// One row: x (n values, acc_t; element j has logical index first + j * stride) -> soft (n values,
// acc_t) in place over `z`. Returns -1 when the row is NaN, else the argmax of z (first maximum) when
// `want_arg`, else 0.
template <typename acc_t>
int64_t row_forward(const acc_t* x, PhiloxKey key, int64_t first, int64_t stride, acc_t inv_tau,
                    int64_t n, acc_t* z, bool want_arg) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t W = Vec::size();
  const acc_t m = noisy_logits(x, key, first, stride, inv_tau, n, z);
  if (!std::isfinite(m)) return -1;  // +inf somewhere in the row, or only -inf (or NaN)
  const int64_t arg = want_arg ? first_equal(z, m, n) : 0;
  // Softmax of z: exp(z - m) / sum. The sum in four vector accumulators: with one, a lane of the
  // 8-float paths (AVX2, DEFAULT) added n / 8 terms, and a 256K-element row's float32 sum was
  // twice as far off as torch's AVX-512 softmax (tests/test_gumbel_softmax.py, the 2x rule).
  const Vec vm(m);
  Vec vsum[4] = {Vec(0), Vec(0), Vec(0), Vec(0)};
  int64_t j = 0;
  for (; j + 4 * W <= n; j += 4 * W) {
    for (int a = 0; a < 4; ++a) {
      Vec e = exp_vec(Vec::loadu(z + j + a * W) - vm);
      e.store(z + j + a * W);
      vsum[a] = vsum[a] + e;
    }
  }
  for (; j + W <= n; j += W) {
    Vec e = exp_vec(Vec::loadu(z + j) - vm);
    e.store(z + j);
    vsum[0] = vsum[0] + e;
  }
  acc_t sum = at::vec::vec_reduce_all<acc_t>([](Vec& a, Vec& b) { return a + b; },
                                             (vsum[0] + vsum[1]) + (vsum[2] + vsum[3]));
  for (; j < n; ++j) {
    z[j] = std::exp(z[j] - m);
    sum += z[j];
  }
  if (sum != sum) return -1;  // NaN somewhere in the row
  const Vec vinvsum(acc_t(1) / sum);
  for (j = 0; j + W <= n; j += W) (Vec::loadu(z + j) * vinvsum).store(z + j);
  for (; j < n; ++j) z[j] *= acc_t(1) / sum;
  return arg;
}

template <typename scalar_t, typename acc_t>
void forward_impl(const at::Tensor& x, PhiloxKey key, double tau, bool hard, const RowLayout& L,
                  at::Tensor& out, at::Tensor& soft) {
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  scalar_t* op = out.mutable_data_ptr<scalar_t>();
  scalar_t* sp = hard ? soft.mutable_data_ptr<scalar_t>() : nullptr;
  const acc_t inv_tau = static_cast<acc_t>(1.0 / tau);
  const int64_t rows = L.outer * L.inner, n = L.n;
  // Rows of a float tensor along its last dim are read and written in place; anything else
  // (half types, dim not last) goes through row buffers.
  constexpr bool kSameType = std::is_same_v<scalar_t, acc_t>;
  const bool direct = kSameType && L.inner == 1;
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(n, 1));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> xbuf(direct ? 0 : n), zbuf(direct ? 0 : n);
    constexpr acc_t kNaN = std::numeric_limits<acc_t>::quiet_NaN();
    for (int64_t r = begin; r < end; ++r) {
      const int64_t o = r / L.inner, i = r % L.inner;
      const int64_t first = o * n * L.inner + i;  // logical index of the row's first element
      const acc_t* xrow;
      acc_t* z;
      if (direct) {
        xrow = reinterpret_cast<const acc_t*>(xp + first);
        z = reinterpret_cast<acc_t*>(hard ? sp + first : op + first);
      } else {
        if (L.inner == 1) {
          at::vec::convert(xp + first, xbuf.data(), n);
        } else {
          for (int64_t j = 0; j < n; ++j) xbuf[j] = static_cast<acc_t>(xp[first + j * L.inner]);
        }
        xrow = xbuf.data();
        z = zbuf.data();
      }
      const int64_t arg = row_forward<acc_t>(xrow, key, first, L.inner, inv_tau, n, z, hard);
      if (arg < 0) std::fill(z, z + n, kNaN);
      scalar_t* soft_row = hard ? sp + first : op + first;
      if (!direct) {
        if (L.inner == 1) {
          at::vec::convert(z, soft_row, n);
        } else {
          for (int64_t j = 0; j < n; ++j) soft_row[j * L.inner] = static_cast<scalar_t>(z[j]);
        }
      }
      if (hard) {
        const scalar_t fill = static_cast<scalar_t>(arg < 0 ? kNaN : acc_t(0));
        if (L.inner == 1) {
          std::fill(op + first, op + first + n, fill);
        } else {
          for (int64_t j = 0; j < n; ++j) op[first + j * L.inner] = fill;
        }
        if (arg >= 0) op[first + arg * L.inner] = static_cast<scalar_t>(1);
      }
    }
  });
}

// dx = y * (g - <g, y>) / tau along each row.
template <typename acc_t>
void row_backward(const acc_t* g, const acc_t* y, acc_t inv_tau, int64_t n, acc_t* dx) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t W = Vec::size();
  Vec vdot(0);
  int64_t j = 0;
  for (; j + W <= n; j += W) vdot = vdot + Vec::loadu(g + j) * Vec::loadu(y + j);
  acc_t dot = at::vec::vec_reduce_all<acc_t>([](Vec& a, Vec& b) { return a + b; }, vdot);
  for (; j < n; ++j) dot += g[j] * y[j];
  const Vec vdotv(dot), vinv(inv_tau);
  for (j = 0; j + W <= n; j += W)
    (Vec::loadu(y + j) * (Vec::loadu(g + j) - vdotv) * vinv).store(dx + j);
  for (; j < n; ++j) dx[j] = y[j] * (g[j] - dot) * inv_tau;
}

template <typename scalar_t, typename acc_t>
void backward_impl(const at::Tensor& g, const at::Tensor& y, double tau, const RowLayout& L,
                   at::Tensor& dx) {
  const scalar_t* gp = g.const_data_ptr<scalar_t>();
  const scalar_t* yp = y.const_data_ptr<scalar_t>();
  scalar_t* dp = dx.mutable_data_ptr<scalar_t>();
  const acc_t inv_tau = static_cast<acc_t>(1.0 / tau);
  const int64_t rows = L.outer * L.inner, n = L.n;
  const bool direct = std::is_same_v<scalar_t, acc_t> && L.inner == 1;
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(n, 1));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> gb(direct ? 0 : n), yb(direct ? 0 : n), db(direct ? 0 : n);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t o = r / L.inner, i = r % L.inner;
      const int64_t first = o * n * L.inner + i;
      if (direct) {
        row_backward<acc_t>(reinterpret_cast<const acc_t*>(gp + first),
                            reinterpret_cast<const acc_t*>(yp + first), inv_tau, n,
                            reinterpret_cast<acc_t*>(dp + first));
        continue;
      }
      if (L.inner == 1) {
        at::vec::convert(gp + first, gb.data(), n);
        at::vec::convert(yp + first, yb.data(), n);
      } else {
        for (int64_t j = 0; j < n; ++j) {
          gb[j] = static_cast<acc_t>(gp[first + j * L.inner]);
          yb[j] = static_cast<acc_t>(yp[first + j * L.inner]);
        }
      }
      row_backward<acc_t>(gb.data(), yb.data(), inv_tau, n, db.data());
      if (L.inner == 1) {
        at::vec::convert(db.data(), dp + first, n);
      } else {
        for (int64_t j = 0; j < n; ++j) dp[first + j * L.inner] = static_cast<scalar_t>(db[j]);
      }
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> gumbel_softmax_cpu(const at::Tensor& logits,
                                                       const at::Tensor& seed_offset, double tau,
                                                       bool hard, int64_t dim) {
  check_gumbel_softmax(logits, tau);
  const PhiloxKey key = read_philox_key(seed_offset);
  const at::Tensor x = logits.contiguous();
  const RowLayout L = checked_row_layout(x, dim, "gumbel_softmax");
  at::Tensor out = at::empty(x.sizes(), x.options());
  at::Tensor soft = hard ? at::empty(x.sizes(), x.options()) : at::empty({0}, x.options());
  if (x.numel() == 0) return {out, soft};
  AT_DISPATCH_SWITCH(x.scalar_type(), "gumbel_softmax_cpu",
      AT_DISPATCH_CASE(at::kFloat, [&] { forward_impl<float, float>(x, key, tau, hard, L, out, soft); })
      AT_DISPATCH_CASE(at::kDouble, [&] { forward_impl<double, double>(x, key, tau, hard, L, out, soft); })
      AT_DISPATCH_CASE(at::kBFloat16, [&] { forward_impl<at::BFloat16, float>(x, key, tau, hard, L, out, soft); })
      AT_DISPATCH_CASE(at::kHalf, [&] { forward_impl<at::Half, float>(x, key, tau, hard, L, out, soft); }));
  return {out, soft};
}

at::Tensor gumbel_softmax_backward_cpu(const at::Tensor& grad, const at::Tensor& soft, double tau,
                                       int64_t dim) {
  check_gumbel_softmax_backward(grad, soft);
  const at::Tensor g = grad.to(soft.scalar_type()).contiguous();
  const at::Tensor y = soft.contiguous();
  const RowLayout L = checked_row_layout(y, dim, "gumbel_softmax_backward");
  at::Tensor dx = at::empty(y.sizes(), y.options());
  if (y.numel() == 0) return dx;
  AT_DISPATCH_SWITCH(y.scalar_type(), "gumbel_softmax_backward_cpu",
      AT_DISPATCH_CASE(at::kFloat, [&] { backward_impl<float, float>(g, y, tau, L, dx); })
      AT_DISPATCH_CASE(at::kDouble, [&] { backward_impl<double, double>(g, y, tau, L, dx); })
      AT_DISPATCH_CASE(at::kBFloat16, [&] { backward_impl<at::BFloat16, float>(g, y, tau, L, dx); })
      AT_DISPATCH_CASE(at::kHalf, [&] { backward_impl<at::Half, float>(g, y, tau, L, dx); }));
  return dx;
}

GENCORE_NAMESPACE_END
