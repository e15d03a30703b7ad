// Argument checks shared by the CPU and CUDA kernels: the one place where the ops' inputs are
// checked on the kernel path (ganplug/ops/reference.py checks the same for the fallback). Each
// message names the op, what was wrong and what to do, in Python's spelling of shapes and dtypes;
// a wrong kind or dtype raises TypeError in Python (TORCH_CHECK_TYPE), anything else ValueError.
#pragma once

#include <ATen/ATen.h>
#include <ATen/ExpandUtils.h>

#include <cmath>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

namespace ganplug {

// "(2, 5)", "(12,)" or "()", as Python prints a torch.Size's tuple.
inline std::string shape_of(const at::Tensor& t) {
  const c10::SymIntArrayRef sizes = t.sym_sizes();
  std::ostringstream s;
  s << '(';
  for (size_t i = 0; i < sizes.size(); ++i) s << (i > 0 ? ", " : "") << sizes[i];
  s << (sizes.size() == 1 ? ",)" : ")");
  return s.str();
}

// "torch.float32", as Python prints a dtype.
inline std::string dtype_of(const at::Tensor& t) {
  return "torch." + std::string(c10::getDtypeNames(t.scalar_type()).first);
}

inline void check_floating(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), op, ": ", name, " must be a floating-point tensor, got ",
                   dtype_of(t), "; convert it with .float()");
}

inline void check_like(const at::Tensor& t, const at::Tensor& ref, const char* op, const char* name,
                       const char* ref_name) {
  TORCH_CHECK_VALUE(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but ", ref_name, " is on ",
                    ref.device(), "; move both to one device");
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), op, ": ", name, " is ", dtype_of(t), " but ", ref_name,
                   " is ", dtype_of(ref), "; cast both to one dtype");
}

inline void check_nonempty(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK_VALUE(t.sym_numel() != 0, op, ": ", name, " is empty (shape ", shape_of(t),
                    "); the batch needs at least one sample");
}

inline void check_slope(double negative_slope, const char* op) {
  TORCH_CHECK_VALUE(std::isfinite(negative_slope) && negative_slope >= 0, op,
                    ": negative_slope must be a finite number >= 0, got ", negative_slope);
}

// Floating-point, non-empty logits (or scores).
inline void check_logits(const at::Tensor& t, const char* op, const char* name) {
  check_floating(t, op, name);
  check_nonempty(t, op, name);
}

inline void check_score_pair(const at::Tensor& real, const at::Tensor& fake, const char* op, const char* real_name,
                             const char* fake_name) {
  check_logits(real, op, real_name);
  check_logits(fake, op, fake_name);
  check_like(fake, real, op, fake_name, real_name);
}

// A BCE target: a tensor on the logits' device that broadcasts to their shape (any dtype: it is
// cast to theirs), else a probability.
inline void check_target(const std::optional<at::Tensor>& target, double target_value, const at::Tensor& logits,
                         const char* op, const char* name) {
  if (!target.has_value()) {
    TORCH_CHECK_VALUE(target_value >= 0 && target_value <= 1, op, ": ", name,
                      " must be a probability in [0, 1] or a tensor of them, got ", target_value);
    return;
  }
  TORCH_CHECK_VALUE(target->device() == logits.device(), op, ": ", name, " is on ", target->device(),
                    " but the logits are on ", logits.device());
  TORCH_CHECK_VALUE(at::is_expandable_to(target->sym_sizes(), logits.sym_sizes()), op, ": ", name, " of shape ",
                    shape_of(*target), " does not broadcast to the logits' shape ", shape_of(logits));
}

// A tensor target as the kernels read it: the logits' dtype and shape, contiguous; undefined when absent.
inline at::Tensor target_like(const std::optional<at::Tensor>& target, const at::Tensor& logits) {
  return target.has_value() ? target->to(logits.scalar_type()).expand_as(logits).contiguous() : at::Tensor();
}

inline void check_bce_args(const at::Tensor& logits, const std::optional<at::Tensor>& target, double target_value,
                           const char* op, const char* logits_name, const char* target_name) {
  check_logits(logits, op, logits_name);
  check_target(target, target_value, logits, op, target_name);
}

inline void check_discriminator_args(const at::Tensor& real, const at::Tensor& fake,
                                     const std::optional<at::Tensor>& real_target,
                                     const std::optional<at::Tensor>& fake_target, double real_value,
                                     double fake_value, const char* op) {
  check_score_pair(real, fake, op, "real_logits", "fake_logits");
  check_target(real_target, real_value, real, op, "real_target");
  check_target(fake_target, fake_value, fake, op, "fake_target");
}

// The upstream gradient `grad` of a scalar loss: on the device and of the dtype of the input
// `like`, with one element. Autograd always passes it so; a direct torch.ops.ganplug call may not
// (a CUDA kernel would read a CPU grad as a device pointer).
inline void check_loss_grad(const at::Tensor& grad, const at::Tensor& like, const char* op,
                            const char* like_name) {
  check_like(grad, like, op, "grad", like_name);
  TORCH_CHECK_VALUE(grad.sym_numel() == 1, op,
                    ": grad must have one element (the upstream gradient of the scalar loss), got shape ",
                    shape_of(grad));
}

inline void check_penalty_args(const at::Tensor& gradients, double target, const char* op) {
  check_floating(gradients, op, "gradients");
  TORCH_CHECK_VALUE(gradients.dim() >= 1, op, ": gradients need a batch dimension (B, ...), got a 0-d tensor");
  check_nonempty(gradients, op, "gradients");
  TORCH_CHECK_VALUE(std::isfinite(target), op, ": target must be a finite number, got ", target);
}

// linear_leaky_relu: input (*, in_features), weight (out_features, in_features), bias (out_features,).
inline void check_linear(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                         double negative_slope) {
  constexpr const char* op = "linear_leaky_relu";
  check_floating(input, op, "input");
  check_floating(weight, op, "weight");
  TORCH_CHECK_VALUE(weight.dim() == 2, op, ": weight must be 2-D (out_features, in_features), got shape ",
                    shape_of(weight));
  TORCH_CHECK_VALUE(input.dim() > 0 && input.sym_size(-1) == weight.sym_size(1), op, ": input of shape ",
                    shape_of(input), " does not end in weight's in_features=", weight.sym_size(1));
  if (bias.has_value()) {
    check_floating(*bias, op, "bias");
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->sym_size(0) == weight.sym_size(0), op, ": bias must have shape (",
                      weight.sym_size(0), ",), got ", shape_of(*bias));
  }
  check_slope(negative_slope, op);
  check_nonempty(input, op, "input");
  check_like(weight, input, op, "weight", "input");
  if (bias.has_value()) check_like(*bias, input, op, "bias", "input");
}

// linear_leaky_relu's input as the (M, in_features) matrix the kernels multiply, and their (M,
// out_features) result back in the input's leading shape.
inline at::Tensor as_matrix(const at::Tensor& input) {
  return input.dim() == 2 ? input : input.reshape_symint({c10::SymInt(-1), input.sym_size(-1)});
}

inline at::Tensor in_input_shape(const at::Tensor& out, const at::Tensor& input) {
  if (input.dim() == 2) return out;
  std::vector<c10::SymInt> shape = input.sym_sizes().vec();
  shape.back() = out.sym_size(1);
  return out.view_symint(shape);
}

inline void check_leaky_backward(const at::Tensor& grad_output, const at::Tensor& output, const char* op) {
  check_floating(output, op, "output");
  check_like(grad_output, output, op, "grad_output", "output");
  TORCH_CHECK_VALUE(grad_output.sym_sizes() == output.sym_sizes(), op, ": grad_output has shape ",
                    shape_of(grad_output), " but output has shape ", shape_of(output));
}

// leaky_relu_bias_backward: grad_output and output alike, (batch, features).
inline void check_leaky_bias_backward(const at::Tensor& grad_output, const at::Tensor& output) {
  constexpr const char* op = "leaky_relu_bias_backward";
  check_leaky_backward(grad_output, output, op);
  TORCH_CHECK_VALUE(output.dim() == 2, op, ": output must be 2-D (batch, features), got shape ", shape_of(output));
}

inline void check_dropout(const at::Tensor& input, double p) {
  check_floating(input, "dropout", "input");
  TORCH_CHECK_VALUE(p >= 0.0 && p <= 1.0, "dropout: p must be a probability in [0, 1], got ", p);
}

// bias_leaky_relu: input (N, C, *) non-empty, bias (C,) like input, slope finite and >= 0.
inline void check_bias_act(const at::Tensor& input, const std::optional<at::Tensor>& bias, double negative_slope) {
  constexpr const char* op = "bias_leaky_relu";
  check_floating(input, op, "input");
  TORCH_CHECK_VALUE(input.dim() >= 2, op, ": input must be (N, C, *) with at least 2 dims, got shape ",
                    shape_of(input));
  if (bias.has_value()) {
    check_floating(*bias, op, "bias");
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->sym_size(0) == input.sym_size(1), op, ": bias must have shape (",
                      input.sym_size(1), ",) for input of shape ", shape_of(input), ", got ", shape_of(*bias));
  }
  check_slope(negative_slope, op);
  check_nonempty(input, op, "input");
  if (bias.has_value()) check_like(*bias, input, op, "bias", "input");
}

// bias_leaky_relu_backward: grad_output and output alike, (N, C, *), non-empty.
inline void check_bias_act_backward(const at::Tensor& grad_output, const at::Tensor& output) {
  constexpr const char* op = "bias_leaky_relu_backward";
  check_leaky_backward(grad_output, output, op);
  TORCH_CHECK_VALUE(output.dim() >= 2, op, ": output must be (N, C, *) with at least 2 dims, got shape ",
                    shape_of(output));
  check_nonempty(output, op, "output");
}

// diff_augment (and its linear part): images x (N, C, H, W) of floats, per-sample parameters shift
// (N, 2) and cut (N, 4) int64 and color (N, 3) floating-point, all on x's device.
inline void check_diff_augment(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& cut,
                               const at::Tensor& color) {
  constexpr const char* op = "diff_augment";
  check_floating(x, op, "x");
  TORCH_CHECK_VALUE(x.dim() == 4, op, ": x must be float images (N, C, H, W), got ", dtype_of(x), " ", shape_of(x));
  const auto check_param = [&](const at::Tensor& t, const char* name, int64_t width, const char* kind, bool kind_ok) {
    TORCH_CHECK_VALUE(t.dim() == 2 && t.sym_size(0) == x.sym_size(0) && t.sym_size(1) == width && kind_ok &&
                          t.device() == x.device(),
                      op, ": ", name, " must be ", kind, " (", x.sym_size(0), ", ", width, ") on ", x.device(),
                      ", got ", dtype_of(t), " ", shape_of(t), " on ", t.device());
  };
  check_param(shift, "shift", 2, "int64", shift.scalar_type() == at::kLong);
  check_param(cut, "cut", 4, "int64", cut.scalar_type() == at::kLong);
  check_param(color, "color", 3, "float", at::isFloatingType(color.scalar_type()));
}

}  // namespace ganplug
