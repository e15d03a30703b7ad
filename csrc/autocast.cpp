// Autocast kernels: under torch.autocast, linear_leaky_relu runs in the autocast dtype and the
// losses in float32, as torch's linear and BCE do; bias_leaky_relu runs in its input's dtype, with
// the bias cast to it when that is the autocast dtype, as conv2d casts its own bias. float64 tensors
// stay as they are (at::autocast::cached_cast), as under torch's own autocast. diff_augment has no
// autocast kernel: autocast falls through to it, so it runs in its images' dtype.
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <optional>

namespace ganplug {
namespace {

using OptTensor = std::optional<at::Tensor>;
using at::autocast::cached_cast;
using at::autocast::get_autocast_dtype;

template <typename Signature>
c10::TypedOperatorHandle<Signature> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

// Calls `op` below autocast on the given (already cast) arguments.
template <c10::DeviceType device, typename Signature, typename... Args>
auto below_autocast(const c10::TypedOperatorHandle<Signature>& op, Args&&... args) {
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(at::autocast::get_autocast_dispatch_key_from_device_type(device));
  return op.call(std::forward<Args>(args)...);
}

template <c10::DeviceType device>
at::Tensor linear_leaky_relu(const at::Tensor& input, const at::Tensor& weight, const OptTensor& bias, double slope) {
  static const auto op =
      find_op<at::Tensor(const at::Tensor&, const at::Tensor&, const OptTensor&, double)>("ganplug::linear_leaky_relu");
  const at::ScalarType dtype = get_autocast_dtype(device);
  return below_autocast<device>(op, cached_cast(dtype, input, device), cached_cast(dtype, weight, device),
                                cached_cast(dtype, bias, device), slope);
}

template <c10::DeviceType device>
at::Tensor bias_leaky_relu(const at::Tensor& input, const OptTensor& bias, double slope) {
  static const auto op = find_op<at::Tensor(const at::Tensor&, const OptTensor&, double)>("ganplug::bias_leaky_relu");
  const bool in_autocast_dtype = input.scalar_type() == get_autocast_dtype(device);
  return below_autocast<device>(op, input, in_autocast_dtype ? cached_cast(input.scalar_type(), bias, device) : bias,
                                slope);
}

// affine_leaky_relu as bias_leaky_relu: the input's dtype, scale and shift cast to it when it is the autocast dtype.
template <c10::DeviceType device>
at::Tensor affine_leaky_relu(const at::Tensor& input, const OptTensor& scale, const OptTensor& shift, double slope) {
  static const auto op =
      find_op<at::Tensor(const at::Tensor&, const OptTensor&, const OptTensor&, double)>("ganplug::affine_leaky_relu");
  const bool in_autocast_dtype = input.scalar_type() == get_autocast_dtype(device);
  const auto cast = [&](const OptTensor& t) { return in_autocast_dtype ? cached_cast(input.scalar_type(), t, device) : t; };
  return below_autocast<device>(op, input, cast(scale), cast(shift), slope);
}

// The norm ops as affine_leaky_relu: the input's dtype, weight and bias cast to it when it is the autocast dtype.
using NormOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
template <c10::DeviceType device>
NormOutputs batch_norm_leaky_relu(const at::Tensor& input, const OptTensor& weight, const OptTensor& bias, double eps,
                                  double slope) {
  static const auto op = find_op<NormOutputs(const at::Tensor&, const OptTensor&, const OptTensor&, double, double)>(
      "ganplug::batch_norm_leaky_relu");
  const bool in_autocast_dtype = input.scalar_type() == get_autocast_dtype(device);
  const auto cast = [&](const OptTensor& t) {
    return in_autocast_dtype ? cached_cast(input.scalar_type(), t, device) : t;
  };
  return below_autocast<device>(op, input, cast(weight), cast(bias), eps, slope);
}

template <c10::DeviceType device>
NormOutputs group_norm_leaky_relu(const at::Tensor& input, int64_t groups, const OptTensor& weight,
                                  const OptTensor& bias, double eps, double slope) {
  static const auto op =
      find_op<NormOutputs(const at::Tensor&, int64_t, const OptTensor&, const OptTensor&, double, double)>(
          "ganplug::group_norm_leaky_relu");
  const bool in_autocast_dtype = input.scalar_type() == get_autocast_dtype(device);
  const auto cast = [&](const OptTensor& t) {
    return in_autocast_dtype ? cached_cast(input.scalar_type(), t, device) : t;
  };
  return below_autocast<device>(op, input, groups, cast(weight), cast(bias), eps, slope);
}

template <c10::DeviceType device>
at::Tensor bce_loss(const at::Tensor& logits, const OptTensor& target, double target_value, double scale) {
  static const auto op = find_op<at::Tensor(const at::Tensor&, const OptTensor&, double, double)>("ganplug::bce_loss");
  return below_autocast<device>(op, cached_cast(at::kFloat, logits, device), cached_cast(at::kFloat, target, device),
                                target_value, scale);
}

template <c10::DeviceType device>
at::Tensor discriminator_bce(const at::Tensor& real, const at::Tensor& fake, const OptTensor& real_target,
                             const OptTensor& fake_target, double real_value, double fake_value) {
  static const auto op =
      find_op<at::Tensor(const at::Tensor&, const at::Tensor&, const OptTensor&, const OptTensor&, double, double)>(
          "ganplug::discriminator_bce");
  return below_autocast<device>(op, cached_cast(at::kFloat, real, device), cached_cast(at::kFloat, fake, device),
                                cached_cast(at::kFloat, real_target, device),
                                cached_cast(at::kFloat, fake_target, device), real_value, fake_value);
}

template <c10::DeviceType device>
at::Tensor wasserstein_critic_loss(const at::Tensor& real, const at::Tensor& fake) {
  static const auto op = find_op<at::Tensor(const at::Tensor&, const at::Tensor&)>("ganplug::wasserstein_critic_loss");
  return below_autocast<device>(op, cached_cast(at::kFloat, real, device), cached_cast(at::kFloat, fake, device));
}

template <c10::DeviceType device>
at::Tensor wasserstein_generator_loss(const at::Tensor& fake) {
  static const auto op = find_op<at::Tensor(const at::Tensor&)>("ganplug::wasserstein_generator_loss");
  return below_autocast<device>(op, cached_cast(at::kFloat, fake, device));
}

template <c10::DeviceType device>
at::Tensor gradient_penalty(const at::Tensor& gradients, double target) {
  static const auto op = find_op<at::Tensor(const at::Tensor&, double)>("ganplug::gradient_penalty");
  return below_autocast<device>(op, cached_cast(at::kFloat, gradients, device), target);
}

template <c10::DeviceType device>
void register_autocast(torch::Library& m) {
  m.impl("linear_leaky_relu", &linear_leaky_relu<device>);
  m.impl("bias_leaky_relu", &bias_leaky_relu<device>);
  m.impl("affine_leaky_relu", &affine_leaky_relu<device>);
  m.impl("batch_norm_leaky_relu", &batch_norm_leaky_relu<device>);
  m.impl("group_norm_leaky_relu", &group_norm_leaky_relu<device>);
  m.impl("bce_loss", &bce_loss<device>);
  m.impl("discriminator_bce", &discriminator_bce<device>);
  m.impl("wasserstein_critic_loss", &wasserstein_critic_loss<device>);
  m.impl("wasserstein_generator_loss", &wasserstein_generator_loss<device>);
  m.impl("gradient_penalty", &gradient_penalty<device>);
}

}  // namespace

TORCH_LIBRARY_IMPL(ganplug, AutocastCPU, m) { register_autocast<c10::DeviceType::CPU>(m); }
TORCH_LIBRARY_IMPL(ganplug, AutocastCUDA, m) { register_autocast<c10::DeviceType::CUDA>(m); }

}  // namespace ganplug
