// Autograd kernels of diff_augment and its linear part (the maths in diff_augment.h).
//
// For fixed parameters the op is affine in x, y = A x + a, so nothing of x is saved: the backward is
// A^T g (diff_augment_linear with adjoint=True), and the backward of diff_augment_linear is the same op
// with adjoint flipped (A^T's adjoint is A, the forward without its constant). Gradients of every
// order in x are one kernel call each. shift, cut and color are random draws: they get no gradient.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/library.h>

namespace ganplug {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using DiffAugmentOp = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&);
using DiffAugmentLinearOp =
    at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, bool);

const c10::TypedOperatorHandle<DiffAugmentOp>& forward_op() {
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("ganplug::diff_augment", "").typed<DiffAugmentOp>();
  return op;
}

const c10::TypedOperatorHandle<DiffAugmentLinearOp>& linear_op() {
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("ganplug::diff_augment_linear", "").typed<DiffAugmentLinearOp>();
  return op;
}

// v -> A v or A^T v; its backward is the other one.
class DiffAugmentLinear : public torch::autograd::Function<DiffAugmentLinear> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& v, const at::Tensor& shift, const at::Tensor& cut,
                            const at::Tensor& color, bool adjoint) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({shift, cut, color});
    ctx->saved_data["adjoint"] = adjoint;
    return linear_op().call(v, shift, cut, color, adjoint);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const bool adjoint = ctx->saved_data["adjoint"].toBool();
    return {apply(grads[0], saved[0], saved[1], saved[2], !adjoint), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor()};
  }
};

class DiffAugment : public torch::autograd::Function<DiffAugment> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& shift, const at::Tensor& cut,
                            const at::Tensor& color) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({shift, cut, color});
    return forward_op().call(x, shift, cut, color);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    return {DiffAugmentLinear::apply(grads[0], saved[0], saved[1], saved[2], true), at::Tensor(), at::Tensor(),
            at::Tensor()};
  }
};

// Only x is differentiated: without a gradient to x there is no Function (color's requires_grad is ignored).
at::Tensor diff_augment_autograd(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& cut,
                                 const at::Tensor& color) {
  if (!torch::autograd::compute_requires_grad(x)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return forward_op().call(x, shift, cut, color);
  }
  return DiffAugment::apply(x, shift, cut, color);
}

at::Tensor diff_augment_linear_autograd(const at::Tensor& v, const at::Tensor& shift, const at::Tensor& cut,
                                        const at::Tensor& color, bool adjoint) {
  if (!torch::autograd::compute_requires_grad(v)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return linear_op().call(v, shift, cut, color, adjoint);
  }
  return DiffAugmentLinear::apply(v, shift, cut, color, adjoint);
}

}  // namespace

TORCH_LIBRARY_IMPL(ganplug, Autograd, m) {
  m.impl("diff_augment", &diff_augment_autograd);
  m.impl("diff_augment_linear", &diff_augment_linear_autograd);
}

}  // namespace ganplug
