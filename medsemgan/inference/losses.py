"""Per-slice reconstruction losses shared by encoder training and test-time optimisation.

Every function returns one value per slice (shape ``[N]``), never a batch mean: test-time
optimisation sums them, so one slice's gradient does not depend on how many others share its
batch.

The perceptual term is multi-scale SSIM (MONAI's definition, computed with a separable filter):
LPIPS needs VGG weights downloaded at run time, which machines here cannot do. Scales are combined as a weighted
*mean* of per-scale values rather than MS-SSIM's product of powers: the product has an infinite
gradient where a contrast term reaches zero (common early in an inversion), the mean does not.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

# Images are in [-1, 1].
DATA_RANGE = 2.0


def mse_per_slice(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (x - y).square().flatten(1).mean(1)


def _gaussian_1d(size: int, sigma: float, like: torch.Tensor) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float32, device=like.device) - (size - 1) / 2
    kernel = torch.exp(-(coords**2) / (2 * sigma**2))
    return (kernel / kernel.sum()).to(like.dtype)


def local_moments(x: torch.Tensor, y: torch.Tensor, kernel_size: int = 7, kernel_sigma: float = 1.5):
    """Gaussian-windowed local means, variances and covariance of ``[N, 1, H, W]`` images (no
    padding), from one *separable* filter pass over the five moment maps stacked as channels:
    2 x 7 taps instead of 5 x 49, which matters because this runs at every optimisation step."""
    if x.shape[1] != 1:
        raise ValueError(f"expected single-channel images, got {x.shape[1]} channels")
    moments = torch.cat([x, y, x * x, y * y, x * y], dim=1)
    g = _gaussian_1d(kernel_size, kernel_sigma, x)
    moments = F.conv2d(moments, g.view(1, 1, 1, -1).expand(5, 1, 1, -1), groups=5)
    mu_x, mu_y, mu_xx, mu_yy, mu_xy = F.conv2d(moments, g.view(1, 1, -1, 1).expand(5, 1, -1, 1),
                                               groups=5).unbind(1)
    return mu_x, mu_y, mu_xx - mu_x * mu_x, mu_yy - mu_y * mu_y, mu_xy - mu_x * mu_y


def ssim_and_cs_maps(x: torch.Tensor, y: torch.Tensor, kernel_size: int = 7,
                     kernel_sigma: float = 1.5, data_range: float = DATA_RANGE):
    """SSIM and contrast-structure maps of single-channel images ``[N, 1, H, W]``.

    Same definition as MONAI's ``compute_ssim_and_cs`` (Gaussian window, no padding, k1 0.01,
    k2 0.03), from :func:`local_moments` (a test checks the two agree).
    """
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x, mu_y, sigma_x, sigma_y, sigma_xy = local_moments(x, y, kernel_size, kernel_sigma)
    cs = (2 * sigma_xy + c2) / (sigma_x + sigma_y + c2)
    ssim = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1) * cs
    return ssim.unsqueeze(1), cs.unsqueeze(1)


def lncc_loss_per_slice(x: torch.Tensor, y: torch.Tensor, scales: int = 3, kernel_size: int = 7,
                        kernel_sigma: float = 1.5, eps: float = 1e-5) -> torch.Tensor:
    """``1 - mean squared local normalised cross-correlation`` per slice, averaged over
    ``scales`` (halving the resolution each time).

    The squared correlation ignores each window's brightness, contrast *and sign*, so it compares
    where edges and structures are, not which grey values they have: a CT-trained generator can
    explain an MRI slice with it, where MSE and SSIM would push the generator's image towards
    MRI grey values it cannot make. (MONAI's ``LocalNormalizedCrossCorrelationLoss`` is the same
    measure with box windows, for volumes; this one is per slice and shares the SSIM filter pass.)
    ``eps`` keeps flat windows (air) from dividing by zero and makes them count as uncorrelated.
    """
    if min(x.shape[-2:]) >> (scales - 1) < kernel_size:
        raise ValueError(f"images {list(x.shape[-2:])} are too small for {scales} scales "
                         f"with a {kernel_size}-pixel kernel")
    total = x.new_zeros(x.shape[0])
    for scale in range(scales):
        _, _, sigma_x, sigma_y, sigma_xy = local_moments(x, y, kernel_size, kernel_sigma)
        ncc2 = sigma_xy.square() / (sigma_x.clamp_min(0) * sigma_y.clamp_min(0) + eps)
        total = total + ncc2.flatten(1).mean(1) / scales
        if scale < scales - 1:
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    return 1.0 - total


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
        ssim, cs = ssim_and_cs_maps(x, y, kernel_size, kernel_sigma)
        value = ssim if scale == scales - 1 else cs
        total = total + weight * value.flatten(1).mean(1)
        if scale < scales - 1:
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    return 1.0 - total


PERCEPTUAL_LOSSES = {"ms_ssim": ms_ssim_loss_per_slice, "lncc": lncc_loss_per_slice}


def reconstruction_loss_per_slice(x: torch.Tensor, target: torch.Tensor,
                                  perceptual_weight: float = 1.0,
                                  mse_weight: float = 0.1, perceptual: str = "ms_ssim") -> torch.Tensor:
    """The inversion objective: ``perceptual_weight * perceptual + mse_weight * MSE`` per slice;
    ``perceptual`` names the structural term (``PERCEPTUAL_LOSSES``)."""
    loss = mse_weight * mse_per_slice(x, target)
    if perceptual_weight:
        loss = loss + perceptual_weight * PERCEPTUAL_LOSSES[perceptual](x, target)
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
