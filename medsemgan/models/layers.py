"""Building blocks shared by the generator and the discriminators.

Equalised learning rate (Karras et al., ProGAN/StyleGAN2): parameters are stored with unit
variance and multiplied by ``lr_multiplier / sqrt(fan_in)`` at run time, so Adam's step size is
the same for every layer whatever its fan-in. Bias, activation and clamping go through
:func:`medsemgan.ops.bias_act.bias_act`; resampling goes through :mod:`medsemgan.ops.upfirdn2d`,
so the compiled op paths are used automatically when they are available.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medsemgan.ops.bias_act import ACTIVATIONS, bias_act
from medsemgan.ops.upfirdn2d import is_channels_last, setup_filter, upfirdn2d

# The binomial low-pass used for every 2x resampling (StyleGAN2 paper, "blur" [1, 3, 3, 1]).
DEFAULT_RESAMPLE_FILTER = (1, 3, 3, 1)

# Modulated-convolution forms: mathematically equal, different speed (see modulated_conv2d).
MODCONV_FORMS = ("batched", "grouped")
# What a ModulatedConv2d layer may be set to: a form, or 'auto' to pick one by layer shape.
MODCONV_SETTINGS = MODCONV_FORMS + ("auto",)


def activation_gain(act: str) -> float:
    return ACTIVATIONS[act].default_gain


class FullyConnected(nn.Module):
    """Linear layer with equalised learning rate, bias and activation fused through bias_act."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        bias_init: float = 0.0,
        lr_multiplier: float = 1.0,
        activation: str = "linear",
    ):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.activation = activation
        # Stored as N(0, 1/lr_mult^2) so that weight * weight_gain is N(0, 1/fan_in) at init.
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype) * self.weight_gain
        b = None if self.bias is None else self.bias.to(x.dtype) * self.bias_gain
        if self.activation == "linear" and b is not None:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return bias_act(x.matmul(w.t()), b, act=self.activation)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, act={self.activation}"


def _conv_padding(kernel_size: int, filter_taps: int, up: int, down: int) -> tuple[int, int]:
    """FIR padding (before, after) that keeps a resampling conv centred.

    Down: the input is low-passed, then convolved with stride 2 (cheaper than convolving at full
    resolution and subsampling). Up: a stride-2 transposed convolution (the same as inserting
    zeros and convolving, 4x cheaper) followed by the low-pass. Both align the combined
    filter so that output pixel q sits at the centre of input pixels 2q, 2q+1 (down) or between
    the two nearest input pixels (up), exactly as upsample2d/downsample2d do.
    """
    if down > 1:
        total = (filter_taps - down) + (kernel_size - 1)
    elif up > 1:
        total = filter_taps + up - kernel_size - 1
    else:
        total = kernel_size - 1
    return (total + 1) // 2, total // 2


def resample_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    resample_filter: torch.Tensor | None,
    up: int = 1,
    down: int = 1,
    groups: int = 1,
    impl: str | None = None,
) -> torch.Tensor:
    """2-D convolution (``weight`` [O, I/groups, k, k], odd k), optionally 2x up/down sampling.

    Resolution changes by exactly ``up`` or ``1/down``; spatial size is kept otherwise.
    """
    if up > 1 and down > 1:
        raise ValueError("a convolution either upsamples or downsamples, not both")
    kernel_size = weight.shape[-1]
    if kernel_size % 2 != 1:
        raise ValueError(f"kernel size must be odd, got {kernel_size}")
    if up == 1 and down == 1:
        return F.conv2d(x, weight, padding=kernel_size // 2, groups=groups)
    taps = resample_filter.shape[-1]
    pad = _conv_padding(kernel_size, taps, up, down)
    if down > 1:
        x = upfirdn2d(x, resample_filter, padding=[pad[0], pad[1], pad[0], pad[1]], impl=impl)
        return F.conv2d(x, weight, stride=down, groups=groups)
    # Transposed conv wants [I, O/groups, k, k] and the spatially flipped kernel.
    out_per_group, in_per_group = weight.shape[0] // groups, weight.shape[1]
    w = weight.reshape(groups, out_per_group, in_per_group, kernel_size, kernel_size)
    w = w.transpose(1, 2).reshape(groups * in_per_group, out_per_group, kernel_size, kernel_size)
    w = w.flip([2, 3])
    x = F.conv_transpose2d(x, w, stride=up, groups=groups)
    return upfirdn2d(x, resample_filter, padding=[pad[0], pad[1], pad[0], pad[1]], gain=up * up, impl=impl)


class Conv2dLayer(nn.Module):
    """Convolution with equalised learning rate, optional 2x resampling, bias + activation."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        bias: bool = True,
        activation: str = "linear",
        up: int = 1,
        down: int = 1,
        resample_filter: Sequence[float] = DEFAULT_RESAMPLE_FILTER,
        conv_clamp: float | None = None,
        gain: float = 1.0,
        lr_multiplier: float = 1.0,
        channels_last: bool = False,
    ):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = kernel_size
        self.activation = activation
        self.up, self.down = up, down
        self.conv_clamp = conv_clamp
        self.gain = gain
        self.register_buffer("resample_filter", setup_filter(resample_filter), persistent=False)
        self.weight_gain = lr_multiplier / math.sqrt(in_channels * kernel_size**2)
        self.bias_gain = lr_multiplier
        # Keep NHWC activations NHWC (apply_memory_format switches this on a built model): a
        # 1-channel input or a 1x1 weight is both layouts at once, and the convolution would
        # then answer in NCHW, costing a layout copy in every following layer.
        self.channels_last = channels_last
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        weight = torch.randn(out_channels, in_channels, kernel_size, kernel_size) / lr_multiplier
        self.weight = nn.Parameter(weight.to(memory_format=memory_format))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype) * self.weight_gain
        x = resample_conv2d(x, w, self.resample_filter, up=self.up, down=self.down)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        act_gain = activation_gain(self.activation) * self.gain
        clamp = None if self.conv_clamp is None else self.conv_clamp * self.gain
        b = None if self.bias is None else self.bias.to(x.dtype) * self.bias_gain
        return bias_act(x, b, act=self.activation, gain=act_gain, clamp=clamp)

    def extra_repr(self) -> str:
        return (
            f"in={self.in_channels}, out={self.out_channels}, k={self.kernel_size}, "
            f"act={self.activation}, up={self.up}, down={self.down}"
        )


def demodulation_coefficients(weight: torch.Tensor, styles: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """1 / ||w * s|| per sample and output channel, [N, O], without building per-sample weights."""
    # sum_{i,k} (w[o,i,k] s[n,i])^2 = sum_i s[n,i]^2 * sum_k w[o,i,k]^2
    return (styles.square() @ weight.square().sum(dim=[2, 3]).t() + eps).rsqrt()


def modulated_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    demodulate: bool = True,
    up: int = 1,
    resample_filter: torch.Tensor | None = None,
    form: str = "batched",
    noise: torch.Tensor | None = None,
    impl: str | None = None,
) -> torch.Tensor:
    """StyleGAN2 modulated convolution. ``x`` [N, I, H, W], ``weight`` [O, I, k, k], ``styles`` [N, I].

    ``form='grouped'``: build one weight tensor per sample (w * s, demodulated) and run a grouped
    convolution with the batch folded into the groups (for a 1x1 kernel: a batched matrix
    product). ``form='batched'``: scale the input activations by the styles, run one shared-weight
    convolution for the whole batch, and scale the output by the demodulation coefficients. Both
    compute the same function. ``noise`` (broadcastable to the output) is added after
    demodulation, fused with the demodulation multiply in the batched form.
    """
    if form not in MODCONV_FORMS:
        raise ValueError(f"unknown modulated-conv form {form!r}; choose from {MODCONV_FORMS}")
    n, in_channels, h, w_ = x.shape
    out_channels, kernel_size = weight.shape[0], weight.shape[-1]
    if styles.shape != (n, in_channels):
        raise ValueError(f"styles must be [{n}, {in_channels}], got {tuple(styles.shape)}")
    if form == "batched":
        x = x * styles.to(x.dtype).reshape(n, in_channels, 1, 1)
        x = resample_conv2d(x, weight, resample_filter, up=up, impl=impl)
        if demodulate:
            d = demodulation_coefficients(weight, styles).to(x.dtype).reshape(n, out_channels, 1, 1)
            return x * d if noise is None else torch.addcmul(noise.to(x.dtype), x, d)
        return x if noise is None else x + noise.to(x.dtype)
    w = weight.unsqueeze(0) * styles.to(weight.dtype).reshape(n, 1, in_channels, 1, 1)
    if demodulate:
        w = w * (w.square().sum(dim=[2, 3, 4], keepdim=True) + 1e-8).rsqrt()
    w = w.to(x.dtype)
    if kernel_size == 1 and up == 1:
        w = w.reshape(n, out_channels, in_channels)
        if is_channels_last(x):
            # NHWC is [N, H*W, I] in memory: multiply there, no layout copy either way.
            pixels = x.permute(0, 2, 3, 1).reshape(n, h * w_, in_channels)
            x = torch.bmm(pixels, w.transpose(1, 2)).reshape(n, h, w_, out_channels).permute(0, 3, 1, 2)
        else:
            x = torch.bmm(w, x.reshape(n, in_channels, h * w_)).reshape(n, out_channels, h, w_)
    else:
        w = w.reshape(n * out_channels, in_channels, kernel_size, kernel_size)
        x = resample_conv2d(x.reshape(1, n * in_channels, h, w_), w, resample_filter, up=up, groups=n, impl=impl)
        x = x.reshape(n, out_channels, *x.shape[2:])
    return x if noise is None else x + noise.to(x.dtype)


class ModulatedConv2d(nn.Module):
    """Style-modulated convolution: affine(w) -> styles -> modulated conv (-> demodulation).

    ``form`` is a plain attribute, so it can be switched on a built model (see ``set_modconv_form``);
    ``'auto'`` picks a form per layer from its shape (see ``form_for``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        kernel_size: int,
        demodulate: bool = True,
        up: int = 1,
        resample_filter: Sequence[float] = DEFAULT_RESAMPLE_FILTER,
        form: str = "batched",
    ):
        super().__init__()
        if form not in MODCONV_SETTINGS:
            raise ValueError(f"unknown modulated-conv form {form!r}; choose from {MODCONV_SETTINGS}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = kernel_size
        self.demodulate = demodulate
        self.up = up
        self.form = form
        # Styles start at 1 (bias_init=1) so an untrained layer is an ordinary convolution.
        self.affine = FullyConnected(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size**2)
        self.register_buffer("resample_filter", setup_filter(resample_filter), persistent=False)

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        styles = self.affine(w)
        weight = self.weight.to(x.dtype)
        if not self.demodulate:
            # Demodulation cancels any constant scale; without it the equalised-lr gain matters.
            weight = weight * self.weight_gain
        out_pixels = x.shape[2] * x.shape[3] * self.up**2
        return modulated_conv2d(
            x, weight, styles, demodulate=self.demodulate, up=self.up,
            resample_filter=self.resample_filter, form=self.form_for(out_pixels), noise=noise,
        )

    def form_for(self, out_pixels: int) -> str:
        """The form this layer runs for an output of ``out_pixels`` pixels.

        The batched form pays for scaling input and output activations (size ~ C*H*W per sample),
        the grouped form for building per-sample weights (O*I*k*k) and a grouped convolution.
        1x1 kernels (the toRGB/toSEG heads) always use per-sample weights: that is one small
        batched matmul instead of scaling the wide input. 'auto' uses the grouped form where a
        sample's weight is small next to its output map (O*k*k <= H*W/4: the wide, few-channel
        layers at 64 px and above in both configurations). Measurements: docs/architecture.md.
        """
        if self.kernel_size == 1 and self.up == 1:
            return "grouped"
        if self.form != "auto":
            return self.form
        return "grouped" if self.out_channels * self.kernel_size**2 * 4 <= out_pixels else "batched"

    def extra_repr(self) -> str:
        return (
            f"in={self.in_channels}, out={self.out_channels}, k={self.kernel_size}, "
            f"demodulate={self.demodulate}, up={self.up}, form={self.form}"
        )


def set_modconv_form(module: nn.Module, form: str) -> None:
    """Switch every ModulatedConv2d inside ``module`` to ``form`` ('batched', 'grouped', 'auto')."""
    if form not in MODCONV_SETTINGS:
        raise ValueError(f"unknown modulated-conv form {form!r}; choose from {MODCONV_SETTINGS}")
    for m in module.modules():
        if isinstance(m, ModulatedConv2d):
            m.form = form


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()
