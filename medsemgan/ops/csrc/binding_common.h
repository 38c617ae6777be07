// Torch-side helpers shared by the CPU and CUDA bindings (host compiler only, never nvcc):
// argument checks and the conversion from tensors to the plain parameter structs.
#pragma once

#include <torch/extension.h>

#include <vector>

#include "bias_act.h"
#include "upfirdn2d.h"

namespace medsemgan {

inline int dtype_code(const torch::Tensor& t) {
    switch (t.scalar_type()) {
        case torch::kFloat32: return kFloat32;
        case torch::kFloat64: return kFloat64;
        case torch::kFloat16: return kFloat16;
        case torch::kBFloat16: return kBFloat16;
        default: TORCH_CHECK(false, "medsemgan ops: unsupported dtype ", t.scalar_type(),
                             " (float16, bfloat16, float32, float64 are supported)");
    }
    return -1;
}

// Compute type: double for float64 data, float otherwise.
inline torch::ScalarType compute_type(const torch::Tensor& t) {
    return t.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
}

// The layout the kernels index: [outer, channels, inner]. Channels-last 4-D tensors with dim 1
// keep their layout (channels innermost) instead of paying for a copy.
struct BiasActLayout {
    torch::Tensor t;
    long long outer, channels, inner;
    bool channels_last;
};

inline BiasActLayout bias_act_layout(torch::Tensor t, int64_t dim) {
    TORCH_CHECK(dim >= 0 && dim < t.dim(), "bias_act: dim ", dim, " out of range for a ", t.dim(), "-D tensor");
    if (t.dim() == 4 && dim == 1 && !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast)) {
        return {t, t.size(0) * t.size(2) * t.size(3), t.size(1), 1, true};
    }
    t = t.contiguous();
    long long outer = 1, inner = 1;
    for (int64_t i = 0; i < dim; ++i) outer *= t.size(i);
    for (int64_t i = dim + 1; i < t.dim(); ++i) inner *= t.size(i);
    return {t, outer, t.size(dim), inner, false};
}

// Argument handling of bias_act(x, b, ref, ...). Forward: x is the input, ref is None.
// Gradient: x is dy and ref the saved output y; y decides the layout and dy follows it.
inline BiasActParams bias_act_params(torch::Tensor x, const c10::optional<torch::Tensor>& b_opt,
                                     const c10::optional<torch::Tensor>& ref_opt, int64_t dim, int64_t act,
                                     double alpha, double gain, double clamp, torch::Tensor& out,
                                     std::vector<torch::Tensor>& keep_alive) {
    TORCH_CHECK(act == kActLinear || act == kActLrelu, "bias_act: unknown activation code ", act);
    const bool grad = ref_opt.has_value() && ref_opt->defined();
    BiasActLayout lay = bias_act_layout(grad ? *ref_opt : x, dim);
    torch::Tensor ref;
    if (grad) {
        ref = lay.t;
        TORCH_CHECK(x.sizes() == ref.sizes() && x.scalar_type() == ref.scalar_type(),
                    "bias_act gradient: dy must match the saved output in shape and dtype");
        TORCH_CHECK(x.device() == ref.device(), "bias_act gradient: dy and y are on different devices");
        x = x.contiguous(lay.channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
    } else {
        x = lay.t;
    }
    const auto ct = compute_type(x);
    torch::Tensor b;
    if (b_opt.has_value() && b_opt->defined()) {
        b = *b_opt;
        TORCH_CHECK(b.dim() == 1 && b.size(0) == lay.channels, "bias_act: bias has shape ", b.sizes(),
                    ", expected [", lay.channels, "]");
        TORCH_CHECK(b.device() == x.device(), "bias_act: bias and x are on different devices");
        b = b.to(ct).contiguous();
    } else {
        b = torch::zeros({lay.channels}, x.options().dtype(ct));
    }
    out = torch::empty_like(x);
    keep_alive = {x, b, ref};
    BiasActParams p;
    p.x = x.data_ptr();
    p.b = b.data_ptr();
    p.ref = grad ? ref.data_ptr() : nullptr;
    p.out = out.data_ptr();
    p.outer = lay.outer;
    p.channels = lay.channels;
    p.inner = lay.inner;
    p.dtype = dtype_code(x);
    p.act = static_cast<int>(act);
    p.alpha = alpha;
    p.gain = gain;
    p.clamp = clamp;
    p.row_sums = nullptr;
    return p;
}

// The bias gradient: dx summed over every dim but `dim`, in dx's dtype.
inline torch::Tensor bias_grad_from(const torch::Tensor& dx, int64_t dim) {
    std::vector<int64_t> dims;
    for (int64_t d = 0; d < dx.dim(); ++d)
        if (d != dim) dims.push_back(d);
    return dx.sum(dims);
}

// Shared argument handling of upfirdn2d(x, k, ...): k is the correlation kernel (flip and gain
// already applied by the caller), x is [N, C, H, W]. A channels-last x keeps its layout (and
// gets a channels-last output) when the caller's loops support it.
inline Upfirdn2dParams upfirdn2d_params(torch::Tensor& x, torch::Tensor& k, torch::Tensor& out, int64_t up_x,
                                        int64_t up_y, int64_t down_x, int64_t down_y, int64_t pad_x0,
                                        int64_t pad_x1, int64_t pad_y0, int64_t pad_y1,
                                        bool allow_channels_last) {
    TORCH_CHECK(x.dim() == 4, "upfirdn2d: x must be [N, C, H, W], got ", x.dim(), " dimensions");
    TORCH_CHECK(k.dim() == 2, "upfirdn2d: the kernel must be 2-D");
    TORCH_CHECK(up_x >= 1 && up_y >= 1 && down_x >= 1 && down_y >= 1, "upfirdn2d: up and down must be >= 1");
    TORCH_CHECK(k.device() == x.device(), "upfirdn2d: filter and x are on different devices");
    const bool channels_last = allow_channels_last && !x.is_contiguous() &&
                               x.is_contiguous(at::MemoryFormat::ChannelsLast);
    if (!channels_last) x = x.contiguous();
    k = k.to(compute_type(x)).contiguous();
    const int64_t in_h = x.size(2), in_w = x.size(3), k_h = k.size(0), k_w = k.size(1);
    const int64_t span_h = in_h * up_y + pad_y0 + pad_y1 - k_h;
    const int64_t span_w = in_w * up_x + pad_x0 + pad_x1 - k_w;
    TORCH_CHECK(span_h >= 0 && span_w >= 0, "upfirdn2d: the padded input is smaller than the filter");
    const int64_t out_h = span_h / down_y + 1, out_w = span_w / down_x + 1;
    out = torch::empty({x.size(0), x.size(1), out_h, out_w},
                       x.options().memory_format(channels_last ? at::MemoryFormat::ChannelsLast
                                                               : at::MemoryFormat::Contiguous));
    Upfirdn2dParams p;
    p.x = x.data_ptr();
    p.k = k.data_ptr();
    p.out = out.data_ptr();
    p.planes = x.size(0) * x.size(1);
    p.in_h = static_cast<int>(in_h);
    p.in_w = static_cast<int>(in_w);
    p.out_h = static_cast<int>(out_h);
    p.out_w = static_cast<int>(out_w);
    p.up_x = static_cast<int>(up_x);
    p.up_y = static_cast<int>(up_y);
    p.down_x = static_cast<int>(down_x);
    p.down_y = static_cast<int>(down_y);
    p.pad_x0 = static_cast<int>(pad_x0);
    p.pad_y0 = static_cast<int>(pad_y0);
    p.k_h = static_cast<int>(k_h);
    p.k_w = static_cast<int>(k_w);
    p.dtype = dtype_code(x);
    p.channels = static_cast<int>(x.size(1));
    p.channels_last = channels_last ? 1 : 0;
    return p;
}

}  // namespace medsemgan
