// batch_norm_leaky_relu and group_norm_leaky_relu: y = leaky_relu(x_hat * weight + bias) over (N, C, *) maps, x_hat
// the input normalised by its batch statistics (per channel, over N and *) or its group statistics (per sample and
// group of C / G channels, over those channels and *). Shared by the CPU and CUDA kernels and the autograd kernels:
// the argument checks (in ganplug/ops/reference.py's words) and the statistics' shapes. `groups` is 0 for batch
// norm, G for group norm. Layouts are bias_act.h's.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include <optional>
#include <sstream>
#include <tuple>
#include <string>
#include <vector>

#include "affine_act.h"

namespace ganplug {

inline const char* norm_op_name(int64_t groups, bool backward) {
  if (groups == 0) return backward ? "batch_norm_leaky_relu_backward" : "batch_norm_leaky_relu";
  return backward ? "group_norm_leaky_relu_backward" : "group_norm_leaky_relu";
}

// The dtype of the statistics: float32 for 16- and 32-bit inputs, float64 for float64 ones.
inline at::ScalarType stats_dtype(const at::Tensor& input) { return at::toOpMathType(input.scalar_type()); }

// The statistics' shape: (C,) for batch norm, (N, G) for group norm.
inline std::vector<int64_t> stats_shape(const at::Tensor& input, int64_t groups) {
  if (groups == 0) return {input.size(1)};
  return {input.size(0), groups};
}

// "(64,)" or "(64, 1)", as Python prints a tuple.
inline std::string tuple_of(const std::vector<int64_t>& shape) {
  std::ostringstream s;
  s << '(';
  for (size_t i = 0; i < shape.size(); ++i) s << (i > 0 ? ", " : "") << shape[i];
  s << (shape.size() == 1 ? ",)" : ")");
  return s.str();
}

// input (N, C, *), weight and bias each absent, (C,) or (N, C) like the input, eps >= 0, slope >= 0; batch norm needs
// more than one value per channel, group norm G >= 1 dividing C.
inline void check_norm_act(const at::Tensor& input, int64_t groups, const std::optional<at::Tensor>& weight,
                           const std::optional<at::Tensor>& bias, double eps, double negative_slope, bool backward) {
  const char* op = norm_op_name(groups, backward);
  check_floating(input, op, "input");
  TORCH_CHECK_VALUE(input.dim() >= 2, op, ": input must be (N, C, *) with at least 2 dims, got shape ",
                    shape_of(input));
  check_nonempty(input, op, "input");
  check_affine_coefficient(weight, input, op, "weight");
  check_affine_coefficient(bias, input, op, "bias");
  if (weight.has_value()) check_like(*weight, input, op, "weight", "input");
  if (bias.has_value()) check_like(*bias, input, op, "bias", "input");
  check_slope(negative_slope, op);
  TORCH_CHECK_VALUE(std::isfinite(eps) && eps >= 0, op, ": eps must be a finite number >= 0, got ", eps);
  if (groups == 0) {
    TORCH_CHECK_VALUE(input.sym_numel() / input.sym_size(1) > 1, op,
                      ": batch statistics need more than one value per channel, got input of shape ", shape_of(input),
                      "; use a batch of at least 2 samples");
  } else {
    TORCH_CHECK_VALUE(groups >= 1 && input.sym_size(1) % groups == 0, op, ": num_groups=", groups,
                      " must be >= 1 and divide the ", input.sym_size(1), " channels of input of shape ",
                      shape_of(input));
  }
}

// The backward's arguments: the forward's, grad_output like the input, mean and var as the forward returned them.
inline void check_norm_act_backward(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& mean,
                                    const at::Tensor& var, int64_t groups, const std::optional<at::Tensor>& weight,
                                    const std::optional<at::Tensor>& bias, double eps, double negative_slope) {
  const char* op = norm_op_name(groups, true);
  check_norm_act(input, groups, weight, bias, eps, negative_slope, true);
  check_like(grad_output, input, op, "grad_output", "input");
  TORCH_CHECK_VALUE(grad_output.sym_sizes() == input.sym_sizes(), op, ": grad_output has shape ",
                    shape_of(grad_output), " but input has shape ", shape_of(input));
  for (const at::Tensor* t : {&mean, &var}) {
    const char* name = t == &mean ? "mean" : "var";
    TORCH_CHECK_VALUE(t->device() == input.device(), op, ": ", name, " is on ", t->device(), " but input is on ",
                      input.device(), "; move both to one device");
    TORCH_CHECK_TYPE(t->scalar_type() == stats_dtype(input), op, ": ", name, " must be torch.",
                     c10::getDtypeNames(stats_dtype(input)).first, " for input of ", dtype_of(input), ", got ",
                     dtype_of(*t), "; pass the statistics the forward returned");
    const std::vector<int64_t> shape = stats_shape(input, groups);
    TORCH_CHECK_VALUE(t->sizes() == at::IntArrayRef(shape), op, ": ", name, " has shape ", shape_of(*t),
                      ", expected ", tuple_of(shape),
                      " for input of shape ", shape_of(input), "; pass the statistics the forward returned");
  }
}

// A statistic ((C,) for batch norm, (N, G) for group norm) broadcast against x (N, C, *).
inline at::Tensor spread(const at::Tensor& stat, const at::Tensor& x, int64_t groups) {
  std::vector<c10::SymInt> shape(static_cast<size_t>(x.dim()), c10::SymInt(1));
  shape[1] = x.sym_size(1);
  if (groups == 0) return stat.reshape_symint(shape);
  shape[0] = x.sym_size(0);
  const at::Tensor per_channel = stat.unsqueeze(2)
                                     .expand_symint({x.sym_size(0), groups, x.sym_size(1) / groups})
                                     .reshape_symint({x.sym_size(0), x.sym_size(1)});
  return per_channel.reshape_symint(shape);
}

// The mean of `full` (shaped like x) over each statistic's elements, broadcast back against x.
inline at::Tensor stat_mean(const at::Tensor& full, int64_t groups) {
  if (groups == 0) {
    std::vector<int64_t> dims;
    for (int64_t d = 0; d < full.dim(); ++d) {
      if (d != 1) dims.push_back(d);
    }
    return full.mean(dims, /*keepdim=*/true);
  }
  return spread(full.reshape_symint({full.sym_size(0), groups, -1}).mean(2), full, groups);
}

// The backward in differentiable torch ops: x_hat = (x - mean) * rstd, g = dy * mask(x_hat * weight + bias),
// h = g * weight, dx = rstd * (h - mean(h) - x_hat * mean(h * x_hat)), d weight = sum(g * x_hat), d bias = sum(g).
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> composite_backward(
    const at::Tensor& dy, const at::Tensor& x, const at::Tensor& mean, const at::Tensor& var, int64_t groups,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias, double eps, double slope) {
  const int64_t dims = x.dim();
  const at::Tensor rstd = spread((var + eps).rsqrt(), x, groups);
  const at::Tensor x_hat = (x - spread(mean, x, groups)) * rstd;
  const at::Tensor w = weight.has_value() ? broadcastable(*weight, dims) : at::Tensor();
  at::Tensor pre = w.defined() ? x_hat * w : x_hat;
  if (bias.has_value()) pre = pre + broadcastable(*bias, dims);
  const at::Tensor mask = (pre > 0).to(x_hat.scalar_type()) * (1.0 - slope) + slope;
  const at::Tensor g = dy * mask;
  const at::Tensor h = w.defined() ? g * w : g;
  const at::Tensor dx = rstd * (h - stat_mean(h, groups) - x_hat * stat_mean(h * x_hat, groups));
  const at::Tensor empty = at::empty({0}, x.options());
  const at::Tensor d_weight = weight.has_value() ? reduce_to(g * x_hat, *weight).to(x.scalar_type()) : empty;
  const at::Tensor d_bias = bias.has_value() ? reduce_to(g, *bias).to(x.scalar_type()) : empty;
  return {dx.to(x.scalar_type()), d_weight, d_bias};
}

}  // namespace ganplug
