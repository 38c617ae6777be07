// Shared by nvcc (CUDA kernels) and the host compiler (CPU extension): no torch headers here,
// so the same per-element math runs on both sides and can be tested on a machine without a GPU.
#pragma once

#if defined(__CUDACC__)
#define MSG_HD __host__ __device__ __forceinline__
#define MSG_SIMD
#else
#define MSG_HD inline
// Vectorisation hint for the host compiler's loops (needs -fopenmp-simd, no OpenMP runtime).
#define MSG_SIMD _Pragma("omp simd")
#endif

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

namespace medsemgan {

// Storage type S <-> compute type T. Plain casts for float/double; 16-bit types get explicit
// conversions (torch builds CUDA code with implicit half/bfloat16 conversions disabled, and the
// CPU extension specialises these for c10::BFloat16 / c10::Half).
template <typename T, typename S>
struct Convert {
    static MSG_HD T load(S v) { return static_cast<T>(v); }
    static MSG_HD S store(T v) { return static_cast<S>(v); }
};

#if defined(__CUDACC__)
template <>
struct Convert<float, __half> {
    static __device__ __forceinline__ float load(__half v) { return __half2float(v); }
    static __device__ __forceinline__ __half store(float v) { return __float2half_rn(v); }
};
template <>
struct Convert<float, __nv_bfloat16> {
    static __device__ __forceinline__ float load(__nv_bfloat16 v) { return __bfloat162float(v); }
    static __device__ __forceinline__ __nv_bfloat16 store(float v) { return __float2bfloat16_rn(v); }
};
#endif

// Element types the kernels accept; the binding maps torch dtypes onto these codes.
enum DType : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

}  // namespace medsemgan
