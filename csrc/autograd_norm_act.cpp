// Autograd kernels of batch_norm_leaky_relu, group_norm_leaky_relu and their backward ops.
//
// The forward saves the input, weight, bias and the statistics it returned (mean and biased var, not
// differentiable outputs: they feed the running statistics). A first-order backward is one call of the backward
// kernel. Under create_graph (a gradient penalty), the backward is instead composed of torch ops that torch
// differentiates again, statistics included (differentiable_backward): as costly as eager torch there, exact, and
// only where gradients of gradients are asked for. The backward ops, called directly on tensors that need
// gradients, run their own formula in differentiable torch ops (composite_backward, the statistics as inputs).
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

// The backward under create_graph (a gradient penalty): the forward recomputed in torch's own ops (batch_norm or
// group_norm, leaky_relu) and differentiated by autograd with create_graph, so that torch differentiates it again,
// through the statistics too: what eager BatchNorm/GroupNorm + LeakyReLU run there, plus one forward. Per-channel
// coefficients go into torch's norm op, as eager code passes them (its affine inside the op: a separate multiply
// and add cost 20-25 % more in a gradient penalty through GroupNorm); per-sample ones (conditional BatchNorm), or
// one without the other, follow it as a multiply and an add.
Triple differentiable_backward(const at::Tensor& dy, const at::Tensor& x, int64_t groups, const OptTensor& weight,
                               const OptTensor& bias, double eps, double slope) {
  const int64_t dims = x.dim();
  // (both or neither: torch 2.14's batch_norm fails gradgradcheck for a bias without a weight)
  const bool per_channel = weight.has_value() == bias.has_value() && (!weight.has_value() || weight->dim() == 1) &&
                           (!bias.has_value() || bias->dim() == 1);
  const OptTensor w = per_channel ? weight : std::nullopt, b = per_channel ? bias : std::nullopt;
  at::Tensor pre = groups == 0 ? at::batch_norm(x, w, b, {}, {}, /*training=*/true, 0.0, eps, true)
                               : at::group_norm(x, groups, w, b, eps, true);
  if (!per_channel && weight.has_value()) pre = pre * broadcastable(*weight, dims);
  if (!per_channel && bias.has_value()) pre = pre + broadcastable(*bias, dims);
  const at::Tensor y = at::leaky_relu(pre, slope);
  std::vector<at::Tensor> wrt;
  for (const at::Tensor& t : {x, weight.value_or(at::Tensor()), bias.value_or(at::Tensor())}) {
    if (t.defined() && t.requires_grad()) wrt.push_back(t);
  }
  const variable_list grads = torch::autograd::grad({y}, wrt, {dy}, /*retain_graph=*/true, /*create_graph=*/true,
                                                    /*allow_unused=*/true);
  Triple out;
  size_t i = 0;
  if (x.requires_grad()) std::get<0>(out) = grads[i++];
  if (weight.has_value() && weight->requires_grad()) std::get<1>(out) = grads[i++];
  if (bias.has_value() && bias->requires_grad()) std::get<2>(out) = grads[i++];
  return out;
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
    const auto [dx, d_weight, d_bias] =
        at::GradMode::is_enabled()  // create_graph: differentiable again
            ? differentiable_backward(grads[0], x, groups, weight, bias, eps, slope)
            : call_backward(grads[0], x, saved[3], saved[4], groups, weight, bias, eps, slope);
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
