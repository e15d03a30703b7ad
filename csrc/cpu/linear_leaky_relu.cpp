// CPU kernels of linear_leaky_relu and its backward. The GEMMs go to ATen (MKL/oneDNN, the bias
// folded into the forward GEMM); the LeakyReLU and the mask + bias-gradient backward are single passes.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <type_traits>
#include <vector>

#include "../checks.h"
#include "../loss_math.h"

namespace ganplug {
namespace {

// Rows per parallel task: about 32k elements, so small layers stay on one thread.
int64_t row_grain(int64_t cols) { return std::max<int64_t>(1, (int64_t{1} << 15) / std::max<int64_t>(cols, 1)); }

// The loops below run whole at::vec vectors for float and double, and element by element for the
// tail and for float16/bfloat16 (computed in float32). The vector lanes multiply by the same factor
// as loss_math.h's formulas, slope + (1 - slope) * (z > 0), so both give the same bits.

// The LeakyReLU factors of the positive and the negative side, as loss_math.h computes them.
template <typename op_t>
struct LeakyFactors {
  at::vec::Vectorized<op_t> positive, negative;
  explicit LeakyFactors(op_t slope) : positive(slope + (op_t(1) - slope)), negative(slope) {}
  // v * (positive if sign > 0 else negative), lane-wise.
  at::vec::Vectorized<op_t> apply(const at::vec::Vectorized<op_t>& v, const at::vec::Vectorized<op_t>& sign) const {
    return v * at::vec::Vectorized<op_t>::blendv(negative, positive, sign > at::vec::Vectorized<op_t>(op_t(0)));
  }
};

// y[i] = leaky_relu(y[i]) over n elements, in place.
template <typename scalar_t, typename op_t = at::opmath_type<scalar_t>>
void leaky_relu_span(scalar_t* __restrict__ y, int64_t n, op_t slope) {
  int64_t i = 0;
  if constexpr (std::is_same_v<scalar_t, op_t>) {
    using V = at::vec::Vectorized<op_t>;
    const LeakyFactors<op_t> f(slope);
    for (; i + V::size() <= n; i += V::size()) {
      const V z = V::loadu(y + i);
      f.apply(z, z).store(y + i);
    }
  }
  for (; i < n; ++i) y[i] = static_cast<scalar_t>(leaky_relu(static_cast<op_t>(y[i]), slope));
}

// dz[i] = dy[i] * mask(y[i]) over n elements.
template <typename scalar_t, typename op_t = at::opmath_type<scalar_t>>
void leaky_relu_grad_span(const scalar_t* __restrict__ dy, const scalar_t* __restrict__ y, scalar_t* __restrict__ dz,
                          int64_t n, op_t slope) {
  int64_t i = 0;
  if constexpr (std::is_same_v<scalar_t, op_t>) {
    using V = at::vec::Vectorized<op_t>;
    const LeakyFactors<op_t> f(slope);
    for (; i + V::size() <= n; i += V::size()) f.apply(V::loadu(dy + i), V::loadu(y + i)).store(dz + i);
  }
  for (; i < n; ++i) {
    dz[i] = static_cast<scalar_t>(leaky_relu_grad_from_output(static_cast<op_t>(dy[i]), static_cast<op_t>(y[i]), slope));
  }
}

// The same over one row, adding each dz[c] (before rounding) into acc[c].
template <typename scalar_t, typename op_t = at::opmath_type<scalar_t>>
void leaky_relu_grad_row_sum(const scalar_t* __restrict__ dy, const scalar_t* __restrict__ y, scalar_t* __restrict__ dz,
                             op_t* __restrict__ acc, int64_t cols, op_t slope) {
  int64_t c = 0;
  if constexpr (std::is_same_v<scalar_t, op_t>) {
    using V = at::vec::Vectorized<op_t>;
    const LeakyFactors<op_t> f(slope);
    for (; c + V::size() <= cols; c += V::size()) {
      const V g = f.apply(V::loadu(dy + c), V::loadu(y + c));
      g.store(dz + c);
      (V::loadu(acc + c) + g).store(acc + c);
    }
  }
  for (; c < cols; ++c) {
    const op_t g = leaky_relu_grad_from_output(static_cast<op_t>(dy[c]), static_cast<op_t>(y[c]), slope);
    dz[c] = static_cast<scalar_t>(g);
    acc[c] += g;
  }
}

// The bias rides in the GEMM (addmm, as torch's linear does); the LeakyReLU is one pass in place.
at::Tensor linear_leaky_relu_cpu(const at::Tensor& input, const at::Tensor& weight,
                                 const std::optional<at::Tensor>& bias, double negative_slope) {
  check_linear(input, weight, bias, negative_slope);
  const at::Tensor x = as_matrix(input);
  at::Tensor out = bias.has_value() ? at::addmm(*bias, x, weight.t()) : at::mm(x, weight.t());  // (M, N)
  out = out.contiguous();
  const int64_t n = out.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "linear_leaky_relu_cpu", [&] {
    using op_t = at::opmath_type<scalar_t>;
    scalar_t* y = out.data_ptr<scalar_t>();
    const op_t slope = static_cast<op_t>(negative_slope);
    at::parallel_for(0, n, int64_t{1} << 15, [=](int64_t i0, int64_t i1) { leaky_relu_span(y + i0, i1 - i0, slope); });
  });
  return in_input_shape(out, input);
}

// dz = dy * mask(y); written into a new tensor of y's shape.
at::Tensor leaky_relu_backward_cpu(const at::Tensor& grad_output, const at::Tensor& output,
                                   double negative_slope) {
  check_leaky_backward(grad_output, output, "leaky_relu_backward");
  const at::Tensor dy = grad_output.contiguous();
  const at::Tensor y = output.contiguous();
  at::Tensor dz = at::empty_like(y, at::MemoryFormat::Contiguous);
  const int64_t n = y.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "leaky_relu_backward_cpu", [&] {
    using op_t = at::opmath_type<scalar_t>;
    const scalar_t* dyp = dy.const_data_ptr<scalar_t>();
    const scalar_t* yp = y.const_data_ptr<scalar_t>();
    scalar_t* dzp = dz.data_ptr<scalar_t>();
    const op_t slope = static_cast<op_t>(negative_slope);
    at::parallel_for(0, n, int64_t{1} << 15, [=](int64_t i0, int64_t i1) {
      leaky_relu_grad_span(dyp + i0, yp + i0, dzp + i0, i1 - i0, slope);
    });
  });
  return dz;
}

// (dz, db) with db[c] = sum_r dz[r, c]. Rows are split into fixed blocks whose partial column
// sums are added in block order, so db does not depend on the thread count.
std::tuple<at::Tensor, at::Tensor> leaky_relu_bias_backward_cpu(const at::Tensor& grad_output,
                                                                const at::Tensor& output,
                                                                double negative_slope) {
  check_leaky_bias_backward(grad_output, output);
  const at::Tensor dy = grad_output.contiguous();
  const at::Tensor y = output.contiguous();
  at::Tensor dz = at::empty_like(y, at::MemoryFormat::Contiguous);
  const int64_t rows = y.size(0), cols = y.size(1);
  at::Tensor db = at::empty({cols}, y.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "leaky_relu_bias_backward_cpu", [&] {
    using op_t = at::opmath_type<scalar_t>;
    const scalar_t* dyp = dy.const_data_ptr<scalar_t>();
    const scalar_t* yp = y.const_data_ptr<scalar_t>();
    scalar_t* dzp = dz.data_ptr<scalar_t>();
    const op_t slope = static_cast<op_t>(negative_slope);
    const int64_t block_rows = row_grain(cols);
    const int64_t blocks = (rows + block_rows - 1) / block_rows;
    std::vector<op_t> partial(static_cast<size_t>(blocks * cols), op_t(0));
    at::parallel_for(0, blocks, 1, [=, &partial](int64_t b0, int64_t b1) {
      for (int64_t blk = b0; blk < b1; ++blk) {
        op_t* acc = partial.data() + blk * cols;
        const int64_t r_end = std::min(rows, (blk + 1) * block_rows);
        for (int64_t r = blk * block_rows; r < r_end; ++r) {
          leaky_relu_grad_row_sum(dyp + r * cols, yp + r * cols, dzp + r * cols, acc, cols, slope);
        }
      }
    });
    scalar_t* dbp = db.data_ptr<scalar_t>();
    for (int64_t c = 0; c < cols; ++c) {
      op_t s = 0;
      for (int64_t blk = 0; blk < blocks; ++blk) s += partial[blk * cols + c];
      dbp[c] = static_cast<scalar_t>(s);
    }
  });
  return {dz, db};
}

}  // namespace

TORCH_LIBRARY_IMPL(ganplug, CPU, m) {
  m.impl("linear_leaky_relu", &linear_leaky_relu_cpu);
  m.impl("leaky_relu_backward", &leaky_relu_backward_cpu);
  m.impl("leaky_relu_bias_backward", &leaky_relu_bias_backward_cpu);
}

}  // namespace ganplug
