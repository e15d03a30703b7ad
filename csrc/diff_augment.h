// diff_augment's maths, shared by the CPU and CUDA kernels (ganplug/ops/reference.py's diff_augment
// defines the op; csrc/checks.h checks its arguments).
//
// For fixed parameters the op is affine in x: y = A x + a per sample. With b, s, c = color (s taken as
// 1 when C = 1), the colour transforms fold into one linear map L (symmetric: L^T = L) plus a constant:
//   L x = alpha * x + beta * S(x) + (1 - c) * mean(x),   alpha = c * s,  beta = c * (1 - s) / C,
// where S(x) is the sum over channels at each pixel and mean(x) the mean over (C, H, W); the
// brightness b is the constant (contrast and saturation keep a uniform shift). Translation and cutout
// are a masked shift P: output pixel (i, j) is pixel (i - dy, j - dx) where that lies in the image and
// (i, j) is outside the cut, else 0. So
//   forward   y = P (L x + b),
//   linear    A v = P L v             (the forward without the constant: the double backward),
//   adjoint   A^T g = L (P^T g)       (the backward: P^T scatters g back; L is its own transpose).
#pragma once

#include <c10/macros/Macros.h>

#include <algorithm>
#include <cstdint>

namespace ganplug {

// One sample's parameters, clamped so that no index arithmetic overflows: a shift of a whole side or
// more moves every pixel out, and cut bounds outside [0, side] cut what the clamped bounds cut.
struct DiffAugmentParams {
  int64_t dy, dx, y0, y1, x0, x1;
};

C10_HOST_DEVICE inline int64_t clamp_to(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : (v > hi ? hi : v); }

C10_HOST_DEVICE inline DiffAugmentParams diff_augment_params(const int64_t* shift, const int64_t* cut, int64_t height,
                                                             int64_t width) {
  return {clamp_to(shift[0], -height, height), clamp_to(shift[1], -width, width), clamp_to(cut[0], 0, height),
          clamp_to(cut[1], 0, height),         clamp_to(cut[2], 0, width),        clamp_to(cut[3], 0, width)};
}

// True when output pixel (i, j) of an H x W image shows a source pixel: (i - dy, j - dx) lies in the
// image and (i, j) is not cut. P's mask, in output coordinates.
C10_HOST_DEVICE inline bool diff_augment_kept(const DiffAugmentParams& p, int64_t i, int64_t j, int64_t height,
                                              int64_t width) {
  const int64_t r = i - p.dy, q = j - p.dx;
  const bool inside = r >= 0 && r < height && q >= 0 && q < width && i >= 0 && i < height && j >= 0 && j < width;
  return inside && !(i >= p.y0 && i < p.y1 && j >= p.x0 && j < p.x1);
}

// alpha, beta and (1 - c) of L, computed in double from one sample's color (b, s, c) and cast to op_t.
template <typename op_t>
struct ColorCoefficients {
  op_t alpha, beta, contrast_mean;
};

template <typename op_t, typename color_t>
C10_HOST_DEVICE inline ColorCoefficients<op_t> color_coefficients(const color_t* color, int64_t channels) {
  const double s = channels > 1 ? static_cast<double>(color[1]) : 1.0, c = static_cast<double>(color[2]);
  return {static_cast<op_t>(c * s), static_cast<op_t>(c * (1.0 - s) / static_cast<double>(channels)),
          static_cast<op_t>(1.0 - c)};
}

// The output columns of output row i that show a source pixel: up to two runs [lo, hi) (the row
// beside the source, minus the cut), none when source row i - dy lies outside the image.
struct KeptRuns {
  int64_t lo[2], hi[2];
  int count;
};

inline KeptRuns kept_runs(const DiffAugmentParams& p, int64_t i, int64_t height, int64_t width) {
  KeptRuns runs{{0, 0}, {0, 0}, 0};
  const auto add = [&runs](int64_t lo, int64_t hi) {
    if (lo < hi) {
      runs.lo[runs.count] = lo;
      runs.hi[runs.count] = hi;
      ++runs.count;
    }
  };
  const int64_t r = i - p.dy;
  if (i < 0 || i >= height || r < 0 || r >= height) return runs;
  const int64_t j0 = std::max<int64_t>(0, p.dx), j1 = std::min<int64_t>(width, width + p.dx);
  const int64_t c0 = std::clamp(p.x0, j0, j1), c1 = std::clamp(p.x1, j0, j1);
  if (i >= p.y0 && i < p.y1 && c0 < c1) {
    add(j0, c0);
    add(c1, j1);
  } else {
    add(j0, j1);
  }
  return runs;
}

}  // namespace ganplug
