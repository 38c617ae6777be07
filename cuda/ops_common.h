// Shared by nvcc (CUDA kernels) and the host compiler (CPU extension): no torch headers here,
// so the same per-element math runs on both sides and can be tested on a machine without a GPU.
#pragma once

#if defined(__CUDACC__)
#define MSG_HD __host__ __device__ __forceinline__
#else
#define MSG_HD inline
#endif

namespace medsemgan {

// Element types the kernels accept; the binding maps torch dtypes onto these codes.
enum DType : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

}  // namespace medsemgan
