// CUDA kernels of affine_leaky_relu and its backward over (N, C, *) maps, in the layouts of
// ../bias_act.h. The coefficients arrive as (N, C) tensors in the compute type. The coefficient
// gradients are deterministic: each (sample, channel) sum is taken by one warp (planes) or one thread
// (channels innermost) in a fixed order, then one thread per channel adds the samples in batch order.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../affine_act.h"
#include "../loss_math.h"
#include "reduce.cuh"

namespace ganplug {
namespace {

// scale or shift as one coefficient per (sample, channel), contiguous (N, C) in `dtype`; `absent` where not given.
at::Tensor per_sample(const std::optional<at::Tensor>& t, int64_t batch, int64_t channels, at::ScalarType dtype,
                      double absent, const at::Tensor& like) {
  if (!t.has_value()) return at::full({batch, channels}, absent, like.options().dtype(dtype));
  return t->to(dtype).expand({batch, channels}).contiguous();
}

// The (sample, channel) index k = n * C + c of element i: planes of `inner` elements, or channels innermost.
__device__ __forceinline__ int64_t coefficient_index(int64_t i, bool innermost, int64_t channels, int64_t inner) {
  return innermost ? (i / (inner * channels)) * channels + i % channels : i / inner;
}

template <typename scalar_t>
__global__ void affine_act_forward_kernel(const scalar_t* x, const at::opmath_type<scalar_t>* s,
                                          const at::opmath_type<scalar_t>* t, scalar_t* y, int64_t n, bool innermost,
                                          int64_t channels, int64_t inner, at::opmath_type<scalar_t> slope) {
  using op_t = at::opmath_type<scalar_t>;
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < n; i += stride) {
    const int64_t k = coefficient_index(i, innermost, channels, inner);
    y[i] = static_cast<scalar_t>(leaky_relu(static_cast<op_t>(x[i]) * s[k] + t[k], slope));
  }
}

// dx = g * s at element e, with g = dy * mask(x * s + t); returns g, and g * x through *gx.
template <typename scalar_t, typename op_t = at::opmath_type<scalar_t>>
__device__ __forceinline__ op_t backward_element(const scalar_t* dy, const scalar_t* x, scalar_t* dx, int64_t e,
                                                 op_t s, op_t t, op_t slope, op_t* gx) {
  const op_t xe = static_cast<op_t>(x[e]);
  const op_t g = leaky_relu_grad_from_output(static_cast<op_t>(dy[e]), xe * s + t, slope);
  dx[e] = static_cast<scalar_t>(g * s);
  *gx = g * xe;
  return g;
}

// Planes: one warp per plane of `inner` elements; lane-strided sums, then a fixed shuffle tree.
template <typename scalar_t>
__global__ void plane_backward_kernel(const scalar_t* dy, const scalar_t* x, scalar_t* dx,
                                      const at::opmath_type<scalar_t>* s, const at::opmath_type<scalar_t>* t,
                                      at::opmath_type<scalar_t>* sum_g, at::opmath_type<scalar_t>* sum_gx,
                                      int64_t planes, int64_t inner, at::opmath_type<scalar_t> slope) {
  using op_t = at::opmath_type<scalar_t>;
  const int lane = threadIdx.x & 31;
  const int64_t warps = (int64_t{gridDim.x} * blockDim.x) >> 5;
  for (int64_t p = (int64_t{blockIdx.x} * blockDim.x + threadIdx.x) >> 5; p < planes; p += warps) {
    op_t a = 0, b = 0;
    for (int64_t j = lane; j < inner; j += 32) {
      op_t gx;
      a += backward_element(dy, x, dx, p * inner + j, s[p], t[p], slope, &gx);
      b += gx;
    }
    for (int offset = 16; offset > 0; offset >>= 1) {
      a += __shfl_down_sync(0xffffffffu, a, offset);
      b += __shfl_down_sync(0xffffffffu, b, offset);
    }
    if (lane == 0) {
      sum_g[p] = a;
      sum_gx[p] = b;
    }
  }
}

// Channels innermost: one thread per (sample, channel) k, over that sample's rows in order (adjacent
// threads read adjacent channels).
template <typename scalar_t>
__global__ void rows_backward_kernel(const scalar_t* dy, const scalar_t* x, scalar_t* dx,
                                     const at::opmath_type<scalar_t>* s, const at::opmath_type<scalar_t>* t,
                                     at::opmath_type<scalar_t>* sum_g, at::opmath_type<scalar_t>* sum_gx,
                                     int64_t pairs, int64_t channels, int64_t inner, at::opmath_type<scalar_t> slope) {
  using op_t = at::opmath_type<scalar_t>;
  const int64_t k = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (k >= pairs) return;
  const int64_t n = k / channels, c = k % channels;
  op_t a = 0, b = 0;
  for (int64_t r = 0; r < inner; ++r) {
    op_t gx;
    a += backward_element(dy, x, dx, (n * inner + r) * channels + c, s[k], t[k], slope, &gx);
    b += gx;
  }
  sum_g[k] = a;
  sum_gx[k] = b;
}

// grad[k] = sums[k] for an (N, C) coefficient; grad[c] = sum over n of sums[n * C + c], in batch order, for (C,).
template <typename scalar_t>
__global__ void coefficient_grad_kernel(const at::opmath_type<scalar_t>* sums, scalar_t* grad, int64_t batch,
                                        int64_t channels, bool each_sample) {
  using op_t = at::opmath_type<scalar_t>;
  const int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (each_sample) {
    if (i < batch * channels) grad[i] = static_cast<scalar_t>(sums[i]);
    return;
  }
  if (i >= channels) return;
  op_t total = 0;
  for (int64_t n = 0; n < batch; ++n) total += sums[n * channels + i];
  grad[i] = static_cast<scalar_t>(total);
}

unsigned int blocks_of(int64_t threads) { return static_cast<unsigned int>((threads + kBlock - 1) / kBlock); }

at::Tensor affine_leaky_relu_cuda(const at::Tensor& input, const std::optional<at::Tensor>& scale,
                                  const std::optional<at::Tensor>& shift, double negative_slope) {
  check_affine_act(input, scale, shift, negative_slope, "affine_leaky_relu");
  const c10::cuda::CUDAGuard guard(input.device());
  const bool innermost = channels_innermost(input);
  const at::Tensor x = in_layout(input, innermost);
  at::Tensor out = empty_in_layout(x, innermost);
  const int64_t n = x.numel(), batch = x.size(0), channels = x.size(1), inner = n / (batch * channels);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "affine_leaky_relu_cuda", [&] {
    using op_t = at::opmath_type<scalar_t>;
    const auto dtype = c10::CppTypeToScalarType<op_t>::value;
    const at::Tensor s = per_sample(scale, batch, channels, dtype, 1.0, x);
    const at::Tensor t = per_sample(shift, batch, channels, dtype, 0.0, x);
    affine_act_forward_kernel<scalar_t><<<blocks_for(n, 8), kBlock, 0, c10::cuda::getCurrentCUDAStream()>>>(
        x.const_data_ptr<scalar_t>(), s.const_data_ptr<op_t>(), t.const_data_ptr<op_t>(), out.data_ptr<scalar_t>(), n,
        innermost, channels, inner, static_cast<op_t>(negative_slope));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> affine_leaky_relu_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& input, const std::optional<at::Tensor>& scale,
    const std::optional<at::Tensor>& shift, double negative_slope) {
  check_affine_act_backward(grad_output, input, scale, shift, negative_slope);
  const c10::cuda::CUDAGuard guard(input.device());
  const bool innermost = channels_innermost(input);
  const at::Tensor x = in_layout(input, innermost);
  const at::Tensor dy = in_layout(grad_output, innermost);
  at::Tensor dx = empty_in_layout(x, innermost);
  at::Tensor d_scale = empty_coefficient_grad(scale, x), d_shift = empty_coefficient_grad(shift, x);
  const int64_t batch = x.size(0), channels = x.size(1), pairs = batch * channels, inner = x.numel() / pairs;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "affine_leaky_relu_backward_cuda", [&] {
    using op_t = at::opmath_type<scalar_t>;
    const auto dtype = c10::CppTypeToScalarType<op_t>::value;
    const at::Tensor s = per_sample(scale, batch, channels, dtype, 1.0, x);
    const at::Tensor t = per_sample(shift, batch, channels, dtype, 0.0, x);
    const at::Tensor sums = at::empty({2, pairs}, x.options().dtype(dtype));  // rows: sum of g, sum of g * x
    op_t* sum_g = sums.data_ptr<op_t>();
    op_t* sum_gx = sum_g + pairs;
    const auto stream = c10::cuda::getCurrentCUDAStream();
    const op_t slope = static_cast<op_t>(negative_slope);
    if (innermost) {
      rows_backward_kernel<scalar_t><<<blocks_of(pairs), kBlock, 0, stream>>>(
          dy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), dx.data_ptr<scalar_t>(),
          s.const_data_ptr<op_t>(), t.const_data_ptr<op_t>(), sum_g, sum_gx, pairs, channels, inner, slope);
    } else {
      plane_backward_kernel<scalar_t><<<blocks_for(pairs * 32, 8), kBlock, 0, stream>>>(
          dy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), dx.data_ptr<scalar_t>(),
          s.const_data_ptr<op_t>(), t.const_data_ptr<op_t>(), sum_g, sum_gx, pairs, inner, slope);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    for (auto [grad, from] : {std::pair<at::Tensor*, const op_t*>{&d_scale, sum_gx}, {&d_shift, sum_g}}) {
      if (grad->numel() == 0) continue;
      coefficient_grad_kernel<scalar_t><<<blocks_of(grad->numel()), kBlock, 0, stream>>>(
          from, grad->data_ptr<scalar_t>(), batch, channels, grad->dim() == 2);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {dx, d_scale, d_shift};
}

}  // namespace

TORCH_LIBRARY_IMPL(ganplug, CUDA, m) {
  m.impl("affine_leaky_relu", &affine_leaky_relu_cuda);
  m.impl("affine_leaky_relu_backward", &affine_leaky_relu_backward_cuda);
}

}  // namespace ganplug
