// CUDA kernels of batch_norm_leaky_relu and group_norm_leaky_relu and their backward: for now compositions of
// ATen's CUDA kernels (torch.var_mean for the statistics, elementwise ops for the normalisation and activation, the
// formula of composite_backward in ../norm_act.h for the backward), so dcgan and resnet run on CUDA with the same
// results as on CPU. Not fused: several passes where the CPU kernels take two; a fused CUDA kernel is future work
// (its benchmark rows decide when it earns its place). Outputs are laid out as the CPU kernels lay them out.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "../norm_act.h"

namespace ganplug {
namespace {

using OptTensor = std::optional<at::Tensor>;
using Triple = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

// `t` copied into the output layout of the kernels (bias_act.h) for an input in the layout chosen by `innermost`.
at::Tensor laid_out(const at::Tensor& t, const at::Tensor& like, bool innermost) {
  return empty_in_layout(like, innermost).copy_(t);
}

Triple norm_act_cuda(const at::Tensor& input, int64_t groups, const OptTensor& weight, const OptTensor& bias,
                     double eps, double negative_slope) {
  check_norm_act(input, groups, weight, bias, eps, negative_slope, false);
  const c10::cuda::CUDAGuard device_guard(input.device());
  const bool innermost = channels_innermost(input);
  const at::Tensor x = in_layout(input, innermost);
  const at::Tensor wide = x.to(stats_dtype(x));
  at::Tensor var, mean;
  if (groups == 0) {
    std::vector<int64_t> dims;
    for (int64_t d = 0; d < x.dim(); ++d) {
      if (d != 1) dims.push_back(d);
    }
    std::tie(var, mean) = at::var_mean(wide, dims, /*correction=*/0, /*keepdim=*/false);
  } else {
    std::tie(var, mean) = at::var_mean(wide.reshape({x.size(0), groups, -1}), {2}, /*correction=*/0, false);
  }
  at::Tensor z = (wide - spread(mean, x, groups)) * spread((var + eps).rsqrt(), x, groups);
  if (weight.has_value()) z = z * broadcastable(*weight, x.dim());
  if (bias.has_value()) z = z + broadcastable(*bias, x.dim());
  const at::Tensor y = at::leaky_relu(z, negative_slope).to(x.scalar_type());
  return {laid_out(y, x, innermost), mean.contiguous(), var.contiguous()};
}

Triple norm_act_backward_cuda(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& mean,
                              const at::Tensor& var, int64_t groups, const OptTensor& weight, const OptTensor& bias,
                              double eps, double negative_slope) {
  check_norm_act_backward(grad_output, input, mean, var, groups, weight, bias, eps, negative_slope);
  const c10::cuda::CUDAGuard device_guard(input.device());
  const bool innermost = channels_innermost(input);
  const at::Tensor x = in_layout(input, innermost);
  auto [dx, d_weight, d_bias] =
      composite_backward(grad_output, x, mean, var, groups, weight, bias, eps, negative_slope);
  return {laid_out(dx, x, innermost), d_weight.contiguous(), d_bias.contiguous()};
}

Triple batch_norm_leaky_relu_cuda(const at::Tensor& input, const OptTensor& weight, const OptTensor& bias, double eps,
                                  double negative_slope) {
  return norm_act_cuda(input, 0, weight, bias, eps, negative_slope);
}

Triple batch_norm_leaky_relu_backward_cuda(const at::Tensor& grad_output, const at::Tensor& input,
                                           const at::Tensor& mean, const at::Tensor& var, const OptTensor& weight,
                                           const OptTensor& bias, double eps, double negative_slope) {
  return norm_act_backward_cuda(grad_output, input, mean, var, 0, weight, bias, eps, negative_slope);
}

Triple group_norm_leaky_relu_cuda(const at::Tensor& input, int64_t num_groups, const OptTensor& weight,
                                  const OptTensor& bias, double eps, double negative_slope) {
  TORCH_CHECK_VALUE(num_groups >= 1, "group_norm_leaky_relu: num_groups must be >= 1, got ", num_groups);
  return norm_act_cuda(input, num_groups, weight, bias, eps, negative_slope);
}

Triple group_norm_leaky_relu_backward_cuda(const at::Tensor& grad_output, const at::Tensor& input,
                                           const at::Tensor& mean, const at::Tensor& var, int64_t num_groups,
                                           const OptTensor& weight, const OptTensor& bias, double eps,
                                           double negative_slope) {
  TORCH_CHECK_VALUE(num_groups >= 1, "group_norm_leaky_relu_backward: num_groups must be >= 1, got ", num_groups);
  return norm_act_backward_cuda(grad_output, input, mean, var, num_groups, weight, bias, eps, negative_slope);
}

}  // namespace

TORCH_LIBRARY_IMPL(ganplug, CUDA, m) {
  m.impl("batch_norm_leaky_relu", &batch_norm_leaky_relu_cuda);
  m.impl("batch_norm_leaky_relu_backward", &batch_norm_leaky_relu_backward_cuda);
  m.impl("group_norm_leaky_relu", &group_norm_leaky_relu_cuda);
  m.impl("group_norm_leaky_relu_backward", &group_norm_leaky_relu_backward_cuda);
}

}  // namespace ganplug
