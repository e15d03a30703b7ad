// Plane convolutions: a 2-D convolution whose input has one channel (plane_conv, a critic's first layer on
// grey images, with its bias and LeakyReLU applied as each sum is stored), its adjoint, whose output has one channel (plane_conv_transpose, a generator's last layer),
// and the weight gradient both share (plane_conv_weight). oneDNN runs the transposed one several times slower
// than its arithmetic allows; here each sample is an im2col of its plane (kh*kw rows of Ho*Wo pixels, in cache)
// times the (C, kh*kw) weight, vectorised along the pixels, or that product's adjoint.
//
// float32 and float64 run these kernels; float16 and bfloat16, and CUDA tensors, run ATen's convolutions.
// Every result is independent of the thread count: samples are computed whole, one per task.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <cmath>
#include <optional>
#include <vector>

#include "../loss_math.h"
#include "simd.h"

namespace ganplug {
namespace {

// x (N, 1, H, W) <-> y (N, C, OH, OW) through w (C, 1, KH, KW) with stride (SH, SW) and zero padding (PH, PW).
struct Plane {
  int64_t n, c, h, w, kh, kw, sh, sw, ph, pw, oh, ow;
  int64_t taps() const { return kh * kw; }
  int64_t pixels() const { return oh * ow; }
};

// The geometry of a plane (N, 1, H, W), its maps (N, C, OH, OW) and the weight (C, 1, KH, KW), checked.
Plane plane_of(const char* op, at::IntArrayRef plane, at::IntArrayRef maps, at::IntArrayRef weight,
               at::IntArrayRef stride, at::IntArrayRef padding) {
  TORCH_CHECK(stride.size() == 2 && padding.size() == 2 && stride[0] >= 1 && stride[1] >= 1 && padding[0] >= 0 &&
                  padding[1] >= 0,
              "ganplug.ops.", op, ": stride must be two ints >= 1 and padding two ints >= 0, got stride ", stride,
              " and padding ", padding);
  TORCH_CHECK(weight.size() == 4 && weight[1] == 1 && weight[2] >= 1 && weight[3] >= 1, "ganplug.ops.", op,
              ": weight must be (C, 1, KH, KW), one input plane per output channel, got shape ", weight);
  TORCH_CHECK(plane.size() == 4 && plane[1] == 1, "ganplug.ops.", op, ": the plane must be (N, 1, H, W), got shape ",
              plane);
  TORCH_CHECK(maps.size() == 4 && maps[0] == plane[0] && maps[1] == weight[0], "ganplug.ops.", op,
              ": the maps must be (N, C, OH, OW) with the plane's N and the weight's C, got shape ", maps);
  const Plane p{plane[0],  weight[0], plane[2],  plane[3],  weight[2], weight[3],
                stride[0], stride[1], padding[0], padding[1], maps[2],   maps[3]};
  TORCH_CHECK(p.h + 2 * p.ph >= p.kh && p.w + 2 * p.pw >= p.kw && p.oh == (p.h + 2 * p.ph - p.kh) / p.sh + 1 &&
                  p.ow == (p.w + 2 * p.pw - p.kw) / p.sw + 1,
              "ganplug.ops.", op, ": a (", p.h, ", ", p.w, ") plane convolved by a (", p.kh, ", ", p.kw,
              ") kernel with stride ", stride, " and padding ", padding, " cannot give (", p.oh, ", ", p.ow, ") maps");
  return p;
}

void same_kind(const char* op, const at::Tensor& a, const at::Tensor& b) {
  TORCH_CHECK(a.scalar_type() == b.scalar_type() && a.device() == b.device(), "ganplug.ops.", op,
              ": the tensors must share one dtype and device, got ", a.scalar_type(), " on ", a.device(), " and ",
              b.scalar_type(), " on ", b.device());
  TORCH_CHECK(at::isFloatingType(a.scalar_type()), "ganplug.ops.", op, ": expected floating-point tensors, got ",
              a.scalar_type());
}

// The output columns j < count whose input column j * stride + offset lies in [0, size): [first, last).
struct Span {
  int64_t first, last;
  Span(int64_t offset, int64_t stride, int64_t size, int64_t count) {
    first = offset >= 0 ? 0 : std::min(count, (-offset + stride - 1) / stride);
    last = size - offset <= 0 ? first : std::max(first, std::min(count, (size - offset - 1) / stride + 1));
  }
};

// cols[(a * KW + b) * P + i * OW + j] = x[i * SH + a - PH, j * SW + b - PW], 0 outside the plane.
template <typename T>
void im2col(const T* x, T* cols, const Plane& g) {
  for (int64_t a = 0; a < g.kh; ++a) {
    for (int64_t b = 0; b < g.kw; ++b) {
      T* tap = cols + (a * g.kw + b) * g.pixels();
      const Span span(b - g.pw, g.sw, g.w, g.ow);
      for (int64_t i = 0; i < g.oh; ++i) {
        const int64_t row = i * g.sh + a - g.ph;
        T* out = tap + i * g.ow;
        if (row < 0 || row >= g.h) {
          std::fill(out, out + g.ow, T(0));
          continue;
        }
        const T* in = x + row * g.w + b - g.pw;
        std::fill(out, out + span.first, T(0));
        for (int64_t j = span.first; j < span.last; ++j) out[j] = in[j * g.sw];
        std::fill(out + span.last, out + g.ow, T(0));
      }
    }
  }
}

// x (zeroed first) += each column's pixels at its place: the adjoint of im2col.
template <typename T>
void col2im(const T* cols, T* x, const Plane& g) {
  std::fill(x, x + g.h * g.w, T(0));
  for (int64_t a = 0; a < g.kh; ++a) {
    for (int64_t b = 0; b < g.kw; ++b) {
      const T* tap = cols + (a * g.kw + b) * g.pixels();
      const Span span(b - g.pw, g.sw, g.w, g.ow);
      for (int64_t i = 0; i < g.oh; ++i) {
        const int64_t row = i * g.sh + a - g.ph;
        if (row < 0 || row >= g.h) continue;
        T* out = x + row * g.w + b - g.pw;
        const T* in = tap + i * g.ow;
        for (int64_t j = span.first; j < span.last; ++j) out[j * g.sw] += in[j];
      }
    }
  }
}

// What combine does to each sum before storing it: + bias[r] (none when null), then leaky_relu with slope (none
// at 1), as loss_math.h's leaky_relu computes it.
template <typename T>
struct Epilogue {
  const T* bias = nullptr;
  T slope = T(1);
  T scalar(T v, int64_t r) const { return leaky_relu(bias ? v + bias[r] : v, slope); }
  at::vec::Vectorized<T> vector(at::vec::Vectorized<T> v, int64_t r) const {
    using V = at::vec::Vectorized<T>;
    if (bias) v = v + V(bias[r]);
    if (slope == T(1)) return v;
    const V positive = V::blendv(V(T(0)), V(T(1)), v > V(T(0)));
    return v * (V(slope) + (V(T(1)) - V(slope)) * positive);
  }
};

// out[r, p] = epilogue(sum_q A[r, q] * rows[q, p]) for r < R, p < P, with A[r, q] = a[r * rs + q * qs]: a small
// matrix product, summed over q in order; two rows of out and four vectors of pixels at a time share their loads.
template <typename T>
GANPLUG_SIMD_CLONES void combine(const T* a, int64_t rs, int64_t qs, const T* rows, T* out, int64_t R, int64_t Q,
                                 int64_t P, Epilogue<T> epilogue = {}) {
  using V = at::vec::Vectorized<T>;
  constexpr int64_t U = 4;
  for (int64_t r = 0; r < R; r += 2) {
    const bool pair = r + 1 < R;
    const T* a0 = a + r * rs;
    const T* a1 = pair ? a0 + rs : a0;
    T* o0 = out + r * P;
    T* o1 = pair ? o0 + P : o0;
    int64_t p = 0;
    for (; p + U * V::size() <= P; p += U * V::size()) {
      V acc0[U], acc1[U];
      for (int64_t u = 0; u < U; ++u) acc0[u] = acc1[u] = V(T(0));
      for (int64_t q = 0; q < Q; ++q) {
        const V c0(a0[q * qs]), c1(a1[q * qs]);
        const T* src = rows + q * P + p;
        for (int64_t u = 0; u < U; ++u) {
          const V v = V::loadu(src + u * V::size());
          acc0[u] = at::vec::fmadd(c0, v, acc0[u]);
          acc1[u] = at::vec::fmadd(c1, v, acc1[u]);
        }
      }
      for (int64_t u = 0; u < U; ++u) {
        // o1 == o0 for a single last row: o0's store below wins
        epilogue.vector(acc1[u], pair ? r + 1 : r).store(o1 + p + u * V::size());
        epilogue.vector(acc0[u], r).store(o0 + p + u * V::size());
      }
    }
    for (; p < P; ++p) {
      T s0 = 0, s1 = 0;
      for (int64_t q = 0; q < Q; ++q) {
        s0 += a0[q * qs] * rows[q * P + p];
        s1 += a1[q * qs] * rows[q * P + p];
      }
      o1[p] = epilogue.scalar(s1, pair ? r + 1 : r);
      o0[p] = epilogue.scalar(s0, r);
    }
  }
}

// Samples per task: about 32k multiply-adds of maps, so small batches stay on one thread.
int64_t sample_grain(const Plane& g) { return std::max<int64_t>(1, (int64_t{1} << 15) / std::max<int64_t>(1, g.c * g.pixels())); }

bool runs_here(const at::Tensor& t) {
  return t.device().is_cpu() && (t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble);
}

std::vector<int64_t> output_padding(const Plane& g) {
  return {g.h - ((g.oh - 1) * g.sh - 2 * g.ph + g.kh), g.w - ((g.ow - 1) * g.sw - 2 * g.pw + g.kw)};
}

// On CPU in float32 and float64, the kernels above; otherwise ATen's convolutions (cuDNN on CUDA).
at::Tensor plane_conv(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                      at::IntArrayRef stride, at::IntArrayRef padding, double slope) {
  same_kind("plane_conv", x, weight);
  if (bias.has_value()) {
    same_kind("plane_conv", x, *bias);
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0), "ganplug.ops.plane_conv: bias must be (C,) with "
                "the weight's C = ", weight.size(0), ", got shape ", bias->sizes());
  }
  TORCH_CHECK(std::isfinite(slope) && slope >= 0, "ganplug.ops.plane_conv: negative_slope must be a finite number "
              ">= 0, got ", slope);
  TORCH_CHECK(x.dim() == 4 && weight.dim() == 4, "ganplug.ops.plane_conv: input must be (N, 1, H, W) and weight "
              "(C, 1, KH, KW), got shapes ", x.sizes(), " and ", weight.sizes());
  TORCH_CHECK(stride.size() == 2 && padding.size() == 2 && stride[0] >= 1 && stride[1] >= 1,
              "ganplug.ops.plane_conv: stride must be two ints >= 1 and padding two ints, got stride ", stride,
              " and padding ", padding);  // before the output size divides by the stride
  const std::vector<int64_t> maps{x.size(0), weight.size(0), (x.size(2) + 2 * padding[0] - weight.size(2)) / stride[0] + 1,
                                  (x.size(3) + 2 * padding[1] - weight.size(3)) / stride[1] + 1};
  const Plane g = plane_of("plane_conv", x.sizes(), maps, weight.sizes(), stride, padding);
  if (!runs_here(x)) {
    const auto y = at::conv2d(x, weight, bias, stride, padding);
    return slope == 1.0 ? y : at::leaky_relu(y, slope);
  }
  auto y = at::empty(maps, x.options());
  const auto xc = x.contiguous();
  const auto wc = weight.contiguous();
  const auto bc = bias.has_value() ? bias->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "plane_conv", [&] {
    const scalar_t* xp = xc.const_data_ptr<scalar_t>();
    const scalar_t* wp = wc.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    const Epilogue<scalar_t> epilogue{bc.defined() ? bc.const_data_ptr<scalar_t>() : nullptr, scalar_t(slope)};
    at::parallel_for(0, g.n, sample_grain(g), [&](int64_t n0, int64_t n1) {
      std::vector<scalar_t> cols(g.taps() * g.pixels());
      for (int64_t n = n0; n < n1; ++n) {
        im2col(xp + n * g.h * g.w, cols.data(), g);
        scalar_t* out = yp + n * g.c * g.pixels();
        combine(wp, g.taps(), int64_t{1}, cols.data(), out, g.c, g.taps(), g.pixels(), epilogue);
      }
    });
  });
  return y;
}

at::Tensor plane_conv_transpose(const at::Tensor& y, const at::Tensor& weight, at::IntArrayRef stride,
                                at::IntArrayRef padding, at::IntArrayRef output_size) {
  same_kind("plane_conv_transpose", y, weight);
  TORCH_CHECK(output_size.size() == 2, "ganplug.ops.plane_conv_transpose: output_size must be two ints (H, W), got ",
              output_size);
  const std::vector<int64_t> plane{y.dim() > 0 ? y.size(0) : 0, 1, output_size[0], output_size[1]};
  const Plane g = plane_of("plane_conv_transpose", plane, y.sizes(), weight.sizes(), stride, padding);
  if (!runs_here(y)) return at::conv_transpose2d(y, weight, {}, stride, padding, output_padding(g));
  auto x = at::empty(plane, y.options());
  const auto yc = y.contiguous();
  const auto wc = weight.contiguous();
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "plane_conv_transpose", [&] {
    const scalar_t* yp = yc.const_data_ptr<scalar_t>();
    const scalar_t* wp = wc.const_data_ptr<scalar_t>();
    scalar_t* xp = x.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, g.n, sample_grain(g), [&](int64_t n0, int64_t n1) {
      std::vector<scalar_t> cols(g.taps() * g.pixels());
      for (int64_t n = n0; n < n1; ++n) {
        combine(wp, int64_t{1}, g.taps(), yp + n * g.c * g.pixels(), cols.data(), g.taps(), g.c, g.pixels());
        col2im(cols.data(), xp + n * g.h * g.w, g);
      }
    });
  });
  return x;
}

// The weight gradient is ATen's everywhere: oneDNN's is twice as fast as a per-sample kernel here (one GEMM
// over all samples' pixels). It is an op for the autograd formulas, which differentiate it by the two above.
at::Tensor plane_conv_weight(const at::Tensor& x, const at::Tensor& y, at::IntArrayRef kernel_size,
                             at::IntArrayRef stride, at::IntArrayRef padding) {
  same_kind("plane_conv_weight", x, y);
  TORCH_CHECK(kernel_size.size() == 2 && y.dim() == 4, "ganplug.ops.plane_conv_weight: kernel_size must be two ints "
              "and the maps (N, C, OH, OW), got ", kernel_size, " and shape ", y.sizes());
  const std::vector<int64_t> shape{y.size(1), 1, kernel_size[0], kernel_size[1]};
  plane_of("plane_conv_weight", x.sizes(), y.sizes(), shape, stride, padding);
  return std::get<1>(at::convolution_backward(y, x, at::empty(shape, x.options()), std::nullopt, stride, padding,
                                              {1, 1}, false, {0, 0}, 1, {false, true, false}));
}

}  // namespace

TORCH_LIBRARY_IMPL(ganplug, CPU, m) {
  m.impl("plane_conv", &plane_conv);
  m.impl("plane_conv_transpose", &plane_conv_transpose);
  m.impl("plane_conv_weight", &plane_conv_weight);
}

TORCH_LIBRARY_IMPL(ganplug, CUDA, m) {
  m.impl("plane_conv", &plane_conv);
  m.impl("plane_conv_transpose", &plane_conv_transpose);
  m.impl("plane_conv_weight", &plane_conv_weight);
}

}  // namespace ganplug
