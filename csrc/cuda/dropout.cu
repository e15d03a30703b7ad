// CUDA kernel of dropout: y[i] = x[i] * (keep(i) ? 1 / (1 - p) : 0), the mask hashed from (seed, i)
// (dropout_mask.h), so it equals the CPU kernel's mask bit for bit. One grid-stride pass.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../checks.h"
#include "../dropout_mask.h"
#include "reduce.cuh"

namespace ganplug {
namespace {

template <typename scalar_t>
__global__ void dropout_kernel(const scalar_t* x, scalar_t* y, int64_t n, uint32_t k0, uint32_t k1,
                               uint64_t threshold, at::opmath_type<scalar_t> scale) {
  using op_t = at::opmath_type<scalar_t>;
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < n; i += stride) {
    const bool keep = dropout_hash(k0, k1, static_cast<uint64_t>(i)) < threshold;
    y[i] = static_cast<scalar_t>(static_cast<op_t>(x[i]) * (keep ? scale : op_t(0)));
  }
}

at::Tensor dropout_cuda(const at::Tensor& input, double p, int64_t seed) {
  check_dropout(input, p);
  const c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor x = input.contiguous();
  at::Tensor y = at::empty_like(x, at::MemoryFormat::Contiguous);
  const int64_t n = x.numel();
  if (n == 0) return y;
  const uint64_t s = static_cast<uint64_t>(seed);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "dropout_cuda", [&] {
    dropout_kernel<scalar_t><<<blocks_for(n, 8), kBlock, 0, c10::cuda::getCurrentCUDAStream()>>>(
        x.const_data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), n, static_cast<uint32_t>(s),
        static_cast<uint32_t>(s >> 32), keep_threshold(p), static_cast<at::opmath_type<scalar_t>>(1.0 / (1.0 - p)));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(ganplug, CUDA, m) { m.impl("dropout", &dropout_cuda); }

}  // namespace ganplug
