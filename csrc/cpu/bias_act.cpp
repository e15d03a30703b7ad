// CPU kernels of bias_leaky_relu and its backward over (N, C, *) maps: one pass each, in the
// layouts of ../bias_act.h. The bias gradient sums fixed chunks (a plane, or a block of rows) and
// adds their partial sums in a fixed order, so it does not depend on the thread count.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../bias_act.h"
#include "../checks.h"
#include "../loss_math.h"
#include "simd.h"

namespace ganplug {
namespace {

constexpr int64_t kTaskElements = int64_t{1} << 15;  // about this many elements per parallel task

// Planes of `unit` elements per parallel task.
int64_t grain(int64_t unit) { return std::max<int64_t>(1, kTaskElements / std::max<int64_t>(unit, 1)); }

// The loops below take restrict pointers so the compiler vectorises them, and are compiled for
// AVX2 too (simd.h): these passes are compute-bound on cached maps, where SSE2 alone would lose
// to ATen's AVX2 kernels.

// y[i] = leaky_relu(x[i]) over n elements.
template <typename scalar_t, typename op_t = at::opmath_type<scalar_t>>
GANPLUG_SIMD_CLONES void act_span(const scalar_t* __restrict__ x, scalar_t* __restrict__ y, int64_t n, op_t slope) {
  for (int64_t i = 0; i < n; ++i) y[i] = static_cast<scalar_t>(leaky_relu(static_cast<op_t>(x[i]), slope));
}

// y[i] = leaky_relu(x[i] + b[i]) over n elements.
template <typename scalar_t, typename op_t = at::opmath_type<scalar_t>>
GANPLUG_SIMD_CLONES void bias_act_span(const scalar_t* __restrict__ x, const op_t* __restrict__ b, scalar_t* __restrict__ y, int64_t n,
                   op_t slope) {
  for (int64_t i = 0; i < n; ++i) y[i] = static_cast<scalar_t>(leaky_relu(static_cast<op_t>(x[i]) + b[i], slope));
}

// dz = dy * mask(y) over planes p0..p1 of `plane` elements each, and into sums[p] each plane's sum
// of dz (before rounding). The order of that vectorised sum is fixed by the compiled loop (the
// clone this CPU runs), not by the thread count.
template <typename scalar_t, typename op_t = at::opmath_type<scalar_t>>
GANPLUG_SIMD_CLONES void planes_backward(const scalar_t* __restrict__ dy, const scalar_t* __restrict__ y,
                                           scalar_t* __restrict__ dz, op_t* __restrict__ sums, int64_t p0,
                                           int64_t p1, int64_t plane, op_t slope) {
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t base = p * plane;
    op_t sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int64_t i = base; i < base + plane; ++i) {
      const op_t g = leaky_relu_grad_from_output(static_cast<op_t>(dy[i]), static_cast<op_t>(y[i]), slope);
      dz[i] = static_cast<scalar_t>(g);
      sum += g;
    }
    sums[p] = sum;
  }
}

// The bias of each element along the memory of one period of the layout (b[c] over a plane for
// each c, or b itself with channels innermost), repeated to at least kBiasRow elements: the
// forward adds it to long runs of the input, so small planes or few channels cost no loop overhead.
template <typename scalar_t, typename op_t = at::opmath_type<scalar_t>>
std::vector<op_t> bias_row(const scalar_t* b, int64_t channels, int64_t plane) {
  constexpr int64_t kBiasRow = 4096;
  const int64_t period = channels * plane;
  const int64_t periods = std::max<int64_t>(1, kBiasRow / period);
  std::vector<op_t> row(static_cast<size_t>(period * periods));
  for (int64_t k = 0; k < periods; ++k) {
    for (int64_t c = 0; c < channels; ++c) {
      std::fill_n(row.begin() + k * period + c * plane, plane, static_cast<op_t>(b[c]));
    }
  }
  return row;
}

at::Tensor bias_leaky_relu_cpu(const at::Tensor& input, const std::optional<at::Tensor>& bias,
                               double negative_slope) {
  check_bias_act(input, bias, negative_slope);
  const bool innermost = channels_innermost(input);
  const at::Tensor x = in_layout(input, innermost);
  const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  at::Tensor out = empty_in_layout(x, innermost);
  const int64_t n = x.numel(), channels = x.size(1);
  const int64_t plane = innermost ? 1 : n / (x.size(0) * channels);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bias_leaky_relu_cpu", [&] {
    using op_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* yp = out.data_ptr<scalar_t>();
    const op_t slope = static_cast<op_t>(negative_slope);
    if (!b.defined()) {
      at::parallel_for(0, n, kTaskElements, [=](int64_t i0, int64_t i1) { act_span(xp + i0, yp + i0, i1 - i0, slope); });
      return;
    }
    const std::vector<op_t> row = bias_row(b.const_data_ptr<scalar_t>(), channels, plane);
    const op_t* rp = row.data();
    const auto row_len = static_cast<int64_t>(row.size());
    at::parallel_for(0, n, kTaskElements, [=](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1;) {  // element i has the bias rp[i % row_len]
        const int64_t j = i % row_len, len = std::min(row_len - j, i1 - i);
        bias_act_span(xp + i, rp + j, yp + i, len, slope);
        i += len;
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
      planes_backward(dyp, yp, dzp, partial_p, p0, p1, plane, slope);
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
