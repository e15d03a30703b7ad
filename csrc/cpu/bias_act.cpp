// CPU kernels of bias_leaky_relu and its backward over (N, C, *) maps: one pass each, in the
// layouts of ../bias_act.h. The bias gradient sums fixed chunks (a plane, or a block of rows) and
// adds their partial sums in a fixed order, so it does not depend on the thread count.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "../bias_act.h"
#include "../checks.h"
#include "../loss_math.h"

namespace ganplug {
namespace {

constexpr int64_t kTaskElements = int64_t{1} << 15;  // about this many elements per parallel task

// Units (planes or rows) of `unit` elements per parallel task.
int64_t grain(int64_t unit) { return std::max<int64_t>(1, kTaskElements / std::max<int64_t>(unit, 1)); }

// The loops below take restrict pointers so the compiler vectorises them.

// y[i] = leaky_relu(x[i] + b) over one plane of n elements.
template <typename scalar_t, typename op_t = at::opmath_type<scalar_t>>
void plane_forward(const scalar_t* __restrict__ x, scalar_t* __restrict__ y, int64_t n, op_t b, op_t slope) {
  for (int64_t i = 0; i < n; ++i) y[i] = static_cast<scalar_t>(leaky_relu(static_cast<op_t>(x[i]) + b, slope));
}

// y[c] = leaky_relu(x[c] + b[c]) over one row of `cols` channels; b null for no bias.
template <typename scalar_t, typename op_t = at::opmath_type<scalar_t>>
void row_forward(const scalar_t* __restrict__ x, const scalar_t* __restrict__ b, scalar_t* __restrict__ y,
                 int64_t cols, op_t slope) {
  if (b == nullptr) {
    for (int64_t c = 0; c < cols; ++c) y[c] = static_cast<scalar_t>(leaky_relu(static_cast<op_t>(x[c]), slope));
    return;
  }
  for (int64_t c = 0; c < cols; ++c) {
    y[c] = static_cast<scalar_t>(leaky_relu(static_cast<op_t>(x[c]) + static_cast<op_t>(b[c]), slope));
  }
}

// dz[i] = dy[i] * mask(y[i]) over one plane of n elements; returns the sum of the dz (before
// rounding), accumulated in kLanes interleaved partial sums that are then added in lane order.
template <typename scalar_t, typename op_t = at::opmath_type<scalar_t>>
op_t plane_backward(const scalar_t* __restrict__ dy, const scalar_t* __restrict__ y, scalar_t* __restrict__ dz,
                    int64_t n, op_t slope) {
  constexpr int64_t kLanes = 16;
  op_t lane[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int64_t k = 0; k < kLanes; ++k) {
      const op_t g = leaky_relu_grad_from_output(static_cast<op_t>(dy[i + k]), static_cast<op_t>(y[i + k]), slope);
      dz[i + k] = static_cast<scalar_t>(g);
      lane[k] += g;
    }
  }
  for (int64_t k = 0; i < n; ++i, ++k) {
    const op_t g = leaky_relu_grad_from_output(static_cast<op_t>(dy[i]), static_cast<op_t>(y[i]), slope);
    dz[i] = static_cast<scalar_t>(g);
    lane[k] += g;
  }
  op_t sum = 0;
  for (int64_t k = 0; k < kLanes; ++k) sum += lane[k];
  return sum;
}

at::Tensor bias_leaky_relu_cpu(const at::Tensor& input, const std::optional<at::Tensor>& bias,
                               double negative_slope) {
  check_bias_act(input, bias, negative_slope);
  const bool innermost = channels_innermost(input);
  const at::Tensor x = in_layout(input, innermost);
  const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  at::Tensor out = empty_in_layout(x, innermost);
  const int64_t channels = x.size(1);
  const int64_t units = innermost ? x.numel() / channels : x.size(0) * channels;  // rows or planes
  const int64_t unit = x.numel() / units;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bias_leaky_relu_cpu", [&] {
    using op_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* bp = b.defined() ? b.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* yp = out.data_ptr<scalar_t>();
    const op_t slope = static_cast<op_t>(negative_slope);
    if (innermost) {
      at::parallel_for(0, units, grain(unit), [=](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) row_forward(xp + r * unit, bp, yp + r * unit, unit, slope);
      });
      return;
    }
    at::parallel_for(0, units, grain(unit), [=](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        const op_t bias_c = bp != nullptr ? static_cast<op_t>(bp[p % channels]) : op_t(0);
        plane_forward(xp + p * unit, yp + p * unit, unit, bias_c, slope);
      }
    });
  });
  return out;
}

// Planes: each plane's sum is computed whole by one task, then db[c] adds the planes of channel c
// in batch order. Channels innermost: leaky_relu_bias_backward over rows (fixed row blocks).
std::tuple<at::Tensor, at::Tensor> bias_leaky_relu_backward_cpu(const at::Tensor& grad_output,
                                                                const at::Tensor& output,
                                                                double negative_slope) {
  check_bias_act_backward(grad_output, output);
  const bool innermost = channels_innermost(output);
  const at::Tensor y = in_layout(output, innermost);
  const at::Tensor dy = in_layout(grad_output, innermost);
  if (innermost) return bias_act_backward_channels_innermost(dy, y, negative_slope);
  at::Tensor dz = empty_in_layout(y, false);
  const int64_t batch = y.size(0), channels = y.size(1);
  const int64_t planes = batch * channels, plane = y.numel() / planes;
  at::Tensor db = at::empty({channels}, y.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "bias_leaky_relu_backward_cpu", [&] {
    using op_t = at::opmath_type<scalar_t>;
    const scalar_t* dyp = dy.const_data_ptr<scalar_t>();
    const scalar_t* yp = y.const_data_ptr<scalar_t>();
    scalar_t* dzp = dz.data_ptr<scalar_t>();
    const op_t slope = static_cast<op_t>(negative_slope);
    std::vector<op_t> partial(static_cast<size_t>(planes));
    op_t* partial_p = partial.data();
    at::parallel_for(0, planes, grain(plane), [=](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        partial_p[p] = plane_backward(dyp + p * plane, yp + p * plane, dzp + p * plane, plane, slope);
      }
    });
    scalar_t* dbp = db.data_ptr<scalar_t>();
    for (int64_t c = 0; c < channels; ++c) {
      op_t s = 0;
      for (int64_t n = 0; n < batch; ++n) s += partial_p[n * channels + c];
      dbp[c] = static_cast<scalar_t>(s);
    }
  });
  return {dz, db};
}

}  // namespace

TORCH_LIBRARY_IMPL(ganplug, CPU, m) {
  m.impl("bias_leaky_relu", &bias_leaky_relu_cpu);
  m.impl("bias_leaky_relu_backward", &bias_leaky_relu_backward_cpu);
}

}  // namespace ganplug
