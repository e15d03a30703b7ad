// The generator's BCE losses under their public names: each checks its arguments in its own words,
// then runs bce_loss, whose autograd, autocast and backend kernels they share (CompositeImplicitAutograd).
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "checks.h"

namespace ganplug {
namespace {

at::Tensor bce_loss(const at::Tensor& logits, const std::optional<at::Tensor>& target, double target_value,
                    double scale) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("ganplug::bce_loss", "")
          .typed<at::Tensor(const at::Tensor&, const std::optional<at::Tensor>&, double, double)>();
  return op.call(logits, target, target_value, scale);
}

at::Tensor generator_bce(const at::Tensor& fake_logits, const std::optional<at::Tensor>& target, double target_value) {
  check_bce_args(fake_logits, target, target_value, "generator_bce", "fake_logits", "target");
  return bce_loss(fake_logits, target, target_value, 1.0);
}

at::Tensor minimax_generator_loss(const at::Tensor& fake_logits) {
  check_logits(fake_logits, "minimax_generator_loss", "fake_logits");
  return bce_loss(fake_logits, std::nullopt, 0.0, -1.0);
}

}  // namespace

TORCH_LIBRARY_IMPL(ganplug, CompositeImplicitAutograd, m) {
  m.impl("generator_bce", &generator_bce);
  m.impl("minimax_generator_loss", &minimax_generator_loss);
}

}  // namespace ganplug
