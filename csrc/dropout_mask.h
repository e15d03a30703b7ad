// The dropout mask as a pure function of (seed, element index), shared by the CPU and CUDA
// kernels: a counter-based hash, so the backward recomputes the forward's mask instead of storing
// it, any thread can compute any element (the result depends on neither the thread count nor the
// device), and the Python twin (ganplug/ops/reference.py) reproduces it bit for bit.
#pragma once

#include <cstdint>

#include "loss_math.h"  // GANPLUG_HD

namespace ganplug {

// A 32-bit integer finaliser (xorshift-multiply rounds, the "lowbias32" constants): a bijection in
// which every input bit flips each output bit with probability close to 1/2.
GANPLUG_HD uint32_t mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352du;
  x ^= x >> 15;
  x *= 0x846ca68bu;
  x ^= x >> 16;
  return x;
}

// The 32-bit hash of element i under the 64-bit seed (k0, k1) = (low, high) halves.
GANPLUG_HD uint32_t dropout_hash(uint32_t k0, uint32_t k1, uint64_t i) {
  return mix32(mix32(static_cast<uint32_t>(i) ^ k0) ^ static_cast<uint32_t>(i >> 32) ^ k1);
}

// Element i is kept when its hash is below keep_threshold(p) = round((1 - p) * 2^32).
inline uint64_t keep_threshold(double p) {
  const double t = (1.0 - p) * 4294967296.0 + 0.5;
  return t >= 4294967296.0 ? uint64_t{1} << 32 : static_cast<uint64_t>(t);
}

}  // namespace ganplug
