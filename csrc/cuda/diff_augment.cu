// CUDA kernels of diff_augment and its linear part (../diff_augment.h has the maths): one block per
// sample sums what the contrast mean needs (x, or the kept pixels of g for the adjoint) in a fixed
// order and stores that sample's constant; then one thread per output element reads its source pixel
// (all channels of it when saturation mixes them). The parameters stay on the device: no host sync.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../checks.h"
#include "../diff_augment.h"
#include "reduce.cuh"

namespace ganplug {
namespace {

enum class Pass { kForward, kLinear, kAdjoint };  // y = P (L x + b), A v = P L v, A^T g = L P^T g

// constants[n] = (1 - c) * mean + (b in the forward), mean = sum(x_n) / (C H W), or sum(P^T g_n) / (C H W)
// for the adjoint. One block per sample.
template <typename scalar_t>
__global__ void sample_constant_kernel(const scalar_t* in, const int64_t* shift, const int64_t* cut,
                                       const at::opmath_type<scalar_t>* color, at::opmath_type<scalar_t>* constants,
                                       int64_t batch, int64_t channels, int64_t height, int64_t width, Pass pass) {
  using op_t = at::opmath_type<scalar_t>;
  __shared__ op_t scratch[kWarps];
  const int64_t plane = height * width, sample = channels * plane;
  for (int64_t n = blockIdx.x; n < batch; n += gridDim.x) {
    const DiffAugmentParams p = diff_augment_params(shift + 2 * n, cut + 4 * n, height, width);
    const scalar_t* x = in + n * sample;
    op_t total = 0;
    for (int64_t e = threadIdx.x; e < sample; e += blockDim.x) {
      const int64_t pixel = e % plane;
      if (pass != Pass::kAdjoint || diff_augment_kept(p, pixel / width, pixel % width, height, width)) {
        total += static_cast<op_t>(x[e]);
      }
    }
    total = block_sum(total, scratch);
    if (threadIdx.x == 0) {
      const ColorCoefficients<op_t> k = color_coefficients<op_t>(color + 3 * n, channels);
      const op_t brightness = pass == Pass::kForward ? color[3 * n] : op_t(0);
      constants[n] = k.contrast_mean * (total / static_cast<op_t>(sample)) + brightness;
    }
  }
}

// One thread per destination element (n, c, row, column), grid-stride, 64-bit indices.
template <typename scalar_t>
__global__ void diff_augment_kernel(const scalar_t* in, scalar_t* out, const int64_t* shift, const int64_t* cut,
                                    const at::opmath_type<scalar_t>* color, const at::opmath_type<scalar_t>* constants,
                                    int64_t total, int64_t channels, int64_t height, int64_t width, bool adjoint) {
  using op_t = at::opmath_type<scalar_t>;
  const int64_t plane = height * width, stride = int64_t{gridDim.x} * blockDim.x;
  for (int64_t e = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; e < total; e += stride) {
    const int64_t col = e % width, row = (e / width) % height, n = e / (channels * plane);
    const DiffAugmentParams p = diff_augment_params(shift + 2 * n, cut + 4 * n, height, width);
    // (i, j): the output pixel of the forward; (i - dy, j - dx) its source. The adjoint writes the source.
    const int64_t i = adjoint ? row + p.dy : row, j = adjoint ? col + p.dx : col;
    const op_t constant = constants[n];
    op_t value = adjoint ? constant : op_t(0);
    if (diff_augment_kept(p, i, j, height, width)) {
      const ColorCoefficients<op_t> k = color_coefficients<op_t>(color + 3 * n, channels);
      const int64_t read = adjoint ? i * width + j : (i - p.dy) * width + (j - p.dx);  // within the sample's plane
      const scalar_t* x = in + n * channels * plane + read;
      op_t sum = 0;
      if (k.beta != op_t(0)) {
        for (int64_t c = 0; c < channels; ++c) sum += static_cast<op_t>(x[c * plane]);
      }
      value = k.alpha * static_cast<op_t>(x[((e / plane) % channels) * plane]) + k.beta * sum + constant;
    }
    out[e] = static_cast<scalar_t>(value);
  }
}

at::Tensor diff_augment_pass(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& cut,
                             const at::Tensor& color, Pass pass) {
  check_diff_augment(x, shift, cut, color);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor in = x.contiguous();
  at::Tensor out = at::empty(in.sizes(), in.options());
  if (in.numel() == 0) return out;
  const at::Tensor shifts = shift.contiguous(), cuts = cut.contiguous();
  const int64_t batch = in.size(0), channels = in.size(1), height = in.size(2), width = in.size(3);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.scalar_type(), "diff_augment_cuda", [&] {
    using op_t = at::opmath_type<scalar_t>;
    const auto dtype = c10::CppTypeToScalarType<op_t>::value;
    const at::Tensor colors = color.to(dtype).contiguous();
    const at::Tensor constants = at::empty({batch}, in.options().dtype(dtype));
    const auto stream = c10::cuda::getCurrentCUDAStream();
    const unsigned int sample_blocks = static_cast<unsigned int>(std::min<int64_t>(batch, 65535));
    sample_constant_kernel<scalar_t><<<sample_blocks, kBlock, 0, stream>>>(
        in.const_data_ptr<scalar_t>(), shifts.const_data_ptr<int64_t>(), cuts.const_data_ptr<int64_t>(),
        colors.const_data_ptr<op_t>(), constants.data_ptr<op_t>(), batch, channels, height, width, pass);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const int64_t total = in.numel();
    diff_augment_kernel<scalar_t><<<blocks_for(total, 8), kBlock, 0, stream>>>(
        in.const_data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), shifts.const_data_ptr<int64_t>(),
        cuts.const_data_ptr<int64_t>(), colors.const_data_ptr<op_t>(), constants.const_data_ptr<op_t>(), total,
        channels, height, width, pass == Pass::kAdjoint);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor diff_augment_cuda(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& cut,
                             const at::Tensor& color) {
  return diff_augment_pass(x, shift, cut, color, Pass::kForward);
}

at::Tensor diff_augment_linear_cuda(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& cut,
                                    const at::Tensor& color, bool adjoint) {
  return diff_augment_pass(x, shift, cut, color, adjoint ? Pass::kAdjoint : Pass::kLinear);
}

}  // namespace

TORCH_LIBRARY_IMPL(ganplug, CUDA, m) {
  m.impl("diff_augment", &diff_augment_cuda);
  m.impl("diff_augment_linear", &diff_augment_linear_cuda);
}

}  // namespace ganplug
