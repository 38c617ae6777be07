"""The CUDA kernels against the reference ops. They need a GPU; without one they skip (the CUDA
build itself is checked by `make cuda-check`, the kernels' math on the CPU through the headers)."""

from __future__ import annotations

import pytest
import torch

from medsemgan.ops.bias_act import bias_act, bias_act_reference
from medsemgan.ops.upfirdn2d import setup_filter, upfirdn2d, upfirdn2d_reference

from ops_testing import rel_err

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="no CUDA GPU here: the CUDA kernels are only compiled (make cuda-check); "
    "their per-element math is tested on the CPU through medsemgan/ops/csrc/*.h",
)


@pytest.fixture
def cuda_ext(monkeypatch):
    from medsemgan.ops import loader

    monkeypatch.setenv(loader.ENV_MODE, "fused")  # a failed CUDA build must fail these tests
    return loader.extension("cuda")


@pytest.mark.parametrize("act,clamp", [("linear", None), ("lrelu", None), ("lrelu", 0.5)])
def test_bias_act_cuda_matches_reference(cuda_ext, act, clamp):
    x = torch.randn(3, 5, 6, 7, dtype=torch.float64, device="cuda", requires_grad=True)
    b = torch.randn(5, dtype=torch.float64, device="cuda", requires_grad=True)
    out = bias_act(x, b, act=act, clamp=clamp, impl="fused")
    ref = bias_act_reference(x, b, act=act, clamp=clamp)
    assert rel_err(out, ref) <= 1e-6
    gx, gb = torch.autograd.grad(out.square().sum(), (x, b))
    rx, rb = torch.autograd.grad(ref.square().sum(), (x, b))
    assert rel_err(gx, rx) <= 1e-6 and rel_err(gb, rb) <= 1e-6


@pytest.mark.parametrize("up,down,padding", [(2, 1, (2, 1, 2, 1)), (1, 2, 1), (1, 1, (2, 1, 2, 1))])
def test_upfirdn2d_cuda_matches_reference(cuda_ext, up, down, padding):
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, device="cuda", requires_grad=True)
    f = setup_filter([1, 3, 3, 1], device="cuda")
    out = upfirdn2d(x, f, up=up, down=down, padding=padding, impl="fused")
    ref = upfirdn2d_reference(x, f, up=up, down=down, padding=padding)
    assert rel_err(out, ref) <= 1e-6
    assert torch.autograd.gradgradcheck(lambda t: upfirdn2d(t, f, up=up, down=down, padding=padding, impl="fused"), (x[:1, :1, :5, :5].detach().requires_grad_(),))


def test_cuda_bf16_runs(cuda_ext):
    x = torch.randn(2, 4, 8, 8, device="cuda", dtype=torch.bfloat16)
    out = bias_act(x, torch.zeros(4, device="cuda", dtype=torch.bfloat16), act="lrelu", impl="fused")
    assert rel_err(out, bias_act_reference(x.double(), act="lrelu")) <= 1e-2
