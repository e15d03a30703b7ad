// Autograd kernels of every op and its backward ops, in C++: the same formulas registered with
// torch.library.register_autograd cost 30-40 us more per fwd+bwd call on one CPU thread, twice the
// whole call of a GAN-batch loss and 10-30% of a small layer's (measured with both forms in one
// process, interleaved; numbers in the commit that wrote this line).
// Each backward calls a backward op that is itself differentiable, so gradients of gradients work.
#include <ATen/ATen.h>
#include <ATen/EmptyTensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/library.h>

#include "checks.h"

#include <mutex>
#include <optional>
#include <utility>

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

// The losses run once or twice per training step on a small batch, where the cost of
// torch::autograd::Function (~5 us a call: AutogradContext bookkeeping, a demangled node name per
// backward) is a tenth of the whole forward+backward. Their graph nodes are written the way
// torch's generated ones are instead.
//
// For the BCE losses, when the logits need a gradient, the forward runs the *_and_grad op (loss
// and d loss / d logits from one pass) and keeps that gradient in the node, so a first-order
// backward is grad * kept, or the kept tensor itself when the upstream gradient is the plain CPU 1 that backward() and
// autograd.grad seed a scalar loss with. Under create_graph, or in a second backward of a retained
// graph, the backward runs the differentiable backward op instead.
using AndGradOp = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const OptTensor&, double, double);
using DiscriminatorAndGradOp = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const OptTensor&, const OptTensor&, double, double);

using torch::autograd::SavedVariable;

// The value of `t` when it is a dense CPU float32/float64 0-d tensor, not a fake, functional or
// batched wrapper (those carry extra dispatch keys), so that reading it costs nothing.
std::optional<double> plain_cpu_scalar(const at::Tensor& t) {
  // The keys of a dense CPU tensor outside inference mode, from the CPU allocator itself: a tensor
  // made through the dispatcher here while torch.compile traces would be a fake one.
  static const c10::DispatchKeySet plain_cpu = [] {
    c10::InferenceMode not_inference(false);
    return at::detail::empty_cpu({}, at::kFloat, false).key_set();
  }();
  if (t.dim() != 0 || t.key_set() != plain_cpu) return std::nullopt;
  if (t.scalar_type() == at::kFloat) return *t.const_data_ptr<float>();
  if (t.scalar_type() == at::kDouble) return *t.const_data_ptr<double>();
  return std::nullopt;
}

// d loss / d logits from the gradient kept at forward time, which is handed out (and so gone)
// when the upstream gradient is 1.
at::Tensor use_kept(const at::Tensor& grad, at::Tensor& kept) {
  return plain_cpu_scalar(grad) == 1.0 ? std::exchange(kept, at::Tensor()) : grad * kept;
}

// A node of type NodeT with an edge to each input, or null when no input needs a gradient.
template <typename NodeT, typename... Inputs>
c10::intrusive_ptr<NodeT> new_node(const Inputs&... inputs) {
  if (!torch::autograd::compute_requires_grad(inputs...)) return {};
  auto node = c10::make_intrusive<NodeT>();
  node->set_next_edges(torch::autograd::collect_next_edges(inputs...));
  return node;
}

OptTensor unpack_optional(const SavedVariable& saved) { return optional(saved.unpack()); }

// mean(bce(logits, target)) * scale; edges: logits, target.
struct BceLossNode : public torch::autograd::Node {
  SavedVariable logits, target;
  double target_value = 0, scale = 1;
  at::Tensor kept_grad;  // d loss / d logits at upstream 1, when the logits needed a gradient

  std::string name() const override { return "BceLossBackward"; }

  variable_list apply(variable_list&& grads) override {
    std::lock_guard<std::mutex> lock(mutex_);
    const at::Tensor& grad = grads[0];
    if (!grad.defined()) return variable_list(2);  // an undefined upstream gradient means zero
    at::Tensor d_logits;
    if (task_should_compute_output(0)) {
      if (kept_grad.defined() && !at::GradMode::is_enabled()) {
        d_logits = use_kept(grad, kept_grad);
      } else {
        d_logits = BceLossBackward::apply(grad, logits.unpack(), unpack_optional(target),
                                          target_value, scale);
      }
    }
    at::Tensor d_target;
    if (task_should_compute_output(1)) d_target = target_grad(grad, logits.unpack(), target.unpack(), scale);
    return {d_logits, d_target};
  }

  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    logits.reset_data();
    target.reset_data();
    kept_grad.reset();
  }
};

at::Tensor bce_loss_autograd(const at::Tensor& logits, const OptTensor& target, double target_value, double scale) {
  static const auto op = find_op<at::Tensor(const at::Tensor&, const OptTensor&, double, double)>("ganplug::bce_loss");
  static const auto and_grad = find_op<AndGradOp>("ganplug::bce_loss_and_grad");
  const auto node = new_node<BceLossNode>(logits, target);
  if (node) {
    node->logits = SavedVariable(logits, false);
    if (target) node->target = SavedVariable(*target, false);
    node->target_value = target_value;
    node->scale = scale;
  }
  at::Tensor loss;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    if (node && logits.requires_grad()) {
      std::tie(loss, node->kept_grad) = and_grad.call(logits, target, target_value, scale);
    } else {
      loss = op.call(logits, target, target_value, scale);
    }
  }
  if (node) torch::autograd::set_history(loss, node);
  return loss;
}

// mean(bce(real, real_target)) + mean(bce(fake, fake_target)); edges: real, fake, real_target, fake_target.
struct DiscriminatorBceNode : public torch::autograd::Node {
  SavedVariable real, fake, real_target, fake_target;
  double real_value = 1, fake_value = 0;
  at::Tensor kept_real, kept_fake;  // d loss / d logits at upstream 1, when the logits needed a gradient

  std::string name() const override { return "DiscriminatorBceBackward"; }

  variable_list apply(variable_list&& grads) override {
    std::lock_guard<std::mutex> lock(mutex_);
    const at::Tensor& grad = grads[0];
    if (!grad.defined()) return variable_list(4);  // an undefined upstream gradient means zero
    at::Tensor d_real, d_fake;
    if (task_should_compute_output(0) || task_should_compute_output(1)) {
      if (kept_real.defined() && !at::GradMode::is_enabled()) {
        d_real = use_kept(grad, kept_real);
        d_fake = use_kept(grad, kept_fake);
      } else {
        const variable_list g =
            DiscriminatorBceBackward::apply(grad, real.unpack(), fake.unpack(), unpack_optional(real_target),
                                            unpack_optional(fake_target), real_value, fake_value);
        d_real = g[0];
        d_fake = g[1];
      }
    }
    at::Tensor d_real_target, d_fake_target;
    if (task_should_compute_output(2)) d_real_target = target_grad(grad, real.unpack(), real_target.unpack(), 1.0);
    if (task_should_compute_output(3)) d_fake_target = target_grad(grad, fake.unpack(), fake_target.unpack(), 1.0);
    return {d_real, d_fake, d_real_target, d_fake_target};
  }

  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    real.reset_data();
    fake.reset_data();
    real_target.reset_data();
    fake_target.reset_data();
    kept_real.reset();
    kept_fake.reset();
  }
};

at::Tensor discriminator_bce_autograd(const at::Tensor& real, const at::Tensor& fake, const OptTensor& real_target,
                                      const OptTensor& fake_target, double real_value, double fake_value) {
  static const auto op = find_op<at::Tensor(const at::Tensor&, const at::Tensor&, const OptTensor&, const OptTensor&,
                                            double, double)>("ganplug::discriminator_bce");
  static const auto and_grad = find_op<DiscriminatorAndGradOp>("ganplug::discriminator_bce_and_grad");
  check_discriminator_args(real, fake, real_target, fake_target, real_value, fake_value, "discriminator_bce");
  const auto node = new_node<DiscriminatorBceNode>(real, fake, real_target, fake_target);
  if (node) {
    node->real = SavedVariable(real, false);
    node->fake = SavedVariable(fake, false);
    if (real_target) node->real_target = SavedVariable(*real_target, false);
    if (fake_target) node->fake_target = SavedVariable(*fake_target, false);
    node->real_value = real_value;
    node->fake_value = fake_value;
  }
  at::Tensor loss;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    if (node && (real.requires_grad() || fake.requires_grad())) {
      std::tie(loss, node->kept_real, node->kept_fake) =
          and_grad.call(real, fake, real_target, fake_target, real_value, fake_value);
    } else {
      loss = op.call(real, fake, real_target, fake_target, real_value, fake_value);
    }
  }
  if (node) torch::autograd::set_history(loss, node);
  return loss;
}

// The gradient of weight * mean(x) is a broadcast: no kernel and nothing saved but the shape.
// For a plain CPU upstream gradient outside create_graph it is materialised (contiguous, so .grad
// can take it as is).
at::Tensor mean_grad(const at::Tensor& grad, const std::vector<c10::SymInt>& shape, double weight) {
  c10::SymInt n = 1;
  for (const c10::SymInt& d : shape) n = n * d;
  const auto g = at::GradMode::is_enabled() ? std::nullopt : plain_cpu_scalar(grad);
  if (g) {
    return at::full_symint(shape, *g * weight / static_cast<double>(n.expect_int()), grad.options());
  }
  return (grad * weight).div(c10::Scalar(n)).expand_symint(shape);
}

// mean(fake) - mean(real); edges: real, fake.
struct WassersteinCriticNode : public torch::autograd::Node {
  std::vector<c10::SymInt> real_shape, fake_shape;

  std::string name() const override { return "WassersteinCriticLossBackward"; }

  variable_list apply(variable_list&& grads) override {
    const at::Tensor& grad = grads[0];
    if (!grad.defined()) return variable_list(2);
    return {task_should_compute_output(0) ? mean_grad(grad, real_shape, -1.0) : at::Tensor(),
            task_should_compute_output(1) ? mean_grad(grad, fake_shape, 1.0) : at::Tensor()};
  }
};

at::Tensor wasserstein_critic_loss_autograd(const at::Tensor& real, const at::Tensor& fake) {
  static const auto op = find_op<at::Tensor(const at::Tensor&, const at::Tensor&)>("ganplug::wasserstein_critic_loss");
  const auto node = new_node<WassersteinCriticNode>(real, fake);
  if (node) {
    node->real_shape = real.sym_sizes().vec();
    node->fake_shape = fake.sym_sizes().vec();
  }
  at::Tensor loss;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    loss = op.call(real, fake);
  }
  if (node) torch::autograd::set_history(loss, node);
  return loss;
}

// -mean(fake); edge: fake.
struct WassersteinGeneratorNode : public torch::autograd::Node {
  std::vector<c10::SymInt> fake_shape;

  std::string name() const override { return "WassersteinGeneratorLossBackward"; }

  variable_list apply(variable_list&& grads) override {
    if (!grads[0].defined()) return variable_list(1);
    return {mean_grad(grads[0], fake_shape, -1.0)};
  }
};

at::Tensor wasserstein_generator_loss_autograd(const at::Tensor& fake) {
  static const auto op = find_op<at::Tensor(const at::Tensor&)>("ganplug::wasserstein_generator_loss");
  const auto node = new_node<WassersteinGeneratorNode>(fake);
  if (node) node->fake_shape = fake.sym_sizes().vec();
  at::Tensor loss;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    loss = op.call(fake);
  }
  if (node) torch::autograd::set_history(loss, node);
  return loss;
}

// Adjoint of dg_i = (2 grad / B) (1 - t / r_i) g_i with r_i = ||g_i||; rows with r_i = 0 give 0,
// rows with a NaN norm NaN throughout (as the reference: "nonzero" is r != 0, true for NaN).
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
    const at::Tensor nonzero = r != 0;
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

  // Any leading dims of the input are flattened: (M, K) rows against (M, N) gradients.
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& weight = saved[1];
    const at::Tensor input = as_matrix(saved[0]), output = as_matrix(saved[2]), grad_output = as_matrix(grads[0]);
    const double slope = ctx->saved_data["slope"].toDouble();
    at::Tensor grad_pre, grad_bias;
    if (ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(2)) {
      const variable_list g = LeakyReluBiasBackward::apply(grad_output, output, slope);
      grad_pre = g[0];
      grad_bias = g[1];
    } else {
      grad_pre = LeakyReluBackward::apply(grad_output, output, slope);
    }
    // The weight gradient grad_pre^T input is contiguous like the weight, as torch's linear gives
    // it: a transposed one would be copied again by autograd's gradient accumulation.
    return {ctx->needs_input_grad(0) ? grad_pre.mm(weight).view_symint(saved[0].sym_sizes()) : at::Tensor(),
            ctx->needs_input_grad(1) ? grad_pre.t().mm(input) : at::Tensor(), grad_bias, at::Tensor()};
  }
};

at::Tensor linear_leaky_relu_autograd(const at::Tensor& input, const at::Tensor& weight, const OptTensor& bias,
                                      double slope) {
  if (!torch::autograd::compute_requires_grad(input, weight, bias)) {
    // Nothing to differentiate: skip the autograd::Function (~4 us, 5% of a 64x100->256 layer).
    static const auto op = find_op<at::Tensor(const at::Tensor&, const at::Tensor&, const OptTensor&, double)>(
        "ganplug::linear_leaky_relu");
    at::AutoDispatchBelowADInplaceOrView guard;
    return op.call(input, weight, bias, slope);
  }
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

// The mask depends only on (seed, index), so the backward is the same op on the gradient: linear,
// self-adjoint, and differentiable to any order.
class Dropout : public torch::autograd::Function<Dropout> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, double p, int64_t seed) {
    static const auto op = find_op<at::Tensor(const at::Tensor&, double, int64_t)>("ganplug::dropout");
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->saved_data["p"] = p;
    ctx->saved_data["seed"] = seed;
    return op.call(input, p, seed);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor grad = Dropout::apply(grads[0], ctx->saved_data["p"].toDouble(), ctx->saved_data["seed"].toInt());
    return {grad, at::Tensor(), at::Tensor()};
  }
};

at::Tensor dropout_autograd(const at::Tensor& input, double p, int64_t seed) { return Dropout::apply(input, p, seed); }

// --- bias + LeakyReLU over the channels (dim 1) of (N, C, *) maps ---------------------------
// Only the output is saved, as for linear + LeakyReLU.

using BiasActOp = at::Tensor(const at::Tensor&, const OptTensor&, double);

// (dz, db = dz summed over every dim but 1) is linear in dy: its adjoint masks grad_dz + grad_db
// broadcast over dim 1.
class BiasLeakyReluBackward : public torch::autograd::Function<BiasLeakyReluBackward> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& grad_output, const at::Tensor& output,
                               double slope) {
    static const auto op = find_op<LeakyBiasBackwardOp>("ganplug::bias_leaky_relu_backward");
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({output});
    ctx->saved_data["slope"] = slope;
    auto [grad_input, grad_bias] = op.call(grad_output, output, slope);
    return {grad_input, grad_bias};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& output = saved[0];
    std::vector<c10::SymInt> channel_shape(static_cast<size_t>(output.dim()), c10::SymInt(1));
    channel_shape[1] = output.sym_size(1);
    const at::Tensor upstream = grads[0] + grads[1].reshape_symint(channel_shape);
    return {LeakyReluBackward::apply(upstream, output, ctx->saved_data["slope"].toDouble()), at::Tensor(),
            at::Tensor()};
  }
};

class BiasLeakyRelu : public torch::autograd::Function<BiasLeakyRelu> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const OptTensor& bias, double slope) {
    static const auto op = find_op<BiasActOp>("ganplug::bias_leaky_relu");
    at::AutoDispatchBelowADInplaceOrView guard;
    at::Tensor output = op.call(input, bias, slope);
    ctx->save_for_backward({output});
    ctx->saved_data["slope"] = slope;
    ctx->saved_data["has_bias"] = bias.has_value();
    return output;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const double slope = ctx->saved_data["slope"].toDouble();
    if (ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(1)) {
      const variable_list g = BiasLeakyReluBackward::apply(grads[0], saved[0], slope);
      return {ctx->needs_input_grad(0) ? g[0] : at::Tensor(), g[1], at::Tensor()};
    }
    return {LeakyReluBackward::apply(grads[0], saved[0], slope), at::Tensor(), at::Tensor()};
  }
};

at::Tensor bias_leaky_relu_autograd(const at::Tensor& input, const OptTensor& bias, double slope) {
  return BiasLeakyRelu::apply(input, bias, slope);
}

std::tuple<at::Tensor, at::Tensor> bias_leaky_relu_backward_autograd(const at::Tensor& grad_output,
                                                                     const at::Tensor& output, double slope) {
  const variable_list out = BiasLeakyReluBackward::apply(grad_output, output, slope);
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

// Called directly (not from the loss kernels' forward), the *_and_grad ops are differentiable as
// the loss op and its backward op at upstream 1 are.
// The *_and_grad ops called with nothing to differentiate run their fused kernel (which names
// itself in its errors); otherwise they are composed of the differentiable loss and backward ops.
std::tuple<at::Tensor, at::Tensor> bce_loss_and_grad_autograd(const at::Tensor& logits, const OptTensor& target,
                                                              double target_value, double scale) {
  if (!torch::autograd::compute_requires_grad(logits, target)) {
    static const auto and_grad = find_op<AndGradOp>("ganplug::bce_loss_and_grad");
    at::AutoDispatchBelowADInplaceOrView guard;
    return and_grad.call(logits, target, target_value, scale);
  }
  const at::Tensor loss = bce_loss_autograd(logits, target, target_value, scale);
  return {loss, BceLossBackward::apply(at::ones_like(loss), logits, target, target_value, scale)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> discriminator_bce_and_grad_autograd(
    const at::Tensor& real, const at::Tensor& fake, const OptTensor& real_target, const OptTensor& fake_target,
    double real_value, double fake_value) {
  if (!torch::autograd::compute_requires_grad(real, fake, real_target, fake_target)) {
    static const auto and_grad = find_op<DiscriminatorAndGradOp>("ganplug::discriminator_bce_and_grad");
    at::AutoDispatchBelowADInplaceOrView guard;
    return and_grad.call(real, fake, real_target, fake_target, real_value, fake_value);
  }
  const at::Tensor loss = discriminator_bce_autograd(real, fake, real_target, fake_target, real_value, fake_value);
  const variable_list g = DiscriminatorBceBackward::apply(at::ones_like(loss), real, fake, real_target, fake_target,
                                                          real_value, fake_value);
  return {loss, g[0], g[1]};
}

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
  m.impl("bias_leaky_relu", &bias_leaky_relu_autograd);
  m.impl("bias_leaky_relu_backward", &bias_leaky_relu_backward_autograd);
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
  m.impl("dropout", &dropout_autograd);
}

}  // namespace ganplug
