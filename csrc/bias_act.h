// The memory layouts of bias_leaky_relu and its backward, shared by the CPU and CUDA kernels.
//
// A tensor of shape (N, C, *) is computed in one of two dense layouts:
//   channels innermost  memory in (N, *, C) order (channels-last conv maps; (N, C) row-major):
//                       a (N * prod(*), C) matrix with one channel per column;
//   planes              memory in (N, C, *) order (contiguous): N * C planes of prod(*) elements.
// An input already in the first layout is used as it is; any other is made contiguous. Outputs
// take the layout computed in (ganplug/ops/_library.py's fake kernels give the same strides).
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <tuple>
#include <vector>

namespace ganplug {

// True when t (at least 2-D) is dense with its memory in (N, *, C) order: t.movedim(1, -1) is
// contiguous (size-1 dims may have any stride, as is_contiguous allows).
inline bool channels_innermost(const at::Tensor& t) {
  const auto sizes = t.sizes();
  const auto strides = t.strides();
  const int64_t dims = t.dim();
  int64_t expected = 1;
  auto fits = [&](int64_t d) {
    if (sizes[d] == 1) return true;
    if (strides[d] != expected) return false;
    expected *= sizes[d];
    return true;
  };
  if (!fits(1)) return false;
  for (int64_t d = dims - 1; d >= 2; --d) {
    if (!fits(d)) return false;
  }
  return fits(0);
}

// The strides of a dense tensor of these sizes with its memory in (N, *, C) order.
inline std::vector<int64_t> channels_innermost_strides(at::IntArrayRef sizes) {
  std::vector<int64_t> strides(sizes.size());
  int64_t running = 1;
  strides[1] = running;
  running *= std::max<int64_t>(sizes[1], 1);
  for (int64_t d = static_cast<int64_t>(sizes.size()) - 1; d >= 2; --d) {
    strides[d] = running;
    running *= std::max<int64_t>(sizes[d], 1);
  }
  strides[0] = running;
  return strides;
}

// t in the layout chosen by `innermost` (a copy only when it is not in it already).
inline at::Tensor in_layout(const at::Tensor& t, bool innermost) {
  if (!innermost) return t.contiguous();
  if (channels_innermost(t)) return t;
  at::Tensor out = at::empty_strided(t.sizes(), channels_innermost_strides(t.sizes()), t.options());
  return out.copy_(t);
}

// An uninitialised tensor shaped and laid out like `t`, which is in the layout chosen by `innermost`.
inline at::Tensor empty_in_layout(const at::Tensor& t, bool innermost) {
  return innermost ? at::empty_strided(t.sizes(), channels_innermost_strides(t.sizes()), t.options())
                   : at::empty(t.sizes(), t.options());
}

// The backward with channels innermost is leaky_relu_bias_backward of the (N * prod(*), C) matrix:
// dy and y must already be in that layout. Returns (dz shaped and laid out like y, db).
inline std::tuple<at::Tensor, at::Tensor> bias_act_backward_channels_innermost(const at::Tensor& dy,
                                                                               const at::Tensor& y,
                                                                               double negative_slope) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("ganplug::leaky_relu_bias_backward", "")
          .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, double)>();
  const int64_t channels = y.size(1);
  auto [dz, db] = op.call(dy.as_strided({y.numel() / channels, channels}, {channels, 1}),
                          y.as_strided({y.numel() / channels, channels}, {channels, 1}), negative_slope);
  return {dz.as_strided(y.sizes(), channels_innermost_strides(y.sizes())), db};
}

}  // namespace ganplug
