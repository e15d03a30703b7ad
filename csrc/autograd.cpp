// Autograd kernels of every op and its backward ops, in C++: a Python autograd wrapper
// (torch.library register_autograd) costs ~20 us a call, more than a loss or a small layer takes.
// Each backward calls a backward op that is itself differentiable, so gradients of gradients work.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <optional>

namespace ganplug {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using OptTensor = std::optional<at::Tensor>;

template <typename Signature>
c10::TypedOperatorHandle<Signature> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

OptTensor optional(const at::Tensor& t) { return t.defined() ? OptTensor(t) : std::nullopt; }

// d/dt of scale * mean(bce(x, t)) is -scale * x / n, times the upstream grad; undefined if t needs none.
// Sizes are SymInts so that torch.compile can trace with dynamic shapes.
at::Tensor target_grad(const at::Tensor& grad, const at::Tensor& logits, const at::Tensor& target, double scale) {
  if (!target.defined() || !target.requires_grad()) return at::Tensor();
  return (grad * logits * (-scale)).div(c10::Scalar(logits.sym_numel()));
}

// Adjoint of dx = grad * coef * (sigmoid(x) - t), coef = scale / n: the gradients of
// <grad_dx, dx> with respect to grad (shaped like grad), x, and t (undefined when t is constant).
struct BceGradOfGrad {
  at::Tensor grad, logits, target;
};

BceGradOfGrad bce_grad_of_grad(const at::Tensor& grad, const at::Tensor& logits, const at::Tensor& target,
                               double target_value, double scale, const at::Tensor& grad_dx) {
  const c10::Scalar n(logits.sym_numel());
  const at::Tensor s = at::sigmoid(logits);
  const at::Tensor residual = target.defined() ? s - target : s - target_value;
  BceGradOfGrad out;
  out.grad = (grad_dx * residual).sum().mul(scale).div(n).reshape_symint(grad.sym_sizes());
  out.logits = (grad * grad_dx * s * (1 - s)).mul(scale).div(n);
  if (target.defined()) out.target = (grad * grad_dx).mul(-scale).div(n);
  return out;
}

using BceBackwardOp = at::Tensor(const at::Tensor&, const at::Tensor&, const OptTensor&, double, double);
using DiscriminatorBceBackwardOp = std::tuple<at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptTensor&, const OptTensor&, double, double);

class BceLossBackward : public torch::autograd::Function<BceLossBackward> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& grad, const at::Tensor& logits,
                            const OptTensor& target, double target_value, double scale) {
    static const auto op = find_op<BceBackwardOp>("ganplug::bce_loss_backward");
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({grad, logits, target.value_or(at::Tensor())});
    ctx->saved_data["target_value"] = target_value;
    ctx->saved_data["scale"] = scale;
    return op.call(grad, logits, target, target_value, scale);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const BceGradOfGrad g = bce_grad_of_grad(saved[0], saved[1], saved[2], ctx->saved_data["target_value"].toDouble(),
                                             ctx->saved_data["scale"].toDouble(), grads[0]);
    return {g.grad, g.logits, g.target, at::Tensor(), at::Tensor()};
  }
};

class DiscriminatorBceBackward : public torch::autograd::Function<DiscriminatorBceBackward> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& grad, const at::Tensor& real,
                               const at::Tensor& fake, const OptTensor& real_target, const OptTensor& fake_target,
                               double real_value, double fake_value) {
    static const auto op = find_op<DiscriminatorBceBackwardOp>("ganplug::discriminator_bce_backward");
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({grad, real, fake, real_target.value_or(at::Tensor()), fake_target.value_or(at::Tensor())});
    ctx->saved_data["real_value"] = real_value;
    ctx->saved_data["fake_value"] = fake_value;
    auto [grad_real, grad_fake] = op.call(grad, real, fake, real_target, fake_target, real_value, fake_value);
    return {grad_real, grad_fake};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const BceGradOfGrad r = bce_grad_of_grad(saved[0], saved[1], saved[3], ctx->saved_data["real_value"].toDouble(),
                                             1.0, grads[0]);
    const BceGradOfGrad f = bce_grad_of_grad(saved[0], saved[2], saved[4], ctx->saved_data["fake_value"].toDouble(),
                                             1.0, grads[1]);
    return {r.grad + f.grad, r.logits, f.logits, r.target, f.target, at::Tensor(), at::Tensor()};
  }
};

// The loss kernels' autograd: when the logits need a gradient, the forward runs the *_and_grad op
// (loss and d loss / d logits from one pass) and saves that gradient, so a first-order backward is
// grad * saved. Under create_graph the backward runs the differentiable backward op instead.
using AndGradOp = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const OptTensor&, double, double);
using DiscriminatorAndGradOp = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const OptTensor&, const OptTensor&, double, double);

class BceLoss : public torch::autograd::Function<BceLoss> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& logits, const OptTensor& target,
                            double target_value, double scale) {
    static const auto op = find_op<at::Tensor(const at::Tensor&, const OptTensor&, double, double)>("ganplug::bce_loss");
    static const auto and_grad = find_op<AndGradOp>("ganplug::bce_loss_and_grad");
    at::AutoDispatchBelowADInplaceOrView guard;
    at::Tensor loss, grad_logits;
    if (logits.requires_grad()) {
      std::tie(loss, grad_logits) = and_grad.call(logits, target, target_value, scale);
    } else {
      loss = op.call(logits, target, target_value, scale);
    }
    ctx->save_for_backward({logits, target.value_or(at::Tensor()), grad_logits});
    ctx->saved_data["target_value"] = target_value;
    ctx->saved_data["scale"] = scale;
    return loss;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const double target_value = ctx->saved_data["target_value"].toDouble();
    const double scale = ctx->saved_data["scale"].toDouble();
    const at::Tensor &logits = saved[0], &grad_logits = saved[2];
    at::Tensor d_logits;
    if (ctx->needs_input_grad(0)) {
      d_logits = grad_logits.defined() && !at::GradMode::is_enabled()
          ? grads[0] * grad_logits
          : BceLossBackward::apply(grads[0], logits, optional(saved[1]), target_value, scale);
    }
    return {d_logits, target_grad(grads[0], logits, saved[1], scale), at::Tensor(), at::Tensor()};
  }
};

class DiscriminatorBce : public torch::autograd::Function<DiscriminatorBce> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& real, const at::Tensor& fake,
                            const OptTensor& real_target, const OptTensor& fake_target, double real_value,
                            double fake_value) {
    static const auto op = find_op<at::Tensor(const at::Tensor&, const at::Tensor&, const OptTensor&, const OptTensor&,
                                              double, double)>("ganplug::discriminator_bce");
    static const auto and_grad = find_op<DiscriminatorAndGradOp>("ganplug::discriminator_bce_and_grad");
    at::AutoDispatchBelowADInplaceOrView guard;
    at::Tensor loss, grad_real, grad_fake;
    if (real.requires_grad() || fake.requires_grad()) {
      std::tie(loss, grad_real, grad_fake) = and_grad.call(real, fake, real_target, fake_target, real_value, fake_value);
    } else {
      loss = op.call(real, fake, real_target, fake_target, real_value, fake_value);
    }
    ctx->save_for_backward({real, fake, real_target.value_or(at::Tensor()), fake_target.value_or(at::Tensor()),
                            grad_real, grad_fake});
    ctx->saved_data["real_value"] = real_value;
    ctx->saved_data["fake_value"] = fake_value;
    return loss;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &real = saved[0], &fake = saved[1], &grad_real = saved[4], &grad_fake = saved[5];
    at::Tensor d_real, d_fake;
    if (grad_real.defined() && !at::GradMode::is_enabled()) {
      d_real = grads[0] * grad_real;
      d_fake = grads[0] * grad_fake;
    } else if (ctx->needs_input_grad(0) || ctx->needs_input_grad(1)) {
      const variable_list g = DiscriminatorBceBackward::apply(
          grads[0], real, fake, optional(saved[2]), optional(saved[3]), ctx->saved_data["real_value"].toDouble(),
          ctx->saved_data["fake_value"].toDouble());
      d_real = g[0];
      d_fake = g[1];
    }
    return {d_real, d_fake, target_grad(grads[0], real, saved[2], 1.0), target_grad(grads[0], fake, saved[3], 1.0),
            at::Tensor(), at::Tensor()};
  }
};

// The gradient of a mean is a broadcast: no kernel and nothing saved but shapes.
at::Tensor mean_grad(const at::Tensor& grad, const std::vector<c10::SymInt>& shape, double weight) {
  c10::SymInt n = 1;
  for (const c10::SymInt& d : shape) n = n * d;
  return (grad * weight).div(c10::Scalar(n)).expand_symint(shape);
}

class WassersteinCriticLoss : public torch::autograd::Function<WassersteinCriticLoss> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& real, const at::Tensor& fake) {
    static const auto op = find_op<at::Tensor(const at::Tensor&, const at::Tensor&)>("ganplug::wasserstein_critic_loss");
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->saved_data["real_shape"] = real.sym_sizes();
    ctx->saved_data["fake_shape"] = fake.sym_sizes();
    return op.call(real, fake);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return {mean_grad(grads[0], ctx->saved_data["real_shape"].toSymIntVector(), -1.0),
            mean_grad(grads[0], ctx->saved_data["fake_shape"].toSymIntVector(), 1.0)};
  }
};

class WassersteinGeneratorLoss : public torch::autograd::Function<WassersteinGeneratorLoss> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& fake) {
    static const auto op = find_op<at::Tensor(const at::Tensor&)>("ganplug::wasserstein_generator_loss");
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->saved_data["fake_shape"] = fake.sym_sizes();
    return op.call(fake);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return {mean_grad(grads[0], ctx->saved_data["fake_shape"].toSymIntVector(), -1.0)};
  }
};

// Adjoint of dg_i = (2 grad / B) (1 - t / r_i) g_i with r_i = ||g_i||; rows with r_i = 0 give 0.
class GradientPenaltyBackward : public torch::autograd::Function<GradientPenaltyBackward> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& grad, const at::Tensor& gradients, double target) {
    static const auto op = find_op<at::Tensor(const at::Tensor&, const at::Tensor&, double)>(
        "ganplug::gradient_penalty_backward");
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({grad, gradients});
    ctx->saved_data["target"] = target;
    return op.call(grad, gradients, target);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &grad = saved[0], &gradients = saved[1];
    const double target = ctx->saved_data["target"].toDouble();
    const c10::SymInt rows = gradients.sym_size(0);
    const at::Tensor u = gradients.reshape_symint({rows, -1});
    const at::Tensor w = grads[0].reshape_symint({rows, -1});
    const at::Tensor r = u.norm(2, at::IntArrayRef{1}, /*keepdim=*/true);
    const at::Tensor nonzero = r > 0;
    const at::Tensor zeros = at::zeros_like(r);
    const at::Tensor r_safe = at::where(nonzero, r, at::ones_like(r));
    const at::Tensor shrink = at::where(nonzero, 1 - r_safe.reciprocal() * target, zeros);
    const at::Tensor uw = (u * w).sum(at::IntArrayRef{1}, /*keepdim=*/true);
    const at::Tensor curvature = at::where(nonzero, uw * target / r_safe.pow(3), zeros);
    const c10::Scalar batch(rows);
    const at::Tensor d_grad = (shrink * uw).sum().mul(2.0).div(batch).reshape_symint(grad.sym_sizes());
    const at::Tensor d_gradients =
        (grad * (shrink * w + curvature * u)).mul(2.0).div(batch).reshape_symint(gradients.sym_sizes());
    return {d_grad, d_gradients, at::Tensor()};
  }
};

class GradientPenalty : public torch::autograd::Function<GradientPenalty> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& gradients, double target) {
    static const auto op = find_op<at::Tensor(const at::Tensor&, double)>("ganplug::gradient_penalty");
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({gradients});
    ctx->saved_data["target"] = target;
    return op.call(gradients, target);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    return {GradientPenaltyBackward::apply(grads[0], saved[0], ctx->saved_data["target"].toDouble()), at::Tensor()};
  }
};

// --- linear + LeakyReLU -------------------------------------------------------------------
// Only the output is saved for the activation: with slope >= 0, y > 0 exactly where z > 0.

using LeakyBackwardOp = at::Tensor(const at::Tensor&, const at::Tensor&, double);
using LeakyBiasBackwardOp = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, double);

// dz = dy * mask(y) is linear in dy with a mask that is piecewise constant in y.
class LeakyReluBackward : public torch::autograd::Function<LeakyReluBackward> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& grad_output, const at::Tensor& output,
                            double slope) {
    static const auto op = find_op<LeakyBackwardOp>("ganplug::leaky_relu_backward");
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({output});
    ctx->saved_data["slope"] = slope;
    return op.call(grad_output, output, slope);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    return {apply(grads[0], saved[0], ctx->saved_data["slope"].toDouble()), at::Tensor(), at::Tensor()};
  }
};

// (dz, db = dz.sum(0)) is linear in dy: its adjoint masks grad_dz + grad_db.
class LeakyReluBiasBackward : public torch::autograd::Function<LeakyReluBiasBackward> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& grad_output, const at::Tensor& output,
                               double slope) {
    static const auto op = find_op<LeakyBiasBackwardOp>("ganplug::leaky_relu_bias_backward");
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({output});
    ctx->saved_data["slope"] = slope;
    auto [grad_pre, grad_bias] = op.call(grad_output, output, slope);
    return {grad_pre, grad_bias};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    return {LeakyReluBackward::apply(grads[0] + grads[1], saved[0], ctx->saved_data["slope"].toDouble()),
            at::Tensor(), at::Tensor()};
  }
};

class LinearLeakyRelu : public torch::autograd::Function<LinearLeakyRelu> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& weight,
                            const OptTensor& bias, double slope) {
    static const auto op = find_op<at::Tensor(const at::Tensor&, const at::Tensor&, const OptTensor&, double)>(
        "ganplug::linear_leaky_relu");
    at::AutoDispatchBelowADInplaceOrView guard;
    at::Tensor output = op.call(input, weight, bias, slope);
    ctx->save_for_backward({input, weight, output});
    ctx->saved_data["slope"] = slope;
    ctx->saved_data["has_bias"] = bias.has_value();
    return output;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &input = saved[0], &weight = saved[1], &output = saved[2];
    const double slope = ctx->saved_data["slope"].toDouble();
    at::Tensor grad_pre, grad_bias;
    if (ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(2)) {
      const variable_list g = LeakyReluBiasBackward::apply(grads[0], output, slope);
      grad_pre = g[0];
      grad_bias = g[1];
    } else {
      grad_pre = LeakyReluBackward::apply(grads[0], output, slope);
    }
    // The weight gradient as (input^T grad_pre)^T, the layout torch's linear produces (and MKL's faster one).
    return {ctx->needs_input_grad(0) ? grad_pre.mm(weight) : at::Tensor(),
            ctx->needs_input_grad(1) ? input.t().mm(grad_pre).t() : at::Tensor(), grad_bias, at::Tensor()};
  }
};

at::Tensor linear_leaky_relu_autograd(const at::Tensor& input, const at::Tensor& weight, const OptTensor& bias,
                                      double slope) {
  return LinearLeakyRelu::apply(input, weight, bias, slope);
}

at::Tensor leaky_relu_backward_autograd(const at::Tensor& grad_output, const at::Tensor& output, double slope) {
  return LeakyReluBackward::apply(grad_output, output, slope);
}

std::tuple<at::Tensor, at::Tensor> leaky_relu_bias_backward_autograd(const at::Tensor& grad_output,
                                                                     const at::Tensor& output, double slope) {
  const variable_list out = LeakyReluBiasBackward::apply(grad_output, output, slope);
  return {out[0], out[1]};
}

// --- registration ---------------------------------------------------------------------------

at::Tensor bce_loss_backward_autograd(const at::Tensor& grad, const at::Tensor& logits, const OptTensor& target,
                                      double target_value, double scale) {
  return BceLossBackward::apply(grad, logits, target, target_value, scale);
}

std::tuple<at::Tensor, at::Tensor> discriminator_bce_backward_autograd(const at::Tensor& grad, const at::Tensor& real,
                                                                       const at::Tensor& fake, const OptTensor& real_target,
                                                                       const OptTensor& fake_target, double real_value,
                                                                       double fake_value) {
  const variable_list out = DiscriminatorBceBackward::apply(grad, real, fake, real_target, fake_target, real_value, fake_value);
  return {out[0], out[1]};
}

at::Tensor bce_loss_autograd(const at::Tensor& logits, const OptTensor& target, double target_value, double scale) {
  return BceLoss::apply(logits, target, target_value, scale);
}

at::Tensor discriminator_bce_autograd(const at::Tensor& real, const at::Tensor& fake, const OptTensor& real_target,
                                      const OptTensor& fake_target, double real_value, double fake_value) {
  return DiscriminatorBce::apply(real, fake, real_target, fake_target, real_value, fake_value);
}

// Called directly (not from the loss kernels' forward), the *_and_grad ops are differentiable as
// the loss op and its backward op at upstream 1 are.
std::tuple<at::Tensor, at::Tensor> bce_loss_and_grad_autograd(const at::Tensor& logits, const OptTensor& target,
                                                              double target_value, double scale) {
  const at::Tensor loss = BceLoss::apply(logits, target, target_value, scale);
  return {loss, BceLossBackward::apply(at::ones_like(loss), logits, target, target_value, scale)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> discriminator_bce_and_grad_autograd(
    const at::Tensor& real, const at::Tensor& fake, const OptTensor& real_target, const OptTensor& fake_target,
    double real_value, double fake_value) {
  const at::Tensor loss = DiscriminatorBce::apply(real, fake, real_target, fake_target, real_value, fake_value);
  const variable_list g = DiscriminatorBceBackward::apply(at::ones_like(loss), real, fake, real_target, fake_target,
                                                          real_value, fake_value);
  return {loss, g[0], g[1]};
}

at::Tensor wasserstein_critic_loss_autograd(const at::Tensor& real, const at::Tensor& fake) {
  return WassersteinCriticLoss::apply(real, fake);
}

at::Tensor wasserstein_generator_loss_autograd(const at::Tensor& fake) { return WassersteinGeneratorLoss::apply(fake); }

at::Tensor gradient_penalty_backward_autograd(const at::Tensor& grad, const at::Tensor& gradients, double target) {
  return GradientPenaltyBackward::apply(grad, gradients, target);
}

at::Tensor gradient_penalty_autograd(const at::Tensor& gradients, double target) {
  return GradientPenalty::apply(gradients, target);
}

}  // namespace

TORCH_LIBRARY_IMPL(ganplug, Autograd, m) {
  m.impl("linear_leaky_relu", &linear_leaky_relu_autograd);
  m.impl("leaky_relu_backward", &leaky_relu_backward_autograd);
  m.impl("leaky_relu_bias_backward", &leaky_relu_bias_backward_autograd);
  m.impl("bce_loss", &bce_loss_autograd);
  m.impl("bce_loss_backward", &bce_loss_backward_autograd);
  m.impl("bce_loss_and_grad", &bce_loss_and_grad_autograd);
  m.impl("discriminator_bce", &discriminator_bce_autograd);
  m.impl("discriminator_bce_backward", &discriminator_bce_backward_autograd);
  m.impl("discriminator_bce_and_grad", &discriminator_bce_and_grad_autograd);
  m.impl("wasserstein_critic_loss", &wasserstein_critic_loss_autograd);
  m.impl("wasserstein_generator_loss", &wasserstein_generator_loss_autograd);
  m.impl("gradient_penalty", &gradient_penalty_autograd);
  m.impl("gradient_penalty_backward", &gradient_penalty_backward_autograd);
}

}  // namespace ganplug
