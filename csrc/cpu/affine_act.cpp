// CPU kernels of affine_leaky_relu and its backward over (N, C, *) maps, in the layouts of
// ../bias_act.h: one pass each. The backward reads the input, not the output: the mask is the sign of
// the pre-activation, recomputed exactly as the forward computed it. The coefficient gradients sum
// fixed chunks (a plane, or one sample's rows in order) and add the samples in batch order, so they
// do not depend on the thread count.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../affine_act.h"
#include "../loss_math.h"
#include "simd.h"

namespace ganplug {
namespace {

constexpr int64_t kTaskElements = int64_t{1} << 15;  // about this many elements per parallel task

// Work units of `unit` elements per parallel task.
int64_t grain(int64_t unit) { return std::max<int64_t>(1, kTaskElements / std::max<int64_t>(unit, 1)); }

// scale or shift as one coefficient per (sample, channel), row-major (N, C), in the compute type;
// `absent` (1 or 0) where it is not given.
template <typename scalar_t, typename op_t = at::opmath_type<scalar_t>>
std::vector<op_t> per_sample(const std::optional<at::Tensor>& t, int64_t batch, int64_t channels, op_t absent) {
  std::vector<op_t> out(static_cast<size_t>(batch * channels), absent);
  if (!t.has_value()) return out;
  const at::Tensor c = t->contiguous();
  const scalar_t* p = c.const_data_ptr<scalar_t>();
  const bool each_sample = c.dim() == 2;
  for (int64_t n = 0; n < batch; ++n) {
    for (int64_t k = 0; k < channels; ++k) out[n * channels + k] = static_cast<op_t>(p[(each_sample ? n * channels : 0) + k]);
  }
  return out;
}

// y[i] = leaky_relu(x[i] * s + t) over one plane of n elements.
template <typename scalar_t, typename op_t = at::opmath_type<scalar_t>>
GANPLUG_SIMD_CLONES void plane_forward(const scalar_t* __restrict__ x, scalar_t* __restrict__ y, int64_t n, op_t s,
                                       op_t t, op_t slope) {
  for (int64_t i = 0; i < n; ++i) y[i] = static_cast<scalar_t>(leaky_relu(static_cast<op_t>(x[i]) * s + t, slope));
}

// y[r, c] = leaky_relu(x[r, c] * s[c] + t[c]) over `rows` rows of `channels` elements.
template <typename scalar_t, typename op_t = at::opmath_type<scalar_t>>
GANPLUG_SIMD_CLONES void rows_forward(const scalar_t* __restrict__ x, const op_t* __restrict__ s,
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

// Over one plane: dx = g * s with g = dy * mask(x * s + t); *sum_g and *sum_gx get the sums of g and g * x.
template <typename scalar_t, typename op_t = at::opmath_type<scalar_t>>
GANPLUG_SIMD_CLONES void plane_backward(const scalar_t* __restrict__ dy, const scalar_t* __restrict__ x,
                                        scalar_t* __restrict__ dx, int64_t n, op_t s, op_t t, op_t slope,
                                        op_t* sum_g, op_t* sum_gx) {
  op_t a = 0, b = 0;
#pragma omp simd reduction(+ : a, b)
  for (int64_t i = 0; i < n; ++i) {
    const op_t xi = static_cast<op_t>(x[i]);
    const op_t g = leaky_relu_grad_from_output(static_cast<op_t>(dy[i]), xi * s + t, slope);
    dx[i] = static_cast<scalar_t>(g * s);
    a += g;
    b += g * xi;
  }
  *sum_g = a;
  *sum_gx = b;
}

// The same over `rows` rows of `channels` elements with coefficients per channel, the sums per
// channel accumulated row by row into sum_g[c] and sum_gx[c] (which start at zero).
template <typename scalar_t, typename op_t = at::opmath_type<scalar_t>>
GANPLUG_SIMD_CLONES void rows_backward(const scalar_t* __restrict__ dy, const scalar_t* __restrict__ x,
                                       scalar_t* __restrict__ dx, const op_t* __restrict__ s,
                                       const op_t* __restrict__ t, op_t* __restrict__ sum_g,
                                       op_t* __restrict__ sum_gx, int64_t rows, int64_t channels, op_t slope) {
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t o = r * channels;
    for (int64_t c = 0; c < channels; ++c) {
      const op_t xi = static_cast<op_t>(x[o + c]);
      const op_t g = leaky_relu_grad_from_output(static_cast<op_t>(dy[o + c]), xi * s[c] + t[c], slope);
      dx[o + c] = static_cast<scalar_t>(g * s[c]);
      sum_g[c] += g;
      sum_gx[c] += g * xi;
    }
  }
}

at::Tensor affine_leaky_relu_cpu(const at::Tensor& input, const std::optional<at::Tensor>& scale,
                                 const std::optional<at::Tensor>& shift, double negative_slope) {
  check_affine_act(input, scale, shift, negative_slope, "affine_leaky_relu");
  const bool innermost = channels_innermost(input);
  const at::Tensor x = in_layout(input, innermost);
  at::Tensor out = empty_in_layout(x, innermost);
  const int64_t batch = x.size(0), channels = x.size(1), inner = x.numel() / (batch * channels);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "affine_leaky_relu_cpu", [&] {
    using op_t = at::opmath_type<scalar_t>;
    const std::vector<op_t> s = per_sample<scalar_t>(scale, batch, channels, op_t(1));
    const std::vector<op_t> t = per_sample<scalar_t>(shift, batch, channels, op_t(0));
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* yp = out.data_ptr<scalar_t>();
    const op_t* sp = s.data();
    const op_t* tp = t.data();
    const op_t slope = static_cast<op_t>(negative_slope);
    if (innermost) {  // rows of channels; a task takes whole rows of one or more samples
      const int64_t rows = batch * inner;
      at::parallel_for(0, rows, grain(channels), [=](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1;) {
          const int64_t n = r / inner, end = std::min(r1, (n + 1) * inner);
          rows_forward(xp + r * channels, sp + n * channels, tp + n * channels, yp + r * channels, end - r, channels,
                       slope);
          r = end;
        }
      });
      return;
    }
    at::parallel_for(0, batch * channels, grain(inner), [=](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) plane_forward(xp + p * inner, yp + p * inner, inner, sp[p], tp[p], slope);
    });
  });
  return out;
}

// (dx, d scale, d shift): the sums per (sample, channel) first, then over the batch in batch order
// where the coefficient is per channel.
std::tuple<at::Tensor, at::Tensor, at::Tensor> affine_leaky_relu_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const std::optional<at::Tensor>& scale,
    const std::optional<at::Tensor>& shift, double negative_slope) {
  check_affine_act_backward(grad_output, input, scale, shift, negative_slope);
  const bool innermost = channels_innermost(input);
  const at::Tensor x = in_layout(input, innermost);
  const at::Tensor dy = in_layout(grad_output, innermost);
  at::Tensor dx = empty_in_layout(x, innermost);
  at::Tensor d_scale = empty_coefficient_grad(scale, x), d_shift = empty_coefficient_grad(shift, x);
  const int64_t batch = x.size(0), channels = x.size(1), inner = x.numel() / (batch * channels);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "affine_leaky_relu_backward_cpu", [&] {
    using op_t = at::opmath_type<scalar_t>;
    const std::vector<op_t> s = per_sample<scalar_t>(scale, batch, channels, op_t(1));
    const std::vector<op_t> t = per_sample<scalar_t>(shift, batch, channels, op_t(0));
    std::vector<op_t> sums_g(s.size(), op_t(0)), sums_gx(s.size(), op_t(0));
    const scalar_t* dyp = dy.const_data_ptr<scalar_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* dxp = dx.data_ptr<scalar_t>();
    const op_t* sp = s.data();
    const op_t* tp = t.data();
    op_t* gp = sums_g.data();
    op_t* gxp = sums_gx.data();
    const op_t slope = static_cast<op_t>(negative_slope);
    if (innermost) {  // a task takes whole samples, each summed row by row
      at::parallel_for(0, batch, grain(inner * channels), [=](int64_t n0, int64_t n1) {
        for (int64_t n = n0; n < n1; ++n) {
          const int64_t o = n * inner * channels, k = n * channels;
          rows_backward(dyp + o, xp + o, dxp + o, sp + k, tp + k, gp + k, gxp + k, inner, channels, slope);
        }
      });
    } else {
      at::parallel_for(0, batch * channels, grain(inner), [=](int64_t p0, int64_t p1) {
        for (int64_t p = p0; p < p1; ++p) {
          const int64_t o = p * inner;
          plane_backward(dyp + o, xp + o, dxp + o, inner, sp[p], tp[p], slope, gp + p, gxp + p);
        }
      });
    }
    // Each coefficient's gradient from its sums: per (sample, channel) as they are, per channel added in batch order.
    const auto reduce = [&](at::Tensor& grad, const std::vector<op_t>& sums) {
      if (grad.numel() == 0) return;
      scalar_t* out = grad.data_ptr<scalar_t>();
      if (grad.dim() == 2) {
        for (size_t i = 0; i < sums.size(); ++i) out[i] = static_cast<scalar_t>(sums[i]);
        return;
      }
      for (int64_t c = 0; c < channels; ++c) {
        op_t total = 0;
        for (int64_t n = 0; n < batch; ++n) total += sums[n * channels + c];
        out[c] = static_cast<scalar_t>(total);
      }
    };
    reduce(d_scale, sums_gx);
    reduce(d_shift, sums_g);
  });
  return {dx, d_scale, d_shift};
}

}  // namespace

TORCH_LIBRARY_IMPL(ganplug, CPU, m) {
  m.impl("affine_leaky_relu", &affine_leaky_relu_cpu);
  m.impl("affine_leaky_relu_backward", &affine_leaky_relu_backward_cpu);
}

}  // namespace ganplug
