"""upfirdn2d: the compiled CPU path (math of medsemgan/ops/csrc/upfirdn2d.h) and the convolution backend
against the pure-PyTorch reference, plus the helpers built on them."""

from __future__ import annotations

import pytest
import torch

from medsemgan.ops.upfirdn2d import (
    downsample2d,
    filter2d,
    setup_filter,
    upfirdn2d,
    upfirdn2d_reference,
    upsample2d,
)

from ops_testing import rel_err

# (input shape, filter shape or 'sep8' for a separable 8-tap filter, up, down, padding, flip, gain)
CONFIGS = [
    ([2, 3, 8, 8], (4, 4), 2, 1, (2, 1, 2, 1), False, 4.0),  # upsample2d with [1,3,3,1]
    ([2, 3, 8, 8], (4, 4), 1, 2, (1, 1, 1, 1), False, 1.0),  # downsample2d
    ([2, 3, 8, 8], (4, 4), 1, 1, (2, 1, 2, 1), False, 1.0),  # filter2d
    ([1, 2, 7, 9], (3, 5), 1, 1, (0, 0, 0, 0), True, 1.0),  # non-square, no padding
    ([1, 2, 6, 7], (3, 3), (2, 3), (3, 1), (1, -1, 4, 2), False, 2.0),  # mixed up/down, crop
    ([1, 2, 5, 6], (2, 3), 2, 1, 1, False, 1.0),  # even-sized filter
    ([1, 1, 9, 9], (4, 4), 2, 2, (0, 0, 0, 0), True, 1.0),  # up and down together
    ([2, 2, 6, 6], "sep8", 1, 2, (3, 3, 3, 3), False, 1.0),  # separable 1-D filter
    ([1, 2, 5, 5], (1, 1), 3, 1, (0, 0, 0, 0), False, 9.0),  # pure upsampling
]


def _filter(spec, gen):
    if spec == "sep8":
        return setup_filter(torch.rand(8, generator=gen, dtype=torch.float64) + 0.1).double()
    return torch.randn(spec, generator=gen, dtype=torch.float64)


@pytest.mark.parametrize("impl", ["fused", "conv"])
@pytest.mark.parametrize("shape,fspec,up,down,padding,flip,gain", CONFIGS)
def test_matches_reference_float64(cpu_ext, gen, impl, shape, fspec, up, down, padding, flip, gain):
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    f = _filter(fspec, gen)
    kwargs = dict(up=up, down=down, padding=padding, flip_filter=flip, gain=gain)
    xr, xf = x.clone().requires_grad_(), x.clone().requires_grad_()
    ref = upfirdn2d_reference(xr, f, **kwargs)
    out = upfirdn2d(xf, f, impl=impl, **kwargs)
    assert out.shape == ref.shape
    assert rel_err(out, ref) <= 1e-6, f"seed {gen.initial_seed()}"
    dy = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
    ref.backward(dy)
    out.backward(dy)
    assert rel_err(xf.grad, xr.grad) <= 1e-6, f"seed {gen.initial_seed()}"


@pytest.mark.parametrize("shape,fspec,up,down,padding,flip,gain", CONFIGS)
def test_cuda_kernel_pixel_math_matches_reference_float64(cpu_ext, gen, shape, fspec, up, down, padding, flip, gain):
    """upfirdn2d_pixel (the CUDA kernel's per-pixel math) run on the CPU, for every configuration;
    the default CPU loop uses the row order (upfirdn2d_row) where it can."""
    from medsemgan.ops.upfirdn2d import _padding4, _pair, correlation_kernel

    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    f = _filter(fspec, gen)
    k = correlation_kernel(f, flip, gain, x.dtype)
    (upx, upy), (downx, downy) = _pair(up), _pair(down)
    out = cpu_ext.upfirdn2d_pixelwise(x, k, upx, upy, downx, downy, *_padding4(padding))
    ref = upfirdn2d_reference(x, f, up=up, down=down, padding=padding, flip_filter=flip, gain=gain)
    assert rel_err(out, ref) <= 1e-6, f"seed {gen.initial_seed()}"


@pytest.mark.parametrize("impl", ["fused", "conv"])
@pytest.mark.parametrize("shape,fspec,up,down,padding,flip,gain", CONFIGS[:6])
def test_channels_last_matches_reference_and_keeps_layout(cpu_ext, gen, impl, shape, fspec, up, down, padding, flip, gain):
    x = torch.randn(shape, generator=gen, dtype=torch.float64).to(memory_format=torch.channels_last)
    f = _filter(fspec, gen)
    kwargs = dict(up=up, down=down, padding=padding, flip_filter=flip, gain=gain)
    xr, xf = x.clone().requires_grad_(), x.clone().requires_grad_()
    ref = upfirdn2d_reference(xr, f, **kwargs)
    out = upfirdn2d(xf, f, impl=impl, **kwargs)
    assert rel_err(out, ref) <= 1e-6, f"seed {gen.initial_seed()}"
    if shape[1] > 1:  # with one channel both layouts are the same
        assert out.is_contiguous(memory_format=torch.channels_last)
    dy = torch.randn(ref.shape, generator=gen, dtype=torch.float64).to(memory_format=torch.channels_last)
    ref.backward(dy)
    out.backward(dy)
    assert rel_err(xf.grad, xr.grad) <= 1e-6, f"seed {gen.initial_seed()}"
    if shape[1] > 1:  # the adjoint keeps NHWC too: no layout copy in the backward pass either
        assert xf.grad.is_contiguous(memory_format=torch.channels_last)


def test_fused_runs_the_extension_forward_and_backward(cpu_ext, monkeypatch):
    calls = []
    real = cpu_ext.upfirdn2d

    class Spy:
        upfirdn2d_pixelwise = real

        def upfirdn2d(self, x, k, *config):
            calls.append(config[:4])
            return real(x, k, *config)

    from medsemgan.ops import loader

    monkeypatch.setitem(loader._modules, "cpu", Spy())
    x = torch.randn(1, 2, 6, 6, requires_grad=True)
    upsample2d(x, setup_filter([1, 3, 3, 1]), impl="fused").sum().backward()
    assert calls == [(2, 2, 1, 1), (1, 1, 2, 2)]  # backward of up=2 is down=2


@pytest.mark.parametrize("impl", ["fused", "conv", None])
def test_helpers_keep_stylegan_shapes(cpu_ext, gen, impl):
    f = setup_filter([1, 3, 3, 1])
    x = torch.randn(2, 3, 16, 12, generator=gen)
    assert upsample2d(x, f, impl=impl).shape == (2, 3, 32, 24)
    assert downsample2d(x, f, impl=impl).shape == (2, 3, 8, 6)
    assert filter2d(x, f, impl=impl).shape == (2, 3, 16, 12)
    # The normalised filter keeps a constant image constant (away from the zero-padded borders).
    ones = torch.ones(1, 1, 8, 8)
    assert torch.allclose(upsample2d(ones, f, impl=impl)[..., 2:-2, 2:-2], torch.ones(1, 1, 12, 12))
    assert torch.allclose(downsample2d(ones, f, impl=impl)[..., 1:-1, 1:-1], torch.ones(1, 1, 2, 2))


@pytest.mark.parametrize("impl", ["fused", "conv"])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_low_precision_matches_reference(cpu_ext, gen, impl, dtype, tol):
    x = torch.randn(2, 4, 9, 9, generator=gen, dtype=torch.float64)
    f = setup_filter([1, 3, 3, 1])
    out = upsample2d(x.to(dtype), f, impl=impl)
    assert out.dtype == dtype
    assert rel_err(out, upsample2d(x, f.double(), impl="reference")) <= tol


GRAD_CONFIGS = [
    dict(up=2, padding=(2, 1, 2, 1), gain=4.0),
    dict(down=2, padding=1),
    dict(padding=(2, 1, 2, 1)),
    dict(up=(2, 1), down=(1, 2), padding=(1, 0, -1, 2), flip_filter=True),
]


@pytest.mark.parametrize("impl", ["fused", "conv", "reference"])
@pytest.mark.parametrize("config", GRAD_CONFIGS, ids=["up2", "down2", "filter", "mixed"])
def test_gradcheck_and_gradgradcheck(cpu_ext, gen, impl, config):
    x = torch.randn(1, 1, 4, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    f = torch.randn(4, 4, generator=gen, dtype=torch.float64)

    def fn(x):
        return upfirdn2d(x, f, impl=impl, **config)

    assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-7)
    assert torch.autograd.gradgradcheck(fn, (x,), eps=1e-6, atol=1e-7)


def test_filter_gradient_uses_reference(cpu_ext, gen):
    x = torch.randn(1, 1, 6, 6, generator=gen, dtype=torch.float64)
    f = torch.randn(3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    out = upfirdn2d(x, f, up=2, impl="fused")
    (g,) = torch.autograd.grad(out.sum(), f)
    assert g.shape == f.shape and g.abs().sum() > 0


def test_too_small_input_is_a_value_error(cpu_ext):
    with pytest.raises(ValueError, match="smaller than the filter"):
        upfirdn2d(torch.randn(1, 1, 2, 2), torch.ones(4, 4), impl="fused")


def test_default_cpu_backend_follows_the_dtype(cpu_ext, monkeypatch):
    """impl=None on the CPU: the compiled loop for float32, the convolutions for bfloat16
    (faster inside the bf16 training step, `medsemgan bench train`); same values either way."""
    from medsemgan.ops import upfirdn2d as module

    used = []
    real = module.ConvBackend.upfirdn2d

    def spy(*args):
        used.append(args[0].dtype)
        return real(*args)

    monkeypatch.setattr(module.ConvBackend, "upfirdn2d", staticmethod(spy))
    f = setup_filter([1, 3, 3, 1])
    x = torch.randn(2, 3, 8, 8)
    upsample2d(x, f)
    assert used == []  # float32: the compiled loop
    y = upsample2d(x.bfloat16(), f)
    assert used == [torch.bfloat16]
    ref = upfirdn2d_reference(x.bfloat16().float(), f, up=2, padding=[2, 1, 2, 1], gain=4)
    assert rel_err(y.float(), ref) < 2e-2
