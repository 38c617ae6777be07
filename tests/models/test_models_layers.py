"""Layers: equalised learning rate, resampling convolutions, the two modulated-conv forms."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from medsemgan.models.layers import (
    Conv2dLayer,
    FullyConnected,
    ModulatedConv2d,
    demodulation_coefficients,
    modulated_conv2d,
    resample_conv2d,
    set_modconv_form,
)
from medsemgan.ops.upfirdn2d import downsample2d, setup_filter, upsample2d


def test_fully_connected_scales_weights_at_runtime_by_lr_multiplier():
    torch.manual_seed(0)
    fast = FullyConnected(64, 8, lr_multiplier=1.0).double()
    slow = FullyConnected(64, 8, lr_multiplier=0.01).double()
    # Same effective weight: the stored parameter of the slow layer is 100x larger.
    with torch.no_grad():
        slow.weight.copy_(fast.weight / 0.01)
    x = torch.randn(5, 64, dtype=torch.float64)
    torch.testing.assert_close(fast(x), slow(x))
    fast(x).sum().backward()
    slow(x).sum().backward()
    # d out / d stored weight is scaled by the multiplier: Adam steps 100x smaller in effect.
    torch.testing.assert_close(slow.weight.grad, fast.weight.grad * 0.01)
    # Effective weights have std 1/sqrt(fan_in) at init whatever the fan-in.
    big = FullyConnected(4096, 256)
    eff = big.weight * big.weight_gain
    assert abs(eff.std().item() * math.sqrt(4096) - 1) < 0.05


@pytest.mark.parametrize("kernel", [1, 3])
def test_resampling_convs_match_resample_then_convolve_in_the_interior(kernel):
    # The fast forms (transposed conv then low-pass; low-pass then strided conv) must put every
    # output pixel where upsample2d/downsample2d followed by a plain conv puts it.
    torch.manual_seed(1)
    f = setup_filter([1, 3, 3, 1]).double()
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    w = torch.randn(5, 3, kernel, kernel, dtype=torch.float64)
    up_slow = F.conv2d(upsample2d(x, f), w, padding=kernel // 2)
    up_fast = resample_conv2d(x, w, f, up=2)
    assert up_fast.shape == up_slow.shape == (2, 5, 24, 24)
    torch.testing.assert_close(up_fast[..., 3:-3, 3:-3], up_slow[..., 3:-3, 3:-3])
    down_slow = downsample2d(F.conv2d(x, w, padding=kernel // 2), f)
    down_fast = resample_conv2d(x, w, f, down=2)
    assert down_fast.shape == down_slow.shape == (2, 5, 6, 6)
    torch.testing.assert_close(down_fast[..., 2:-2, 2:-2], down_slow[..., 2:-2, 2:-2])


def test_conv_layer_keeps_or_halves_the_size():
    x = torch.randn(2, 4, 16, 16)
    assert Conv2dLayer(4, 6, 3, activation="lrelu")(x).shape == (2, 6, 16, 16)
    assert Conv2dLayer(4, 6, 3, down=2)(x).shape == (2, 6, 8, 8)
    assert Conv2dLayer(4, 6, 1, down=2, bias=False)(x).shape == (2, 6, 8, 8)


def test_demodulation_coefficients_equal_the_per_sample_weight_norm():
    torch.manual_seed(2)
    w = torch.randn(6, 4, 3, 3, dtype=torch.float64)
    s = torch.randn(3, 4, dtype=torch.float64)
    per_sample = w[None] * s[:, None, :, None, None]
    expected = 1 / per_sample.square().sum(dim=[2, 3, 4]).add(1e-8).sqrt()
    torch.testing.assert_close(demodulation_coefficients(w, s), expected)


@pytest.mark.parametrize("up,demodulate,kernel", [(1, True, 3), (2, True, 3), (1, False, 1)])
def test_modulated_conv_forms_agree_in_values_and_gradients(up, demodulate, kernel):
    torch.manual_seed(3)
    f = setup_filter([1, 3, 3, 1]).double()
    x = torch.randn(3, 4, 8, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 4, kernel, kernel, dtype=torch.float64, requires_grad=True)
    s = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    # Noise is added after demodulation (fused with it in the batched form).
    noise = torch.randn(3, 1, 8 * up, 8 * up, dtype=torch.float64, requires_grad=True)
    outs, grads = {}, {}
    for form in ("batched", "grouped"):
        y = modulated_conv2d(x, w, s, demodulate=demodulate, up=up, resample_filter=f, form=form, noise=noise)
        g = torch.randn_like(y, generator=torch.Generator().manual_seed(4))
        outs[form] = y
        grads[form] = torch.autograd.grad((y * g).sum(), [x, w, s, noise])
    assert outs["batched"].shape == (3, 5, 8 * up, 8 * up)
    torch.testing.assert_close(outs["batched"], outs["grouped"], rtol=1e-10, atol=1e-10)
    for gb, gg in zip(grads["batched"], grads["grouped"]):
        torch.testing.assert_close(gb, gg, rtol=1e-10, atol=1e-10)


def test_demodulated_output_has_unit_scale_and_ignores_style_magnitude():
    torch.manual_seed(5)
    x = torch.randn(4, 32, 16, 16, dtype=torch.float64)
    w = torch.randn(32, 32, 3, 3, dtype=torch.float64)
    s = torch.rand(4, 32, dtype=torch.float64) + 0.5
    y = modulated_conv2d(x, w, s)
    # Demodulation divides out a global scale of the styles exactly (up to eps).
    torch.testing.assert_close(modulated_conv2d(x, w, 7 * s), y, rtol=1e-6, atol=1e-6)
    assert 0.7 < y.std().item() < 1.3


def test_modulated_conv_module_switch_changes_form_not_output():
    torch.manual_seed(6)
    layer = ModulatedConv2d(4, 6, w_dim=8, kernel_size=3, up=2).double()
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    wlat = torch.randn(2, 8, dtype=torch.float64)
    y_batched = layer(x, wlat)
    set_modconv_form(layer, "grouped")
    assert layer.form == "grouped"
    torch.testing.assert_close(layer(x, wlat), y_batched)
    set_modconv_form(layer, "auto")
    torch.testing.assert_close(layer(x, wlat), y_batched)
    with pytest.raises(ValueError):
        set_modconv_form(layer, "depthwise")


def test_auto_form_uses_per_sample_weights_only_for_wide_few_channel_layers():
    wide = ModulatedConv2d(96, 48, w_dim=8, kernel_size=3, form="auto")
    assert wide.form_for(128 * 128) == "grouped"  # 48*9*4 <= 16384
    assert wide.form_for(16 * 16) == "batched"
    narrow = ModulatedConv2d(256, 256, w_dim=8, kernel_size=3, form="auto")
    assert narrow.form_for(32 * 32) == "batched"
    head = ModulatedConv2d(48, 1, w_dim=8, kernel_size=1, demodulate=False, form="batched")
    assert head.form_for(4) == "grouped"  # 1x1 heads: one small batched matmul in every setting


@pytest.mark.parametrize("form", ["batched", "grouped"])
def test_modulated_conv_gradcheck_and_gradgradcheck(form):
    # Path-length regularisation differentiates the generator twice.
    torch.manual_seed(7)
    f = setup_filter([1, 3, 3, 1]).double()
    # Small on purpose: gradgradcheck perturbs every input and every output gradient.
    x = torch.randn(2, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    s = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)

    def fn(x, w, s):
        return modulated_conv2d(x, w, s, up=2, resample_filter=f, form=form)

    assert torch.autograd.gradcheck(fn, (x, w, s))
    assert torch.autograd.gradgradcheck(fn, (x, w, s))


def test_nhwc_paths_keep_the_layout_and_the_values():
    """The 1x1 heads (per-sample weights as a matrix product) and a one-channel input layer answer
    an NHWC input in NHWC, with the same values and gradients as the NCHW computation."""
    torch.manual_seed(0)
    x = torch.randn(3, 8, 6, 6, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(2, 8, 1, 1, dtype=torch.float64, requires_grad=True)
    styles = torch.randn(3, 8, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(3, 2, 6, 6, dtype=torch.float64)
    plain = modulated_conv2d(x, weight, styles, demodulate=False, form="grouped")
    grads_plain = torch.autograd.grad((plain * upstream).sum(), [x, weight, styles])
    x_cl = x.detach().clone().to(memory_format=torch.channels_last).requires_grad_(True)
    nhwc = modulated_conv2d(x_cl, weight, styles, demodulate=False, form="grouped")
    assert nhwc.is_contiguous(memory_format=torch.channels_last) and not nhwc.is_contiguous()
    torch.testing.assert_close(nhwc, plain)
    grads_nhwc = torch.autograd.grad((nhwc * upstream).sum(), [x_cl, weight, styles])
    for name, g_nhwc, g_plain in zip(("input", "weight", "styles"), grads_nhwc, grads_plain):
        assert g_nhwc.abs().sum() > 0, name
        torch.testing.assert_close(g_nhwc, g_plain, msg=lambda m, name=name: f"{name} gradient: {m}")

    layer = Conv2dLayer(1, 4, 1, activation="lrelu").double()
    image = torch.randn(2, 1, 5, 5, dtype=torch.float64, requires_grad=True)
    reference = layer(image)
    (g_ref,) = torch.autograd.grad(reference.square().sum(), image)
    layer.channels_last = True
    out = layer(image)
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    torch.testing.assert_close(out, reference)
    (g,) = torch.autograd.grad(out.square().sum(), image)
    torch.testing.assert_close(g, g_ref)
