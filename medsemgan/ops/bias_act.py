"""Fused bias + activation: ``y = clamp(act(x + b) * gain)``.

Public entry point: :func:`bias_act`. Two paths compute the same function:

- the reference (:func:`bias_act_reference`): plain PyTorch, one pass over memory per step;
- the compiled path (:class:`_BiasActFunction`): one pass with the math of ``csrc/bias_act.h``,
  run by the CPU extension (CPU tensors) or the CUDA extension (CUDA tensors), built lazily by
  :mod:`medsemgan.ops.loader`. Its backward is another compiled op (:class:`_BiasActGradFunction`)
  whose own backward is itself, so second derivatives (R1, path length) stay on the fast path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from medsemgan.ops import loader


@dataclass(frozen=True)
class Activation:
    name: str
    default_alpha: float
    default_gain: float


ACTIVATIONS: dict[str, Activation] = {
    "linear": Activation("linear", 0.0, 1.0),
    "lrelu": Activation("lrelu", 0.2, math.sqrt(2)),
}


def _resolve(act: str, alpha: float | None, gain: float | None, clamp: float | None):
    if act not in ACTIVATIONS:
        raise ValueError(f"unknown activation {act!r}; choose from {sorted(ACTIVATIONS)}")
    spec = ACTIVATIONS[act]
    alpha = float(spec.default_alpha if alpha is None else alpha)
    gain = float(spec.default_gain if gain is None else gain)
    clamp = float(-1 if clamp is None else clamp)
    return spec, alpha, gain, clamp


def _add_bias(x: torch.Tensor, b: torch.Tensor | None, dim: int) -> torch.Tensor:
    if b is None:
        return x
    if b.ndim != 1 or b.shape[0] != x.shape[dim]:
        raise ValueError(f"bias shape {tuple(b.shape)} does not match x.shape[{dim}]={x.shape[dim]}")
    shape = [1] * x.ndim
    shape[dim] = -1
    return x + b.reshape(shape)


def bias_act_reference(
    x: torch.Tensor,
    b: torch.Tensor | None = None,
    dim: int = 1,
    act: str = "linear",
    alpha: float | None = None,
    gain: float | None = None,
    clamp: float | None = None,
) -> torch.Tensor:
    """Pure-PyTorch definition of the op; the compiled paths are tested against it."""
    spec, alpha, gain, clamp = _resolve(act, alpha, gain, clamp)
    x = _add_bias(x, b, dim)
    if spec.name == "lrelu":
        x = F.leaky_relu(x, alpha)
    if gain != 1:
        x = x * gain
    if clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x


_ACT_CODES = {"linear": 0, "lrelu": 1}  # csrc/bias_act.h BiasActKind


def _compiled_module(x: torch.Tensor, impl: str | None):
    """The extension to run on ``x``'s device, or None for the reference path."""
    if impl not in (None, "reference", "fused"):
        raise ValueError(f"impl must be None, 'reference' or 'fused', got {impl!r}")
    if impl == "reference" or x.device.type not in ("cpu", "cuda"):
        return None
    return loader.extension(x.device.type)


class _BiasActGradFunction(torch.autograd.Function):
    """dx = dy * slope(y), and with ``with_bias`` also db = dx summed over all dims but ``dim``
    (the CPU extension computes it in the same pass). Linear in dy, so its derivative is the same
    op applied to the incoming gradient."""

    @staticmethod
    def forward(ctx, dy, y, ext, dim, code, alpha, gain, clamp, with_bias):
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(y)
        ctx.config = (ext, dim, code, alpha, gain, clamp)
        if with_bias:
            dx, db = ext.bias_act_grad_with_bias(dy, y, dim, code, alpha, gain, clamp)
            return dx, db
        return ext.bias_act(dy, None, y, dim, code, alpha, gain, clamp)

    @staticmethod
    def backward(ctx, ddx, ddb=None):
        (y,) = ctx.saved_tensors
        ext, dim, code, alpha, gain, clamp = ctx.config
        total = ddx
        if ddb is not None:
            shape = [1] * y.ndim
            shape[dim] = -1
            spread = ddb.reshape(shape).expand(y.shape)
            total = spread if total is None else total + spread
        if total is None:
            return (None,) * 9
        # The slope is piecewise constant in y, so y gets no gradient.
        d_dy = _BiasActGradFunction.apply(total.to(y.dtype), y, *ctx.config, False)
        return (d_dy,) + (None,) * 8


class _BiasActFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, b, ext, dim, code, alpha, gain, clamp):
        y = ext.bias_act(x, b, None, dim, code, alpha, gain, clamp)
        # Linear without clamp has a constant slope: y is not needed, dy stands in for it.
        needs_y = code != _ACT_CODES["linear"] or clamp >= 0
        ctx.save_for_backward(y if needs_y else None)
        ctx.config = (ext, dim, code, alpha, gain, clamp)
        ctx.bias_dtype = None if b is None else b.dtype
        return y

    @staticmethod
    def backward(ctx, dy):
        (y,) = ctx.saved_tensors
        y = dy if y is None else y
        if ctx.needs_input_grad[1]:
            dx, db = _BiasActGradFunction.apply(dy, y, *ctx.config, True)
            db = db.to(ctx.bias_dtype)
        else:
            dx, db = _BiasActGradFunction.apply(dy, y, *ctx.config, False), None
        return (dx if ctx.needs_input_grad[0] else None), db, None, None, None, None, None, None


def bias_act(
    x: torch.Tensor,
    b: torch.Tensor | None = None,
    dim: int = 1,
    act: str = "linear",
    alpha: float | None = None,
    gain: float | None = None,
    clamp: float | None = None,
    impl: str | None = None,
) -> torch.Tensor:
    """Add bias ``b`` along ``dim``, apply ``act`` ('linear' or 'lrelu'), scale by ``gain``, clamp.

    ``impl``: None or 'fused' (compiled when it can be built, else the reference with one
    warning; ``MEDSEMGAN_OPS=fused`` makes a failed build an error), or 'reference'.
    ``MEDSEMGAN_OPS=reference`` forces the reference everywhere. The result dtype is that of
    ``x + b`` on both paths; pass ``b.to(x.dtype)`` to keep bfloat16 activations in bfloat16.
    """
    spec, alpha_, gain_, clamp_ = _resolve(act, alpha, gain, clamp)
    ext = _compiled_module(x, impl)
    # The compiled gradient reads the activation's sign from y, which needs gain > 0.
    if ext is None or gain_ <= 0 or not x.is_floating_point():
        return bias_act_reference(x, b, dim=dim, act=act, alpha=alpha, gain=gain, clamp=clamp)
    dim = dim % x.ndim
    if b is not None:
        if b.ndim != 1 or b.shape[0] != x.shape[dim]:
            raise ValueError(f"bias shape {tuple(b.shape)} does not match x.shape[{dim}]={x.shape[dim]}")
        out_dtype = torch.result_type(x, b)
        if out_dtype != x.dtype:
            x = x.to(out_dtype)
    code = _ACT_CODES[spec.name]
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        return bias_act_reference(x, b, dim=dim, act=act, alpha=alpha, gain=gain, clamp=clamp)
    return _BiasActFunction.apply(x, b, ext, dim, code, alpha_, gain_, clamp_)
