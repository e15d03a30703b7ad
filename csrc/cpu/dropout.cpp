// CPU kernel of dropout: y[i] = x[i] * (keep(i) ? 1 / (1 - p) : 0), the mask hashed from (seed, i)
// (dropout_mask.h), in one parallel pass that the compiler vectorises (AVX2 where the CPU has it).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../checks.h"
#include "../dropout_mask.h"
#include "simd.h"

namespace ganplug {
namespace {

// y[j] = x[j] * factor(j) for the n elements whose indices are hi * 2^32 + lo0 + j, j < n, which
// all share the high word hi (the caller splits at multiples of 2^32).
template <typename scalar_t, typename op_t = at::opmath_type<scalar_t>>
GANPLUG_SIMD_CLONES void dropout_span(const scalar_t* __restrict__ x, scalar_t* __restrict__ y, int64_t n, uint32_t lo0, uint32_t hi,
                  uint32_t k0, uint32_t k1, uint32_t threshold, op_t scale) {
  const uint32_t k1h = k1 ^ hi;
  for (int64_t j = 0; j < n; ++j) {
    const uint32_t h = mix32(mix32((lo0 + static_cast<uint32_t>(j)) ^ k0) ^ k1h);
    y[j] = static_cast<scalar_t>(static_cast<op_t>(x[j]) * (h < threshold ? scale : op_t(0)));
  }
}

at::Tensor dropout_cpu(const at::Tensor& input, double p, int64_t seed) {
  check_dropout(input, p);
  const at::Tensor x = input.contiguous();
  at::Tensor y = at::empty_like(x, at::MemoryFormat::Contiguous);
  const uint64_t threshold = keep_threshold(p);
  const uint64_t s = static_cast<uint64_t>(seed);
  const uint32_t k0 = static_cast<uint32_t>(s), k1 = static_cast<uint32_t>(s >> 32);
  const int64_t n = x.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "dropout_cpu", [&] {
    using op_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    const op_t scale = static_cast<op_t>(1.0 / (1.0 - p));
    if (threshold >> 32) {  // p so small that every element is kept
      at::parallel_for(0, n, int64_t{1} << 15, [=](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) yp[i] = static_cast<scalar_t>(static_cast<op_t>(xp[i]) * scale);
      });
      return;
    }
    const uint32_t t = static_cast<uint32_t>(threshold);
    at::parallel_for(0, n, int64_t{1} << 15, [=](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1;) {  // split where the index's high word changes
        const int64_t end = std::min<int64_t>(i1, ((i >> 32) + 1) << 32);
        dropout_span(xp + i, yp + i, end - i, static_cast<uint32_t>(i), static_cast<uint32_t>(i >> 32), k0, k1, t,
                     scale);
        i = end;
      }
    });
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(ganplug, CPU, m) { m.impl("dropout", &dropout_cpu); }

}  // namespace ganplug
