// CUDA kernel of upfirdn2d: one thread per output pixel, math from upfirdn2d.h. The filters used
// here are small (4x4), so the kernel reads them straight from global memory (cached in L1).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "cuda_launch.h"

namespace medsemgan {
namespace {

template <typename S, typename T>
__global__ void upfirdn2d_kernel(Upfirdn2dParams p) {
    const S* x = static_cast<const S*>(p.x);
    const T* k = static_cast<const T*>(p.k);
    S* out = static_cast<S*>(p.out);
    const long long per_plane = (long long)p.out_h * p.out_w;
    const long long n = p.planes * per_plane;
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const long long plane = i / per_plane;
        const int rem = static_cast<int>(i - plane * per_plane);
        const int oy = rem / p.out_w, ox = rem % p.out_w;
        const S* xp = x + plane * p.in_h * p.in_w;
        out[i] = Convert<T, S>::store(upfirdn2d_pixel<T, S>(xp, k, p, oy, ox));
    }
}

template <typename S, typename T>
cudaError_t launch_typed(const Upfirdn2dParams& p, cudaStream_t stream) {
    const long long n = p.planes * p.out_h * p.out_w;
    const int block = 256;
    const long long want = (n + block - 1) / block;
    const int grid = static_cast<int>(want < 65536 ? (want > 0 ? want : 1) : 65536);
    upfirdn2d_kernel<S, T><<<grid, block, 0, stream>>>(p);
    return cudaGetLastError();
}

}  // namespace

cudaError_t launch_upfirdn2d(const Upfirdn2dParams& p, cudaStream_t stream) {
    switch (p.dtype) {
        case kFloat32: return launch_typed<float, float>(p, stream);
        case kFloat64: return launch_typed<double, double>(p, stream);
        case kFloat16: return launch_typed<__half, float>(p, stream);
        case kBFloat16: return launch_typed<__nv_bfloat16, float>(p, stream);
    }
    return cudaErrorInvalidValue;
}

}  // namespace medsemgan
