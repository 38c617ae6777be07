"""bias_act: the compiled CPU path (math of medsemgan/ops/csrc/bias_act.h) against the pure-PyTorch reference."""

from __future__ import annotations

import math

import pytest
import torch

from medsemgan.ops.bias_act import bias_act, bias_act_reference

from ops_testing import rel_err

# (shape, dim, channels_last): bias along channels of NCHW, along the last dim (channels
# innermost), a 2-D fully connected activation, dim 0, and a channels-last NCHW tensor.
LAYOUTS = [
    ([3, 5, 4, 6], 1, False),
    ([3, 5, 4, 6], 3, False),
    ([4, 7], 1, False),
    ([6, 2, 3], 0, False),
    ([2, 5, 3, 4], 1, True),
]
VARIANTS = [(act, clamp, with_bias) for act in ("linear", "lrelu") for clamp in (None, 0.5) for with_bias in (True, False)]


def _inputs(shape, dim, channels_last, gen, dtype=torch.float64):
    x = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    b = torch.randn(shape[dim], generator=gen, dtype=torch.float64).to(dtype)
    return x, b


@pytest.mark.parametrize("shape,dim,channels_last", LAYOUTS)
@pytest.mark.parametrize("act,clamp,with_bias", VARIANTS)
def test_forward_and_gradients_match_reference_float64(cpu_ext, gen, shape, dim, channels_last, act, clamp, with_bias):
    x, b = _inputs(shape, dim, channels_last, gen)
    b = b if with_bias else None
    kwargs = dict(dim=dim, act=act, clamp=clamp)
    xr, xf = x.clone().requires_grad_(), x.clone().requires_grad_()
    br = bf = None
    if b is not None:
        br, bf = b.clone().requires_grad_(), b.clone().requires_grad_()
    ref = bias_act_reference(xr, br, **kwargs)
    out = bias_act(xf, bf, impl="fused", **kwargs)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert rel_err(out, ref) <= 1e-6, f"seed {gen.initial_seed()}"
    dy = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
    ref.backward(dy)
    out.backward(dy)
    assert rel_err(xf.grad, xr.grad) <= 1e-6, f"seed {gen.initial_seed()}"
    if b is not None:
        assert rel_err(bf.grad, br.grad) <= 1e-6, f"seed {gen.initial_seed()}"


def test_fused_path_really_runs_the_extension(cpu_ext, monkeypatch):
    calls = []
    real = cpu_ext.bias_act

    class Spy:
        def bias_act(self, *args):
            calls.append(args[2] is not None)  # gradient calls pass the saved output
            return real(*args)

    from medsemgan.ops import loader

    monkeypatch.setitem(loader._modules, "cpu", Spy())
    x = torch.randn(2, 3, 4, requires_grad=True)
    bias_act(x, torch.zeros(3), act="lrelu").sum().backward()
    assert calls == [False, True]


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)])
def test_low_precision_matches_reference(cpu_ext, gen, dtype, tol):
    x, b = _inputs([2, 8, 5, 5], 1, False, gen, dtype=dtype)
    out = bias_act(x, b, act="lrelu", clamp=1.5, impl="fused")
    ref = bias_act_reference(x.double(), b.double(), act="lrelu", clamp=1.5)
    assert out.dtype == dtype
    assert rel_err(out, ref) <= tol


def test_result_dtype_follows_x_plus_b(cpu_ext):
    x = torch.randn(2, 3, 4)
    b = torch.randn(3, dtype=torch.float64)
    out = bias_act(x, b, act="lrelu", impl="fused")
    assert out.dtype == bias_act_reference(x, b, act="lrelu").dtype == torch.float64


def test_bias_shape_mismatch_is_a_value_error(cpu_ext):
    with pytest.raises(ValueError, match="bias shape"):
        bias_act(torch.randn(2, 3, 4), torch.randn(4), impl="fused")


def test_defaults_are_stylegan_lrelu(cpu_ext):
    x = torch.tensor([[-1.0, 2.0]])
    out = bias_act(x, act="lrelu", impl="fused")
    assert torch.allclose(out, torch.tensor([[-0.2 * math.sqrt(2), 2 * math.sqrt(2)]]))


def _away_from_kinks(shape, b, gen, clamp, gain=math.sqrt(2), alpha=0.2, margin=0.05):
    """x such that x + b is away from 0 and the activation away from +-clamp (finite differences
    across a kink would measure the kink, not the op)."""
    v = torch.empty(shape, dtype=torch.float64)
    flat = v.view(-1)
    for i in range(flat.numel()):
        while True:
            cand = (torch.rand((), generator=gen, dtype=torch.float64) * 2 - 1).item()
            act = gain * (cand if cand > 0 else alpha * cand)
            if abs(cand) > margin and (clamp is None or abs(abs(act) - clamp) > margin):
                flat[i] = cand
                break
    shape_b = [1] * len(shape)
    shape_b[1] = -1
    return v - b.reshape(shape_b)


@pytest.mark.parametrize("impl", ["fused", "reference"])
@pytest.mark.parametrize("act,clamp", [("linear", None), ("lrelu", None), ("lrelu", 0.8), ("linear", 0.6)])
def test_gradcheck_and_gradgradcheck(cpu_ext, gen, impl, act, clamp):
    b = torch.randn(3, generator=gen, dtype=torch.float64) * 0.3
    x = _away_from_kinks([2, 3, 2, 2], b, gen, clamp)
    x.requires_grad_()
    b.requires_grad_()

    def fn(x, b):
        return bias_act(x, b, act=act, clamp=clamp, impl=impl)

    assert torch.autograd.gradcheck(fn, (x, b), eps=1e-6, atol=1e-7)
    assert torch.autograd.gradgradcheck(fn, (x, b), eps=1e-6, atol=1e-7)


def test_second_derivative_flows_like_r1(cpu_ext, gen):
    # R1-style: grad of a function of d out/d x with respect to the bias-free weights upstream.
    w = torch.randn(4, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    x = torch.randn(5, 4, generator=gen, dtype=torch.float64, requires_grad=True)

    def penalty(impl):
        y = bias_act(x @ w, act="lrelu", impl=impl).square().sum()
        (g,) = torch.autograd.grad(y, x, create_graph=True)
        return torch.autograd.grad(g.square().sum(), w)[0]

    assert rel_err(penalty("fused"), penalty("reference")) <= 1e-6
