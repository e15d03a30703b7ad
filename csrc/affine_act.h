// affine_leaky_relu: y = leaky_relu(input * scale + shift) over the channels (dim 1) of (N, C, *) maps,
// scale and shift each absent, per channel (C,) or per sample and channel (N, C). Shared by the CPU
// and CUDA kernels: the argument checks (in ganplug/ops/reference.py's words) and the coefficients.
// Layouts are bias_act.h's: channels innermost, or planes (n, c) of prod(*) elements.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <vector>

#include "bias_act.h"
#include "checks.h"

namespace ganplug {

// scale or shift: absent, (C,) or (N, C) for input (N, C, *), floating-point like the input.
inline void check_affine_coefficient(const std::optional<at::Tensor>& t, const at::Tensor& input, const char* op,
                                     const char* name) {
  if (!t.has_value()) return;
  check_floating(*t, op, name);
  const bool per_channel = t->dim() == 1 && t->sym_size(0) == input.sym_size(1);
  const bool per_sample = t->dim() == 2 && t->sym_size(0) == input.sym_size(0) && t->sym_size(1) == input.sym_size(1);
  TORCH_CHECK_VALUE(per_channel || per_sample, op, ": ", name, " must have shape (", input.sym_size(1), ",) or (",
                    input.sym_size(0), ", ", input.sym_size(1), ") for input of shape ", shape_of(input), ", got ",
                    shape_of(*t));
}

inline void check_affine_act(const at::Tensor& input, const std::optional<at::Tensor>& scale,
                             const std::optional<at::Tensor>& shift, double negative_slope, const char* op) {
  check_floating(input, op, "input");
  TORCH_CHECK_VALUE(input.dim() >= 2, op, ": input must be (N, C, *) with at least 2 dims, got shape ",
                    shape_of(input));
  check_affine_coefficient(scale, input, op, "scale");
  check_affine_coefficient(shift, input, op, "shift");
  check_slope(negative_slope, op);
  check_nonempty(input, op, "input");
  if (scale.has_value()) check_like(*scale, input, op, "scale", "input");
  if (shift.has_value()) check_like(*shift, input, op, "shift", "input");
}

// affine_leaky_relu_backward: the forward's arguments, and grad_output like the input.
inline void check_affine_act_backward(const at::Tensor& grad_output, const at::Tensor& input,
                                      const std::optional<at::Tensor>& scale, const std::optional<at::Tensor>& shift,
                                      double negative_slope) {
  constexpr const char* op = "affine_leaky_relu_backward";
  check_affine_act(input, scale, shift, negative_slope, op);
  check_like(grad_output, input, op, "grad_output", "input");
  TORCH_CHECK_VALUE(grad_output.sym_sizes() == input.sym_sizes(), op, ": grad_output has shape ",
                    shape_of(grad_output), " but input has shape ", shape_of(input));
}

// The gradient of a coefficient: shaped like it ((C,) or (N, C)), or (0,) when it is absent.
inline at::Tensor empty_coefficient_grad(const std::optional<at::Tensor>& t, const at::Tensor& input) {
  return t.has_value() ? at::empty(t->sizes(), input.options()) : at::empty({0}, input.options());
}

// A coefficient (C,) or (N, C) viewed to broadcast against an input of `dims` dims: (1, C, 1, ...) or (N, C, 1, ...).
inline at::Tensor broadcastable(const at::Tensor& coefficient, int64_t dims) {
  std::vector<c10::SymInt> shape(static_cast<size_t>(dims), c10::SymInt(1));
  if (coefficient.dim() == 2) shape[0] = coefficient.sym_size(0);
  shape[1] = coefficient.sym_size(-1);
  return coefficient.reshape_symint(shape);
}

// `full` (shaped like the input) summed to a coefficient's shape: over every dim but 1, or but 0 and 1.
inline at::Tensor reduce_to(const at::Tensor& full, const at::Tensor& coefficient) {
  std::vector<int64_t> dims;
  for (int64_t d = 0; d < full.dim(); ++d) {
    if (d != 1 && !(d == 0 && coefficient.dim() == 2)) dims.push_back(d);
  }
  return dims.empty() ? full : full.sum(dims);
}

}  // namespace ganplug
