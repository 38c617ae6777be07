// CPU extension: the per-element math of bias_act.h and upfirdn2d.h in multi-threaded loops.
// Threads come from ATen's parallel_for (torch's own OpenMP runtime, so torch.set_num_threads
// applies and no second OpenMP runtime is loaded); inner loops are written for vectorisation.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "binding_common.h"

namespace medsemgan {

// bfloat16 on its bits (round to nearest even, NaN kept quiet): c10::BFloat16's own conversion
// does not vectorise in these loops.
template <>
struct Convert<float, c10::BFloat16> {
    static inline float load(c10::BFloat16 v) {
        const uint32_t u = static_cast<uint32_t>(v.x) << 16;
        float f;
        std::memcpy(&f, &u, sizeof f);
        return f;
    }
    static inline c10::BFloat16 store(float f) {
        uint32_t u;
        std::memcpy(&u, &f, sizeof u);
        const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
        return c10::BFloat16(static_cast<uint16_t>(f != f ? 0x7fc0u : rounded), c10::BFloat16::from_bits());
    }
};

namespace {

constexpr int64_t kGrainElements = 16384;  // below this, threading costs more than it saves

template <int ACT, bool CLAMP, bool GRAD, typename S, typename T>
void bias_act_loop(const BiasActParams& p) {
    using Cv = Convert<T, S>;
    const S* x = static_cast<const S*>(p.x);
    const S* ref = static_cast<const S*>(p.ref);
    const T* b = static_cast<const T*>(p.b);
    S* out = static_cast<S*>(p.out);
    const T alpha = static_cast<T>(p.alpha), gain = static_cast<T>(p.gain), clamp = static_cast<T>(p.clamp);
    const int64_t C = p.channels, inner = p.inner;
    // Channels innermost (channels-last, or bias along the last dim): a row holds all channels
    // and the bias varies along it. Otherwise a row is one (outer, channel) pair with a constant
    // bias over `inner` contiguous elements.
    const bool channels_inner = inner == 1;
    const int64_t rows = channels_inner ? p.outer : p.outer * C;
    const int64_t len = channels_inner ? C : inner;
    const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(len, 1));
    at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
            const S* xr = x + r * len;
            S* yr = out + r * len;
            if (GRAD && p.row_sums && !channels_inner) {
                const S* rr = ref + r * len;
                double sum = 0;
#pragma omp simd reduction(+ : sum)
                for (int64_t i = 0; i < len; ++i) {
                    const T v = bias_act_gradient<ACT, CLAMP, T>(Cv::load(xr[i]), Cv::load(rr[i]), alpha, gain, clamp);
                    yr[i] = Cv::store(v);
                    sum += static_cast<double>(v);
                }
                p.row_sums[r] = sum;
            } else if (GRAD) {
                const S* rr = ref + r * len;
#pragma omp simd
                for (int64_t i = 0; i < len; ++i)
                    yr[i] = Cv::store(bias_act_gradient<ACT, CLAMP, T>(
                        Cv::load(xr[i]), Cv::load(rr[i]), alpha, gain, clamp));
            } else if (channels_inner) {
#pragma omp simd
                for (int64_t i = 0; i < len; ++i)
                    yr[i] = Cv::store(
                        bias_act_forward<ACT, CLAMP, T>(Cv::load(xr[i]) + b[i], alpha, gain, clamp));
            } else {
                const T bc = b[r % C];
#pragma omp simd
                for (int64_t i = 0; i < len; ++i)
                    yr[i] = Cv::store(
                        bias_act_forward<ACT, CLAMP, T>(Cv::load(xr[i]) + bc, alpha, gain, clamp));
            }
        }
    });
}

template <bool GRAD, typename S, typename T>
void bias_act_dispatch_act(const BiasActParams& p) {
    const bool clamp = p.clamp >= 0;
    if (p.act == kActLrelu) {
        clamp ? bias_act_loop<kActLrelu, true, GRAD, S, T>(p) : bias_act_loop<kActLrelu, false, GRAD, S, T>(p);
    } else {
        clamp ? bias_act_loop<kActLinear, true, GRAD, S, T>(p) : bias_act_loop<kActLinear, false, GRAD, S, T>(p);
    }
}

template <bool GRAD>
void bias_act_dispatch(const BiasActParams& p) {
    switch (p.dtype) {
        case kFloat32: return bias_act_dispatch_act<GRAD, float, float>(p);
        case kFloat64: return bias_act_dispatch_act<GRAD, double, double>(p);
        case kBFloat16: return bias_act_dispatch_act<GRAD, c10::BFloat16, float>(p);
        case kFloat16: return bias_act_dispatch_act<GRAD, c10::Half, float>(p);
    }
}

// Row order (upfirdn2d_row, vectorised) when the layout allows it, else one pixel at a time
// (upfirdn2d_pixel, the CUDA kernel's math); `pixelwise` forces the latter so tests can check it.
template <typename S, typename T>
void upfirdn2d_loop(const Upfirdn2dParams& p, bool pixelwise) {
    const S* x = static_cast<const S*>(p.x);
    const T* k = static_cast<const T*>(p.k);
    S* out = static_cast<S*>(p.out);
    if (p.channels_last) {
        // [N, H, W, C]: one row = one output image row, every pixel all channels at once.
        const int64_t rows = p.planes / p.channels * p.out_h;
        const int64_t grain = std::max<int64_t>(1, kGrainElements / (8 * std::max<int64_t>(1, (int64_t)p.out_w * p.channels)));
        at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
            std::vector<T> acc(p.channels);
            for (int64_t r = r0; r < r1; ++r) {
                const int64_t n = r / p.out_h;
                const int oy = static_cast<int>(r % p.out_h);
                const S* image = x + n * p.in_h * p.in_w * p.channels;
                S* yr = out + r * p.out_w * p.channels;
                for (int ox = 0; ox < p.out_w; ++ox) {
                    upfirdn2d_pixel_channels<T, S>(image, k, p, oy, ox, acc.data());
                    S* y = yr + (int64_t)ox * p.channels;
#pragma omp simd
                    for (int c = 0; c < p.channels; ++c) y[c] = Convert<T, S>::store(acc[c]);
                }
            }
        });
        return;
    }
    const bool by_rows = !pixelwise && upfirdn2d_row_supported(p);
    const int64_t rows = p.planes * p.out_h;
    const int64_t grain = std::max<int64_t>(1, kGrainElements / (8 * std::max(p.out_w, 1)));
    at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
        std::vector<T> acc(by_rows ? p.out_w : 0);
        for (int64_t r = r0; r < r1; ++r) {
            const int64_t plane = r / p.out_h;
            const int oy = static_cast<int>(r % p.out_h);
            const S* xp = x + plane * p.in_h * p.in_w;
            S* yr = out + r * p.out_w;
            if (by_rows) {
                upfirdn2d_row<T, S>(xp, k, p, oy, acc.data());
#pragma omp simd
                for (int ox = 0; ox < p.out_w; ++ox) yr[ox] = Convert<T, S>::store(acc[ox]);
            } else {
                for (int ox = 0; ox < p.out_w; ++ox)
                    yr[ox] = Convert<T, S>::store(upfirdn2d_pixel<T, S>(xp, k, p, oy, ox));
            }
        }
    });
}

}  // namespace

torch::Tensor bias_act(torch::Tensor x, c10::optional<torch::Tensor> b, c10::optional<torch::Tensor> ref,
                       int64_t dim, int64_t act, double alpha, double gain, double clamp) {
    TORCH_CHECK(x.device().is_cpu(), "medsemgan CPU ops: bias_act got a tensor on ", x.device(),
                "; this extension runs on the CPU only");
    torch::Tensor out;
    std::vector<torch::Tensor> keep_alive;
    BiasActParams p = bias_act_params(x, b, ref, dim, act, alpha, gain, clamp, out, keep_alive);
    if (out.numel() == 0) return out;
    p.ref ? bias_act_dispatch<true>(p) : bias_act_dispatch<false>(p);
    return out;
}

// Gradient and bias gradient in one pass: (dx, db) with db = dx summed over all dims but `dim`.
std::vector<torch::Tensor> bias_act_grad_with_bias(torch::Tensor dy, torch::Tensor y, int64_t dim, int64_t act,
                                                   double alpha, double gain, double clamp) {
    TORCH_CHECK(dy.device().is_cpu() && y.device().is_cpu(), "medsemgan CPU ops: bias_act got a tensor on ",
                dy.device(), "; this extension runs on the CPU only");
    torch::Tensor out;
    std::vector<torch::Tensor> keep_alive;
    BiasActParams p = bias_act_params(dy, c10::nullopt, y, dim, act, alpha, gain, clamp, out, keep_alive);
    if (out.numel() == 0 || p.inner == 1) {
        // Channels innermost: every row spans all channels, so let torch reduce over rows.
        if (out.numel() > 0) bias_act_dispatch<true>(p);
        return {out, bias_grad_from(out, dim)};
    }
    torch::Tensor sums = torch::empty({p.outer * p.channels}, dy.options().dtype(torch::kFloat64));
    p.row_sums = sums.data_ptr<double>();
    bias_act_dispatch<true>(p);
    return {out, sums.view({p.outer, p.channels}).sum(0).to(out.scalar_type())};
}

torch::Tensor upfirdn2d_impl(torch::Tensor x, torch::Tensor k, int64_t up_x, int64_t up_y, int64_t down_x,
                             int64_t down_y, int64_t pad_x0, int64_t pad_x1, int64_t pad_y0, int64_t pad_y1,
                             bool pixelwise) {
    TORCH_CHECK(x.device().is_cpu(), "medsemgan CPU ops: upfirdn2d got a tensor on ", x.device(),
                "; this extension runs on the CPU only");
    torch::Tensor out;
    Upfirdn2dParams p = upfirdn2d_params(x, k, out, up_x, up_y, down_x, down_y, pad_x0, pad_x1, pad_y0, pad_y1, true);
    if (out.numel() == 0) return out;
    switch (p.dtype) {
        case kFloat32: upfirdn2d_loop<float, float>(p, pixelwise); break;
        case kFloat64: upfirdn2d_loop<double, double>(p, pixelwise); break;
        case kBFloat16: upfirdn2d_loop<c10::BFloat16, float>(p, pixelwise); break;
        case kFloat16: upfirdn2d_loop<c10::Half, float>(p, pixelwise); break;
    }
    return out;
}

torch::Tensor upfirdn2d(torch::Tensor x, torch::Tensor k, int64_t up_x, int64_t up_y, int64_t down_x, int64_t down_y,
                        int64_t pad_x0, int64_t pad_x1, int64_t pad_y0, int64_t pad_y1) {
    return upfirdn2d_impl(x, k, up_x, up_y, down_x, down_y, pad_x0, pad_x1, pad_y0, pad_y1, false);
}

torch::Tensor upfirdn2d_pixelwise(torch::Tensor x, torch::Tensor k, int64_t up_x, int64_t up_y, int64_t down_x,
                                  int64_t down_y, int64_t pad_x0, int64_t pad_x1, int64_t pad_y0, int64_t pad_y1) {
    return upfirdn2d_impl(x, k, up_x, up_y, down_x, down_y, pad_x0, pad_x1, pad_y0, pad_y1, true);
}

}  // namespace medsemgan

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.doc() = "medsemgan CPU ops: fused bias+activation and upfirdn2d (math shared with the CUDA kernels)";
    m.def("bias_act", &medsemgan::bias_act, "bias + activation (forward, or gradient when ref=y is given)",
          py::arg("x"), py::arg("b"), py::arg("ref"), py::arg("dim"), py::arg("act"), py::arg("alpha"),
          py::arg("gain"), py::arg("clamp"));
    m.def("bias_act_grad_with_bias", &medsemgan::bias_act_grad_with_bias,
          "gradient of bias_act from the saved output y, and the bias gradient in the same pass", py::arg("dy"),
          py::arg("y"), py::arg("dim"), py::arg("act"), py::arg("alpha"), py::arg("gain"), py::arg("clamp"));
    m.def("upfirdn2d", &medsemgan::upfirdn2d, "upsample, pad, FIR-filter (correlation with k), downsample",
          py::arg("x"), py::arg("k"), py::arg("up_x"), py::arg("up_y"), py::arg("down_x"), py::arg("down_y"),
          py::arg("pad_x0"), py::arg("pad_x1"), py::arg("pad_y0"), py::arg("pad_y1"));
    m.def("upfirdn2d_pixelwise", &medsemgan::upfirdn2d_pixelwise,
          "upfirdn2d one output pixel at a time (the CUDA kernel's per-pixel math; for tests)", py::arg("x"),
          py::arg("k"), py::arg("up_x"), py::arg("up_y"), py::arg("down_x"), py::arg("down_y"), py::arg("pad_x0"),
          py::arg("pad_x1"), py::arg("pad_y0"), py::arg("pad_y1"));
}
