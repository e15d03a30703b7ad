// CPU kernels of batch_norm_leaky_relu and group_norm_leaky_relu and their backward over (N, C, *) maps, in the
// layouts of ../bias_act.h.
//
// Forward, two passes: the shifted sums of x - k and (x - k)^2 per (sample, channel), k the first element of the
// statistic's group (so the variance does not cancel when the mean is large against the spread), added per
// statistic in float64; then y = leaky_relu(x * scale + shift) with scale = weight * rstd, shift = bias - mean *
// scale per (sample, channel).
// Backward, two passes: sum(g) and sum(g * (x - mean)) per (sample, channel), g = dy * mask(x * scale + shift) (the
// mask recomputed as the forward computed it); then dx = g * P + x * Q + R, the batch-norm backward
// rstd * (h - mean(h) - x_hat * mean(h * x_hat)) with h = g * weight written as per-(sample, channel) coefficients.
// Every sum is over fixed chunks (a plane, or one sample's rows in order) added in batch order, so results do not
// depend on the thread count.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <utility>
#include <vector>

#include "../loss_math.h"
#include "../norm_act.h"
#include "simd.h"

namespace ganplug {
namespace {

using OptTensor = std::optional<at::Tensor>;

constexpr int64_t kTaskElements = int64_t{1} << 15;  // about this many elements per parallel task

int64_t grain(int64_t unit) { return std::max<int64_t>(1, kTaskElements / std::max<int64_t>(unit, 1)); }

// The map's geometry: N samples, C channels, `inner` elements per (sample, channel), and which statistic each
// (sample, channel) belongs to (its channel for batch norm; its sample and group for group norm; `stat_index`).
struct Geometry {
  int64_t batch, channels, inner, groups;
  bool innermost;

  int64_t num_stats() const { return groups == 0 ? channels : batch * groups; }
  // The offset of the first element of statistic k: of its lowest (sample, channel).
  int64_t first_of_stat(int64_t k) const {
    return groups == 0 ? first(0, k) : first(k / groups, k % groups * (channels / groups));
  }
  // stat(n, c) for every (sample, channel), row-major (N, C), without a division per entry.
  std::vector<int64_t> stat_index() const {
    std::vector<int64_t> out(static_cast<size_t>(batch * channels));
    const int64_t per_group = groups == 0 ? 1 : channels / groups;
    for (int64_t n = 0, i = 0; n < batch; ++n) {
      for (int64_t c = 0, group = 0, left = per_group; c < channels; ++c, ++i) {
        out[i] = groups == 0 ? c : n * groups + group;
        if (--left == 0) {
          ++group;
          left = per_group;
        }
      }
    }
    return out;
  }
  int64_t stat_count() const { return groups == 0 ? batch * inner : (channels / groups) * inner; }
  // The offset of element 0 of (sample n, channel c).
  int64_t first(int64_t n, int64_t c) const {
    return innermost ? n * inner * channels + c : (n * channels + c) * inner;
  }
};

Geometry geometry(const at::Tensor& x, int64_t groups, bool innermost) {
  const int64_t batch = x.size(0), channels = x.size(1);
  return {batch, channels, x.numel() / (batch * channels), groups, innermost};
}

// weight or bias as one value per (sample, channel), row-major (N, C), in the compute type; `absent` if not given.
template <typename scalar_t, typename op_t = at::opmath_type<scalar_t>>
std::vector<op_t> per_sample(const OptTensor& t, const Geometry& g, op_t absent) {
  std::vector<op_t> out(static_cast<size_t>(g.batch * g.channels), absent);
  if (!t.has_value()) return out;
  const at::Tensor c = t->contiguous();
  const scalar_t* p = c.const_data_ptr<scalar_t>();
  const bool each_sample = c.dim() == 2;
  for (int64_t n = 0; n < g.batch; ++n) {
    for (int64_t k = 0; k < g.channels; ++k) {
      out[n * g.channels + k] = static_cast<op_t>(p[(each_sample ? n * g.channels : 0) + k]);
    }
  }
  return out;
}

// Over chunks p0..p1 of n elements each (chunk p at x + p * n): s1[p] = sum(x - k[p]), s2[p] = sum((x - k[p])^2).
// (The plane loops take ranges so that the SIMD clone is picked once per task, not once per plane.)
template <typename scalar_t, typename op_t = at::opmath_type<scalar_t>>
GANPLUG_SIMD_CLONES void planes_moments(const scalar_t* __restrict__ x, int64_t p0, int64_t p1, int64_t n,
                                        const op_t* __restrict__ k, op_t* __restrict__ s1, op_t* __restrict__ s2) {
  for (int64_t p = p0; p < p1; ++p) {
    const scalar_t* xp = x + p * n;
    const op_t kp = k[p];
    op_t a = 0, b = 0;
#pragma omp simd reduction(+ : a, b)
    for (int64_t i = 0; i < n; ++i) {
      const op_t d = static_cast<op_t>(xp[i]) - kp;
      a += d;
      b += d * d;
    }
    s1[p] = a;
    s2[p] = b;
  }
}

// The same over `rows` rows of `channels` elements, per channel c with shift k[c], into s1[c], s2[c] (from zero).
template <typename scalar_t, typename op_t = at::opmath_type<scalar_t>>
GANPLUG_SIMD_CLONES void rows_moments(const scalar_t* __restrict__ x, const op_t* __restrict__ k,
                                      op_t* __restrict__ s1, op_t* __restrict__ s2, int64_t rows, int64_t channels) {
  for (int64_t r = 0; r < rows; ++r) {
    const scalar_t* xr = x + r * channels;
    for (int64_t c = 0; c < channels; ++c) {
      const op_t d = static_cast<op_t>(xr[c]) - k[c];
      s1[c] += d;
      s2[c] += d * d;
    }
  }
}

// y = leaky_relu(x * s[p] + t[p]) over planes p0..p1 of n elements.
template <typename scalar_t, typename op_t = at::opmath_type<scalar_t>>
GANPLUG_SIMD_CLONES void planes_apply(const scalar_t* __restrict__ x, scalar_t* __restrict__ y, int64_t p0, int64_t p1,
                                      int64_t n, const op_t* __restrict__ s, const op_t* __restrict__ t, op_t slope) {
  for (int64_t p = p0; p < p1; ++p) {
    const scalar_t* xp = x + p * n;
    scalar_t* yp = y + p * n;
    const op_t sp = s[p], tp = t[p];
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      yp[i] = static_cast<scalar_t>(leaky_relu(static_cast<op_t>(xp[i]) * sp + tp, slope));
    }
  }
}

template <typename scalar_t, typename op_t = at::opmath_type<scalar_t>>
GANPLUG_SIMD_CLONES void rows_apply(const scalar_t* __restrict__ x, const op_t* __restrict__ s,
                                    const op_t* __restrict__ t, scalar_t* __restrict__ y, int64_t rows,
                                    int64_t channels, op_t slope) {
  for (int64_t r = 0; r < rows; ++r) {
    const scalar_t* xr = x + r * channels;
    scalar_t* yr = y + r * channels;
    for (int64_t c = 0; c < channels; ++c) {
      yr[c] = static_cast<scalar_t>(leaky_relu(static_cast<op_t>(xr[c]) * s[c] + t[c], slope));
    }
  }
}

// Over planes p0..p1 of n elements, g = dy * mask(x * s[p] + t[p]): sum_g[p] = sum(g), sum_gd[p] = sum(g * (x - m[p])).
template <typename scalar_t, typename op_t = at::opmath_type<scalar_t>>
GANPLUG_SIMD_CLONES void planes_grad_sums(const scalar_t* __restrict__ dy, const scalar_t* __restrict__ x, int64_t p0,
                                          int64_t p1, int64_t n, const op_t* __restrict__ s,
                                          const op_t* __restrict__ t, const op_t* __restrict__ m, op_t slope,
                                          op_t* __restrict__ sum_g, op_t* __restrict__ sum_gd) {
  for (int64_t p = p0; p < p1; ++p) {
    const scalar_t* dyp = dy + p * n;
    const scalar_t* xp = x + p * n;
    const op_t sp = s[p], tp = t[p], mp = m[p];
    op_t a = 0, b = 0;
#pragma omp simd reduction(+ : a, b)
    for (int64_t i = 0; i < n; ++i) {
      const op_t xi = static_cast<op_t>(xp[i]);
      const op_t g = leaky_relu_grad_from_output(static_cast<op_t>(dyp[i]), xi * sp + tp, slope);
      a += g;
      b += g * (xi - mp);
    }
    sum_g[p] = a;
    sum_gd[p] = b;
  }
}

template <typename scalar_t, typename op_t = at::opmath_type<scalar_t>>
GANPLUG_SIMD_CLONES void rows_grad_sums(const scalar_t* __restrict__ dy, const scalar_t* __restrict__ x,
                                        const op_t* __restrict__ s, const op_t* __restrict__ t,
                                        const op_t* __restrict__ m, op_t* __restrict__ sum_g,
                                        op_t* __restrict__ sum_gd, int64_t rows, int64_t channels, op_t slope) {
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t o = r * channels;
    for (int64_t c = 0; c < channels; ++c) {
      const op_t xi = static_cast<op_t>(x[o + c]);
      const op_t g = leaky_relu_grad_from_output(static_cast<op_t>(dy[o + c]), xi * s[c] + t[c], slope);
      sum_g[c] += g;
      sum_gd[c] += g * (xi - m[c]);
    }
  }
}

// dx = g * p[k] + x * q[k] + r[k] over planes k0..k1 of n elements, g = dy * mask(x * s[k] + t[k]).
template <typename scalar_t, typename op_t = at::opmath_type<scalar_t>>
GANPLUG_SIMD_CLONES void planes_dx(const scalar_t* __restrict__ dy, const scalar_t* __restrict__ x,
                                   scalar_t* __restrict__ dx, int64_t k0, int64_t k1, int64_t n,
                                   const op_t* __restrict__ s, const op_t* __restrict__ t, const op_t* __restrict__ p,
                                   const op_t* __restrict__ q, const op_t* __restrict__ r, op_t slope) {
  for (int64_t k = k0; k < k1; ++k) {
    const int64_t o = k * n;
    const op_t sk = s[k], tk = t[k], pk = p[k], qk = q[k], rk = r[k];
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      const op_t xi = static_cast<op_t>(x[o + i]);
      const op_t g = leaky_relu_grad_from_output(static_cast<op_t>(dy[o + i]), xi * sk + tk, slope);
      dx[o + i] = static_cast<scalar_t>(g * pk + xi * qk + rk);
    }
  }
}

template <typename scalar_t, typename op_t = at::opmath_type<scalar_t>>
GANPLUG_SIMD_CLONES void rows_dx(const scalar_t* __restrict__ dy, const scalar_t* __restrict__ x,
                                 scalar_t* __restrict__ dx, const op_t* __restrict__ s, const op_t* __restrict__ t,
                                 const op_t* __restrict__ p, const op_t* __restrict__ q, const op_t* __restrict__ r,
                                 int64_t rows, int64_t channels, op_t slope) {
  for (int64_t row = 0; row < rows; ++row) {
    const int64_t o = row * channels;
    for (int64_t c = 0; c < channels; ++c) {
      const op_t xi = static_cast<op_t>(x[o + c]);
      const op_t g = leaky_relu_grad_from_output(static_cast<op_t>(dy[o + c]), xi * s[c] + t[c], slope);
      dx[o + c] = static_cast<scalar_t>(g * p[c] + xi * q[c] + r[c]);
    }
  }
}

// Runs planes(p0, p1) over ranges of the planes p = n * C + c, or rows(n) for every sample n (channels innermost),
// in parallel.
template <typename Planes, typename Rows>
void for_each_chunk(const Geometry& g, const Planes& planes, const Rows& rows) {
  if (g.innermost) {
    at::parallel_for(0, g.batch, grain(g.inner * g.channels), [&](int64_t n0, int64_t n1) {
      for (int64_t n = n0; n < n1; ++n) rows(n);
    });
  } else {
    at::parallel_for(0, g.batch * g.channels, grain(g.inner), planes);
  }
}

// A statistic's mean and biased variance, in the compute type, from the sums t1 = sum(x - shift), t2 = sum((x -
// shift)^2) over its `count` elements, combined in float64.
template <typename op_t>
void mean_and_var(double shift, double t1, double t2, double count, op_t& mean, op_t& var) {
  const double e1 = t1 / count;
  mean = static_cast<op_t>(shift + e1);
  var = static_cast<op_t>(std::max(t2 / count - e1 * e1, 0.0));
}

// 1 / sqrt(var + eps) of a stored variance, in float64.
template <typename op_t>
double rstd_of(op_t var, double eps) {
  return 1.0 / std::sqrt(static_cast<double>(var) + eps);
}

// The dx coefficients of a statistic, dx = g * p + x * q + r: q = -rstd^2 b, r = mean rstd^2 b - rstd a, where
// a = mean(h) and b = mean(h * x_hat) over its elements, h = g * weight.
template <typename op_t>
std::pair<op_t, op_t> dx_coefficients(double rs, op_t mean, double a, double b) {
  return {static_cast<op_t>(-rs * rs * b), static_cast<op_t>(static_cast<double>(mean) * rs * rs * b - rs * a)};
}

// scale and shift per (sample, channel) from the statistics (as stored, in the compute type), weight and bias:
// scale = weight / sqrt(var + eps), shift = bias - mean * scale. The forward and the backward compute them alike.
// Also m, the mean per (sample, channel); returns rstd per statistic (in float64).
template <typename op_t>
std::vector<double> fold(const Geometry& g, const std::vector<int64_t>& stat, const op_t* mean, const op_t* var,
                         const std::vector<op_t>& w, const std::vector<op_t>& b, double eps, std::vector<op_t>& s,
                         std::vector<op_t>& t, std::vector<op_t>& m) {
  std::vector<double> rstd(static_cast<size_t>(g.num_stats()));
  for (size_t k = 0; k < rstd.size(); ++k) rstd[k] = rstd_of(var[k], eps);
  const size_t size = w.size();
  s.resize(size);
  t.resize(size);
  m.resize(size);
  for (size_t i = 0; i < size; ++i) {
    const int64_t k = stat[i];
    s[i] = w[i] * static_cast<op_t>(rstd[k]);
    t[i] = b[i] - mean[k] * s[i];
    m[i] = mean[k];
  }
  return rstd;
}

// d weight = sum(g * x_hat), d bias = sum(g) from the sums per (sample, channel) and rstd per statistic (`stat(n, c)`
// names it): per (sample, channel) as they are for (N, C) coefficients, else per channel in batch order (in parallel
// over ranges of channels, each read row by row).
template <typename op_t, typename Stat>
void reduce_coefficient_grads(const Geometry& g, const Stat& stat, const std::vector<op_t>& sum_g,
                              const std::vector<op_t>& sum_gd, const std::vector<double>& rstd, at::Tensor& d_weight,
                              at::Tensor& d_bias) {
  const auto reduce = [&](at::Tensor& grad, bool normalised) {
    if (grad.numel() == 0) return;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "norm_leaky_relu_coefficients", [&] {
      scalar_t* out = grad.data_ptr<scalar_t>();
      const bool each_sample = grad.dim() == 2;
      at::parallel_for(0, g.channels, grain(g.batch * 4), [&](int64_t c0, int64_t c1) {
        std::vector<double> total(static_cast<size_t>(c1 - c0), 0.0);
        for (int64_t n = 0; n < g.batch; ++n) {
          const int64_t row = n * g.channels;
          for (int64_t c = c0; c < c1; ++c) {
            const double term = normalised ? static_cast<double>(sum_gd[row + c]) * rstd[stat(n, c)]
                                           : static_cast<double>(sum_g[row + c]);
            if (each_sample) {
              out[row + c] = static_cast<scalar_t>(term);
            } else {
              total[c - c0] += term;
            }
          }
        }
        if (!each_sample) {
          for (int64_t c = c0; c < c1; ++c) out[c] = static_cast<scalar_t>(total[c - c0]);
        }
      });
    });
  };
  reduce(d_weight, true);
  reduce(d_bias, false);
}

// weight or bias of (sample n, channel c), (C,) or (N, C), in the compute type; `absent` if not given.
template <typename scalar_t, typename op_t = at::opmath_type<scalar_t>>
struct Coefficient {
  at::Tensor held;
  const scalar_t* p = nullptr;
  int64_t row = 0;  // elements per sample: 0 for (C,)
  op_t absent;
  Coefficient(const OptTensor& t, op_t absent_value) : absent(absent_value) {
    if (!t.has_value()) return;
    held = t->contiguous();
    p = held.const_data_ptr<scalar_t>();
    row = held.dim() == 2 ? held.size(1) : 0;
  }
  op_t operator()(int64_t n, int64_t c) const { return p == nullptr ? absent : static_cast<op_t>(p[n * row + c]); }
};

// Group norm with channels in planes: a statistic's C / G planes are one contiguous block, so one task per statistic
// takes its sums, its mean and variance, and normalises its block while it is in cache, with no pass over all
// (sample, channel) pairs outside the parallel region (that serial work decided the time on small planes, 0.77x eager
// at 64x256x4x4 on 2 threads). The same sums in the same order as the general path: float32 results are its bit for
// bit (float64 dx may differ in the last bit, as the compiler contracts the dx expression).
template <typename scalar_t, typename op_t = at::opmath_type<scalar_t>>
void group_planes_forward(const Geometry& g, const scalar_t* xp, scalar_t* yp, op_t* mp, op_t* vp,
                          const OptTensor& weight, const OptTensor& bias, double eps, op_t slope) {
  const Coefficient<scalar_t> w(weight, op_t(1)), b(bias, op_t(0));
  const int64_t per_group = g.channels / g.groups, size = per_group * g.inner;
  const double count = static_cast<double>(size);
  at::parallel_for(0, g.num_stats(), grain(2 * size), [&](int64_t k0, int64_t k1) {
    std::vector<op_t> scale(static_cast<size_t>(per_group)), offset(scale.size());  // per plane of the block
    for (int64_t k = k0; k < k1; ++k) {
      const scalar_t* xk = xp + k * size;
      const op_t shift = static_cast<op_t>(xk[0]);
      op_t s1, s2;
      planes_moments(xk, 0, 1, size, &shift, &s1, &s2);
      mean_and_var(static_cast<double>(shift), static_cast<double>(s1), static_cast<double>(s2), count, mp[k], vp[k]);
      const op_t mean = mp[k], rstd = static_cast<op_t>(rstd_of(vp[k], eps));
      const int64_t n = k / g.groups, c0 = k % g.groups * per_group;
      for (int64_t j = 0; j < per_group; ++j) {
        scale[j] = w(n, c0 + j) * rstd;
        offset[j] = b(n, c0 + j) - mean * scale[j];
      }
      planes_apply(xk, yp + k * size, 0, per_group, g.inner, scale.data(), offset.data(), slope);
    }
  });
}

// The backward of group_planes_forward, one task per statistic as there: its planes' sums of g and g * (x - mean)
// (kept per (sample, channel) for the coefficients' gradients), a = mean(h) and b = mean(h * x_hat) added in channel
// order in float64, then dx over its block.
template <typename scalar_t, typename op_t = at::opmath_type<scalar_t>>
void group_planes_backward(const Geometry& g, const scalar_t* dyp, const scalar_t* xp, scalar_t* dxp, const op_t* mp,
                           const op_t* vp, const OptTensor& weight, const OptTensor& bias, double eps, op_t slope,
                           op_t* sum_g, op_t* sum_gd, double* rstd_of_stat) {
  const Coefficient<scalar_t> w(weight, op_t(1)), b(bias, op_t(0));
  const int64_t per_group = g.channels / g.groups, size = per_group * g.inner;
  const double inv_count = 1.0 / static_cast<double>(size);
  at::parallel_for(0, g.num_stats(), grain(3 * size), [&](int64_t k0, int64_t k1) {
    // per plane of the block: weight, scale, offset, and the mean, q and r of the statistic repeated
    const size_t planes = static_cast<size_t>(per_group);
    std::vector<op_t> wv(planes), scale(planes), offset(planes), mean_v(planes), q_v(planes), r_v(planes);
    for (int64_t k = k0; k < k1; ++k) {
      const double rs = rstd_of(vp[k], eps);
      rstd_of_stat[k] = rs;
      const op_t mean = mp[k], rstd = static_cast<op_t>(rs);
      const int64_t n = k / g.groups, c0 = k % g.groups * per_group, o = k * size, i0 = n * g.channels + c0;
      for (int64_t j = 0; j < per_group; ++j) {
        wv[j] = w(n, c0 + j);
        scale[j] = wv[j] * rstd;
        offset[j] = b(n, c0 + j) - mean * scale[j];
        mean_v[j] = mean;
      }
      planes_grad_sums(dyp + o, xp + o, 0, per_group, g.inner, scale.data(), offset.data(), mean_v.data(), slope,
                       sum_g + i0, sum_gd + i0);
      double a = 0.0, bsum = 0.0;
      for (int64_t j = 0; j < per_group; ++j) {
        a += static_cast<double>(wv[j]) * sum_g[i0 + j];
        bsum += static_cast<double>(wv[j]) * sum_gd[i0 + j] * rs;
      }
      const auto [q, r] = dx_coefficients(rs, mean, a * inv_count, bsum * inv_count);
      std::fill(q_v.begin(), q_v.end(), q);
      std::fill(r_v.begin(), r_v.end(), r);
      planes_dx(dyp + o, xp + o, dxp + o, 0, per_group, g.inner, scale.data(), offset.data(), scale.data(), q_v.data(),
                r_v.data(), slope);
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> norm_act_cpu(const at::Tensor& input, int64_t groups,
                                                            const OptTensor& weight, const OptTensor& bias,
                                                            double eps, double negative_slope) {
  check_norm_act(input, groups, weight, bias, eps, negative_slope, false);
  const bool innermost = channels_innermost(input);
  const at::Tensor x = in_layout(input, innermost);
  at::Tensor out = empty_in_layout(x, innermost);
  const Geometry g = geometry(x, groups, innermost);
  at::Tensor mean = at::empty(stats_shape(x, groups), x.options().dtype(stats_dtype(x)));
  at::Tensor var = at::empty_like(mean);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "norm_leaky_relu_cpu", [&] {
    using op_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    if (g.groups > 0 && !g.innermost) {
      group_planes_forward(g, xp, out.data_ptr<scalar_t>(), mean.data_ptr<op_t>(), var.data_ptr<op_t>(), weight, bias,
                           eps, static_cast<op_t>(negative_slope));
      return;
    }
    // Shifted sums per chunk: a statistic's whole block for group norm in planes (its C / G planes are
    // contiguous) or with one group (a whole sample, in either layout), else one (sample, channel).
    const bool block = g.groups > 0 && (!g.innermost || g.groups == 1);
    const size_t chunks = static_cast<size_t>(block ? g.num_stats() : g.batch * g.channels);
    const std::vector<int64_t> stat = g.stat_index();
    std::vector<op_t> shift_of_stat(static_cast<size_t>(g.num_stats())), k(chunks), s1(chunks, 0), s2(chunks, 0);
    for (size_t i = 0; i < shift_of_stat.size(); ++i) {
      shift_of_stat[i] = static_cast<op_t>(xp[g.first_of_stat(static_cast<int64_t>(i))]);
    }
    if (block) {
      k = shift_of_stat;
    } else {
      for (size_t i = 0; i < chunks; ++i) k[i] = shift_of_stat[stat[i]];
    }
    const op_t* kp = k.data();
    op_t *s1p = s1.data(), *s2p = s2.data();
    if (block) {
      const int64_t size = g.channels / g.groups * g.inner;
      at::parallel_for(0, g.num_stats(), grain(size),
                       [&](int64_t p0, int64_t p1) { planes_moments(xp, p0, p1, size, kp, s1p, s2p); });
    } else {
      for_each_chunk(
          g, [&](int64_t p0, int64_t p1) { planes_moments(xp, p0, p1, g.inner, kp, s1p, s2p); },
          [&](int64_t n) {
            const int64_t o = n * g.channels;
            rows_moments(xp + o * g.inner, kp + o, s1p + o, s2p + o, g.inner, g.channels);
          });
    }
    // Per statistic, in (n, c) order, in float64: mean = k + E[d], var = E[d^2] - E[d]^2.
    std::vector<double> t1(static_cast<size_t>(g.num_stats()), 0.0), t2(t1.size(), 0.0);
    for (size_t i = 0; i < chunks; ++i) {
      const int64_t k_i = block ? static_cast<int64_t>(i) : stat[i];
      t1[k_i] += static_cast<double>(s1[i]);
      t2[k_i] += static_cast<double>(s2[i]);
    }
    op_t* mp = mean.data_ptr<op_t>();
    op_t* vp = var.data_ptr<op_t>();
    const double count = static_cast<double>(g.stat_count());
    for (size_t i = 0; i < t1.size(); ++i) {
      mean_and_var(static_cast<double>(shift_of_stat[i]), t1[i], t2[i], count, mp[i], vp[i]);
    }
    std::vector<op_t> s, t, m;
    fold(g, stat, mp, vp, per_sample<scalar_t>(weight, g, op_t(1)), per_sample<scalar_t>(bias, g, op_t(0)), eps, s, t,
         m);
    scalar_t* yp = out.data_ptr<scalar_t>();
    const op_t *sp = s.data(), *tp = t.data();
    const op_t slope = static_cast<op_t>(negative_slope);
    for_each_chunk(
        g, [&](int64_t p0, int64_t p1) { planes_apply(xp, yp, p0, p1, g.inner, sp, tp, slope); },
        [&](int64_t n) {
          const int64_t o = n * g.channels;
          rows_apply(xp + o * g.inner, sp + o, tp + o, yp + o * g.inner, g.inner, g.channels, slope);
        });
  });
  return {out, mean, var};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> norm_act_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& mean, const at::Tensor& var,
    int64_t groups, const OptTensor& weight, const OptTensor& bias, double eps, double negative_slope) {
  check_norm_act_backward(grad_output, input, mean, var, groups, weight, bias, eps, negative_slope);
  const bool innermost = channels_innermost(input);
  const at::Tensor x = in_layout(input, innermost);
  const at::Tensor dy = in_layout(grad_output, innermost);
  at::Tensor dx = empty_in_layout(x, innermost);
  at::Tensor d_weight = empty_coefficient_grad(weight, x), d_bias = empty_coefficient_grad(bias, x);
  const Geometry g = geometry(x, groups, innermost);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "norm_leaky_relu_backward_cpu", [&] {
    using op_t = at::opmath_type<scalar_t>;
    const at::Tensor mean_c = mean.contiguous(), var_c = var.contiguous();
    const op_t* mp = mean_c.const_data_ptr<op_t>();
    const op_t* vp = var_c.const_data_ptr<op_t>();
    const size_t pairs = static_cast<size_t>(g.batch * g.channels);
    std::vector<op_t> sum_g(pairs, 0), sum_gd(pairs, 0);
    const scalar_t* dyp = dy.const_data_ptr<scalar_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    std::vector<double> rstd(static_cast<size_t>(g.num_stats()));
    if (g.groups > 0 && !g.innermost) {
      group_planes_backward(g, dyp, xp, dx.data_ptr<scalar_t>(), mp, vp, weight, bias, eps,
                            static_cast<op_t>(negative_slope), sum_g.data(), sum_gd.data(), rstd.data());
      std::vector<int64_t> group_of_channel(static_cast<size_t>(g.channels));
      for (int64_t c = 0; c < g.channels; ++c) group_of_channel[c] = c / (g.channels / g.groups);
      const auto group_of = [&](int64_t n, int64_t c) { return n * g.groups + group_of_channel[c]; };
      reduce_coefficient_grads(g, group_of, sum_g, sum_gd, rstd, d_weight, d_bias);
      return;
    }
    const std::vector<int64_t> stat = g.stat_index();
    const std::vector<op_t> w = per_sample<scalar_t>(weight, g, op_t(1));
    std::vector<op_t> s, t, m;
    rstd = fold(g, stat, mp, vp, w, per_sample<scalar_t>(bias, g, op_t(0)), eps, s, t, m);
    const op_t *sp = s.data(), *tp = t.data(), *mq = m.data();
    op_t *gp = sum_g.data(), *gdp = sum_gd.data();
    const op_t slope = static_cast<op_t>(negative_slope);
    for_each_chunk(
        g,
        [&](int64_t p0, int64_t p1) { planes_grad_sums(dyp, xp, p0, p1, g.inner, sp, tp, mq, slope, gp, gdp); },
        [&](int64_t n) {
          const int64_t o = n * g.channels;
          rows_grad_sums(dyp + o * g.inner, xp + o * g.inner, sp + o, tp + o, mq + o, gp + o, gdp + o, g.inner,
                         g.channels, slope);
        });
    // Per statistic: a = mean(h), b = mean(h * x_hat) over its elements, h = g * weight, in float64.
    std::vector<double> a(rstd.size(), 0.0), b(rstd.size(), 0.0);
    for (size_t i = 0; i < pairs; ++i) {
      const int64_t k = stat[i];
      a[k] += static_cast<double>(w[i]) * sum_g[i];
      b[k] += static_cast<double>(w[i]) * sum_gd[i] * rstd[k];
    }
    // dx = rstd * (h - a - x_hat * b) = g * (w rstd) + x * (-rstd^2 b) + (mean rstd^2 b - rstd a).
    const double inv_count = 1.0 / static_cast<double>(g.stat_count());
    std::vector<op_t> q_of_stat(rstd.size()), r_of_stat(rstd.size());
    for (size_t k = 0; k < rstd.size(); ++k) {
      std::tie(q_of_stat[k], r_of_stat[k]) = dx_coefficients(rstd[k], mp[k], a[k] * inv_count, b[k] * inv_count);
    }
    std::vector<op_t> p(pairs), q(pairs), r(pairs);
    for (size_t i = 0; i < pairs; ++i) {
      const int64_t k = stat[i];
      p[i] = s[i];  // weight * rstd, as the forward scaled
      q[i] = q_of_stat[k];
      r[i] = r_of_stat[k];
    }
    scalar_t* dxp = dx.data_ptr<scalar_t>();
    const op_t *pp = p.data(), *qp = q.data(), *rp = r.data();
    for_each_chunk(
        g,
        [&](int64_t k0, int64_t k1) { planes_dx(dyp, xp, dxp, k0, k1, g.inner, sp, tp, pp, qp, rp, slope); },
        [&](int64_t n) {
          const int64_t o = n * g.channels;
          rows_dx(dyp + o * g.inner, xp + o * g.inner, dxp + o * g.inner, sp + o, tp + o, pp + o, qp + o, rp + o,
                  g.inner, g.channels, slope);
        });
    const auto stat_of = [&](int64_t n, int64_t c) { return stat[static_cast<size_t>(n * g.channels + c)]; };
    reduce_coefficient_grads(g, stat_of, sum_g, sum_gd, rstd, d_weight, d_bias);
  });
  return {dx, d_weight, d_bias};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_leaky_relu_cpu(const at::Tensor& input,
                                                                         const OptTensor& weight,
                                                                         const OptTensor& bias, double eps,
                                                                         double negative_slope) {
  return norm_act_cpu(input, 0, weight, bias, eps, negative_slope);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_leaky_relu_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& mean, const at::Tensor& var,
    const OptTensor& weight, const OptTensor& bias, double eps, double negative_slope) {
  return norm_act_backward_cpu(grad_output, input, mean, var, 0, weight, bias, eps, negative_slope);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_leaky_relu_cpu(const at::Tensor& input, int64_t num_groups,
                                                                         const OptTensor& weight,
                                                                         const OptTensor& bias, double eps,
                                                                         double negative_slope) {
  TORCH_CHECK_VALUE(num_groups >= 1, "group_norm_leaky_relu: num_groups must be >= 1, got ", num_groups);
  return norm_act_cpu(input, num_groups, weight, bias, eps, negative_slope);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_leaky_relu_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& mean, const at::Tensor& var,
    int64_t num_groups, const OptTensor& weight, const OptTensor& bias, double eps, double negative_slope) {
  TORCH_CHECK_VALUE(num_groups >= 1, "group_norm_leaky_relu_backward: num_groups must be >= 1, got ", num_groups);
  return norm_act_backward_cpu(grad_output, input, mean, var, num_groups, weight, bias, eps, negative_slope);
}

}  // namespace

TORCH_LIBRARY_IMPL(ganplug, CPU, m) {
  m.impl("batch_norm_leaky_relu", &batch_norm_leaky_relu_cpu);
  m.impl("batch_norm_leaky_relu_backward", &batch_norm_leaky_relu_backward_cpu);
  m.impl("group_norm_leaky_relu", &group_norm_leaky_relu_cpu);
  m.impl("group_norm_leaky_relu_backward", &group_norm_leaky_relu_backward_cpu);
}

}  // namespace ganplug
