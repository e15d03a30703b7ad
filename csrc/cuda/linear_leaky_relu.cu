// CUDA kernels of linear_leaky_relu and its backward. The GEMM is cuBLAS (through ATen); the
// bias + LeakyReLU epilogue and the mask + bias-gradient backward are single fused kernels.
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

constexpr int kTileCols = 32;  // columns per block of the bias-gradient kernel
constexpr int kTileRows = 8;   // row lanes per block of the bias-gradient kernel

template <typename scalar_t>
__global__ void bias_leaky_relu_kernel(scalar_t* y, const scalar_t* bias, int64_t n, int64_t cols,
                                       at::opmath_type<scalar_t> slope) {
  using op_t = at::opmath_type<scalar_t>;
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < n; i += stride) {
    op_t z = static_cast<op_t>(y[i]);
    if (bias != nullptr) z += static_cast<op_t>(bias[i % cols]);
    y[i] = static_cast<scalar_t>(leaky_relu(z, slope));
  }
}

template <typename scalar_t>
__global__ void leaky_relu_backward_kernel(const scalar_t* dy, const scalar_t* y, scalar_t* dz,
                                           int64_t n, at::opmath_type<scalar_t> slope) {
  using op_t = at::opmath_type<scalar_t>;
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < n; i += stride) {
    dz[i] = static_cast<scalar_t>(
        leaky_relu_grad_from_output(static_cast<op_t>(dy[i]), static_cast<op_t>(y[i]), slope));
  }
}

// Block (kTileCols, kTileRows) owns kTileCols columns and every gridDim.y-th group of rows. It
// writes dz and a partial column sum; the last block of a column tile adds the partials in order
// (deterministic) into db and resets the tile's counter.
template <typename scalar_t>
__global__ void leaky_relu_bias_backward_kernel(const scalar_t* dy, const scalar_t* y, scalar_t* dz,
                                                scalar_t* db, at::opmath_type<scalar_t>* partials,
                                                unsigned int* counters, int64_t rows, int64_t cols,
                                                at::opmath_type<scalar_t> slope) {
  using op_t = at::opmath_type<scalar_t>;
  __shared__ op_t tile[kTileRows][kTileCols + 1];
  __shared__ bool is_last;
  const int64_t c = int64_t{blockIdx.x} * kTileCols + threadIdx.x;
  op_t acc = 0;
  if (c < cols) {
    const int64_t row_stride = int64_t{kTileRows} * gridDim.y;
    for (int64_t r = int64_t{blockIdx.y} * kTileRows + threadIdx.y; r < rows; r += row_stride) {
      const int64_t i = r * cols + c;
      const op_t g = leaky_relu_grad_from_output(static_cast<op_t>(dy[i]), static_cast<op_t>(y[i]), slope);
      dz[i] = static_cast<scalar_t>(g);
      acc += g;
    }
  }
  tile[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0) {
    op_t s = 0;
    for (int k = 0; k < kTileRows; ++k) s += tile[k][threadIdx.x];
    if (c < cols) partials[int64_t{blockIdx.y} * cols + c] = s;
    __threadfence();
  }
  __syncthreads();
  if (threadIdx.x == 0 && threadIdx.y == 0) {
    is_last = atomicAdd(&counters[blockIdx.x], 1u) == gridDim.y - 1;
  }
  __syncthreads();
  if (!is_last) return;
  if (threadIdx.y == 0 && c < cols) {
    const volatile op_t* p = partials;
    op_t s = 0;
    for (unsigned int k = 0; k < gridDim.y; ++k) s += p[int64_t{k} * cols + c];
    db[c] = static_cast<scalar_t>(s);
  }
  if (threadIdx.x == 0 && threadIdx.y == 0) counters[blockIdx.x] = 0;
}

at::Tensor linear_leaky_relu_cuda(const at::Tensor& input, const at::Tensor& weight,
                                  const std::optional<at::Tensor>& bias, double negative_slope) {
  check_linear(input, weight, bias, negative_slope);
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor out = at::mm(as_matrix(input), weight.t()).contiguous();
  const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  const int64_t n = out.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "linear_leaky_relu_cuda", [&] {
    bias_leaky_relu_kernel<scalar_t><<<blocks_for(n, 8), kBlock, 0, c10::cuda::getCurrentCUDAStream()>>>(
        out.data_ptr<scalar_t>(), b.defined() ? b.const_data_ptr<scalar_t>() : nullptr, n, out.size(1),
        static_cast<at::opmath_type<scalar_t>>(negative_slope));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return in_input_shape(out, input);
}

at::Tensor leaky_relu_backward_cuda(const at::Tensor& grad_output, const at::Tensor& output,
                                    double negative_slope) {
  check_leaky_backward(grad_output, output, "leaky_relu_backward");
  const c10::cuda::CUDAGuard guard(output.device());
  const at::Tensor dy = grad_output.contiguous();
  const at::Tensor y = output.contiguous();
  at::Tensor dz = at::empty_like(y, at::MemoryFormat::Contiguous);
  const int64_t n = y.numel();
  if (n == 0) return dz;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "leaky_relu_backward_cuda", [&] {
    leaky_relu_backward_kernel<scalar_t><<<blocks_for(n, 8), kBlock, 0, c10::cuda::getCurrentCUDAStream()>>>(
        dy.const_data_ptr<scalar_t>(), y.const_data_ptr<scalar_t>(), dz.data_ptr<scalar_t>(), n,
        static_cast<at::opmath_type<scalar_t>>(negative_slope));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return dz;
}

std::tuple<at::Tensor, at::Tensor> leaky_relu_bias_backward_cuda(const at::Tensor& grad_output,
                                                                 const at::Tensor& output,
                                                                 double negative_slope) {
  check_leaky_bias_backward(grad_output, output);
  const c10::cuda::CUDAGuard guard(output.device());
  const at::Tensor dy = grad_output.contiguous();
  const at::Tensor y = output.contiguous();
  const int64_t rows = y.size(0), cols = y.size(1);
  at::Tensor dz = at::empty_like(y, at::MemoryFormat::Contiguous);
  at::Tensor db = at::zeros({cols}, y.options());
  if (rows == 0 || cols == 0) return {dz, db};
  const int64_t col_tiles = (cols + kTileCols - 1) / kTileCols;
  const int64_t row_groups = (rows + kTileRows - 1) / kTileRows;
  const int64_t row_splits = std::max<int64_t>(1, std::min<int64_t>({row_groups, 4 * sm_count() / col_tiles, 65535}));
  const dim3 grid(static_cast<unsigned int>(col_tiles), static_cast<unsigned int>(row_splits));
  const dim3 block(kTileCols, kTileRows);
  const at::Tensor counters = at::zeros({col_tiles}, y.options().dtype(at::kInt));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "leaky_relu_bias_backward_cuda", [&] {
    using op_t = at::opmath_type<scalar_t>;
    const at::Tensor partials = at::empty({row_splits, cols}, y.options().dtype(c10::CppTypeToScalarType<op_t>::value));
    leaky_relu_bias_backward_kernel<scalar_t><<<grid, block, 0, c10::cuda::getCurrentCUDAStream()>>>(
        dy.const_data_ptr<scalar_t>(), y.const_data_ptr<scalar_t>(), dz.data_ptr<scalar_t>(),
        db.data_ptr<scalar_t>(), partials.data_ptr<op_t>(),
        reinterpret_cast<unsigned int*>(counters.data_ptr<int>()), rows, cols, static_cast<op_t>(negative_slope));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {dz, db};
}

}  // namespace

TORCH_LIBRARY_IMPL(ganplug, CUDA, m) {
  m.impl("linear_leaky_relu", &linear_leaky_relu_cuda);
  m.impl("leaky_relu_backward", &leaky_relu_backward_cuda);
  m.impl("leaky_relu_bias_backward", &leaky_relu_bias_backward_cuda);
}

}  // namespace ganplug
