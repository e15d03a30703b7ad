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
  void add_square(const Vectorized<double>& v) { acc = at::vec::fmadd(v, v, acc); }
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
  void add_square(const Vectorized<float>& v) {
    const auto w = widen(v);
    lo.add_square(w[0]);
    hi.add_square(w[1]);
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

// sum_{i < n} p[i]^2 in double, exact squares of float (the product of two floats is exact in
// double); four independent accumulators, so the loop is not one chain of additions.
template <typename T>
double sum_of_squares(const T* p, int64_t n) {
  using V = Vectorized<T>;
  constexpr int64_t kStep = 4 * V::size();
  DoubleSum<T> s[4];
  int64_t i = 0;
  for (; i + kStep <= n; i += kStep) {
    for (int k = 0; k < 4; ++k) s[k].add_square(V::loadu(p + i + k * V::size()));
  }
  for (; i + V::size() <= n; i += V::size()) s[0].add_square(V::loadu(p + i));
  if (i < n) s[1].add_square(V::loadu(p + i, n - i));  // the tail, zero-padded
  s[0].add(s[1]);
  s[2].add(s[3]);
  s[0].add(s[2]);
  return s[0].total();
}

// sum_{i < n} p[i], accumulated in double. Four vectors at a time are first added pairwise in T:
// widening every float to double costs twice the memory traffic's time (the conversion, not the
// load, bounds the loop), while a sum of four floats rounds at most twice, its error 2^-23 times
// their magnitudes, not growing with n.
template <typename T>
double sum(const T* p, int64_t n) {
  using V = Vectorized<T>;
  constexpr int64_t kStep = 4 * V::size();
  const auto load = [p](int64_t i) { return V::loadu(p + i); };
  DoubleSum<T> s;
  int64_t i = 0;
  for (; i + kStep <= n; i += kStep) {
    s.add((load(i) + load(i + V::size())) + (load(i + 2 * V::size()) + load(i + 3 * V::size())));
  }
  for (; i + V::size() <= n; i += V::size()) s.add(load(i));
  if (i < n) s.add(V::loadu(p + i, n - i));  // the tail, zero-padded
  return s.total();
}

}  // namespace vec
}  // namespace ganplug
