// CUDA kernel of the fused bias + activation: one thread per element, math from bias_act.h.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "cuda_launch.h"

namespace medsemgan {
namespace {

template <int ACT, bool CLAMP, bool GRAD, typename S, typename T>
__global__ void bias_act_kernel(BiasActParams p, T alpha, T gain, T clamp) {
    const S* x = static_cast<const S*>(p.x);
    const S* ref = static_cast<const S*>(p.ref);
    const T* b = static_cast<const T*>(p.b);
    S* out = static_cast<S*>(p.out);
    const long long n = p.outer * p.channels * p.inner;
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        T v;
        if (GRAD) {
            v = bias_act_gradient<ACT, CLAMP, T>(Convert<T, S>::load(x[i]), Convert<T, S>::load(ref[i]), alpha, gain,
                                                 clamp);
        } else {
            const long long c = (i / p.inner) % p.channels;
            v = bias_act_forward<ACT, CLAMP, T>(Convert<T, S>::load(x[i]) + b[c], alpha, gain, clamp);
        }
        out[i] = Convert<T, S>::store(v);
    }
}

template <int ACT, bool CLAMP, bool GRAD, typename S, typename T>
cudaError_t launch_typed(const BiasActParams& p, cudaStream_t stream) {
    const long long n = p.outer * p.channels * p.inner;
    const int block = 256;
    const long long want = (n + block - 1) / block;
    const int grid = static_cast<int>(want < 65536 ? (want > 0 ? want : 1) : 65536);
    bias_act_kernel<ACT, CLAMP, GRAD, S, T><<<grid, block, 0, stream>>>(
        p, static_cast<T>(p.alpha), static_cast<T>(p.gain), static_cast<T>(p.clamp));
    return cudaGetLastError();
}

template <bool GRAD, typename S, typename T>
cudaError_t launch_act(const BiasActParams& p, cudaStream_t stream) {
    const bool clamp = p.clamp >= 0;
    if (p.act == kActLrelu)
        return clamp ? launch_typed<kActLrelu, true, GRAD, S, T>(p, stream)
                     : launch_typed<kActLrelu, false, GRAD, S, T>(p, stream);
    return clamp ? launch_typed<kActLinear, true, GRAD, S, T>(p, stream)
                 : launch_typed<kActLinear, false, GRAD, S, T>(p, stream);
}

template <bool GRAD>
cudaError_t launch_dtype(const BiasActParams& p, cudaStream_t stream) {
    switch (p.dtype) {
        case kFloat32: return launch_act<GRAD, float, float>(p, stream);
        case kFloat64: return launch_act<GRAD, double, double>(p, stream);
        case kFloat16: return launch_act<GRAD, __half, float>(p, stream);
        case kBFloat16: return launch_act<GRAD, __nv_bfloat16, float>(p, stream);
    }
    return cudaErrorInvalidValue;
}

}  // namespace

cudaError_t launch_bias_act(const BiasActParams& p, cudaStream_t stream) {
    return p.ref ? launch_dtype<true>(p, stream) : launch_dtype<false>(p, stream);
}

}  // namespace medsemgan
