// Vectorised forms of the loss_math.h formulas for the CPU kernels, on at::vec::Vectorized<T>
// (T = float or double): AVX2 lanes when setup.py builds with -mavx2 (CPU_CAPABILITY_AVX2), the
// portable scalar-array fallback otherwise. exp and log1p are Sleef's (within 1 ulp), from libtorch.
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <cstdint>

namespace ganplug {
namespace vec {

using at::vec::Vectorized;

// a * b lane-wise, 0 where a == 0 even when b is infinite (loss_math.h's weighted).
template <typename T>
Vectorized<T> weighted(const Vectorized<T>& a, const Vectorized<T>& b) {
  const Vectorized<T> zero(T(0));
  return Vectorized<T>::blendv(a * b, zero, a == zero);
}

// sigmoid(x) - t lane-wise, given e = exp(-|x|) (loss_math.h's bce_with_logits_grad).
template <typename T>
Vectorized<T> sigmoid_minus(const Vectorized<T>& x, const Vectorized<T>& e, const Vectorized<T>& t) {
  const Vectorized<T> one(T(1));
  const Vectorized<T> r = one / (one + e);  // sigmoid(|x|)
  return Vectorized<T>::blendv(e * r, r, x >= Vectorized<T>(T(0))) - t;
}

// d bce(x, t) / dx = sigmoid(x) - t lane-wise.
template <typename T>
Vectorized<T> bce_grad(const Vectorized<T>& x, const Vectorized<T>& t) {
  return sigmoid_minus(x, x.abs().neg().exp(), t);
}

// bce_with_logits(x, t) lane-wise: t * softplus(-x) + (1 - t) * softplus(x), with
// softplus(+-x) = max(+-x, 0) + log1p(exp(-|x|)); 0 (not NaN) for x = +inf, t = 1.
// With kGrad, also *grad = sigmoid(x) - t from the same exp.
template <typename T, bool kGrad>
Vectorized<T> bce(const Vectorized<T>& x, const Vectorized<T>& t, Vectorized<T>* grad) {
  const Vectorized<T> zero(T(0)), one(T(1));
  const Vectorized<T> e = x.abs().neg().exp();  // in (0, 1]
  if constexpr (kGrad) *grad = sigmoid_minus(x, e, t);
  const Vectorized<T> tail = e.log1p();
  const Vectorized<T> softplus_x = at::vec::maximum(x, zero) + tail;
  const Vectorized<T> softplus_minus_x = at::vec::maximum(x.neg(), zero) + tail;
  return weighted(t, softplus_minus_x) + weighted(one - t, softplus_x);
}

// A running sum in double of Vectorized<T> values, lane by lane (float lanes are widened to
// double first); total() adds the lanes in a fixed order, so a sum depends only on its inputs.
template <typename T>
struct DoubleSum;

template <>
struct DoubleSum<double> {
  Vectorized<double> acc{0.0};
  void add(const Vectorized<double>& v) { acc += v; }
  void add(const DoubleSum& other) { acc += other.acc; }
  double total() const {
    return at::vec::vec_reduce_all<double>([](const Vectorized<double>& a, const Vectorized<double>& b) { return a + b; },
                                           acc);
  }
};

template <>
struct DoubleSum<float> {
  DoubleSum<double> lo, hi;  // the low and high halves of the float lanes
  void add(const Vectorized<float>& v) {
    const auto w = widen(v);
    lo.add(w[0]);
    hi.add(w[1]);
  }
  void add(const DoubleSum& other) {
    lo.add(other.lo);
    hi.add(other.hi);
  }
  double total() const { return lo.total() + hi.total(); }

 private:
  static at::vec::VectorizedN<double, 2> widen(const Vectorized<float>& v) {
    return at::vec::convert<double, 2, float, 1>(at::vec::VectorizedN<float, 1>(v));
  }
};

// sum_{i < n} f(p[i]) in double, f = identity or square. Eight vectors at a time are first
// combined in T, pairwise (f is applied in T too, with fmadd for the squares): widening every float
// to double takes longer than loading it (the conversion, not memory, bounded the loop at about
// half the speed of torch's float sum), while a float32 combination of eight values rounds at most
// four times along any path, an error of 2^-22 of their magnitudes that does not grow with n.
template <typename T, bool kSquare>
double sum_of(const T* p, int64_t n) {
  using V = Vectorized<T>;
  constexpr int64_t kStep = 8 * V::size();
  const auto pair = [p](int64_t i) {  // f(p[i..]) + f(p[i + size..]) lane-wise
    const V a = V::loadu(p + i), b = V::loadu(p + i + V::size());
    if constexpr (kSquare) {
      return at::vec::fmadd(a, a, b * b);
    } else {
      return a + b;
    }
  };
  DoubleSum<T> s;
  int64_t i = 0;
  for (; i + kStep <= n; i += kStep) {
    s.add((pair(i) + pair(i + 2 * V::size())) + (pair(i + 4 * V::size()) + pair(i + 6 * V::size())));
  }
  for (; i + V::size() <= n; i += V::size()) {
    const V v = V::loadu(p + i);
    s.add(kSquare ? v * v : v);
  }
  if (i < n) {  // the tail, zero-padded
    const V v = V::loadu(p + i, n - i);
    s.add(kSquare ? v * v : v);
  }
  return s.total();
}

template <typename T>
double sum(const T* p, int64_t n) { return sum_of<T, false>(p, n); }

template <typename T>
double sum_of_squares(const T* p, int64_t n) { return sum_of<T, true>(p, n); }

}  // namespace vec
}  // namespace ganplug
