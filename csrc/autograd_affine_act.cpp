// Autograd kernels of affine_leaky_relu and its backward op (csrc/autograd.cpp has the other ops').
//
// Only the input is saved (with the small scale and shift): the backward needs it for d scale
// = sum(g * x), and the LeakyReLU mask is the sign of the pre-activation x * scale + shift, which
// the backward kernel recomputes as the forward did. The output is not kept at all.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/library.h>

#include <optional>
#include <vector>

#include "affine_act.h"

namespace ganplug {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using OptTensor = std::optional<at::Tensor>;
using AffineActOp = at::Tensor(const at::Tensor&, const OptTensor&, const OptTensor&, double);
using AffineActBackwardOp = std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                           const OptTensor&, const OptTensor&, double);

template <typename Signature>
c10::TypedOperatorHandle<Signature> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

OptTensor optional(const at::Tensor& t) { return t.defined() ? OptTensor(t) : std::nullopt; }

// (dx, d scale, d shift) = (g * scale, sum(g * x), sum(g)) with g = dy * mask(x * scale + shift): linear
// in dy, linear in x but for the mask, which is piecewise constant. Its adjoint, in differentiable torch
// ops, so that gradients of any order exist.
class AffineLeakyReluBackward : public torch::autograd::Function<AffineLeakyReluBackward> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& grad_output, const at::Tensor& input,
                               const OptTensor& scale, const OptTensor& shift, double slope) {
    static const auto op = find_op<AffineActBackwardOp>("ganplug::affine_leaky_relu_backward");
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({grad_output, input, scale.value_or(at::Tensor()), shift.value_or(at::Tensor())});
    ctx->saved_data["slope"] = slope;
    auto [dx, d_scale, d_shift] = op.call(grad_output, input, scale, shift, slope);
    return {dx, d_scale, d_shift};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &dy = saved[0], &x = saved[1], &scale = saved[2], &shift = saved[3];
    const double slope = ctx->saved_data["slope"].toDouble();
    const int64_t dims = x.dim();
    const at::Tensor s = scale.defined() ? broadcastable(scale, dims) : at::Tensor();
    at::Tensor pre = s.defined() ? x * s : x;
    if (shift.defined()) pre = pre + broadcastable(shift, dims);
    const at::Tensor mask = (pre > 0).to(x.scalar_type()) * (1.0 - slope) + slope;
    const at::Tensor &g_dx = grads[0], &g_scale = grads[1], &g_shift = grads[2];
    const bool has_g_scale = scale.defined() && g_scale.defined();
    at::Tensor upstream;  // the adjoint before the mask: g_dx * s + g_scale * x + g_shift
    const auto add = [&upstream](const at::Tensor& term) { upstream = upstream.defined() ? upstream + term : term; };
    if (g_dx.defined()) add(s.defined() ? g_dx * s : g_dx);
    if (has_g_scale) add(broadcastable(g_scale, dims) * x);
    if (shift.defined() && g_shift.defined()) add(broadcastable(g_shift, dims));
    const at::Tensor d_dy = upstream.defined() ? mask * upstream : at::Tensor();
    const at::Tensor d_x = has_g_scale ? dy * mask * broadcastable(g_scale, dims) : at::Tensor();
    const at::Tensor d_scale = s.defined() && g_dx.defined() ? reduce_to(g_dx * dy * mask, scale) : at::Tensor();
    return {d_dy, d_x, d_scale, at::Tensor(), at::Tensor()};
  }
};

class AffineLeakyRelu : public torch::autograd::Function<AffineLeakyRelu> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const OptTensor& scale,
                            const OptTensor& shift, double slope) {
    static const auto op = find_op<AffineActOp>("ganplug::affine_leaky_relu");
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({input, scale.value_or(at::Tensor()), shift.value_or(at::Tensor())});
    ctx->saved_data["slope"] = slope;
    return op.call(input, scale, shift, slope);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const variable_list g = AffineLeakyReluBackward::apply(grads[0], saved[0], optional(saved[1]), optional(saved[2]),
                                                           ctx->saved_data["slope"].toDouble());
    return {ctx->needs_input_grad(0) ? g[0] : at::Tensor(), saved[1].defined() ? g[1] : at::Tensor(),
            saved[2].defined() ? g[2] : at::Tensor(), at::Tensor()};
  }
};

at::Tensor affine_leaky_relu_autograd(const at::Tensor& input, const OptTensor& scale, const OptTensor& shift,
                                      double slope) {
  if (!torch::autograd::compute_requires_grad(input, scale, shift)) {  // nothing to differentiate: no Function
    static const auto op = find_op<AffineActOp>("ganplug::affine_leaky_relu");
    at::AutoDispatchBelowADInplaceOrView guard;
    return op.call(input, scale, shift, slope);
  }
  return AffineLeakyRelu::apply(input, scale, shift, slope);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> affine_leaky_relu_backward_autograd(const at::Tensor& grad_output,
                                                                                   const at::Tensor& input,
                                                                                   const OptTensor& scale,
                                                                                   const OptTensor& shift,
                                                                                   double slope) {
  const variable_list out = AffineLeakyReluBackward::apply(grad_output, input, scale, shift, slope);
  return {out[0], out[1], out[2]};
}

}  // namespace

TORCH_LIBRARY_IMPL(ganplug, Autograd, m) {
  m.impl("affine_leaky_relu", &affine_leaky_relu_autograd);
  m.impl("affine_leaky_relu_backward", &affine_leaky_relu_backward_autograd);
}

}  // namespace ganplug
