"""Exponential moving average of the generator's weights (StyleGAN2-ADA's schedule).

The half-life is given in thousands of images (``ema_kimg``): after that many images an old
weight contributes half. With ``ema_rampup`` the half-life is capped at ``rampup * images seen``,
so early in training the average follows the fast-moving weights instead of lagging at the random
initialisation.
"""

from __future__ import annotations

import copy

import torch


def ema_beta(batch_size: int, images_seen: int, ema_kimg: float, ema_rampup: float | None) -> float:
    """Decay per step for a global batch of ``batch_size`` images."""
    ema_nimg = ema_kimg * 1000
    if ema_rampup is not None and ema_rampup > 0:
        ema_nimg = min(ema_nimg, images_seen * ema_rampup)
    return 0.5 ** (batch_size / max(ema_nimg, 1e-8))


def make_ema(generator: torch.nn.Module) -> torch.nn.Module:
    """A frozen copy of the generator that only :func:`update_ema` changes."""
    ema = copy.deepcopy(generator).eval()
    ema.requires_grad_(False)
    return ema


@torch.no_grad()
def update_ema(ema: torch.nn.Module, generator: torch.nn.Module, beta: float) -> None:
    """ema <- beta * ema + (1 - beta) * generator for parameters; buffers (w_avg) are copied."""
    for p_ema, p in zip(ema.parameters(), generator.parameters()):
        p_ema.copy_(p.detach().lerp(p_ema, beta))
    for b_ema, b in zip(ema.buffers(), generator.buffers()):
        b_ema.copy_(b.detach())
