"""Fused bias + activation: ``y = clamp(act(x + b) * gain)``.

Public entry point: :func:`bias_act`. The reference path here is plain PyTorch; the compiled path
(same math, one pass over memory) is selected by :mod:`medsemgan.ops.loader`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


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

    ``impl``: None (best available), 'reference', or 'fused' (compiled; falls back with a
    warning if it cannot be built).
    """
    return bias_act_reference(x, b, dim=dim, act=act, alpha=alpha, gain=gain, clamp=clamp)
