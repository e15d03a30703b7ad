// CUDA kernels of bias_leaky_relu and its backward over (N, C, *) maps, in the layouts of
// ../bias_act.h. The bias gradient is deterministic: one warp sums each plane in a fixed order,
// then one thread per channel adds its planes in batch order.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../bias_act.h"
#include "../checks.h"
#include "../loss_math.h"
#include "reduce.cuh"

namespace ganplug {
namespace {

// y[i] = leaky_relu(x[i] + bias[c]) with c = (i / inner) % channels: inner is the plane size in
// the planes layout, 1 with channels innermost. bias null for none.
template <typename scalar_t>
__global__ void bias_act_forward_kernel(const scalar_t* x, const scalar_t* bias, scalar_t* y, int64_t n,
                                        int64_t channels, int64_t inner, at::opmath_type<scalar_t> slope) {
  using op_t = at::opmath_type<scalar_t>;
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < n; i += stride) {
    op_t z = static_cast<op_t>(x[i]);
    if (bias != nullptr) z += static_cast<op_t>(bias[(i / inner) % channels]);
    y[i] = static_cast<scalar_t>(leaky_relu(z, slope));
  }
}

// One warp per plane of `plane` elements: dz = dy * mask(y), and the plane's sum of dz into
// partials[p] (lane-strided sums, then a fixed shuffle tree).
template <typename scalar_t>
__global__ void plane_backward_kernel(const scalar_t* dy, const scalar_t* y, scalar_t* dz,
                                      at::opmath_type<scalar_t>* partials, int64_t planes, int64_t plane,
                                      at::opmath_type<scalar_t> slope) {
  using op_t = at::opmath_type<scalar_t>;
  const int lane = threadIdx.x & 31;
  const int64_t warps = (int64_t{gridDim.x} * blockDim.x) >> 5;
  for (int64_t p = (int64_t{blockIdx.x} * blockDim.x + threadIdx.x) >> 5; p < planes; p += warps) {
    const int64_t base = p * plane;
    op_t acc = 0;
    for (int64_t s = lane; s < plane; s += 32) {
      const op_t g = leaky_relu_grad_from_output(static_cast<op_t>(dy[base + s]), static_cast<op_t>(y[base + s]), slope);
      dz[base + s] = static_cast<scalar_t>(g);
      acc += g;
    }
    for (int offset = 16; offset > 0; offset >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, offset);
    if (lane == 0) partials[p] = acc;
  }
}

// db[c] = sum over n of partials[n * channels + c], in batch order.
template <typename scalar_t>
__global__ void channel_sum_kernel(const at::opmath_type<scalar_t>* partials, scalar_t* db, int64_t batch,
                                   int64_t channels) {
  using op_t = at::opmath_type<scalar_t>;
  const int64_t c = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (c >= channels) return;
  op_t s = 0;
  for (int64_t n = 0; n < batch; ++n) s += partials[n * channels + c];
  db[c] = static_cast<scalar_t>(s);
}

at::Tensor bias_leaky_relu_cuda(const at::Tensor& input, const std::optional<at::Tensor>& bias,
                                double negative_slope) {
  check_bias_act(input, bias, negative_slope);
  const c10::cuda::CUDAGuard guard(input.device());
  const bool innermost = channels_innermost(input);
  const at::Tensor x = in_layout(input, innermost);
  const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  at::Tensor out = empty_in_layout(x, innermost);
  const int64_t n = x.numel(), channels = x.size(1);
  const int64_t inner = innermost ? 1 : n / (x.size(0) * channels);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bias_leaky_relu_cuda", [&] {
    bias_act_forward_kernel<scalar_t><<<blocks_for(n, 8), kBlock, 0, c10::cuda::getCurrentCUDAStream()>>>(
        x.const_data_ptr<scalar_t>(), b.defined() ? b.const_data_ptr<scalar_t>() : nullptr, out.data_ptr<scalar_t>(),
        n, channels, inner, static_cast<at::opmath_type<scalar_t>>(negative_slope));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> bias_leaky_relu_backward_cuda(const at::Tensor& grad_output,
                                                                 const at::Tensor& output,
                                                                 double negative_slope) {
  check_bias_act_backward(grad_output, output);
  const c10::cuda::CUDAGuard guard(output.device());
  const bool innermost = channels_innermost(output);
  const at::Tensor y = in_layout(output, innermost);
  const at::Tensor dy = in_layout(grad_output, innermost);
  if (innermost) return bias_act_backward_channels_innermost(dy, y, negative_slope);
  at::Tensor dz = empty_in_layout(y, false);
  const int64_t batch = y.size(0), channels = y.size(1);
  const int64_t planes = batch * channels, plane = y.numel() / planes;
  at::Tensor db = at::empty({channels}, y.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "bias_leaky_relu_backward_cuda", [&] {
    using op_t = at::opmath_type<scalar_t>;
    const at::Tensor partials = at::empty({planes}, y.options().dtype(c10::CppTypeToScalarType<op_t>::value));
    const auto stream = c10::cuda::getCurrentCUDAStream();
    plane_backward_kernel<scalar_t><<<blocks_for(planes * 32, 8), kBlock, 0, stream>>>(
        dy.const_data_ptr<scalar_t>(), y.const_data_ptr<scalar_t>(), dz.data_ptr<scalar_t>(),
        partials.data_ptr<op_t>(), planes, plane, static_cast<op_t>(negative_slope));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const auto sum_blocks = static_cast<unsigned int>((channels + kBlock - 1) / kBlock);
    channel_sum_kernel<scalar_t><<<sum_blocks, kBlock, 0, stream>>>(partials.const_data_ptr<op_t>(),
                                                                    db.data_ptr<scalar_t>(), batch, channels);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {dz, db};
}

}  // namespace

TORCH_LIBRARY_IMPL(ganplug, CUDA, m) {
  m.impl("bias_leaky_relu", &bias_leaky_relu_cuda);
  m.impl("bias_leaky_relu_backward", &bias_leaky_relu_backward_cuda);
}

}  // namespace ganplug
