"""Per-slice reconstruction losses shared by encoder training and test-time optimisation.

Every function returns one value per slice (shape ``[N]``), never a batch mean: test-time
optimisation sums them, so one slice's gradient does not depend on how many others share its
batch.

The perceptual term is multi-scale SSIM (MONAI's SSIM/contrast-sensitivity maps): LPIPS needs VGG
weights downloaded at run time, which machines here cannot do. Scales are combined as a weighted
*mean* of per-scale values rather than MS-SSIM's product of powers: the product has an infinite
gradient where a contrast term reaches zero (common early in an inversion), the mean does not.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from monai.metrics.regression import compute_ssim_and_cs

# Images are in [-1, 1].
DATA_RANGE = 2.0


def mse_per_slice(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (x - y).square().flatten(1).mean(1)


def ms_ssim_loss_per_slice(x: torch.Tensor, y: torch.Tensor, scales: int = 3, kernel_size: int = 7,
                           kernel_sigma: float = 1.5,
                           weights: Sequence[float] | None = None) -> torch.Tensor:
    """``1 - MS-SSIM`` per slice: contrast-structure at the finer scales, full SSIM at the
    coarsest (as in MS-SSIM), averaged with ``weights`` (equal by default)."""
    if weights is None:
        weights = [1.0 / scales] * scales
    if len(weights) != scales:
        raise ValueError(f"{scales} scales need {scales} weights, got {len(weights)}")
    if min(x.shape[-2:]) >> (scales - 1) < kernel_size:
        raise ValueError(f"images {list(x.shape[-2:])} are too small for {scales} SSIM scales "
                         f"with a {kernel_size}-pixel kernel")
    total = x.new_zeros(x.shape[0])
    for scale, weight in enumerate(weights):
        ssim, cs = compute_ssim_and_cs(x, y, spatial_dims=2, kernel_size=(kernel_size, kernel_size),
                                       kernel_sigma=(kernel_sigma, kernel_sigma),
                                       data_range=DATA_RANGE)
        value = ssim if scale == scales - 1 else cs
        total = total + weight * value.flatten(1).mean(1)
        if scale < scales - 1:
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    return 1.0 - total


def reconstruction_loss_per_slice(x: torch.Tensor, target: torch.Tensor,
                                  perceptual_weight: float = 1.0,
                                  mse_weight: float = 0.1) -> torch.Tensor:
    """The inversion objective: ``perceptual + mse_weight * MSE`` per slice."""
    loss = mse_weight * mse_per_slice(x, target)
    if perceptual_weight:
        loss = loss + perceptual_weight * ms_ssim_loss_per_slice(x, target)
    return loss


def dice_loss_per_slice(logits: torch.Tensor, mask: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft Dice loss of ``sigmoid(logits)`` against a {0, 1} mask, per slice (smoothed with
    ``eps`` so slices without liver give a finite, useful loss)."""
    prob = torch.sigmoid(logits).flatten(1)
    mask = mask.flatten(1).to(prob.dtype)
    inter = (prob * mask).sum(1)
    return 1.0 - (2 * inter + eps) / (prob.sum(1) + mask.sum(1) + eps)


def bce_per_slice(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, mask.to(logits.dtype),
                                              reduction="none").flatten(1).mean(1)
