// Elementwise math shared by the CPU and CUDA kernels: one definition of each formula.
//
// Every function takes and returns the accumulation type (float for half/bfloat16/float,
// double for double), so reduced-precision inputs are computed in float32.
#pragma once

#include <cmath>

#ifdef __CUDACC__
#define GANPLUG_HD __host__ __device__ __forceinline__
#else
#define GANPLUG_HD inline
#endif

namespace ganplug {

GANPLUG_HD float exp_(float x) { return ::expf(x); }
GANPLUG_HD double exp_(double x) { return ::exp(x); }
GANPLUG_HD float log1p_(float x) { return ::log1pf(x); }
GANPLUG_HD double log1p_(double x) { return ::log1p(x); }
GANPLUG_HD float abs_(float x) { return ::fabsf(x); }
GANPLUG_HD double abs_(double x) { return ::fabs(x); }
GANPLUG_HD float sqrt_(float x) { return ::sqrtf(x); }
GANPLUG_HD double sqrt_(double x) { return ::sqrt(x); }

// a * b, where a == 0 gives 0 even when b is infinite (a weight of zero switches a term off).
template <typename T>
GANPLUG_HD T weighted(T a, T b) {
  return a == T(0) ? T(0) : a * b;
}

// softplus(x) = log(1 + exp(x)) without overflow; exact to the last bit at |x| = 40 in double.
template <typename T>
GANPLUG_HD T softplus(T x) {
  return (x > T(0) ? x : T(0)) + log1p_(exp_(-abs_(x)));
}

// sigmoid(x) without overflow for either sign.
template <typename T>
GANPLUG_HD T sigmoid(T x) {
  if (x >= T(0)) {
    return T(1) / (T(1) + exp_(-x));
  }
  const T e = exp_(x);
  return e / (T(1) + e);
}

// Binary cross-entropy of a logit x against target t in [0, 1]:
// t * softplus(-x) + (1 - t) * softplus(x). Finite for finite x; 0 (not NaN) for x = +inf, t = 1.
template <typename T>
GANPLUG_HD T bce_with_logits(T x, T t) {
  return weighted(t, softplus(-x)) + weighted(T(1) - t, softplus(x));
}

// bce_with_logits(x, t) and, into *grad, its derivative sigmoid(x) - t, from one exp and one log1p.
template <typename T>
GANPLUG_HD T bce_with_logits_and_grad(T x, T t, T* grad) {
  const T e = exp_(-abs_(x));
  const T tail = log1p_(e);
  const T sig = x >= T(0) ? T(1) / (T(1) + e) : e / (T(1) + e);
  *grad = sig - t;
  return weighted(t, (x < T(0) ? -x : T(0)) + tail) + weighted(T(1) - t, (x > T(0) ? x : T(0)) + tail);
}

// d bce_with_logits / dx = sigmoid(x) - t.
template <typename T>
GANPLUG_HD T bce_with_logits_grad(T x, T t) {
  return sigmoid(x) - t;
}

// LeakyReLU with slope >= 0, written without branches so CPU loops vectorise.
template <typename T>
GANPLUG_HD T leaky_relu(T z, T slope) {
  const T positive = static_cast<T>(z > T(0));
  return z * (slope + (T(1) - slope) * positive);
}

// The LeakyReLU derivative read off the output y: with slope >= 0, y > 0 exactly where z > 0.
template <typename T>
GANPLUG_HD T leaky_relu_grad_from_output(T dy, T y, T slope) {
  const T positive = static_cast<T>(y > T(0));
  return dy * (slope + (T(1) - slope) * positive);
}

}  // namespace ganplug
