// GANPLUG_SIMD_CLONES marks a hot loop to be compiled twice, for AVX2 and for the baseline
// x86-64 the extension is built for (SSE2), the faster one picked at load time by the CPU's
// features: vectorised 8 floats wide where the CPU has AVX2, still loadable where it has not.
// (GCC on ELF only: elsewhere the loops are compiled once, for the baseline.)
#pragma once

#if defined(__x86_64__) && defined(__ELF__) && defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__)
#define GANPLUG_SIMD_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define GANPLUG_SIMD_CLONES
#endif
