// CPU kernels of diff_augment and its linear part (../diff_augment.h has the maths): per sample, one
// sum for the contrast mean, then one pass over the rows of the output, each row being up to two runs
// copied from a source row (through the channel sum when saturation mixes channels) and a constant
// elsewhere. Samples are independent and each is computed by one task in a fixed order, so results do
// not depend on the thread count.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../checks.h"
#include "../diff_augment.h"
#include "simd.h"

namespace ganplug {
namespace {

constexpr int64_t kTaskElements = int64_t{1} << 15;  // about this many elements per parallel task

enum class Pass { kForward, kLinear, kAdjoint };  // y = P (L x + b), A v = P L v, A^T g = L P^T g

// The sum of n elements, accumulated in double (the contrast mean of up to millions of pixels).
template <typename scalar_t>
GANPLUG_SIMD_CLONES double sum_of(const scalar_t* __restrict__ x, int64_t n) {
  double total = 0;
#pragma omp simd reduction(+ : total)
  for (int64_t j = 0; j < n; ++j) total += static_cast<double>(x[j]);
  return total;
}

// sums[j] = sum over `channels` planes (`plane` elements apart) of x[j], for j < n.
template <typename scalar_t, typename op_t>
GANPLUG_SIMD_CLONES void channel_sums(const scalar_t* __restrict__ x, op_t* __restrict__ sums, int64_t n,
                                      int64_t channels, int64_t plane) {
  for (int64_t j = 0; j < n; ++j) sums[j] = static_cast<op_t>(x[j]);
  for (int64_t c = 1; c < channels; ++c) {
    const scalar_t* xc = x + c * plane;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) sums[j] += static_cast<op_t>(xc[j]);
  }
}

// y[j] = alpha * x[j] + beta * sums[j] + constant, or without the sums term when sums is null.
template <typename scalar_t, typename op_t>
GANPLUG_SIMD_CLONES void affine_run(const scalar_t* __restrict__ x, const op_t* __restrict__ sums,
                                    scalar_t* __restrict__ y, int64_t n, op_t alpha, op_t beta, op_t constant) {
  if (sums == nullptr) {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) y[j] = static_cast<scalar_t>(alpha * static_cast<op_t>(x[j]) + constant);
    return;
  }
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    y[j] = static_cast<scalar_t>(alpha * static_cast<op_t>(x[j]) + beta * sums[j] + constant);
  }
}

// The sum of g over one sample's kept output pixels (all channels): sum(P^T g), for the adjoint's mean.
template <typename scalar_t>
double kept_sum(const scalar_t* g, const DiffAugmentParams& p, int64_t channels, int64_t height, int64_t width) {
  double total = 0;
  for (int64_t i = 0; i < height; ++i) {
    const KeptRuns runs = kept_runs(p, i, height, width);
    for (int64_t c = 0; c < channels; ++c) {
      const scalar_t* row = g + (c * height + i) * width;
      for (int k = 0; k < runs.count; ++k) total += sum_of(row + runs.lo[k], runs.hi[k] - runs.lo[k]);
    }
  }
  return total;
}

// One sample (C, H, W) of `in` through `pass` into `out`; `sums` holds W values of scratch.
template <typename scalar_t, typename op_t = at::opmath_type<scalar_t>>
void sample_pass(const scalar_t* in, scalar_t* out, const DiffAugmentParams& p, const ColorCoefficients<op_t>& k,
                 op_t brightness, Pass pass, int64_t channels, int64_t height, int64_t width, op_t* sums) {
  const int64_t plane = height * width;
  const bool adjoint = pass == Pass::kAdjoint;
  const double total = adjoint ? kept_sum(in, p, channels, height, width) : sum_of(in, channels * plane);
  const op_t mean = static_cast<op_t>(total / static_cast<double>(channels * plane));
  const op_t constant = k.contrast_mean * mean + (pass == Pass::kForward ? brightness : op_t(0));
  const op_t fill = adjoint ? constant : op_t(0);  // L's constant reaches every pixel of A^T g; P zeroes y's
  const bool mixes = channels > 1 && k.beta != op_t(0);
  // Forward and linear: destination row d is output row i = d, its runs read source row i - dy at column
  // j - dx. Adjoint: destination row d is source row r = d, written at column j - dx from output row r + dy.
  const int64_t dest_offset = adjoint ? -p.dx : 0, source_offset = adjoint ? 0 : -p.dx;
  for (int64_t d = 0; d < height; ++d) {
    const int64_t i = adjoint ? d + p.dy : d;
    const KeptRuns runs = kept_runs(p, i, height, width);
    const scalar_t* src = runs.count > 0 ? in + (adjoint ? i : d - p.dy) * width : in;  // the source row
    if (mixes) {
      for (int r = 0; r < runs.count; ++r) {
        channel_sums(src + runs.lo[r] + source_offset, sums + runs.lo[r], runs.hi[r] - runs.lo[r], channels, plane);
      }
    }
    for (int64_t c = 0; c < channels; ++c) {
      scalar_t* dst = out + c * plane + d * width;
      int64_t filled = 0;  // the destination columns before this are written
      for (int r = 0; r < runs.count; ++r) {
        const int64_t lo = runs.lo[r] + dest_offset, n = runs.hi[r] - runs.lo[r];
        std::fill(dst + filled, dst + lo, static_cast<scalar_t>(fill));
        affine_run(src + c * plane + runs.lo[r] + source_offset, mixes ? sums + runs.lo[r] : nullptr, dst + lo, n,
                   k.alpha, k.beta, constant);
        filled = lo + n;
      }
      std::fill(dst + filled, dst + width, static_cast<scalar_t>(fill));
    }
  }
}

at::Tensor diff_augment_pass(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& cut,
                             const at::Tensor& color, Pass pass) {
  check_diff_augment(x, shift, cut, color);
  const at::Tensor in = x.contiguous();
  at::Tensor out = at::empty(in.sizes(), in.options());
  if (in.numel() == 0) return out;
  const at::Tensor shifts = shift.contiguous(), cuts = cut.contiguous(), colors = color.to(at::kDouble).contiguous();
  const int64_t batch = in.size(0), channels = in.size(1), height = in.size(2), width = in.size(3);
  const int64_t sample = channels * height * width;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.scalar_type(), "diff_augment_cpu", [&] {
    using op_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = in.const_data_ptr<scalar_t>();
    scalar_t* yp = out.data_ptr<scalar_t>();
    const int64_t* sp = shifts.const_data_ptr<int64_t>();
    const int64_t* cp = cuts.const_data_ptr<int64_t>();
    const double* colp = colors.const_data_ptr<double>();
    const int64_t grain = std::max<int64_t>(1, kTaskElements / sample);
    at::parallel_for(0, batch, grain, [&](int64_t n0, int64_t n1) {
      std::vector<op_t> sums(static_cast<size_t>(width));
      for (int64_t n = n0; n < n1; ++n) {
        const DiffAugmentParams p = diff_augment_params(sp + 2 * n, cp + 4 * n, height, width);
        const ColorCoefficients<op_t> k = color_coefficients<op_t>(colp + 3 * n, channels);
        sample_pass(xp + n * sample, yp + n * sample, p, k, static_cast<op_t>(colp[3 * n]), pass, channels, height,
                    width, sums.data());
      }
    });
  });
  return out;
}

at::Tensor diff_augment_cpu(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& cut,
                            const at::Tensor& color) {
  return diff_augment_pass(x, shift, cut, color, Pass::kForward);
}

at::Tensor diff_augment_linear_cpu(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& cut,
                                   const at::Tensor& color, bool adjoint) {
  return diff_augment_pass(x, shift, cut, color, adjoint ? Pass::kAdjoint : Pass::kLinear);
}

}  // namespace

TORCH_LIBRARY_IMPL(ganplug, CPU, m) {
  m.impl("diff_augment", &diff_augment_cpu);
  m.impl("diff_augment_linear", &diff_augment_linear_cpu);
}

}  // namespace ganplug
