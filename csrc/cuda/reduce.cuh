// Block and grid reductions for the CUDA loss kernels.
//
// A grid reduction finishes in the same launch: every block writes its partial sum, and the last
// block to arrive (counted with an atomic) adds the partials in index order. The result is
// deterministic for a given grid size and needs no second kernel.
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include <algorithm>

namespace ganplug {

constexpr int kBlock = 256;  // threads per block of every 1-D kernel here
constexpr int kWarps = kBlock / 32;

// Sum of v over the block; the result is valid in thread 0. `scratch` holds kWarps values.
template <typename acc_t>
__device__ acc_t block_sum(acc_t v, acc_t* scratch) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = threadIdx.x < kWarps ? scratch[threadIdx.x] : acc_t(0);
  if (warp == 0) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  }
  __syncthreads();  // scratch may be reused by the caller
  return v;
}

// Called by every thread of every block with the block's value of `block_value` (valid in
// thread 0). Writes scale * (sum over blocks) to *out from the last block, then resets *counter.
template <typename acc_t, typename scalar_t>
__device__ void grid_sum(acc_t block_value, acc_t* partials, unsigned int* counter, scalar_t* out,
                         acc_t scale) {
  __shared__ acc_t scratch[kWarps];
  __shared__ bool is_last;
  if (threadIdx.x == 0) {
    partials[blockIdx.x] = block_value;
    __threadfence();
    is_last = atomicAdd(counter, 1u) == gridDim.x - 1;
  }
  __syncthreads();
  if (!is_last) return;
  acc_t v = 0;
  const volatile acc_t* p = partials;
  for (unsigned int i = threadIdx.x; i < gridDim.x; i += blockDim.x) v += p[i];
  v = block_sum(v, scratch);
  if (threadIdx.x == 0) {
    *out = static_cast<scalar_t>(scale * v);
    *counter = 0;
  }
}

// Workspace of one grid reduction: `blocks` partial sums and a zeroed arrival counter.
struct GridSumWorkspace {
  at::Tensor partials;
  at::Tensor counter;
  GridSumWorkspace(int64_t blocks, at::ScalarType acc_type, const at::Tensor& like)
      : partials(at::empty({blocks}, like.options().dtype(acc_type))),
        counter(at::zeros({1}, like.options().dtype(at::kInt))) {}
  template <typename acc_t>
  acc_t* partial_ptr() { return partials.data_ptr<acc_t>(); }
  unsigned int* counter_ptr() { return reinterpret_cast<unsigned int*>(counter.data_ptr<int>()); }
};

// Streaming multiprocessors of the current device, looked up once per device.
inline int sm_count() {
  int device = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  static int counts[64] = {};  // a benign race writes the same value
  int& count = counts[device % 64];
  if (count == 0) {
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  }
  return count;
}

// Blocks for a grid-stride loop over n elements: enough to fill the GPU, no more than needed.
inline int blocks_for(int64_t n, int blocks_per_sm = 4) {
  const int64_t needed = (n + kBlock - 1) / kBlock;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(needed, int64_t{sm_count()} * blocks_per_sm)));
}

}  // namespace ganplug
