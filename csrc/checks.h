// Argument checks shared by the CPU and CUDA kernels. The Python wrappers in ganplug/ops check
// the same things with friendlier messages; these guard direct torch.ops.ganplug.* calls.
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace ganplug {

inline void check_floating(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), op, ": ", name,
              " must be a floating-point tensor, got ", t.scalar_type());
}

inline void check_like(const at::Tensor& t, const at::Tensor& ref, const char* op,
                       const char* name, const char* ref_name) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but ",
              ref_name, " is on ", ref.device());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", name, " is ", t.scalar_type(),
              " but ", ref_name, " is ", ref.scalar_type());
}

inline void check_nonempty(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.numel() > 0, op, ": ", name, " is empty (shape ", t.sizes(),
              "); the mean over an empty batch is undefined");
}

// A target given as a tensor must have exactly the logits' shape (the Python side broadcasts).
inline void check_target(const std::optional<at::Tensor>& target, const at::Tensor& logits,
                         const char* op, const char* name) {
  if (!target.has_value()) {
    return;
  }
  check_like(*target, logits, op, name, "logits");
  TORCH_CHECK(target->sizes() == logits.sizes(), op, ": ", name, " has shape ",
              target->sizes(), " but the logits have shape ", logits.sizes());
}

inline at::Tensor contiguous_or_undefined(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->contiguous() : at::Tensor();
}

inline void check_bce_args(const at::Tensor& logits, const std::optional<at::Tensor>& target,
                           const char* op, const char* logits_name, const char* target_name) {
  check_floating(logits, op, logits_name);
  check_nonempty(logits, op, logits_name);
  check_target(target, logits, op, target_name);
}

inline void check_score_args(const at::Tensor& real_scores, const at::Tensor& fake_scores, const char* op) {
  check_floating(real_scores, op, "real_scores");
  check_like(fake_scores, real_scores, op, "fake_scores", "real_scores");
  check_nonempty(real_scores, op, "real_scores");
  check_nonempty(fake_scores, op, "fake_scores");
}

// The upstream gradient `grad` of a scalar loss: on the device and of the dtype of the input
// `like`, with one element. Autograd always passes it so; a direct torch.ops.ganplug call may not
// (a CUDA kernel would read a CPU grad as a device pointer).
inline void check_loss_grad(const at::Tensor& grad, const at::Tensor& like, const char* op,
                            const char* like_name) {
  check_like(grad, like, op, "grad", like_name);
  TORCH_CHECK(grad.numel() == 1, op, ": grad must have one element (the upstream gradient of the scalar loss), got shape ",
              grad.sizes());
}

inline void check_penalty_args(const at::Tensor& gradients, const char* op) {
  check_floating(gradients, op, "gradients");
  TORCH_CHECK(gradients.dim() >= 1, op, ": gradients need a batch dimension, got a 0-d tensor");
  check_nonempty(gradients, op, "gradients");
}

inline void check_linear(const at::Tensor& input, const at::Tensor& weight,
                         const std::optional<at::Tensor>& bias, double negative_slope) {
  constexpr const char* op = "linear_leaky_relu";
  check_floating(input, op, "input");
  check_like(weight, input, op, "weight", "input");
  TORCH_CHECK(input.dim() == 2, op, ": input must be 2-D (batch, in_features), got shape ",
              input.sizes());
  TORCH_CHECK(weight.dim() == 2, op, ": weight must be 2-D (out_features, in_features), got shape ",
              weight.sizes());
  TORCH_CHECK(input.size(1) == weight.size(1), op, ": input has ", input.size(1),
              " features but weight expects ", weight.size(1));
  TORCH_CHECK(input.size(0) > 0, op, ": the batch is empty");
  TORCH_CHECK(negative_slope >= 0, op, ": negative_slope must be >= 0, got ", negative_slope);
  if (bias.has_value()) {
    check_like(*bias, input, op, "bias", "input");
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0), op,
                ": bias must have shape (", weight.size(0), ",), got ", bias->sizes());
  }
}

inline void check_leaky_backward(const at::Tensor& grad_output, const at::Tensor& output,
                                 const char* op) {
  check_floating(output, op, "output");
  check_like(grad_output, output, op, "grad_output", "output");
  TORCH_CHECK(grad_output.sizes() == output.sizes(), op, ": grad_output has shape ",
              grad_output.sizes(), " but output has shape ", output.sizes());
}

inline void check_dropout(const at::Tensor& input, double p) {
  check_floating(input, "dropout", "input");
  TORCH_CHECK(p >= 0.0 && p < 1.0, "dropout: p must be in [0, 1), got ", p);
}

// bias_leaky_relu: input (N, C, *) non-empty, bias (C,) like input, slope >= 0.
inline void check_bias_act(const at::Tensor& input, const std::optional<at::Tensor>& bias, double negative_slope) {
  constexpr const char* op = "bias_leaky_relu";
  check_floating(input, op, "input");
  TORCH_CHECK(input.dim() >= 2, op, ": input must be (N, C, *) with at least 2 dims, got shape ", input.sizes());
  TORCH_CHECK(input.numel() > 0, op, ": input is empty (shape ", input.sizes(), ")");
  TORCH_CHECK(negative_slope >= 0, op, ": negative_slope must be >= 0, got ", negative_slope);
  if (bias.has_value()) {
    check_like(*bias, input, op, "bias", "input");
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == input.size(1), op, ": bias must have shape (", input.size(1),
                ",) for input of shape ", input.sizes(), ", got ", bias->sizes());
  }
}

// bias_leaky_relu_backward: grad_output and output alike, (N, C, *), non-empty.
inline void check_bias_act_backward(const at::Tensor& grad_output, const at::Tensor& output) {
  constexpr const char* op = "bias_leaky_relu_backward";
  check_leaky_backward(grad_output, output, op);
  TORCH_CHECK(output.dim() >= 2, op, ": output must be (N, C, *) with at least 2 dims, got shape ", output.sizes());
  TORCH_CHECK(output.numel() > 0, op, ": output is empty (shape ", output.sizes(), ")");
}

}  // namespace ganplug
