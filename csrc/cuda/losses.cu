// CUDA kernels of the GAN losses. Each forward is one launch that reduces over one or two inputs
// (real and fake) and finishes the mean in its last block; each backward is one launch.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../checks.h"
#include "../loss_math.h"
#include "reduce.cuh"

namespace ganplug {
namespace {

// One input of a loss: n values x, targets t (or t_value where t is null), and the weight
// (e.g. scale / n) of its sum in the loss.
template <typename scalar_t>
struct Segment {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* x = nullptr;
  const scalar_t* t = nullptr;
  acc_t t_value = 0;
  int64_t n = 0;
  acc_t weight = 0;

  __device__ acc_t target(int64_t i) const { return t != nullptr ? static_cast<acc_t>(t[i]) : t_value; }
};

enum class Term { kBce, kValue };

// out = sum_s weight_s * sum_i term(x_s[i], t_s[i]) over the two segments a and b.
template <typename scalar_t, Term kTerm>
__global__ void weighted_sum_kernel(Segment<scalar_t> a, Segment<scalar_t> b,
                                    at::opmath_type<scalar_t>* partials, unsigned int* counter,
                                    scalar_t* out) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t scratch[kWarps];
  acc_t sum_a = 0, sum_b = 0;
  const int64_t total = a.n + b.n;
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < total; i += stride) {
    const bool in_a = i < a.n;
    const Segment<scalar_t>& s = in_a ? a : b;
    const int64_t j = in_a ? i : i - a.n;
    const acc_t x = static_cast<acc_t>(s.x[j]);
    const acc_t term = kTerm == Term::kBce ? bce_with_logits(x, s.target(j)) : x;
    if (in_a) sum_a += term; else sum_b += term;
  }
  const acc_t block_value = block_sum(a.weight * sum_a + b.weight * sum_b, scratch);
  grid_sum(block_value, partials, counter, out, acc_t(1));
}

// dx_s[i] = grad * weight_s * (sigmoid(x_s[i]) - t_s[i]) for both segments.
template <typename scalar_t>
__global__ void bce_backward_kernel(Segment<scalar_t> a, Segment<scalar_t> b, scalar_t* da, scalar_t* db,
                                    const scalar_t* grad) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t g = static_cast<acc_t>(*grad);
  const int64_t total = a.n + b.n;
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < total; i += stride) {
    if (i < a.n) {
      da[i] = static_cast<scalar_t>(g * a.weight * bce_with_logits_grad(static_cast<acc_t>(a.x[i]), a.target(i)));
    } else {
      const int64_t j = i - a.n;
      db[j] = static_cast<scalar_t>(g * b.weight * bce_with_logits_grad(static_cast<acc_t>(b.x[j]), b.target(j)));
    }
  }
}

// Squared L2 norm of one row, valid in every thread of the block.
template <typename scalar_t>
__device__ at::opmath_type<scalar_t> row_sq_norm(const scalar_t* row, int64_t cols) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t scratch[kWarps];
  __shared__ acc_t result;
  acc_t s = 0;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    const acc_t v = static_cast<acc_t>(row[c]);
    s += v * v;
  }
  s = block_sum(s, scratch);
  if (threadIdx.x == 0) result = s;
  __syncthreads();
  return result;
}

// One block per row: (||g_r|| - target)^2, averaged over rows by the last block.
template <typename scalar_t>
__global__ void gradient_penalty_kernel(const scalar_t* g, int64_t cols, at::opmath_type<scalar_t> target,
                                        at::opmath_type<scalar_t>* partials, unsigned int* counter,
                                        scalar_t* out) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t dev = sqrt_(row_sq_norm(g + int64_t{blockIdx.x} * cols, cols)) - target;
  grid_sum(dev * dev, partials, counter, out, acc_t(1) / static_cast<acc_t>(gridDim.x));
}

// One block per row: dg_r = grad * 2 (||g_r|| - target) / (||g_r|| B) * g_r, 0 where ||g_r|| = 0
// (as torch's norm backward); a NaN norm (a NaN in the row) makes the whole row NaN, as the reference.
template <typename scalar_t>
__global__ void gradient_penalty_backward_kernel(const scalar_t* g, scalar_t* dg, int64_t cols,
                                                 at::opmath_type<scalar_t> target, const scalar_t* grad) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t offset = int64_t{blockIdx.x} * cols;
  const acc_t norm = sqrt_(row_sq_norm(g + offset, cols));
  const acc_t coef = norm == acc_t(0)
      ? acc_t(0)
      : static_cast<acc_t>(*grad) * acc_t(2) * (norm - target) / (norm * static_cast<acc_t>(gridDim.x));
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    dg[offset + c] = static_cast<scalar_t>(coef * static_cast<acc_t>(g[offset + c]));
  }
}

template <typename scalar_t>
Segment<scalar_t> segment(const at::Tensor& x, const at::Tensor& t, double t_value, double weight) {
  Segment<scalar_t> s;
  s.x = x.const_data_ptr<scalar_t>();
  s.t = t.defined() ? t.const_data_ptr<scalar_t>() : nullptr;
  s.t_value = static_cast<at::opmath_type<scalar_t>>(t_value);
  s.n = x.numel();
  s.weight = static_cast<at::opmath_type<scalar_t>>(weight);
  return s;
}

at::ScalarType acc_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// The scalar loss sum_s weight_s * sum_i term over segments a and b (b may be empty).
template <Term kTerm>
at::Tensor weighted_sum(const at::Tensor& xa, const at::Tensor& ta, double va, double wa,
                        const at::Tensor& xb, const at::Tensor& tb, double vb, double wb) {
  const c10::cuda::CUDAGuard guard(xa.device());
  at::Tensor out = at::empty({}, xa.options());
  const int64_t total = xa.numel() + (xb.defined() ? xb.numel() : 0);
  const int blocks = blocks_for(total);
  GridSumWorkspace ws(blocks, acc_type(xa.scalar_type()), xa);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xa.scalar_type(), "ganplug_weighted_sum_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Segment<scalar_t> a = segment<scalar_t>(xa, ta, va, wa);
    const Segment<scalar_t> b = xb.defined() ? segment<scalar_t>(xb, tb, vb, wb) : Segment<scalar_t>();
    weighted_sum_kernel<scalar_t, kTerm><<<blocks, kBlock, 0, c10::cuda::getCurrentCUDAStream()>>>(
        a, b, ws.partial_ptr<acc_t>(), ws.counter_ptr(), out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

// (dx_a, dx_b) of sum_s weight_s * mean-free BCE sums, scaled by the upstream scalar grad, which
// the caller has checked (check_loss_grad: one element, on xa's device, of its dtype).
std::tuple<at::Tensor, at::Tensor> bce_backward(const at::Tensor& grad, const at::Tensor& xa,
                                                const at::Tensor& ta, double va, double wa,
                                                const at::Tensor& xb, const at::Tensor& tb,
                                                double vb, double wb) {
  const c10::cuda::CUDAGuard guard(xa.device());
  at::Tensor da = at::empty_like(xa, at::MemoryFormat::Contiguous);
  at::Tensor db = xb.defined() ? at::empty_like(xb, at::MemoryFormat::Contiguous) : at::Tensor();
  const int64_t total = xa.numel() + (xb.defined() ? xb.numel() : 0);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xa.scalar_type(), "ganplug_bce_backward_cuda", [&] {
    const Segment<scalar_t> a = segment<scalar_t>(xa, ta, va, wa);
    const Segment<scalar_t> b = xb.defined() ? segment<scalar_t>(xb, tb, vb, wb) : Segment<scalar_t>();
    bce_backward_kernel<scalar_t><<<blocks_for(total, 8), kBlock, 0, c10::cuda::getCurrentCUDAStream()>>>(
        a, b, da.data_ptr<scalar_t>(), db.defined() ? db.data_ptr<scalar_t>() : nullptr, grad.const_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {da, db};
}

double inv(const at::Tensor& x) { return 1.0 / static_cast<double>(x.numel()); }

// The checked arguments of a BCE op, contiguous (the target undefined when absent); `op` names
// the op in error messages.
struct BceArgs {
  at::Tensor x, t;
  BceArgs(const char* op, const at::Tensor& logits, const std::optional<at::Tensor>& target, double target_value) {
    check_bce_args(logits, target, target_value, op, "logits", "target");
    x = logits.contiguous();
    t = target_like(target, logits);
  }
};

// The same for the two inputs of a discriminator BCE op.
struct DiscriminatorArgs {
  at::Tensor real, fake, real_target, fake_target;
  DiscriminatorArgs(const char* op, const at::Tensor& real_logits, const at::Tensor& fake_logits,
                    const std::optional<at::Tensor>& real_t, const std::optional<at::Tensor>& fake_t, double real_value,
                    double fake_value) {
    check_discriminator_args(real_logits, fake_logits, real_t, fake_t, real_value, fake_value, op);
    real = real_logits.contiguous();
    fake = fake_logits.contiguous();
    real_target = target_like(real_t, real_logits);
    fake_target = target_like(fake_t, fake_logits);
  }
};

at::Tensor bce_loss_of(const BceArgs& a, double target_value, double scale) {
  return weighted_sum<Term::kBce>(a.x, a.t, target_value, scale * inv(a.x), at::Tensor(), at::Tensor(), 0, 0);
}

at::Tensor bce_grad_of(const at::Tensor& grad, const BceArgs& a, double target_value, double scale) {
  return std::get<0>(bce_backward(grad, a.x, a.t, target_value, scale * inv(a.x), at::Tensor(), at::Tensor(), 0, 0));
}

at::Tensor discriminator_bce_of(const DiscriminatorArgs& a, double real_value, double fake_value) {
  return weighted_sum<Term::kBce>(a.real, a.real_target, real_value, inv(a.real), a.fake, a.fake_target, fake_value,
                                  inv(a.fake));
}

std::tuple<at::Tensor, at::Tensor> discriminator_bce_grad_of(const at::Tensor& grad, const DiscriminatorArgs& a,
                                                             double real_value, double fake_value) {
  return bce_backward(grad, a.real, a.real_target, real_value, inv(a.real), a.fake, a.fake_target, fake_value,
                      inv(a.fake));
}

at::Tensor bce_loss_cuda(const at::Tensor& logits, const std::optional<at::Tensor>& target,
                         double target_value, double scale) {
  return bce_loss_of(BceArgs("bce_loss", logits, target, target_value), target_value, scale);
}

at::Tensor bce_loss_backward_cuda(const at::Tensor& grad, const at::Tensor& logits,
                                  const std::optional<at::Tensor>& target, double target_value,
                                  double scale) {
  constexpr const char* op = "bce_loss_backward";
  const BceArgs a(op, logits, target, target_value);
  check_loss_grad(grad, logits, op, "logits");
  return bce_grad_of(grad, a, target_value, scale);
}

// The loss and its gradient at upstream 1: the loss launch, then the backward launch.
std::tuple<at::Tensor, at::Tensor> bce_loss_and_grad_cuda(const at::Tensor& logits, const std::optional<at::Tensor>& target,
                                                           double target_value, double scale) {
  const BceArgs a("bce_loss_and_grad", logits, target, target_value);
  at::Tensor loss = bce_loss_of(a, target_value, scale);
  return {loss, bce_grad_of(at::ones_like(loss), a, target_value, scale)};
}

at::Tensor discriminator_bce_cuda(const at::Tensor& real_logits, const at::Tensor& fake_logits,
                                  const std::optional<at::Tensor>& real_target,
                                  const std::optional<at::Tensor>& fake_target, double real_value,
                                  double fake_value) {
  const DiscriminatorArgs a("discriminator_bce", real_logits, fake_logits, real_target, fake_target, real_value, fake_value);
  return discriminator_bce_of(a, real_value, fake_value);
}

std::tuple<at::Tensor, at::Tensor> discriminator_bce_backward_cuda(
    const at::Tensor& grad, const at::Tensor& real_logits, const at::Tensor& fake_logits,
    const std::optional<at::Tensor>& real_target, const std::optional<at::Tensor>& fake_target,
    double real_value, double fake_value) {
  constexpr const char* op = "discriminator_bce_backward";
  const DiscriminatorArgs a(op, real_logits, fake_logits, real_target, fake_target, real_value, fake_value);
  check_loss_grad(grad, real_logits, op, "real_logits");
  return discriminator_bce_grad_of(grad, a, real_value, fake_value);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> discriminator_bce_and_grad_cuda(
    const at::Tensor& real_logits, const at::Tensor& fake_logits, const std::optional<at::Tensor>& real_target,
    const std::optional<at::Tensor>& fake_target, double real_value, double fake_value) {
  const DiscriminatorArgs a("discriminator_bce_and_grad", real_logits, fake_logits, real_target, fake_target, real_value, fake_value);
  at::Tensor loss = discriminator_bce_of(a, real_value, fake_value);
  auto [d_real, d_fake] = discriminator_bce_grad_of(at::ones_like(loss), a, real_value, fake_value);
  return {loss, d_real, d_fake};
}

at::Tensor wasserstein_critic_loss_cuda(const at::Tensor& real_scores, const at::Tensor& fake_scores) {
  constexpr const char* op = "wasserstein_critic_loss";
  check_score_pair(real_scores, fake_scores, op, "real_scores", "fake_scores");
  const at::Tensor r = real_scores.contiguous(), f = fake_scores.contiguous();
  return weighted_sum<Term::kValue>(f, at::Tensor(), 0, inv(f), r, at::Tensor(), 0, -inv(r));
}

at::Tensor wasserstein_generator_loss_cuda(const at::Tensor& fake_scores) {
  constexpr const char* op = "wasserstein_generator_loss";
  check_logits(fake_scores, op, "fake_scores");
  const at::Tensor f = fake_scores.contiguous();
  return weighted_sum<Term::kValue>(f, at::Tensor(), 0, -inv(f), at::Tensor(), at::Tensor(), 0, 0);
}

// One block per row: the grid's x dimension bounds the batch.
void check_penalty_rows(const at::Tensor& gradients, double target, const char* op) {
  check_penalty_args(gradients, target, op);
  TORCH_CHECK_VALUE(gradients.size(0) <= int64_t{0x7fffffff}, op, ": more than 2^31 - 1 rows");
}

at::Tensor gradient_penalty_cuda(const at::Tensor& gradients, double target) {
  check_penalty_rows(gradients, target, "gradient_penalty");
  const c10::cuda::CUDAGuard guard(gradients.device());
  const at::Tensor g = gradients.contiguous();
  const int64_t rows = g.size(0), cols = g.numel() / rows;
  at::Tensor out = at::empty({}, g.options());
  GridSumWorkspace ws(rows, acc_type(g.scalar_type()), g);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "gradient_penalty_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    gradient_penalty_kernel<scalar_t><<<static_cast<unsigned int>(rows), kBlock, 0, c10::cuda::getCurrentCUDAStream()>>>(
        g.const_data_ptr<scalar_t>(), cols, static_cast<acc_t>(target), ws.partial_ptr<acc_t>(),
        ws.counter_ptr(), out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor gradient_penalty_backward_cuda(const at::Tensor& grad, const at::Tensor& gradients, double target) {
  check_penalty_rows(gradients, target, "gradient_penalty_backward");
  check_loss_grad(grad, gradients, "gradient_penalty_backward", "gradients");
  const c10::cuda::CUDAGuard guard(gradients.device());
  const at::Tensor g = gradients.contiguous();
  const int64_t rows = g.size(0), cols = g.numel() / rows;
  at::Tensor dg = at::empty_like(g, at::MemoryFormat::Contiguous);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "gradient_penalty_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    gradient_penalty_backward_kernel<scalar_t><<<static_cast<unsigned int>(rows), kBlock, 0, c10::cuda::getCurrentCUDAStream()>>>(
        g.const_data_ptr<scalar_t>(), dg.data_ptr<scalar_t>(), cols, static_cast<acc_t>(target),
        grad.const_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return dg;
}

}  // namespace

TORCH_LIBRARY_IMPL(ganplug, CUDA, m) {
  m.impl("bce_loss", &bce_loss_cuda);
  m.impl("bce_loss_backward", &bce_loss_backward_cuda);
  m.impl("bce_loss_and_grad", &bce_loss_and_grad_cuda);
  m.impl("discriminator_bce", &discriminator_bce_cuda);
  m.impl("discriminator_bce_backward", &discriminator_bce_backward_cuda);
  m.impl("discriminator_bce_and_grad", &discriminator_bce_and_grad_cuda);
  m.impl("wasserstein_critic_loss", &wasserstein_critic_loss_cuda);
  m.impl("wasserstein_generator_loss", &wasserstein_generator_loss_cuda);
  m.impl("gradient_penalty", &gradient_penalty_cuda);
  m.impl("gradient_penalty_backward", &gradient_penalty_backward_cuda);
}

}  // namespace ganplug
