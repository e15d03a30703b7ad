// CPU kernels of the GAN losses: each forward is one pass that accumulates in double, in
// fixed-size chunks so the result is the same whatever the thread count.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "../checks.h"
#include "../loss_math.h"

namespace ganplug {
namespace {

constexpr int64_t kChunk = int64_t{1} << 14;

// sum_{i < n} f(i) in double.
template <typename F>
double chunked_sum(int64_t n, const F& f) {
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<double> partial(static_cast<size_t>(chunks), 0.0);
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      double s = 0;
      const int64_t end = std::min(n, (c + 1) * kChunk);
#pragma omp simd reduction(+ : s)
      for (int64_t i = c * kChunk; i < end; ++i) s += f(i);
      partial[c] = s;
    }
  });
  double total = 0;
  for (double p : partial) total += p;
  return total;
}

at::Tensor scalar_like(double value, const at::Tensor& like) {
  return at::scalar_tensor(value, like.options());
}

// mean over x of bce_with_logits(x, t), t the tensor if defined else t_value. x, t contiguous.
template <typename scalar_t>
double bce_mean(const at::Tensor& x, const at::Tensor& t, double t_value) {
  using op_t = at::opmath_type<scalar_t>;
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  const int64_t n = x.numel();
  if (t.defined()) {
    const scalar_t* tp = t.const_data_ptr<scalar_t>();
    return chunked_sum(n, [&](int64_t i) {
      return static_cast<double>(bce_with_logits(static_cast<op_t>(xp[i]), static_cast<op_t>(tp[i])));
    }) / static_cast<double>(n);
  }
  const op_t tv = static_cast<op_t>(t_value);
  return chunked_sum(n, [&](int64_t i) {
    return static_cast<double>(bce_with_logits(static_cast<op_t>(xp[i]), tv));
  }) / static_cast<double>(n);
}

// The mean BCE over x (as bce_mean) and, in the same pass, dx = coef * (sigmoid(x) - t).
template <typename scalar_t>
double bce_mean_and_grad(const at::Tensor& x, const at::Tensor& t, double t_value, double coef, at::Tensor& dx) {
  using op_t = at::opmath_type<scalar_t>;
  dx = at::empty_like(x, at::MemoryFormat::Contiguous);
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  const scalar_t* tp = t.defined() ? t.const_data_ptr<scalar_t>() : nullptr;
  scalar_t* dxp = dx.data_ptr<scalar_t>();
  const op_t tv = static_cast<op_t>(t_value);
  const op_t c = static_cast<op_t>(coef);
  const int64_t n = x.numel();
  return chunked_sum(n, [=](int64_t i) {
    const op_t xi = static_cast<op_t>(xp[i]);
    const op_t ti = tp != nullptr ? static_cast<op_t>(tp[i]) : tv;
    op_t g;
    const op_t loss = bce_with_logits_and_grad(xi, ti, &g);
    dxp[i] = static_cast<scalar_t>(c * g);
    return static_cast<double>(loss);
  }) / static_cast<double>(n);
}

// dx = coef * (sigmoid(x) - t), with coef = grad * scale / n folded in by the caller.
template <typename scalar_t>
at::Tensor bce_grad(const at::Tensor& x, const at::Tensor& t, double t_value, double coef) {
  using op_t = at::opmath_type<scalar_t>;
  at::Tensor dx = at::empty_like(x, at::MemoryFormat::Contiguous);
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  const scalar_t* tp = t.defined() ? t.const_data_ptr<scalar_t>() : nullptr;
  scalar_t* dxp = dx.data_ptr<scalar_t>();
  const op_t tv = static_cast<op_t>(t_value);
  const op_t c = static_cast<op_t>(coef);
  at::parallel_for(0, x.numel(), kChunk, [=](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const op_t ti = tp != nullptr ? static_cast<op_t>(tp[i]) : tv;
      dxp[i] = static_cast<scalar_t>(c * bce_with_logits_grad(static_cast<op_t>(xp[i]), ti));
    }
  });
  return dx;
}

at::Tensor bce_loss_cpu(const at::Tensor& logits, const std::optional<at::Tensor>& target,
                        double target_value, double scale) {
  check_bce_args(logits, target, "bce_loss", "logits", "target");
  const at::Tensor x = logits.contiguous();
  const at::Tensor t = contiguous_or_undefined(target);
  double mean = 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bce_loss_cpu", [&] {
    mean = bce_mean<scalar_t>(x, t, target_value);
  });
  return scalar_like(scale * mean, x);
}

std::tuple<at::Tensor, at::Tensor> bce_loss_and_grad_cpu(const at::Tensor& logits, const std::optional<at::Tensor>& target,
                                                          double target_value, double scale) {
  check_bce_args(logits, target, "bce_loss_and_grad", "logits", "target");
  const at::Tensor x = logits.contiguous();
  const at::Tensor t = contiguous_or_undefined(target);
  double mean = 0;
  at::Tensor dx;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bce_loss_and_grad_cpu", [&] {
    mean = bce_mean_and_grad<scalar_t>(x, t, target_value, scale / static_cast<double>(x.numel()), dx);
  });
  return {scalar_like(scale * mean, x), dx};
}

at::Tensor bce_loss_backward_cpu(const at::Tensor& grad, const at::Tensor& logits,
                                 const std::optional<at::Tensor>& target, double target_value,
                                 double scale) {
  check_bce_args(logits, target, "bce_loss_backward", "logits", "target");
  const at::Tensor x = logits.contiguous();
  const at::Tensor t = contiguous_or_undefined(target);
  const double coef = grad.item<double>() * scale / static_cast<double>(x.numel());
  at::Tensor dx;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bce_loss_backward_cpu", [&] {
    dx = bce_grad<scalar_t>(x, t, target_value, coef);
  });
  return dx;
}

// The checked, contiguous arguments of the discriminator loss ops (targets undefined when absent).
struct DiscriminatorArgs {
  at::Tensor real, fake, real_target, fake_target;

  DiscriminatorArgs(const char* op, const at::Tensor& real_logits, const at::Tensor& fake_logits,
                    const std::optional<at::Tensor>& real_t, const std::optional<at::Tensor>& fake_t) {
    check_bce_args(real_logits, real_t, op, "real_logits", "real_target");
    check_bce_args(fake_logits, fake_t, op, "fake_logits", "fake_target");
    check_like(fake_logits, real_logits, op, "fake_logits", "real_logits");
    real = real_logits.contiguous();
    fake = fake_logits.contiguous();
    real_target = contiguous_or_undefined(real_t);
    fake_target = contiguous_or_undefined(fake_t);
  }
};

at::Tensor discriminator_bce_cpu(const at::Tensor& real_logits, const at::Tensor& fake_logits,
                                 const std::optional<at::Tensor>& real_target,
                                 const std::optional<at::Tensor>& fake_target, double real_value,
                                 double fake_value) {
  const DiscriminatorArgs args("discriminator_bce", real_logits, fake_logits, real_target, fake_target);
  const at::Tensor &xr = args.real, &xf = args.fake, &tr = args.real_target, &tf = args.fake_target;
  double loss = 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xr.scalar_type(), "discriminator_bce_cpu", [&] {
    loss = bce_mean<scalar_t>(xr, tr, real_value) + bce_mean<scalar_t>(xf, tf, fake_value);
  });
  return scalar_like(loss, xr);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> discriminator_bce_and_grad_cpu(
    const at::Tensor& real_logits, const at::Tensor& fake_logits, const std::optional<at::Tensor>& real_target,
    const std::optional<at::Tensor>& fake_target, double real_value, double fake_value) {
  const DiscriminatorArgs args("discriminator_bce_and_grad", real_logits, fake_logits, real_target, fake_target);
  const at::Tensor &xr = args.real, &xf = args.fake, &tr = args.real_target, &tf = args.fake_target;
  double loss = 0;
  at::Tensor dr, df;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xr.scalar_type(), "discriminator_bce_and_grad_cpu", [&] {
    loss = bce_mean_and_grad<scalar_t>(xr, tr, real_value, 1.0 / static_cast<double>(xr.numel()), dr) +
           bce_mean_and_grad<scalar_t>(xf, tf, fake_value, 1.0 / static_cast<double>(xf.numel()), df);
  });
  return {scalar_like(loss, xr), dr, df};
}

std::tuple<at::Tensor, at::Tensor> discriminator_bce_backward_cpu(
    const at::Tensor& grad, const at::Tensor& real_logits, const at::Tensor& fake_logits,
    const std::optional<at::Tensor>& real_target, const std::optional<at::Tensor>& fake_target,
    double real_value, double fake_value) {
  const DiscriminatorArgs args("discriminator_bce_backward", real_logits, fake_logits, real_target, fake_target);
  const at::Tensor &xr = args.real, &xf = args.fake, &tr = args.real_target, &tf = args.fake_target;
  const double g = grad.item<double>();
  at::Tensor dr, df;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xr.scalar_type(), "discriminator_bce_backward_cpu", [&] {
    dr = bce_grad<scalar_t>(xr, tr, real_value, g / static_cast<double>(xr.numel()));
    df = bce_grad<scalar_t>(xf, tf, fake_value, g / static_cast<double>(xf.numel()));
  });
  return {dr, df};
}

template <typename scalar_t>
double plain_mean(const at::Tensor& x) {
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  return chunked_sum(x.numel(), [&](int64_t i) { return static_cast<double>(xp[i]); }) /
         static_cast<double>(x.numel());
}

at::Tensor wasserstein_critic_loss_cpu(const at::Tensor& real_scores, const at::Tensor& fake_scores) {
  constexpr const char* op = "wasserstein_critic_loss";
  check_score_args(real_scores, fake_scores, op);
  const at::Tensor r = real_scores.contiguous(), f = fake_scores.contiguous();
  double loss = 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, r.scalar_type(), "wasserstein_critic_loss_cpu", [&] {
    loss = plain_mean<scalar_t>(f) - plain_mean<scalar_t>(r);
  });
  return scalar_like(loss, r);
}

at::Tensor wasserstein_generator_loss_cpu(const at::Tensor& fake_scores) {
  constexpr const char* op = "wasserstein_generator_loss";
  check_floating(fake_scores, op, "fake_scores");
  check_nonempty(fake_scores, op, "fake_scores");
  const at::Tensor f = fake_scores.contiguous();
  double loss = 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, f.scalar_type(), "wasserstein_generator_loss_cpu", [&] {
    loss = -plain_mean<scalar_t>(f);
  });
  return scalar_like(loss, f);
}

// Per-sample L2 norms of g viewed as (B, D), in double.
template <typename scalar_t>
std::vector<double> row_norms(const at::Tensor& g, int64_t rows, int64_t cols) {
  const scalar_t* gp = g.const_data_ptr<scalar_t>();
  std::vector<double> norms(static_cast<size_t>(rows));
  at::parallel_for(0, rows, std::max<int64_t>(1, kChunk / std::max<int64_t>(cols, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      double s = 0;
      for (int64_t c = 0; c < cols; ++c) {
        const double v = static_cast<double>(gp[r * cols + c]);
        s += v * v;
      }
      norms[r] = std::sqrt(s);
    }
  });
  return norms;
}

at::Tensor gradient_penalty_cpu(const at::Tensor& gradients, double target) {
  check_penalty_args(gradients, "gradient_penalty");
  const at::Tensor g = gradients.contiguous();
  const int64_t rows = g.size(0), cols = g.numel() / rows;
  double loss = 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "gradient_penalty_cpu", [&] {
    for (double r : row_norms<scalar_t>(g, rows, cols)) loss += (r - target) * (r - target);
  });
  return scalar_like(loss / static_cast<double>(rows), g);
}

// d/dg_i = grad * 2 (r_i - target) / (r_i B) * g_i, and 0 where r_i = 0 (as torch's norm).
at::Tensor gradient_penalty_backward_cpu(const at::Tensor& grad, const at::Tensor& gradients, double target) {
  check_penalty_args(gradients, "gradient_penalty_backward");
  const at::Tensor g = gradients.contiguous();
  const int64_t rows = g.size(0), cols = g.numel() / rows;
  const double upstream = grad.item<double>();
  at::Tensor dg = at::empty_like(g, at::MemoryFormat::Contiguous);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "gradient_penalty_backward_cpu", [&] {
    using op_t = at::opmath_type<scalar_t>;
    const std::vector<double> norms = row_norms<scalar_t>(g, rows, cols);
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    scalar_t* dgp = dg.data_ptr<scalar_t>();
    at::parallel_for(0, rows, std::max<int64_t>(1, kChunk / std::max<int64_t>(cols, 1)), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const double norm = norms[r];
        const op_t coef = norm > 0 ? static_cast<op_t>(upstream * 2.0 * (norm - target) / (norm * rows)) : op_t(0);
        for (int64_t c = 0; c < cols; ++c) {
          dgp[r * cols + c] = static_cast<scalar_t>(coef * static_cast<op_t>(gp[r * cols + c]));
        }
      }
    });
  });
  return dg;
}

}  // namespace

TORCH_LIBRARY_IMPL(ganplug, CPU, m) {
  m.impl("bce_loss", &bce_loss_cpu);
  m.impl("bce_loss_backward", &bce_loss_backward_cpu);
  m.impl("bce_loss_and_grad", &bce_loss_and_grad_cpu);
  m.impl("discriminator_bce", &discriminator_bce_cpu);
  m.impl("discriminator_bce_backward", &discriminator_bce_backward_cpu);
  m.impl("discriminator_bce_and_grad", &discriminator_bce_and_grad_cpu);
  m.impl("wasserstein_critic_loss", &wasserstein_critic_loss_cpu);
  m.impl("wasserstein_generator_loss", &wasserstein_generator_loss_cpu);
  m.impl("gradient_penalty", &gradient_penalty_cpu);
  m.impl("gradient_penalty_backward", &gradient_penalty_backward_cpu);
}

}  // namespace ganplug
