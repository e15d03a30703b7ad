// Autograd kernels of batch_norm_leaky_relu, group_norm_leaky_relu and their backward ops.
//
// The forward saves the input, weight, bias and the statistics it returned (mean and biased var, which are not
// differentiable outputs: they feed the running statistics). A first-order backward is one call of the backward
// kernel. Under create_graph (a gradient penalty), the backward is instead composed of differentiable torch ops,
// with the statistics recomputed from the input by torch so that the second derivatives see how they depend on it:
// slower, exact, and only where gradients of gradients are asked for. The backward ops, called directly on tensors
// that need gradients, run the same composition.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/library.h>

#include <optional>
#include <tuple>
#include <vector>

#include "norm_act.h"

namespace ganplug {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using OptTensor = std::optional<at::Tensor>;
using Triple = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
using BatchNormOp = Triple(const at::Tensor&, const OptTensor&, const OptTensor&, double, double);
using GroupNormOp = Triple(const at::Tensor&, int64_t, const OptTensor&, const OptTensor&, double, double);
using BatchNormBackwardOp = Triple(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                   const OptTensor&, const OptTensor&, double, double);
using GroupNormBackwardOp = Triple(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t,
                                   const OptTensor&, const OptTensor&, double, double);

template <typename Signature>
c10::TypedOperatorHandle<Signature> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

OptTensor optional(const at::Tensor& t) { return t.defined() ? OptTensor(t) : std::nullopt; }

// The forward kernel (below autograd) of batch norm (groups 0) or group norm.
Triple call_forward(const at::Tensor& x, int64_t groups, const OptTensor& weight, const OptTensor& bias, double eps,
                    double slope) {
  static const auto batch = find_op<BatchNormOp>("ganplug::batch_norm_leaky_relu");
  static const auto group = find_op<GroupNormOp>("ganplug::group_norm_leaky_relu");
  at::AutoDispatchBelowADInplaceOrView guard;
  return groups == 0 ? batch.call(x, weight, bias, eps, slope) : group.call(x, groups, weight, bias, eps, slope);
}

// The backward kernel (below autograd).
Triple call_backward(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& mean, const at::Tensor& var,
                     int64_t groups, const OptTensor& weight, const OptTensor& bias, double eps, double slope) {
  static const auto batch = find_op<BatchNormBackwardOp>("ganplug::batch_norm_leaky_relu_backward");
  static const auto group = find_op<GroupNormBackwardOp>("ganplug::group_norm_leaky_relu_backward");
  at::AutoDispatchBelowADInplaceOrView guard;
  return groups == 0 ? batch.call(dy, x, mean, var, weight, bias, eps, slope)
                     : group.call(dy, x, mean, var, groups, weight, bias, eps, slope);
}

// A statistic ((C,) for batch norm, (N, G) for group norm) broadcast against x (N, C, *).
at::Tensor spread(const at::Tensor& stat, const at::Tensor& x, int64_t groups) {
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
at::Tensor stat_mean(const at::Tensor& full, int64_t groups) {
  if (groups == 0) {
    std::vector<int64_t> dims;
    for (int64_t d = 0; d < full.dim(); ++d) {
      if (d != 1) dims.push_back(d);
    }
    return full.mean(dims, /*keepdim=*/true);
  }
  return spread(full.reshape_symint({full.sym_size(0), groups, -1}).mean(2), full, groups);
}

// (mean, biased var) of x as torch computes them, differentiable, in the statistics' dtype.
std::tuple<at::Tensor, at::Tensor> statistics(const at::Tensor& x, int64_t groups) {
  const at::Tensor wide = x.to(stats_dtype(x));
  at::Tensor var, mean;
  if (groups == 0) {
    std::vector<int64_t> dims;
    for (int64_t d = 0; d < x.dim(); ++d) {
      if (d != 1) dims.push_back(d);
    }
    std::tie(var, mean) = at::var_mean(wide, dims, /*correction=*/0, /*keepdim=*/false);
  } else {
    std::tie(var, mean) = at::var_mean(wide.reshape_symint({x.sym_size(0), groups, -1}), {2}, 0, false);
  }
  return {mean, var};
}

// The backward in differentiable torch ops: x_hat = (x - mean) * rstd, g = dy * mask(x_hat * weight + bias),
// h = g * weight, dx = rstd * (h - mean(h) - x_hat * mean(h * x_hat)), d weight = sum(g * x_hat), d bias = sum(g).
Triple composite_backward(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& mean, const at::Tensor& var,
                          int64_t groups, const OptTensor& weight, const OptTensor& bias, double eps, double slope) {
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

class NormLeakyRelu : public torch::autograd::Function<NormLeakyRelu> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input, int64_t groups, const OptTensor& weight,
                               const OptTensor& bias, double eps, double slope) {
    auto [out, mean, var] = call_forward(input, groups, weight, bias, eps, slope);
    ctx->save_for_backward({input, weight.value_or(at::Tensor()), bias.value_or(at::Tensor()), mean, var});
    ctx->saved_data["groups"] = groups;
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["slope"] = slope;
    ctx->mark_non_differentiable({mean, var});
    return {out, mean, var};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& x = saved[0];
    const OptTensor weight = optional(saved[1]), bias = optional(saved[2]);
    const int64_t groups = ctx->saved_data["groups"].toInt();
    const double eps = ctx->saved_data["eps"].toDouble(), slope = ctx->saved_data["slope"].toDouble();
    at::Tensor dx, d_weight, d_bias;
    if (at::GradMode::is_enabled()) {  // create_graph: differentiable, the statistics as functions of x
      const auto [mean, var] = statistics(x, groups);
      std::tie(dx, d_weight, d_bias) = composite_backward(grads[0], x, mean, var, groups, weight, bias, eps, slope);
    } else {
      std::tie(dx, d_weight, d_bias) = call_backward(grads[0], x, saved[3], saved[4], groups, weight, bias, eps, slope);
    }
    return {ctx->needs_input_grad(0) ? dx : at::Tensor(), at::Tensor(), weight ? d_weight : at::Tensor(),
            bias ? d_bias : at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

Triple norm_act_autograd(const at::Tensor& input, int64_t groups, const OptTensor& weight, const OptTensor& bias,
                         double eps, double slope) {
  if (!torch::autograd::compute_requires_grad(input, weight, bias)) {  // nothing to differentiate: no Function
    return call_forward(input, groups, weight, bias, eps, slope);
  }
  const variable_list out = NormLeakyRelu::apply(input, groups, weight, bias, eps, slope);
  return {out[0], out[1], out[2]};
}

Triple norm_act_backward_autograd(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& mean,
                                  const at::Tensor& var, int64_t groups, const OptTensor& weight,
                                  const OptTensor& bias, double eps, double slope) {
  if (torch::autograd::compute_requires_grad(dy, x, mean, var, weight, bias)) {
    check_norm_act_backward(dy, x, mean, var, groups, weight, bias, eps, slope);
    return composite_backward(dy, x, mean, var, groups, weight, bias, eps, slope);
  }
  return call_backward(dy, x, mean, var, groups, weight, bias, eps, slope);
}

Triple batch_norm_leaky_relu_autograd(const at::Tensor& input, const OptTensor& weight, const OptTensor& bias,
                                      double eps, double slope) {
  return norm_act_autograd(input, 0, weight, bias, eps, slope);
}

Triple group_norm_leaky_relu_autograd(const at::Tensor& input, int64_t num_groups, const OptTensor& weight,
                                      const OptTensor& bias, double eps, double slope) {
  TORCH_CHECK_VALUE(num_groups >= 1, "group_norm_leaky_relu: num_groups must be >= 1, got ", num_groups);
  return norm_act_autograd(input, num_groups, weight, bias, eps, slope);
}

Triple batch_norm_leaky_relu_backward_autograd(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& mean,
                                               const at::Tensor& var, const OptTensor& weight, const OptTensor& bias,
                                               double eps, double slope) {
  return norm_act_backward_autograd(dy, x, mean, var, 0, weight, bias, eps, slope);
}

Triple group_norm_leaky_relu_backward_autograd(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& mean,
                                               const at::Tensor& var, int64_t num_groups, const OptTensor& weight,
                                               const OptTensor& bias, double eps, double slope) {
  TORCH_CHECK_VALUE(num_groups >= 1, "group_norm_leaky_relu_backward: num_groups must be >= 1, got ", num_groups);
  return norm_act_backward_autograd(dy, x, mean, var, num_groups, weight, bias, eps, slope);
}

}  // namespace

TORCH_LIBRARY_IMPL(ganplug, Autograd, m) {
  m.impl("batch_norm_leaky_relu", &batch_norm_leaky_relu_autograd);
  m.impl("batch_norm_leaky_relu_backward", &batch_norm_leaky_relu_backward_autograd);
  m.impl("group_norm_leaky_relu", &group_norm_leaky_relu_autograd);
  m.impl("group_norm_leaky_relu_backward", &group_norm_leaky_relu_backward_autograd);
}

}  // namespace ganplug
