// CUDA extension binding: argument checks, output allocation, stream; kernels live in the .cu files.
#include <torch/extension.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "binding_common.h"
#include "cuda_launch.h"

namespace medsemgan {

static void check_cuda(const torch::Tensor& t, const char* op, const char* what) {
    TORCH_CHECK(t.is_cuda(), "medsemgan CUDA ops: ", op, " expects CUDA tensors, but ", what, " is on ", t.device(),
                "; use the CPU extension or the reference path for CPU tensors");
}

torch::Tensor bias_act(torch::Tensor x, c10::optional<torch::Tensor> b, c10::optional<torch::Tensor> ref,
                       int64_t dim, int64_t act, double alpha, double gain, double clamp) {
    check_cuda(x, "bias_act", "x");
    if (b.has_value() && b->defined()) check_cuda(*b, "bias_act", "b");
    if (ref.has_value() && ref->defined()) check_cuda(*ref, "bias_act", "y");
    const c10::cuda::CUDAGuard guard(x.device());
    torch::Tensor out;
    std::vector<torch::Tensor> keep_alive;
    BiasActParams p = bias_act_params(x, b, ref, dim, act, alpha, gain, clamp, out, keep_alive);
    if (out.numel() == 0) return out;
    const cudaError_t err = launch_bias_act(p, c10::cuda::getCurrentCUDAStream().stream());
    TORCH_CHECK(err == cudaSuccess, "bias_act CUDA kernel launch failed: ", cudaGetErrorString(err));
    return out;
}

std::vector<torch::Tensor> bias_act_grad_with_bias(torch::Tensor dy, torch::Tensor y, int64_t dim, int64_t act,
                                                   double alpha, double gain, double clamp) {
    torch::Tensor dx = bias_act(dy, c10::nullopt, y, dim, act, alpha, gain, clamp);
    return {dx, bias_grad_from(dx, dim)};
}

torch::Tensor upfirdn2d(torch::Tensor x, torch::Tensor k, int64_t up_x, int64_t up_y, int64_t down_x, int64_t down_y,
                        int64_t pad_x0, int64_t pad_x1, int64_t pad_y0, int64_t pad_y1) {
    check_cuda(x, "upfirdn2d", "x");
    check_cuda(k, "upfirdn2d", "the filter");
    const c10::cuda::CUDAGuard guard(x.device());
    torch::Tensor out;
    Upfirdn2dParams p = upfirdn2d_params(x, k, out, up_x, up_y, down_x, down_y, pad_x0, pad_x1, pad_y0, pad_y1, false);
    if (out.numel() == 0) return out;
    const cudaError_t err = launch_upfirdn2d(p, c10::cuda::getCurrentCUDAStream().stream());
    TORCH_CHECK(err == cudaSuccess, "upfirdn2d CUDA kernel launch failed: ", cudaGetErrorString(err));
    return out;
}

}  // namespace medsemgan

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.doc() = "medsemgan CUDA ops: fused bias+activation and upfirdn2d (math shared with the CPU extension)";
    m.def("bias_act", &medsemgan::bias_act, "bias + activation (forward, or gradient when ref=y is given)",
          py::arg("x"), py::arg("b"), py::arg("ref"), py::arg("dim"), py::arg("act"), py::arg("alpha"),
          py::arg("gain"), py::arg("clamp"));
    m.def("bias_act_grad_with_bias", &medsemgan::bias_act_grad_with_bias,
          "gradient of bias_act from the saved output y, and the bias gradient", py::arg("dy"), py::arg("y"),
          py::arg("dim"), py::arg("act"), py::arg("alpha"), py::arg("gain"), py::arg("clamp"));
    m.def("upfirdn2d", &medsemgan::upfirdn2d, "upsample, pad, FIR-filter (correlation with k), downsample",
          py::arg("x"), py::arg("k"), py::arg("up_x"), py::arg("up_y"), py::arg("down_x"), py::arg("down_y"),
          py::arg("pad_x0"), py::arg("pad_x1"), py::arg("pad_y0"), py::arg("pad_y1"));
}
