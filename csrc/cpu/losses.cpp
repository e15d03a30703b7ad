// CPU kernels of the GAN losses, vectorised with at::vec (vec_math.h). float32 and float64 are
// computed as they are; float16/bfloat16 on a float32 copy (the formulas run in float32 either way).
// Every sum accumulates in double over fixed chunks of kChunk elements: one thread sums a chunk,
// the chunk sums are added in chunk order, so a result is bitwise the same whatever the thread
// count. An input of one chunk (a GAN batch of logits) runs on the calling thread, allocation-free.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "../checks.h"
#include "vec_math.h"

namespace ganplug {
namespace {

using at::vec::Vectorized;

constexpr int64_t kChunk = int64_t{1} << 14;

// The sum over the chunks [c * kChunk, min(n, (c + 1) * kChunk)) of [0, n) of chunk_sum(begin, end),
// in chunk order; chunks go to threads `grain` at a time.
template <typename F>
double chunked_sum(int64_t n, int64_t grain, const F& chunk_sum) {
  if (n <= kChunk) return chunk_sum(int64_t{0}, n);
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<double> partial(static_cast<size_t>(chunks));
  at::parallel_for(0, chunks, grain, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) partial[c] = chunk_sum(c * kChunk, std::min(n, (c + 1) * kChunk));
  });
  double total = 0;
  for (double p : partial) total += p;
  return total;
}

at::Tensor scalar_like(double value, const at::Tensor& like) {
  return at::scalar_tensor(value, like.options());
}

// t contiguous in the dtype the kernels compute in: float32 for float16/bfloat16. Undefined stays undefined.
at::Tensor computable(const at::Tensor& t) {
  if (!t.defined()) return t;
  const at::Tensor c = t.contiguous();
  return at::isReducedFloatingType(c.scalar_type()) ? c.to(at::kFloat) : c;
}

at::Tensor computable(const std::optional<at::Tensor>& t) { return t.has_value() ? computable(*t) : at::Tensor(); }

// A BCE target lane by lane: the tensor's values where p is set, else `value` everywhere.
template <typename T>
struct Target {
  const T* p;
  T value;
  Vectorized<T> load(int64_t i) const { return p != nullptr ? Vectorized<T>::loadu(p + i) : Vectorized<T>(value); }
  Vectorized<T> load(int64_t i, int64_t count) const {
    return p != nullptr ? Vectorized<T>::loadu(p + i, count) : Vectorized<T>(value);
  }
};

// sum_{i0 <= i < i1} bce(x_i, t_i) in double; with kGrad also dx_i = coef * (sigmoid(x_i) - t_i).
template <typename T, bool kGrad>
double bce_span(const T* x, Target<T> t, T coef, T* dx, int64_t i0, int64_t i1) {
  using V = Vectorized<T>;
  vec::DoubleSum<T> s;
  V g;
  int64_t i = i0;
  for (; i + V::size() <= i1; i += V::size()) {
    s.add(vec::bce<T, kGrad>(V::loadu(x + i), t.load(i), &g));
    if constexpr (kGrad) (g * V(coef)).store(dx + i);
  }
  if (i < i1) {  // the tail: zero-padded lanes, whose losses are dropped
    const int64_t k = i1 - i;
    s.add(V::set(V(T(0)), vec::bce<T, kGrad>(V::loadu(x + i, k), t.load(i, k), &g), k));
    if constexpr (kGrad) (g * V(coef)).store(dx + i, k);
  }
  return s.total();
}

// dx_i = coef * (sigmoid(x_i) - t_i) for i0 <= i < i1.
template <typename T>
void bce_grad_span(const T* x, Target<T> t, T coef, T* dx, int64_t i0, int64_t i1) {
  using V = Vectorized<T>;
  int64_t i = i0;
  for (; i + V::size() <= i1; i += V::size()) (vec::bce_grad(V::loadu(x + i), t.load(i)) * V(coef)).store(dx + i);
  if (i < i1) {
    const int64_t k = i1 - i;
    (vec::bce_grad(V::loadu(x + i, k), t.load(i, k)) * V(coef)).store(dx + i, k);
  }
}

// mean over x of bce(x, t), t the tensor if defined else t_value; with kGrad also
// dx = coef * (sigmoid(x) - t). x, t (and dx) contiguous, of dtype T.
template <typename T, bool kGrad>
double bce_mean(const at::Tensor& x, const at::Tensor& t, double t_value, double coef, const at::Tensor& dx) {
  const T* xp = x.const_data_ptr<T>();
  const Target<T> target{t.defined() ? t.const_data_ptr<T>() : nullptr, static_cast<T>(t_value)};
  T* dxp = kGrad ? dx.data_ptr<T>() : nullptr;
  const T c = static_cast<T>(coef);
  const int64_t n = x.numel();
  return chunked_sum(n, 1, [=](int64_t i0, int64_t i1) { return bce_span<T, kGrad>(xp, target, c, dxp, i0, i1); }) /
         static_cast<double>(n);
}

// dx = coef * (sigmoid(x) - t) (coef = grad * scale / n, folded in by the caller), in x's dtype.
at::Tensor bce_grad(const at::Tensor& x, const at::Tensor& t, double t_value, double coef) {
  at::Tensor dx = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "bce_grad_cpu", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const Target<scalar_t> target{t.defined() ? t.const_data_ptr<scalar_t>() : nullptr, static_cast<scalar_t>(t_value)};
    scalar_t* dxp = dx.data_ptr<scalar_t>();
    const scalar_t c = static_cast<scalar_t>(coef);
    at::parallel_for(0, x.numel(), kChunk,
                     [=](int64_t i0, int64_t i1) { bce_grad_span<scalar_t>(xp, target, c, dxp, i0, i1); });
  });
  return dx;
}

at::Tensor bce_loss_cpu(const at::Tensor& logits, const std::optional<at::Tensor>& target,
                        double target_value, double scale) {
  check_bce_args(logits, target, target_value, "bce_loss", "logits", "target");
  const at::Tensor x = computable(logits), t = computable(target_like(target, logits));
  double mean = 0;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "bce_loss_cpu", [&] {
    mean = bce_mean<scalar_t, false>(x, t, target_value, 0.0, at::Tensor());
  });
  return scalar_like(scale * mean, logits);
}

std::tuple<at::Tensor, at::Tensor> bce_loss_and_grad_cpu(const at::Tensor& logits, const std::optional<at::Tensor>& target,
                                                          double target_value, double scale) {
  check_bce_args(logits, target, target_value, "bce_loss_and_grad", "logits", "target");
  const at::Tensor x = computable(logits), t = computable(target_like(target, logits));
  const at::Tensor dx = at::empty_like(x);
  double mean = 0;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "bce_loss_and_grad_cpu", [&] {
    mean = bce_mean<scalar_t, true>(x, t, target_value, scale / static_cast<double>(x.numel()), dx);
  });
  return {scalar_like(scale * mean, logits), dx.to(logits.scalar_type())};
}

at::Tensor bce_loss_backward_cpu(const at::Tensor& grad, const at::Tensor& logits,
                                 const std::optional<at::Tensor>& target, double target_value,
                                 double scale) {
  check_bce_args(logits, target, target_value, "bce_loss_backward", "logits", "target");
  check_loss_grad(grad, logits, "bce_loss_backward", "logits");
  const at::Tensor x = computable(logits), t = computable(target_like(target, logits));
  const double coef = grad.item<double>() * scale / static_cast<double>(x.numel());
  return bce_grad(x, t, target_value, coef).to(logits.scalar_type());
}

// The checked discriminator loss arguments in the dtype the kernels compute in (targets undefined when absent).
struct DiscriminatorArgs {
  at::Tensor real, fake, real_target, fake_target;

  DiscriminatorArgs(const char* op, const at::Tensor& real_logits, const at::Tensor& fake_logits,
                    const std::optional<at::Tensor>& real_t, const std::optional<at::Tensor>& fake_t, double real_value,
                    double fake_value) {
    check_discriminator_args(real_logits, fake_logits, real_t, fake_t, real_value, fake_value, op);
    real = computable(real_logits);
    fake = computable(fake_logits);
    real_target = computable(target_like(real_t, real_logits));
    fake_target = computable(target_like(fake_t, fake_logits));
  }
};

at::Tensor discriminator_bce_cpu(const at::Tensor& real_logits, const at::Tensor& fake_logits,
                                 const std::optional<at::Tensor>& real_target,
                                 const std::optional<at::Tensor>& fake_target, double real_value,
                                 double fake_value) {
  const DiscriminatorArgs a("discriminator_bce", real_logits, fake_logits, real_target, fake_target, real_value, fake_value);
  double loss = 0;
  AT_DISPATCH_FLOATING_TYPES(a.real.scalar_type(), "discriminator_bce_cpu", [&] {
    loss = bce_mean<scalar_t, false>(a.real, a.real_target, real_value, 0.0, at::Tensor()) +
           bce_mean<scalar_t, false>(a.fake, a.fake_target, fake_value, 0.0, at::Tensor());
  });
  return scalar_like(loss, real_logits);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> discriminator_bce_and_grad_cpu(
    const at::Tensor& real_logits, const at::Tensor& fake_logits, const std::optional<at::Tensor>& real_target,
    const std::optional<at::Tensor>& fake_target, double real_value, double fake_value) {
  const DiscriminatorArgs a("discriminator_bce_and_grad", real_logits, fake_logits, real_target, fake_target, real_value, fake_value);
  const at::Tensor dr = at::empty_like(a.real), df = at::empty_like(a.fake);
  double loss = 0;
  AT_DISPATCH_FLOATING_TYPES(a.real.scalar_type(), "discriminator_bce_and_grad_cpu", [&] {
    loss = bce_mean<scalar_t, true>(a.real, a.real_target, real_value, 1.0 / static_cast<double>(a.real.numel()), dr) +
           bce_mean<scalar_t, true>(a.fake, a.fake_target, fake_value, 1.0 / static_cast<double>(a.fake.numel()), df);
  });
  const at::ScalarType dtype = real_logits.scalar_type();
  return {scalar_like(loss, real_logits), dr.to(dtype), df.to(dtype)};
}

std::tuple<at::Tensor, at::Tensor> discriminator_bce_backward_cpu(
    const at::Tensor& grad, const at::Tensor& real_logits, const at::Tensor& fake_logits,
    const std::optional<at::Tensor>& real_target, const std::optional<at::Tensor>& fake_target,
    double real_value, double fake_value) {
  const DiscriminatorArgs a("discriminator_bce_backward", real_logits, fake_logits, real_target, fake_target, real_value, fake_value);
  check_loss_grad(grad, real_logits, "discriminator_bce_backward", "real_logits");
  const double g = grad.item<double>();
  const at::ScalarType dtype = real_logits.scalar_type();
  return {bce_grad(a.real, a.real_target, real_value, g / static_cast<double>(a.real.numel())).to(dtype),
          bce_grad(a.fake, a.fake_target, fake_value, g / static_cast<double>(a.fake.numel())).to(dtype)};
}

// mean(x) in double; x contiguous float32/float64. A chunk is a few microseconds of work, so
// chunks go to threads four at a time.
double plain_mean(const at::Tensor& x) {
  const int64_t n = x.numel();
  double total = 0;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "plain_mean_cpu", [&] {
    const scalar_t* p = x.const_data_ptr<scalar_t>();
    total = chunked_sum(n, 4, [=](int64_t i0, int64_t i1) { return vec::sum(p + i0, i1 - i0); });
  });
  return total / static_cast<double>(n);
}

at::Tensor wasserstein_critic_loss_cpu(const at::Tensor& real_scores, const at::Tensor& fake_scores) {
  constexpr const char* op = "wasserstein_critic_loss";
  check_score_pair(real_scores, fake_scores, op, "real_scores", "fake_scores");
  return scalar_like(plain_mean(computable(fake_scores)) - plain_mean(computable(real_scores)), real_scores);
}

at::Tensor wasserstein_generator_loss_cpu(const at::Tensor& fake_scores) {
  constexpr const char* op = "wasserstein_generator_loss";
  check_logits(fake_scores, op, "fake_scores");
  return scalar_like(-plain_mean(computable(fake_scores)), fake_scores);
}

// Rows of `cols` elements per parallel task: about one chunk of work.
int64_t row_grain(int64_t cols) { return std::max<int64_t>(1, kChunk / std::max<int64_t>(cols, 1)); }

// Per-sample L2 norms of g viewed as (rows, cols), the squares accumulated in double (vec_math.h). One task sums a
// whole row, so a norm does not depend on the thread count.
template <typename T>
std::vector<double> row_norms(const T* g, int64_t rows, int64_t cols) {
  std::vector<double> norms(static_cast<size_t>(rows));
  at::parallel_for(0, rows, row_grain(cols), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) norms[r] = std::sqrt(vec::sum_of_squares(g + r * cols, cols));
  });
  return norms;
}

at::Tensor gradient_penalty_cpu(const at::Tensor& gradients, double target) {
  check_penalty_args(gradients, target, "gradient_penalty");
  const at::Tensor g = computable(gradients);
  const int64_t rows = g.size(0), cols = g.numel() / rows;
  double loss = 0;
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "gradient_penalty_cpu", [&] {
    for (double r : row_norms(g.const_data_ptr<scalar_t>(), rows, cols)) loss += (r - target) * (r - target);
  });
  return scalar_like(loss / static_cast<double>(rows), gradients);
}

// d/dg_i = grad * 2 (r_i - target) / (r_i B) * g_i, and 0 where r_i = 0 (as torch's norm); a row
// whose norm is NaN (a NaN in the row) is NaN throughout, as in the reference.
at::Tensor gradient_penalty_backward_cpu(const at::Tensor& grad, const at::Tensor& gradients, double target) {
  check_penalty_args(gradients, target, "gradient_penalty_backward");
  check_loss_grad(grad, gradients, "gradient_penalty_backward", "gradients");
  const at::Tensor g = computable(gradients);
  const int64_t rows = g.size(0), cols = g.numel() / rows;
  const double upstream = grad.item<double>();
  at::Tensor dg = at::empty_like(g);
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "gradient_penalty_backward_cpu", [&] {
    using V = Vectorized<scalar_t>;
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    scalar_t* dgp = dg.data_ptr<scalar_t>();
    const std::vector<double> norms = row_norms(gp, rows, cols);
    at::parallel_for(0, rows, row_grain(cols), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const double norm = norms[r];
        const V coef(norm == 0 ? scalar_t(0) : static_cast<scalar_t>(upstream * 2.0 * (norm - target) / (norm * rows)));
        at::vec::map([coef](const V& v) { return coef * v; }, dgp + r * cols, gp + r * cols, cols);
      }
    });
  });
  return dg.to(gradients.scalar_type());
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
